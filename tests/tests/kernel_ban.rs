//! The kernel-side ban end to end: with the block first (BLOCK_TCP=1, KILL_RUN_CMD_FIRST=0)
//! the XDP program bans a scanner at the probe that reaches the trigger, so nmap's default
//! scan never sees the service this host runs on an unwatched port; the daemon still
//! logs, records and runs its kill commands in PortSentry's order, exactly once. With
//! KILL_RUN_CMD_FIRST=1 the daemon decides, as before.

use std::{
    net::{IpAddr, TcpListener},
    time::Duration,
};

use portsentry_tests::{
    daemon::{Daemon, Workdir},
    netns::TestNet,
    require_kernel,
    scenario::{reaches, start, status, wait_banned},
};

/// nmap's default scan (`-sS --top-ports 1000 -T4`) from `src`; its report.
fn default_scan(net: &TestNet, src: IpAddr) -> String {
    let out = net.attacker.try_exec(&format!(
        "nmap -n -Pn -sS --top-ports 1000 -T4 -e {} -S {src} --host-timeout 60s {}",
        net.attacker_if, net.server_v4
    ));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("(1 host up)"),
        "nmap from {src} did not scan: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Packets the program let through (every verdict but the drop).
fn passed(wd: &Workdir) -> u64 {
    let st = status(wd);
    let c = &st["counters"];
    [
        "pass_probe",
        "pass_unwatched",
        "pass_listening",
        "pass_not_probe",
        "pass_malformed",
        "pass_fragment",
        "pass_other_proto",
    ]
    .iter()
    .map(|k| c[k].as_u64().unwrap_or(0))
    .sum()
}

#[test]
fn nmaps_default_scan_never_finds_the_service() {
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
    for (i, src) in net.attacker_v4.iter().take(scans).enumerate() {
        let before = passed(&wd);
        let report = default_scan(&net, *src);
        let through = passed(&wd) - before;
        answered.push(through);
        assert!(
            !report.contains("8080/tcp open"),
            "scan {i}: nmap found the service: {report}"
        );
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
    eprintln!("packets let through per scan before the ban: {answered:?}");
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
