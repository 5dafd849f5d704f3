//! IPv6 sources counted and banned by network (SOURCE_PREFIX_V6, /64 by default): a
//! scanner that takes a new address of its /64 for every probe is one source, banned
//! once, and every address of its /64 is dropped; the next /64 is untouched. A /64 that
//! holds an ignored address (or one of this host's) is counted one address at a time.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    time::Duration,
};

use portsentry_tests::{
    daemon::{Daemon, Workdir, wait_until},
    netns::{TestNet, tcp_connect},
    require_kernel,
    scenario::{ban_nets, counter, history_has, start, status},
};

/// A SYN from `src` to the closed watched port `port` of the server's IPv6 address.
fn probe6(net: &TestNet, src: IpAddr, port: u16) {
    let dst = SocketAddr::new(net.server_v6, port);
    let _ = net
        .attacker
        .enter(|| tcp_connect(src, dst, Duration::from_millis(300)));
}

/// Whether `src` reaches the service on the server's IPv6 port 80.
fn reaches6(net: &TestNet, src: IpAddr) -> bool {
    let dst = SocketAddr::new(net.server_v6, 80);
    net.attacker
        .enter(|| tcp_connect(src, dst, Duration::from_millis(800)))
        .is_ok()
}

/// The reloads the daemon has logged.
fn reloads(d: &Daemon) -> usize {
    d.lines()
        .iter()
        .filter(|l| l.contains("configuration and ignore list reloaded"))
        .count()
}

/// Waits for the history line of `ip` (a source's network address).
fn wait_history(wd: &Workdir, d: &Daemon, ip: IpAddr) {
    assert!(
        wait_until(Duration::from_secs(15), || history_has(wd, ip)),
        "{ip} was not acted on; log:\n{}",
        d.lines().join("\n")
    );
}

#[test]
fn a_scanner_rotating_its_addresses_is_one_ban_of_its_64() {
    require_kernel!();
    let net = TestNet::new(0);
    let scanner = net.add_attacker_v6_network("2001:db8:0:1", 0x10..0x38);
    let idle = net.add_attacker_v6_network("2001:db8:0:1", [0xfffe]);
    let other = net.add_attacker_v6_network("2001:db8:0:2", [0x10]);
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    assert!(reaches6(&net, other[0]), "the service is up");
    for (i, src) in scanner.iter().enumerate() {
        probe6(&net, *src, 23 + i as u16);
    }
    let network: IpAddr = "2001:db8:0:1::".parse().unwrap();
    wait_history(&wd, &d, network);
    let st = status(&wd);
    assert_eq!(
        ban_nets(&st),
        vec!["2001:db8:0:1::/64".to_owned()],
        "one ban, of the /64"
    );
    assert_eq!(
        counter(&st, "kernel_banned"),
        1,
        "banned once, in the kernel"
    );
    assert_eq!(
        counter(&st, "pass_probe"),
        0,
        "the first probe was the last"
    );
    assert!(counter(&st, "drop_banned") >= 39);
    // Every address of the /64 is cut off, also one that never probed; the next /64 is
    // not.
    assert!(
        !reaches6(&net, idle[0]),
        "an idle address of the banned /64"
    );
    assert!(!reaches6(&net, scanner[5]));
    assert!(reaches6(&net, other[0]), "another /64");
    // The lines name the network's address; the block line the network.
    assert!(d.has_line("scan from host: 2001:db8:0:1::/2001:db8:0:1:: to TCP port: 23"));
    assert!(d.has_line("Host 2001:db8:0:1::/64 has been blocked via XDP drop"));
    assert!(d.stop().success());
}

#[test]
fn probes_from_addresses_of_one_64_add_up_to_the_trigger() {
    require_kernel!();
    let net = TestNet::new(0);
    let scanner = net.add_attacker_v6_network("2001:db8:0:1", 0x10..0x13);
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let wd = Workdir::new();
    wd.config(&net.server_if, "SCAN_TRIGGER=\"3\"\n");
    let d = start(&net, &wd);
    probe6(&net, scanner[0], 23);
    probe6(&net, scanner[1], 24);
    // Two hits of the /64, each from its own address: below the trigger.
    assert!(reaches6(&net, scanner[2]));
    let st = status(&wd);
    assert!(ban_nets(&st).is_empty(), "{:?}", ban_nets(&st));
    probe6(&net, scanner[2], 25);
    let network: IpAddr = "2001:db8:0:1::".parse().unwrap();
    wait_history(&wd, &d, network);
    assert_eq!(ban_nets(&status(&wd)), vec!["2001:db8:0:1::/64".to_owned()]);
    assert!(!reaches6(&net, scanner[0]));
    assert!(d.stop().success());
}

#[test]
fn a_64_with_an_ignored_address_is_counted_per_address() {
    require_kernel!();
    let net = TestNet::new(0);
    let hosts = net.add_attacker_v6_network("2001:db8:0:1", [0x5, 0x6, 0x99]);
    let (scanner, neighbour, ignored) = (hosts[0], hosts[1], hosts[2]);
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let wd = Workdir::new();
    std::fs::write(wd.path("portsentry.ignore"), format!("{ignored}\n")).unwrap();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    probe6(&net, scanner, 23);
    wait_history(&wd, &d, scanner);
    assert_eq!(
        ban_nets(&status(&wd)),
        vec![format!("{scanner}/128")],
        "the scanner alone is banned, not the /64 the ignored host is in"
    );
    assert!(!reaches6(&net, scanner));
    assert!(reaches6(&net, neighbour), "its neighbour is not banned");
    assert!(reaches6(&net, ignored), "the ignored host is not banned");
    assert!(d.stop().success());
}

#[test]
fn source_prefix_128_bans_each_address() {
    require_kernel!();
    let net = TestNet::new(0);
    let hosts = net.add_attacker_v6_network("2001:db8:0:1", [0x5, 0x6]);
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let wd = Workdir::new();
    wd.config(&net.server_if, "SOURCE_PREFIX_V6=\"128\"\n");
    let d = start(&net, &wd);
    probe6(&net, hosts[0], 23);
    wait_history(&wd, &d, hosts[0]);
    assert_eq!(ban_nets(&status(&wd)), vec![format!("{}/128", hosts[0])]);
    assert!(reaches6(&net, hosts[1]));
    assert!(d.stop().success());
}

/// A reload that changes SOURCE_PREFIX_V6 moves the IPv6 bans between the program's
/// exact map and its trie: every ban stays in force, each with its own network.
#[test]
fn changing_the_prefix_keeps_every_ban() {
    require_kernel!();
    let net = TestNet::new(0);
    let scanner = net.add_attacker_v6_network("2001:db8:0:1", [0x10, 0xfffe]);
    let others = net.add_attacker_v6_network("2001:db8:0:2", [0x10, 0x11]);
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    probe6(&net, scanner[0], 23);
    wait_history(&wd, &d, "2001:db8:0:1::".parse().unwrap());
    // One address banned alone, by hand.
    let (ok, _, err) = wd.cli(&["ban", &others[0].to_string()]);
    assert!(ok, "{err}");
    let cut_off = |net: &TestNet| {
        assert!(!reaches6(net, scanner[1]), "the /64 ban");
        assert!(!reaches6(net, others[0]), "the /128 ban");
        assert!(reaches6(net, others[1]), "nothing else");
    };
    cut_off(&net);
    for (i, prefix) in ["128", "48", "64"].into_iter().enumerate() {
        wd.config(&net.server_if, &format!("SOURCE_PREFIX_V6=\"{prefix}\"\n"));
        d.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(5), || reloads(&d) == i + 1),
            "reload {i}: {}",
            d.lines().join("\n")
        );
        cut_off(&net);
        let mut nets = ban_nets(&status(&wd));
        nets.sort();
        assert_eq!(
            nets,
            vec!["2001:db8:0:1::/64".to_owned(), format!("{}/128", others[0])],
            "SOURCE_PREFIX_V6={prefix}"
        );
    }
    assert!(d.stop().success());
}

/// Bans of one address's networks under each prefix (its /48, /64 and the address
/// itself) share a key of the exact map: at each change of SOURCE_PREFIX_V6 one of them
/// comes into the exact map where another leaves it. Every one stays in force. (The one
/// coming in was removed with the one going out: the /48 was gone from the kernel.)
#[test]
fn bans_that_trade_places_in_the_exact_map_stay() {
    require_kernel!();
    let net = TestNet::new(0);
    let inner = net.add_attacker_v6_network("2001:db8:5:0", [0x10]);
    let outer = net.add_attacker_v6_network("2001:db8:5:1", [0x10]);
    let others = net.add_attacker_v6_network("2001:db8:6:0", [0x10]);
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    let mut want = vec![];
    for ban in ["2001:db8:5::/48", "2001:db8:5::/64", "2001:db8:5::/128"] {
        let (ok, out, err) = wd.cli(&["ban", ban]);
        assert!(ok, "{out}{err}");
        want.push(ban.to_owned());
    }
    want.sort();
    for (i, prefix) in ["48", "128", "64", "48", "64"].into_iter().enumerate() {
        wd.config(&net.server_if, &format!("SOURCE_PREFIX_V6=\"{prefix}\"\n"));
        d.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(5), || reloads(&d) == i + 1),
            "reload {i}: {}",
            d.lines().join("\n")
        );
        assert!(
            !reaches6(&net, inner[0]),
            "the /64 and the /48, SOURCE_PREFIX_V6={prefix}"
        );
        assert!(
            !reaches6(&net, outer[0]),
            "the /48, SOURCE_PREFIX_V6={prefix}"
        );
        assert!(reaches6(&net, others[0]), "nothing else");
        let mut nets = ban_nets(&status(&wd));
        nets.sort();
        assert_eq!(nets, want, "SOURCE_PREFIX_V6={prefix}");
    }
    // Each is lifted on its own, from the map of the prefix in force.
    let (ok, out, err) = wd.cli(&["unban", "2001:db8:5::/48"]);
    assert!(ok, "{out}{err}");
    assert!(reaches6(&net, outer[0]), "the /48 lifted");
    assert!(!reaches6(&net, inner[0]), "the /64 stays");
    assert!(d.stop().success());
}

/// A ban of part of a /64 (the operator's /120, holding the network's first address)
/// does not make the program's ban of the whole /64 look responded to already: the
/// /64's scanner is banned, recorded and logged. (Skipped, the /64's ban stayed in the
/// kernel unrecorded: nothing logged, no kill command, no expiry.)
#[test]
fn a_ban_inside_a_64_does_not_hide_the_ban_of_the_64() {
    require_kernel!();
    let net = TestNet::new(0);
    let scanner = net.add_attacker_v6_network("2001:db8:0:7", [0xab01]);
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    let (ok, out, err) = wd.cli(&["ban", "2001:db8:0:7::/120"]);
    assert!(ok, "{out}{err}");
    assert!(reaches6(&net, scanner[0]), "outside the /120");
    probe6(&net, scanner[0], 23);
    let network: IpAddr = "2001:db8:0:7::".parse().unwrap();
    wait_history(&wd, &d, network);
    d.wait_for(
        "attackalert: Host 2001:db8:0:7::/64 has been blocked via XDP drop",
        Duration::from_secs(5),
    );
    let mut nets = ban_nets(&status(&wd));
    nets.sort();
    assert_eq!(nets, ["2001:db8:0:7::/120", "2001:db8:0:7::/64"]);
    assert!(!reaches6(&net, scanner[0]));
    assert!(d.stop().success());
}

/// Another address of a banned /64 added to the ignore list while the /64's response
/// runs: the ban stays (the kernel spares that address), and so do the kill commands
/// left against the scanner, which is not protected. (They were stopped as if the
/// scanner were.)
#[test]
fn a_64_keeps_its_kill_commands_when_another_of_its_addresses_is_ignored() {
    require_kernel!();
    let net = TestNet::new(0);
    let scanner = net.add_attacker_v6_network("2001:db8:0:1", [0x10]);
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!("KILL_ROUTE=\"echo route $TARGET$ >> {order}; sleep 3\"\n"),
    );
    let d = start(&net, &wd);
    probe6(&net, scanner[0], 23);
    let ordered = |line: &str| wd.read("order").lines().any(|l| l.starts_with(line));
    assert!(
        wait_until(Duration::from_secs(10), || ordered("route 2001:db8:0:1::")),
        "order:\n{}\nlog:\n{}",
        wd.read("order"),
        d.lines().join("\n")
    );
    std::fs::write(wd.path("portsentry.ignore"), "2001:db8:0:1::99\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for(
        "the ban of 2001:db8:0:1::/64 does not drop 2001:db8:0:1::99/128",
        Duration::from_secs(5),
    );
    assert!(
        wait_until(Duration::from_secs(10), || ordered("run 2001:db8:0:1:: ")),
        "order:\n{}\nlog:\n{}",
        wd.read("order"),
        d.lines().join("\n")
    );
    assert!(!d.has_line("not running the kill commands left"));
    assert_eq!(ban_nets(&status(&wd)), vec!["2001:db8:0:1::/64".to_owned()]);
    assert!(d.stop().success());
}

/// The kill commands a /64's ban ran (with the network's address as `$TARGET$`) are
/// undone when the ban ends: UNKILL_ROUTE, the hosts.deny line, UNKILL_RUN_CMD. (They
/// never ran for a network: their routes and lines stayed for good.)
#[test]
fn a_64_ban_undoes_its_kill_commands_when_it_ends() {
    require_kernel!();
    let net = TestNet::new(0);
    let scanner = net.add_attacker_v6_network("2001:db8:0:1", [0x10]);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!(
            "UNKILL_ROUTE=\"echo unroute $TARGET$ >> {order}\"\n\
             UNKILL_RUN_CMD=\"echo unrun $TARGET$ >> {order}\"\n"
        ),
    );
    // A line an earlier release wrote for the network's address (without the brackets
    // tcp_wrappers wants): the ban's undo removes it too.
    std::fs::write(wd.path("hosts.deny"), "ALL: 2001:db8:0:1:: : DENY\n").unwrap();
    let d = start(&net, &wd);
    probe6(&net, scanner[0], 23);
    let ordered = |line: &str| wd.read("order").lines().any(|l| l.starts_with(line));
    assert!(
        wait_until(Duration::from_secs(10), || ordered("run 2001:db8:0:1:: ")),
        "order:\n{}\nlog:\n{}",
        wd.read("order"),
        d.lines().join("\n")
    );
    assert!(ordered("route 2001:db8:0:1:: "), "{}", wd.read("order"));
    assert!(
        wd.read("hosts.deny")
            .contains("ALL: [2001:db8:0:1::] : DENY"),
        "{}",
        wd.read("hosts.deny")
    );
    let (ok, out, err) = wd.cli(&["unban", "2001:db8:0:1::/64"]);
    assert!(ok, "{out}{err}");
    assert!(
        wait_until(Duration::from_secs(10), || ordered("unrun 2001:db8:0:1::")),
        "order:\n{}\nlog:\n{}",
        wd.read("order"),
        d.lines().join("\n")
    );
    assert!(ordered("unroute 2001:db8:0:1::"), "{}", wd.read("order"));
    assert!(
        !wd.read("hosts.deny").contains("2001:db8:0:1::"),
        "{}",
        wd.read("hosts.deny")
    );
    assert!(ban_nets(&status(&wd)).is_empty());
    assert!(d.stop().success());
}
