//! Escalation, end to end (docs/configuration.md, "Escalation"): the third banned host of
//! an IPv4 /24 gets the /24 banned in XDP, replacing the hosts' bans, so an address of it
//! that never probed is dropped too, until the network ban expires; the ban guard refuses
//! a network over the server's own address or over an ignored host, and an ignored host
//! inside an escalated network is never dropped.

use std::{fs, net::TcpListener, time::Duration};

use portsentry_tests::{
    daemon::{Daemon, Workdir, wait_until},
    netns::TestNet,
    require_kernel,
    scenario::{ban_nets, bans, check_config, probe, reaches, start, status, wait_banned},
};

/// The attackers' own network: not the server's 192.0.2.0/24.
const NET: &str = "198.51.100";

/// Probes from each of `hosts` in turn, waiting for each to be banned.
fn scan_from(net: &TestNet, wd: &Workdir, d: &Daemon, hosts: &[std::net::IpAddr]) {
    for h in hosts {
        probe(net, *h);
        wait_banned(wd, d, *h);
    }
}

#[test]
fn three_banned_hosts_of_a_24_ban_the_24_until_it_expires() {
    require_kernel!();
    let mut net = TestNet::new(0);
    let hosts = net.add_attacker_v4_network(NET, &[10, 11, 12, 60]);
    let (scanners, bystander) = (&hosts[..3], hosts[3]);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    wd.config(
        &net.server_if,
        &format!(
            "ESCALATE_AFTER=\"3\"\nBAN_TIME=\"6s\"\n\
             UNKILL_RUN_CMD=\"echo unrun $TARGET$ >> {order}\"\n"
        ),
    );
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let d = start(&net, &wd);
    assert!(reaches(&net, bystander), "before any ban");

    scan_from(&net, &wd, &d, &scanners[..2]);
    assert!(reaches(&net, bystander), "two banned hosts do not escalate");
    assert!(!d.has_line("attackalert: Network"));
    scan_from(&net, &wd, &d, &scanners[2..]);
    d.wait_for(
        "attackalert: Network 198.51.100.0/24 has been blocked via XDP drop: 3 hosts banned \
         within 10m",
        Duration::from_secs(10),
    );
    d.wait_for(
        "portsentry: the ban of 198.51.100.0/24 replaces the bans of 3 of its hosts",
        Duration::from_secs(5),
    );
    assert!(
        !reaches(&net, bystander),
        "{bystander} never probed, and its network is banned"
    );
    let all = bans(&wd);
    assert_eq!(all.len(), 1, "the host bans are replaced: {all:?}");
    let b = &all[0];
    assert_eq!(b["net"], "198.51.100.0/24", "{b}");
    assert_eq!(b["origin"], "escalation", "{b}");
    assert_eq!(b["escalated"], 3, "{b}");
    assert_eq!(b["in_kernel"], true, "{b}");
    // The replaced hosts' undo steps ran; no kill command ran for the network.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let o = wd.read("order");
            scanners.iter().all(|h| o.contains(&format!("unrun {h}\n")))
        }),
        "order:\n{}",
        wd.read("order")
    );
    assert!(
        !wd.read("order").contains("198.51.100.0"),
        "{}",
        wd.read("order")
    );
    // The ban journal keeps it as an escalation.
    let on_record = portsentry_user::bans::journal::load(&wd.path("state")).unwrap();
    let network = on_record
        .get(&"198.51.100.0/24".parse().unwrap())
        .expect("the network's ban in the journal");
    assert_eq!(network.escalated, Some(3), "{network:?}");

    // Expiry undoes it like any ban: the network is reachable again.
    d.wait_for(
        "portsentry: ban of 198.51.100.0/24 expired",
        Duration::from_secs(15),
    );
    assert!(
        wait_until(Duration::from_secs(3), || reaches(&net, bystander)),
        "{bystander} after the network ban expired"
    );
    assert!(reaches(&net, scanners[0]), "a scanner after the expiry");
    assert!(ban_nets(&status(&wd)).is_empty());
}

#[test]
fn the_guard_refuses_to_escalate_over_the_server_s_own_address() {
    require_kernel!();
    // The attackers share the server's 192.0.2.0/24.
    let net = TestNet::new(4);
    let (scanners, bystander) = (&net.attacker_v4[..4], net.attacker_v4[4]);
    let wd = Workdir::new();
    wd.config(&net.server_if, "ESCALATE_AFTER=\"3\"\n");
    let _svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let d = start(&net, &wd);
    scan_from(&net, &wd, &d, scanners);
    d.wait_for(
        "portsentry: not blocking the network 192.0.2.0/24 (3 hosts banned within 10m): it \
         covers 192.0.2.1, an address of this host; the bans of its hosts stay",
        Duration::from_secs(10),
    );
    // The fourth host's ban does not log the refusal again.
    std::thread::sleep(Duration::from_millis(500));
    let refusals = d
        .lines()
        .iter()
        .filter(|l| l.contains("not blocking the network"))
        .count();
    assert_eq!(refusals, 1, "logged once:\n{}", d.lines().join("\n"));
    assert!(!d.has_line("attackalert: Network"));
    let mut nets = ban_nets(&status(&wd));
    nets.sort();
    let mut want: Vec<String> = scanners.iter().map(|h| format!("{h}/32")).collect();
    want.sort();
    assert_eq!(nets, want, "the host bans stay, no network ban");
    assert!(reaches(&net, bystander), "the rest of the network");
}

#[test]
fn an_ignored_host_inside_a_crowded_network_is_never_dropped() {
    require_kernel!();
    let mut net = TestNet::new(0);
    let hosts = net.add_attacker_v4_network(NET, &[10, 11, 12, 50, 60]);
    let (scanners, ignored, bystander) = (&hosts[..3], hosts[3], hosts[4]);

    // Ignored from the start: the guard refuses the network, the ignored host is never
    // banned, and the rest of the network is not banned either.
    let wd = Workdir::new();
    fs::write(wd.path("portsentry.ignore"), format!("{ignored}\n")).unwrap();
    wd.config(&net.server_if, "ESCALATE_AFTER=\"3\"\n");
    let svc = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let d = start(&net, &wd);
    probe(&net, ignored);
    scan_from(&net, &wd, &d, scanners);
    d.wait_for(
        "portsentry: not blocking the network 198.51.100.0/24 (3 hosts banned within 10m): \
         it covers 198.51.100.50, in the ignore list",
        Duration::from_secs(10),
    );
    assert!(reaches(&net, ignored), "the ignored host");
    assert!(reaches(&net, bystander), "no network ban");
    assert_eq!(bans(&wd).len(), 3);
    drop(d);
    drop(wd);

    // Ignored after the escalation (SIGHUP): the network ban stays, and the kernel
    // never drops the ignored host under it.
    let wd = Workdir::new();
    wd.config(&net.server_if, "ESCALATE_AFTER=\"3\"\n");
    let d = start(&net, &wd);
    scan_from(&net, &wd, &d, scanners);
    d.wait_for(
        "attackalert: Network 198.51.100.0/24 has been blocked",
        Duration::from_secs(10),
    );
    assert!(!reaches(&net, ignored), "not ignored yet: dropped");
    fs::write(wd.path("portsentry.ignore"), format!("{ignored}\n")).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for(
        "portsentry: the ban of 198.51.100.0/24 does not drop 198.51.100.50/32 (in the \
         ignore list)",
        Duration::from_secs(10),
    );
    assert!(
        wait_until(Duration::from_secs(3), || reaches(&net, ignored)),
        "the ignored host under the network ban"
    );
    assert!(
        !reaches(&net, bystander),
        "the rest of the network stays banned"
    );
    drop(svc);
}

#[test]
fn check_config_shows_escalation_and_rejects_a_prefix_wider_than_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("portsentry.conf");
    let check = |text: &str| check_config(&conf, text);
    let (code, out, err) = check("SYSLOG=\"0\"\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("escalation:    off (ESCALATE_AFTER=0)"),
        "{out}"
    );
    let (code, out, err) = check("ESCALATE_AFTER=\"5\"\nESCALATE_WINDOW=\"1h\"\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(
            "escalation:    5 banned hosts of one IPv4 /24 or IPv6 /48 within 1h make one ban \
             of the network"
        ),
        "{out}"
    );
    let (code, _, err) = check("ESCALATE_AFTER=\"5\"\nSYSLOG=\"0\"\nESCALATE_PREFIX_V4=\"6\"\n");
    assert_eq!(
        code,
        Some(i32::from(portsentry_user::cli::EXIT_CONFIG)),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:3: ESCALATE_PREFIX_V4 (/6) is wider than BAN_MIN_PREFIX_V4 (/8)",
            conf.display()
        )),
        "{err}"
    );
}
