//! Faults, end to end: a hanging kill command, hostile reverse-DNS names, the interface
//! going down and up, the program detached by someone else, a full disk, and kill -9 in
//! the middle of a burst of bans. (Forged sources: `spoofed_sources.rs`.)

use std::{
    collections::BTreeSet,
    fs,
    net::TcpListener,
    time::{Duration, Instant},
};

use aya::programs::links::LinkType;
use portsentry_common::PROGRAM_NAME;
use portsentry_tests::{
    bpf_link,
    daemon::{Daemon, Workdir, wait_until},
    netns::TestNet,
    require_kernel,
    scenario::{banned, bans, probe, reaches, start},
};

#[test]
fn a_hanging_kill_command_is_killed_and_later_bans_proceed() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    wd.config(
        &net.server_if,
        "KILL_ROUTE=\"\"\nKILL_RUN_CMD=\"sleep 61.25\"\nKILL_TIMEOUT=\"1s\"\n",
    );
    let d = start(&net, &wd);
    let (a, b) = (net.attacker_v4[0], net.attacker_v4[1]);
    let t = Instant::now();
    probe(&net, a);
    d.wait_for(
        &format!("Host {a} has been blocked via XDP drop"),
        Duration::from_secs(2),
    );
    probe(&net, b);
    d.wait_for(
        &format!("Host {b} has been blocked via XDP drop"),
        Duration::from_secs(2),
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the second ban waited for the first command"
    );
    let line = d.wait_for("timed out", Duration::from_secs(5));
    assert!(line.contains("sleep 61.25"), "{line}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            !String::from_utf8_lossy(
                &std::process::Command::new("pgrep")
                    .args(["-f", "sleep 61.25"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .contains(char::is_numeric)
        }),
        "the hanging command is still running"
    );
    assert!(d.stop().success());
}

#[test]
fn hostile_reverse_dns_names_never_reach_a_shell() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    let marker = wd.path("pwned");
    let attacker = net.attacker_v4[0];
    let hostile = format!(
        "evil$(touch${{IFS}}{m});`touch${{IFS}}{m}`|x.example",
        m = marker.display()
    );
    let hosts = wd.path("hosts");
    fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{attacker} {hostile}\n"),
    )
    .unwrap();
    wd.config(&net.server_if, "RESOLVE_HOST=\"1\"\n");
    let d = Daemon::start_with_hosts(
        &net.server,
        &hosts,
        &["run", "-c", wd.conf().to_str().unwrap()],
    );
    probe(&net, attacker);
    let alert = d.wait_for(&format!("/{attacker} to TCP port"), Duration::from_secs(10));
    // The name was resolved, then stripped to letters, digits, '.', '-' and '_'.
    assert!(alert.contains("from host: evil"), "{alert}");
    let name = alert
        .split("from host: ")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap();
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)),
        "unsanitized name {name:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || wd
            .read("order")
            .contains(&format!("run {attacker} "))),
        "KILL_RUN_CMD did not run"
    );
    // The commands got the address, never the name; nothing ran the name.
    assert!(!wd.read("order").contains("evil"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "a name from DNS reached a shell");
    assert!(d.stop().success());
}

#[test]
fn interface_down_up_and_an_external_detach_are_survived() {
    require_kernel!();
    let net = TestNet::new(2);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    let (a, b, c) = (net.attacker_v4[0], net.attacker_v4[1], net.attacker_v4[2]);
    probe(&net, a);
    assert!(wait_until(Duration::from_secs(5), || banned(&wd, a)));

    net.server.exec(&format!(
        "ip link set {0} down && sleep 0.2 && ip link set {0} up",
        net.server_if
    ));
    net.attacker.exec(&format!(
        "for i in $(seq 50); do ip link show {} | grep -q LOWER_UP && exit 0; sleep 0.1; done; exit 1",
        net.attacker_if
    ));
    assert!(
        !reaches(&net, a),
        "dropped after the interface went down and up"
    );
    probe(&net, b);
    assert!(
        wait_until(Duration::from_secs(5), || banned(&wd, b)),
        "detection after down/up"
    );

    // Someone detaches the program behind the daemon's back, as an administrator with
    // `bpftool link detach id ID` would.
    let pin = wd.pin_dir.join(format!("link-{}", net.server_if));
    let link = bpf_link::pinned_link(&pin);
    assert_eq!(link.link_type, LinkType::Xdp, "{link:?}");
    assert!(bpf_link::link_is_loaded(link.id), "{link:?} is not listed");
    assert_eq!(
        bpf_link::program_name(link.program_id).as_deref(),
        Some(PROGRAM_NAME),
        "{link:?}"
    );
    bpf_link::detach_link(link.id).unwrap_or_else(|e| panic!("detaching {link:?}: {e}"));
    d.wait_for("detached from", Duration::from_secs(5));
    d.wait_for("attached again", Duration::from_secs(5));
    let again = bpf_link::pinned_link(&pin);
    assert_ne!(again.id, link.id, "a new link is pinned: {again:?}");
    assert_eq!(
        again.program_id, link.program_id,
        "the same program: {again:?}"
    );
    assert!(!reaches(&net, a), "bans hold once the program is back");
    probe(&net, c);
    assert!(
        wait_until(Duration::from_secs(5), || banned(&wd, c)),
        "detection after re-attaching"
    );
    assert!(d.stop().success());
}

#[test]
fn a_full_disk_under_the_history_file_loses_no_ban() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    let full = wd.path("full");
    fs::create_dir(&full).unwrap();
    // A tiny tmpfs of the test's own, filled up.
    let tmpfs = portsentry_tests::scenario::Tmpfs::mount(&full, "64k");
    tmpfs.fill();
    wd.config(&net.server_if, "");
    let text = fs::read_to_string(wd.conf()).unwrap().replace(
        &format!(
            "HISTORY_FILE=\"{}\"",
            wd.path("portsentry.history").display()
        ),
        &format!("HISTORY_FILE=\"{}/portsentry.history\"", full.display()),
    );
    fs::write(wd.conf(), text).unwrap();
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    let a = net.attacker_v4[0];
    probe(&net, a);
    d.wait_for(
        &format!("Host {a} has been blocked via XDP drop"),
        Duration::from_secs(5),
    );
    let line = d.wait_for("could not write the history file", Duration::from_secs(5));
    assert!(
        line.contains("No space left") || line.contains("space"),
        "{line}"
    );
    assert!(!reaches(&net, a), "the ban holds");
    assert!(banned(&wd, a), "and is on record");
    assert!(d.stop().success());
}

#[test]
fn kill_9_in_a_burst_of_bans_loses_none() {
    require_kernel!();
    let net = TestNet::new(19);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    let sources = net.attacker_v4.clone();
    for src in &sources[..10] {
        probe(&net, *src);
    }
    d.kill9();
    let at_kill: BTreeSet<String> = bans(&wd)
        .iter()
        .map(|b| b["net"].as_str().unwrap().to_owned())
        .collect();
    // The rest of the burst arrives with no daemon.
    for src in &sources[10..] {
        probe(&net, *src);
    }
    let d = start(&net, &wd);
    let all: BTreeSet<String> = sources.iter().map(|s| format!("{s}/32")).collect();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let now: BTreeSet<String> = bans(&wd)
                .iter()
                .map(|b| b["net"].as_str().unwrap().to_owned())
                .collect();
            now.is_superset(&all)
        }),
        "not every source of the burst was banned: {:?}",
        bans(&wd)
    );
    let after: BTreeSet<String> = bans(&wd)
        .iter()
        .map(|b| b["net"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        after.is_superset(&at_kill),
        "a ban in force at the kill was lost"
    );
    // No host was acted on twice. (A host whose commands the kill interrupted keeps its
    // ban; its commands are not run again.)
    let order = wd.read("order");
    for s in &sources {
        assert!(
            order.matches(&format!("route {s} ")).count() <= 1,
            "{s}: {order}"
        );
    }
    assert!(d.stop().success());
}
