//! CrowdSec's own firewall bouncer (Debian's crowdsec-firewall-bouncer 0.0.25, unpacked by
//! `cargo xtask bench`) on the Local API the CrowdSec part filled: run in a network
//! namespace of the bench's own with a temporary configuration (nftables mode, polling
//! every second, its log in the temporary directory), so that its nftables table lives and
//! dies with that namespace. Timed from its start until its nftables sets hold the list,
//! counted with `nft` in the same namespace; its resident memory then. Stopped by its pid.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use portsentry_tests::{
    crowdsec::{Lapi, unpacked_package},
    netns::{Lan, Netns},
};

use crate::memory::rss;

/// The sets the bouncer fills (its defaults for nftables mode): (family, table, set).
const SETS: [(&str, &str, &str); 2] = [
    ("ip", "crowdsec", "crowdsec-blacklists"),
    ("ip6", "crowdsec6", "crowdsec6-blacklists"),
];

/// Stops the bouncer by its pid when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The elements of the bouncer's two sets (`None` for a set not made yet).
fn elements(ns: &Netns) -> [Option<usize>; 2] {
    SETS.map(|(family, table, set)| {
        let out = ns.try_exec(&format!("nft -j list set {family} {table} {set}"));
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["nftables"].as_array()?.iter().find_map(|o| {
            let s = o.get("set")?;
            Some(s.get("elem").and_then(|e| e.as_array()).map_or(0, Vec::len))
        })
    })
}

/// Runs the bouncer against `lapi` until its sets hold `expected` elements (or stop
/// growing); prints the figures. `expected` is what portsentry's maps held for the same
/// decisions.
pub(crate) fn firewall_bouncer(lan: &Lan, lapi: &Lapi, expected: usize) {
    let pkg = unpacked_package(
        "crowdsec-firewall-bouncer",
        &["usr/bin/crowdsec-firewall-bouncer"],
    );
    let ns = Netns::new("fwb");
    lan.join(&ns, &["192.0.2.14/24"]);
    let key = lapi.add_bouncer("firewall-bouncer");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        "mode: nftables\npid_dir: {d}/\nupdate_frequency: 1s\ndaemonize: false\n\
         log_mode: file\nlog_dir: {d}/\nlog_level: info\nlog_compression: false\n\
         api_url: {}/\napi_key: {key}\ninsecure_skip_verify: false\ndisable_ipv6: false\n\
         deny_action: DROP\ndeny_log: false\nsupported_decisions_types:\n  - ban\n\
         blacklists_ipv4: crowdsec-blacklists\nblacklists_ipv6: crowdsec6-blacklists\n\
         nftables:\n  ipv4:\n    enabled: true\n    set-only: false\n    table: crowdsec\n    \
         chain: crowdsec-chain\n  ipv6:\n    enabled: true\n    set-only: false\n    \
         table: crowdsec6\n    chain: crowdsec6-chain\nprometheus:\n  enabled: false\n  \
         listen_addr: 127.0.0.1\n  listen_port: 60601\n",
        lapi.url()
    );
    let conf = dir.path().join("bouncer.yaml");
    std::fs::write(&conf, config).unwrap();
    let bin = pkg.join("usr/bin/crowdsec-firewall-bouncer");
    let t0 = Instant::now();
    let child = ns
        .command(bin.to_str().unwrap())
        .arg("-c")
        .arg(&conf)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting crowdsec-firewall-bouncer");
    let pid = child.id();
    let mut running = Running(child);
    let log = || {
        std::fs::read_to_string(dir.path().join("crowdsec-firewall-bouncer.log"))
            .unwrap_or_default()
    };
    // Polled every 2 s (`nft -j list set` of 60,000 elements takes a while itself, on the
    // bouncer's CPU); done when the sets hold `expected` elements or have not grown for
    // 30 s.
    let mut last = (0usize, Duration::ZERO);
    let deadline = Duration::from_secs(600);
    let mut counts: [Option<usize>; 2];
    let done = loop {
        if let Ok(Some(status)) = running.0.try_wait() {
            panic!(
                "crowdsec-firewall-bouncer exited ({status}); its log:\n{}",
                log()
            );
        }
        counts = elements(&ns);
        let total: usize = counts.iter().flatten().sum();
        let now = t0.elapsed();
        if total != last.0 {
            last = (total, now);
        }
        if total >= expected {
            break true;
        }
        if counts.iter().all(Option::is_some) && total == 0 && now > Duration::from_secs(60) {
            break false;
        }
        if (total > 0 && now - last.1 > Duration::from_secs(30)) || now > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let memory = rss(pid).0;
    let tail: Vec<String> = log().lines().rev().take(6).map(str::to_owned).collect();
    drop(running);
    let [v4, v6] = counts.map(|c| c.map_or("no set".to_owned(), |n| n.to_string()));
    if done {
        println!(
            "crowdsec-firewall-bouncer 0.0.25 (nftables mode, update_frequency 1s) on the same \
             Local API: from its start to all {expected} decisions in its nftables sets \
             {:.2?} (polled every 2 s; IPv4 set {v4}, IPv6 set {v6} elements); its resident memory \
             {} MiB",
            last.1,
            memory >> 20
        );
    } else {
        println!(
            "crowdsec-firewall-bouncer 0.0.25 (nftables mode, update_frequency 1s) on the same \
             Local API: its sets stopped at {} of {expected} elements (IPv4 {v4}, IPv6 {v6}), \
             the last change {:.2?} after its start; its resident memory {} MiB; the end of \
             its log:\n{}",
            last.0,
            last.1,
            memory >> 20,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}
