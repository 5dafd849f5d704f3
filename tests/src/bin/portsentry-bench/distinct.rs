//! 7. The paths an attack takes, from many sources at once: every run of a frame comes
//!    from the next of `--scale` distinct IPv4 sources (`portsentry_tests::rotate`: a
//!    front program rewrites the source and tail-calls the program), with `--scale`
//!    exact bans and 100,000 range bans loaded. Rows: the banned path cycling through
//!    every banned source; the banned path of the ranges, cycling through every address
//!    of the 100,000 /24s, and from one of them; a benign ACK from as many sources that are not banned; a
//!    SYN probe to a closed watched port from a source new to `PS_SOURCES` each run (a
//!    random-source SYN flood: four times `--scale` sources cycled), with `PS_SOURCES`
//!    sized for `--scale` sources and at the default
//!    MAX_TRACKED_SOURCES (a second program with the same bans); and the banned and
//!    benign paths from one source (the hot case the other tables measure). The floor
//!    is the same front program tail-calling XDP_PASS.
//!    Two reference rows give the least a structure of that size costs a packet from
//!    another source each run (`rotate::Reference`): one read of a large array, and a
//!    bare lookup in a kernel hash map of the banned sources. xdp-filter (all features),
//!    behind the same front program, passes the same SYN probes: the flood's cost to a
//!    filter that detects nothing.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd, BorrowedFd},
    time::Instant,
};

use ipnet::{IpNet, Ipv4Net};
use portsentry_common::maps::BanEntry;
use portsentry_tests::{
    bench::XdpFilter,
    frames::{Frame, flags::*},
    netns::Netns,
    rotate::{Reference, Rotator, pass_program},
    testrun,
};
use portsentry_user::kernel::MapSizes;

use crate::{Args, bench_dataplane, ip, ip_net};

/// Range bans loaded (CrowdSec lists carry ranges): /24s from 100.0.0.0 on.
const RANGES: u32 = 100_000;
const RANGE_BASE: u32 = 0x6400_0000;

pub(crate) fn distinct(args: &Args) {
    let n = args.scale;
    let ns = Netns::new("dist");
    let sizes = MapSizes {
        bans: n.max(1 << 16),
        ban_nets: (RANGES * 2).next_power_of_two(),
        sources: n.max(1 << 16),
        ..MapSizes::default()
    };
    let mut dp = bench_dataplane(None, &sizes, &[ip_net("203.0.113.0/24")]);
    let _events = dp.take_events().unwrap();
    // Banned: 1.0.0.0 + i; not banned: 20.0.0.0 + i (benign) and 40.0.0.0 + i (probes);
    // the ranges: /24s from 100.0.0.0 (none holds a source above).
    let (banned, benign, probing) = (
        Ipv4Addr::new(1, 0, 0, 0),
        Ipv4Addr::new(20, 0, 0, 0),
        Ipv4Addr::new(40, 0, 0, 0),
    );
    load_bans(&mut dp, n, banned);
    let ranged = Ipv4Addr::from(RANGE_BASE);
    let server = ip("192.0.2.1");
    let fd = dp.program_fd().unwrap();
    let pass = pass_program().expect("loading the XDP_PASS program");
    let rot = |target: BorrowedFd<'_>, base: Ipv4Addr, count: u32| {
        Rotator::new(target, base, count).expect("loading the front program")
    };
    let ack = Frame::tcp(IpAddr::V4(benign), server, 443, ACK).build();
    let syn443 = Frame::tcp(IpAddr::V4(banned), server, 443, SYN).build();
    let syn23 = Frame::tcp(IpAddr::V4(probing), server, 23, SYN).build();
    // A flood's sources: four times as many as `PS_SOURCES` holds, cycled, so that each
    // run's source was pushed out of the table long before it comes back. (With `n`,
    // every round after the first found the record its source made a round before: the
    // figure of earlier runs of this bench, about half a flood's.)
    let fresh = n.saturating_mul(4).min(1 << 30);
    // Eight words a source: 64 MiB at a million, more than this CPU's caches hold.
    let words = (u64::from(n) * 8).next_power_of_two().min(1 << 26) as u32;
    let cold = Reference::cold_read(words).expect("loading the array reference");
    let t = Instant::now();
    let hash = Reference::hash_lookup(banned, n).expect("loading the hash reference");
    eprintln!(
        "bench: the hash reference's {n} sources inserted in {:.1?}",
        t.elapsed()
    );
    let cold_row = format!(
        "reference: one read of a {} MiB array, each run another source",
        (u64::from(words) * 8) >> 20
    );
    let hash_row =
        format!("reference: a bare hash lookup among the {n} banned sources, each run another");
    // Each row does what it says: banned sources dropped, the others passed.
    let (pass_, drop_) = (testrun::XDP_PASS, testrun::XDP_DROP);
    let mut fronts: Vec<(String, Rotator, Vec<u8>, u32)> = vec![
        (
            "front program -> XDP_PASS (floor)".into(),
            rot(pass.as_fd(), benign, n),
            ack.clone(),
            pass_,
        ),
        (cold_row, rot(cold.fd(), benign, n), ack.clone(), pass_),
        (hash_row, rot(hash.fd(), banned, n), syn443.clone(), drop_),
        (
            "banned, each run another of the banned sources, dropped".into(),
            rot(fd, banned, n),
            syn443.clone(),
            drop_,
        ),
        (
            format!(
                "banned by a range (one of the {RANGES} /24s), each run another of their \
                 sources, dropped"
            ),
            rot(fd, ranged, RANGES * 256),
            syn443.clone(),
            drop_,
        ),
        (
            "banned by a range, one source, dropped".into(),
            rot(fd, ranged, 1),
            syn443.clone(),
            drop_,
        ),
        (
            "benign ACK, each run another source".into(),
            rot(fd, benign, n),
            ack.clone(),
            pass_,
        ),
        (
            "SYN probe to a closed watched port, each run a source new to the table (a \
             random-source SYN flood)"
                .into(),
            rot(fd, probing, fresh),
            syn23.clone(),
            pass_,
        ),
        (
            "banned, one source, dropped".into(),
            rot(fd, banned, 1),
            syn443.clone(),
            drop_,
        ),
        (
            "benign ACK, one source".into(),
            rot(fd, benign, 1),
            ack.clone(),
            pass_,
        ),
    ];
    // The flood at the default MAX_TRACKED_SOURCES: the rows above size `PS_SOURCES` for
    // `n` sources; this program's table has the size a configuration without the key
    // gives it (the same bans loaded).
    let tracked = portsentry_user::config::Config::default().max_tracked_sources;
    let mut small = bench_dataplane(
        None,
        &MapSizes {
            sources: tracked,
            ..sizes.clone()
        },
        &[ip_net("203.0.113.0/24")],
    );
    let _small_events = small.take_events().unwrap();
    load_bans(&mut small, n, banned);
    let small_fd = small.program_fd().unwrap();
    fronts.push((
        format!(
            "SYN probe to a closed watched port, each run a source new to the table, \
             {tracked} sources tracked (the default MAX_TRACKED_SOURCES)"
        ),
        rot(small_fd, probing, fresh),
        syn23.clone(),
        pass_,
    ));
    // With `--baseline OBJECT`: another build's program with the same bans, on the
    // banned and benign paths (this build's rows next to them, same frames, same run).
    let base_bytes = args.baseline.as_ref().map(|p| {
        std::fs::read(p).unwrap_or_else(|e| panic!("reading the baseline {}: {e}", p.display()))
    });
    let mut base = base_bytes.as_deref().map(|bytes| {
        let mut dp = bench_dataplane(Some(bytes), &sizes, &[ip_net("203.0.113.0/24")]);
        load_bans(&mut dp, n, banned);
        dp
    });
    let _base_events = base.as_mut().map(|dp| dp.take_events().unwrap());
    if let Some(base_fd) = base.as_ref().map(|dp| dp.program_fd().unwrap()) {
        for (row, from, count, frame, want) in [
            (
                "baseline: banned, each run another of the banned sources, dropped".to_string(),
                banned,
                n,
                &syn443,
                drop_,
            ),
            (
                format!(
                    "baseline: banned by a range (one of the {RANGES} /24s), each run another \
                     of their sources, dropped"
                ),
                ranged,
                RANGES * 256,
                &syn443,
                drop_,
            ),
            (
                "baseline: banned by a range, one source, dropped".into(),
                ranged,
                1,
                &syn443,
                drop_,
            ),
            (
                "baseline: benign ACK, each run another source".into(),
                benign,
                n,
                &ack,
                pass_,
            ),
        ] {
            fronts.push((row, rot(base_fd, from, count), frame.clone(), want));
        }
    }
    // xdp-filter (all features, one source banned) on the same probes: what a filter
    // that detects nothing pays for a random-source SYN flood.
    let xdpf = XdpFilter::load(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
    if let Some(x) = &xdpf {
        for (row, count) in [
            (
                "xdp-filter: the same SYN probe, each run another source",
                fresh,
            ),
            ("xdp-filter: the same SYN probe, one source", 1),
        ] {
            match Rotator::new(x.fd.as_fd(), probing, count) {
                Ok(r) => fronts.push((row.into(), r, syn23.clone(), pass_)),
                Err(e) => eprintln!("bench: xdp-filter behind the front program: {e}"),
            }
        }
    }
    ns.enter(|| {
        for (name, front, frame, want) in &fronts {
            for _ in 0..3 {
                let r = testrun::run(front.fd(), frame, 1).expect("BPF_PROG_TEST_RUN");
                assert_eq!(r.retval, *want, "{name}: XDP action {}", r.retval);
            }
        }
    });
    let mut samples = vec![Vec::new(); fronts.len()];
    ns.enter(|| {
        for _ in 0..args.rounds {
            for (i, (_, front, frame, _)) in fronts.iter().enumerate() {
                let r = testrun::run(front.fd(), frame, args.repeat).expect("BPF_PROG_TEST_RUN");
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
        "## Many sources at once ({n} exact bans + {RANGES} range bans; BPF_PROG_TEST_RUN \
         through a front program that gives each run the next of {n} sources; ns per \
         packet, median of {} rounds x {} runs)\n",
        args.rounds, args.repeat
    );
    match dp.ban_cache_held() {
        Ok(held) => println!(
            "Bans in `PS_BAN_CACHE`: {held} of the {n} exact bans ({:.1}%), in {} sets of \
             three (an IPv4 ban whose tag is in `PS_BAN_TAGS` is not cached).\n",
            held as f64 * 100.0 / f64::from(n.max(1)),
            dp.ban_cache_sets().unwrap_or(0)
        ),
        Err(e) => eprintln!("bench: counting the cached bans: {e:#}"),
    }
    match dp.ban_tags_held() {
        Ok(Some(held)) => println!(
            "Tags in `PS_BAN_TAGS`: {held} of the {n} exact bans ({:.2}%).\n",
            held as f64 * 100.0 / f64::from(n.max(1)),
        ),
        Ok(None) => {}
        Err(e) => eprintln!("bench: counting the tagged bans: {e:#}"),
    }
    println!("| path | ns | x floor | above the floor |\n|---|---:|---:|---:|");
    let floor = m[0];
    for (i, (name, _, _, _)) in fronts.iter().enumerate() {
        println!(
            "| {name} | {} | {:.2}x | {:+} |",
            m[i],
            f64::from(m[i]) / f64::from(floor),
            i64::from(m[i]) - i64::from(floor)
        );
    }
    println!();
}

/// `n` exact bans from `banned` up and [`RANGES`] range bans (/24s from 100.0.0.0, none
/// holding a source of the rows but the ranges' own).
fn load_bans(dp: &mut portsentry_user::kernel::Dataplane, n: u32, banned: Ipv4Addr) {
    let t = Instant::now();
    let exact: Vec<(IpNet, BanEntry)> = (0..n)
        .map(|i| {
            let a = Ipv4Addr::from(u32::from(banned) + i);
            (IpNet::from(IpAddr::V4(a)), BanEntry::default())
        })
        .collect();
    dp.insert_bans(exact).expect("inserting the exact bans");
    let ranges: Vec<(IpNet, BanEntry)> = (0..RANGES)
        .map(|i| {
            let a = Ipv4Addr::from(RANGE_BASE + (i << 8));
            (IpNet::V4(Ipv4Net::new(a, 24).unwrap()), BanEntry::default())
        })
        .collect();
    dp.insert_bans(ranges).expect("inserting the range bans");
    eprintln!(
        "bench: {n} exact bans and {RANGES} range bans loaded in {:.1?}",
        t.elapsed()
    );
}
