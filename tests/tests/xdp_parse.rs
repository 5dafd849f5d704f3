//! The XDP program's parser through BPF_PROG_TEST_RUN with hand-built frames: VLAN tags,
//! IPv4 options, IPv6 extension headers, fragments, other protocols and truncated frames,
//! each asserting the verdict and the one verdict-reason counter.

use ipnet::IpNet;
use portsentry_common::{
    Counter, ScanType,
    maps::{BanEntry, SETTING_DROP_EVASIVE, Settings},
    packet,
};
use portsentry_tests::{
    crafted::{self, Piece, checksummed},
    fixture::Fixture,
    frames::{Ext, Frame, Transport, flags::*},
    probe_asserts::{V4_DST, V4_SRC, V6_DST, V6_SRC, assert_probe, assert_uncounted, ip, pairs},
    require_kernel,
    testrun::{XDP_DROP, XDP_PASS},
};

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
        // A third tag is more than the program looks through: not IP to it (the kernel
        // delivers it only through a VLAN device nested three deep).
        let f = Frame::tcp(src, dst, 22, SYN)
            .vlans(&[0x88a8, 0x8100, 0x8100])
            .build();
        assert_uncounted(&mut fx, &f, src, Counter::PassNotIp);
    }
}

/// Priority tags (VLAN ID 0) the kernel strips, any number in a row, and delivers what
/// they carry: behind three tags of which one is a priority tag a probe could be
/// answered unseen, and a banned source's packets pass. Dropped with
/// BLOCK_EVASIVE_PACKETS (banned or not), passed as the opened header chain without.
#[test]
fn priority_tags_past_the_walk() {
    require_kernel!();
    // The frame behind `n` tags of VLAN ID 0.
    let tagged = |f: Frame, n: usize| {
        let mut b = f.vlans(&vec![0x8100; n]).build();
        for t in 0..n {
            b[14 + 4 * t] = 0;
            b[15 + 4 * t] = 0;
        }
        b
    };
    for (src, dst) in pairs() {
        let mut fx = evasive_fixture();
        for n in [1, 2] {
            assert_probe(
                &mut fx,
                &tagged(Frame::tcp(src, dst, 22, SYN), n),
                src,
                22,
                ScanType::TcpSyn,
            );
        }
        for n in [3, 4, 10] {
            for f in [Frame::tcp(src, dst, 22, SYN), Frame::udp(src, dst, 2000)] {
                fx.expect(&tagged(f, n), XDP_DROP, Counter::DropHeaderChain);
            }
        }
        let entry = BanEntry {
            since_ns: portsentry_user::clock::monotonic_ns(),
            ..Default::default()
        };
        fx.dp.insert_ban(&IpNet::from(src), &entry).unwrap();
        let ack = Frame::tcp(src, dst, 80, ACK);
        fx.expect(&tagged(ack, 3), XDP_DROP, Counter::DropHeaderChain);
        let mut fx = Fixture::new();
        let f = tagged(Frame::tcp(src, dst, 22, SYN), 3);
        fx.expect(&f, XDP_PASS, Counter::PassHeaderChain);
        // Priority tags before other IDs: stripped, and what follows goes to the VLAN
        // devices of those IDs.
        let ids = |vids: [u8; 3]| {
            let mut f = tagged(Frame::tcp(src, dst, 22, SYN), 3);
            for (t, v) in vids.iter().enumerate() {
                f[15 + 4 * t] = *v;
            }
            f
        };
        for vids in [[0, 0, 5], [0, 5, 7], [5, 0, 7], [5, 7, 0]] {
            fx.expect(&ids(vids), XDP_PASS, Counter::PassHeaderChain);
        }
        // Three tags of other IDs: only VLAN devices nested three deep take them.
        assert_uncounted(&mut fx, &ids([5, 6, 7]), src, Counter::PassNotIp);
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
    // Eight extension headers are walked; a ninth is too many (passed with
    // BLOCK_EVASIVE_PACKETS="0", as here; see `header_chains`).
    let mut f = Frame::tcp(src, dst, 22, SYN);
    for _ in 0..7 {
        f = f.ext(Ext::DestOpts(1));
    }
    assert_probe(&mut fx, &f.clone().build(), src, 22, ScanType::TcpSyn);
    let f = f.ext(Ext::DestOpts(1)).ext(Ext::DestOpts(1));
    assert_uncounted(&mut fx, &f.build(), src, Counter::PassHeaderChain);
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

fn evasive_fixture() -> Fixture {
    Fixture::with_settings(Settings {
        event_trigger: 1,
        flags: SETTING_DROP_EVASIVE,
        ..Settings::default()
    })
}

/// A first fragment with the TCP header split (nmap -f: 8 bytes, --mtu 16: 16 bytes) is
/// a probe, classified by the datagram's own length (never link padding), of the type
/// its flags say or, without them, `TcpFragment`. BLOCK_EVASIVE_PACKETS then drops every
/// such fragment, counted first where it is a probe.
#[test]
fn tiny_first_fragments() {
    require_kernel!();
    let (s4, d4, s6, d6) = (ip(V4_SRC), ip(V4_DST), ip(V6_SRC), ip(V6_DST));
    let first = |src, dst, port, flags| -> Frame {
        let f = Frame::tcp(src, dst, port, flags);
        match src {
            std::net::IpAddr::V4(_) => f.ipv4_fragment(0, true),
            std::net::IpAddr::V6(_) => f.ext(Ext::Fragment {
                offset: 0,
                more: true,
            }),
        }
    };
    let mut fx = Fixture::new();
    for (src, dst) in [(s4, d4), (s6, d6)] {
        let f = first(src, dst, 80, SYN).l4_keep(8).build();
        assert_probe(&mut fx, &f, src, 80, ScanType::TcpFragment);
        // Padded to Ethernet's 60 bytes: the zeros after the datagram are not flags.
        let f = first(src, dst, 81, SYN).l4_keep(8).pad_to(60).build();
        assert_probe(&mut fx, &f, src, 81, ScanType::TcpFragment);
        let f = first(src, dst, 82, SYN).l4_keep(16).build();
        assert_probe(&mut fx, &f, src, 82, ScanType::TcpSyn);
        let f = first(src, dst, 83, FIN | ACK).l4_keep(16).build();
        assert_probe(&mut fx, &f, src, 83, ScanType::TcpMaimon);
        // The whole header in the first fragment: an ordinary probe.
        let f = first(src, dst, 84, XMAS).build();
        assert_probe(&mut fx, &f, src, 84, ScanType::TcpXmas);
        // Fewer than 4 bytes: no ports (the kernel discards such a fragment).
        let f = first(src, dst, 85, SYN).l4_keep(2).build();
        assert_uncounted(&mut fx, &f, src, Counter::PassMalformed);
        // A UDP header split: the ports are there.
        let mut u = Frame::udp(src, dst, 86).l4_keep(4);
        u = match src {
            std::net::IpAddr::V4(_) => u.ipv4_fragment(0, true),
            std::net::IpAddr::V6(_) => u.ext(Ext::Fragment {
                offset: 0,
                more: true,
            }),
        };
        assert_probe(&mut fx, &u.build(), src, 86, ScanType::Udp);
        // Not a fragment: a TCP header cut short is malformed (the kernel drops it).
        let f = Frame::tcp(src, dst, 87, SYN).l4_keep(8).build();
        assert_uncounted(&mut fx, &f, src, Counter::PassMalformed);
    }

    let mut fx = evasive_fixture();
    for (src, dst) in [(s4, d4), (s6, d6)] {
        let hits = fx.hits(src);
        let f = first(src, dst, 80, SYN).l4_keep(8).build();
        fx.expect(&f, XDP_DROP, Counter::DropTinyFragment);
        let f = first(src, dst, 81, SYN).l4_keep(16).build();
        fx.expect(&f, XDP_DROP, Counter::DropTinyFragment);
        assert_eq!(fx.hits(src), hits + 2, "dropped and counted");
        // To a port not watched (or a service's): dropped, not counted.
        let f = first(src, dst, 8080, SYN).l4_keep(8).build();
        fx.expect(&f, XDP_DROP, Counter::DropTinyFragment);
        assert_eq!(fx.hits(src), hits + 2);
        // Whole headers in first fragments, and later fragments, still pass.
        let f = first(src, dst, 82, SYN).build();
        fx.expect(&f, XDP_PASS, Counter::PassProbe);
        let f = match src {
            std::net::IpAddr::V4(_) => Frame::tcp(src, dst, 22, SYN).ipv4_fragment(1, false),
            std::net::IpAddr::V6(_) => Frame::tcp(src, dst, 22, SYN).ext(Ext::Fragment {
                offset: 1,
                more: false,
            }),
        };
        fx.expect(&f.l4_keep(8).build(), XDP_PASS, Counter::PassFragment);
    }
}

/// An IPv6 chain of more extension headers than the program walks: passed, or dropped
/// with BLOCK_EVASIVE_PACKETS; a banned source's is dropped as banned either way.
#[test]
fn header_chains() {
    require_kernel!();
    let (src, dst) = (ip(V6_SRC), ip(V6_DST));
    let long = |n: usize, port: u16| {
        let mut f = Frame::tcp(src, dst, port, SYN);
        for _ in 0..n {
            f = f.ext(Ext::DestOpts(1));
        }
        f.build()
    };
    let mut fx = evasive_fixture();
    assert_probe(&mut fx, &long(8, 22), src, 22, ScanType::TcpSyn);
    for n in [9, 10, 30, 100] {
        fx.expect(&long(n, 22), XDP_DROP, Counter::DropHeaderChain);
    }
    let mut fx = Fixture::new();
    fx.expect(&long(10, 22), XDP_PASS, Counter::PassHeaderChain);
    let entry = BanEntry {
        since_ns: portsentry_user::clock::monotonic_ns(),
        ..Default::default()
    };
    fx.dp.insert_ban(&IpNet::from(src), &entry).unwrap();
    fx.expect(&long(10, 22), XDP_DROP, Counter::DropBanned);
}

/// An IPv6 first fragment that ends between two extension headers: the kernel queues
/// it and answers the reassembled datagram, so the probe lies in the next fragment: the
/// chain is one the program cannot walk (dropped with BLOCK_EVASIVE_PACKETS), however
/// the frame ends. Any first fragment without the start of its transport header is
/// (RFC 7112 wants the whole chain in the first fragment).
#[test]
fn first_fragments_that_cut_the_chain() {
    require_kernel!();
    let (src, dst) = (ip(V6_SRC), ip(V6_DST));
    let first = |second: u8, len: usize| {
        let whole = checksummed(
            Frame::tcp(src, dst, 22, SYN)
                .ext(Ext::DestOpts(1))
                .ext(Ext::DestOpts(second))
                .build(),
        );
        let piece = Piece {
            offset: 0,
            len,
            more: true,
        };
        crafted::fragments(&whole, &[piece], 7).remove(0)
    };
    let mut fx = evasive_fixture();
    fx.expect(&first(1, 8), XDP_DROP, Counter::DropHeaderChain);
    // Bytes after the datagram (its payload length) are not its chain: the kernel
    // trims them, then queues the fragment.
    let mut padded = first(1, 8);
    padded.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    fx.expect(&padded, XDP_DROP, Counter::DropHeaderChain);
    // Ending inside a header, or with the chain and not the transport header: the kernel
    // drops it, but no sender makes it either (RFC 7112): as above.
    fx.expect(&first(2, 16), XDP_DROP, Counter::DropHeaderChain);
    fx.expect(&first(1, 16), XDP_DROP, Counter::DropHeaderChain);
    // The whole chain in the first fragment and the TCP header after it: a tiny
    // fragment, counted and dropped as one.
    fx.expect(&first(1, 24), XDP_DROP, Counter::DropTinyFragment);
    let mut fx = Fixture::new();
    fx.expect(&first(1, 8), XDP_PASS, Counter::PassHeaderChain);
    let entry = BanEntry {
        since_ns: portsentry_user::clock::monotonic_ns(),
        ..Default::default()
    };
    fx.dp.insert_ban(&IpNet::from(src), &entry).unwrap();
    // Banned: the next fragment is dropped (a later fragment is checked), so nothing
    // is reassembled.
    let whole = checksummed(
        Frame::tcp(src, dst, 22, SYN)
            .ext(Ext::DestOpts(1))
            .ext(Ext::DestOpts(1))
            .build(),
    );
    let second = Piece {
        offset: 8,
        len: 28,
        more: false,
    };
    fx.expect(
        &crafted::fragments(&whole, &[second], 7)[0],
        XDP_DROP,
        Counter::DropBanned,
    );
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
    // IPv6's extension-header numbers are ordinary protocols in IPv4 (51 is IPsec AH):
    // passed as such, never taken for an over-long IPv6 chain (which is dropped).
    for proto in [1u8, 47, 50, 132, 0, 43, 44, 51, 60] {
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
                // The last frame is a first fragment: cut after its Fragment header
                // (byte 90) and before its transport header (byte 110), it does not
                // hold its whole chain (`first_fragments_that_cut_the_chain`).
                let chain_cut = frame.ipv6_ext.len() == 5 && (90..110).contains(&len);
                let expected = if chain_cut {
                    Counter::PassHeaderChain
                } else {
                    Counter::PassMalformed
                };
                assert_eq!(want, expected, "{frame:?} cut at boundary {len}");
            }
        }
        // The whole frame is a probe.
        fx.expect(&bytes, XDP_PASS, Counter::PassProbe);
    }
}
