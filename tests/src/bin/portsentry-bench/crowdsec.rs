//! 6. A fleet on CrowdSec (Debian's crowdsec 1.4.6 Local API in a namespace of the bench's
//!    own, servers A and B each running the daemon with the default CROWDSEC_INTERVAL of
//!    500 ms):
//!    - propagation: from a scanner's first probe on A to its ban being in B's kernel map
//!      (`runs` scanners, each a fresh address; p50, p99, max);
//!    - a list of `decisions` decisions (IPv4 and IPv6 addresses and ranges) imported with
//!      `cscli decisions import`: how long the import takes, and how long from its start
//!      until every one is in B's kernel maps; B's resident memory before and after;
//!    - the same list at a fresh server C (new daemon, bouncer key and pins) started once
//!      the list is in the Local API: from the daemon's start until every decision is in
//!      its kernel maps (the time crowdsec's own import takes is out of it), the first
//!      answer's size and stages from C's log, C's resident memory;
//!    - the same list through crowdsec-firewall-bouncer 0.0.25 (nftables mode), side by
//!      side ([`crate::firewall_bouncer`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use portsentry_tests::{
    bench::percentile,
    crowdsec::{Lapi, Server, ip},
    daemon::wait_until,
    netns::{Lan, Netns, tcp_connect},
};
use portsentry_user::{crowdsec::enforce::FULL_SYNC, kernel::Dataplane};

use crate::memory::rss;

pub(crate) fn crowdsec(runs: usize, decisions: u32) {
    let runs = runs.clamp(1, 100);
    let lan = Lan::new();
    lan.address_hub(&["192.0.2.250/24"]);
    let lapi = Lapi::start(&lan.hub, ip("192.0.2.250"));
    let attacker = Netns::new("atk");
    let sources: Vec<IpAddr> = (0..runs)
        .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100 + i as u8)))
        .collect();
    let addrs: Vec<String> = sources.iter().map(|s| format!("{s}/24")).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    lan.join(&attacker, &addrs);
    let a = Server::start(&lan, &lapi, "a", 11, "");
    let b = Server::start(&lan, &lapi, "b", 12, "");
    for src in &sources {
        attacker.exec(&format!(
            "for i in 1 2 3 4 5; do ping -c1 -W2 -I {src} {} >/dev/null && exit 0; sleep 0.2; \
             done; exit 1",
            a.v4
        ));
    }
    let on_b = Dataplane::inspect_pinned(&b.wd.pin_dir).expect("B's pinned maps");
    let closed = SocketAddr::new(a.v4, 23);
    let mut samples = Vec::new();
    for src in &sources {
        let net = IpNet::from(*src);
        // A random phase against B's polling (each run would otherwise start just after
        // B's last call, the previous ban having just been seen).
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..1000)));
        // The probe from a thread: its connect waits for an answer the ban never sends.
        let (seen, took) = std::thread::scope(|s| {
            let t0 = Instant::now();
            s.spawn(|| {
                let _ = attacker.enter(|| tcp_connect(*src, closed, Duration::from_millis(300)));
            });
            let seen = wait_until(Duration::from_secs(20), || {
                matches!(on_b.ban(&net), Ok(Some(_)))
            });
            (seen, t0.elapsed())
        });
        assert!(seen, "{src} never reached B:\n{}", b.log());
        samples.push(took);
    }
    samples.sort();
    println!(
        "CrowdSec propagation, first probe on A to the ban in B's kernel map ({} scans, \
         CROWDSEC_INTERVAL 500ms): p50 {} ms, p99 {} ms, max {} ms",
        samples.len(),
        percentile(&samples, 0.5).as_millis(),
        percentile(&samples, 0.99).as_millis(),
        samples[samples.len() - 1].as_millis()
    );
    drop(a);

    let (files, [v4_ip, v4_net, v6_ip, v6_net]) = list_files(&lapi, decisions);
    let n = decisions;
    let pid = b.daemon.as_ref().unwrap().child.id();
    let before = rss(pid).0;
    let in_kernel = || on_b.bans().map_or(0, |v| v.len());
    let base = in_kernel();
    let t0 = Instant::now();
    import(&lapi, &files);
    let imported = t0.elapsed();
    let by_deltas = wait_until(Duration::from_secs(30), || in_kernel() >= base + n as usize);
    let first = (t0.elapsed(), in_kernel() - base);
    let all = by_deltas
        || wait_until(FULL_SYNC + Duration::from_secs(60), || {
            in_kernel() >= base + n as usize
        });
    let enforced = t0.elapsed();
    assert!(
        all,
        "only {} of {n} decisions reached B's kernel maps; status:\n{}",
        in_kernel() - base,
        b.wd.cli(&["status"])
            .1
            .lines()
            .take(14)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let after = rss(pid).0;
    let how = if by_deltas {
        "all by the stream's deltas".to_owned()
    } else {
        format!(
            "{} in force {:.1?} after the start, the rest by the periodic full answer",
            first.1, first.0
        )
    };
    println!(
        "CrowdSec list of {n} decisions ({v4_ip} IPv4 addresses, {v4_net} IPv4 /24s, {v6_ip} \
         IPv6 addresses, {v6_net} IPv6 /64s): `cscli decisions import` (10,000 a call) {imported:.1?}; from \
         the import's start to all in B's kernel maps {enforced:.1?} ({how}); B's resident \
         memory {} MiB before, {} MiB after",
        before >> 20,
        after >> 20
    );
    fresh_server(&lan, &lapi, base + n as usize);
    crate::firewall_bouncer::firewall_bouncer(&lan, &lapi, base + n as usize);
}

/// The list of `n` decisions written as CSV files for `cscli decisions import` in the
/// Local API's directory: 40% IPv4 addresses, 20% IPv4 /24s, 20% IPv6 addresses, 20% IPv6
/// /64s (how many of each).
fn list_files(lapi: &Lapi, n: u32) -> (Vec<std::path::PathBuf>, [u32; 4]) {
    let (v4_ip, v4_net, v6_ip) = (n * 2 / 5, n / 5, n / 5);
    let v6_net = n - v4_ip - v4_net - v6_ip;
    let mut csv = String::from("duration,scope,value\n");
    for i in 0..v4_ip {
        csv += &format!("24h,ip,{}\n", Ipv4Addr::from(0x0a00_0000u32 + i));
    }
    for i in 0..v4_net {
        csv += &format!(
            "24h,range,{}/24\n",
            Ipv4Addr::from(0x0b00_0000u32 + (i << 8))
        );
    }
    for i in 0..v6_ip {
        let a = (0x2001_0db8_0001u128 << 80) | u128::from(i);
        csv += &format!("24h,ip,{}\n", Ipv6Addr::from(a));
    }
    for i in 0..v6_net {
        let a = (0x2001_0db8_0002u128 << 80) | (u128::from(i) << 64);
        csv += &format!("24h,range,{}/64\n", Ipv6Addr::from(a));
    }
    // Imported 10,000 at a time: one import of 100,000 failed here with "database is
    // locked" (crowdsec's SQLite, written while the bouncers read).
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    let files: Vec<std::path::PathBuf> = lines
        .chunks(10_000)
        .enumerate()
        .map(|(i, chunk)| {
            let file = lapi.file(&format!("list-{i}.csv"));
            std::fs::write(
                &file,
                format!("duration,scope,value\n{}\n", chunk.join("\n")),
            )
            .unwrap();
            file
        })
        .collect();
    (files, [v4_ip, v4_net, v6_ip, v6_net])
}

/// `cscli decisions import` of each file.
fn import(lapi: &Lapi, files: &[std::path::PathBuf]) {
    for file in files {
        let args = ["decisions", "import", "-i", file.to_str().unwrap()];
        // A locked database ("database is locked": crowdsec's SQLite, read by the
        // bouncers twice a second each meanwhile; six tries a second apart were not
        // enough twice) is retried two seconds later, 30 times at most (what was imported
        // before the error stays).
        let mut last = String::new();
        let mut failures = 0;
        let tried = (0..30).find_map(|i| {
            if i > 0 {
                failures += 1;
                std::thread::sleep(Duration::from_secs(2));
            }
            lapi.try_cscli(&args).map_err(|e| last = e).ok()
        });
        assert!(tried.is_some(), "cscli {args:?} failed 30 times: {last}");
        if failures > 0 {
            eprintln!("bench: cscli {args:?} failed {failures} times first (database is locked)");
        }
    }
}

/// Only the list at a fresh server (`--crowdsec-fresh-only`): the list imported into a
/// Local API no server reads, then server C started.
pub(crate) fn fresh_only(decisions: u32) {
    let lan = Lan::new();
    lan.address_hub(&["192.0.2.250/24"]);
    let lapi = Lapi::start(&lan.hub, ip("192.0.2.250"));
    let (files, _) = list_files(&lapi, decisions);
    let t0 = Instant::now();
    import(&lapi, &files);
    println!(
        "CrowdSec list of {decisions} decisions: `cscli decisions import` (10,000 a call) {:.1?}",
        t0.elapsed()
    );
    fresh_server(&lan, &lapi, decisions as usize);
}

/// Starts server C once the list is in the Local API and times it until `expected` bans
/// are in its kernel maps: the daemon logs its first answer's line once the answer is
/// applied (the time given), and the read-only view of its pins, polled every 250 ms
/// (each poll reads every ban, on the daemon's CPU), confirms the count.
fn fresh_server(lan: &Lan, lapi: &Lapi, expected: usize) {
    let mut c = Server::prepare(lan, lapi, "c", 13, "");
    let pins = c.wd.pin_dir.clone();
    let t0 = Instant::now();
    let polled = std::thread::scope(|s| {
        s.spawn(|| c.start_daemon());
        let deadline = t0 + Duration::from_secs(120);
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let n = Dataplane::inspect_pinned(&pins)
                .ok()
                .and_then(|dp| dp.bans().ok())
                .map_or(0, |v| v.len());
            if n >= expected {
                break Some(t0.elapsed());
            }
            if Instant::now() > deadline {
                break None;
            }
        }
    });
    let Some(polled) = polled else {
        panic!("the list never reached C's kernel maps; log:\n{}", c.log());
    };
    let daemon = c.daemon.as_ref().expect("C's daemon");
    let since = |needle: &str| {
        daemon
            .line_time(needle)
            .map_or(Duration::ZERO, |t| t.duration_since(t0))
    };
    let first = daemon.wait_for(
        "crowdsec: enforcing the decisions of",
        Duration::from_secs(5),
    );
    let stages = first
        .split_once("(first answer: ")
        .map_or(first.as_str(), |(_, s)| s.trim_end_matches(')'));
    println!(
        "CrowdSec list at a fresh server C (the list already in the Local API): from the \
         daemon's start to all {expected} bans in its kernel maps {:.2?} (its first answer's \
         line; seen by polling every 250 ms at {polled:.2?}); the daemon active after {:.2?}; \
         first answer: {stages}; C's resident memory after {} MiB",
        since("crowdsec: enforcing the decisions of"),
        since("portsentry: active"),
        rss(daemon.child.id()).0 >> 20
    );
}
