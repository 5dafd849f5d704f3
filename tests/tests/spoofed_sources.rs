//! Forged sources, end to end: a flood of SYNs from random forged sources is rate-limited
//! while a real scanner is still banned, the same flood filling the ban map evicts no ban,
//! and with VERIFY_SOURCES a forged source is never banned. The rate's seconds in the
//! kernel follow a step of the wall clock.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use portsentry_common::maps::{BanEntry, BanOrigin, KernelBan};
use portsentry_tests::{
    daemon::{Workdir, wait_until},
    netns::{TestNet, tcp_connect},
    require_kernel,
    scenario::{banned, bans, counter, probe, reaches, start, status},
};

/// A flood of SYNs to port 22 from random forged sources, for `secs` seconds.
fn random_flood(net: &TestNet, secs: u32) -> std::process::Child {
    net.attacker
        .command("timeout")
        .args([
            &secs.to_string(),
            "hping3",
            "-q",
            "-n",
            "-S",
            "-p",
            "22",
            "--rand-source",
            "--flood",
            &net.server_v4.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("hping3")
}

/// SYNs forged from `src` (hping3 -a).
fn forged(net: &TestNet, src: IpAddr, count: u32) {
    let _ = net.attacker.try_exec(&format!(
        "hping3 -q -n -S -a {src} -p 22 -c {count} -i u1000 {} 2>&1",
        net.server_v4
    ));
}

#[test]
fn spoofed_flood_is_rate_limited_and_a_real_scanner_is_still_banned() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let trusted = net.attacker_v4[1];
    fs::write(wd.path("portsentry.ignore"), format!("{trusted}\n")).unwrap();
    wd.config(
        &net.server_if,
        "MAX_BANS_PER_SEC=\"20\"\nKILL_ROUTE=\"\"\nKILL_RUN_CMD=\"\"\n",
    );
    let d = start(&net, &wd);
    let scanner = net.attacker_v4[0];

    let flood = random_flood(&net, 4);
    std::thread::sleep(Duration::from_millis(500));
    // Forged probes from a trusted host and from the server's own address, inside the
    // flood, and a real scanner.
    forged(&net, trusted, 50);
    forged(&net, net.server_v4, 50);
    for _ in 0..3 {
        probe(&net, scanner);
    }
    // The daemon answers its control socket during the flood.
    let t = Instant::now();
    let (ok, _, err) = wd.cli(&["ban", "198.51.100.200"]);
    assert!(ok, "{err}");
    let answer = t.elapsed();
    let flood = flood.wait_with_output().unwrap();
    assert!(flood.status.code().is_some());

    // The real scanner is banned (its repeated probes bypass the kernel's event budget).
    assert!(
        wait_until(Duration::from_secs(10), || banned(&wd, scanner)),
        "the real scanner was not banned"
    );
    assert!(!reaches(&net, scanner));
    let all = bans(&wd);
    assert!(!banned(&wd, trusted), "an ignored host was banned");
    assert!(
        !banned(&wd, net.server_v4),
        "the server's own address was banned"
    );
    assert!(
        answer < Duration::from_secs(5),
        "control answer took {answer:?}"
    );
    // MAX_BANS_PER_SEC holds: no second has more than 20 scan bans.
    let mut per_second = std::collections::BTreeMap::<String, u32>::new();
    for b in all.iter().filter(|b| b["origin"] == "scan") {
        *per_second
            .entry(b["since"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(!per_second.is_empty());
    assert!(per_second.values().all(|n| *n <= 20), "{per_second:?}");
    let st = status(&wd);
    let probes = st["counters"]["pass_probe"].as_u64().unwrap();
    assert!(probes > 1000, "the flood arrived: {}", st["counters"]);
    eprintln!(
        "flood: {probes} forged probes counted in 4 s ({:.0}/s), {} events throttled, {} scan \
         bans",
        probes as f64 / 4.0,
        st["counters"]["event_throttled"],
        per_second.values().sum::<u32>()
    );
    assert!(
        st["counters"]["pass_probe"].as_u64().unwrap() > 1000,
        "the flood arrived: {}",
        st["counters"]
    );
    // Memory stays bounded.
    let rss_kb: u64 = fs::read_to_string(format!("/proc/{}/status", d.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kb < 200 * 1024, "daemon RSS {rss_kb} kB");
    eprintln!("flood: daemon RSS {rss_kb} kB, control answer in {answer:?}");
    d.wait_for("MAX_BANS_PER_SEC (20) reached", Duration::from_secs(1));
    assert!(d.stop().success());
}

/// The program turns its clock into wall-clock seconds by an offset taken when its
/// settings were written; after a step of the wall clock (NTP setting it at boot) the
/// program and the daemon would count MAX_BANS_PER_SEC in different seconds, each
/// spending the whole budget. The daemon moves the program's offset with the step. (A
/// test cannot step the machine's clock: it writes an offset an hour off, the state a
/// step of an hour leaves.)
#[test]
fn the_budgets_seconds_follow_a_step_of_the_wall_clock() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    wd.config(
        &net.server_if,
        "MAX_BANS_PER_SEC=\"20\"\nKILL_ROUTE=\"\"\nKILL_RUN_CMD=\"\"\n",
    );
    let d = start(&net, &wd);
    let mut dp = portsentry_user::kernel::Dataplane::open_pinned(&wd.pin_dir).unwrap();
    let kb = dp.kernel_ban().unwrap().expect("PS_KBAN");
    let hour = 3_600_000_000_000u64;
    dp.write_kernel_ban(KernelBan {
        wall_offset_ns: kb.wall_offset_ns.wrapping_sub(hour),
        ..kb
    })
    .unwrap();
    d.wait_for(
        "the wall clock was stepped by 3600.0",
        Duration::from_secs(5),
    );
    let now = dp.kernel_ban().unwrap().unwrap();
    let offset = portsentry_user::kernel::configure::wall_offset_ns();
    assert!(
        offset.abs_diff(now.wall_offset_ns) < 10_000_000,
        "the program's offset {} against {offset}",
        now.wall_offset_ns
    );
    assert_eq!(
        KernelBan {
            wall_offset_ns: 0,
            ..now
        },
        KernelBan {
            wall_offset_ns: 0,
            ..kb
        },
        "the settings and the budget are kept"
    );
    assert!(d.stop().success());
}

/// A full ban map evicts no ban, and a ban that fails runs no kill command: with no ban
/// in force nothing would undo it (a route or a hosts.deny line kept for good).
#[test]
fn a_full_ban_map_never_evicts_a_ban() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    // The default kill commands: KILL_ROUTE and KILL_RUN_CMD write a line each to
    // `order`, KILL_HOSTS_DENY one to `hosts.deny`.
    wd.config(&net.server_if, "MAX_BANS=\"16\"\nMAX_BANS_PER_SEC=\"0\"\n");
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    let first = net.attacker_v4[0];
    probe(&net, first);
    assert!(wait_until(Duration::from_secs(5), || banned(&wd, first)));
    let flood = random_flood(&net, 2);
    flood.wait_with_output().unwrap();
    d.wait_for("is PS_BANS full?", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    let all = bans(&wd);
    assert_eq!(all.len(), 16, "the map holds 16 bans");
    assert!(banned(&wd, first), "the first ban was evicted");
    assert!(!reaches(&net, first));
    d.wait_for(
        "its XDP ban failed, and they would never be undone",
        Duration::from_secs(1),
    );
    assert!(d.stop().success());
    let banned_ips: Vec<String> = all
        .iter()
        .map(|b| {
            b["net"]
                .as_str()
                .unwrap()
                .trim_end_matches("/32")
                .to_owned()
        })
        .collect();
    let order = fs::read_to_string(wd.path("order")).unwrap();
    let deny = fs::read_to_string(wd.path("hosts.deny")).unwrap();
    let route_targets: Vec<&str> = order
        .lines()
        .filter_map(|l| l.strip_prefix("route "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(route_targets.len(), 16, "one KILL_ROUTE a ban:\n{order}");
    for target in order.lines().map(|l| l.split(' ').nth(1).unwrap()) {
        assert!(
            banned_ips.iter().any(|b| b == target),
            "a kill command ran against {target}, which is not banned"
        );
    }
    let denied: Vec<&str> = deny.lines().filter(|l| l.starts_with("ALL: ")).collect();
    assert_eq!(denied.len(), 16, "one hosts.deny line a ban:\n{deny}");
    for line in denied {
        assert!(
            banned_ips.iter().any(|b| line.contains(&format!(" {b} "))),
            "a hosts.deny line for a host not banned: {line}"
        );
    }
}

/// A scan ban the daemon decides (KILL_RUN_CMD_FIRST) that fails on a full map: the
/// KILL_RUN_CMD that ran first is undone, nothing else runs, and the scanner is not
/// remembered as acted on: its next probe, once a ban has ended, bans it.
#[test]
fn a_scanner_whose_ban_failed_is_banned_once_there_is_room() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    let order = wd.path("order");
    wd.config(
        &net.server_if,
        &format!(
            "MAX_BANS=\"16\"\nKILL_RUN_CMD_FIRST=\"1\"\n\
             UNKILL_RUN_CMD=\"echo unrun $TARGET$ >> {}\"\n",
            order.display()
        ),
    );
    let d = start(&net, &wd);
    let fill: Vec<String> = (10..26).map(|i| format!("203.0.113.{i}")).collect();
    for ip in &fill {
        let (ok, _, err) = wd.cli(&["ban", ip]);
        assert!(ok, "ban {ip}: {err}");
    }
    let scanner = net.attacker_v4[0];
    probe(&net, scanner);
    d.wait_for(
        &format!("Could not block host {scanner}"),
        Duration::from_secs(5),
    );
    d.wait_for(
        "its XDP ban failed, and they would never be undone",
        Duration::from_secs(2),
    );
    assert!(wait_until(Duration::from_secs(5), || {
        fs::read_to_string(&order).is_ok_and(|o| o.contains(&format!("unrun {scanner}")))
    }));
    assert_eq!(
        fs::read_to_string(&order).unwrap(),
        format!("run {scanner} 23 atcp\nunrun {scanner}\n"),
        "KILL_RUN_CMD ran first, then was undone; nothing else ran"
    );
    assert!(!banned(&wd, scanner));

    let (ok, _, err) = wd.cli(&["unban", &fill[0]]);
    assert!(ok, "unban: {err}");
    probe(&net, scanner);
    assert!(
        wait_until(Duration::from_secs(5), || banned(&wd, scanner)),
        "the scanner whose ban failed was not banned once there was room"
    );
    d.wait_for(
        &format!("Host {scanner} has been blocked via XDP drop"),
        Duration::from_secs(2),
    );
    assert!(wait_until(Duration::from_secs(5), || {
        fs::read_to_string(&order).is_ok_and(|o| o.contains(&format!("route {scanner}")))
    }));
    assert!(d.stop().success());
}

/// The kernel's deadline of a timed ban is monotonic, worked out from the wall clock when
/// the ban was written: after a step of the wall clock it is made that of the ban's end
/// on record again (a step back would end the ban early, while `status` says it is in
/// force), by the running daemon and by a start. (Simulated as above: the program's
/// offset an hour off and the ban's deadline an hour early, the state a step back of an
/// hour leaves.)
#[test]
fn timed_bans_follow_a_step_of_the_wall_clock() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    wd.config(&net.server_if, "KILL_ROUTE=\"\"\nKILL_RUN_CMD=\"\"\n");
    let d = start(&net, &wd);
    let (ok, _, err) = wd.cli(&["ban", "203.0.113.7", "--time", "2h"]);
    assert!(ok, "{err}");
    let host: ipnet::IpNet = "203.0.113.7/32".parse().unwrap();
    let mut dp = portsentry_user::kernel::Dataplane::open_pinned(&wd.pin_dir).unwrap();
    let on_record = dp.ban(&host).unwrap().expect("the ban in the kernel");
    assert_ne!(on_record.expires_ns, 0, "a timed ban");
    let hour = 3_600_000_000_000u64;
    let stepped = BanEntry {
        expires_ns: on_record.expires_ns - hour,
        ..on_record
    };
    let deadline = |dp: &portsentry_user::kernel::Dataplane| {
        dp.ban(&host).unwrap().expect("the ban").expires_ns
    };
    dp.insert_ban(&host, &stepped).unwrap();
    let kb = dp.kernel_ban().unwrap().expect("PS_KBAN");
    dp.write_kernel_ban(KernelBan {
        wall_offset_ns: kb.wall_offset_ns.wrapping_sub(hour),
        ..kb
    })
    .unwrap();
    d.wait_for(
        "and so do the kernel's deadlines of 1 timed bans",
        Duration::from_secs(5),
    );
    assert!(
        deadline(&dp).abs_diff(on_record.expires_ns) < 1_000_000_000,
        "the deadline {} against {} on record",
        deadline(&dp),
        on_record.expires_ns
    );
    // The same step while no daemon ran: the start writes the deadline again.
    assert!(d.stop().success());
    dp.insert_ban(&host, &stepped).unwrap();
    let d = start(&net, &wd);
    d.wait_for("active:", Duration::from_secs(10));
    assert!(
        deadline(&dp).abs_diff(on_record.expires_ns) < 1_000_000_000,
        "after a start: the deadline {} against {} on record",
        deadline(&dp),
        on_record.expires_ns
    );
    assert!(d.stop().success());
}

/// A failed ban releases only what its own response marked: a host whose UDP scan ran
/// KILL_RUN_CMD (BLOCK_UDP="2") and whose TCP scan's ban then failed (PS_BANS full) is
/// not run against again at its next UDP probe, while its next TCP probe still tries
/// the ban again.
#[test]
fn a_failed_ban_leaves_the_other_protocols_response_alone() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    wd.config(&net.server_if, "MAX_BANS=\"16\"\nBLOCK_UDP=\"2\"\n");
    let d = start(&net, &wd);
    for i in 10..26 {
        let ip = format!("203.0.113.{i}");
        let (ok, _, err) = wd.cli(&["ban", &ip]);
        assert!(ok, "ban {ip}: {err}");
    }
    let scanner = net.attacker_v4[0];
    let udp_probe = |port| {
        net.attacker.enter(|| {
            let s = UdpSocket::bind(SocketAddr::new(scanner, 0)).unwrap();
            let _ = s.send_to(b"probe", SocketAddr::new(net.server_v4, port));
        })
    };
    let runs = || wd.read("order").matches(&format!("run {scanner} ")).count();
    let failures = || {
        d.lines()
            .iter()
            .filter(|l| l.contains(&format!("Could not block host {scanner}")))
            .count()
    };
    udp_probe(20);
    assert!(
        wait_until(Duration::from_secs(5), || runs() == 1),
        "KILL_RUN_CMD did not run for the UDP scan"
    );
    probe(&net, scanner);
    assert!(wait_until(Duration::from_secs(5), || failures() == 1));
    // The UDP probe, then a TCP probe whose ban is tried (and fails) again.
    udp_probe(21);
    probe(&net, scanner);
    assert!(
        wait_until(Duration::from_secs(5), || failures() == 2),
        "the TCP scanner's ban was not tried again"
    );
    // Time for a second KILL_RUN_CMD to run, had the UDP probe been acted on again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        runs(),
        1,
        "order:\n{}\nlog:\n{}",
        wd.read("order"),
        d.lines().join("\n")
    );
    assert!(d.stop().success());
}

/// The bans the program makes while the daemon is behind (its events lost: the ring
/// buffer full) are taken over all the same: no ban of a source whose packets the
/// kernel drops stays unrecorded until the next start.
#[test]
fn kernel_bans_whose_event_was_lost_are_taken_over() {
    require_kernel!();
    let net = TestNet::new(0);
    let wd = Workdir::new();
    wd.config(
        &net.server_if,
        "MAX_BANS_PER_SEC=\"0\"\nKILL_ROUTE=\"\"\nKILL_RUN_CMD=\"\"\nKILL_HOSTS_DENY=\"\"\n",
    );
    let d = start(&net, &wd);
    // The program's bans the daemon has not taken over (it rewrites their origin).
    let kernel_only = || {
        portsentry_user::kernel::Dataplane::inspect_pinned(&wd.pin_dir)
            .unwrap()
            .bans()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.origin == BanOrigin::Kernel as u8)
            .count()
    };
    // The daemon stopped (SIGSTOP) while a flood of sources is banned at the trigger:
    // the ring buffer fills, and the rest of the bans' events are lost.
    d.signal(libc::SIGSTOP);
    for _ in 0..5 {
        random_flood(&net, 1).wait_with_output().unwrap();
        if counter(&status(&wd), "event_lost") > 0 {
            break;
        }
    }
    let lost = counter(&status(&wd), "event_lost");
    let unrecorded = kernel_only();
    d.signal(libc::SIGCONT);
    assert!(lost > 0, "no event was lost");
    assert!(unrecorded > 0, "no ban the daemon has not taken over");
    assert!(
        wait_until(Duration::from_secs(120), || kernel_only() == 0),
        "bans whose event was lost stay unrecorded ({} of {unrecorded})",
        kernel_only()
    );
    let recorded = status(&wd)["bans"].as_array().unwrap().len();
    assert!(recorded >= unrecorded, "{recorded} bans on record");
    d.wait_for(
        "whose event the ring buffer had no room for; responding now",
        Duration::from_secs(1),
    );
    d.wait_for(
        "looking for bans of the kernel whose event was lost",
        Duration::from_secs(1),
    );
    assert!(d.stop().success());
    // The count stays in the pinned maps: a start looks again only once more events
    // are lost than when it read the kernel's bans.
    let d = start(&net, &wd);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !d.has_line("whose event was lost"),
        "{}",
        d.lines().join("\n")
    );
    assert!(d.stop().success());
}

/// VERIFY_SOURCES: forged SYNs "from" a real host (the gateway, say) never ban it, since
/// the challenge goes to the real host, which answers it with a RST; a scanner that
/// completes the handshake (a connect scan) proves its address and is banned.
#[test]
fn verification_mode_never_bans_a_forged_source() {
    require_kernel!();
    let net = TestNet::new(2);
    let wd = Workdir::new();
    // Generic XDP: native XDP_TX on a veth needs NAPI on the peer (an XDP program
    // there); on a real NIC native mode answers the challenge itself.
    wd.config(&net.server_if, "VERIFY_SOURCES=\"1\"\nXDP_MODE=\"skb\"\n");
    let d = start(&net, &wd);
    let (real, gateway, half_open) = (net.attacker_v4[0], net.attacker_v4[1], net.attacker_v4[2]);

    // Probes forged from the gateway's address.
    forged(&net, gateway, 20);
    // A half-open SYN scan cannot be told from a forged one: not banned either.
    let out = net.attacker.try_exec(&format!(
        "nmap -n -Pn -sS -e {} -S {half_open} -p 20-30 --max-retries 0 -T4 {}",
        net.attacker_if, net.server_v4
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(1 host up)"));
    // A connect to a closed watched port completes against the challenge.
    let conn = net.attacker.enter(|| {
        tcp_connect(
            real,
            SocketAddr::new(net.server_v4, 23),
            Duration::from_secs(2),
        )
    });
    // The handshake completes against the challenge; the server's stack then resets
    // the connection (nothing listens), which may reach connect() first.
    assert!(
        conn.as_ref().map_or_else(
            |e| e.kind() == std::io::ErrorKind::ConnectionReset,
            |_| true
        ),
        "the challenge answers a connect: {conn:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || banned(&wd, real)),
        "a source that completed the handshake must be banned"
    );
    d.wait_for(
        &format!("Host {real} has been blocked via XDP drop"),
        Duration::from_secs(2),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!banned(&wd, gateway), "a forged source was banned");
    assert!(
        !banned(&wd, half_open),
        "an unverified half-open scan was banned"
    );
    let st = status(&wd);
    assert!(
        st["counters"]["tx_challenge"].as_u64().unwrap() >= 20,
        "{}",
        st["counters"]
    );
    assert!(st["counters"]["verified"].as_u64().unwrap() >= 1);
    assert!(d.stop().success());
}
