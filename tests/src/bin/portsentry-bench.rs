//! `cargo xtask bench`: the figures in BENCHMARKS.md, each measured side by side in one
//! run on this machine.
//!
//! 1. Per-packet cost through BPF_PROG_TEST_RUN: an XDP program that only returns
//!    XDP_PASS (the floor), portsentry's paths with 1, 10k and 1M bans (and 1M tracked
//!    sources), and xdp-filter on the same frames. Each BPF_PROG_TEST_RUN call runs a
//!    frame `--repeat` times (the kernel reports the mean); cases are interleaved round
//!    by round and the median of `--rounds` rounds is printed.
//! 2. Reaction time: first probe to ban in force, portsentry and PortSentry 1.2.
//! 3. Memory: kernel memory per tracked source and per ban.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use portsentry_common::maps::{BanEntry, Settings};
use portsentry_tests::{
    bench::{Portsentry12, XdpFilter, percentile, portsentry12},
    daemon::{Daemon, Workdir, wait_until},
    fixture::default_ports,
    frames::{Frame, flags::*},
    netns::{Netns, TestNet, tcp_connect},
    testrun,
};
use portsentry_user::kernel::{Dataplane, MapSizes};

struct Args {
    repeat: u32,
    rounds: usize,
    /// Scans whose reaction time is measured (0: skip).
    reaction_runs: usize,
    /// Largest number of bans and tracked sources (1M in the published table).
    scale: u32,
    /// Seconds each flood lasts (0: skip the throughput comparison).
    flood_secs: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        repeat: 1_000_000,
        rounds: 9,
        reaction_runs: 100,
        scale: 1 << 20,
        flood_secs: 3,
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
            "--scale" => a.scale = (val("--scale") as u32).max(10_001),
            "--flood-secs" => a.flood_secs = val("--flood-secs"),
            other => panic!(
                "unknown argument {other}; use --repeat N --rounds N --reaction-runs N \
                 (at most 250) --scale N --flood-secs N"
            ),
        }
    }
    a
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The n-th address of 100.64.0.0/10 (bans and sources that send nothing).
fn filler(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x6440_0000u32 + n))
}

fn medians(cases: &[(&str, BorrowedFd<'_>, Vec<u8>)], args: &Args) -> Vec<u32> {
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

fn per_packet(args: &Args) {
    let ns = Netns::new("bench");
    let pass = testrun::load_pass_program().expect("loading the XDP_PASS program");
    let sizes = MapSizes {
        bans: args.scale,
        sources: args.scale,
        ..MapSizes::default()
    };
    let mut dp = Dataplane::load(&sizes, None).expect("loading portsentry");
    let (tcp, udp) = default_ports();
    dp.write_ports(&tcp, &udp).unwrap();
    // Events are not what is measured: one a second keeps the ring buffer quiet.
    dp.write_settings(Settings {
        event_trigger: 1,
        events_per_sec: 1,
        event_burst: 1,
        flags: 0,
        cookie_secret: 0,
    })
    .unwrap();
    dp.replace_ignore(&["203.0.113.0/24".parse().unwrap()])
        .unwrap();
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
            Frame::tcp(scanner, server, 22, SYN).build(),
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
        let mut d = Dataplane::load(&sizes, None).expect("loading portsentry");
        d.write_ports(&tcp, &udp).unwrap();
        d.write_settings(Settings {
            event_trigger: 1,
            events_per_sec: 1,
            event_burst: 1,
            flags: 0,
            cookie_secret: 0,
        })
        .unwrap();
        d.replace_ignore(&["203.0.113.0/24".parse().unwrap()])
            .unwrap();
        d
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
            format!("{} bans + {} sources", args.scale, args.scale)
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
            // Fill PS_SOURCES with real probes from distinct sources.
            let fd = dp.program_fd().unwrap();
            ns.enter(|| {
                for n in 0..args.scale {
                    let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + n));
                    let f = Frame::tcp(src, server, 22, SYN).build();
                    testrun::run(fd, &f, 1).expect("probe");
                }
            });
        }
        eprintln!("bench: {label}: set up in {:.1?}", t.elapsed());
        let label = label.as_str();
        let fd = dp.program_fd().unwrap();
        let mut cases: Vec<(&str, BorrowedFd<'_>, Vec<u8>)> =
            vec![("XDP_PASS only (floor)", pass.as_fd(), frames[0].1.clone())];
        cases.extend(frames.iter().map(|(n, f)| (*n, fd, f.clone())));
        let m = ns.enter(|| medians(&cases, args));
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
        "\nGrowth from 1 ban to {} bans (+{} tracked sources): banned path {:.2}x, benign path \
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

/// From a scanner's first probe to its ban being in force, `runs` times: each run a
/// fresh source sends one SYN (a TCP connect to a closed watched port) from the attacker
/// namespace. portsentry: until the daemon's "blocked via XDP drop" line is read (it is
/// written right after the kernel's ban map is updated). PortSentry 1.2 (stealth TCP,
/// KILL_ROUTE = iptables in the server namespace): until its history line appears (it
/// is written right after KILL_ROUTE returns).
fn reaction(runs: usize) {
    let mut rows = Vec::new();
    {
        let net = TestNet::new((runs - 1) as u8);
        let wd = Workdir::new();
        let conf = wd.config(&net.server_if, "");
        let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
        let closed = SocketAddr::new(net.server_v4, 23);
        let mut samples = Vec::new();
        for src in net.attacker_v4.iter().take(runs) {
            let needle = format!("Host {src} has been blocked via XDP drop");
            let t0 = Instant::now();
            let _ = net
                .attacker
                .enter(|| tcp_connect(*src, closed, Duration::from_millis(300)));
            assert!(
                wait_until(Duration::from_secs(10), || d.line_time(&needle).is_some()),
                "{src} was not banned"
            );
            samples.push(d.line_time(&needle).unwrap() - t0);
        }
        d.stop();
        samples.sort();
        rows.push(("portsentry (XDP ban)", samples));
    }
    let cache =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cache/portsentry12");
    match portsentry12(&cache) {
        Some(bin) => {
            let net = TestNet::new((runs - 1) as u8);
            let old = Portsentry12::start(&bin, &net.server, 23);
            let closed = SocketAddr::new(net.server_v4, 23);
            let mut samples = Vec::new();
            for src in net.attacker_v4.iter().take(runs) {
                let t0 = Instant::now();
                let _ = net
                    .attacker
                    .enter(|| tcp_connect(*src, closed, Duration::from_millis(300)));
                match old.wait_blocked(*src, Duration::from_secs(10)) {
                    Some(t) => samples.push(t - t0),
                    None => eprintln!("bench: PortSentry 1.2 did not block {src}"),
                }
            }
            drop(old);
            if !samples.is_empty() {
                samples.sort();
                rows.push(("PortSentry 1.2 -stcp (iptables KILL_ROUTE)", samples));
            }
        }
        None => eprintln!("bench: PortSentry 1.2 unavailable; skipping it"),
    }
    println!("## Reaction time: first probe to ban in force ({runs} scans each)\n");
    println!("| detector | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|");
    for (name, s) in &rows {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(percentile(s, 0.5)),
            ms(percentile(s, 0.9)),
            ms(percentile(s, 0.99)),
            ms(s[s.len() - 1])
        );
    }
    println!();
}

/// Busy CPU time of the whole machine so far (user, system, irq and softirq), in
/// clock ticks.
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    v.iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum()
}

/// A server-side filter to compare: how to install it, and how many packets it dropped.
enum Filter {
    Portsentry,
    Iptables(u32),
    Ipset(u32),
    Nft(u32),
}

impl Filter {
    fn name(&self) -> String {
        match self {
            Filter::Portsentry => "portsentry (XDP, native)".to_owned(),
            Filter::Iptables(n) => format!("iptables-legacy, {n} DROP rules (PortSentry style)"),
            Filter::Ipset(n) => format!("ipset hash:ip ({n} entries) + 1 iptables rule"),
            Filter::Nft(n) => format!("nftables set ({n} elements)"),
        }
    }
}

/// Addresses for the other rules of a chain or set (never sending).
fn others(n: u32) -> impl Iterator<Item = String> {
    (1..n).map(|i| filler(i).to_string())
}

/// Floods a banned source's UDP packets across a veth pair for `secs` seconds with
/// trafgen and measures what the filter dropped and the machine's CPU per drop.
fn flood(filter: &Filter, secs: u64) -> Option<(f64, f64)> {
    let net = TestNet::new(0);
    let attacker = net.attacker_v4[0];
    let wd = tempfile::tempdir().unwrap();
    let mac = |ns: &Netns, ifname: &str| -> String {
        let out = ns.exec(&format!("ip -j link show {ifname}"));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    };
    let cfg = wd.path().join("flood.cfg");
    std::fs::write(
        &cfg,
        format!(
            "{{ eth(da={}, sa={}), ipv4(saddr={attacker}, daddr={}, ttl=64), udp(sport=4000, dport=9), fill(0x41, 18) }}\n",
            mac(&net.server, &net.server_if),
            mac(&net.attacker, &net.attacker_if),
            net.server_v4
        ),
    )
    .unwrap();
    let mut dp = None;
    match filter {
        Filter::Portsentry => {
            let mut d = Dataplane::load(&MapSizes::default(), None).expect("load");
            for a in std::iter::once(attacker).chain((1..10_000).map(filler)) {
                d.insert_ban(&IpNet::from(a), &BanEntry::default()).unwrap();
            }
            net.server
                .enter(|| d.attach(&net.server_if, portsentry_user::config::AttachMode::Native))
                .expect("attach");
            dp = Some(d);
        }
        Filter::Iptables(n) => {
            let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
            for o in others(*n) {
                rules += &format!("-A INPUT -s {o}/32 -j DROP\n");
            }
            rules += &format!("-A INPUT -s {attacker}/32 -j DROP\nCOMMIT\n");
            std::fs::write(wd.path().join("rules"), rules).unwrap();
            net.server.exec(&format!(
                "iptables-legacy-restore < {}",
                wd.path().join("rules").display()
            ));
        }
        Filter::Ipset(n) => {
            let mut set = String::from("create bans hash:ip maxelem 2000000\n");
            for o in std::iter::once(attacker.to_string()).chain(others(*n)) {
                set += &format!("add bans {o}\n");
            }
            std::fs::write(wd.path().join("set"), set).unwrap();
            net.server.exec(&format!(
                "ipset restore < {} && iptables-legacy -A INPUT -m set --match-set bans src -j DROP",
                wd.path().join("set").display()
            ));
        }
        Filter::Nft(n) => {
            let elems: Vec<String> = std::iter::once(attacker.to_string())
                .chain(others(*n))
                .collect();
            let rules = format!(
                "table inet ps {{\n set bans {{ type ipv4_addr; elements = {{ {} }} }}\n                  chain input {{ type filter hook input priority 0;\n ip saddr @bans counter drop\n }}\n}}\n",
                elems.join(", ")
            );
            std::fs::write(wd.path().join("nft"), rules).unwrap();
            net.server
                .exec(&format!("nft -f {}", wd.path().join("nft").display()));
        }
    }
    let before = dp.as_ref().map(|d| d.counters().unwrap());
    let t0 = busy_ticks();
    let out = net.attacker.try_exec(&format!(
        "timeout {secs} trafgen --dev {} --conf {} --cpus 1 -q",
        net.attacker_if,
        cfg.display()
    ));
    let t1 = busy_ticks();
    let sent: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .find_map(|l| {
            l.trim()
                .strip_suffix(" packets outgoing")
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0);
    let dropped: u64 = match filter {
        Filter::Portsentry => {
            let d = dp
                .as_ref()
                .unwrap()
                .counters()
                .unwrap()
                .since(&before.unwrap());
            d.get(portsentry_common::Counter::DropBanned)
        }
        Filter::Iptables(_) | Filter::Ipset(_) => {
            let out = net.server.exec("iptables-legacy -L INPUT -v -x -n");
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .filter(|l| l.contains("DROP"))
                .filter(|l| l.contains(&attacker.to_string()) || l.contains("match-set"))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        }
        Filter::Nft(_) => {
            let out = net.server.exec("nft list chain inet ps input");
            let text = String::from_utf8_lossy(&out.stdout);
            text.split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        }
    };
    if sent == 0 || dropped == 0 {
        eprintln!(
            "bench: {}: sent {sent}, dropped {dropped}; skipping",
            filter.name()
        );
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_ns = (t1 - t0) as f64 / hz * 1e9;
    Some((dropped as f64 / secs as f64, cpu_ns / dropped as f64))
}

fn throughput(secs: u64) {
    let filters = [
        Filter::Portsentry,
        Filter::Iptables(1),
        Filter::Iptables(1_000),
        Filter::Iptables(10_000),
        Filter::Ipset(10_000),
        Filter::Nft(10_000),
    ];
    let mut rows = Vec::new();
    for f in &filters {
        if let Some(r) = flood(f, secs) {
            rows.push((f.name(), r));
        }
    }
    println!(
        "## Drop throughput: a banned source's UDP flood (trafgen, one sender CPU, {secs} s) \
         across a veth pair; CPU is the whole machine's busy time (sender included) per \
         packet the filter dropped\n"
    );
    println!(
        "| filter | dropped/s | CPU ns per drop | drops/s vs portsentry |\n|---|---:|---:|---:|"
    );
    let base = rows.first().map(|r| r.1.0).unwrap_or(1.0);
    for (name, (rate, cpu)) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2}x |",
            rate,
            cpu,
            rate / base
        );
    }
    println!();
}

/// The daemon's resident memory with no bans and with `n` bans restored from its state
/// file (bytes per ban = the difference / n).
fn daemon_memory(n: u32) {
    use portsentry_common::{ScanType, maps::BanOrigin};
    use portsentry_user::bans::{Ban, BanStore};
    let rss = |pid: u32| -> (u64, u64) {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    };
    let mut rows = Vec::new();
    for bans in [0, n] {
        let net = TestNet::new(0);
        let wd = Workdir::new();
        let conf = wd.config(&net.server_if, &format!("MAX_BANS=\"{}\"\n", n + 16));
        let mut store = BanStore::new();
        let now = std::time::SystemTime::now();
        for i in 0..bans {
            let a = filler(i);
            store.insert(Ban {
                net: IpNet::from(a),
                origin: BanOrigin::Scan,
                since: now,
                expires: None,
                port: 22,
                proto: Some(portsentry_user::kinds::Protocol::Tcp),
                scan_type: Some(ScanType::TcpSyn),
                mode: Some(portsentry_user::kinds::ModeToken::Atcp),
                name: a.to_string(),
                count: 1,
            });
        }
        portsentry_user::bans::state::save(&wd.path("state"), &store).unwrap();
        drop(store);
        let t = Instant::now();
        let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
        let started = t.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let (now_rss, peak) = rss(d.child.id());
        d.stop();
        rows.push((bans, now_rss, peak, started));
    }
    println!("## Daemon memory (VmRSS after start-up; peak = VmHWM)\n");
    println!("| bans restored | RSS | peak | start-up |\n|---:|---:|---:|---:|");
    for (b, r, p, t) in &rows {
        println!(
            "| {b} | {:.1} MiB | {:.1} MiB | {:.1?} |",
            *r as f64 / 1048576.0,
            *p as f64 / 1048576.0,
            t
        );
    }
    let per = (rows[1].1 as f64 - rows[0].1 as f64) / f64::from(n);
    println!(
        "\nDaemon memory per ban: {per:.0} bytes (plus {} bytes in the kernel map, above).\n",
        112
    );
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
    per_packet(&args);
    if args.reaction_runs > 0 {
        reaction(args.reaction_runs);
    }
    if args.flood_secs > 0 {
        throughput(args.flood_secs);
    }
    daemon_memory(args.scale);
}
