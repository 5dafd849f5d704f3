//! The program against the kernel's own stack: "if the host answers it, we saw it".
//!
//! A corpus of crafted frames (every TCP flag combination, IPv4 options of many lengths
//! and kinds, TCP options at the maximum and odd data offsets, IPv6 extension-header
//! chains of many lengths and kinds with Hop-by-Hop not first, fragments tiny,
//! out of order, overlapping and duplicated, truncated and over-long headers, UDP,
//! protocols nothing serves) is sent from the attacker namespace to closed watched
//! ports of a server namespace running the program on its veth end. For each case the
//! test records whether the server answered (a RST, an ICMP error: captured on the
//! attacker's side) and whether the program counted a probe or dropped a frame of it.
//! No case may be answered and neither counted nor dropped. The corpus runs twice:
//! with BLOCK_EVASIVE_PACKETS (the default), where that holds for every case, and
//! without, where it holds for every case but the one documented opening the setting
//! makes: an IPv6 chain longer than the program walks passes unseen
//! (`pass_header_chain`), and the kernel answers what is behind it.

use std::{net::IpAddr, time::Duration};

use portsentry_common::{
    Counter,
    maps::{SETTING_DROP_EVASIVE, Settings},
};
use portsentry_tests::{
    crafted::{Piece, checksummed, even_pieces, family, fragments, ipv4_header_checksummed},
    fixture::default_ports,
    frames::{Ext, Frame, Transport, flags::*},
    netns::TestNet,
    require_kernel,
    wire::{Answer, Wire, answer},
};
use portsentry_user::{
    config::{AttachMode, services},
    kernel::{Counters, Dataplane, MapSizes, configure},
};

/// ICMPv6 parameter problem, code 3: an IPv6 first fragment whose header chain the
/// fragment cuts short (the kernel's `ipv6frag_thdr_truncated`), dropped.
const INCOMPLETE_CHAIN: Answer = Answer::IcmpError {
    icmp_type: 4,
    code: 3,
};

/// A closed watched port (nothing listens in the server namespace).
const PORT: u16 = 80;
/// How long an answer may take: the kernel answers at once, or not at all.
const WAIT: Duration = Duration::from_millis(150);

struct Case {
    name: String,
    frames: Vec<Vec<u8>>,
}

/// Counters that mean the program saw a frame: counted as a probe, or dropped.
const SEEN: [Counter; 5] = [
    Counter::PassProbe,
    Counter::TxChallenge,
    Counter::DropBanned,
    Counter::DropTinyFragment,
    Counter::DropHeaderChain,
];

fn tcp(src: IpAddr, dst: IpAddr, flags: u8, sport: u16) -> Frame {
    Frame::tcp(src, dst, PORT, flags).sport(sport)
}

/// `frame` with `n` 802.1Q tags of VLAN ID `vid` after its MAC addresses.
fn vlan_tagged(frame: Vec<u8>, n: usize, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for _ in 0..n {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// The frame with the TCP data offset byte set (after the builder's 5).
fn with_doff(mut f: Vec<u8>, l4: usize, doff: u8) -> Vec<u8> {
    f[l4 + 12] = doff << 4;
    f
}

fn corpus(src4: IpAddr, dst4: IpAddr, src6: IpAddr, dst6: IpAddr) -> Vec<Case> {
    let mut cases = Vec::new();
    let sport = std::cell::Cell::new(20_000u16);
    let next = || {
        sport.set(sport.get() + 1);
        sport.get()
    };
    let mut add = |name: String, frames: Vec<Vec<u8>>| cases.push(Case { name, frames });

    // Every TCP flag combination (IPv4: all 8 bits; IPv6: the 6 PortSentry reads).
    for f in 0..=255u8 {
        let s = next();
        add(
            format!("v4 tcp flags {f:#04x}"),
            vec![checksummed(tcp(src4, dst4, f, s).build())],
        );
    }
    for f in 0..64u8 {
        let s = next();
        add(
            format!("v6 tcp flags {f:#04x}"),
            vec![checksummed(tcp(src6, dst6, f, s).build())],
        );
    }
    for (src, dst) in [(src4, dst4), (src6, dst6)] {
        let fam = family(src);
        let l4 = if src.is_ipv4() { 34 } else { 54 };
        // Payloads: none, some, with SYN and with ACK.
        for (flags, len) in [(SYN, 10), (ACK | PSH, 100), (FIN, 1)] {
            let s = next();
            let mut f = tcp(src, dst, flags, s);
            f.payload = vec![0x41; len];
            add(
                format!("{fam} tcp {flags:#04x} with {len} bytes"),
                vec![checksummed(f.build())],
            );
        }
        // UDP, with and without payload.
        for len in [0usize, 12] {
            let s = next();
            let mut f = Frame::udp(src, dst, PORT).sport(s);
            f.payload = vec![0x42; len];
            add(
                format!("{fam} udp with {len} bytes"),
                vec![checksummed(f.build())],
            );
        }
        // Behind VLAN tags of ID 0 (priority tags: the kernel strips any number in a
        // row), and behind three of another ID (no VLAN device here).
        for (n, vid) in [(1usize, 0u16), (3, 0), (5, 0), (3, 7)] {
            let s = next();
            add(
                format!("{fam} tcp syn behind {n} tags of VLAN ID {vid}"),
                vec![vlan_tagged(
                    checksummed(tcp(src, dst, SYN, s).build()),
                    n,
                    vid,
                )],
            );
        }
        // TCP options at the maximum (data offset 15: 40 bytes of options), and data
        // offsets that lie (below 5; beyond the segment).
        for (flags, opts) in [(SYN, vec![1u8; 40]), (ACK, vec![1u8; 40])] {
            let s = next();
            let mut f = tcp(src, dst, flags, s);
            f.payload = opts;
            add(
                format!("{fam} tcp {flags:#04x} data offset 15"),
                vec![checksummed(with_doff(f.build(), l4, 15))],
            );
        }
        for doff in [0u8, 1, 4, 6, 15] {
            let s = next();
            add(
                format!("{fam} tcp syn data offset {doff} over a 20-byte segment"),
                vec![checksummed(with_doff(
                    tcp(src, dst, SYN, s).build(),
                    l4,
                    doff,
                ))],
            );
        }
        // A TCP header cut short (not a fragment), and trailing bytes past the
        // datagram.
        for keep in [4usize, 12, 14, 19] {
            let s = next();
            add(
                format!("{fam} tcp syn header of {keep} bytes"),
                vec![tcp(src, dst, SYN, s).l4_keep(keep).build()],
            );
        }
        let s = next();
        add(
            format!("{fam} tcp syn, link padding after the datagram"),
            vec![checksummed(tcp(src, dst, SYN, s).pad_to(128).build())],
        );
        // Fragments: nmap -f (8-byte pieces), --mtu 16, a first fragment with the whole
        // header, out of order, duplicated, overlapping; a split UDP header.
        let base = |flags: u8, payload: usize| {
            let s = next();
            let mut f = tcp(src, dst, flags, s);
            f.payload = vec![0x43; payload];
            checksummed(f.build())
        };
        for (what, size, payload) in [
            ("8-byte", 8, 0),
            ("16-byte", 16, 0),
            ("24-byte", 24, 20),
            ("8-byte with data", 8, 24),
        ] {
            for flags in [SYN, FIN, 0, XMAS, ACK, FIN | ACK] {
                let whole = base(flags, payload);
                let pieces = even_pieces(20 + payload, size);
                add(
                    format!("{fam} tcp {flags:#04x} in {what} fragments"),
                    fragments(&whole, &pieces, u32::from(next())),
                );
            }
        }
        let whole = base(SYN, 0);
        let mut pieces = even_pieces(20, 8);
        pieces.reverse();
        add(
            format!("{fam} tcp syn in 8-byte fragments, last first"),
            fragments(&whole, &pieces, u32::from(next())),
        );
        let whole = base(SYN, 0);
        let pieces = even_pieces(20, 8);
        let mut frames = fragments(&whole, &pieces, u32::from(next()));
        frames.insert(1, frames[0].clone());
        add(format!("{fam} tcp syn, first fragment twice"), frames);
        let whole = base(SYN, 16);
        let pieces = [
            Piece {
                offset: 0,
                len: 16,
                more: true,
            },
            Piece {
                offset: 8,
                len: 28,
                more: false,
            },
        ];
        add(
            format!("{fam} tcp syn, overlapping fragments"),
            fragments(&whole, &pieces, u32::from(next())),
        );
        let whole = base(SYN, 0);
        let pieces = [Piece {
            offset: 8,
            len: 12,
            more: false,
        }];
        add(
            format!("{fam} tcp syn, later fragment alone"),
            fragments(&whole, &pieces, u32::from(next())),
        );
        let s = next();
        let mut u = Frame::udp(src, dst, PORT).sport(s);
        u.payload = vec![0x44; 16];
        let whole = checksummed(u.build());
        add(
            format!("{fam} udp in 8-byte fragments"),
            fragments(&whole, &even_pieces(24, 8), u32::from(next())),
        );
        // An IPv6 first fragment that ends inside the extension-header chain: between
        // two headers, and within the second (its length runs past the fragment).
        if src.is_ipv6() {
            for (second, first_len) in [(1u8, 8usize), (2, 16)] {
                let s = next();
                let whole = checksummed(
                    tcp(src, dst, SYN, s)
                        .ext(Ext::DestOpts(1))
                        .ext(Ext::DestOpts(second))
                        .build(),
                );
                let total = 8 + 8 * usize::from(second) + 20;
                let pieces = [
                    Piece {
                        offset: 0,
                        len: first_len,
                        more: true,
                    },
                    Piece {
                        offset: first_len,
                        len: total - first_len,
                        more: false,
                    },
                ];
                add(
                    format!("{fam} tcp syn, first fragment of {first_len} bytes of its chain"),
                    fragments(&whole, &pieces, u32::from(next())),
                );
                // The same with bytes after the datagram that read as a TCP header.
                let mut frames = fragments(&whole, &pieces, u32::from(next()));
                frames[0].extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]);
                frames[0].extend_from_slice(&tcp(src, dst, SYN, s).build()[54..74]);
                add(
                    format!("{fam} tcp syn, first fragment of {first_len} bytes, padded"),
                    frames,
                );
            }
        }
        // Protocols nothing here serves; the other family's own (IPv6's extension
        // headers and ICMPv6 in IPv4, ICMP and IGMP in IPv6).
        let other_familys: &[u8] = if fam == "v4" {
            &[0, 43, 44, 58, 59, 60]
        } else {
            &[1, 2]
        };
        for &proto in [153u8, 132, 47].iter().chain(other_familys) {
            add(
                format!("{fam} protocol {proto}"),
                vec![Frame::new(src, dst, Transport::Other(proto)).build()],
            );
        }
    }
    // IPv4 options: NOPs of every length, record route, timestamp, an unknown option,
    // end of list followed by junk; IHL beyond the datagram.
    let mut opts: Vec<(String, Vec<u8>)> = (1..=10)
        .map(|w| (format!("{} NOP bytes", w * 4), vec![1u8; w * 4]))
        .collect();
    let mut rr = vec![7u8, 39, 4];
    rr.resize(39, 0);
    opts.push(("record route".into(), rr));
    let mut ts = vec![68u8, 40, 5, 0];
    ts.resize(40, 0);
    opts.push(("timestamp".into(), ts));
    opts.push(("unknown option 0x9a".into(), vec![0x9a, 4, 0, 0]));
    opts.push(("end of list, then junk".into(), vec![0, 0xff, 0xff, 0xff]));
    for (what, o) in opts {
        for flags in [SYN, ACK] {
            let s = next();
            add(
                format!("v4 tcp {flags:#04x} with IPv4 options: {what}"),
                vec![checksummed(
                    tcp(src4, dst4, flags, s).ipv4_options(&o).build(),
                )],
            );
        }
    }
    for (what, delta) in [("longer", 20i32), ("shorter", -8)] {
        let s = next();
        let mut f = checksummed(tcp(src4, dst4, SYN, s).build());
        let len = u16::from_be_bytes([f[16], f[17]]) as i32 + delta;
        f[16..18].copy_from_slice(&(len as u16).to_be_bytes());
        add(
            format!("v4 tcp syn, total length {delta:+} ({what} than the frame)"),
            vec![ipv4_header_checksummed(f)],
        );
    }
    let s = next();
    let mut f = checksummed(tcp(src4, dst4, SYN, s).build());
    f[14] = 0x4f;
    add(
        "v4 tcp syn, IHL 15 with no options".into(),
        vec![ipv4_header_checksummed(f)],
    );
    // IPv6 extension-header chains: many lengths and kinds.
    let mut chains: Vec<(String, Vec<Ext>)> = (1..=12)
        .map(|n| {
            (
                format!("{n} destination options"),
                vec![Ext::DestOpts(1); n],
            )
        })
        .collect();
    chains.push(("hop-by-hop".into(), vec![Ext::HopByHop(1)]));
    chains.push((
        "hop-by-hop, 9 destination options".into(),
        [vec![Ext::HopByHop(1)], vec![Ext::DestOpts(1); 9]].concat(),
    ));
    chains.push((
        "hop-by-hop not first".into(),
        vec![Ext::DestOpts(1), Ext::HopByHop(1)],
    ));
    chains.push(("routing".into(), vec![Ext::Routing(1)]));
    chains.push((
        "atomic fragment".into(),
        vec![Ext::Fragment {
            offset: 0,
            more: false,
        }],
    ));
    chains.push(("large destination options".into(), vec![Ext::DestOpts(30)]));
    chains.push(("authentication header".into(), vec![Ext::Auth(4)]));
    chains.push((
        "hop-by-hop, routing, destination options".into(),
        vec![Ext::HopByHop(1), Ext::Routing(1), Ext::DestOpts(1)],
    ));
    for (what, chain) in chains {
        for flags in [SYN, ACK] {
            let s = next();
            let mut f = tcp(src6, dst6, flags, s);
            for e in &chain {
                f = f.ext(e.clone());
            }
            add(
                format!("v6 tcp {flags:#04x} behind {what}"),
                vec![checksummed(f.build())],
            );
        }
        let s = next();
        let mut u = Frame::udp(src6, dst6, PORT).sport(s);
        for e in &chain {
            u = u.ext(e.clone());
        }
        add(
            format!("v6 udp behind {what}"),
            vec![checksummed(u.build())],
        );
    }
    let s = next();
    let mut f = checksummed(tcp(src6, dst6, SYN, s).build());
    f[18..20].copy_from_slice(&60u16.to_be_bytes());
    add(
        "v6 tcp syn, payload length beyond the frame".into(),
        vec![f],
    );
    cases
}

struct Outcome {
    name: String,
    /// The kernel answered the probe: a TCP segment or an ICMP error, but for ICMPv6's
    /// "first fragment has an incomplete header chain" (RFC 7112), which says nothing of
    /// the port: the kernel dropped the datagram.
    answered: bool,
    answer: Option<Answer>,
    seen: bool,
    reasons: Vec<&'static str>,
}

fn run_corpus(net: &TestNet, dp: &Dataplane, wire: &Wire, cases: &[Case]) -> Vec<Outcome> {
    let server = [net.server_v4, net.server_v6];
    let attacker = [net.attacker_v4[0], net.attacker_v6[0]];
    cases
        .iter()
        .map(|case| {
            wire.drain();
            let before = dp.counters().unwrap();
            for f in &case.frames {
                wire.send(f);
            }
            let mut answered = None;
            let deadline = std::time::Instant::now() + WAIT;
            while let Some(frame) =
                wire.recv(deadline.saturating_duration_since(std::time::Instant::now()))
            {
                answered = (0..2).find_map(|i| answer(&frame, server[i], attacker[i]));
                if answered.is_some() {
                    break;
                }
            }
            let delta: Counters = dp.counters().unwrap().since(&before);
            let seen = SEEN.iter().any(|c| delta.get(*c) > 0);
            let mut reasons: Vec<&str> = Counter::ALL
                .iter()
                .filter(|c| c.is_verdict() && delta.get(**c) > 0)
                .map(|c| c.name())
                .collect();
            if reasons.is_empty() {
                // The one verdict not counted (`Counter::is_counted`).
                reasons.push(Counter::PassNotProbe.name());
            }
            Outcome {
                name: case.name.clone(),
                answered: answered.is_some_and(|a| a != INCOMPLETE_CHAIN),
                answer: answered,
                seen,
                reasons,
            }
        })
        .collect()
}

#[test]
fn whatever_the_host_answers_the_program_counts_or_drops() {
    require_kernel!();
    let net = TestNet::new(0);
    // Every answer, at once: no ICMP rate limit in the server's namespace.
    // (These sysctls belong to the writer's network namespace. The host-wide budget of
    // 1000 ICMP messages a second is left as it is: the corpus sends fewer.)
    net.server.enter(|| {
        for key in ["net/ipv4/icmp_ratelimit", "net/ipv6/icmp/ratelimit"] {
            std::fs::write(format!("/proc/sys/{key}"), "0")
                .unwrap_or_else(|e| panic!("writing {key} in the server namespace: {e}"));
        }
    });
    let mut dp = Dataplane::load(&MapSizes::default(), None).expect("loading the program");
    let (tcp_ports, udp_ports) = default_ports();
    dp.write_ports(&tcp_ports, &udp_ports).unwrap();
    // Nothing listens in the server namespace: every watched port is looked up for the
    // ACK class; the protocols are what the daemon would write there.
    dp.write_ack_ports(&tcp_ports).unwrap();
    let served = net.server.enter(services::served_protocols).unwrap();
    dp.write_protocols(&configure::protocol_words(&served))
        .unwrap();
    net.server
        .enter(|| dp.attach(&net.server_if, AttachMode::Native))
        .expect("attaching to the server's veth end");
    let wire = Wire::open(
        &net.attacker,
        &net.attacker_if,
        (&net.server, &net.server_if),
    );
    let cases = corpus(
        net.attacker_v4[0],
        net.server_v4,
        net.attacker_v6[0],
        net.server_v6,
    );
    let mut missed = Vec::new();
    for (label, flags) in [
        ("BLOCK_EVASIVE_PACKETS=1", SETTING_DROP_EVASIVE),
        ("BLOCK_EVASIVE_PACKETS=0", 0),
    ] {
        // No kernel ban, no trigger to wait for: every probe is counted, none banned.
        dp.write_settings(Settings {
            event_trigger: 1,
            events_per_sec: 1,
            event_burst: 1,
            flags,
            cookie_secret: 0,
            trw: Default::default(),
        })
        .unwrap();
        let outcomes = run_corpus(&net, &dp, &wire, &cases);
        let answered = outcomes.iter().filter(|o| o.answered).count();
        let seen = outcomes.iter().filter(|o| o.seen).count();
        let dropped = outcomes
            .iter()
            .filter(|o| o.reasons.iter().any(|r| r.starts_with("drop_")))
            .count();
        eprintln!(
            "stack differential, {label}: {} cases, {answered} answered by the kernel, \
             {seen} counted or dropped by the program ({dropped} dropped), {} answered and \
             neither",
            outcomes.len(),
            outcomes.iter().filter(|o| o.answered && !o.seen).count()
        );
        for o in &outcomes {
            eprintln!(
                "  {:<60} answered {:<5} program {} ({:?})",
                o.name,
                o.answered,
                o.reasons.join(","),
                o.answer
            );
            // With the setting off, a chain too long to walk passes unseen (a fragment
            // after it too).
            let opted_out = flags == 0
                && o.reasons.contains(&"pass_header_chain")
                && o.reasons
                    .iter()
                    .all(|r| *r == "pass_header_chain" || *r == "pass_fragment");
            if o.answered && !o.seen && !opted_out {
                missed.push(format!("{label}: {} ({})", o.name, o.reasons.join(",")));
            }
        }
        // The test must be able to fail: the kernel answered the plain probes.
        assert!(
            answered > outcomes.len() / 2,
            "{label}: the kernel answered only {answered} of {} cases: is the wire working?",
            outcomes.len()
        );
    }
    assert!(
        missed.is_empty(),
        "the kernel answered these and the program neither counted nor dropped them:\n{}",
        missed.join("\n")
    );
}
