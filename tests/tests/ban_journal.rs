//! The ban journal (`STATE_DIR/bans.journal`) end to end: a daemon killed with SIGKILL
//! in the middle of a burst of bans, then its pinned maps removed (what a reboot does),
//! comes back with every ban it acknowledged; a scan ban is in the journal before its
//! kill commands run; a truncated or bit-flipped journal gives back its intact part and
//! says which file and where; a ban made without the daemon runs the undo steps of the
//! ban it replaces once the journal holds it; a start on a full disk goes on, and its
//! changes reach the journal once there is room.

use std::{
    net::{IpAddr, TcpListener},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use portsentry_tests::{
    daemon::{Daemon, Workdir, wait_until},
    netns::TestNet,
    require_kernel,
    scenario::{Tmpfs, ban_nets, probe, scan_ban, start, status, wait_banned},
};
use portsentry_user::bans::{BanStore, journal};

/// Removes what a reboot removes: the program, its links and its pinned maps.
fn reboot(wd: &Workdir) {
    let (ok, out, err) = wd.cli(&["unload"]);
    assert!(ok, "unload: {out}{err}");
    assert!(!wd.pin_dir.exists(), "pins left behind");
}

fn in_kernel(st: &serde_json::Value, net: &str) -> bool {
    st["bans"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["net"] == net && b["in_kernel"] == true)
}

#[test]
fn kill_9_mid_burst_then_a_reboot_keeps_every_acknowledged_ban() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);

    // Four operators ban as fast as the daemon answers; a ban counts as acknowledged
    // when `portsentry ban` says so.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let wd = Arc::new(wd);
    let workers: Vec<_> = (0..4u32)
        .map(|t| {
            let (acked, stop, wd) = (acked.clone(), stop.clone(), wd.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let ip = format!("10.{t}.{}.{}", i / 250, i % 250 + 1);
                    let (ok, out, _) = wd.cli(&["ban", &ip]);
                    if ok && out.starts_with(&format!("banned {ip}/32")) {
                        acked.lock().unwrap().push(format!("{ip}/32"));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || acked.lock().unwrap().len()
            >= 60),
        "only {} bans acknowledged",
        acked.lock().unwrap().len()
    );
    // Mid-burst: the operators are still banning.
    let before_kill = acked.lock().unwrap().len();
    d.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= before_kill);

    reboot(&wd);
    let on_disk = journal::load(&wd.path("state")).unwrap();
    let d = start(&net, &wd);
    let read = d.wait_for("ban journal read:", Duration::from_secs(5));
    let st = status(&wd);
    let banned = ban_nets(&st);
    let missing: Vec<&String> = acked.iter().filter(|n| !banned.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged bans lost: {missing:?}\n{read}",
        missing.len(),
        acked.len()
    );
    for n in &acked {
        assert!(in_kernel(&st, n), "{n} is not back in the kernel");
    }
    assert!(on_disk.len() >= acked.len(), "{read}");
    assert!(d.stop().success());
}

#[test]
fn a_scan_ban_is_in_the_journal_before_its_kill_commands_run() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let pid_file = wd.path("state").join("portsentry.pid");
    // The first kill command after the XDP ban kills the daemon outright: the moment
    // the ban counts as acknowledged (its commands run).
    wd.config(
        &net.server_if,
        &format!(
            "KILL_ROUTE=\"echo route $TARGET$ >> {} && kill -9 $(cat {})\"\n",
            wd.path("order").display(),
            pid_file.display()
        ),
    );
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let scanner: IpAddr = net.attacker_v4[0];
    let mut d = start(&net, &wd);
    probe(&net, scanner);
    assert!(
        wait_until(Duration::from_secs(15), || d
            .child
            .try_wait()
            .unwrap()
            .is_some()),
        "the kill command did not kill the daemon; log:\n{}",
        d.lines().join("\n")
    );
    assert!(d.has_line(&format!(
        "attackalert: Host {scanner} has been blocked via XDP drop"
    )));
    assert!(
        wd.read("order").contains(&format!("route {scanner}")),
        "{}",
        wd.read("order")
    );
    reboot(&wd);
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    let st = status(&wd);
    assert!(
        in_kernel(&st, &format!("{scanner}/32")),
        "the scan ban did not survive: {st:#}\nlog:\n{}",
        d.lines().join("\n")
    );
    let ban = st["bans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["net"] == format!("{scanner}/32"))
        .unwrap();
    assert_eq!(ban["origin"], "scan", "{ban}");
    assert_eq!(ban["port"], 23, "{ban}");
    assert!(d.stop().success());
}

/// A command for the first daemon: it writes its pid to `pid_file`, then hangs, so that
/// the daemon is killed while it runs ([`kill_mid_command`]); `then` would run after.
fn hanging(pid_file: &Path, then: &str) -> String {
    format!("echo $$ > {}; sleep 60; {then}", pid_file.display())
}

/// Kills the daemon (SIGKILL) once the [`hanging`] command that writes `pid_file` runs,
/// and the command's process group with it.
fn kill_mid_command(d: Daemon, wd: &Workdir, pid_file: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || wd
            .read(pid_file)
            .ends_with('\n')),
        "the command did not start; log:\n{}",
        d.lines().join("\n")
    );
    d.kill9();
    let pid: i32 = wd.read(pid_file).trim().parse().unwrap();
    // SAFETY: a signal to the process group the daemon made for the command.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

/// The kill commands and undo steps `status` counts as due (the journal's notes).
fn steps_due(wd: &Workdir) -> (u64, u64) {
    let st = status(wd);
    let due = &st["steps_due"];
    (
        due["kill_commands"].as_u64().unwrap(),
        due["undo_steps"].as_u64().unwrap(),
    )
}

/// After a crash: `status` counts `due` (kill commands, undo steps) for the next start.
fn status_counts_for_the_next_start(wd: &Workdir, due: (u64, u64)) {
    assert_eq!(steps_due(wd), due);
    let (ok, text, err) = wd.cli(&["status"]);
    assert!(ok, "{err}");
    let line = format!(
        "steps due:  kill commands of {} bans, undo steps of {} lifted bans (the next start \
         runs them)",
        due.0, due.1
    );
    assert!(text.contains(&line), "{text}");
}

/// Starts the daemon again and stops it: it runs nothing a stop cut short, and the
/// order file holds `line` `times` times.
fn a_start_runs_nothing_again(net: &TestNet, wd: &Workdir, line: &str, times: usize) {
    let d = start(net, wd);
    d.wait_for("ban journal read:", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!d.has_line("cut short"), "{}", d.lines().join("\n"));
    assert_eq!(steps_due(wd), (0, 0), "nothing due");
    let (_, text, _) = wd.cli(&["status"]);
    assert!(!text.contains("steps due:"), "{text}");
    let order = wd.read("order");
    assert_eq!(order.matches(line).count(), times, "{order}");
    assert!(d.stop().success());
}

/// The undo steps of a lifted ban that a crash cut short run at the next start, once:
/// the journal notes them due with the lift, and done once they ran.
#[test]
fn undo_steps_a_crash_cut_short_run_at_the_next_start() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    let unroute = format!("echo unroute $TARGET$ >> {order}");
    let hangs = hanging(&wd.path("unkill.pid"), &unroute);
    wd.config(&net.server_if, &format!("UNKILL_ROUTE=\"{hangs}\"\n"));
    let scanner: IpAddr = net.attacker_v4[0];
    let d = start(&net, &wd);
    probe(&net, scanner);
    wait_banned(&wd, &d, scanner);
    let (ok, out, err) = wd.cli(&["unban", &scanner.to_string()]);
    assert!(ok, "unban: {out}{err}");
    kill_mid_command(d, &wd, "unkill.pid");
    assert!(
        !wd.read("order").contains("unroute"),
        "{}",
        wd.read("order")
    );
    status_counts_for_the_next_start(&wd, (0, 1));

    // The next start runs them (with the configuration in force then).
    wd.config(&net.server_if, &format!("UNKILL_ROUTE=\"{unroute}\"\n"));
    let d = start(&net, &wd);
    d.wait_for(
        &format!(
            "running the undo steps of the ban of {scanner}/32, which the last stop cut short"
        ),
        Duration::from_secs(10),
    );
    let once = format!("unroute {scanner}\n");
    assert!(
        wait_until(Duration::from_secs(10), || wd.read("order").contains(&once)),
        "the undo steps did not run; log:\n{}",
        d.lines().join("\n")
    );
    assert!(ban_nets(&status(&wd)).is_empty());
    assert!(d.stop().success());
    // Done, and on record as done.
    a_start_runs_nothing_again(&net, &wd, "unroute", 1);
}

/// The kill commands of a scan ban whose response a crash cut short run at the next
/// start, once: the ban's record notes them due until they ran. Those after the XDP
/// ban: a KILL_RUN_CMD that KILL_RUN_CMD_FIRST ran before it is not run again.
#[test]
fn kill_commands_a_crash_cut_short_run_at_the_next_start() {
    require_kernel!();
    let net = TestNet::new(2);
    let wd = Workdir::new();
    let route = format!("echo route $TARGET$ >> {}", wd.path("order").display());
    let hangs = hanging(&wd.path("kill.pid"), &route);
    wd.config(
        &net.server_if,
        &format!("KILL_ROUTE=\"{hangs}\"\nKILL_RUN_CMD_FIRST=\"1\"\n"),
    );
    let scanner: IpAddr = net.attacker_v4[0];
    let d = start(&net, &wd);
    probe(&net, scanner);
    kill_mid_command(d, &wd, "kill.pid");
    let ran = format!("run {scanner} 23 atcp\n");
    assert_eq!(
        wd.read("order"),
        ran,
        "KILL_RUN_CMD first, then the hanging KILL_ROUTE"
    );
    assert!(!wd.read("portsentry.history").contains(&scanner.to_string()));
    status_counts_for_the_next_start(&wd, (1, 0));

    wd.config(&net.server_if, "KILL_RUN_CMD_FIRST=\"1\"\n");
    let d = start(&net, &wd);
    d.wait_for(
        &format!(
            "running the kill commands of the ban of {scanner}/32, whose response the last \
             stop cut short"
        ),
        Duration::from_secs(10),
    );
    let once = format!("route {scanner} 23 atcp\n");
    assert!(
        wait_until(Duration::from_secs(10), || wd.read("order").contains(&once)),
        "the kill commands did not run: {}; log:\n{}",
        wd.read("order"),
        d.lines().join("\n")
    );
    wait_banned(&wd, &d, scanner);
    assert!(in_kernel(&status(&wd), &format!("{scanner}/32")));
    assert_eq!(
        wd.read("order").matches(&ran).count(),
        1,
        "{}",
        wd.read("order")
    );
    assert!(d.stop().success());
    // Done, and on record as done.
    a_start_runs_nothing_again(&net, &wd, "route", 1);
    // A response that ran to its end is done too.
    let d = start(&net, &wd);
    let second: IpAddr = net.attacker_v4[1];
    probe(&net, second);
    wait_banned(&wd, &d, second);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.stop().success());
    a_start_runs_nothing_again(&net, &wd, "route", 2);
}

#[test]
fn a_damaged_journal_gives_back_its_intact_part_and_says_where() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    for ip in ["192.0.2.10", "192.0.2.20", "192.0.2.30"] {
        let (ok, out, err) = wd.cli(&["ban", ip]);
        assert!(ok, "ban {ip}: {out}{err}");
    }
    assert!(d.stop().success());
    reboot(&wd);
    let file = journal::path(&wd.path("state"));
    let damaged = wd.path("state").join("bans.journal.damaged");

    // Cut short inside the last record (a crash during a write).
    let bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - journal::PUT_SIZE;
    std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
    let d = start(&net, &wd);
    let line = d.wait_for("is damaged", Duration::from_secs(5));
    assert!(
        line.contains(&file.display().to_string())
            && line.contains("cut short")
            && line.contains(&format!("byte {last}")),
        "{line}"
    );
    let mut nets = ban_nets(&status(&wd));
    nets.sort();
    assert_eq!(nets, ["192.0.2.10/32", "192.0.2.20/32"]);
    assert_eq!(
        std::fs::read(&damaged).unwrap(),
        &bytes[last..bytes.len() - 5],
        "the damaged part"
    );
    assert!(d.stop().success());
    reboot(&wd);

    // One bit flipped in the second of the two records the daemon rewrote (in the
    // order of networks): only the first ban is left, and the log says where.
    let mut bytes = std::fs::read(&file).unwrap();
    let second = journal::HEADER.len() + journal::PUT_SIZE;
    assert_eq!(bytes.len(), second + journal::PUT_SIZE, "a clean journal");
    bytes[second + 20] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let d = start(&net, &wd);
    let line = d.wait_for("is damaged", Duration::from_secs(5));
    assert!(
        line.contains("checksum") && line.contains(&format!("byte {second}")),
        "{line}"
    );
    assert_eq!(ban_nets(&status(&wd)), ["192.0.2.10/32"]);
    // The intact ban is in force again, in the kernel.
    assert!(in_kernel(&status(&wd), "192.0.2.10/32"));
    assert!(d.stop().success());
}

/// A start on a full disk: the lifts of the bans that expired while the daemon was
/// stopped cannot be written to the journal. The start goes on (the bans in force are
/// in the kernel, and the journal's writer keeps the changes and tries again), and the
/// lifts reach the journal once there is room. The start used to fail there.
#[test]
fn a_start_on_a_full_disk_goes_on_and_writes_the_journal_once_there_is_room() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let state = wd.path("state");
    std::fs::create_dir(&state).unwrap();
    // The state directory on a tiny tmpfs of the test's own.
    let tmpfs = Tmpfs::mount(&state, "128k");
    // 400 bans that ended an hour ago: their lifts are more than the slack of the
    // journal's last page.
    let now = SystemTime::now();
    let mut store = BanStore::new();
    for i in 0..400u32 {
        let ip = std::net::Ipv4Addr::from(0xc612_0000 + i);
        let mut ban = scan_ban(IpNet::from(IpAddr::V4(ip)), now - Duration::from_secs(7200));
        ban.expires = Some(now - Duration::from_secs(3600));
        store.insert(ban);
    }
    let file = journal::path(&state);
    std::fs::write(&file, journal::encode_store(&store)).unwrap();
    // The pid file holds a page already: rewritten, it takes that page back.
    std::fs::write(state.join("portsentry.pid"), "0000000000\n").unwrap();
    let filler = tmpfs.fill();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    let line = d.wait_for("writing the ban journal", Duration::from_secs(5));
    assert!(line.contains("No space left"), "{line}");
    d.wait_for("starting anyway", Duration::from_secs(5));
    // (The writer's tries fill the last page's slack, then cut it back.)
    let kept = journal::read(&file).unwrap().unwrap().store.len();
    assert!(kept > 0, "{kept} bans: the lifts cannot all be on disk yet");
    std::fs::remove_file(&filler).unwrap();
    d.wait_for("is written again", Duration::from_secs(5));
    assert!(d.stop().success());
    assert_eq!(
        journal::read(&file).unwrap().unwrap().store.len(),
        0,
        "the lifts are on disk"
    );
}

/// `portsentry ban` without a daemon, over a scan ban, when the blocked files cannot be
/// written: the replacement is in the journal, so the scan ban's undo steps run (and
/// the command still reports the blocked files). They were skipped with the error, and
/// nothing ran them after: the scan ban's kill commands stayed in force for good.
#[test]
fn a_ban_without_the_daemon_undoes_the_scan_ban_it_replaces_whatever_the_blocked_files() {
    let wd = Workdir::new();
    let order = wd.path("order").display().to_string();
    let conf = wd.config(
        "lo",
        &format!("UNKILL_RUN_CMD=\"echo unrun $TARGET$ >> {order}\"\n"),
    );
    // The blocked files under a regular file: never written.
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(wd.path("a-file"), "").unwrap();
    let blocked = wd.path("a-file").join("portsentry.blocked");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("BLOCKED_FILE=") {
                format!("BLOCKED_FILE=\"{}\"\n", blocked.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&conf, text).unwrap();
    portsentry_tests::scenario::write_journal(
        &wd.path("state"),
        ["192.0.2.44/32".parse().unwrap()],
    );
    let (ok, out, err) = wd.cli(&["ban", "192.0.2.44"]);
    assert!(!ok, "the blocked files could not be written: {out}{err}");
    assert!(
        wd.read("order").contains("unrun 192.0.2.44"),
        "the scan ban's undo did not run: {out}{err}"
    );
}
