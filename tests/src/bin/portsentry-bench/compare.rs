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
use portsentry_user::{
    clock::monotonic_ns,
    kernel::{Dataplane, MapSizes},
};

use crate::{Args, bench_dataplane, filler, ip, ip_net};

/// A program with the bench's maps (see [`bench_dataplane`]) and the given bans, IPv6
/// sources counted and banned by /64 (SOURCE_PREFIX_V6's default; a build that does not
/// know the setting ignores its bits). The same bans for both builds: under /64 keys an
/// IPv6 address's own ban would be a prefix ban, and make every packet look at the trie.
/// `bans` never expire; `timed` expire in an hour (BAN_TIME: the drop reads the clock).
fn setup(bytes: Option<&[u8]>, bans: &[IpNet], timed: &[IpNet]) -> Dataplane {
    let ignore = ["203.0.113.0/24", "127.0.0.0/8", "::1/128"].map(ip_net);
    let mut dp = bench_dataplane(bytes, &MapSizes::default(), &ignore);
    let s = dp.settings();
    dp.write_settings(Settings {
        flags: s.flags | 64 << SETTING_V6_PREFIX_SHIFT,
        ..s
    })
    .unwrap();
    for net in bans {
        dp.insert_ban(net, &BanEntry::default()).unwrap();
    }
    let hour = BanEntry {
        expires_ns: monotonic_ns() + 3_600_000_000_000,
        ..BanEntry::default()
    };
    for net in timed {
        dp.insert_ban(net, &hour).unwrap();
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
    let (banned, banned_timed) = (filler(0), filler(1));
    let spared = ip("203.0.113.8");
    // An IPv6 scanner's ban: its /64 (an exact ban under the /64 keys; a build without
    // them holds it in the trie).
    let (scanner6, banned6) = (ip("2001:db8:0:9::7"), ip("2001:db8:0:8::7"));
    let bans = [
        IpNet::from(banned),
        IpNet::from(spared),
        ip_net("2001:db8:0:8::/64"),
    ];
    // Each build loaded several times: where the JIT places a program's code (its
    // alignment to the CPU's fetch blocks) moves a path's cost by several ns from one
    // load to the next, for the same object; a round uses the next load of each.
    let loads = args.loads.max(1);
    // Loaded in turns (baseline, this build, ...): what a load's place in memory costs
    // falls on both alike.
    let (mut base, mut new) = (Vec::new(), Vec::new());
    for _ in 0..loads {
        base.push(setup(Some(&old), &bans, &[banned_timed.into()]));
        new.push(setup(None, &bans, &[banned_timed.into()]));
    }
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
            Frame::tcp(scanner, server, 23, SYN).build(),
        ),
        (
            "counted SYN probe, IPv6",
            Frame::tcp(scanner6, server6, 23, SYN).build(),
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
            "banned source, ban of an hour, dropped",
            Frame::tcp(banned_timed, server, 443, SYN).build(),
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
            Frame::tcp(scanner6, server6, 23, SYN)
                .ext(Ext::HopByHop(1))
                .ext(Ext::DestOpts(1))
                .ext(Ext::DestOpts(1))
                .build(),
        ),
        (
            "IPv6 chain of 10 headers, dropped",
            (0..10)
                .fold(Frame::tcp(scanner6, server6, 23, SYN), |f, _| {
                    f.ext(Ext::DestOpts(1))
                })
                .build(),
        ),
    ];
    let fds_new: Vec<BorrowedFd<'_>> = new.iter().map(|d| d.program_fd().unwrap()).collect();
    let fds_base: Vec<BorrowedFd<'_>> = base.iter().map(|d| d.program_fd().unwrap()).collect();
    // Per frame and round, the two builds run back to back, in the order baseline, this
    // build in even rounds and the reverse in odd ones: a drift within a round, or a cost
    // of running second, falls on both alike. The difference printed is the median of
    // the rounds' paired differences, not the difference of two medians.
    let mut floor = Vec::new();
    let mut base_ns = vec![Vec::new(); frames.len()];
    let mut new_ns = vec![Vec::new(); frames.len()];
    let mut diff = vec![Vec::new(); frames.len()];
    let run = |fd: BorrowedFd<'_>, frame: &[u8]| {
        testrun::run(fd, frame, args.repeat)
            .expect("BPF_PROG_TEST_RUN")
            .duration_ns
    };
    ns.enter(|| {
        for round in 0..args.rounds {
            floor.push(run(pass.as_fd(), &frames[0].1));
            let (fd_base, fd_new) = (fds_base[round % loads], fds_new[round % loads]);
            for (i, (_, frame)) in frames.iter().enumerate() {
                let (b, n) = if round % 2 == 0 {
                    let b = run(fd_base, frame);
                    (b, run(fd_new, frame))
                } else {
                    let n = run(fd_new, frame);
                    (run(fd_base, frame), n)
                };
                base_ns[i].push(i64::from(b));
                new_ns[i].push(i64::from(n));
                diff[i].push(i64::from(n) - i64::from(b));
            }
        }
    });
    let median = |v: &mut Vec<i64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let floor = median(&mut floor.into_iter().map(i64::from).collect()) as f64;
    println!(
        "## Before and after (BPF_PROG_TEST_RUN, ns per packet, median of {} rounds x {} \
         runs over {loads} loads of each program, both in the same run; baseline: {})\n",
        args.rounds,
        args.repeat,
        baseline.display()
    );
    println!("XDP_PASS only (floor): {floor} ns\n");
    println!(
        "| path | baseline | this build | difference (median of paired rounds) |\n\
         |---|---:|---:|---:|"
    );
    for (i, (name, _)) in frames.iter().enumerate() {
        let (b, n, d) = (
            median(&mut base_ns[i]),
            median(&mut new_ns[i]),
            median(&mut diff[i]),
        );
        println!(
            "| {name} | {b} ({:.2}x) | {n} ({:.2}x) | {d:+} |",
            b as f64 / floor,
            n as f64 / floor,
        );
    }
    println!();
}
