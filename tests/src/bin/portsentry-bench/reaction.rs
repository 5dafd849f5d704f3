//! 2. Reaction time: first probe to ban in force, portsentry and PortSentry 1.2.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use portsentry_tests::{
    bench::{Portsentry12, percentile, portsentry12},
    daemon::{Daemon, Workdir, wait_until},
    netns::{TestNet, tcp_connect},
};

/// From a scanner's first probe to its ban being in force, `runs` times: each run a
/// fresh source sends one SYN (a TCP connect to a closed watched port) from the attacker
/// namespace. portsentry: until the daemon's "blocked via XDP drop" line is read (it is
/// written right after the kernel's ban map is updated). PortSentry 1.2 (stealth TCP,
/// KILL_ROUTE = iptables in the server namespace): until its history line appears (it
/// is written right after KILL_ROUTE returns).
pub(crate) fn reaction(runs: usize) {
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
