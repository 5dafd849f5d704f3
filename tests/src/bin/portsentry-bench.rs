//! `cargo xtask bench`: per-packet cost of the XDP program through BPF_PROG_TEST_RUN,
//! next to an XDP program that only returns XDP_PASS, measured in the same run.
//!
//! Each case is run `--repeat` times per BPF_PROG_TEST_RUN call (the kernel reports the
//! mean per run); the cases are interleaved round by round, and the median of
//! `--rounds` rounds is printed, with its ratio to the empty program.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, BorrowedFd},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use portsentry_common::maps::{BanEntry, Settings};
use portsentry_tests::{
    daemon::{Daemon, Workdir, wait_until},
    fixture::default_ports,
    frames::{Frame, flags::*},
    netns::{Netns, TestNet, tcp_connect},
    testrun,
};
use portsentry_user::dataplane::{Dataplane, MapSizes};

struct Args {
    repeat: u32,
    rounds: usize,
    /// Scans whose reaction time is measured (0: skip).
    reaction_runs: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        repeat: 1_000_000,
        rounds: 9,
        reaction_runs: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--repeat" => a.repeat = val("--repeat") as u32,
            "--rounds" => a.rounds = val("--rounds") as usize,
            "--reaction-runs" => a.reaction_runs = (val("--reaction-runs") as usize).min(250),
            other => panic!(
                "unknown argument {other}; use --repeat N --rounds N --reaction-runs N (at most 250)"
            ),
        }
    }
    a
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn measure(cases: &[(&str, BorrowedFd<'_>, Vec<u8>)], repeat: u32, rounds: usize) -> Vec<u32> {
    let mut samples = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, (_, fd, frame)) in cases.iter().enumerate() {
            let r = testrun::run(*fd, frame, repeat).expect("BPF_PROG_TEST_RUN");
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

/// From a scanner's first probe to its ban being in force, `runs` times: each run a
/// fresh source sends one SYN (a TCP connect to a closed watched port) from the attacker
/// namespace; the time ends when the daemon's "has been blocked via XDP drop" line is
/// read (it is written right after the kernel's ban map is updated).
fn reaction(runs: usize) -> Vec<Duration> {
    let net = TestNet::new((runs - 1) as u8);
    let wd = Workdir::new();
    std::fs::write(wd.path("portsentry.ignore"), "").unwrap();
    let conf = wd.config(&net.server_if, "");
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
    let closed = SocketAddr::new(net.server_v4, 23);
    let mut samples = Vec::new();
    for src in net.attacker_v4.iter().take(runs) {
        let needle = format!("Host {src} has been blocked via XDP drop");
        let t0 = Instant::now();
        net.attacker
            .enter(|| tcp_connect(*src, closed, Duration::from_secs(1)))
            .expect_err("nothing listens on port 23");
        assert!(
            wait_until(Duration::from_secs(10), || d.line_time(&needle).is_some()),
            "{src} was not banned"
        );
        samples.push(d.line_time(&needle).unwrap() - t0);
    }
    d.stop();
    samples.sort();
    samples
}

fn main() {
    let args = parse_args();
    assert!(
        portsentry_tests::kernel_tests_enabled(),
        "the benchmark needs root"
    );
    let ns = Netns::new("bench");
    let pass = testrun::load_pass_program().expect("loading the XDP_PASS program");
    let mut dp = Dataplane::load(&MapSizes::default(), None).expect("loading portsentry");
    let (tcp, udp) = default_ports();
    dp.write_ports(&tcp, &udp).unwrap();
    dp.write_settings(Settings {
        event_trigger: 1,
        events_per_sec: 20_000,
        event_burst: 1_000,
        flags: 0,
    })
    .unwrap();
    let _events = dp.take_events().unwrap();
    let banned = ip("198.51.100.66");
    dp.insert_ban(&IpNet::from(banned), &BanEntry::default())
        .unwrap();
    let (client, server) = (ip("192.0.2.7"), ip("192.0.2.1"));
    let scanner = ip("203.0.113.9");
    let fd = dp.program_fd().unwrap();
    let cases = vec![
        (
            "XDP_PASS only (floor)",
            pass.as_fd(),
            Frame::tcp(client, server, 443, ACK).build(),
        ),
        (
            "benign established TCP (ACK)",
            fd,
            Frame::tcp(client, server, 443, ACK).build(),
        ),
        (
            "UDP to an unwatched port",
            fd,
            Frame::udp(client, server, 5353).build(),
        ),
        (
            "counted SYN probe",
            fd,
            Frame::tcp(scanner, server, 22, SYN).build(),
        ),
        (
            "banned source dropped",
            fd,
            Frame::tcp(banned, server, 443, SYN).build(),
        ),
    ];
    let medians = ns.enter(|| measure(&cases, args.repeat, args.rounds));
    let floor = f64::from(medians[0]);
    println!(
        "Per-packet cost, BPF_PROG_TEST_RUN, median of {} rounds x {} runs ({} CPUs, kernel {})",
        args.rounds,
        args.repeat,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("| case | ns/packet | x XDP_PASS |");
    println!("|---|---:|---:|");
    for ((name, _, _), ns) in cases.iter().zip(&medians) {
        println!("| {name} | {ns} | {:.2} |", f64::from(*ns) / floor);
    }
    drop(cases);
    drop(dp);
    drop(ns);

    if args.reaction_runs > 0 {
        let s = reaction(args.reaction_runs);
        let pct = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
        println!();
        println!(
            "Reaction time, first probe to ban in force ({} scans, native XDP on veth, daemon in \
             its own namespace):",
            s.len()
        );
        println!("| p50 | p90 | p99 | max |");
        println!("|---:|---:|---:|---:|");
        println!(
            "| {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.9).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            s[s.len() - 1].as_secs_f64() * 1e3
        );
    }
}
