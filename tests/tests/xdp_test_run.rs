//! The XDP program through BPF_PROG_TEST_RUN with hand-built frames: every parsing,
//! ban, ignore, port and socket rule, asserting the verdict, the one verdict-reason
//! counter, and the map entries each packet should (or should not) have changed.

use std::net::{IpAddr, TcpListener, UdpSocket};

use ipnet::IpNet;
use portsentry_common::{
    Counter, ScanType,
    maps::{BanEntry, EVENT_BURST, Settings},
    packet,
};
use portsentry_tests::{
    fixture::Fixture,
    frames::{Ext, Frame, Transport, flags::*},
    require_kernel,
    testrun::{XDP_DROP, XDP_PASS},
};
use portsentry_user::clock::monotonic_ns;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

const V4_SRC: &str = "192.0.2.7";
const V4_DST: &str = "192.0.2.1";
const V6_SRC: &str = "2001:db8::7";
const V6_DST: &str = "2001:db8::1";

fn pairs() -> [(IpAddr, IpAddr); 2] {
    [(ip(V4_SRC), ip(V4_DST)), (ip(V6_SRC), ip(V6_DST))]
}

/// Asserts that `frame` is a counted probe of `kind` to `port` from `src`.
fn assert_probe(fx: &mut Fixture, frame: &[u8], src: IpAddr, port: u16, kind: ScanType) {
    let hits = fx.hits(src);
    fx.expect(frame, XDP_PASS, Counter::PassProbe);
    let s = fx.dp.source(src).unwrap().expect("source tracked");
    assert_eq!(s.hits, hits + 1, "hits of {src}");
    assert_eq!(s.last_port, port);
    assert_eq!(
        ScanType::from_u8(s.last_scan_type),
        Some(kind),
        "scan type of {src}"
    );
}

/// Asserts that `frame` passes for `reason` and leaves `src` untracked.
fn assert_uncounted(fx: &mut Fixture, frame: &[u8], src: IpAddr, reason: Counter) {
    let hits = fx.hits(src);
    fx.expect(frame, XDP_PASS, reason);
    assert_eq!(fx.hits(src), hits, "{src} must not be counted");
}

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
fn ack_and_rst_are_not_probes() {
    require_kernel!();
    let mut fx = Fixture::new();
    for (src, dst) in pairs() {
        for f in [
            ACK,
            RST,
            SYN | ACK,
            FIN | ACK,
            RST | ACK,
            PSH | ACK,
            XMAS | ACK,
            SYN | RST,
        ] {
            let frame = Frame::tcp(src, dst, 22, f).build();
            assert_uncounted(&mut fx, &frame, src, Counter::PassNotProbe);
        }
    }
    assert!(fx.drain_events().is_empty());
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

#[test]
fn vlan_tags() {
    require_kernel!();
    let mut fx = Fixture::new();
    for (src, dst) in pairs() {
        for tags in [
            &[0x8100][..],
            &[0x88a8],
            &[0x88a8, 0x8100],
            &[0x8100, 0x8100],
        ] {
            let f = Frame::tcp(src, dst, 22, SYN).vlans(tags).build();
            assert_probe(&mut fx, &f, src, 22, ScanType::TcpSyn);
            let f = Frame::udp(src, dst, 2000).vlans(tags).build();
            assert_uncounted(&mut fx, &f, src, Counter::PassUnwatched);
        }
        // A third tag is more than the program looks through: not IP to it.
        let f = Frame::tcp(src, dst, 22, SYN)
            .vlans(&[0x88a8, 0x8100, 0x8100])
            .build();
        assert_uncounted(&mut fx, &f, src, Counter::PassNotIp);
    }
}

#[test]
fn ipv4_options_and_bad_ihl() {
    require_kernel!();
    let mut fx = Fixture::new();
    let (src, dst) = (ip(V4_SRC), ip(V4_DST));
    // IHL 6 to 15: the ports are read after the options.
    for words in 1..=10usize {
        let opts = vec![1u8; words * 4];
        let f = Frame::tcp(src, dst, 100 + words as u16, SYN)
            .ipv4_options(&opts)
            .build();
        assert_probe(&mut fx, &f, src, 100 + words as u16, ScanType::TcpSyn);
    }
    for ihl in 0..5u8 {
        let mut f = Frame::tcp(src, dst, 22, SYN).build();
        f[14] = 0x40 | ihl;
        assert_uncounted(&mut fx, &f, src, Counter::PassMalformed);
    }
    // Version field not 4 under an IPv4 EtherType.
    let mut f = Frame::tcp(src, dst, 22, SYN).build();
    f[14] = 0x65;
    assert_uncounted(&mut fx, &f, src, Counter::PassMalformed);
}

#[test]
fn ipv6_extension_headers() {
    require_kernel!();
    let mut fx = Fixture::new();
    let (src, dst) = (ip(V6_SRC), ip(V6_DST));
    let chains: Vec<Vec<Ext>> = vec![
        vec![Ext::HopByHop(1)],
        vec![Ext::Routing(3)],
        vec![Ext::DestOpts(2)],
        vec![Ext::Auth(4)],
        vec![Ext::HopByHop(1), Ext::Routing(1), Ext::DestOpts(1)],
        vec![
            Ext::HopByHop(1),
            Ext::Fragment {
                offset: 0,
                more: true,
            },
        ],
        vec![
            Ext::HopByHop(2),
            Ext::Routing(2),
            Ext::Fragment {
                offset: 0,
                more: false,
            },
            Ext::DestOpts(1),
        ],
    ];
    for (i, chain) in chains.iter().enumerate() {
        let port = 200 + i as u16;
        let mut tcp = Frame::tcp(src, dst, port, FIN);
        let mut udp = Frame::udp(src, dst, port);
        for e in chain {
            tcp = tcp.ext(e.clone());
            udp = udp.ext(e.clone());
        }
        assert_probe(&mut fx, &tcp.build(), src, port, ScanType::TcpFin);
        assert_probe(&mut fx, &udp.build(), src, port, ScanType::Udp);
    }
    // Eight extension headers are walked; a ninth is too many (fail open).
    let mut f = Frame::tcp(src, dst, 22, SYN);
    for _ in 0..7 {
        f = f.ext(Ext::DestOpts(1));
    }
    assert_probe(&mut fx, &f.clone().build(), src, 22, ScanType::TcpSyn);
    let f = f.ext(Ext::DestOpts(1)).ext(Ext::DestOpts(1));
    assert_uncounted(&mut fx, &f.build(), src, Counter::PassMalformed);
    // No next header (59) and ICMPv6 are other protocols.
    let f = Frame::new(src, dst, Transport::Other(59)).build();
    assert_uncounted(&mut fx, &f, src, Counter::PassOtherProto);
    let f = Frame::new(src, dst, Transport::Other(58)).build();
    assert_uncounted(&mut fx, &f, src, Counter::PassOtherProto);
}

#[test]
fn fragments() {
    require_kernel!();
    let mut fx = Fixture::new();
    let (s4, d4, s6, d6) = (ip(V4_SRC), ip(V4_DST), ip(V6_SRC), ip(V6_DST));
    // First fragments carry the transport header and are classified.
    let f = Frame::tcp(s4, d4, 22, SYN).ipv4_fragment(0, true).build();
    assert_probe(&mut fx, &f, s4, 22, ScanType::TcpSyn);
    let f = Frame::udp(s6, d6, 53)
        .ext(Ext::Fragment {
            offset: 0,
            more: true,
        })
        .build();
    assert_probe(&mut fx, &f, s6, 53, ScanType::Udp);
    // Later fragments have no ports: passed, never counted, whatever their bytes say.
    for offset in [1, 185, 0x1fff] {
        let f = Frame::tcp(s4, d4, 22, SYN)
            .ipv4_fragment(offset, true)
            .build();
        assert_uncounted(&mut fx, &f, s4, Counter::PassFragment);
        let f = Frame::tcp(s4, d4, 22, SYN)
            .ipv4_fragment(offset, false)
            .build();
        assert_uncounted(&mut fx, &f, s4, Counter::PassFragment);
        let f = Frame::tcp(s6, d6, 22, SYN)
            .ext(Ext::HopByHop(1))
            .ext(Ext::Fragment {
                offset,
                more: false,
            })
            .build();
        assert_uncounted(&mut fx, &f, s6, Counter::PassFragment);
    }
}

#[test]
fn not_ip_and_other_protocols() {
    require_kernel!();
    let mut fx = Fixture::new();
    let (src, dst) = (ip(V4_SRC), ip(V4_DST));
    for et in [0x0806u16, 0x88cc, 0x8847, 0x0000] {
        let mut f = Frame::tcp(src, dst, 22, SYN);
        f.ethertype = Some(et);
        assert_uncounted(&mut fx, &f.build(), src, Counter::PassNotIp);
    }
    for proto in [1u8, 47, 50, 132] {
        let f = Frame::new(src, dst, Transport::Other(proto)).build();
        assert_uncounted(&mut fx, &f, src, Counter::PassOtherProto);
    }
}

/// Truncating a frame anywhere (down to the Ethernet header, the shortest frame
/// BPF_PROG_TEST_RUN accepts) never counts a probe, and at each header boundary is
/// passed as malformed. The host build of the parser agrees on every length.
#[test]
fn truncated_frames() {
    require_kernel!();
    let mut fx = Fixture::new();
    let (s4, d4, s6, d6) = (ip(V4_SRC), ip(V4_DST), ip(V6_SRC), ip(V6_DST));
    let frames = [
        Frame::tcp(s4, d4, 22, SYN),
        Frame::udp(s4, d4, 53).vlans(&[0x88a8, 0x8100]),
        Frame::tcp(s4, d4, 22, XMAS).ipv4_options(&[1; 8]),
        Frame::tcp(s6, d6, 22, 0),
        Frame::udp(s6, d6, 53)
            .vlans(&[0x8100])
            .ext(Ext::HopByHop(1))
            .ext(Ext::Routing(2))
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .ext(Ext::Auth(3))
            .ext(Ext::DestOpts(1)),
    ];
    for frame in &frames {
        let (bytes, bounds) = frame.build_with_boundaries();
        let src = frame.src;
        for len in packet::ETH_HLEN..bytes.len() {
            let cut = &bytes[..len];
            let want = match packet::classify(cut) {
                Ok(_) => panic!("a truncated frame classified as a probe: {frame:?} at {len}"),
                Err(reason) => reason,
            };
            assert_uncounted(&mut fx, cut, src, want);
            if bounds.contains(&len) && len > packet::ETH_HLEN {
                assert_eq!(
                    want,
                    Counter::PassMalformed,
                    "{frame:?} cut at boundary {len}"
                );
            }
        }
        // The whole frame is a probe.
        fx.expect(&bytes, XDP_PASS, Counter::PassProbe);
    }
}

#[test]
fn exact_bans_drop_every_protocol() {
    require_kernel!();
    let mut fx = Fixture::new();
    for (src, dst) in pairs() {
        let entry = BanEntry {
            since_ns: monotonic_ns(),
            ..Default::default()
        };
        fx.dp.insert_ban(&IpNet::from(src), &entry).unwrap();
        let frames = [
            Frame::tcp(src, dst, 22, SYN).build(),
            Frame::tcp(src, dst, 8080, ACK).build(),
            Frame::udp(src, dst, 53).build(),
            Frame::new(src, dst, Transport::Other(1)).build(),
            Frame::tcp(src, dst, 22, SYN).vlans(&[0x8100]).build(),
            // Banned sources' later fragments are dropped too.
            match src {
                IpAddr::V4(_) => Frame::tcp(src, dst, 22, SYN)
                    .ipv4_fragment(8, false)
                    .build(),
                IpAddr::V6(_) => Frame::tcp(src, dst, 22, SYN)
                    .ext(Ext::Fragment {
                        offset: 8,
                        more: false,
                    })
                    .build(),
            },
        ];
        for f in &frames {
            let o = fx.expect(f, XDP_DROP, Counter::DropBanned);
            assert_eq!(o.delta.get(Counter::EventSent), 0);
        }
        assert_eq!(fx.hits(src), 0, "a banned source's probes are not counted");
        // Another source is untouched.
        let other: IpAddr = match src {
            IpAddr::V4(_) => ip("192.0.2.8"),
            IpAddr::V6(_) => ip("2001:db8::8"),
        };
        fx.expect(
            &Frame::tcp(other, dst, 22, SYN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        // Unbanning lets it through again.
        assert!(fx.dp.remove_ban(&IpNet::from(src)).unwrap());
        fx.expect(&frames[0], XDP_PASS, Counter::PassProbe);
    }
}

#[test]
fn ban_expiry_is_checked_by_the_kernel() {
    require_kernel!();
    let mut fx = Fixture::new();
    let now = monotonic_ns();
    for (src, dst) in pairs() {
        let f = Frame::tcp(src, dst, 22, SYN).build();
        // Expired a second ago: passed (and the probe counted), the expiry counted.
        let expired = BanEntry {
            expires_ns: now - 1_000_000_000,
            since_ns: now - 2_000_000_000,
            ..Default::default()
        };
        fx.dp.insert_ban(&IpNet::from(src), &expired).unwrap();
        let o = fx.expect(&f, XDP_PASS, Counter::PassProbe);
        assert_eq!(o.delta.get(Counter::BanExpired), 1);
        // Expiring in an hour: dropped.
        let live = BanEntry {
            expires_ns: now + 3_600_000_000_000,
            ..expired
        };
        fx.dp.insert_ban(&IpNet::from(src), &live).unwrap();
        let o = fx.expect(&f, XDP_DROP, Counter::DropBanned);
        assert_eq!(o.delta.get(Counter::BanExpired), 0);
        // Permanent (0): dropped.
        fx.dp
            .insert_ban(&IpNet::from(src), &BanEntry::default())
            .unwrap();
        fx.expect(&f, XDP_DROP, Counter::DropBanned);
    }
    // A short ban stops applying on its own, with no daemon involved.
    let src = ip("192.0.2.9");
    let f = Frame::tcp(src, ip(V4_DST), 22, SYN).build();
    let short = BanEntry {
        expires_ns: monotonic_ns() + 200_000_000,
        ..Default::default()
    };
    fx.dp.insert_ban(&IpNet::from(src), &short).unwrap();
    fx.expect(&f, XDP_DROP, Counter::DropBanned);
    std::thread::sleep(std::time::Duration::from_millis(300));
    fx.expect(&f, XDP_PASS, Counter::PassProbe);
}

#[test]
fn prefix_bans() {
    require_kernel!();
    let mut fx = Fixture::new();
    let dst4 = ip(V4_DST);
    let dst6 = ip(V6_DST);
    fx.dp
        .insert_ban(&net("198.51.100.0/24"), &BanEntry::default())
        .unwrap();
    fx.dp
        .insert_ban(&net("2001:db8:bad::/48"), &BanEntry::default())
        .unwrap();
    for src in ["198.51.100.1", "198.51.100.254"] {
        let f = Frame::udp(ip(src), dst4, 2000).build();
        fx.expect(&f, XDP_DROP, Counter::DropBanned);
    }
    for src in ["2001:db8:bad::1", "2001:db8:bad:ffff::9"] {
        let f = Frame::tcp(ip(src), dst6, 443, ACK).build();
        fx.expect(&f, XDP_DROP, Counter::DropBanned);
    }
    // Just outside the prefixes.
    fx.expect(
        &Frame::udp(ip("198.51.101.1"), dst4, 2000).build(),
        XDP_PASS,
        Counter::PassUnwatched,
    );
    fx.expect(
        &Frame::tcp(ip("2001:db8:bae::1"), dst6, 443, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    // An IPv4 /0 covers every IPv4 source and no IPv6 one.
    fx.dp
        .insert_ban(&net("0.0.0.0/0"), &BanEntry::default())
        .unwrap();
    fx.expect(
        &Frame::udp(ip("203.0.113.5"), dst4, 2000).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    fx.expect(
        &Frame::udp(ip("2001:db8::5"), dst6, 2000).build(),
        XDP_PASS,
        Counter::PassUnwatched,
    );
    // An expired prefix ban does not apply.
    fx.dp.remove_ban(&net("0.0.0.0/0")).unwrap();
    let expired = BanEntry {
        expires_ns: monotonic_ns() - 1_000_000_000,
        ..Default::default()
    };
    fx.dp.insert_ban(&net("203.0.113.0/24"), &expired).unwrap();
    let o = fx.expect(
        &Frame::udp(ip("203.0.113.5"), dst4, 2000).build(),
        XDP_PASS,
        Counter::PassUnwatched,
    );
    assert_eq!(o.delta.get(Counter::BanExpired), 1);
    // Removing the last prefix ban turns the trie lookup off again.
    for n in ["198.51.100.0/24", "2001:db8:bad::/48", "203.0.113.0/24"] {
        assert!(fx.dp.remove_ban(&net(n)).unwrap(), "{n}");
    }
    assert_eq!(
        fx.dp.settings().flags & portsentry_common::maps::SETTING_PREFIX_BANS,
        0
    );
    fx.expect(
        &Frame::udp(ip("198.51.100.1"), dst4, 2000).build(),
        XDP_PASS,
        Counter::PassUnwatched,
    );
    assert_eq!(fx.dp.bans().unwrap().len(), 0);
}

#[test]
fn ignored_sources_are_never_counted() {
    require_kernel!();
    let mut fx = Fixture::new();
    fx.dp
        .replace_ignore(&[
            net("192.0.2.0/28"),
            net("2001:db8::/126"),
            net("203.0.113.9/32"),
        ])
        .unwrap();
    for src in ["192.0.2.7", "192.0.2.15", "2001:db8::3", "203.0.113.9"] {
        let dst = if src.contains(':') {
            ip(V6_DST)
        } else {
            ip(V4_DST)
        };
        for f in [
            Frame::tcp(ip(src), dst, 22, SYN),
            Frame::udp(ip(src), dst, 53),
        ] {
            assert_uncounted(&mut fx, &f.build(), ip(src), Counter::PassIgnored);
        }
    }
    for src in ["192.0.2.16", "2001:db8::4", "203.0.113.10"] {
        let dst = if src.contains(':') {
            ip(V6_DST)
        } else {
            ip(V4_DST)
        };
        fx.expect(
            &Frame::tcp(ip(src), dst, 22, SYN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
    }
    // An ignored source that is also banned is still dropped: bans come first.
    fx.dp
        .insert_ban(&net("203.0.113.9/32"), &BanEntry::default())
        .unwrap();
    fx.expect(
        &Frame::tcp(ip("203.0.113.9"), ip(V4_DST), 22, SYN).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    // Replacing the list removes what is no longer in it.
    fx.dp.replace_ignore(&[net("2001:db8::/126")]).unwrap();
    fx.expect(
        &Frame::tcp(ip("192.0.2.7"), ip(V4_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    fx.expect(
        &Frame::tcp(ip("2001:db8::3"), ip(V6_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassIgnored,
    );
    fx.dp.replace_ignore(&[]).unwrap();
    assert_eq!(
        fx.dp.settings().flags & portsentry_common::maps::SETTING_IGNORE,
        0
    );
    fx.expect(
        &Frame::tcp(ip("2001:db8::3"), ip(V6_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
}

/// A port with a local socket is never a scan target. BPF_PROG_TEST_RUN looks sockets
/// up in the calling thread's network namespace, so the test runs in one of its own.
#[test]
fn listening_ports_are_not_targets() {
    require_kernel!();
    let mut fx = Fixture::new();
    let (tcp, tcp6, udp, udp6) = fx.ns.enter(|| {
        (
            TcpListener::bind("0.0.0.0:25").unwrap(),
            TcpListener::bind("[::]:26").unwrap(),
            UdpSocket::bind("0.0.0.0:69").unwrap(),
            UdpSocket::bind("[::]:70").unwrap(),
        )
    });
    {
        for (src, dst) in pairs() {
            for f in [SYN, FIN, 0, XMAS] {
                let port = if src.is_ipv4() { 25 } else { 26 };
                assert_uncounted(
                    &mut fx,
                    &Frame::tcp(src, dst, port, f).build(),
                    src,
                    Counter::PassListening,
                );
            }
            let port = if src.is_ipv4() { 69 } else { 70 };
            assert_uncounted(
                &mut fx,
                &Frame::udp(src, dst, port).build(),
                src,
                Counter::PassListening,
            );
            // The neighbouring ports have no socket.
            assert_probe(
                &mut fx,
                &Frame::tcp(src, dst, 27, SYN).build(),
                src,
                27,
                ScanType::TcpSyn,
            );
            assert_probe(
                &mut fx,
                &Frame::udp(src, dst, 71).build(),
                src,
                71,
                ScanType::Udp,
            );
        }
        // Closing the socket makes the port a target again, at once.
        drop(tcp);
        drop(udp);
        let (src, dst) = (ip(V4_SRC), ip(V4_DST));
        assert_probe(
            &mut fx,
            &Frame::tcp(src, dst, 25, SYN).build(),
            src,
            25,
            ScanType::TcpSyn,
        );
        assert_probe(
            &mut fx,
            &Frame::udp(src, dst, 69).build(),
            src,
            69,
            ScanType::Udp,
        );
        drop((tcp6, udp6));
    }
}

#[test]
fn events_are_bounded_per_source() {
    require_kernel!();
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: 3,
        ..Default::default()
    });
    let (src, dst) = (ip(V4_SRC), ip(V4_DST));
    let mut sent = Vec::new();
    for i in 1..=1000u32 {
        let port = 200 + (i % 800) as u16;
        let o = fx.expect(
            &Frame::tcp(src, dst, port, SYN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        if o.delta.get(Counter::EventSent) == 1 {
            sent.push(i);
        }
    }
    // Nothing before the trigger, every probe for EVENT_BURST events, then powers of two.
    let mut want: Vec<u32> = (3..3 + EVENT_BURST).collect();
    want.extend([16, 32, 64, 128, 256, 512]);
    assert_eq!(sent, want);
    let events = fx.drain_events();
    assert_eq!(events.iter().map(|e| e.hits).collect::<Vec<_>>(), want);
    let s = fx.dp.source(src).unwrap().unwrap();
    assert_eq!(s.hits, 1000);
    assert_eq!(s.events, want.len() as u32);
    // The port filter estimates distinct ports: 800 distinct ports saturate it near 256.
    assert!(
        s.distinct_ports > 200 && s.distinct_ports <= 256,
        "{}",
        s.distinct_ports
    );
}

#[test]
fn event_budget_throttles_floods_and_counts_them() {
    require_kernel!();
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: 1,
        events_per_sec: 1,
        event_burst: 5,
        flags: 0,
        cookie_secret: 0,
    });
    let dst = ip(V4_DST);
    let mut sent = 0;
    let mut throttled = 0;
    for i in 0..200u32 {
        let src = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
        let o = fx.expect(
            &Frame::udp(src, dst, 161).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        sent += o.delta.get(Counter::EventSent);
        throttled += o.delta.get(Counter::EventThrottled);
        assert_eq!(fx.hits(src), 1, "every probe is still counted");
    }
    // The bucket starts empty and refills at one per second: a handful at most.
    assert!(sent <= 7, "sent {sent}");
    assert_eq!(sent + throttled, 200);
    assert_eq!(fx.drain_events().len() as u64, sent);
    // A source that keeps probing is reported even with the budget spent: from its
    // third hit on its events bypass the budget (still bounded per source).
    let persistent = ip("192.0.2.50");
    let mut got = Vec::new();
    for hit in 1..=6u16 {
        let f = Frame::udp(persistent, dst, 160 + hit).build();
        let o = fx.expect(&f, XDP_PASS, Counter::PassProbe);
        if o.delta.get(Counter::EventSent) == 1 {
            got.push(hit);
        }
    }
    assert!(got.ends_with(&[3, 4, 5, 6]), "events at hits {got:?}");
}

#[test]
fn lost_events_are_counted_and_retried() {
    require_kernel!();
    let mut fx = Fixture::new();
    let dst = ip(V4_DST);
    // Fill the ring buffer without reading it.
    let mut lost = 0;
    let mut i = 0u32;
    while lost == 0 {
        let src = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
        let o = fx.expect(
            &Frame::udp(src, dst, 161).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        lost += o.delta.get(Counter::EventLost);
        i += 1;
        assert!(i < 200_000, "the ring buffer never filled");
    }
    // The source whose event was lost gets one on its next probe once there is room.
    let last = IpAddr::from([198, 18, ((i - 1) >> 8) as u8, (i - 1) as u8]);
    assert_eq!(fx.dp.source(last).unwrap().unwrap().events, 0);
    let drained = fx.drain_events();
    assert_eq!(drained.len() as u32, i - 1);
    let o = fx.expect(
        &Frame::udp(last, dst, 162).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    assert_eq!(o.delta.get(Counter::EventSent), 1);
    assert_eq!(fx.dp.source(last).unwrap().unwrap().events, 1);
}

/// One's-complement sum of 16-bit big-endian words.
fn ones_sum(bytes: &[u8], mut sum: u32) -> u32 {
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

/// The pseudo-header sum of a TCP segment of `len` bytes.
fn pseudo_sum(src: IpAddr, dst: IpAddr, len: usize) -> u32 {
    let octets = |a: IpAddr| match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    ones_sum(&octets(dst), ones_sum(&octets(src), 0)) + 6 + len as u32
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// True when the TCP checksum of the segment at `l4` in `frame` is right.
fn tcp_checksum_ok(frame: &[u8], src: IpAddr, dst: IpAddr, l4: usize) -> bool {
    let seg = &frame[l4..];
    fold(ones_sum(seg, pseudo_sum(src, dst, seg.len()))) == 0xffff
}

/// Fills in a TCP checksum for `frame` (the builder leaves it 0).
fn with_tcp_checksum(mut frame: Vec<u8>, src: IpAddr, dst: IpAddr, l4: usize) -> Vec<u8> {
    frame[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let seg = &frame[l4..];
    let c = !fold(ones_sum(seg, pseudo_sum(src, dst, seg.len())));
    frame[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    frame
}

#[test]
fn verification_challenges_syns_and_verifies_answers() {
    require_kernel!();
    use portsentry_common::maps::{EVENT_VERIFIED, SETTING_VERIFY, SOURCE_VERIFIED};
    let secret = 0x5eed_1234_abcd_9876;
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: 1,
        events_per_sec: 0,
        event_burst: 0,
        flags: SETTING_VERIFY,
        cookie_secret: secret,
    });
    for (src, dst) in pairs() {
        // A SYN probe is answered with a SYN-ACK challenge (XDP_TX) and counted.
        let (syn, bounds) = Frame::tcp(src, dst, 22, SYN)
            .vlans(&[0x8100])
            .build_with_boundaries();
        let l4 = *bounds.last().unwrap();
        let syn = with_tcp_checksum(syn, src, dst, l4);
        let (o, out) = fx.run_out(&syn);
        assert_eq!(o.retval, portsentry_tests::testrun::XDP_TX, "{o:?}");
        assert_eq!(o.reason(), Counter::TxChallenge);
        assert_eq!(fx.hits(src), 1);
        let ev = fx.drain_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].flags & EVENT_VERIFIED, 0, "a SYN proves nothing");
        // The answer: MACs, addresses and ports swapped, SYN|ACK, ack = seq + 1, a
        // valid checksum, and the cookie as sequence number.
        assert_eq!(out.len(), syn.len());
        assert_eq!(out[0..6], syn[6..12]);
        assert_eq!(out[6..12], syn[0..6]);
        let back = packet::classify(out.as_slice()).map(|p| p.ip);
        let ip_out = match back {
            Ok(ip) => ip,
            Err(_) => packet::parse_ip(out.as_slice()).unwrap(),
        };
        assert_eq!(
            packet::addr_bytes(&ip_out.src),
            portsentry_user::kernel::addr::to_key(dst)
        );
        assert_eq!(
            packet::addr_bytes(&ip_out.dst),
            portsentry_user::kernel::addr::to_key(src)
        );
        let t = &out[l4..];
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 22, "source port");
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 40000, "destination port");
        assert_eq!(t[13], SYN | ACK);
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
        assert_eq!(ack, 0x0102_0304 + 1);
        assert!(
            tcp_checksum_ok(&out, dst, src, l4),
            "TCP checksum of the challenge"
        );
        let ip_in = packet::parse_ip(syn.as_slice()).unwrap();
        let slot = portsentry_common::maps::cookie_slot(monotonic_ns());
        let want =
            |slot| portsentry_common::maps::cookie(&ip_in.src, &ip_in.dst, 40000, 22, secret, slot);
        assert!(
            seq == want(slot) || seq == want(slot - 1),
            "the cookie is the sequence number"
        );

        // A wrong answer proves nothing and is ordinary traffic.
        let mut bad = Frame::tcp(src, dst, 22, ACK).vlans(&[0x8100]).build();
        bad[l4 + 8..l4 + 12].copy_from_slice(&(seq.wrapping_add(2)).to_be_bytes());
        let o = fx.expect(&bad, XDP_PASS, Counter::PassNotProbe);
        assert_eq!(o.delta.get(Counter::Verified), 0);
        assert!(fx.drain_events().is_empty());

        // The right answer (an ACK acknowledging the cookie) verifies the source.
        let mut good = bad.clone();
        good[l4 + 8..l4 + 12].copy_from_slice(&(seq.wrapping_add(1)).to_be_bytes());
        let o = fx.expect(&good, XDP_PASS, Counter::PassProbe);
        assert_eq!(o.delta.get(Counter::Verified), 1);
        let ev = fx.drain_events();
        assert_eq!(ev.len(), 1, "a verified answer is always reported");
        assert_eq!(ev[0].flags & EVENT_VERIFIED, EVENT_VERIFIED);
        let s = fx.dp.source(src).unwrap().unwrap();
        assert_eq!(s.flags & SOURCE_VERIFIED, SOURCE_VERIFIED);
        // Another source's ACK with the same numbers is not an answer (the cookie
        // covers the addresses).
        let other: IpAddr = if src.is_ipv4() {
            ip("192.0.2.99")
        } else {
            ip("2001:db8::99")
        };
        let mut forged = Frame::tcp(other, dst, 22, ACK).vlans(&[0x8100]).build();
        forged[l4 + 8..l4 + 12].copy_from_slice(&(seq.wrapping_add(1)).to_be_bytes());
        fx.expect(&forged, XDP_PASS, Counter::PassNotProbe);
        // Non-SYN probes are counted as usual, not challenged.
        fx.expect(
            &Frame::tcp(src, dst, 23, FIN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        fx.drain_events();
    }
}

/// Two bans in one `PS_BAN_CACHE` slot: the first is served by the cache, the second by
/// the hash; lifting either leaves the other in force.
#[test]
fn ban_cache_collisions() {
    require_kernel!();
    use portsentry_common::maps::ban_cache_slot;
    let words = |ip: IpAddr| -> packet::AddrWords {
        bytemuck::cast(portsentry_user::kernel::addr::to_key(ip))
    };
    let a = ip("198.51.100.1");
    let slot = ban_cache_slot(&words(a));
    let b = (2..=u32::MAX)
        .map(|n| IpAddr::from((0xc633_6400u32 + n).to_be_bytes()))
        .find(|c| ban_cache_slot(&words(*c)) == slot)
        .expect("a colliding address");
    let dst = ip(V4_DST);
    let mut fx = Fixture::new();
    for src in [a, b] {
        fx.dp
            .insert_ban(&IpNet::from(src), &BanEntry::default())
            .unwrap();
    }
    for src in [a, b] {
        fx.expect(
            &Frame::tcp(src, dst, 443, ACK).build(),
            XDP_DROP,
            Counter::DropBanned,
        );
    }
    // Lift the cached one: the other is still found (in the hash).
    assert!(fx.dp.remove_ban(&IpNet::from(a)).unwrap());
    fx.expect(
        &Frame::tcp(a, dst, 443, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    fx.expect(
        &Frame::tcp(b, dst, 443, ACK).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    // A cached ban that expired does not hide a prefix ban over the same source.
    let expired = BanEntry {
        expires_ns: monotonic_ns() - 1_000_000_000,
        ..Default::default()
    };
    fx.dp.insert_ban(&IpNet::from(a), &expired).unwrap();
    let o = fx.expect(
        &Frame::tcp(a, dst, 443, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    assert_eq!(o.delta.get(Counter::BanExpired), 1);
    fx.dp
        .insert_ban(&net("198.51.100.0/24"), &BanEntry::default())
        .unwrap();
    fx.expect(
        &Frame::tcp(a, dst, 443, ACK).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    // A later ban of the same address with a new expiry replaces the cached one.
    fx.dp.remove_ban(&net("198.51.100.0/24")).unwrap();
    fx.dp
        .insert_ban(&IpNet::from(a), &BanEntry::default())
        .unwrap();
    fx.expect(
        &Frame::tcp(a, dst, 443, ACK).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
}
