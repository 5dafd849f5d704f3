//! The kernel-side ban end to end: with the block first (BLOCK_TCP=1, KILL_RUN_CMD_FIRST=0)
//! the XDP program bans a scanner at the probe that reaches the trigger: the first watched
//! probe of nmap's default scan is the last packet through, so the scan sees the service
//! this host runs on an unwatched port only when nmap happened to send to it first; the
//! daemon still logs, records and runs its kill commands in PortSentry's order, exactly
//! once. With
//! KILL_RUN_CMD_FIRST=1 the daemon decides, as before. masscan at 100k packets a second
//! over every port is stopped at its first watched port the same way.

use std::{
    net::{IpAddr, TcpListener},
    time::Duration,
};

use portsentry_tests::{
    daemon::{Daemon, Workdir},
    netns::TestNet,
    require_kernel,
    scenario::{counter, reaches, start, status, wait_banned},
};

/// nmap's default scan (`-sS --top-ports 1000 -T4`) from `src`; its report, with the
/// packet trace.
fn default_scan(net: &TestNet, src: IpAddr) -> String {
    let out = net.attacker.try_exec(&format!(
        "nmap -n -Pn -sS --top-ports 1000 -T4 --max-retries 1 --packet-trace -e {} -S {src} \
         --host-timeout 300s {}",
        net.attacker_if, net.server_v4
    ));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // After the ban nothing answers, and nmap retries every probe until it gives up
    // (one to two minutes a scan): `--max-retries 1` shortens only that wait; the order
    // and first sending of the probes are the default scan's. A host timeout would end
    // the scan without its port table.
    assert!(
        out.status.success()
            && stdout.contains("(1 host up)")
            && !stdout.contains("due to host timeout"),
        "nmap from {src} did not scan: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether the default advanced mode watches TCP port `p` (1 to 1024 but 113 and 139).
fn watched(p: u16) -> bool {
    (1..=1024).contains(&p) && p != 113 && p != 139
}

/// The ports nmap sent a SYN to before its first watched port, in its order (from the
/// packet trace: `SENT (0.0301s) TCP 192.0.2.2:41534 > 192.0.2.1:3389 S ...`).
fn sent_before_first_watched(report: &str, server: IpAddr) -> Vec<u16> {
    let mut before = Vec::new();
    for line in report.lines().filter(|l| l.starts_with("SENT")) {
        let Some(port) = line
            .split_whitespace()
            .skip_while(|w| *w != ">")
            .nth(1)
            .and_then(|dst| dst.strip_prefix(&format!("{server}:")))
            .and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        if watched(port) {
            break;
        }
        if !before.contains(&port) {
            before.push(port);
        }
    }
    before
}

/// Packets the program let through (every counted verdict but the drop; nmap's own
/// resets, segments of no probe, are not counted).
fn passed(wd: &Workdir) -> u64 {
    let st = status(wd);
    let c = &st["counters"];
    [
        "pass_probe",
        "pass_unwatched",
        "pass_listening",
        "pass_malformed",
        "pass_fragment",
        "pass_other_proto",
    ]
    .iter()
    .map(|k| c[k].as_u64().unwrap_or(0))
    .sum()
}

#[test]
fn nmaps_default_scan_is_stopped_at_its_first_watched_port() {
    require_kernel!();
    let scans = 10usize;
    let net = TestNet::new(scans as u8);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:8080").unwrap());
    let d = start(&net, &wd);
    let mut answered = Vec::new();
    let mut found = 0;
    for (i, src) in net.attacker_v4.iter().take(scans).enumerate() {
        let before = passed(&wd);
        let report = default_scan(&net, *src);
        let through = passed(&wd) - before;
        answered.push(through);
        // nmap moves 28 popular ports to the front of its shuffled list, 10 of them
        // unwatched here (8080 among them): what it sends before its first watched port
        // is answered, whoever decides. The service is found exactly when 8080 is among
        // those (in about one scan in 19); the first watched probe is the last packet
        // through.
        let early = sent_before_first_watched(&report, net.server_v4);
        let open = report.contains("8080/tcp open");
        assert_eq!(
            open,
            early.contains(&8080),
            "scan {i}: 8080 found: {open}, sent before the first watched port: {early:?}"
        );
        found += usize::from(open);
        wait_banned(&wd, &d, *src);
        assert!(!reaches(&net, *src), "scan {i}: the scanner is cut off");
        // Once: one attack alert, one block line, each command once.
        d.wait_for(
            &format!("External command run for host: {src} "),
            Duration::from_secs(5),
        );
        let blocked = format!("Host {src} has been blocked via XDP drop");
        assert_eq!(
            d.lines().iter().filter(|l| l.contains(&blocked)).count(),
            1,
            "scan {i}"
        );
    }
    eprintln!(
        "packets let through per scan before the ban: {answered:?}; 8080 found in {found} \
         of {scans} scans"
    );
    // The trigger probe is dropped; what passes before it is the handful of probes to
    // unwatched ports nmap happened to send first.
    assert!(
        answered.iter().all(|n| *n <= 30),
        "packets let through per scan: {answered:?}"
    );
    let st = status(&wd);
    assert_eq!(
        st["counters"]["kernel_banned"].as_u64().unwrap(),
        scans as u64,
        "every scanner was banned by the program"
    );
    // The commands ran in PortSentry's order, the XDP step already done.
    let order = wd.read("order");
    let first = net.attacker_v4[0];
    let mine: Vec<&str> = order
        .lines()
        .filter(|l| l.contains(&format!("{first} ")))
        .collect();
    assert_eq!(mine.len(), 2, "{order}");
    assert!(
        mine[0].starts_with("route ") && mine[1].starts_with("run "),
        "{order}"
    );
    assert!(d.stop().success());
}

/// The server's MAC address (masscan sends straight to it: no ARP, no router).
fn server_mac(net: &TestNet) -> String {
    let link = net
        .server
        .exec(&format!("ip -o link show {}", net.server_if));
    String::from_utf8_lossy(&link.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("the server's MAC address")
        .to_owned()
}

/// What passed of one masscan scan before its ban: probes to unwatched ports, and to
/// ports a local socket owns.
struct Through {
    unwatched: u64,
    listening: u64,
}

/// `scans` masscan scans over every port at 100k packets a second, from as many sources,
/// against a detector with `extra` configuration and a service on 8080. masscan's port
/// order is a random permutation drawn from `--seed`: the seeds are fixed so that a
/// failure can be replayed. For each scan it checks what holds for any order: the
/// service is not found, the probe that reached the trigger was dropped (no watched
/// probe passed), the program banned the source, and every later packet was dropped.
fn masscan_scans(extra: &str, scans: usize) -> Vec<Through> {
    let net = TestNet::new(scans as u8);
    let wd = Workdir::new();
    wd.config(&net.server_if, extra);
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:8080").unwrap());
    let d = start(&net, &wd);
    let mac = server_mac(&net);
    let mut through = Vec::new();
    for (i, src) in net.attacker_v4.iter().take(scans).enumerate() {
        let before = status(&wd);
        let out = net.attacker.try_exec(&format!(
            "masscan {} -p1-65535 --rate 100000 -e {} --source-ip {src} --router-mac {mac} \
             --wait 1 --seed {} 2>&1",
            net.server_v4,
            net.attacker_if,
            i + 1
        ));
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && report.contains("rate:"),
            "masscan from {src} did not scan: {report}"
        );
        assert!(
            !report.contains("open port 8080/tcp"),
            "scan {i}: masscan found the service: {report}"
        );
        wait_banned(&wd, &d, *src);
        assert!(!reaches(&net, *src), "scan {i}: the scanner is cut off");
        let after = status(&wd);
        let delta = |k: &str| counter(&after, k) - counter(&before, k);
        assert_eq!(delta("pass_probe"), 0, "scan {i}: a watched probe passed");
        assert_eq!(delta("kernel_banned"), 1, "scan {i}");
        assert!(
            delta("drop_banned") > 60_000,
            "scan {i}: dropped {}",
            delta("drop_banned")
        );
        through.push(Through {
            unwatched: delta("pass_unwatched"),
            listening: delta("pass_listening"),
        });
    }
    assert!(d.stop().success());
    through
}

/// The default advanced mode watches ports 1-1024 (1021 after the excluded ones) of
/// 65535: masscan's probes to unwatched ports before its first watched one are answered
/// (about 64 on average; with a random seed, 8080 comes before every watched port in
/// about one scan in a thousand). The first watched probe is the last packet through.
#[test]
fn masscan_is_stopped_at_its_first_watched_port() {
    require_kernel!();
    let through = masscan_scans("", 10);
    let unwatched: Vec<u64> = through.iter().map(|t| t.unwatched).collect();
    eprintln!("probes to unwatched ports answered per scan before the ban: {unwatched:?}");
}

/// With every port watched (`ADVANCED_PORTS_TCP="65535"`; a port with a listener is
/// never a target, checked per packet), masscan's first probe to a closed port is its
/// last: nothing but the excluded ports (113, 139) and the service could answer before.
#[test]
fn masscan_with_every_port_watched_gets_no_answer() {
    require_kernel!();
    let through = masscan_scans("ADVANCED_PORTS_TCP=\"65535\"\n", 5);
    for (i, t) in through.iter().enumerate() {
        assert!(
            t.unwatched + t.listening <= 2,
            "scan {i}: {} probes to unwatched ports and {} to the service passed",
            t.unwatched,
            t.listening
        );
    }
}

#[test]
fn with_kill_run_cmd_first_the_daemon_decides() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    wd.config(&net.server_if, "KILL_RUN_CMD_FIRST=\"1\"\n");
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:8080").unwrap());
    let d: Daemon = start(&net, &wd);
    let src = net.attacker_v4[0];
    default_scan(&net, src);
    wait_banned(&wd, &d, src);
    let st = status(&wd);
    assert_eq!(st["counters"]["kernel_banned"].as_u64().unwrap(), 0);
    assert!(st["counters"]["pass_probe"].as_u64().unwrap() >= 1);
    let order = wd.read("order");
    assert!(
        order.lines().next().unwrap_or_default().starts_with("run "),
        "{order}"
    );
    assert!(d.stop().success());
}
