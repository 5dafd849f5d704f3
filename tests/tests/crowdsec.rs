//! A fleet sharing bans through a real CrowdSec Local API (Debian's crowdsec 1.4.6, unpacked
//! by `cargo xtask test`, started by the test in a temporary directory).
//!
//! One Ethernet segment of the test's own ([`Lan`]): the Local API runs in the hub
//! namespace (192.0.2.250), three servers (A, B, C) each run the daemon in a namespace of
//! their own, with their own configuration, pins, bouncer key and machine, and an attacker
//! namespace holds the scanning addresses. All traffic stays in these namespaces.
//!
//! - nmap scans A from 192.0.2.2: A bans it and reports it; B and C enforce the decision
//!   (the attacker cannot reach their service, another address still can).
//! - `cscli decisions add --ip` / `--range`, IPv4 and IPv6: enforced on B (status and
//!   traffic); a range covering B's own address is refused there and counted;
//!   `cscli decisions delete` lifts.
//! - CROWDSEC_KILL_COMMANDS on C only: C runs KILL_* for each address a decision bans (not
//!   for ranges) and UNKILL_* when it is lifted; B (the default) runs none.
//! - The Local API killed: enforcement continues, status says it is down; restarted: the
//!   stream resumes (a decision added after the restart is enforced).

use std::time::Duration;

use portsentry_tests::{
    crowdsec::{Lapi, Server, ip},
    daemon::{Daemon, wait_until},
    netns::{Lan, Netns},
    require_kernel,
};

/// The LAN of the test, with the Local API on its hub (192.0.2.250).
fn lan_with_lapi() -> (Lan, Lapi) {
    let lan = Lan::new();
    lan.address_hub(&["192.0.2.250/24"]);
    let lapi = Lapi::start(&lan.hub, ip("192.0.2.250"));
    (lan, lapi)
}

/// Waits until the Local API holds a decision on `addr` (made by any machine), or none
/// (`present` false); `a` is the server whose report or deletion it waits for.
fn wait_decision(lapi: &Lapi, a: &Server, addr: &str, present: bool) {
    let has = || {
        lapi.cscli(&["decisions", "list", "--all", "-o", "json"])
            .contains(addr)
    };
    assert!(
        wait_until(Duration::from_secs(30), || has() == present),
        "a decision on {addr} at the Local API: {}, wanted {present}\n{}\n{}",
        !present,
        a.link(),
        a.log()
    );
}

/// nmap's SYN scan of ports 20-30 of `server` from `src`, an address of the attacker's
/// interface `iface`.
fn syn_scan(attacker: &Netns, iface: &str, src: &str, server: std::net::IpAddr) {
    let out = attacker.try_exec(&format!(
        "nmap -n -Pn -sS -e {iface} -S {src} -p 20-30 --max-retries 0 --host-timeout 30s \
         {server}"
    ));
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_fleet_shares_bans_through_crowdsec() {
    require_kernel!();
    let (lan, lapi) = lan_with_lapi();
    let attacker = Netns::new("atk");
    let sources = [
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.130",
        "2001:db8::2",
        "2001:db8::3",
        "2001:db8::130",
    ];
    let addrs: Vec<String> = sources
        .iter()
        .map(|a| format!("{a}/{}", if a.contains(':') { 64 } else { 24 }))
        .collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let attacker_if = lan.join(&attacker, &addrs);
    let a = Server::start(&lan, &lapi, "a", 11, "");
    let b = Server::start(&lan, &lapi, "b", 12, "");
    // C runs its kill commands for the addresses decisions ban (CROWDSEC_KILL_COMMANDS),
    // B does not (the default).
    let marks = tempfile::tempdir().unwrap();
    let unkilled = marks.path().join("unkill-c");
    let c = Server::start(
        &lan,
        &lapi,
        "c",
        13,
        &format!(
            "CROWDSEC_KILL_COMMANDS=\"1\"\n\
             UNKILL_RUN_CMD=\"echo unrun $TARGET$ $PORT$ $MODE$ >> {}\"\n",
            unkilled.display()
        ),
    );
    // Every neighbour entry resolved now, so that no first packet waits on neighbour
    // discovery (a connection attempt below gives up after 800 ms).
    for s in [&b, &c] {
        for src in sources {
            let dst = if src.contains(':') { s.v6 } else { s.v4 };
            attacker.exec(&format!(
                "for i in 1 2 3 4 5; do ping -c1 -W2 -I {src} {dst} >/dev/null && exit 0; \
                 sleep 0.2; done; exit 1"
            ));
            assert!(s.reachable_from(&attacker, ip(src)), "{src} before any ban");
        }
    }

    // A scan of A bans the scanner on B and C.
    let out = attacker.try_exec(&format!(
        "nmap -n -Pn -sS -e {attacker_if} -S 192.0.2.2 -p 1-200 --max-retries 0 \
         --host-timeout 30s -T4 {}",
        a.v4
    ));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(1 host up)"),
        "nmap did not scan: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let banned_on_a = wait_until(Duration::from_secs(15), || {
        a.ban_origin("192.0.2.2/32").as_deref() == Some("scan")
    });
    assert!(banned_on_a, "A did not ban the scanner:\n{}", a.log());
    for s in [&b, &c] {
        s.wait_crowdsec_ban("192.0.2.2/32", true);
        assert!(!s.reachable_from(&attacker, ip("192.0.2.2")), "banned");
        assert!(
            s.reachable_from(&attacker, ip("192.0.2.4")),
            "another address"
        );
    }
    // A's own decision came back to A: not a second ban.
    let sent = wait_until(Duration::from_secs(5), || {
        a.link()["reports"]["alerts_sent"].as_u64() >= Some(1)
    });
    assert!(sent, "{}", a.link());
    assert_eq!(a.ban_origin("192.0.2.2/32").as_deref(), Some("scan"));
    let dup = wait_until(Duration::from_secs(10), || {
        a.link()["decisions"]["duplicate"].as_u64() >= Some(1)
    });
    assert!(dup, "A's own decision was not recognised: {}", a.link());

    // Decisions made with cscli: addresses and ranges, IPv4 and IPv6.
    for (flag, value, net, src) in [
        ("--ip", "192.0.2.3", "192.0.2.3/32", "192.0.2.3"),
        ("--range", "192.0.2.128/26", "192.0.2.128/26", "192.0.2.130"),
        ("--ip", "2001:db8::3", "2001:db8::3/128", "2001:db8::3"),
        (
            "--range",
            "2001:db8::100/120",
            "2001:db8::100/120",
            "2001:db8::130",
        ),
    ] {
        lapi.cscli(&["decisions", "add", flag, value, "--duration", "1h"]);
        b.wait_crowdsec_ban(net, true);
        assert!(
            !b.reachable_from(&attacker, ip(src)),
            "{src} after {value}; status:\n{}",
            b.wd.cli(&["status"]).1
        );
    }
    assert!(
        b.reachable_from(&attacker, ip("2001:db8::2")),
        "not in the v6 range"
    );
    // The link's state file is written once a second.
    let counts = |l: &serde_json::Value| {
        let e = &l["enforced"];
        [
            e["ip_v4"].as_u64(),
            e["ip_v6"].as_u64(),
            e["range_v4"].as_u64(),
            e["range_v6"].as_u64(),
        ]
    };
    let expected = [Some(2), Some(1), Some(1), Some(1)];
    let counted = wait_until(Duration::from_secs(5), || counts(&b.link()) == expected);
    let link_b = b.link();
    assert!(counted, "{link_b}");
    assert_eq!(link_b["enforce"]["state"], "connected", "{link_b}");

    // A range over B's own address is refused by B's ban guard, and counted.
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "192.0.2.0/25",
        "--duration",
        "1h",
    ]);
    let refused = wait_until(Duration::from_secs(15), || {
        b.link()["decisions"]["protected"].as_u64() >= Some(1)
    });
    assert!(refused, "{}\n{}", b.link(), b.log());
    assert_eq!(b.ban_origin("192.0.2.0/25"), None);
    assert!(
        b.reachable_from(&attacker, ip("192.0.2.4")),
        "B's guard won"
    );
    lapi.cscli(&["decisions", "delete", "--range", "192.0.2.0/25"]);

    // Deleted: lifted.
    lapi.cscli(&["decisions", "delete", "--ip", "192.0.2.3"]);
    b.wait_crowdsec_ban("192.0.2.3/32", false);
    assert!(b.reachable_from(&attacker, ip("192.0.2.3")), "lifted");

    // The Local API goes away: what was received stays enforced.
    let mut lapi = lapi;
    lapi.kill();
    let down = wait_until(Duration::from_secs(15), || {
        b.link()["enforce"]["state"] == "down"
    });
    assert!(down, "{}", b.link());
    assert!(
        !b.reachable_from(&attacker, ip("192.0.2.130")),
        "range still enforced"
    );
    assert!(
        !c.reachable_from(&attacker, ip("192.0.2.2")),
        "scan ban still enforced"
    );
    // Back: the stream resumes.
    lapi.restart();
    let up = wait_until(Duration::from_secs(40), || {
        b.link()["enforce"]["state"] == "connected"
    });
    assert!(up, "{}\n{}", b.link(), b.log());
    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.4", "--duration", "1h"]);
    for s in [&b, &c] {
        s.wait_crowdsec_ban("192.0.2.4/32", true);
        if s.reachable_from(&attacker, ip("192.0.2.4")) {
            let again = s.reachable_from(&attacker, ip("192.0.2.4"));
            panic!(
                "192.0.2.4 reached {} after the restart (again: {again}); status:\n{}",
                s.v4,
                s.wd.cli(&["status"]).1
            );
        }
    }
    // What was in force before stays (the full answer after reconnecting names it).
    assert_eq!(b.ban_origin("192.0.2.128/26").as_deref(), Some("crowdsec"));

    // B's daemon restarted: the pinned maps enforce meanwhile, the journal keeps its
    // CrowdSec bans, and the first answer after the start lifts what was deleted while it
    // was down.
    let mut b = b;
    b.daemon.take().unwrap().stop();
    assert!(
        !b.reachable_from(&attacker, ip("192.0.2.2")),
        "while B is stopped"
    );
    lapi.cscli(&["decisions", "delete", "--range", "192.0.2.128/26"]);
    b.daemon = Some(Daemon::start(
        &b.ns,
        &["run", "-c", b.wd.conf().to_str().unwrap()],
    ));
    b.wait_crowdsec_ban("192.0.2.128/26", false);
    assert!(
        b.reachable_from(&attacker, ip("192.0.2.130")),
        "deleted while stopped"
    );
    assert_eq!(b.ban_origin("192.0.2.2/32").as_deref(), Some("crowdsec"));
    assert!(
        !b.reachable_from(&attacker, ip("192.0.2.2")),
        "after B's restart"
    );

    // The operator unbans the scanner on A: A deletes its decision, B and C lift it.
    let (ok, _, err) = a.wd.cli(&["unban", "192.0.2.2"]);
    assert!(ok, "{err}");
    for s in [&b, &c] {
        s.wait_crowdsec_ban("192.0.2.2/32", false);
        assert!(
            s.reachable_from(&attacker, ip("192.0.2.2")),
            "unbanned on A"
        );
    }
    let counted = wait_until(Duration::from_secs(5), || {
        a.link()["reports"]["decisions_deleted"].as_u64() >= Some(1)
    });
    assert!(counted, "{}", a.link());
    // Without CROWDSEC_KILL_COMMANDS no KILL_* command ran for a CrowdSec ban (A ran
    // them for its scan ban).
    assert_eq!(b.wd.read("order"), "", "B ran kill commands");
    assert!(a.wd.read("order").contains("route 192.0.2.2 "));
    // With it, C ran them for every address a decision banned (the scan's, cscli's, IPv4
    // and IPv6), none for a range, and the undo of those lifted.
    let order_c = c.wd.read("order");
    for addr in ["192.0.2.2", "192.0.2.3", "2001:db8::3", "192.0.2.4"] {
        for kind in ["route", "run"] {
            let line = format!("{kind} {addr} 0 crowdsec\n");
            assert!(
                order_c.contains(&line),
                "C did not run {line:?}:\n{order_c}"
            );
        }
    }
    assert!(
        !order_c.contains("192.0.2.128") && !order_c.contains("2001:db8::100"),
        "a range ran kill commands:\n{order_c}"
    );
    assert!(
        c.wd.read("hosts.deny").contains("ALL: 192.0.2.4 : DENY"),
        "C's KILL_HOSTS_DENY"
    );
    let undone = wait_until(Duration::from_secs(5), || {
        let u = std::fs::read_to_string(&unkilled).unwrap_or_default();
        u.contains("unrun 192.0.2.3 0 crowdsec\n") && u.contains("unrun 192.0.2.2 0 crowdsec\n")
    });
    assert!(
        undone,
        "C's UNKILL_RUN_CMD: {:?}",
        std::fs::read_to_string(&unkilled)
    );

    // Text status shows the link.
    let (ok, text, err) = b.wd.cli(&["status"]);
    assert!(ok, "{err}");
    assert!(text.contains("crowdsec:   http://192.0.2.250:"), "{text}");
    assert!(text.contains("crowdsec decision"), "{text}");
    for s in [&a, &b, &c] {
        let log = s.log();
        assert!(!log.contains("-key-"), "a bouncer key in the log:\n{log}");
        assert!(!log.contains("-pw-"), "a password in the log:\n{log}");
    }
    eprintln!("crowdsec log:\n{}", lapi.log());
}

/// A decision left out by CROWDSEC_SCENARIOS_EXCLUDE (or CROWDSEC_ORIGINS) does not hide
/// another decision on the same address that is enforced: the Local API keeps only the
/// longest decision of an address unless asked not to (`dedup=false`), and filters after.
/// Deleting the enforced one lifts the ban; the excluded one never bans.
#[test]
fn a_longer_excluded_decision_hides_no_enforced_one() {
    require_kernel!();
    let (lan, lapi) = lan_with_lapi();
    let b = Server::start(
        &lan,
        &lapi,
        "b",
        12,
        "CROWDSEC_SCENARIOS_EXCLUDE=\"not-for-us\"\n",
    );
    // Two decisions on one address: a longer one the scenario filter leaves out.
    let decide = |duration: &str, reason: &str| {
        lapi.cscli(&[
            "decisions",
            "add",
            "--ip",
            "198.51.100.7",
            "--duration",
            duration,
            "--reason",
            reason,
        ])
    };
    decide("168h", "not-for-us");
    decide("1h", "enforced");
    b.wait_crowdsec_ban("198.51.100.7/32", true);
    lapi.cscli(&[
        "decisions",
        "delete",
        "--ip",
        "198.51.100.7",
        "--scenario",
        "enforced",
    ]);
    b.wait_crowdsec_ban("198.51.100.7/32", false);
}

/// A decision on an address banned here already (by the operator, a scan) waits behind
/// that ban: when ours expires first, the decision's ban takes its place at once, not
/// at the next full answer (up to five minutes later); deleting the decision then lifts it.
#[test]
fn a_decision_behind_our_own_ban_takes_over_when_ours_expires() {
    require_kernel!();
    let (lan, lapi) = lan_with_lapi();
    let b = Server::start(&lan, &lapi, "b", 12, "");
    let net = "198.51.100.8/32";
    let (ok, out, err) = b.wd.cli(&["ban", "198.51.100.8", "--time", "8s"]);
    assert!(ok, "{out}{err}");
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.51.100.8",
        "--duration",
        "1h",
    ]);
    // Counted once the stream gave it (a duplicate of our ban).
    assert!(
        wait_until(Duration::from_secs(15), || {
            b.link()["decisions"]["duplicate"].as_u64() >= Some(1)
        }),
        "{}",
        b.link()
    );
    assert_eq!(b.ban_origin(net).as_deref(), Some("manual"));
    b.wait_crowdsec_ban(net, true);
    assert!(
        b.log()
            .contains("198.51.100.8/32 stays banned by a decision"),
        "{}",
        b.log()
    );
    lapi.cscli(&["decisions", "delete", "--ip", "198.51.100.8"]);
    b.wait_crowdsec_ban(net, false);
    assert_eq!(b.ban_origin(net), None);
}

/// The kill commands of a decision's ban (CROWDSEC_KILL_COMMANDS) that a crash cut short
/// run at the next start, once: the ban's record notes them due until they ran. They
/// write no history line, and the start after runs nothing.
#[test]
fn a_decisions_kill_commands_a_crash_cut_short_run_at_the_next_start() {
    require_kernel!();
    let (lan, lapi) = lan_with_lapi();
    let marks = tempfile::tempdir().unwrap();
    let (pid, hung, order) = (
        marks.path().join("kill.pid"),
        marks.path().join("hung"),
        marks.path().join("order"),
    );
    // KILL_ROUTE hangs the first time it runs (the daemon is killed then), not after:
    // `hung` is made (a directory: `mkdir` fails once it is there) before the sleep.
    let mut c = Server::start(
        &lan,
        &lapi,
        "c",
        13,
        &format!(
            "CROWDSEC_KILL_COMMANDS=\"1\"\n\
             KILL_ROUTE=\"echo $$ > {pid}; mkdir {hung} 2>/dev/null && sleep 60; \
             echo route $TARGET$ $PORT$ $MODE$ >> {order}\"\n\
             KILL_RUN_CMD=\"echo run $TARGET$ $PORT$ $MODE$ >> {order}\"\n",
            pid = pid.display(),
            hung = hung.display(),
            order = order.display()
        ),
    );
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.51.100.9",
        "--duration",
        "1h",
    ]);
    c.wait_crowdsec_ban("198.51.100.9/32", true);
    // Its pid is written before `hung` is made.
    assert!(
        wait_until(Duration::from_secs(10), || hung.exists()),
        "KILL_ROUTE did not start:\n{}",
        c.log()
    );
    c.daemon.take().unwrap().kill9();
    let group: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: a signal to the process group the daemon made for the command.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    assert!(!order.exists(), "nothing ran after the hanging KILL_ROUTE");

    let read = || std::fs::read_to_string(&order).unwrap_or_default();
    let done = "route 198.51.100.9 0 crowdsec\nrun 198.51.100.9 0 crowdsec\n";
    c.start_daemon();
    assert!(
        wait_until(Duration::from_secs(10), || read() == done),
        "the kill commands did not run: {:?}\n{}",
        read(),
        c.log()
    );
    assert!(
        c.log().contains(
            "running the kill commands of the ban of 198.51.100.9/32, whose response the \
             last stop cut short"
        ),
        "{}",
        c.log()
    );
    assert!(
        !c.wd.read("portsentry.history").contains("198.51.100.9"),
        "a decision's commands write no history line"
    );
    assert!(c.daemon.take().unwrap().stop().success());

    // Done, and on record as done; so are the commands of a decision's ban that ran to
    // their end.
    c.start_daemon();
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.51.100.10",
        "--duration",
        "1h",
    ]);
    let both = format!("{done}{}", done.replace(".9 ", ".10 "));
    assert!(
        wait_until(Duration::from_secs(15), || read() == both),
        "{:?}\n{}",
        read(),
        c.log()
    );
    assert!(c.daemon.take().unwrap().stop().success());
    c.start_daemon();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!c.log().contains("cut short"), "{}", c.log());
    assert_eq!(read(), both);
}

/// An operator's unban of a scan ban, made while the Local API is away, outlives a
/// restart of the daemon: the deletion of our decision is sent once the Local API is
/// back, so the ban does not come back from that decision (here or on the fleet).
#[test]
fn an_unban_made_while_the_local_api_is_away_is_sent_after_a_restart() {
    require_kernel!();
    let (lan, mut lapi) = lan_with_lapi();
    let attacker = Netns::new("atk");
    let attacker_if = lan.join(&attacker, &["192.0.2.2/24"]);
    let mut a = Server::start(&lan, &lapi, "a", 11, "");
    syn_scan(&attacker, &attacker_if, "192.0.2.2", a.v4);
    wait_decision(&lapi, &a, "192.0.2.2", true);
    assert_eq!(a.ban_origin("192.0.2.2/32").as_deref(), Some("scan"));

    lapi.kill();
    let (ok, out, err) = a.wd.cli(&["unban", "192.0.2.2"]);
    assert!(ok, "{out}{err}");
    assert!(a.daemon.take().unwrap().stop().success());
    let kept = a.wd.path("state").join("crowdsec-reports.json");
    assert!(
        std::fs::read_to_string(&kept)
            .unwrap_or_default()
            .contains("\"unban\""),
        "the deletion waits in {}",
        kept.display()
    );

    lapi.restart();
    a.start_daemon();
    wait_decision(&lapi, &a, "192.0.2.2", false);
    a.wait_crowdsec_ban("192.0.2.2/32", false);
    assert_eq!(a.ban_origin("192.0.2.2/32"), None);
    assert!(
        wait_until(Duration::from_secs(5), || !kept.exists()),
        "nothing left to send"
    );
    // Not even for a moment: the start's full answer, which came before the deletion
    // was sent, did not put the decision in force.
    assert!(
        !a.log().contains("192.0.2.2/32 banned by a decision"),
        "{}",
        a.log()
    );
}

/// An escalation's network ban replaces its hosts' bans at the Local API too: their
/// decisions are deleted (the network's covers them on the fleet), so an operator's
/// unban of the network leaves no decision there to ban one of its hosts again.
#[test]
fn an_escalation_replaces_its_hosts_decisions_with_its_networks() {
    require_kernel!();
    let (lan, lapi) = lan_with_lapi();
    let attacker = Netns::new("atk");
    let hosts = ["198.51.100.10", "198.51.100.11", "198.51.100.12"];
    let attacker_if = lan.join(
        &attacker,
        &[
            "192.0.2.2/24",
            "198.51.100.10/24",
            "198.51.100.11/24",
            "198.51.100.12/24",
        ],
    );
    let a = Server::start(&lan, &lapi, "a", 11, "ESCALATE_AFTER=\"3\"\n");
    let decisions = || lapi.cscli(&["decisions", "list", "--all", "-o", "json"]);
    for h in hosts {
        syn_scan(&attacker, &attacker_if, h, a.v4);
        assert!(
            wait_until(Duration::from_secs(15), || {
                a.ban_origin(&format!("{h}/32")).is_some()
                    || a.ban_origin("198.51.100.0/24").is_some()
            }),
            "A did not ban {h}:\n{}",
            a.log()
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || {
            a.ban_origin("198.51.100.0/24").as_deref() == Some("escalation")
        }),
        "no escalation:\n{}",
        a.log()
    );
    let only_the_network = wait_until(Duration::from_secs(30), || {
        let d = decisions();
        d.contains("198.51.100.0/24") && !hosts.iter().any(|h| d.contains(&format!("\"{h}\"")))
    });
    assert!(
        only_the_network,
        "the Local API should hold the network's decision alone: {}\n{}\n{}",
        decisions(),
        a.link(),
        a.log()
    );
    let (ok, out, err) = a.wd.cli(&["unban", "198.51.100.0/24"]);
    assert!(ok, "{out}{err}");
    assert!(
        wait_until(Duration::from_secs(30), || !decisions()
            .contains("198.51.100.")),
        "decisions left at the Local API: {}\n{}",
        decisions(),
        a.log()
    );
    for h in hosts {
        assert_eq!(a.ban_origin(&format!("{h}/32")), None, "{h}");
    }
}

/// A scan ban the ban guard lifts (its host added to the ignore list, SIGHUP) deletes its
/// decision at the Local API, as an operator's unban does: the host is trusted here, and
/// the fleet stops enforcing our report of it. (The decision stayed until it expired.)
#[test]
fn a_host_added_to_the_ignore_list_loses_our_decision() {
    require_kernel!();
    let (lan, lapi) = lan_with_lapi();
    let attacker = Netns::new("atk");
    let attacker_if = lan.join(&attacker, &["192.0.2.2/24"]);
    let a = Server::start(&lan, &lapi, "a", 11, "");
    syn_scan(&attacker, &attacker_if, "192.0.2.2", a.v4);
    wait_decision(&lapi, &a, "192.0.2.2", true);
    std::fs::write(a.wd.path("portsentry.ignore"), "192.0.2.2\n").unwrap();
    let d = a.daemon.as_ref().unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("lifted the ban of 192.0.2.2/32", Duration::from_secs(5));
    wait_decision(&lapi, &a, "192.0.2.2", false);
    assert_eq!(a.ban_origin("192.0.2.2/32"), None);
}

/// The enforcement of decisions turned off (CROWDSEC_LAPI_URL taken out): the next start
/// lifts the bans decisions made, which nothing would end before they expire; our own
/// bans stay. Turned on again, the first answer puts them back.
#[test]
fn turning_enforcement_off_lifts_the_bans_of_decisions() {
    require_kernel!();
    let (lan, lapi) = lan_with_lapi();
    let mut b = Server::start(&lan, &lapi, "b", 12, "");
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.51.100.9",
        "--duration",
        "1h",
    ]);
    b.wait_crowdsec_ban("198.51.100.9/32", true);
    let (ok, out, err) = b.wd.cli(&["ban", "198.51.100.10"]);
    assert!(ok, "{out}{err}");
    assert!(b.daemon.take().unwrap().stop().success());

    let conf = b.wd.conf();
    let with_link = std::fs::read_to_string(&conf).unwrap();
    let without: String = with_link
        .lines()
        .filter(|l| !l.starts_with("CROWDSEC_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&conf, without).unwrap();
    let d = Daemon::start(&b.ns, &["run", "-c", conf.to_str().unwrap()]);
    d.wait_for(
        "lifted the bans its decisions made (1)",
        Duration::from_secs(20),
    );
    assert_eq!(b.ban_origin("198.51.100.9/32"), None);
    assert_eq!(b.ban_origin("198.51.100.10/32").as_deref(), Some("manual"));
    assert!(d.stop().success());

    std::fs::write(&conf, with_link).unwrap();
    b.start_daemon();
    b.wait_crowdsec_ban("198.51.100.9/32", true);
}

/// A decision no delta of the stream gives is enforced by the next full answer, seconds
/// later for a short list. crowdsec 1.4.6 gives in a delta the decisions created after the
/// start of the bouncer's previous call: one created before that start and committed after
/// the call read the database (SQLite busy with three bouncers) is in none. Here a trigger
/// dates a decision in the past as it is inserted, which puts it in that place for good.
#[test]
fn a_decision_no_delta_gives_is_enforced_by_a_full_answer() {
    require_kernel!();
    let (lan, lapi) = lan_with_lapi();
    let b = Server::start(&lan, &lapi, "b", 12, "");
    // Decisions counted by a delta first: behind an operator's ban, of another type, on
    // B's own address.
    let (ok, out, err) = b.wd.cli(&["ban", "198.51.100.52"]);
    assert!(ok, "{out}{err}");
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.51.100.52",
        "--duration",
        "1h",
    ]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.51.100.53",
        "--duration",
        "1h",
        "--type",
        "captcha",
    ]);
    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.12", "--duration", "1h"]);
    let counts = || b.link()["decisions"].clone();
    let seen = wait_until(Duration::from_secs(15), || {
        ["duplicate", "other_type", "protected"]
            .iter()
            .all(|o| counts()[o].as_u64() >= Some(1))
    });
    assert!(seen, "{}", b.link());
    let watcher = lapi.add_bouncer("watcher");
    lapi.stream(&lan.hub, &watcher, true);
    lapi.sql(
        "CREATE TRIGGER backdated AFTER INSERT ON decisions WHEN NEW.value = '198.51.100.50' \
         BEGIN UPDATE decisions SET created_at = '2000-01-01 00:00:00+00:00' \
         WHERE id = NEW.id; END;",
    );
    for ip in ["198.51.100.50", "198.51.100.51"] {
        lapi.cscli(&["decisions", "add", "--ip", ip, "--duration", "1h"]);
    }
    // What a delta gives: the other decision only.
    let delta = lapi.stream(&lan.hub, &watcher, false);
    assert!(
        delta.contains("198.51.100.51") && !delta.contains("198.51.100.50"),
        "{delta}"
    );
    b.wait_crowdsec_ban("198.51.100.51/32", true);
    let full = wait_until(Duration::from_secs(40), || {
        b.ban_origin("198.51.100.50/32").as_deref() == Some("crowdsec")
    });
    assert!(
        full,
        "not enforced by a full answer:\n{}\n{}",
        b.link(),
        b.log()
    );
    // Each decision counted once, though that full answer named them all again, and so
    // does the next (10 s later for a list this short).
    let want = [
        ("applied", 2),
        ("duplicate", 1),
        ("other_type", 1),
        ("protected", 1),
    ];
    let as_wanted = || want.iter().all(|(o, n)| counts()[o].as_u64() == Some(*n));
    // The status file is written once a second.
    assert!(
        wait_until(Duration::from_secs(5), as_wanted),
        "{}",
        b.link()
    );
    std::thread::sleep(Duration::from_secs(12));
    assert!(as_wanted(), "{}", b.link());
}

/// A full answer that names decisions already in force rewrites none of their bans: the
/// journal does not grow (each decision's end, computed again, differs by the answers'
/// delays; rewritten, every CrowdSec ban went back to the maps and the journal at every
/// full answer).
#[test]
fn a_full_answer_rewrites_no_ban_already_in_force() {
    require_kernel!();
    let (lan, mut lapi) = lan_with_lapi();
    let b = Server::start(&lan, &lapi, "b", 12, "");
    let addrs: Vec<String> = (20..30).map(|i| format!("198.51.100.{i}")).collect();
    for a in &addrs {
        lapi.cscli(&["decisions", "add", "--ip", a, "--duration", "2h"]);
    }
    for a in &addrs {
        b.wait_crowdsec_ban(&format!("{a}/32"), true);
    }
    let journal = b.wd.path("state").join("bans.journal");
    let size = || std::fs::metadata(&journal).unwrap().len();
    // Written to disk within the housekeeping's second.
    std::thread::sleep(Duration::from_secs(2));
    let before = size();
    // The Local API away and back: the next answer is a full one.
    lapi.kill();
    assert!(
        wait_until(Duration::from_secs(15), || b.link()["enforce"]["state"]
            == "down"),
        "{}",
        b.link()
    );
    lapi.restart();
    assert!(
        wait_until(Duration::from_secs(40), || b.link()["enforce"]["state"]
            == "connected"),
        "{}",
        b.link()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(size(), before, "the full answer rewrote bans in force");
    for a in &addrs {
        assert_eq!(
            b.ban_origin(&format!("{a}/32")).as_deref(),
            Some("crowdsec")
        );
    }
}

/// A list longer than the ban map (MAX_BANS 16, 60 decisions): each decision that does
/// not fit is counted once as failed, and logged in at most ten lines of their own an
/// answer and one that counts the rest, not a line each. A refused network's decision
/// deleted and decided again is refused again, and logged again, whether a delta or a
/// full answer (the Local API away meanwhile) brings the change; a full answer that names
/// the same refused decisions again logs and counts nothing.
#[test]
fn a_list_longer_than_the_ban_map_is_refused_in_a_few_log_lines() {
    require_kernel!();
    let (lan, mut lapi) = lan_with_lapi();
    let b = Server::start(&lan, &lapi, "b", 12, "MAX_BANS=\"16\"\n");
    let list = lapi.file("list.csv");
    let rows: String = (1..=60)
        .map(|i| format!("1h,ip,198.51.100.{i}\n"))
        .collect();
    std::fs::write(&list, format!("duration,scope,value\n{rows}")).unwrap();
    lapi.cscli(&["decisions", "import", "-i", list.to_str().unwrap()]);
    let counts = || b.link()["decisions"].clone();
    let settled = wait_until(Duration::from_secs(30), || {
        let c = counts();
        c["applied"].as_u64().unwrap_or(0) + c["failed"].as_u64().unwrap_or(0) == 60
    });
    assert!(settled, "{}\n{}", b.link(), b.log());
    let failed = counts()["failed"].as_u64().unwrap();
    assert!(failed >= 44, "{}", b.link());
    // The lines of their own, and the counts of the lines that count the rest ("not
    // enforcing the decisions on N more networks (N failed)").
    let logged = || {
        let log = b.log();
        let each: Vec<String> = log
            .lines()
            .filter(|l| l.contains("not enforcing the decision on "))
            .map(str::to_string)
            .collect();
        let more: Vec<u64> = log
            .lines()
            .filter_map(|l| l.split("not enforcing the decisions on ").nth(1))
            .map(|rest| {
                let n = rest.split(' ').next().unwrap();
                assert!(rest.contains(&format!("({n} failed)")), "{rest}");
                n.parse().unwrap()
            })
            .collect();
        (each, more)
    };
    // The log is read from the daemon's output as it comes: each refusal in it.
    let all_in = wait_until(Duration::from_secs(5), || {
        let (each, more) = logged();
        each.len() as u64 + more.iter().sum::<u64>() == failed
    });
    assert!(all_in, "each refusal logged or counted once:\n{}", b.log());
    let (each, more) = logged();
    assert!(
        !more.is_empty(),
        "no line counts the refusals:\n{}",
        b.log()
    );
    assert!(each.len() <= 10 * more.len(), "{}", b.log());
    let net_of = |line: &str| {
        line.split("not enforcing the decision on ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap()
            .to_string()
    };
    let lines_of = |net: &str| {
        b.log()
            .matches(&format!("not enforcing the decision on {net} "))
            .count()
    };
    // By deltas: the first network logged, its decision deleted, then decided again.
    let (first, second) = (net_of(&each[0]), net_of(&each[1]));
    decide_again(&lapi, &first);
    let again = wait_until(Duration::from_secs(15), || lines_of(&first) == 2);
    assert!(again, "{}\n{}", b.link(), b.log());
    // By a full answer: the second's decision replaced by one of another id while the
    // Local API is away (in its database); the first answer after it comes back is a
    // full one, which names the new decision and not the old.
    lapi.kill();
    let down = wait_until(Duration::from_secs(15), || {
        b.link()["enforce"]["state"] == "down"
    });
    assert!(down, "{}", b.link());
    let addr = second.trim_end_matches("/32");
    lapi.sql(&format!(
        "UPDATE decisions SET id = id + 1000000 WHERE value = '{addr}'"
    ));
    lapi.restart();
    let again = wait_until(Duration::from_secs(40), || lines_of(&second) == 2);
    assert!(again, "{}\n{}", b.link(), b.log());
    // Counted as decisions of their own (the status file is written once a second),
    // and nothing more at the full answers that follow (one every 10 s for a list this
    // short).
    let counted = wait_until(Duration::from_secs(5), || {
        counts()["failed"].as_u64() == Some(failed + 2)
    });
    assert!(counted, "{}", b.link());
    let lines = b.log().lines().count();
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        counts()["failed"].as_u64(),
        Some(failed + 2),
        "{}",
        b.link()
    );
    let log = b.log();
    let later: Vec<&str> = log.lines().skip(lines).collect();
    assert!(
        !later.iter().any(|l| l.contains("not enforcing")),
        "logged again by a full answer:\n{}",
        later.join("\n")
    );
}

/// The decision on the host `net` (a /32) deleted, and one made on it again.
fn decide_again(lapi: &Lapi, net: &str) {
    let addr = net.trim_end_matches("/32");
    lapi.cscli(&["decisions", "delete", "--ip", addr]);
    lapi.cscli(&["decisions", "add", "--ip", addr, "--duration", "1h"]);
}
