//! 4. Before and after: the per-packet cost of this build's XDP program next to another
//!    build's (`--baseline OBJECT`), on the same frames, interleaved round by round in one
//!    run, with the same maps: one exact ban, the ignore list non-empty (as it always is
//!    under the daemon: loopback and this host's addresses are in it).

use std::{
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
    path::Path,
};

use ipnet::IpNet;
use portsentry_common::maps::{BanEntry, SETTING_V6_PREFIX_SHIFT, Settings};
use portsentry_tests::{
    frames::{Ext, Frame, Transport, flags::*},
    netns::Netns,
    testrun,
};
use portsentry_user::kernel::{Dataplane, MapSizes};

use crate::{Args, bench_dataplane, filler, ip, ip_net};

/// A program with the bench's maps (see [`bench_dataplane`]) and the given bans. This
/// build counts and bans IPv6 sources by /64 (SOURCE_PREFIX_V6's default); a baseline
/// build may not know the setting, so it gets none (each address on its own).
fn setup(bytes: Option<&[u8]>, bans: &[IpNet]) -> Dataplane {
    let ignore = ["203.0.113.0/24", "127.0.0.0/8", "::1/128"].map(ip_net);
    let mut dp = bench_dataplane(bytes, &MapSizes::default(), &ignore);
    if bytes.is_none() {
        let s = dp.settings();
        dp.write_settings(Settings {
            flags: s.flags | 64 << SETTING_V6_PREFIX_SHIFT,
            ..s
        })
        .unwrap();
    }
    for net in bans {
        dp.insert_ban(net, &BanEntry::default()).unwrap();
    }
    dp
}

pub(crate) fn compare(args: &Args, baseline: &Path) {
    let old = std::fs::read(baseline)
        .unwrap_or_else(|e| panic!("reading the baseline object {}: {e}", baseline.display()));
    let ns = Netns::new("cmp");
    let pass = testrun::load_pass_program().expect("loading the XDP_PASS program");
    let (client, server, scanner, ignored) = (
        ip("192.0.2.7"),
        ip("192.0.2.1"),
        ip("198.51.100.9"),
        ip("203.0.113.7"),
    );
    let (client6, server6): (IpAddr, IpAddr) = (ip("2001:db8::7"), ip("2001:db8::1"));
    let banned = filler(0);
    let spared = ip("203.0.113.8");
    let bans = [IpNet::from(banned), IpNet::from(spared)];
    // An IPv6 scanner's ban: its address before, its /64 now.
    let (scanner6, banned6) = (ip("2001:db8:0:9::7"), ip("2001:db8:0:8::7"));
    let new = setup(None, &[&bans[..], &[ip_net("2001:db8:0:8::/64")]].concat());
    let base = setup(Some(&old), &[&bans[..], &[IpNet::from(banned6)]].concat());
    let frames = [
        ("benign ACK", Frame::tcp(client, server, 443, ACK).build()),
        (
            "benign ACK, IPv6",
            Frame::tcp(client6, server6, 443, ACK).build(),
        ),
        (
            "UDP to an unwatched port",
            Frame::udp(client, server, 5353).build(),
        ),
        (
            "counted SYN probe",
            Frame::tcp(scanner, server, 22, SYN).build(),
        ),
        (
            "counted SYN probe, IPv6",
            Frame::tcp(scanner6, server6, 22, SYN).build(),
        ),
        (
            "banned IPv6 source, dropped",
            Frame::tcp(banned6, server6, 443, SYN).build(),
        ),
        (
            "banned source, dropped",
            Frame::tcp(banned, server, 443, SYN).build(),
        ),
        (
            "ignored source's probe",
            Frame::tcp(ignored, server, 22, SYN).build(),
        ),
        (
            "banned and ignored source's ACK",
            Frame::tcp(spared, server, 443, ACK).build(),
        ),
        // The paths this round added (the baseline passes them unseen).
        (
            "ACK of no connection (ACK-class probe)",
            Frame::tcp(scanner, server, 80, ACK).build(),
        ),
        (
            "tiny first fragment (nmap -f), dropped",
            Frame::tcp(scanner, server, 80, SYN)
                .ipv4_fragment(0, true)
                .l4_keep(8)
                .build(),
        ),
        (
            "IP protocol nothing serves (nmap -sO)",
            Frame::new(scanner, server, Transport::Other(153)).build(),
        ),
        (
            "IPv6 SYN probe behind 3 extension headers",
            Frame::tcp(scanner6, server6, 22, SYN)
                .ext(Ext::HopByHop(1))
                .ext(Ext::DestOpts(1))
                .ext(Ext::DestOpts(1))
                .build(),
        ),
        (
            "IPv6 chain of 10 headers, dropped",
            (0..10)
                .fold(Frame::tcp(scanner6, server6, 22, SYN), |f, _| {
                    f.ext(Ext::DestOpts(1))
                })
                .build(),
        ),
    ];
    let (fd_new, fd_base) = (new.program_fd().unwrap(), base.program_fd().unwrap());
    let mut cases: Vec<(BorrowedFd<'_>, Vec<u8>)> = vec![(pass.as_fd(), frames[0].1.clone())];
    for (_, f) in &frames {
        cases.push((fd_base, f.clone()));
        cases.push((fd_new, f.clone()));
    }
    let mut samples = vec![Vec::new(); cases.len()];
    ns.enter(|| {
        for _ in 0..args.rounds {
            for (i, (fd, frame)) in cases.iter().enumerate() {
                let r = testrun::run(*fd, frame, args.repeat).expect("BPF_PROG_TEST_RUN");
                samples[i].push(r.duration_ns);
            }
        }
    });
    let m: Vec<u32> = samples
        .into_iter()
        .map(|mut v| {
            v.sort_unstable();
            v[v.len() / 2]
        })
        .collect();
    println!(
        "## Before and after (BPF_PROG_TEST_RUN, ns per packet, median of {} rounds x {} \
         runs, both programs in the same run; baseline: {})\n",
        args.rounds,
        args.repeat,
        baseline.display()
    );
    println!("XDP_PASS only (floor): {} ns\n", m[0]);
    println!("| path | baseline | this build | difference |\n|---|---:|---:|---:|");
    for (i, (name, _)) in frames.iter().enumerate() {
        let (b, n) = (m[1 + 2 * i], m[2 + 2 * i]);
        println!(
            "| {name} | {b} ({:.2}x) | {n} ({:.2}x) | {:+} |",
            f64::from(b) / f64::from(m[0]),
            f64::from(n) / f64::from(m[0]),
            i64::from(n) - i64::from(b)
        );
    }
    println!();
}
