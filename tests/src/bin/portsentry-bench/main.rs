//! `cargo xtask bench`: the figures in BENCHMARKS.md, each measured side by side in one
//! run on this machine.
//!
//! 1. Per-packet cost through BPF_PROG_TEST_RUN: an XDP program that only returns
//!    XDP_PASS (the floor), portsentry's paths with 1, 10k and 1M bans (and 1M tracked
//!    sources), and xdp-filter on the same frames. Each BPF_PROG_TEST_RUN call runs a
//!    frame `--repeat` times (the kernel reports the mean); cases are interleaved round
//!    by round and the median of `--rounds` rounds is printed. Then the same paths with a
//!    CrowdSec-shaped list of 100,000 bans loaded (`--crowdsec-list-only` runs only that).
//! 2. Reaction time: first probe to ban in force, portsentry and PortSentry 1.2.
//! 3. Memory: kernel memory per tracked source and per ban.
//! 5. What a scanner gets: probes answered before the ban, nmap and masscan, against
//!    portsentry (kernel and daemon decisions) and PortSentry 1.2 (`answered`).
//! 6. A fleet on CrowdSec: propagation from A's first probe to B's kernel, a list of
//!    decisions loaded while B runs, the same list at a fresh server C
//!    (`--crowdsec-fresh-only` runs only that), and through crowdsec-firewall-bouncer
//!    (`crowdsec`, `firewall_bouncer`; `--crowdsec-only`).
//! 7. Many sources at once: the banned (by an exact ban and by a range), benign and
//!    probe paths with each run from another of `--scale` sources, `--scale` exact and
//!    100,000 range bans loaded (`distinct`; `--distinct-only`; with `--baseline OBJECT`
//!    the banned and benign rows of that build too).
//! 8. Scanners against PortSentry 1.2: nmap's scan types, fragments, IPv6, slow timing,
//!    decoys, a horizontal scan and masscan, each against portsentry and PortSentry 1.2
//!    (`matrix`; `--matrix-only`).
//! 9. A new connection (a SYN to a listener) under SCAN_DETECTION=trigger and trw, same
//!    run (`new_connections`; `--new-connections-only`).
//! 10. Clients and scanners at once: the clients each trigger bans wrongly and what the
//!     scanners get, trigger against trw (`false_positives`; `--false-positives-only`,
//!     `--fp-secs N`).
//! 4. With `--baseline OBJECT`: this build's paths next to another build's, same frames,
//!    same run (`compare`).
//!
//! One module per measurement group, run by `main` in this order: `per_packet` (1, and the
//! kernel's memory), `reaction` (2), `throughput` (drop rate of a flood against iptables,
//! ipset and nftables) and `memory` (the daemon's memory).

mod answered;
mod compare;
mod crowdsec;
mod distinct;
mod false_positives;
mod firewall_bouncer;
mod matrix;
mod memory;
mod new_connections;
mod per_packet;
mod reaction;
mod throughput;

use std::net::{IpAddr, Ipv4Addr};

pub(crate) struct Args {
    pub(crate) repeat: u32,
    /// Loads of each program in the comparison (`--loads`).
    pub(crate) loads: usize,
    pub(crate) rounds: usize,
    /// Scans whose reaction time is measured (0: skip).
    pub(crate) reaction_runs: usize,
    /// Largest number of bans and tracked sources (1M in the published table).
    pub(crate) scale: u32,
    /// Seconds each flood lasts (0: skip the throughput comparison).
    pub(crate) flood_secs: u64,
    /// Another build's XDP object, measured next to this one (`cargo xtask bench --
    /// --baseline-rev REV` builds it).
    pub(crate) baseline: Option<std::path::PathBuf>,
    /// Only the comparison with the baseline.
    pub(crate) compare_only: bool,
    /// Only "what a scanner gets" (probes answered before the ban).
    pub(crate) answered_only: bool,
    /// Only the daemon's memory and start-up, and the ban journal.
    pub(crate) memory_only: bool,
    /// Only "Scanners against PortSentry 1.2" (`--matrix-only`).
    pub(crate) matrix_only: bool,
    /// Only "Many sources at once".
    pub(crate) distinct_only: bool,
    pub(crate) per_packet_only: bool,
    /// Only the CrowdSec fleet (propagation and a list of decisions).
    pub(crate) crowdsec_only: bool,
    /// Only the per-packet cost with a CrowdSec list loaded (`--crowdsec-list-only`).
    pub(crate) crowdsec_list_only: bool,
    /// Only the CrowdSec list at a fresh server (`--crowdsec-fresh-only`).
    pub(crate) crowdsec_fresh_only: bool,
    /// Only the new connections under trigger and trw (`--new-connections-only`).
    pub(crate) new_connections_only: bool,
    /// Decisions in the CrowdSec list (0: skip the fleet).
    pub(crate) crowdsec_decisions: u32,
    /// Only clients and scanners at once (`--false-positives-only`).
    pub(crate) false_positives_only: bool,
    /// Seconds the clients run in each mode (`--fp-secs`).
    pub(crate) fp_secs: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        repeat: 1_000_000,
        loads: 8,
        rounds: 9,
        reaction_runs: 100,
        scale: 1 << 20,
        flood_secs: 3,
        baseline: None,
        compare_only: false,
        answered_only: false,
        matrix_only: false,
        memory_only: false,
        distinct_only: false,
        per_packet_only: false,
        crowdsec_only: false,
        crowdsec_list_only: false,
        crowdsec_fresh_only: false,
        new_connections_only: false,
        crowdsec_decisions: 100_000,
        false_positives_only: false,
        fp_secs: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--baseline" {
            a.baseline = Some(it.next().expect("--baseline takes a file").into());
            continue;
        }
        if arg == "--compare-only" {
            a.compare_only = true;
            continue;
        }
        if arg == "--answered-only" {
            a.answered_only = true;
            continue;
        }
        if arg == "--matrix-only" {
            a.matrix_only = true;
            continue;
        }
        if arg == "--distinct-only" {
            a.distinct_only = true;
            continue;
        }
        if arg == "--per-packet-only" {
            a.per_packet_only = true;
            continue;
        }
        if arg == "--memory-only" {
            a.memory_only = true;
            continue;
        }
        if arg == "--crowdsec-only" {
            a.crowdsec_only = true;
            continue;
        }
        if arg == "--crowdsec-fresh-only" {
            a.crowdsec_fresh_only = true;
            continue;
        }
        if arg == "--new-connections-only" {
            a.new_connections_only = true;
            continue;
        }
        if arg == "--false-positives-only" {
            a.false_positives_only = true;
            continue;
        }
        if arg == "--crowdsec-list-only" {
            a.crowdsec_list_only = true;
            continue;
        }
        let mut val = |name: &str| {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--repeat" => a.repeat = val("--repeat") as u32,
            "--loads" => a.loads = val("--loads") as usize,
            "--rounds" => a.rounds = val("--rounds") as usize,
            "--reaction-runs" => a.reaction_runs = (val("--reaction-runs") as usize).min(250),
            "--scale" => a.scale = (val("--scale") as u32).max(10_001),
            "--flood-secs" => a.flood_secs = val("--flood-secs"),
            "--crowdsec-decisions" => a.crowdsec_decisions = val("--crowdsec-decisions") as u32,
            "--fp-secs" => a.fp_secs = val("--fp-secs").max(5),
            other => panic!(
                "unknown argument {other}; use --repeat N --rounds N --loads N --reaction-runs N \
                 (at most 250) --scale N --flood-secs N --baseline OBJECT --compare-only \
                 --answered-only --matrix-only --memory-only --distinct-only --per-packet-only --crowdsec-only \
                 --crowdsec-list-only --crowdsec-fresh-only --new-connections-only \
                 --crowdsec-decisions N --false-positives-only --fp-secs N"
            ),
        }
    }
    a
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn ip_net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

/// portsentry's program (this build's, or another's object) with the bench's maps: the
/// fixture's watched ports, events quiet (one a second: they are not what is measured),
/// the ignore list `ignore` and this host's addresses.
pub(crate) fn bench_dataplane(
    bytes: Option<&[u8]>,
    sizes: &portsentry_user::kernel::MapSizes,
    ignore: &[ipnet::IpNet],
) -> portsentry_user::kernel::Dataplane {
    use portsentry_user::kernel::Dataplane;
    let mut dp = match bytes {
        Some(b) => Dataplane::load_object(b, sizes, None),
        None => Dataplane::load(sizes, None),
    }
    .expect("loading portsentry");
    let (tcp, udp) = portsentry_tests::fixture::default_ports();
    dp.write_ports(&tcp, &udp).unwrap();
    // As the daemon writes them on a server whose services listen on 22 and 443: the
    // ACK class on the other watched ports, the protocols nothing serves. (A baseline
    // object without these maps ignores both, and the flag.)
    dp.write_ack_ports(&portsentry_tests::fixture::ack_ports())
        .unwrap();
    look_at_listeners(&mut dp);
    let served = portsentry_user::config::services::served_protocols().unwrap();
    dp.write_protocols(&portsentry_user::kernel::configure::protocol_words(&served))
        .unwrap();
    dp.write_settings(portsentry_common::maps::Settings {
        event_trigger: 1,
        events_per_sec: 1,
        event_burst: 1,
        flags: portsentry_common::maps::SETTING_DROP_EVASIVE,
        cookie_secret: 0,
        trw: Default::default(),
    })
    .unwrap();
    dp.replace_ignore(ignore, &[]).unwrap();
    // This host's addresses, as the daemon writes them: the frames' server (a probe of
    // another address is not counted).
    dp.write_local(Some(&[ip("192.0.2.1"), ip("2001:db8::1")]))
        .unwrap();
    dp
}

/// The daemon's look at the listeners on the bench's server (its TCP socket bitmap),
/// made current, as the daemon makes it every second: a probe of a closed port skips
/// the socket lookup. Made again before each measurement: a bind anywhere on the host
/// since the last look leaves the bitmap untrusted (every probe looked up).
pub(crate) fn look_at_listeners(dp: &mut portsentry_user::kernel::Dataplane) {
    if let Some(seen) = dp.tcp_listens_seen() {
        let mut listening = portsentry_user::config::ports::PortSet::new();
        for p in portsentry_tests::fixture::SERVICE_PORTS {
            listening.insert(p);
        }
        dp.write_tcp_sockets(&listening, seen).unwrap();
    }
}

/// The n-th address of 100.64.0.0/10 (bans and sources that send nothing).
pub(crate) fn filler(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x6440_0000u32 + n))
}

fn main() {
    let args = parse_args();
    assert!(
        portsentry_tests::kernel_tests_enabled(),
        "the benchmark needs root"
    );
    println!(
        "Machine: {} CPUs, kernel {}, {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name\t: "))
            .unwrap_or("unknown CPU")
    );
    if args.answered_only {
        answered::answered();
        return;
    }
    if args.matrix_only {
        matrix::matrix();
        return;
    }
    if args.crowdsec_fresh_only {
        crowdsec::fresh_only(args.crowdsec_decisions);
        return;
    }
    if args.crowdsec_list_only {
        per_packet::crowdsec_list(&args);
        return;
    }
    if args.false_positives_only {
        false_positives::false_positives(args.fp_secs);
        return;
    }
    if args.new_connections_only {
        new_connections::new_connections(&args);
        return;
    }
    if args.crowdsec_only {
        crowdsec::crowdsec(args.reaction_runs.min(20), args.crowdsec_decisions);
        return;
    }
    if args.per_packet_only {
        per_packet::per_packet(&args);
        return;
    }
    if args.distinct_only {
        distinct::distinct(&args);
        return;
    }
    if args.memory_only {
        memory::daemon_memory(args.scale);
        memory::journal(args.scale, 3);
        return;
    }
    if let Some(baseline) = &args.baseline {
        compare::compare(&args, baseline);
        if args.compare_only {
            return;
        }
    }
    per_packet::per_packet(&args);
    distinct::distinct(&args);
    per_packet::crowdsec_list(&args);
    new_connections::new_connections(&args);
    if args.reaction_runs > 0 {
        reaction::reaction(args.reaction_runs);
    }
    if args.flood_secs > 0 {
        throughput::throughput(args.flood_secs);
    }
    if args.reaction_runs > 0 {
        answered::answered();
        matrix::matrix();
        false_positives::false_positives(args.fp_secs);
    }
    memory::daemon_memory(args.scale);
    memory::journal(args.scale, 3);
    if args.crowdsec_decisions > 0 {
        crowdsec::crowdsec(args.reaction_runs.clamp(1, 20), args.crowdsec_decisions);
    }
}
