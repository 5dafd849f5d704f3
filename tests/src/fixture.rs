//! A freshly loaded program (own maps) driven through BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use aya::maps::{MapData, RingBuf};
use portsentry_common::{
    Counter,
    maps::{ScanEvent, Settings},
};
use portsentry_user::{
    config::ports::PortSet,
    kernel::{Counters, Dataplane, MapSizes},
};

use crate::{netns::Netns, testrun};

/// TCP and UDP ports the fixture watches: 1..=1023 except 113 (TCP) and 137 (UDP).
pub fn default_ports() -> (PortSet, PortSet) {
    let mut tcp = PortSet::from_range(1..=1023);
    tcp.remove(113);
    let mut udp = PortSet::from_range(1..=1023);
    udp.remove(137);
    (tcp, udp)
}

/// Ports the fixture's host is taken to serve (as a server's sshd and web server): the
/// daemon leaves the ports listeners own out of `PS_ACK_PORTS`, so established traffic
/// to them is never looked up. No socket listens in the fixture's namespace itself.
pub const SERVICE_PORTS: [u16; 2] = [22, 443];

/// The ACK-class ports the fixture writes: the watched TCP ports but [`SERVICE_PORTS`].
pub fn ack_ports() -> PortSet {
    let mut ports = default_ports().0;
    for p in SERVICE_PORTS {
        ports.remove(p);
    }
    ports
}

/// BPF_PROG_TEST_RUN looks sockets up in the caller's network namespace, so every run
/// happens inside a namespace of the fixture's own: the host's listening sockets (sshd
/// on 22, say) cannot change a verdict.
pub struct Fixture {
    pub ns: Netns,
    pub dp: Dataplane,
    pub events: RingBuf<MapData>,
}

/// The result of one run: verdict and the counters that changed.
#[derive(Debug)]
pub struct Outcome {
    pub retval: u32,
    pub delta: Counters,
}

impl Outcome {
    /// The one verdict-reason counter this packet incremented, or the one verdict not
    /// counted (`PassNotProbe`) when it incremented none.
    pub fn reason(&self) -> Counter {
        let reasons: Vec<Counter> = Counter::ALL
            .iter()
            .copied()
            .filter(|c| c.is_verdict() && self.delta.get(*c) > 0)
            .collect();
        assert!(
            reasons.len() <= 1,
            "at most one verdict reason per packet, got {reasons:?} ({:?})",
            self.delta
        );
        let Some(&reason) = reasons.first() else {
            return Counter::PassNotProbe;
        };
        assert!(reason.is_counted(), "{reason:?} is not counted");
        assert_eq!(self.delta.get(reason), 1, "reason counted once");
        reason
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_settings(Settings {
            event_trigger: 1,
            events_per_sec: 0,
            event_burst: 0,
            flags: 0,
            cookie_secret: 0,
            trw: Default::default(),
        })
    }

    pub fn with_settings(settings: Settings) -> Fixture {
        let dp = Dataplane::load(&MapSizes::default(), None).expect("loading the program");
        Fixture::around(dp, settings)
    }

    /// A fixture on a dataplane loaded by the caller (verified by now).
    pub fn around(mut dp: Dataplane, settings: Settings) -> Fixture {
        let (tcp, udp) = default_ports();
        dp.write_ports(&tcp, &udp).expect("writing ports");
        dp.write_ack_ports(&ack_ports())
            .expect("writing ACK-class ports");
        dp.write_settings(settings).expect("writing settings");
        let events = dp.take_events().expect("ring buffer");
        Fixture {
            ns: Netns::new("run"),
            dp,
            events,
        }
    }

    /// Runs one frame and returns its verdict and counter changes.
    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        let before = self.dp.counters().expect("counters");
        let fd = self.dp.program_fd().expect("fd");
        let r = self
            .ns
            .enter(|| testrun::run(fd, frame, 1))
            .expect("test run");
        let after = self.dp.counters().expect("counters");
        Outcome {
            retval: r.retval,
            delta: after.since(&before),
        }
    }

    /// Runs one frame; also returns the frame as the program left it.
    pub fn run_out(&mut self, frame: &[u8]) -> (Outcome, Vec<u8>) {
        let before = self.dp.counters().expect("counters");
        let fd = self.dp.program_fd().expect("fd");
        let (r, out) = self
            .ns
            .enter(|| testrun::run_out(fd, frame, 1))
            .expect("test run");
        let after = self.dp.counters().expect("counters");
        (
            Outcome {
                retval: r.retval,
                delta: after.since(&before),
            },
            out,
        )
    }

    /// Runs a frame and asserts its verdict and reason.
    pub fn expect(&mut self, frame: &[u8], retval: u32, reason: Counter) -> Outcome {
        let o = self.run(frame);
        assert_eq!(o.retval, retval, "verdict ({o:?})");
        assert_eq!(o.reason(), reason, "reason ({o:?})");
        o
    }

    /// Events waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Vec<ScanEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            assert_eq!(item.len(), std::mem::size_of::<ScanEvent>());
            out.push(*bytemuck::from_bytes::<ScanEvent>(&item));
        }
        out
    }

    pub fn hits(&self, ip: IpAddr) -> u32 {
        self.dp
            .source(ip)
            .expect("reading PS_SOURCES")
            .map_or(0, |s| s.hits)
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}
