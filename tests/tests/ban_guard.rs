//! The ban guard, end to end: bans that would cut off the ignore list, loopback, this
//! host or the operator's SSH session are refused with a message that names what they
//! cover; wide bans need --force; the kernel never drops an ignored source whatever the
//! ban maps hold; an ignore entry added with SIGHUP lifts a ban at once; bans kept from
//! before that cover protected addresses are not enforced and are reported at start; the
//! gateways of this host's routes are protected like its addresses.

use std::{
    net::{Ipv4Addr, TcpListener},
    time::Duration,
};

use portsentry_common::maps::IGNORE_MAX;
use portsentry_tests::{
    daemon::{Daemon, Workdir, wait_until},
    netns::TestNet,
    require_kernel,
    scenario::{
        WaitingResponse, a_response_waiting, ban_nets, banned, probe, reaches, start, status,
    },
};

/// `portsentry ban ARGS` through the running daemon: the error it printed.
fn refused(wd: &Workdir, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["ban"];
    all.extend_from_slice(args);
    let (ok, out, err) = wd.cli_env(&all, env);
    assert!(!ok, "portsentry ban {args:?} was accepted: {out}");
    err
}

fn accepted(wd: &Workdir, args: &[&str], env: &[(&str, &str)]) {
    let mut all = vec!["ban"];
    all.extend_from_slice(args);
    let (ok, out, err) = wd.cli_env(&all, env);
    assert!(ok, "portsentry ban {args:?} was refused: {err}");
    assert!(out.starts_with("banned "), "{out}");
}

fn unban(wd: &Workdir, target: &str) {
    let (ok, _, err) = wd.cli(&["unban", target]);
    assert!(ok, "unban {target}: {err}");
}

/// Writes the ignore file and has the daemon reload it (SIGHUP); returns once it did.
fn reload_ignore_list(wd: &Workdir, d: &Daemon, list: &str) {
    let reloads = || d.lines().iter().filter(|l| l.contains("reloaded")).count();
    let before = reloads();
    std::fs::write(wd.path("portsentry.ignore"), list).unwrap();
    d.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || reloads() > before),
        "{}",
        d.lines().join("\n")
    );
}

/// Waits until the workdir's file `order` has the line `line`.
fn wait_ordered(wd: &Workdir, d: &Daemon, line: &str, secs: u64) {
    assert!(
        wait_until(Duration::from_secs(secs), || wd
            .read("order")
            .lines()
            .any(|l| l == line)),
        "no {line:?} in order:\n{}\nlog:\n{}",
        wd.read("order"),
        d.lines().join("\n")
    );
}

/// `portsentry ban` without the daemon, with IGNORE_FILE missing: the ban is checked
/// against loopback and this host's addresses alone, and the command says so. (The
/// warning was dropped: nothing told the operator that the ignore list was not there.)
#[test]
fn a_ban_without_the_daemon_says_when_the_ignore_file_is_missing() {
    require_kernel!();
    let wd = Workdir::new();
    let missing = wd.path("missing.ignore");
    wd.config("lo", &format!("IGNORE_FILE=\"{}\"\n", missing.display()));
    let (ok, out, err) = wd.cli(&["ban", "198.51.100.0/24"]);
    assert!(ok, "{out}{err}");
    assert!(
        err.contains(&format!("IGNORE_FILE {} does not exist", missing.display())),
        "{err}"
    );
}

#[test]
fn bans_that_would_cut_off_what_must_stay_reachable_are_refused() {
    require_kernel!();
    let net = TestNet::new(3);
    let (neighbour, operator, other) = (net.attacker_v4[1], net.attacker_v4[2], net.attacker_v4[3]);
    let wd = Workdir::new();
    std::fs::write(wd.path("portsentry.ignore"), format!("{neighbour}\n")).unwrap();
    wd.config(&net.server_if, "");
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let d = start(&net, &wd);
    let still_reachable = |after: &str| {
        assert!(
            reaches(&net, neighbour),
            "the ignored neighbour, after {after}"
        );
        // Nothing was banned: not the server's own addresses, not a range over them.
        assert!(ban_nets(&status(&wd)).is_empty(), "no ban after {after}");
    };

    let cases: &[(&[&str], &str)] = &[
        (&["0.0.0.0/0"], "refusing to ban 0.0.0.0/0: it covers "),
        (
            &["0.0.0.0/0", "--force"],
            "refusing to ban 0.0.0.0/0: it covers ",
        ),
        (&["::/0"], "refusing to ban ::/0: it covers "),
        (
            &["192.0.2.0/24"],
            "refusing to ban 192.0.2.0/24: it covers 192.0.2.3, in the ignore list",
        ),
        (
            &["192.0.2.3"],
            "refusing to ban 192.0.2.3/32: it covers 192.0.2.3, in the ignore list",
        ),
        (
            &["192.0.2.3", "--force"],
            "refusing to ban 192.0.2.3/32: it covers 192.0.2.3, in the ignore list",
        ),
        (
            &["192.0.2.1"],
            "refusing to ban 192.0.2.1/32: it covers 192.0.2.1, an address of this host",
        ),
        (
            &["2001:db8::/64"],
            "refusing to ban 2001:db8::/64: it covers 2001:db8::1, an address of this host",
        ),
        (
            &["127.0.0.1"],
            "refusing to ban 127.0.0.1/32: it lies inside 127.0.0.0/8, loopback",
        ),
        (
            &["10.0.0.0/7"],
            "refusing to ban 10.0.0.0/7: it is wider than /8, the widest ban \
             BAN_MIN_PREFIX_V4 allows",
        ),
        (
            &["2001:dc0::/31"],
            "it is wider than /32, the widest ban BAN_MIN_PREFIX_V6 allows",
        ),
    ];
    for (args, message) in cases {
        let err = refused(&wd, args, &[]);
        assert!(err.contains(message), "ban {args:?}: {err}");
        still_reachable(&format!("ban {args:?}"));
    }

    // The operator's own SSH session is protected unless forced.
    let ssh = format!("{operator} 50022 22");
    let env = [("SSH_CLIENT", ssh.as_str())];
    let err = refused(&wd, &[&operator.to_string()], &env);
    assert!(
        err.contains(&format!(
            "it covers {operator}, the address of your SSH session"
        )),
        "{err}"
    );
    let err = refused(&wd, &["192.0.2.4/30"], &env);
    assert!(err.contains("SSH session"), "{err}");
    // Run as `sudo` runs it: the session's variables are in the shell's environment,
    // not the command's.
    let under_sudo = std::process::Command::new("sh")
        .env("SSH_CONNECTION", format!("{operator} 50022 192.0.2.1 22"))
        .args(["-c", "\"$@\"; exit $?", "sh", "env", "-u", "SSH_CLIENT"])
        .args(["-u", "SSH_CONNECTION"])
        .arg(portsentry_tests::daemon::binary())
        .args(["ban", &operator.to_string(), "-c"])
        .arg(wd.conf())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&under_sudo.stderr);
    assert!(
        !under_sudo.status.success() && err.contains("the address of your SSH session"),
        "a ban of the session from a command without its variables: {err}"
    );
    still_reachable("banning the SSH session");
    assert!(reaches(&net, operator));
    accepted(&wd, &[&operator.to_string(), "--force"], &env);
    assert!(
        !reaches(&net, operator),
        "a forced ban of the session is in force"
    );
    unban(&wd, &operator.to_string());

    // --force lifts the width limit only.
    accepted(&wd, &["10.0.0.0/7", "--force"], &[]);
    unban(&wd, "10.0.0.0/7");
    // An ordinary ban still works, and the guard said nothing of it.
    accepted(&wd, &[&other.to_string()], &[]);
    assert!(!reaches(&net, other));
    assert!(reaches(&net, neighbour));
    assert!(!d.has_line("lifted the ban"));
    assert!(d.stop().success());
}

#[test]
fn a_range_ban_spares_ignored_hosts_and_sighup_makes_them_reachable_at_once() {
    require_kernel!();
    let net = TestNet::new(3);
    let (a, b, c, e) = (
        net.attacker_v4[0],
        net.attacker_v4[1],
        net.attacker_v4[2],
        net.attacker_v4[3],
    );
    assert_eq!(
        (c.to_string(), e.to_string()),
        ("192.0.2.4".into(), "192.0.2.5".into())
    );
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    accepted(&wd, &["192.0.2.4/30"], &[]);
    accepted(&wd, &[&a.to_string()], &[]);
    for ip in [a, c, e] {
        assert!(!reaches(&net, ip), "{ip} is banned");
    }
    assert!(reaches(&net, b));

    // The admin adds the exact-banned host and one host of the range to the ignore file.
    std::fs::write(wd.path("portsentry.ignore"), format!("{a}\n{e}\n")).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for(
        &format!("portsentry: lifted the ban of {a}/32 after the reload: it covers {a}, in the ignore list"),
        Duration::from_secs(5),
    );
    d.wait_for(
        &format!("portsentry: the ban of 192.0.2.4/30 does not drop {e}/32 (in the ignore list), after the reload"),
        Duration::from_secs(5),
    );
    assert!(
        wait_until(Duration::from_secs(5), || reaches(&net, e)),
        "the ignored host of the range"
    );
    assert!(reaches(&net, a), "the ignored host whose ban was lifted");
    assert!(!reaches(&net, c), "the rest of the range stays dropped");
    let st = status(&wd);
    assert_eq!(ban_nets(&st), vec!["192.0.2.4/30".to_owned()]);
    assert!(st["counters"]["ban_spared"].as_u64().unwrap() >= 1, "{st}");
    // An operator's ban ran no kill command, so there is nothing to undo; it ended
    // for the guard.
    assert!(!d.has_line(&format!("Host {a} removed from")));
    assert!(d.stop().success());
}

#[test]
fn bans_kept_from_before_that_cover_protected_addresses_are_not_enforced() {
    require_kernel!();
    let net = TestNet::new(3);
    let (a, neighbour, c) = (net.attacker_v4[0], net.attacker_v4[1], net.attacker_v4[2]);
    let wd = Workdir::new();
    std::fs::write(wd.path("portsentry.ignore"), format!("{neighbour}\n")).unwrap();
    wd.config(&net.server_if, "");
    // A state file as the first release wrote it: a scan ban of the (now ignored)
    // neighbour, one of this host's own address, a range over both, and an ordinary one.
    let ban = |net: &str, origin: &str, mode: &str, proto: u8| {
        format!(
            r#"{{"net":"{net}","origin":"{origin}","since_ms":1795625334123,"expires_ms":null,"port":23,"proto":{proto},"scan_type":{},"mode":"{mode}","name":"{net}","count":1}}"#,
            if proto == 0 { "null" } else { "\"tcp-syn\"" }
        )
    };
    let state = format!(
        r#"{{"version":1,"bans":[{},{},{},{}],"previous":[]}}"#,
        ban(&format!("{neighbour}/32"), "scan", "atcp", 6),
        ban("192.0.2.1/32", "manual", "manual", 0),
        ban("192.0.2.0/29", "manual", "manual", 0),
        ban(&format!("{c}/32"), "scan", "atcp", 6),
    );
    std::fs::create_dir_all(wd.path("state")).unwrap();
    std::fs::write(wd.path("state").join("bans.json"), state).unwrap();
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    for line in [
        format!("portsentry: lifted the ban of {neighbour}/32 at start: it covers {neighbour}, in the ignore list"),
        "portsentry: lifted the ban of 192.0.2.1/32 at start: it covers 192.0.2.1, an address of this host".to_owned(),
        format!("portsentry: the ban of 192.0.2.0/29 does not drop {neighbour}/32 (in the ignore list), at start"),
        "portsentry: the ban of 192.0.2.0/29 does not drop 192.0.2.1/32 (an address of this host), at start".to_owned(),
    ] {
        assert!(d.has_line(&line), "no line {line:?}; log:\n{}", d.lines().join("\n"));
    }
    let mut nets = ban_nets(&status(&wd));
    nets.sort();
    assert_eq!(nets, vec!["192.0.2.0/29".to_owned(), format!("{c}/32")]);
    assert!(reaches(&net, neighbour), "the ignored neighbour");
    assert!(!reaches(&net, a), "the rest of the range");
    assert!(!reaches(&net, c));
    // The lifted scan ban's undo steps ran.
    d.wait_for(
        &format!("Host {neighbour} removed from"),
        Duration::from_secs(5),
    );
    assert!(d.stop().success());
}

/// KILL_RUN_CMD_FIRST="1": the run command comes before the XDP ban, where the guard
/// decides. A scanner added to the ignore list while its response waited (sixteen slow
/// ones hold every slot) is refused before the run command, which never runs against it.
#[test]
fn a_run_command_first_never_runs_against_a_host_the_guard_protects() {
    require_kernel!();
    let WaitingResponse {
        net,
        wd,
        d,
        last,
        svc: _svc,
    } = a_response_waiting(|wd| {
        let order = wd.path("order").display().to_string();
        format!("KILL_RUN_CMD_FIRST=\"1\"\nKILL_RUN_CMD=\"echo run $TARGET$ >> {order}\"\n")
    });
    // Nothing run yet: its response waits for a slot.
    assert!(!wd.read("order").contains(&format!("run {last}\n")));
    reload_ignore_list(&wd, &d, &format!("{last}\n"));
    d.wait_for(
        &format!("portsentry: not banning {last}"),
        Duration::from_secs(15),
    );
    // The slots' last commands end meanwhile; the refused one ran nothing.
    std::thread::sleep(Duration::from_millis(500));
    let ran = wd.read("order");
    assert!(!ran.contains(&format!("run {last}\n")), "{ran}");
    assert!(!ran.contains(&format!("route {last}\n")), "{ran}");
    assert!(reaches(&net, last));
    assert!(d.stop().success());
}

/// KILL_RUN_CMD_FIRST="1", and the scanner added to the ignore list while its run
/// command runs: the guard refuses the XDP ban that follows, and what ran is undone
/// (UNKILL_RUN_CMD); no other kill command runs.
#[test]
fn a_run_command_first_is_undone_when_the_guard_refuses_the_ban_after_it() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!(
            "KILL_RUN_CMD_FIRST=\"1\"\n\
             KILL_RUN_CMD=\"echo run $TARGET$ >> {order}; sleep 3\"\n\
             UNKILL_RUN_CMD=\"echo unrun $TARGET$ >> {order}\"\n\
             KILL_ROUTE=\"echo route $TARGET$ >> {order}\"\n"
        ),
    );
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    let a = net.attacker_v4[0];
    probe(&net, a);
    wait_ordered(&wd, &d, &format!("run {a}"), 5);
    reload_ignore_list(&wd, &d, &format!("{a}\n"));
    d.wait_for(
        &format!("portsentry: not banning {a}"),
        Duration::from_secs(10),
    );
    wait_ordered(&wd, &d, &format!("unrun {a}"), 5);
    assert!(!wd.read("order").contains(&format!("route {a}\n")));
    assert!(reaches(&net, a));
    assert!(d.stop().success());
}

/// A scanner whose response waited while it was added to the ignore list is refused,
/// and released: taken off the list again, its next scan is acted on. (It was kept as
/// "acted on" for good: the ban the program made at its next scan stayed in force with
/// nothing logged and no kill command run.)
#[test]
fn a_scanner_refused_while_ignored_is_banned_once_off_the_list() {
    require_kernel!();
    let WaitingResponse {
        net,
        wd,
        d,
        last,
        svc: _svc,
    } = a_response_waiting(|_| String::new());
    reload_ignore_list(&wd, &d, &format!("{last}\n"));
    d.wait_for(
        &format!("ban the kernel made of {last}"),
        Duration::from_secs(15),
    );
    assert!(reaches(&net, last), "refused, so not banned");
    assert!(!wd.read("order").contains(&format!("route {last}\n")));

    reload_ignore_list(&wd, &d, "");
    probe(&net, last);
    d.wait_for(
        &format!("Host {last} has been blocked via XDP drop"),
        Duration::from_secs(10),
    );
    wait_ordered(&wd, &d, &format!("route {last}"), 10);
    assert!(!reaches(&net, last));
    assert!(banned(&wd, last), "the ban is on record");
    assert!(d.stop().success());
}

/// BLOCK_TCP="2" (KILL_RUN_CMD only, no ban): a scanner added to the ignore list while
/// its response waited has no command run against it. The guard is asked before the
/// command, as before a ban (it was asked only for a ban, and the command ran).
#[test]
fn a_command_only_response_never_runs_against_a_host_protected_meanwhile() {
    require_kernel!();
    let WaitingResponse {
        net,
        wd,
        d,
        last,
        svc: _svc,
    } = a_response_waiting(|wd| {
        let order = wd.path("order").display().to_string();
        // The command holds its slot as the slow KILL_ROUTE would, and writes the line
        // the slots' helper waits for.
        format!("BLOCK_TCP=\"2\"\nKILL_RUN_CMD=\"echo route $TARGET$ >> {order}; sleep 8\"\n")
    });
    reload_ignore_list(&wd, &d, &format!("{last}\n"));
    // Its turn comes: refused, or (as before) its command run.
    let refused = format!("portsentry: not running KILL_RUN_CMD against {last}");
    let ran = format!("route {last}");
    assert!(
        wait_until(Duration::from_secs(15), || d.has_line(&refused)
            || wd.read("order").lines().any(|l| l == ran)),
        "{}",
        d.lines().join("\n")
    );
    std::thread::sleep(Duration::from_millis(500));
    let order = wd.read("order");
    assert!(!order.lines().any(|l| l == ran), "{order}");
    assert!(d.has_line(&refused));
    assert!(reaches(&net, last));
    assert!(d.stop().success());
}

/// A host added to the ignore list while its response runs, its ban made and KILL_ROUTE
/// still running: the reload lifts the ban, and the kill command left (KILL_RUN_CMD)
/// never runs against the host. (It ran, after the ban was lifted.)
#[test]
fn the_kill_commands_left_never_run_against_a_host_protected_meanwhile() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!("KILL_ROUTE=\"echo route $TARGET$ >> {order}; sleep 3\"\n"),
    );
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let d = start(&net, &wd);
    let host = net.attacker_v4[0];
    probe(&net, host);
    wait_ordered(&wd, &d, &format!("route {host}"), 10);
    reload_ignore_list(&wd, &d, &format!("{host}\n"));
    let stopped = format!("portsentry: not running the kill commands left against {host}");
    assert!(
        wait_until(Duration::from_secs(10), || d.has_line(&stopped)),
        "{}",
        d.lines().join("\n")
    );
    std::thread::sleep(Duration::from_millis(500));
    let order = wd.read("order");
    assert!(
        !order
            .lines()
            .any(|l| l.starts_with(&format!("run {host} "))),
        "{order}"
    );
    assert!(!banned(&wd, host));
    assert!(reaches(&net, host));
    assert!(d.stop().success());
}

/// The gateways of this host's routes (in any table, the default routes' and the rest)
/// are protected like its own addresses: no ban of one is accepted, a probe "from" one
/// is not counted, and a route added while the daemon runs lifts a ban of its gateway.
#[test]
fn the_gateways_of_this_hosts_routes_are_never_banned() {
    require_kernel!();
    let net = TestNet::new(4);
    let (gw4, table_gw, later_gw, scanner) = (
        net.attacker_v4[1],
        net.attacker_v4[2],
        net.attacker_v4[3],
        net.attacker_v4[4],
    );
    let gw6 = net.attacker_v6[1];
    net.server.exec(&format!(
        "ip route add default via {gw4} && ip -6 route add default via {gw6} && \
         ip route add 198.51.100.0/24 via {table_gw} table 100"
    ));
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    for (gw, args) in [
        (gw4, vec![gw4.to_string()]),
        (gw4, vec![gw4.to_string(), "--force".into()]),
        (gw6, vec![gw6.to_string()]),
        (table_gw, vec![table_gw.to_string()]),
        (gw4, vec!["192.0.2.2/31".into()]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = refused(&wd, &args, &[]);
        assert!(
            err.contains(&format!("it covers {gw}, a gateway of this host's routes")),
            "ban {args:?}: {err}"
        );
    }
    // Probes "from" the gateway are not counted; the same probes from another source are
    // (SCAN_TRIGGER="0": the first one bans).
    for _ in 0..3 {
        probe(&net, gw4);
    }
    probe(&net, scanner);
    assert!(
        wait_until(Duration::from_secs(5), || banned(&wd, scanner)),
        "the control scanner was banned; log:\n{}",
        d.lines().join("\n")
    );
    assert!(!banned(&wd, gw4));
    assert!(reaches(&net, gw4), "the gateway");

    // A host banned for its scan becomes a gateway: its ban is lifted within seconds
    // (the daemon hears of the route and reads the routes again).
    accepted(&wd, &[&later_gw.to_string()], &[]);
    assert!(!reaches(&net, later_gw));
    net.server
        .exec(&format!("ip route add 203.0.113.0/24 via {later_gw}"));
    d.wait_for(
        &format!(
            "portsentry: lifted the ban of {later_gw}/32 now that this host's addresses or the \
             gateways of its routes changed: it covers {later_gw}, a gateway of this host's routes"
        ),
        Duration::from_secs(15),
    );
    assert!(wait_until(Duration::from_secs(5), || reaches(
        &net, later_gw
    )));
    assert!(banned(&wd, scanner), "the scanner stays banned");
    assert!(d.stop().success());
}

/// A route may name its next hop by a nexthop object's id alone (routing daemons turn
/// `nexthop_compat_mode` off): that object's gateway is protected all the same, and a
/// gateway it is given while the daemon runs has its ban lifted.
#[test]
fn the_gateways_of_nexthop_objects_are_never_banned() {
    require_kernel!();
    let net = TestNet::new(3);
    let (gw4, later_gw) = (net.attacker_v4[1], net.attacker_v4[2]);
    let gw6 = net.attacker_v6[1];
    let dev = &net.server_if;
    net.server.exec(&format!(
        "echo 0 > /proc/sys/net/ipv4/nexthop_compat_mode && \
         ip nexthop add id 7 via {gw4} dev {dev} && \
         ip nexthop add id 8 via {gw6} dev {dev} && \
         ip route add 198.51.100.0/24 nhid 7 && ip -6 route add 2001:db8:77::/48 nhid 8"
    ));
    // The route names no gateway of its own.
    let shown = net.server.exec("ip route show 198.51.100.0/24").stdout;
    let shown = String::from_utf8_lossy(&shown);
    assert!(
        shown.contains("nhid 7") && !shown.contains("via"),
        "{shown}"
    );
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    for gw in [gw4, gw6] {
        let err = refused(&wd, &[&gw.to_string()], &[]);
        assert!(
            err.contains(&format!("it covers {gw}, a gateway of this host's routes")),
            "ban {gw}: {err}"
        );
    }
    accepted(&wd, &[&later_gw.to_string()], &[]);
    // Past the read of the routes the daemon makes 5 s after it starts: from here on
    // only a change it hears of makes it read them again.
    std::thread::sleep(Duration::from_secs(7));
    net.server
        .exec(&format!("ip nexthop replace id 7 via {later_gw} dev {dev}"));
    d.wait_for(
        &format!(
            "portsentry: lifted the ban of {later_gw}/32 now that this host's addresses or the \
             gateways of its routes changed: it covers {later_gw}, a gateway of this host's routes"
        ),
        Duration::from_secs(15),
    );
    assert!(d.stop().success());
}

/// This host gains addresses while the kernel's ignore list is full: the kernel cannot
/// take them, and says so, but the guard protects them all the same (a ban of one is
/// refused), as it protects the addresses the kernel holds.
#[test]
fn new_addresses_the_kernels_ignore_list_cannot_take_are_still_protected() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    // The most networks an ignore file may list (1,024 entries are kept for the rest),
    // hosts two apart so that no two make one wider network.
    let list: String = (0..IGNORE_MAX - 1024)
        .map(|i| format!("{}\n", Ipv4Addr::from(0x0a00_0000 + 2 * i)))
        .collect();
    std::fs::write(wd.path("portsentry.ignore"), list).unwrap();
    let d = start(&net, &wd);
    // 1,100 more addresses: past the kernel's list.
    let added: Vec<Ipv4Addr> = (0..1100).map(|i| Ipv4Addr::from(0xc612_0000 + i)).collect();
    let batch: String = added
        .iter()
        .map(|a| format!("addr add {a}/32 dev {}\n", net.server_if))
        .collect();
    std::fs::write(wd.path("addrs.batch"), batch).unwrap();
    net.server
        .exec(&format!("ip -batch {}", wd.path("addrs.batch").display()));
    d.wait_for(
        "and the kernel's ignore list cannot take them (tried again every second)",
        Duration::from_secs(10),
    );
    let last = added.last().unwrap().to_string();
    // A tick may have seen some of the addresses before the rest: the guard has them
    // all a second later.
    std::thread::sleep(Duration::from_millis(1500));
    let err = refused(&wd, &[&last], &[]);
    assert!(
        err.contains(&format!("it covers {last}, an address of this host")),
        "{err}"
    );
    assert!(d.stop().success());
}
