//! What the XDP program counts as a probe, through BPF_PROG_TEST_RUN with hand-built
//! frames: every scan type over IPv4 and IPv6, the TCP flags that are not probes, and which
//! ports are watched.

use portsentry_common::{Counter, ScanType};
use portsentry_tests::{
    fixture::Fixture,
    frames::{Frame, Transport, flags::*},
    probe_asserts::{self, V4_DST, V4_SRC, assert_probe, assert_uncounted, ip, pairs},
    require_kernel,
    testrun::XDP_PASS,
};
use portsentry_user::{
    clock::monotonic_ns,
    config::{ports::PortSet, services},
    kernel::configure,
};

#[test]
fn syn_probe_is_counted_and_reported() {
    require_kernel!();
    let mut fx = Fixture::new();
    let src = ip(V4_SRC);
    let frame = Frame::tcp(src, ip(V4_DST), 22, SYN).build();
    let o = fx.expect(&frame, XDP_PASS, Counter::PassProbe);
    assert_eq!(o.delta.get(Counter::EventSent), 1);
    let s = fx.dp.source(src).unwrap().expect("source tracked");
    assert_eq!((s.hits, s.distinct_ports, s.last_port), (1, 1, 22));
    assert_eq!(s.last_scan_type, ScanType::TcpSyn as u8);
    assert!(s.first_ns > 0 && s.first_ns == s.last_ns);
    let ev = fx.drain_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].port, 22);
    assert_eq!(ev[0].hits, 1);
    assert_eq!(ev[0].scan_type, ScanType::TcpSyn as u8);
    assert_eq!(ev[0].tcp_flags, SYN);
    assert_eq!(portsentry_user::kernel::addr::from_key(&ev[0].addr), src);
}

/// A probe's time is CLOCK_MONOTONIC, read again once the tick has moved (the program
/// keeps the coarse clock per CPU for the tick, `PS_CLOCK`): a later probe's time is
/// later by what passed, and never ahead of the clock.
#[test]
fn probe_times_follow_the_clock() {
    require_kernel!();
    let mut fx = Fixture::new();
    let src = ip(V4_SRC);
    let frame = Frame::tcp(src, ip(V4_DST), 22, SYN).build();
    // The coarse clock lags by up to a tick or two (10 ms each at 100 Hz).
    let slack = 50_000_000;
    let before = monotonic_ns();
    fx.expect(&frame, XDP_PASS, Counter::PassProbe);
    let first = fx.dp.source(src).unwrap().expect("source tracked");
    assert!(first.first_ns + slack >= before && first.first_ns <= monotonic_ns());
    for gap_ms in [200, 300] {
        std::thread::sleep(std::time::Duration::from_millis(gap_ms));
        let prev = fx.dp.source(src).unwrap().unwrap().last_ns;
        fx.expect(&frame, XDP_PASS, Counter::PassProbe);
        let s = fx.dp.source(src).unwrap().unwrap();
        let moved = s.last_ns - prev;
        assert!(
            moved + slack >= gap_ms * 1_000_000 && s.last_ns <= monotonic_ns(),
            "{gap_ms} ms later the probe's time moved {moved} ns"
        );
        assert_eq!(s.first_ns, first.first_ns);
    }
}

#[test]
fn every_scan_type_over_ipv4_and_ipv6() {
    require_kernel!();
    let mut fx = Fixture::new();
    let cases = [
        (0, ScanType::TcpNull),
        (XMAS, ScanType::TcpXmas),
        (FIN, ScanType::TcpFin),
        (SYN, ScanType::TcpSyn),
        (SYN | FIN, ScanType::TcpUnknown),
        (FIN | PSH, ScanType::TcpUnknown),
        (SYN | 0xc0, ScanType::TcpSyn),
    ];
    for (src, dst) in pairs() {
        for (i, (f, kind)) in cases.iter().enumerate() {
            let port = 10 + i as u16;
            assert_probe(
                &mut fx,
                &Frame::tcp(src, dst, port, *f).build(),
                src,
                port,
                *kind,
            );
        }
        assert_probe(
            &mut fx,
            &Frame::udp(src, dst, 53).build(),
            src,
            53,
            ScanType::Udp,
        );
        let s = fx.dp.source(src).unwrap().unwrap();
        assert_eq!(s.hits, cases.len() as u32 + 1);
        assert_eq!(s.distinct_ports, cases.len() as u32 + 1);
    }
}

#[test]
fn rst_is_never_a_probe() {
    require_kernel!();
    let mut fx = Fixture::new();
    for (src, dst) in pairs() {
        for f in [RST, RST | ACK, SYN | RST, FIN | RST, XMAS | RST | ACK] {
            for port in [22, 80] {
                let frame = Frame::tcp(src, dst, port, f).build();
                assert_uncounted(&mut fx, &frame, src, Counter::PassNotProbe);
            }
        }
    }
    assert!(fx.drain_events().is_empty());
}

/// A segment with ACK of no connection (nmap -sA, -sW, -sM) to a watched port no
/// socket listens on is a probe of the ACK class; to a port a service listens on
/// (`SERVICE_PORTS`, left out of `PS_ACK_PORTS`) or an unwatched one it is passed with
/// no lookup.
#[test]
fn the_ack_class() {
    require_kernel!();
    let mut fx = Fixture::new();
    for (src, dst) in pairs() {
        for (f, kind) in [
            (ACK, ScanType::TcpAck),
            (SYN | ACK, ScanType::TcpAck),
            (PSH | ACK, ScanType::TcpAck),
            (URG | PSH | ACK, ScanType::TcpAck),
            (FIN | ACK, ScanType::TcpMaimon),
            (XMAS | ACK, ScanType::TcpMaimon),
        ] {
            let frame = Frame::tcp(src, dst, 80, f).build();
            assert_probe(&mut fx, &frame, src, 80, kind);
            for port in [22, 443, 8080] {
                let frame = Frame::tcp(src, dst, port, f).build();
                assert_uncounted(&mut fx, &frame, src, Counter::PassNotProbe);
            }
        }
    }
    // Reported like any probe, typed.
    let kinds: Vec<u8> = fx.drain_events().iter().map(|e| e.scan_type).collect();
    assert!(kinds.contains(&(ScanType::TcpAck as u8)));
    assert!(kinds.contains(&(ScanType::TcpMaimon as u8)));
    // ACK_SCAN_PORTS="0": the daemon writes no port, and nothing is looked up.
    fx.dp.write_ack_ports(&PortSet::new()).unwrap();
    let (src, dst) = pairs()[0];
    let hits = fx.hits(src);
    assert_uncounted(
        &mut fx,
        &Frame::tcp(src, dst, 80, ACK).build(),
        src,
        Counter::PassNotProbe,
    );
    assert_eq!(fx.hits(src), hits);
}

#[test]
fn watched_and_unwatched_ports() {
    require_kernel!();
    let mut fx = Fixture::new();
    for (src, dst) in pairs() {
        // 113/tcp and 137/udp are excluded by the fixture, 1024 and up are not watched.
        for port in [113, 1024, 8080, 65535] {
            let f = Frame::tcp(src, dst, port, SYN).build();
            assert_uncounted(&mut fx, &f, src, Counter::PassUnwatched);
        }
        for port in [137, 1024, 33434] {
            let f = Frame::udp(src, dst, port).build();
            assert_uncounted(&mut fx, &f, src, Counter::PassUnwatched);
        }
        assert_probe(
            &mut fx,
            &Frame::tcp(src, dst, 1023, SYN).build(),
            src,
            1023,
            ScanType::TcpSyn,
        );
        assert_probe(
            &mut fx,
            &Frame::udp(src, dst, 137 + 1).build(),
            src,
            138,
            ScanType::Udp,
        );
    }
    // A port written later is watched from then on.
    let (mut tcp, udp) = portsentry_tests::fixture::default_ports();
    tcp.insert(8080);
    fx.dp.write_ports(&tcp, &udp).unwrap();
    let src = ip(V4_SRC);
    assert_probe(
        &mut fx,
        &Frame::tcp(src, ip(V4_DST), 8080, SYN).build(),
        src,
        8080,
        ScanType::TcpSyn,
    );
}

/// A segment or datagram sent to a group is no probe: to a multicast or broadcast MAC,
/// to an IPv4 multicast or the limited broadcast address, to an IPv6 multicast address.
/// The kernel answers none of them (no reset, no ICMP error). A router's DHCP offer to
/// 255.255.255.255:68, a watched port where no DHCP client runs, banned the router.
#[test]
fn nothing_sent_to_a_group_is_a_probe() {
    require_kernel!();
    let mut fx = Fixture::new();
    let groups = |v6: bool| -> Vec<std::net::IpAddr> {
        let list: &[&str] = if v6 {
            &["ff02::1", "ff02::1:2", "ff05::1:3"]
        } else {
            &["255.255.255.255", "224.0.0.1", "239.255.255.250"]
        };
        list.iter().map(|a| a.parse().unwrap()).collect()
    };
    for (src, dst) in pairs() {
        for port in [68u16, 123, 547] {
            // Watched, unicast: a probe.
            assert_probe(
                &mut fx,
                &Frame::udp(src, dst, port).build(),
                src,
                port,
                ScanType::Udp,
            );
            // The same datagram to a multicast and to the broadcast MAC.
            for first in [0x01u8, 0xff] {
                let mut f = Frame::udp(src, dst, port).build();
                f[0..6].fill(first);
                assert_uncounted(&mut fx, &f, src, Counter::PassNotProbe);
            }
            for group in groups(src.is_ipv6()) {
                let f = Frame::udp(src, group, port).build();
                assert_uncounted(&mut fx, &f, src, Counter::PassNotProbe);
            }
        }
        for (flags, kind) in [(SYN, ScanType::TcpSyn), (FIN, ScanType::TcpFin)] {
            assert_probe(
                &mut fx,
                &Frame::tcp(src, dst, 23, flags).build(),
                src,
                23,
                kind,
            );
            let mut f = Frame::tcp(src, dst, 23, flags).build();
            f[0..6].fill(0xff);
            assert_uncounted(&mut fx, &f, src, Counter::PassNotProbe);
            for group in groups(src.is_ipv6()) {
                let f = Frame::tcp(src, group, 23, flags).build();
                assert_uncounted(&mut fx, &f, src, Counter::PassNotProbe);
            }
        }
    }
}

/// A packet from an IPv6 source no answer reaches (in `::/96` or `::ffff:0:0/96`) is no
/// probe: forged, it learns nothing, and counted by its /64 under SOURCE_PREFIX_V6 one
/// SYN banned `::/64`, and with it the neighbours' duplicate address detection (sent
/// from `::`).
#[test]
fn nothing_from_an_ipv6_source_no_answer_reaches_is_a_probe() {
    use portsentry_common::maps::{SETTING_V6_PREFIX_SHIFT, Settings};
    require_kernel!();
    let mut fx = Fixture::new();
    let s = fx.dp.settings();
    fx.dp
        .write_settings(Settings {
            flags: s.flags | 64 << SETTING_V6_PREFIX_SHIFT,
            ..s
        })
        .unwrap();
    let dst = ip(probe_asserts::V6_DST);
    for src in ["::ffff:198.51.100.1", "::198.51.100.1", "::", "::1"] {
        let src = ip(src);
        for f in [
            Frame::tcp(src, dst, 23, SYN).build(),
            Frame::udp(src, dst, 123).build(),
        ] {
            fx.expect(&f, XDP_PASS, Counter::PassNotProbe);
        }
    }
    assert_eq!(fx.dp.source(ip("::")).unwrap(), None, "::/64 has no record");
    // The same from a routable source: a probe.
    assert_probe(
        &mut fx,
        &Frame::tcp(ip("2001:db8:9::1"), dst, 23, SYN).build(),
        ip("2001:db8:9::"),
        23,
        ScanType::TcpSyn,
    );
}

/// A unicast datagram of an IP protocol in `PS_PROTOCOLS` (nothing here serves it, in
/// its family) is a probe of type `IpProto`, its protocol number as the port; of another
/// protocol (one only the other family's words hold too), or sent to a group address, it
/// passes.
#[test]
fn ip_protocols_nothing_serves() {
    require_kernel!();
    let mut fx = Fixture::new();
    // Served: everything but 47, 99 and 132, and IPv4's 103, IPv6's 104.
    let mut served = [[true; 256]; 2];
    for family in &mut served {
        for p in [47usize, 99, 132] {
            family[p] = false;
        }
    }
    served[services::V4][103] = false;
    served[services::V6][104] = false;
    fx.dp
        .write_protocols(&configure::protocol_words(&served))
        .unwrap();
    for (src, dst) in pairs() {
        let (own, others) = if src.is_ipv4() {
            (103u8, 104u8)
        } else {
            (104, 103)
        };
        for p in [47u8, 99, 132, own] {
            let f = Frame::new(src, dst, Transport::Other(p)).build();
            assert_probe(&mut fx, &f, src, u16::from(p), ScanType::IpProto);
        }
        for p in [50u8, 58, 100, others] {
            let f = Frame::new(src, dst, Transport::Other(p)).build();
            assert_uncounted(&mut fx, &f, src, Counter::PassOtherProto);
        }
        // To a multicast or broadcast MAC: the kernel answers no such datagram.
        let mut f = Frame::new(src, dst, Transport::Other(99)).build();
        f[0] = 0x01;
        assert_uncounted(&mut fx, &f, src, Counter::PassOtherProto);
    }
}
