//! 1. Per-packet cost through BPF_PROG_TEST_RUN, growth with the number of bans, the
//!    kernel memory of each map, and the cost with a CrowdSec-shaped list loaded
//!    ([`crowdsec_list`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, BorrowedFd},
    time::Instant,
};

use ipnet::IpNet;
use portsentry_common::maps::BanEntry;
use portsentry_tests::{
    bench::XdpFilter,
    frames::{Frame, flags::*},
    netns::Netns,
    testrun,
};
use portsentry_user::kernel::MapSizes;

use crate::{Args, bench_dataplane, filler, ip, ip_net};

pub(crate) fn medians(cases: &[(&str, BorrowedFd<'_>, Vec<u8>)], args: &Args) -> Vec<u32> {
    let mut samples = vec![Vec::new(); cases.len()];
    for _ in 0..args.rounds {
        for (i, (_, fd, frame)) in cases.iter().enumerate() {
            let r = testrun::run(*fd, frame, args.repeat).expect("BPF_PROG_TEST_RUN");
            samples[i].push(r.duration_ns);
        }
    }
    samples
        .into_iter()
        .map(|mut v| {
            v.sort_unstable();
            v[v.len() / 2]
        })
        .collect()
}

pub(crate) fn per_packet(args: &Args) {
    let ns = Netns::new("bench");
    let pass = testrun::load_pass_program().expect("loading the XDP_PASS program");
    let sizes = MapSizes {
        bans: args.scale,
        sources: args.scale,
        ..MapSizes::default()
    };
    let mut dp = bench_dataplane(None, &sizes, &[ip_net("203.0.113.0/24")]);
    let _events = dp.take_events().unwrap();
    let banned = filler(0);
    let (client, server, scanner, ignored) = (
        ip("192.0.2.7"),
        ip("192.0.2.1"),
        ip("198.51.100.9"),
        ip("203.0.113.7"),
    );
    let frames = [
        (
            "benign established TCP (ACK)",
            Frame::tcp(client, server, 443, ACK).build(),
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
            "banned source, dropped",
            Frame::tcp(banned, server, 443, SYN).build(),
        ),
        (
            "ignored source's probe",
            Frame::tcp(ignored, server, 22, SYN).build(),
        ),
    ];
    let xdpf = XdpFilter::load(banned);

    let mut bans = 0u32;
    // Growth: the floor, the benign and the banned path at every power of ten.
    let mut growth: Vec<(u32, u32, u32, u32)> = Vec::new();
    {
        let mut level = 1u32;
        while level <= args.scale {
            while bans < level {
                dp.insert_ban(&IpNet::from(filler(bans)), &BanEntry::default())
                    .expect("inserting a ban");
                bans += 1;
            }
            crate::look_at_listeners(&mut dp);
            let fd = dp.program_fd().unwrap();
            let cases = vec![
                ("floor", pass.as_fd(), frames[0].1.clone()),
                ("benign", fd, frames[0].1.clone()),
                ("banned", fd, frames[3].1.clone()),
            ];
            let m = ns.enter(|| medians(&cases, args));
            growth.push((level, m[0], m[1], m[2]));
            level = if level == args.scale {
                break;
            } else {
                (level * 10).min(args.scale)
            };
        }
    }
    // The main table starts again from one ban.
    let mut dp = {
        drop(dp);
        bench_dataplane(None, &sizes, &[ip_net("203.0.113.0/24")])
    };
    let _events = dp.take_events().unwrap();
    bans = 0;
    let mut columns: Vec<(String, Vec<u32>)> = Vec::new();
    for (label, target, fill_sources) in [
        ("1 ban", 1u32, false),
        ("10k bans", 10_000, false),
        ("max", args.scale, true),
    ] {
        let label = if label == "max" {
            format!("{} bans + {} sources probed", args.scale, args.scale)
        } else {
            label.to_owned()
        };
        let t = Instant::now();
        while bans < target {
            dp.insert_ban(&IpNet::from(filler(bans)), &BanEntry::default())
                .expect("inserting a ban");
            bans += 1;
        }
        if fill_sources {
            // Fill PS_SOURCES with real probes from distinct sources (a table of as many
            // keeps about four fifths of them: a set keeps three).
            let fd = dp.program_fd().unwrap();
            ns.enter(|| {
                for n in 0..args.scale {
                    let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + n));
                    let f = Frame::tcp(src, server, 23, SYN).build();
                    testrun::run(fd, &f, 1).expect("probe");
                }
            });
        }
        eprintln!("bench: {label}: set up in {:.1?}", t.elapsed());
        let label = label.as_str();
        crate::look_at_listeners(&mut dp);
        let fd = dp.program_fd().unwrap();
        let mut cases: Vec<(&str, BorrowedFd<'_>, Vec<u8>)> =
            vec![("XDP_PASS only (floor)", pass.as_fd(), frames[0].1.clone())];
        cases.extend(frames.iter().map(|(n, f)| (*n, fd, f.clone())));
        let m = ns.enter(|| medians(&cases, args));
        if !dp.tcp_sockets_current().unwrap_or(false) {
            eprintln!(
                "bench: {label}: a bind on the host during the column: its probes were \
                 looked up"
            );
        }
        columns.push((label.to_owned(), m));
    }
    if let Some(x) = &xdpf {
        let mut cases: Vec<(&str, BorrowedFd<'_>, Vec<u8>)> =
            vec![("XDP_PASS only (floor)", pass.as_fd(), frames[0].1.clone())];
        cases.extend(frames.iter().map(|(n, f)| (*n, x.fd.as_fd(), f.clone())));
        let m = ns.enter(|| medians(&cases, args));
        columns.push(("xdp-filter (all features)".to_owned(), m));
    }
    println!(
        "## Per-packet cost (BPF_PROG_TEST_RUN, ns per packet, median of {} rounds x {} runs; \
         x = ratio to the XDP_PASS-only program in the same column)\n",
        args.rounds, args.repeat
    );
    let mut header = "| case |".to_owned();
    let mut rule = "|---|".to_owned();
    for (label, _) in &columns {
        header += &format!(" {label} |");
        rule += "---:|";
    }
    println!("{header}\n{rule}");
    let names: Vec<&str> = std::iter::once("XDP_PASS only (floor)")
        .chain(frames.iter().map(|(n, _)| *n))
        .collect();
    for (row, name) in names.iter().enumerate() {
        let mut line = format!("| {name} |");
        for (_, m) in &columns {
            let floor = f64::from(m[0]);
            line += &format!(" {} ({:.2}x) |", m[row], f64::from(m[row]) / floor);
        }
        println!("{line}");
    }
    verify_sources(&mut dp, &ns, &pass, &frames, args);
    println!("## Growth: ns per packet against the number of bans\n");
    println!("| bans | XDP_PASS | benign ACK | banned, dropped | banned / XDP_PASS |");
    println!("|---:|---:|---:|---:|---:|");
    for (n, floor, benign, banned) in &growth {
        println!(
            "| {n} | {floor} | {benign} | {banned} | {:.2}x |",
            f64::from(*banned) / f64::from(*floor)
        );
    }
    println!("\n```");
    let top = growth.iter().map(|g| g.3).max().unwrap_or(1).max(1);
    for (n, _, benign, banned) in &growth {
        let bar = |v: u32| "#".repeat((v as usize * 50).div_ceil(top as usize));
        println!("{n:>8} bans  benign {benign:>4} ns {}", bar(*benign));
        println!("{:>8}       banned {banned:>4} ns {}", "", bar(*banned));
    }
    println!("```\n");
    let first = &columns[0].1;
    let big = &columns[2].1;
    println!(
        "\nGrowth from 1 ban to {} bans (+{} sources probed): banned path {:.2}x, benign path \
         {:.2}x.\n",
        args.scale,
        args.scale,
        f64::from(big[4]) / f64::from(first[4]),
        f64::from(big[1]) / f64::from(first[1])
    );

    // Memory, with the maps as full as they got above.
    println!("## Kernel memory (memlock of each map)\n");
    println!("| map | bytes | per entry |\n|---|---:|---:|");
    for (name, bytes) in dp.map_memory() {
        let per = match name {
            "PS_BANS" => format!(
                "{:.0} per ban ({bans} bans)",
                bytes as f64 / f64::from(bans)
            ),
            "PS_SOURCES" => format!(
                "{:.0} per source (preallocated for {})",
                bytes as f64 / f64::from(args.scale),
                args.scale
            ),
            _ => String::new(),
        };
        println!("| {name} | {bytes} | {per} |");
    }
    println!();
}

/// The cost of VERIFY_SOURCES on the paths it changes, on the maps of the last column:
/// a pure ACK to a watched port nothing listens on (the probe stage checks it as an
/// answer to a challenge first), and one to a watched port a service listens on. Each
/// round runs the frames with the setting off, then on; medians of the rounds; the
/// action of the last timed run, and the counters one more run moved. (A challenged SYN
/// is not timed: its challenge is written over the frame, and BPF_PROG_TEST_RUN repeats
/// the program over the frame it left, a SYN-ACK.)
fn verify_sources(
    dp: &mut portsentry_user::kernel::Dataplane,
    ns: &Netns,
    pass: &impl AsFd,
    frames: &[(&str, Vec<u8>)],
    args: &Args,
) {
    use portsentry_common::maps::SETTING_VERIFY;
    let (client, server) = (ip("192.0.2.7"), ip("192.0.2.1"));
    let cases = [
        ("XDP_PASS only (floor)", frames[0].1.clone(), true),
        (
            "pure ACK to a watched port nothing listens on",
            Frame::tcp(client, server, 23, ACK).build(),
            false,
        ),
        (
            "pure ACK to a watched port a service listens on (benign)",
            frames[0].1.clone(),
            false,
        ),
    ];
    let off = dp.settings();
    let on = portsentry_common::maps::Settings {
        flags: off.flags | SETTING_VERIFY,
        cookie_secret: 0x5eed_1234_abcd_9876,
        ..off
    };
    // Its own descriptor of the program: the settings are written between the runs.
    let prog = dp
        .program_fd()
        .unwrap()
        .try_clone_to_owned()
        .expect("duplicating the program's descriptor");
    let mut samples = vec![[Vec::new(), Vec::new()]; cases.len()];
    // The program's answer to each frame, off and on (the last run's).
    let mut actions = vec![[0u32; 2]; cases.len()];
    for _ in 0..args.rounds {
        for (which, settings) in [off, on].into_iter().enumerate() {
            dp.write_settings(settings).expect("writing PS_SETTINGS");
            ns.enter(|| {
                for (i, (_, frame, floor)) in cases.iter().enumerate() {
                    let fd = if *floor { pass.as_fd() } else { prog.as_fd() };
                    let r = testrun::run(fd, frame, args.repeat).expect("BPF_PROG_TEST_RUN");
                    samples[i][which].push(r.duration_ns);
                    actions[i][which] = r.retval;
                }
            });
        }
    }
    // Why the program decided so: the counters one more run of each frame moved.
    let mut reasons = vec![[String::new(), String::new()]; cases.len()];
    for (which, settings) in [off, on].into_iter().enumerate() {
        dp.write_settings(settings).expect("writing PS_SETTINGS");
        for (i, (_, frame, floor)) in cases.iter().enumerate() {
            if *floor {
                continue;
            }
            let before = dp.counters().expect("reading PS_COUNTERS");
            ns.enter(|| testrun::run(prog.as_fd(), frame, 1))
                .expect("BPF_PROG_TEST_RUN");
            let moved = dp.counters().expect("reading PS_COUNTERS").since(&before);
            reasons[i][which] = portsentry_common::Counter::ALL
                .iter()
                .filter(|c| moved.get(**c) > 0)
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
    dp.write_settings(off).expect("writing PS_SETTINGS");
    let median = |v: &mut Vec<u32>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!(
        "## VERIFY_SOURCES (ns per packet, median of {} rounds x {} runs, each round off then \
         on; the maps of the last column)\n",
        args.rounds, args.repeat
    );
    println!("| case | off | on | difference | action off / on |\n|---|---:|---:|---:|---|");
    let action = |a: u32| match a {
        testrun::XDP_DROP => "XDP_DROP",
        testrun::XDP_PASS => "XDP_PASS",
        testrun::XDP_TX => "XDP_TX",
        _ => "other",
    };
    for (i, (((name, _, _), [a, b]), [x, y])) in cases
        .iter()
        .zip(samples.iter_mut())
        .zip(&actions)
        .enumerate()
    {
        let (a, b) = (median(a), median(b));
        println!(
            "| {name} | {a} | {b} | {:+} | {} {} / {} {} |",
            i64::from(b) - i64::from(a),
            action(*x),
            reasons[i][0],
            action(*y),
            reasons[i][1]
        );
    }
    println!();
}

/// Per-packet cost with a CrowdSec-shaped list in the maps: 60,000 exact bans (30,000 IPv4,
/// 30,000 IPv6 addresses) and 40,000 ranges (20,000 IPv4 /24s, 20,000 IPv6 /64s), written
/// with `insert_bans` as the daemon restores its bans, next to the same packets with empty
/// ban maps and the XDP_PASS floor, in one run.
pub(crate) fn crowdsec_list(args: &Args) {
    let ns = Netns::new("bench");
    let pass = testrun::load_pass_program().expect("loading the XDP_PASS program");
    let sizes = MapSizes {
        bans: 1 << 17,
        ..MapSizes::default()
    };
    let (server4, server6) = (ip("192.0.2.1"), ip("2001:db8::1"));
    let v4 = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i));
    let v4_net = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32 + (i << 8)));
    let v6 = |i: u32| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_0001u128 << 80) | u128::from(i)));
    let v6_net = |i: u32| {
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8_0002u128 << 80) | (u128::from(i) << 64),
        ))
    };
    let mut list: Vec<(IpNet, BanEntry)> = Vec::with_capacity(100_000);
    for i in 0..30_000 {
        list.push((IpNet::from(v4(i)), BanEntry::default()));
        list.push((IpNet::from(v6(i)), BanEntry::default()));
    }
    for i in 0..20_000 {
        list.push((IpNet::new(v4_net(i), 24).unwrap(), BanEntry::default()));
        list.push((IpNet::new(v6_net(i), 64).unwrap(), BanEntry::default()));
    }
    // A host inside a listed range (not its first address), and sources listed nowhere.
    let in_range4 = IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32 + (12_345 << 8) + 77));
    let in_range6 = IpAddr::V6(Ipv6Addr::from(
        (0x2001_0db8_0002u128 << 80) | (12_345u128 << 64) | 0x77,
    ));
    let rows = [
        (
            "benign established TCP (ACK), IPv4",
            Frame::tcp(ip("192.0.2.7"), server4, 443, ACK).build(),
        ),
        (
            "benign established TCP (ACK), IPv6",
            Frame::tcp(ip("2001:db8:ffff::7"), server6, 443, ACK).build(),
        ),
        (
            "listed IPv4 address (exact ban)",
            Frame::tcp(v4(17_017), server4, 443, SYN).build(),
        ),
        (
            "listed IPv6 address (exact ban)",
            Frame::tcp(v6(17_017), server6, 443, SYN).build(),
        ),
        (
            "host in a listed IPv4 /24 (range)",
            Frame::tcp(in_range4, server4, 443, SYN).build(),
        ),
        (
            "host in a listed IPv6 /64 (range)",
            Frame::tcp(in_range6, server6, 443, SYN).build(),
        ),
    ];
    let measure = |dp: &portsentry_user::kernel::Dataplane| {
        let fd = dp.program_fd().unwrap();
        let mut cases: Vec<(&str, BorrowedFd<'_>, Vec<u8>)> =
            vec![("XDP_PASS only (floor)", pass.as_fd(), rows[0].1.clone())];
        cases.extend(rows.iter().map(|(n, f)| (*n, fd, f.clone())));
        ns.enter(|| medians(&cases, args))
    };
    let mut empty = bench_dataplane(None, &sizes, &[]);
    let _events = empty.take_events().unwrap();
    let before = measure(&empty);
    drop(empty);
    let mut dp = bench_dataplane(None, &sizes, &[]);
    let _events = dp.take_events().unwrap();
    let t = Instant::now();
    let listed = list.len();
    dp.insert_bans(list).expect("loading the list");
    let loaded = t.elapsed();
    let in_maps = dp.bans().expect("reading the bans").len();
    assert_eq!(in_maps, listed, "the whole list is in the maps");
    // Each listed source is dropped, each benign packet passed, before anything is timed.
    let verdicts: Vec<u32> = {
        let fd = dp.program_fd().unwrap();
        ns.enter(|| {
            rows.iter()
                .map(|(_, f)| testrun::run(fd, f, 1).expect("BPF_PROG_TEST_RUN").retval)
                .collect()
        })
    };
    for ((name, _), v) in rows.iter().zip(&verdicts) {
        let want = if name.starts_with("benign") {
            testrun::XDP_PASS
        } else {
            testrun::XDP_DROP
        };
        assert_eq!(*v, want, "{name}: verdict {v} with the list loaded");
    }
    let with = measure(&dp);
    // The same packets once more with empty maps, after: the two columns bracket the list.
    drop(dp);
    let mut again = bench_dataplane(None, &sizes, &[]);
    let _events = again.take_events().unwrap();
    let after = measure(&again);
    println!(
        "## Per-packet cost with a CrowdSec list loaded (BPF_PROG_TEST_RUN, ns per packet, \
         median of {} rounds x {} runs)\n\n100,000 decisions: 30,000 IPv4 and 30,000 IPv6 \
         addresses, 20,000 IPv4 /24s and 20,000 IPv6 /64s, written with `insert_bans` in \
         {loaded:.2?}. On empty maps a listed source is not banned, so its row is its benign \
         cost. With the list, each listed row was checked to be dropped (XDP_DROP) and each \
         benign one passed.\n",
        args.rounds, args.repeat
    );
    println!("| packet | empty maps | 100k list loaded | empty maps again | list / floor |");
    println!("|---|---:|---:|---:|---:|");
    let names: Vec<&str> = std::iter::once("XDP_PASS only (floor)")
        .chain(rows.iter().map(|(n, _)| *n))
        .collect();
    for (i, name) in names.iter().enumerate() {
        println!(
            "| {name} | {} | {} | {} | {:.2}x |",
            before[i],
            with[i],
            after[i],
            f64::from(with[i]) / f64::from(with[0])
        );
    }
    println!();
}
