//! Deciding what a probe event means: ignored, not enough yet, too slow for the scan
//! window, already dealt with, or time to act.

use std::{net::IpAddr, time::Duration};

use portsentry_common::{PROTO_TCP, PROTO_UDP, ScanType, maps::ScanEvent};

use crate::addr;

/// A probe event from the kernel, in userspace types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeEvent {
    pub ip: IpAddr,
    pub port: u16,
    pub scan_type: ScanType,
    pub tcp_flags: u8,
    pub hits: u32,
    pub distinct_ports: u32,
    pub ts_ns: u64,
    pub first_ns: u64,
    pub ifindex: u32,
    /// The source answered the SYN-ACK challenge (VERIFY_SOURCES).
    pub verified: bool,
}

impl ProbeEvent {
    /// `None` for a record no version of the program writes (unknown scan type).
    pub fn from_raw(e: &ScanEvent) -> Option<ProbeEvent> {
        Some(ProbeEvent {
            ip: addr::from_key(&e.addr),
            port: e.port,
            scan_type: ScanType::from_u8(e.scan_type)?,
            tcp_flags: e.tcp_flags,
            hits: e.hits,
            distinct_ports: e.distinct_ports,
            ts_ns: e.ts_ns,
            first_ns: e.first_ns,
            ifindex: e.ifindex,
            verified: e.flags & portsentry_common::maps::EVENT_VERIFIED != 0,
        })
    }

    pub fn proto(&self) -> u8 {
        if self.scan_type.is_tcp() {
            PROTO_TCP
        } else {
            PROTO_UDP
        }
    }
}

/// What to do with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The source is in the ignore list or is this host.
    Ignored,
    /// Fewer hits than SCAN_TRIGGER.
    BelowTrigger,
    /// The trigger was reached, but over more than SCAN_WINDOW: the source's count
    /// starts again.
    OutsideWindow,
    /// The host was already acted on (banned, reported or its command run).
    AlreadyHandled,
    /// Act on the host now.
    Act,
}

/// The detection rules. `scan_trigger` has PortSentry's meaning (0 and 1 both act on
/// the first hit); a zero `window` means no window.
pub struct Rules {
    pub scan_trigger: u32,
    pub window: Duration,
}

impl Rules {
    pub fn trigger(&self) -> u32 {
        self.scan_trigger.max(1)
    }

    pub fn judge(&self, ev: &ProbeEvent, ignored: bool, handled: bool) -> Verdict {
        if ignored {
            return Verdict::Ignored;
        }
        if ev.hits < self.trigger() {
            return Verdict::BelowTrigger;
        }
        if handled {
            return Verdict::AlreadyHandled;
        }
        if !self.window.is_zero()
            && ev.ts_ns.saturating_sub(ev.first_ns) > self.window.as_nanos() as u64
        {
            return Verdict::OutsideWindow;
        }
        Verdict::Act
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(hits: u32, span_ms: u64) -> ProbeEvent {
        ProbeEvent {
            ip: "192.0.2.7".parse().unwrap(),
            port: 22,
            scan_type: ScanType::TcpSyn,
            tcp_flags: 2,
            hits,
            distinct_ports: hits,
            ts_ns: 10_000_000_000 + span_ms * 1_000_000,
            first_ns: 10_000_000_000,
            ifindex: 2,
            verified: false,
        }
    }

    #[test]
    fn trigger_zero_and_one_act_on_the_first_hit() {
        for t in [0, 1] {
            let r = Rules {
                scan_trigger: t,
                window: Duration::ZERO,
            };
            assert_eq!(r.judge(&ev(1, 0), false, false), Verdict::Act);
        }
        let r = Rules {
            scan_trigger: 3,
            window: Duration::ZERO,
        };
        assert_eq!(r.judge(&ev(2, 0), false, false), Verdict::BelowTrigger);
        assert_eq!(r.judge(&ev(3, 999_999), false, false), Verdict::Act);
    }

    #[test]
    fn ignored_and_handled() {
        let r = Rules {
            scan_trigger: 0,
            window: Duration::ZERO,
        };
        assert_eq!(r.judge(&ev(5, 0), true, false), Verdict::Ignored);
        assert_eq!(r.judge(&ev(5, 0), true, true), Verdict::Ignored);
        assert_eq!(r.judge(&ev(5, 0), false, true), Verdict::AlreadyHandled);
    }

    #[test]
    fn window() {
        let r = Rules {
            scan_trigger: 3,
            window: Duration::from_secs(10),
        };
        assert_eq!(r.judge(&ev(3, 9_000), false, false), Verdict::Act);
        assert_eq!(
            r.judge(&ev(3, 10_001), false, false),
            Verdict::OutsideWindow
        );
    }

    #[test]
    fn from_raw() {
        let mut raw = ScanEvent {
            addr: portsentry_common::v4_mapped([192, 0, 2, 7]),
            port: 22,
            scan_type: ScanType::TcpXmas as u8,
            ..Default::default()
        };
        let e = ProbeEvent::from_raw(&raw).unwrap();
        assert_eq!(e.ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(e.proto(), PROTO_TCP);
        raw.scan_type = 0;
        assert_eq!(ProbeEvent::from_raw(&raw), None);
    }
}
