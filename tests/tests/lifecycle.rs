//! Ban lifecycle and operations: kill -9 and restart with no gap, expiry in the kernel
//! and in userspace, ban/unban/status round trips, unload and a simulated reboot, and
//! the metrics endpoint. The real binary runs in a server namespace; traffic comes from
//! an attacker namespace.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use portsentry_tests::{
    daemon::{Daemon, Workdir, wait_until},
    netns::{TestNet, tcp_connect},
    require_kernel,
    scenario::{
        RESPONSE_SLOTS, WaitingResponse, a_response_waiting, ban_nets, banned, probe, reaches,
        slow_route, start, status, wait_banned,
    },
};

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn kill_9_leaves_protection_and_a_restart_adopts_everything() {
    require_kernel!();
    let net = TestNet::new(3);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let (scanner, client, late) = (net.attacker_v4[0], net.attacker_v4[1], net.attacker_v4[2]);

    let a = start(&net, &wd);
    probe(&net, scanner);
    wait_banned(&wd, &a, scanner);
    a.wait_for(
        &format!("External command run for host: {scanner}"),
        Duration::from_secs(5),
    );
    let before = status(&wd);
    assert_eq!(ban_nets(&before), vec![format!("{scanner}/32")]);
    assert_eq!(before["daemon"]["running"], true);

    a.kill9();
    // The gap: no daemon. The scanner stays dropped, others pass, and status still works.
    assert!(
        !reaches(&net, scanner),
        "banned source reached the service with no daemon"
    );
    assert!(
        reaches(&net, client),
        "an innocent client must still connect"
    );
    let gap = status(&wd);
    assert_eq!(gap["daemon"]["running"], false);
    assert_eq!(gap["loaded"], true);
    assert_eq!(gap["bans"], before["bans"], "bans during the gap");
    // A scan during the gap is counted by the kernel and reported when a daemon returns.
    probe(&net, late);

    let b = start(&net, &wd);
    b.wait_for("adopted the pinned link", Duration::from_secs(5));
    b.wait_for("1 bans in force", Duration::from_secs(5));
    wait_banned(&wd, &b, late);
    let after = status(&wd);
    let kept: Vec<&serde_json::Value> = after["bans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["net"] == format!("{scanner}/32"))
        .collect();
    assert_eq!(
        kept,
        before["bans"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        "identical ban"
    );
    assert!(!reaches(&net, scanner), "still dropped after the restart");
    probe(&net, scanner);
    std::thread::sleep(Duration::from_millis(500));
    let order = wd.read("order");
    assert_eq!(
        count(&order, &format!("route {scanner} ")),
        1,
        "no action twice: {order}"
    );
    assert_eq!(
        count(&order, &format!("run {scanner} ")),
        1,
        "no action twice: {order}"
    );
    assert_eq!(
        count(&wd.read("portsentry.history"), &format!("/{scanner} Port")),
        1
    );

    // A clean stop keeps protection as well.
    assert!(b.stop().success());
    assert!(!reaches(&net, scanner), "dropped after a clean stop");

    // unload removes everything from the kernel...
    let (ok, out, err) = wd.cli(&["unload"]);
    assert!(ok, "unload: {err}");
    assert!(out.contains("detached from 1 interface,"), "{out}");
    assert!(!wd.pin_dir.exists(), "pins left behind");
    // The veth drops what crosses it while native XDP comes off; a SYN lost there is
    // retransmitted after a second, past one connect's timeout: a few tries.
    assert!(
        wait_until(Duration::from_secs(4), || reaches(&net, scanner)),
        "no program after unload"
    );
    assert_eq!(status(&wd)["loaded"], false);
    // ...and a start after it (as after a reboot) restores the bans from disk.
    let c = start(&net, &wd);
    c.wait_for("2 bans in force", Duration::from_secs(5));
    assert!(!reaches(&net, scanner), "ban restored from the state file");
    assert!(!reaches(&net, late), "ban restored from the state file");
    assert!(reaches(&net, client));
    assert!(c.stop().success());
}

#[test]
fn bans_expire_in_the_kernel_and_in_userspace_with_undo_commands() {
    require_kernel!();
    let net = TestNet::new(2);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!(
            "BAN_TIME=\"2s\"\nUNKILL_ROUTE=\"echo unroute $TARGET$ >> {order}\"\n\
             UNKILL_RUN_CMD=\"echo unrun $TARGET$ >> {order}\"\n"
        ),
    );
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let (first, second) = (net.attacker_v4[0], net.attacker_v4[1]);

    // In the kernel: the daemon is killed, and the ban still ends on time.
    let a = start(&net, &wd);
    probe(&net, first);
    wait_banned(&wd, &a, first);
    assert!(!reaches(&net, first));
    a.kill9();
    assert!(
        wait_until(Duration::from_secs(6), || reaches(&net, first)),
        "the kernel must end an expired ban without the daemon"
    );
    // The next daemon lifts it properly: undo commands, hosts.deny line removed.
    let b = start(&net, &wd);
    b.wait_for(
        &format!("ban of {first}/32 expired while portsentry was stopped"),
        Duration::from_secs(5),
    );
    assert!(wait_until(Duration::from_secs(5), || wd
        .read("order")
        .contains(&format!("unrun {first}\n"))));
    assert!(
        !wd.read("hosts.deny")
            .contains(&format!("ALL: {first} : DENY"))
    );

    // In userspace, while running.
    probe(&net, second);
    wait_banned(&wd, &b, second);
    assert!(!reaches(&net, second));
    b.wait_for(
        &format!("ban of {second}/32 expired"),
        Duration::from_secs(6),
    );
    assert!(reaches(&net, second));
    assert!(wait_until(Duration::from_secs(5), || {
        let o = wd.read("order");
        o.contains(&format!("unroute {second}\n")) && o.contains(&format!("unrun {second}\n"))
    }));
    let o = wd.read("order");
    assert!(
        o.find(&format!("unroute {second}")) < o.find(&format!("unrun {second}")),
        "UNKILL_ROUTE before UNKILL_RUN_CMD: {o}"
    );
    assert!(
        !wd.read("hosts.deny")
            .contains(&format!("ALL: {second} : DENY"))
    );
    assert_eq!(ban_nets(&status(&wd)).len(), 0);
    // Banned again: the second ban of a repeat offender (count 2).
    probe(&net, second);
    assert!(wait_until(Duration::from_secs(5), || {
        status(&wd)["bans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["count"] == 2)
    }));
    assert!(b.stop().success());
}

#[test]
fn ban_unban_and_status_round_trips() {
    require_kernel!();
    let net = TestNet::new(2);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let (a1, a2) = (net.attacker_v4[0], net.attacker_v4[1]);
    let d = start(&net, &wd);

    let (ok, out, err) = wd.cli(&["ban", &a1.to_string(), "--time", "1h"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("banned {a1}/32 for 1h")), "{out}");
    assert!(!reaches(&net, a1));
    assert!(reaches(&net, a2));
    let st = status(&wd);
    let b = &st["bans"][0];
    assert_eq!(b["net"], format!("{a1}/32"));
    assert_eq!(b["origin"], "manual");
    assert!(b["expires"].is_string(), "{b}");
    d.wait_for(
        &format!("{a1}/32 banned by the operator for 1h"),
        Duration::from_secs(5),
    );

    // A prefix ban covers the whole network (one that covers this host's own address,
    // 192.0.2.1, is refused by the ban guard).
    let (ok, _, err) = wd.cli(&["ban", "192.0.2.0/28"]);
    assert!(
        !ok && err.contains("it covers 192.0.2.1, an address of this host"),
        "{err}"
    );
    let (ok, _, err) = wd.cli(&["ban", "192.0.2.2/31"]);
    assert!(ok, "{err}");
    assert!(!reaches(&net, a2));
    // Sorted by network: the prefix first.
    assert_eq!(
        ban_nets(&status(&wd)),
        vec!["192.0.2.2/31".to_owned(), format!("{a1}/32")]
    );
    assert!(status(&wd)["bans"][0]["expires"].is_null(), "permanent");

    // Unban one, then everything.
    let (ok, out, err) = wd.cli(&["unban", "192.0.2.2/31"]);
    assert!(ok && out.contains("unbanned 192.0.2.2/31"), "{out}{err}");
    assert!(reaches(&net, a2));
    assert!(!reaches(&net, a1));
    let (ok, _, err) = wd.cli(&["unban", "203.0.113.1"]);
    assert!(!ok && err.contains("203.0.113.1/32 is not banned"), "{err}");
    let (ok, _, err) = wd.cli(&["ban", "not-an-address"]);
    assert!(!ok && err.contains("not an address"), "{err}");
    let (ok, out, err) = wd.cli(&["unban", "--all"]);
    assert!(ok && out.contains("unbanned 1 networks"), "{out}{err}");
    assert!(reaches(&net, a1));
    assert!(ban_nets(&status(&wd)).is_empty());

    // With the daemon stopped, ban and unban act on the pinned maps directly.
    assert!(d.stop().success());
    let (ok, out, err) = wd.cli(&["ban", &a2.to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("permanently"), "{out}");
    assert!(
        !reaches(&net, a2),
        "a ban made with no daemon applies at once"
    );
    let st = status(&wd);
    assert_eq!(st["daemon"]["running"], false);
    assert_eq!(ban_nets(&st), vec![format!("{a2}/32")]);
    // The next daemon keeps it.
    let d = start(&net, &wd);
    d.wait_for("1 bans in force", Duration::from_secs(5));
    assert!(!reaches(&net, a2));
    let (ok, _, err) = wd.cli(&["unban", &a2.to_string()]);
    assert!(ok, "{err}");
    assert!(reaches(&net, a2));
    // unload refuses while the daemon runs.
    let (ok, _, err) = wd.cli(&["unload"]);
    assert!(!ok && err.contains("stop it first"), "{err}");
    assert!(d.stop().success());

    // Text status names the interface and the counters.
    let (ok, out, _) = wd.cli(&["status"]);
    assert!(ok);
    assert!(
        out.contains(&format!("interfaces: {}", net.server_if)),
        "{out}"
    );
    assert!(out.contains("drop_banned"), "{out}");
}

fn scrape(net: &TestNet, addr: &str) -> String {
    net.server.enter(|| {
        let mut s = TcpStream::connect(addr).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(
            body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
            "{body}"
        );
        body
    })
}

fn metric(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}")) as u64
}

#[test]
fn metrics_endpoint_counts_what_was_sent() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let addr = "127.0.0.1:9477";
    wd.config(&net.server_if, &format!("METRICS_ADDRESS=\"{addr}\"\n"));
    let d = start(&net, &wd);
    d.wait_for(
        "metrics on http://127.0.0.1:9477/metrics",
        Duration::from_secs(5),
    );
    let body = scrape(&net, addr);
    assert_eq!(metric(&body, "portsentry_bans_active "), 0);
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    let scanner = net.attacker_v4[0];
    probe(&net, scanner);
    wait_banned(&wd, &d, scanner);
    d.wait_for(
        &format!("External command run for host: {scanner}"),
        Duration::from_secs(5),
    );
    // Ten more connection attempts from the banned source, all dropped (each a SYN,
    // retransmitted while the attempt lasts, so at least ten drops).
    for _ in 0..10 {
        let _ = net.attacker.enter(|| {
            tcp_connect(
                scanner,
                SocketAddr::new(net.server_v4, 80),
                Duration::from_millis(50),
            )
        });
    }
    let body = scrape(&net, addr);
    assert!(
        metric(&body, "portsentry_packets_total{reason=\"drop_banned\"} ") >= 10,
        "{body}"
    );
    // The probe itself was dropped: the program banned its source at the trigger.
    assert_eq!(
        metric(&body, "portsentry_packets_total{reason=\"pass_probe\"} "),
        0
    );
    assert_eq!(
        metric(
            &body,
            "portsentry_kernel_events_total{event=\"kernel_banned\"} "
        ),
        1,
        "{body}"
    );
    assert_eq!(metric(&body, "portsentry_bans_active "), 1);
    assert_eq!(
        metric(&body, "portsentry_bans_added_total{origin=\"scan\"} "),
        1
    );
    assert_eq!(
        metric(
            &body,
            "portsentry_actions_total{kind=\"route\",result=\"ok\"} "
        ),
        1
    );
    assert_eq!(
        metric(
            &body,
            "portsentry_actions_total{kind=\"run_cmd\",result=\"ok\"} "
        ),
        1
    );
    assert!(metric(&body, "portsentry_events_read_total ") >= 1);
    assert_eq!(metric(&body, "portsentry_events_lost_total "), 0);
    // The maps' sizes, as made at the start: a reload's new ones wait for the next.
    let capacity = |body: &str| {
        (
            metric(body, "portsentry_bans_capacity "),
            metric(body, "portsentry_sources_capacity "),
        )
    };
    let sizes = capacity(&body);
    assert!(sizes.0 > 4096 && sizes.1 > 4096, "{body}");
    wd.config(
        &net.server_if,
        &format!("METRICS_ADDRESS=\"{addr}\"\nMAX_BANS=\"4096\"\nMAX_TRACKED_SOURCES=\"4096\"\n"),
    );
    d.signal(libc::SIGHUP);
    d.wait_for("take effect at the next start", Duration::from_secs(5));
    assert_eq!(capacity(&scrape(&net, addr)), sizes);
    assert!(d.stop().success());
}

/// A server whose UNKILL_RUN_CMD (after `before`, a shell prefix) writes `unrun TARGET`
/// to the file `order`, with a service on port 80 and bans of an hour.
fn unkill_recorded(before: &str) -> (TestNet, Workdir, TcpListener) {
    let net = TestNet::new(3);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!("BAN_TIME=\"1h\"\nUNKILL_RUN_CMD=\"{before}echo unrun $TARGET$ >> {order}\"\n"),
    );
    let svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    (net, wd, svc)
}

/// Starts the daemon and has `scanner` banned by a scan.
fn scan_banned(net: &TestNet, wd: &Workdir, scanner: IpAddr) -> Daemon {
    let d = start(net, wd);
    probe(net, scanner);
    wait_banned(wd, &d, scanner);
    d
}

/// An operator's ban over a scan ban (made permanent, say) replaces a ban that ran kill
/// commands with one that runs none: the scan ban's undo steps run then (its route and
/// hosts.deny line would otherwise outlive every later unban), and the source stays
/// dropped by the operator's ban.
#[test]
fn an_operators_ban_over_a_scan_ban_undoes_its_kill_commands() {
    require_kernel!();
    let (net, wd, _svc) = unkill_recorded("");
    let scanner = net.attacker_v4[0];
    let d = scan_banned(&net, &wd, scanner);
    let line = format!("ALL: {scanner} : DENY");
    assert!(wait_until(Duration::from_secs(5), || wd
        .read("hosts.deny")
        .contains(&line)));
    let (ok, out, err) = wd.cli(&["ban", &scanner.to_string(), "--time", "0"]);
    assert!(ok, "{out}{err}");
    assert!(
        wait_until(Duration::from_secs(5), || wd
            .read("order")
            .contains(&format!("unrun {scanner}\n"))),
        "the scan ban's undo steps: {}",
        d.lines().join("\n")
    );
    assert!(!wd.read("hosts.deny").contains(&line));
    assert!(!reaches(&net, scanner), "still banned, by the operator");
    assert_eq!(status(&wd)["bans"][0]["origin"], "manual");
    assert!(d.stop().success());
}

/// A ban's hosts.deny line is the one its KILL_HOSTS_DENY made: changed by a reload,
/// then taken out of the configuration at a restart, the template in force is not the
/// ban's, and each unban still removes that ban's own line (and nothing else). A ban
/// the program made while the daemon was stopped ran its kill commands at the restart,
/// with no KILL_HOSTS_DENY: it has no line either.
#[test]
fn an_unban_removes_the_line_of_the_template_its_ban_was_made_with() {
    require_kernel!();
    let (net, wd, _svc) = unkill_recorded("");
    let stopped = net.attacker_v4[3];
    let (first, second) = (net.attacker_v4[0], net.attacker_v4[1]);
    let d = scan_banned(&net, &wd, first);
    let first_line = format!("ALL: {first} : DENY");
    assert!(wait_until(Duration::from_secs(5), || wd
        .read("hosts.deny")
        .contains(&first_line)));
    let order = wd.path("order").display().to_string();
    let unkill = format!("BAN_TIME=\"1h\"\nUNKILL_RUN_CMD=\"echo unrun $TARGET$ >> {order}\"\n");
    wd.config(
        &net.server_if,
        &format!("{unkill}KILL_HOSTS_DENY=\"sshd: $TARGET$ # $MODE$\"\n"),
    );
    d.signal(libc::SIGHUP);
    d.wait_for("reloaded", Duration::from_secs(5));
    // Past the two ticks after the reload in which the program's ban may be dated
    // before it (and taken as made with either template).
    std::thread::sleep(Duration::from_millis(50));
    probe(&net, second);
    wait_banned(&wd, &d, second);
    let second_line = format!("sshd: {second} # atcp");
    assert!(
        wait_until(Duration::from_secs(5), || wd
            .read("hosts.deny")
            .contains(&second_line)),
        "{}",
        wd.read("hosts.deny")
    );
    assert!(d.stop().success());
    // No hosts.deny lines at all from this start on; an operator's own line stays.
    wd.config(&net.server_if, &format!("{unkill}KILL_HOSTS_DENY=\"\"\n"));
    let own = format!("ALL: {second} : DENY");
    std::fs::write(
        wd.path("hosts.deny"),
        format!("{}{own}\n", wd.read("hosts.deny")),
    )
    .unwrap();
    // Banned by the program while the daemon is stopped.
    probe(&net, stopped);
    assert!(
        ban_nets(&status(&wd)).contains(&format!("{stopped}/32")),
        "{}",
        status(&wd)
    );
    let d = start(&net, &wd);
    wait_banned(&wd, &d, stopped);
    d.wait_for(
        &format!("External command run for host: {stopped}"),
        Duration::from_secs(5),
    );
    let own_stopped = format!("sshd: {stopped} # atcp");
    std::fs::write(
        wd.path("hosts.deny"),
        format!("{}{own_stopped}\n", wd.read("hosts.deny")),
    )
    .unwrap();
    // A ban made now writes no line: an operator's line of the last template's form
    // for its host is not its line.
    let third = net.attacker_v4[2];
    probe(&net, third);
    wait_banned(&wd, &d, third);
    let own_third = format!("sshd: {third} # atcp");
    std::fs::write(
        wd.path("hosts.deny"),
        format!("{}{own_third}\n", wd.read("hosts.deny")),
    )
    .unwrap();
    for ip in [first, second, stopped, third] {
        let (ok, out, err) = wd.cli(&["unban", &ip.to_string()]);
        assert!(ok, "{out}{err}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || [stopped, third]
            .iter()
            .all(|ip| wd.read("order").contains(&format!("unrun {ip}\n")))),
        "{}",
        d.lines().join("\n")
    );
    assert!(
        wait_until(Duration::from_secs(5), || wd.read("hosts.deny")
            == format!("{own}\n{own_stopped}\n{own_third}\n")),
        "hosts.deny: {:?}\n{}",
        wd.read("hosts.deny"),
        d.lines().join("\n")
    );
    assert!(d.stop().success());
}

/// A stop right after an unban waits for the unban's undo steps: the lift is in the
/// journal already, so an undo cut short would never run again (a route or hosts.deny
/// line left for good).
#[test]
fn a_stop_waits_for_the_undo_steps_of_an_unban() {
    require_kernel!();
    let (net, wd, _svc) = unkill_recorded("sleep 1; ");
    let scanner = net.attacker_v4[0];
    let d = scan_banned(&net, &wd, scanner);
    let (ok, out, err) = wd.cli(&["unban", &scanner.to_string()]);
    assert!(ok, "{out}{err}");
    assert!(d.stop().success());
    assert!(
        wd.read("order").contains(&format!("unrun {scanner}\n")),
        "the undo step ran to its end before the daemon stopped"
    );
}

/// The undo steps of an unbanned host end before the kill commands of its next ban
/// start: run after them, they would take the new ban's hosts.deny line away (and its
/// route, with the usual UNKILL_ROUTE).
#[test]
fn a_host_banned_again_runs_its_kill_commands_after_the_undo_of_its_last_ban() {
    require_kernel!();
    // The route's undo takes a second, and the hosts.deny line goes after it.
    let (net, wd, _svc) = unkill_recorded("");
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!(
            "BAN_TIME=\"1h\"\nUNKILL_ROUTE=\"sleep 1; echo unroute $TARGET$ >> {order}\"\n\
             UNKILL_RUN_CMD=\"echo unrun $TARGET$ >> {order}\"\n"
        ),
    );
    let scanner = net.attacker_v4[0];
    let d = scan_banned(&net, &wd, scanner);
    let line = format!("ALL: {scanner} : DENY");
    let kills = || {
        wd.read("order")
            .lines()
            .filter(|l| l.starts_with("run ") || l.starts_with("unrun "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(wait_until(Duration::from_secs(5), || kills() == ["run"]));
    let (ok, out, err) = wd.cli(&["unban", &scanner.to_string()]);
    assert!(ok, "{out}{err}");
    // Banned again at once, while the last ban's undo steps run.
    probe(&net, scanner);
    assert!(
        wait_until(Duration::from_secs(10), || kills().len() == 3),
        "{:?}\n{}",
        kills(),
        d.lines().join("\n")
    );
    assert_eq!(kills(), ["run", "unrun", "run"], "{}", wd.read("order"));
    assert!(
        wd.read("hosts.deny").contains(&line),
        "the new ban's hosts.deny line stays"
    );
    assert!(!reaches(&net, scanner));
    assert!(d.stop().success());
}

/// A response that stops before its first step (its ban lifted while it waited for a
/// slot) still ends after the host's undo steps that were running: ended before them,
/// it let the host's next response run its kill commands while the undo still ran
/// (and have them undone by it).
#[test]
fn a_response_stopped_before_its_steps_keeps_the_hosts_next_after_the_undo() {
    require_kernel!();
    let net = TestNet::new(RESPONSE_SLOTS as u8);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!(
            "BAN_TIME=\"1h\"\nMAX_BANS_PER_SEC=\"0\"\n{}\
             UNKILL_ROUTE=\"echo unroute-start $TARGET$ >> {order}; sleep 20; \
             echo unroute-end $TARGET$ >> {order}\"\n",
            slow_route(&wd)
        ),
    );
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    let host = net.attacker_v4[RESPONSE_SLOTS];
    let routes = || {
        wd.read("order")
            .lines()
            .filter(|l| l.starts_with("route "))
            .count()
    };
    // Banned; its response (an eight-second KILL_ROUTE) ends.
    probe(&net, host);
    assert!(wait_until(Duration::from_secs(10), || routes() == 1));
    d.wait_for(
        &format!("External command run for host: {host}"),
        Duration::from_secs(20),
    );
    // Unbanned: the undo runs for twenty seconds, in a slot of its own.
    let (ok, out, err) = wd.cli(&["unban", &host.to_string()]);
    assert!(ok, "{out}{err}");
    assert!(wait_until(Duration::from_secs(5), || wd
        .read("order")
        .contains(&format!("unroute-start {host}\n"))));
    // Every other slot held for eight seconds.
    let net_ref = &net;
    std::thread::scope(|s| {
        for ip in &net.attacker_v4[..RESPONSE_SLOTS - 1] {
            s.spawn(move || probe(net_ref, *ip));
        }
    });
    assert!(
        wait_until(Duration::from_secs(10), || routes() == RESPONSE_SLOTS),
        "{}",
        d.lines().join("\n")
    );
    // Banned by the program again; its response waits for a slot, and its ban is lifted
    // meanwhile: the response stops when it gets one.
    probe(&net, host);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out, err) = wd.cli(&["unban", &host.to_string()]);
    assert!(ok && out.contains("not yet recorded"), "{out}{err}");
    d.wait_for(
        &format!("the ban the kernel made of {host}/32 was lifted before it was taken over"),
        Duration::from_secs(15),
    );
    // Banned a third time while the undo still runs: its kill commands wait for it.
    assert!(!wd.read("order").contains(&format!("unroute-end {host}\n")));
    probe(&net, host);
    let mine = || {
        wd.read("order")
            .lines()
            .filter(|l| l.ends_with(&format!(" {host}")))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || mine().len() == 4),
        "{:?}\n{}",
        mine(),
        d.lines().join("\n")
    );
    assert_eq!(
        mine(),
        ["route", "unroute-start", "unroute-end", "route"],
        "{}",
        wd.read("order")
    );
    assert!(!reaches(&net, host));
    assert!(d.stop().success());
}

/// An operator's ban made while the host's scan response waited for a slot stays as
/// the operator made it: the response stops, as for a host already blocked. (It was
/// replaced by a scan ban of BAN_TIME, whose expiry then freed the host.)
#[test]
fn an_operators_ban_made_while_a_response_waits_stays_as_made() {
    require_kernel!();
    let WaitingResponse {
        net,
        wd,
        d,
        last,
        svc: _svc,
    } = a_response_waiting(|_| "BAN_TIME=\"1h\"\n".to_string());
    let (ok, out, err) = wd.cli(&["ban", &last.to_string(), "--time", "0"]);
    assert!(ok, "{out}{err}");
    // The response gets its slot: it stops, or (as before) takes the ban over.
    let stopped = format!("attackalert: Host: {last}/{last} is already blocked Ignoring");
    let took_over = format!("attackalert: Host {last} has been blocked via XDP drop");
    assert!(
        wait_until(Duration::from_secs(15), || d
            .lines()
            .iter()
            .any(|l| l.contains(&stopped) || l.contains(&took_over))),
        "{}",
        d.lines().join("\n")
    );
    let st = status(&wd);
    let ban = st["bans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["net"] == format!("{last}/32"))
        .unwrap_or_else(|| panic!("no ban of {last}: {st}"));
    assert_eq!(ban["origin"], "manual", "{ban}");
    assert!(ban["expires"].is_null(), "permanent, as made: {ban}");
    assert!(d.has_line(&stopped));
    assert!(!wd.read("order").contains(&format!("route {last}\n")));
    assert!(!reaches(&net, last));
    assert!(d.stop().success());
}

/// A host reported for a UDP scan (BLOCK_UDP="0") that then scans TCP is banned for
/// it: the ban recorded, its kill commands run. (Marked as acted on by the report, its
/// ban, made by the program at the TCP probe, was left in force unrecorded: nothing
/// logged, no command run, no expiry.)
#[test]
fn a_host_reported_for_a_udp_scan_is_banned_for_its_tcp_scan() {
    reported_for_udp_then_banned_for_tcp("");
}

/// The same when the daemon bans, not the program at the trigger (KILL_RUN_CMD_FIRST
/// runs the kill command before the ban): the report marked the host as acted on for
/// every protocol, and its TCP scan was dropped as already handled, never banned.
/// PortSentry keeps a blocked file a protocol.
#[test]
fn a_host_reported_for_a_udp_scan_is_banned_by_the_daemon_for_its_tcp_scan() {
    reported_for_udp_then_banned_for_tcp("KILL_RUN_CMD_FIRST=\"1\"\n");
}

/// A host scanning UDP and TCP at once while its response runs KILL_RUN_CMD first: one
/// response, its command run once (the ban it makes covers both protocols). A response
/// to its TCP scan, racing the first before its ban was in the book, ran the command a
/// second time.
#[test]
fn a_host_scanning_both_protocols_at_once_is_responded_to_once() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!(
            "KILL_RUN_CMD_FIRST=\"1\"\n\
             KILL_RUN_CMD=\"sleep 2; echo run $TARGET$ $MODE$ >> {order}\"\n"
        ),
    );
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    let host = net.attacker_v4[0];
    net.attacker.enter(|| {
        let s = UdpSocket::bind(SocketAddr::new(host, 0)).unwrap();
        let _ = s.send_to(b"probe", SocketAddr::new(net.server_v4, 20));
    });
    d.wait_for(
        &format!("attackalert: UDP scan from host: {host}/{host}"),
        Duration::from_secs(5),
    );
    probe(&net, host);
    d.wait_for(
        &format!("attackalert: Host {host} has been blocked via XDP drop"),
        Duration::from_secs(10),
    );
    // Time for a second response to run its command (2 s), had one started.
    std::thread::sleep(Duration::from_secs(4));
    let runs = wd.read("order").matches(&format!("run {host} ")).count();
    assert_eq!(
        runs,
        1,
        "order:\n{}\nlog:\n{}",
        wd.read("order"),
        d.lines().join("\n")
    );
    assert!(banned(&wd, host));
    assert!(d.stop().success());
}

fn reported_for_udp_then_banned_for_tcp(extra: &str) {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    wd.config(&net.server_if, &format!("BLOCK_UDP=\"0\"\n{extra}"));
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    let host = net.attacker_v4[0];
    net.attacker.enter(|| {
        let s = UdpSocket::bind(SocketAddr::new(host, 0)).unwrap();
        for port in 20..=30 {
            let _ = s.send_to(b"probe", SocketAddr::new(net.server_v4, port));
        }
    });
    d.wait_for(
        &format!("attackalert: UDP scan from host: {host}/{host}"),
        Duration::from_secs(5),
    );
    assert!(reaches(&net, host), "reported only");
    probe(&net, host);
    d.wait_for(
        &format!("attackalert: Host {host} has been blocked via XDP drop"),
        Duration::from_secs(10),
    );
    assert!(
        wait_until(Duration::from_secs(5), || wd
            .read("order")
            .contains(&format!("route {host} "))),
        "{}",
        wd.read("order")
    );
    assert!(banned(&wd, host));
    assert!(!reaches(&net, host));
    assert!(d.stop().success());
}

/// A scanner the daemon bans (here one over the program's MAX_BANS_PER_SEC, banned in
/// the next second) is banned at once while kill commands that hang hold every slot of
/// the response jobs' pool: its XDP ban is put before its job waits for a slot. It
/// waited for a slot, and the scanner went on scanning until one was free. Unbanned
/// while its job waits, none of its kill commands runs once the job has its slot, nor
/// any of its undo steps (an UNKILL_ROUTE of a route never added could delete the
/// operator's own rule).
#[test]
fn a_ban_the_daemon_makes_does_not_wait_for_a_slot() {
    require_kernel!();
    let net = TestNet::new(RESPONSE_SLOTS as u8 + 3);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!(
            "MAX_BANS_PER_SEC=\"{RESPONSE_SLOTS}\"\n\
             KILL_ROUTE=\"echo route $TARGET$ >> {order}; sleep 12\"\n\
             UNKILL_ROUTE=\"echo unroute $TARGET$ >> {order}\"\n\
             UNKILL_RUN_CMD=\"echo unrun $TARGET$ >> {order}\"\n"
        ),
    );
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    // All in one second of the wall clock: the program bans sixteen (their responses
    // take every slot and hang in KILL_ROUTE), the daemon the rest in the next second.
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    if !(100..=600).contains(&into) {
        std::thread::sleep(Duration::from_millis(u64::from((1100 - into) % 1000)));
    }
    let sources = &net.attacker_v4;
    let net_ref = &net;
    std::thread::scope(|s| {
        for ip in sources {
            s.spawn(move || probe(net_ref, *ip));
        }
    });
    d.wait_for(
        &format!("MAX_BANS_PER_SEC ({RESPONSE_SLOTS}) reached"),
        Duration::from_secs(5),
    );
    assert!(
        wait_until(Duration::from_secs(6), || {
            let nets = ban_nets(&status(&wd));
            sources.iter().all(|ip| nets.contains(&format!("{ip}/32")))
        }),
        "not all banned within seconds: {:?}\n{}",
        ban_nets(&status(&wd)),
        d.lines().join("\n")
    );
    for ip in &sources[RESPONSE_SLOTS..] {
        assert!(!reaches(&net, *ip), "{ip}");
    }
    // One whose kill commands wait for a slot (no route line yet) is unbanned: when its
    // job has its slot, none of them runs against it.
    let ran = wd.read("order");
    let waiting = *sources
        .iter()
        .find(|ip| !ran.contains(&format!("route {ip}\n")))
        .expect("a response waiting for a slot");
    let (ok, out, err) = wd.cli(&["unban", &waiting.to_string()]);
    assert!(ok, "{out}{err}");
    d.wait_for(
        &format!("the ban of {waiting}/32 ended before its kill commands ran"),
        Duration::from_secs(20),
    );
    d.wait_for(
        &format!(
            "not running the undo steps of the ban of {waiting}/32: its response stopped \
             before any kill command ran"
        ),
        Duration::from_secs(20),
    );
    let order = wd.read("order");
    for line in ["route", "unroute", "unrun"] {
        assert!(
            !order.contains(&format!("{line} {waiting}\n")),
            "{line}: {order}"
        );
    }
    assert!(reaches(&net, waiting));
    // The other kill commands may still run: not waited for.
    d.kill9();
}

/// Scanners over MAX_BANS_PER_SEC wait for the next seconds; a reload meanwhile that
/// turns TCP blocking off (BLOCK_TCP="0") has them reported only, as it has any later
/// scanner. (They were banned all the same, one a second, under the old
/// configuration.)
#[test]
fn scanners_waiting_for_the_budget_follow_a_reload() {
    require_kernel!();
    let net = TestNet::new(5);
    let wd = Workdir::new();
    wd.config(&net.server_if, "MAX_BANS_PER_SEC=\"1\"\n");
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    let scanners = &net.attacker_v4[..6];
    let net_ref = &net;
    let scanned = std::time::Instant::now();
    std::thread::scope(|s| {
        for ip in scanners {
            s.spawn(move || probe(net_ref, *ip));
        }
    });
    d.wait_for("MAX_BANS_PER_SEC (1) reached", Duration::from_secs(5));
    wd.config(&net.server_if, "MAX_BANS_PER_SEC=\"1\"\nBLOCK_TCP=\"0\"\n");
    d.signal(libc::SIGHUP);
    d.wait_for("reloaded", Duration::from_secs(5));
    // Every scanner is responded to within a few seconds of the reload.
    let alerted = |ip: &IpAddr| d.has_line(&format!("scan from host: {ip}/{ip} "));
    assert!(
        wait_until(Duration::from_secs(10), || scanners.iter().all(alerted)),
        "{}",
        d.lines().join("\n")
    );
    std::thread::sleep(Duration::from_secs(2));
    let blocked: Vec<&IpAddr> = scanners.iter().filter(|ip| banned(&wd, **ip)).collect();
    // One in the second of the scans, one in each second begun before the reload took
    // effect (a few, or more on a slow machine); the others reported only.
    let reloaded = d.line_time("reloaded").expect("reloaded");
    let seconds = reloaded.duration_since(scanned).as_secs() as usize;
    assert!(
        (1..=(seconds + 3).max(4)).contains(&blocked.len()),
        "banned: {blocked:?}\n{}",
        d.lines().join("\n")
    );
    let reported = scanners.iter().filter(|ip| !blocked.contains(ip));
    for ip in reported {
        assert!(reaches(&net, *ip), "{ip} reported only");
    }
    assert!(d.has_line("attackalert: Ignoring TCP response per configuration file setting."));
    assert!(d.stop().success());
}

/// [`a_response_waiting`] with bans of an hour: the seventeenth scanner's ban, made by
/// the program, is not recorded yet. Returns that scanner and its "blocked via XDP
/// drop" line.
fn a_ban_waiting_to_be_recorded() -> (TestNet, Workdir, TcpListener, Daemon, IpAddr, String) {
    let WaitingResponse {
        net,
        wd,
        d,
        last,
        svc,
    } = a_response_waiting(|_| "BAN_TIME=\"1h\"\n".to_string());
    let blocked = format!("Host {last} has been blocked via XDP drop");
    assert!(!reaches(&net, last), "the program banned it at once");
    assert!(
        !d.lines().iter().any(|l| l.contains(&blocked)),
        "not recorded yet: its response waits"
    );
    (net, wd, svc, d, last, blocked)
}

/// An unban that lands while the program's own ban waits for the daemon to record it
/// (its response queued behind sixteen slow ones) lifts it and says so; the host is
/// released, so that its next scan is banned and recorded again.
#[test]
fn an_unban_of_a_ban_not_yet_recorded_lifts_it_and_the_host_is_banned_again() {
    require_kernel!();
    let (net, wd, _svc, d, last, blocked) = a_ban_waiting_to_be_recorded();
    let (ok, out, err) = wd.cli(&["unban", &last.to_string()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("not yet recorded"), "{out}");
    assert!(reaches(&net, last), "lifted");
    d.wait_for(
        &format!("the ban the kernel made of {last}/32 was lifted before it was taken over"),
        Duration::from_secs(15),
    );
    // Scans again: banned by the program and recorded by the daemon.
    probe(&net, last);
    d.wait_for(&blocked, Duration::from_secs(10));
    assert!(!reaches(&net, last));
    assert!(d.stop().success());
}

/// `unban --all` lifts the bans the program made and the daemon has not recorded yet
/// too: nothing stays banned, and none comes back when its response runs.
#[test]
fn unban_all_lifts_the_bans_not_yet_recorded_too() {
    require_kernel!();
    let (net, wd, _svc, d, last, _) = a_ban_waiting_to_be_recorded();
    let (ok, out, err) = wd.cli(&["unban", "--all"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("unbanned 16 networks and 1 bans the program had just made"),
        "{out}"
    );
    assert!(reaches(&net, last), "lifted");
    d.wait_for(
        &format!("the ban the kernel made of {last}/32 was lifted before it was taken over"),
        Duration::from_secs(15),
    );
    assert_eq!(ban_nets(&status(&wd)), Vec::<String>::new());
    assert!(reaches(&net, net.attacker_v4[0]));
    assert!(d.stop().success());
}

/// A reload that turns blocking on (the daemon deciding: KILL_RUN_CMD_FIRST) acts on a
/// host it only reported before, at its next scan, as a restart would.
#[test]
fn a_reload_that_turns_blocking_on_bans_a_host_only_reported() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let first = "KILL_RUN_CMD_FIRST=\"1\"\n";
    wd.config(&net.server_if, &format!("{first}BLOCK_TCP=\"0\"\n"));
    let d = start(&net, &wd);
    let scanner = net.attacker_v4[0];
    probe(&net, scanner);
    d.wait_for(
        &format!("scan from host: {scanner}/{scanner} "),
        Duration::from_secs(10),
    );
    assert!(!banned(&wd, scanner), "reported only");
    wd.config(&net.server_if, first);
    d.signal(libc::SIGHUP);
    d.wait_for("reloaded", Duration::from_secs(5));
    probe(&net, scanner);
    assert!(
        wait_until(Duration::from_secs(10), || banned(&wd, scanner)),
        "{}",
        d.lines().join("\n")
    );
    assert!(!reaches(&net, scanner));
    assert!(d.stop().success());
}

/// `--daemonize` moves to `/`, as PortSentry 1.2 did: a configuration named from the
/// directory the command ran in is still the one a reload reads.
#[test]
fn a_daemon_started_with_a_relative_configuration_reloads_it() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let first = "KILL_RUN_CMD_FIRST=\"1\"\n";
    wd.config(&net.server_if, &format!("{first}BLOCK_TCP=\"0\"\n"));
    let started = net
        .server
        .command(portsentry_tests::daemon::binary().to_str().unwrap())
        .current_dir(wd.path(""))
        .args(["run", "--daemonize", "-c", "portsentry.conf"])
        .status()
        .unwrap();
    assert!(started.success());
    let pid_file = wd.path("state/portsentry.pid");
    let pid = || -> Option<i32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
    assert!(wait_until(Duration::from_secs(10), || pid().is_some()));
    let pid = pid().unwrap();
    // The daemon is stopped even when an assertion below fails.
    struct Stop(i32);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: a signal to the daemon this test started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let stop = Stop(pid);
    // Running, its program attached.
    assert!(wait_until(Duration::from_secs(20), || {
        let s = wd.cli(&["status"]).1;
        s.contains("running (pid") && s.contains(&format!("interfaces: {}", net.server_if))
    }));
    // Blocking turned on by a reload: only the daemon's own reading of the
    // configuration can make the next scan a ban.
    wd.config(&net.server_if, first);
    // SAFETY: a signal to the daemon started above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let scanner = net.attacker_v4[0];
    let blocked = wait_until(Duration::from_secs(10), || {
        probe(&net, scanner);
        banned(&wd, scanner)
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }));
    // Gone: its pid may be another process's by now.
    std::mem::forget(stop);
    assert!(blocked, "the reload did not read the configuration again");
}

/// A SIGHUP (a log rotation's) while the daemon starts does not kill it: it is a reload
/// once the daemon runs.
#[test]
fn a_sighup_during_start_up_does_not_kill_the_daemon() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let mut child = net
        .server
        .command(portsentry_tests::daemon::binary().to_str().unwrap())
        .args(["run", "-c", wd.conf().to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Every millisecond, from the moment its pid file exists until it runs (the child
    // is not reaped meanwhile, so its pid stays its own).
    let pid_file = wd.path("state/portsentry.pid");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if pid_file.exists() {
                    // SAFETY: a signal to the daemon this test started.
                    unsafe { libc::kill(pid, libc::SIGHUP) };
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        })
    };
    let up = wait_until(Duration::from_secs(20), || {
        let s = wd.cli(&["status"]).1;
        child.try_wait().unwrap().is_some()
            || (s.contains("running (pid") && s.contains(&format!("interfaces: {}", net.server_if)))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let alive = child.try_wait().unwrap().is_none();
    // SAFETY: as above; the child is not reaped yet, so its pid is still its own.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(sent > 0, "no SIGHUP was sent while it started");
    assert!(
        up && alive,
        "the daemon died of a SIGHUP while it started: {status}"
    );
    assert!(status.success(), "{status}");
}

/// A ban the program made itself while no daemon ran is on record nowhere but the maps:
/// `unload` says it drops it, rather than losing it silently.
#[test]
fn unload_names_the_bans_the_program_made_alone() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    assert!(d.stop().success());
    let scanner = net.attacker_v4[0];
    probe(&net, scanner);
    assert!(!reaches(&net, scanner), "banned by the program alone");
    let (ok, out, err) = wd.cli(&["unload"]);
    assert!(ok, "unload: {err}");
    assert!(
        out.contains(
            "portsentry: 1 ban the program made itself while no daemon ran was not on record \
             and went with the maps"
        ),
        "{out}"
    );
}

/// A server whose state directory's lock the test holds (returned), with the last
/// daemon's pid in the file, as a stopped daemon leaves it.
fn state_locked_by_the_test() -> (TestNet, Workdir, std::fs::File) {
    use std::os::fd::AsRawFd as _;
    let net = TestNet::new(0);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    std::fs::create_dir_all(wd.path("state")).unwrap();
    let held = std::fs::File::create(wd.path("state/portsentry.pid")).unwrap();
    std::fs::write(wd.path("state/portsentry.pid"), "999999\n").unwrap();
    // SAFETY: flock on the open file above.
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    (net, wd, held)
}

/// A command holding the state lock (`portsentry ban` while no daemon runs) does not
/// make a start fail: it waits for the lock, as no daemon answers.
#[test]
fn a_start_waits_for_a_command_holding_the_state_lock() {
    require_kernel!();
    let (net, wd, held) = state_locked_by_the_test();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        drop(held);
    });
    let d = start(&net, &wd);
    release.join().unwrap();
    // A daemon holds it now, and answers: a second start is refused, naming it.
    let second = net
        .server
        .command(portsentry_tests::daemon::binary().to_str().unwrap())
        .args(["run", "-c", wd.conf().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    let pid = wd.read("state/portsentry.pid");
    assert!(
        err.contains("is already running with state directory")
            && !pid.contains("999999")
            && err.contains(&format!("(pid {})", pid.trim())),
        "{err}"
    );
    assert!(d.stop().success());
}

/// A start waiting for the state lock stops at once on SIGTERM (it has changed
/// nothing yet), and gives up with a clear error when the holder never answers.
#[test]
fn a_start_waiting_for_the_state_lock_stops_or_gives_up() {
    use std::os::unix::process::ExitStatusExt as _;
    require_kernel!();
    let (net, wd, held) = state_locked_by_the_test();
    let run = || {
        net.server
            .command(portsentry_tests::daemon::binary().to_str().unwrap())
            .args(["run", "-c", wd.conf().to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let waiting = run();
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: a signal to the child above, not reaped yet.
    unsafe { libc::kill(waiting.id() as i32, libc::SIGTERM) };
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGTERM),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("portsentry.pid is locked by a process that does not answer on"),
        "{err}"
    );
    assert!(!wd.pin_dir.exists(), "nothing loaded");
    drop(held);
}
