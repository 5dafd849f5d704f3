//! End to end: the real daemon in a server namespace, real nmap scans from an attacker
//! namespace, checked through the daemon's log, history, blocked and hosts.deny files,
//! the order its commands ran in, and whether the attacker's packets still arrive.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpListener},
    path::Path,
    time::Duration,
};

use portsentry_tests::{
    daemon::{Daemon, Workdir, binary, wait_until},
    netns::{TestNet, tcp_connect},
    require_kernel,
    scenario::{history_has, nmap, wait_banned},
};
use portsentry_user::cli::EXIT_CONFIG;

/// Sends `count` SYNs to `port` with a forged source address (hping3 -a).
fn forged_syns(net: &TestNet, src: IpAddr, dst: IpAddr, port: u16, count: u32) {
    // hping3 exits 1 when nothing answers, as nothing does a forged source: read the
    // statistics line instead.
    let out = net.attacker.try_exec(&format!(
        "hping3 -q -n -S -a {src} -p {port} -c {count} -i u20000 {dst} 2>&1"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{count} packets transmitted")),
        "hping3 did not send: {text}"
    );
}

#[test]
fn nmap_scans_are_banned_with_their_type_and_actions_in_order() {
    require_kernel!();
    let net = TestNet::new(8);
    let files = Workdir::new();
    let ignored = net.attacker_v4[7];
    fs::write(
        files.path("portsentry.ignore"),
        format!("# test ignore file\n127.0.0.1/32\n{ignored}  # a trusted host\n"),
    )
    .unwrap();
    let conf = files.config(&net.server_if, "");
    let listener = net.server.enter(|| TcpListener::bind("[::]:80").unwrap());
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);

    let (s4, s6) = (net.server_v4, net.server_v6);
    let scans = [
        ("-sS", net.attacker_v4[0], s4, "TCP SYN/Normal scan", "TCP"),
        ("-sF", net.attacker_v4[1], s4, "TCP FIN scan", "TCP"),
        ("-sN", net.attacker_v4[2], s4, "TCP NULL scan", "TCP"),
        ("-sX", net.attacker_v4[3], s4, "TCP XMAS scan", "TCP"),
        ("-sU", net.attacker_v4[4], s4, "UDP scan", "UDP"),
        ("-sS", net.attacker_v6[0], s6, "TCP SYN/Normal scan", "TCP"),
    ];
    for (scan, src, dst, text, proto) in scans {
        nmap(&net, scan, src, dst, "20-30");
        wait_banned(&files, &d, src);
        let alert = d.wait_for(
            &format!("from host: {src}/{src} to {proto} port: "),
            Duration::from_secs(5),
        );
        assert!(
            alert.starts_with(&format!(
                "attackalert: {text} from host: {src}/{src} to {proto} port: "
            )),
            "{alert}"
        );
        d.wait_for(
            &format!("attackalert: Host {src} has been blocked via XDP drop"),
            Duration::from_secs(5),
        );
    }

    // Every ban has its history line in PortSentry's format, its hosts.deny line, and its
    // blocked-file line; the commands ran with the tokens substituted, route before run.
    let history = files.read("portsentry.history");
    let order = files.read("order");
    let deny = files.read("hosts.deny");
    for (_, src, _, _, proto) in scans {
        let mode = if proto == "TCP" { "atcp" } else { "audp" };
        let h: Vec<&str> = history
            .lines()
            .filter(|l| l.contains(&format!("/{src} ")))
            .collect();
        assert_eq!(h.len(), 1, "one history line for {src}: {history}");
        assert!(h[0].ends_with(&format!(" {proto} Blocked")), "{}", h[0]);
        // tcp_wrappers reads an IPv6 address in brackets.
        let host = if src.is_ipv6() {
            format!("[{src}]")
        } else {
            src.to_string()
        };
        assert!(deny.contains(&format!("ALL: {host} : DENY\n")), "{deny}");
        let route = order
            .find(&format!("route {src} "))
            .unwrap_or_else(|| panic!("no route for {src}: {order}"));
        let run = order
            .find(&format!("run {src} "))
            .unwrap_or_else(|| panic!("no run for {src}: {order}"));
        assert!(
            route < run,
            "KILL_ROUTE before KILL_RUN_CMD for {src}: {order}"
        );
        assert!(order.contains(&format!(" {mode}\n")), "{order}");
        // The blocked files follow the bans within a second.
        let blocked_file = format!("portsentry.blocked.{mode}");
        assert!(
            wait_until(Duration::from_secs(3), || files
                .read(&blocked_file)
                .contains(&format!("/{src} Port: "))),
            "{mode}: {}",
            files.read(&blocked_file)
        );
        // Within the daemon's log, the XDP ban came before the commands.
        let lines = d.lines();
        let pos = |needle: String| lines.iter().position(|l| l.contains(&needle)).unwrap();
        assert!(
            pos(format!("Host {src} has been blocked via XDP drop"))
                < pos(format!("Host {src} has been blocked via dropped route"))
        );
    }

    // Banned sources cannot reach the service; others can.
    net.attacker.enter(|| {
        let e = tcp_connect(
            net.attacker_v4[0],
            SocketAddr::new(s4, 80),
            Duration::from_millis(1500),
        )
        .expect_err("a banned source must not connect");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        let e = tcp_connect(
            net.attacker_v6[0],
            SocketAddr::new(s6, 80),
            Duration::from_millis(1500),
        )
        .expect_err("a banned source must not connect");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        // A client of the listening service, many times over, is never banned.
        for _ in 0..10 {
            tcp_connect(
                net.attacker_v4[6],
                SocketAddr::new(s4, 80),
                Duration::from_secs(2),
            )
            .expect("an unbanned client connects");
        }
    });

    // The ignored host scans the same ports and is never acted on.
    nmap(&net, "-sS", ignored, s4, "20-30");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!history_has(&files, ignored), "ignored host banned");
    assert!(
        !history_has(&files, net.attacker_v4[6]),
        "a service client was banned"
    );
    assert!(
        !d.has_line(&format!("from host: {ignored}/")),
        "ignored host reported"
    );

    let status = d.stop();
    assert!(status.success(), "{status}");
    drop(listener);
}

#[test]
fn kill_run_cmd_first_runs_the_command_before_the_blocking() {
    require_kernel!();
    let net = TestNet::new(0);
    let files = Workdir::new();
    let conf = files.config(&net.server_if, "KILL_RUN_CMD_FIRST=\"1\"\n");
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
    let src = net.attacker_v4[0];
    nmap(&net, "-sS", src, net.server_v4, "20-22");
    wait_banned(&files, &d, src);
    let order = files.read("order");
    let run = order.find(&format!("run {src} ")).expect("run line");
    let route = order.find(&format!("route {src} ")).expect("route line");
    assert!(run < route, "KILL_RUN_CMD before KILL_ROUTE: {order}");
    let lines = d.lines();
    let pos = |needle: String| lines.iter().position(|l| l.contains(&needle)).unwrap();
    assert!(
        pos(format!("External command run for host: {src}"))
            < pos(format!("Host {src} has been blocked via XDP drop"))
    );
    assert!(d.stop().success());
}

#[test]
fn report_only_logs_and_records_but_does_not_block() {
    require_kernel!();
    let net = TestNet::new(0);
    let files = Workdir::new();
    let conf = files.config(&net.server_if, "");
    // BLOCK_TCP=0 overrides the 1 above? No: duplicate keys are errors. Write afresh.
    let text = fs::read_to_string(&conf)
        .unwrap()
        .replace("BLOCK_TCP=\"1\"", "BLOCK_TCP=\"0\"");
    fs::write(&conf, text).unwrap();
    let listener = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
    let src = net.attacker_v4[0];
    nmap(&net, "-sS", src, net.server_v4, "20-22");
    wait_banned(&files, &d, src);
    d.wait_for(
        "attackalert: Ignoring TCP response per configuration file setting.",
        Duration::from_secs(5),
    );
    assert!(
        !d.has_line("has been blocked via"),
        "report-only must not block"
    );
    assert_eq!(files.read("order"), "", "report-only runs no command");
    net.attacker.enter(|| {
        tcp_connect(
            src,
            SocketAddr::new(net.server_v4, 80),
            Duration::from_secs(2),
        )
        .expect("a reported (not blocked) host still connects");
    });
    assert!(d.stop().success());
    drop(listener);
}

#[test]
fn check_config_prints_the_effective_settings() {
    let stock = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../portsentry-user/testdata/debian/portsentry.conf");
    let out = std::process::Command::new(binary())
        .args(["check-config", "-c"])
        .arg(&stock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("TCP mode:      advanced; 1021 watched ports: 1-112,114-138,140-1023"),
        "{text}"
    );
    assert!(
        text.contains("actions on a TCP scan (BLOCK_TCP=0)"),
        "{text}"
    );
    assert!(text.contains("nothing more: report only"), "{text}");
    assert!(text.contains("127.0.0.0/8"), "{text}");

    // A bad file: the error names the file and line, exit status 1.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.conf");
    fs::write(&bad, "TCP_PORTS=\"1,2\"\nBLOCK_TCP=\"7\"\n").unwrap();
    let out = std::process::Command::new(binary())
        .args(["check-config", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(i32::from(EXIT_CONFIG)), "{err}");
    assert!(err.contains(&format!("{}:2:", bad.display())), "{err}");
    assert!(err.contains("BLOCK_TCP"), "{err}");
}

/// `portsentry run` on a configuration that cannot be used ends with exit status 78
/// (EX_CONFIG), naming the file and line; the systemd unit does not restart on it, as a
/// restart would read the same files. Other failures end with 1, which it restarts on,
/// within a start limit a crash loop reaches.
#[test]
fn run_ends_with_ex_config_on_a_configuration_error_and_the_unit_restarts_on_no_such() {
    let files = Workdir::new();
    let run = |conf: &Path| {
        let out = std::process::Command::new(binary())
            .args(["run", "-c"])
            .arg(conf)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let config = i32::from(EXIT_CONFIG);
    // A bad value.
    let conf = files.config("lo", "BLOCK_TCP=\"7\"\n");
    let lines = fs::read_to_string(&conf).unwrap().lines().count();
    let (code, err) = run(&conf);
    assert_eq!(code, Some(config), "{err}");
    assert!(
        err.contains(&format!("{}:{lines}:", conf.display())),
        "{err}"
    );
    // No interface to watch: the line that left it empty.
    let conf = files.config("lo", "INTERFACES=\"\"\n");
    let (code, err) = run(&conf);
    assert_eq!(code, Some(config), "{err}");
    assert!(
        err.contains(&format!(
            "{}:{lines}: no interface to watch",
            conf.display()
        )),
        "{err}"
    );
    // A malformed ignore file.
    fs::write(
        files.path("portsentry.ignore"),
        "10.0.0.0/8\nnot-an-address\n",
    )
    .unwrap();
    let conf = files.config("lo", "");
    let (code, err) = run(&conf);
    assert_eq!(code, Some(config), "{err}");
    assert!(
        err.contains(&format!("{}:2:", files.path("portsentry.ignore").display())),
        "{err}"
    );
    fs::write(files.path("portsentry.ignore"), "").unwrap();
    // Not the configuration: a state directory that cannot be made (a file is in its
    // place). Restarted on, as a passing cause (a full disk, a mount not yet there).
    fs::write(files.path("state"), "").unwrap();
    let (code, err) = run(&files.config("lo", ""));
    assert_eq!(code, Some(1), "{err}");

    // The unit restarts on failure, but not on 78, and gives up on a crash loop: its
    // start limit counts more starts than a minute of 5 s restarts makes, and fewer than
    // its interval holds.
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/portsentry.service"),
    )
    .unwrap();
    let key = |k: &str| -> String {
        let values: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .collect();
        assert_eq!(values.len(), 1, "{k} set once in the unit: {values:?}");
        values[0].to_owned()
    };
    let secs = |v: String| -> u64 { v.trim_end_matches('s').parse().unwrap() };
    assert_eq!(key("Restart"), "on-failure");
    assert!(
        key("RestartPreventExitStatus")
            .split_whitespace()
            .any(|s| s == EXIT_CONFIG.to_string()),
        "the unit restarts on a configuration error"
    );
    let (interval, burst, every) = (
        secs(key("StartLimitIntervalSec")),
        secs(key("StartLimitBurst")),
        secs(key("RestartSec")),
    );
    assert!(
        burst * every < interval && burst * every <= 60,
        "a crash loop never reaches the start limit ({burst} starts in {interval} s, one every \
         {every} s)"
    );
}

#[test]
fn sighup_reloads_the_ignore_list_and_keeps_the_old_config_on_error() {
    require_kernel!();
    let net = TestNet::new(2);
    let files = Workdir::new();
    fs::write(files.path("portsentry.ignore"), "127.0.0.1/32\n").unwrap();
    let conf = files.config(&net.server_if, "");
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);

    // Trust the first attacker address from now on.
    let trusted = net.attacker_v4[0];
    fs::write(
        files.path("portsentry.ignore"),
        format!("127.0.0.1/32\n{trusted}/32\n"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for(
        "configuration and ignore list reloaded",
        Duration::from_secs(5),
    );
    nmap(&net, "-sS", trusted, net.server_v4, "20-22");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !history_has(&files, trusted),
        "a newly ignored host was banned"
    );

    // A broken ignore file is rejected with its line; the old list stays in force.
    fs::write(
        files.path("portsentry.ignore"),
        "127.0.0.1/32\nnot-an-address\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let line = d.wait_for("reload rejected", Duration::from_secs(5));
    assert!(line.contains("portsentry.ignore:2:"), "{line}");
    nmap(&net, "-sS", trusted, net.server_v4, "23-25");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !history_has(&files, trusted),
        "the old ignore list must stay in force"
    );

    // An ignore file gone (an editor's rename, a typo) is rejected too: it would leave
    // only loopback and this host's addresses protected. (It was reloaded as an empty
    // list, with nothing logged but "reloaded".)
    fs::remove_file(files.path("portsentry.ignore")).unwrap();
    d.signal(libc::SIGHUP);
    let line = d.wait_for("does not exist", Duration::from_secs(5));
    assert!(
        line.contains("reload rejected") && line.contains("portsentry.ignore"),
        "{line}"
    );
    nmap(&net, "-sS", trusted, net.server_v4, "26-28");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !history_has(&files, trusted),
        "the old ignore list must stay in force"
    );
    fs::write(
        files.path("portsentry.ignore"),
        format!("127.0.0.1/32\n{trusted}/32\n"),
    )
    .unwrap();

    // A broken configuration is rejected too; scanning still works with the old one.
    let good = fs::read_to_string(&conf).unwrap();
    fs::write(&conf, format!("{good}NO_SUCH_KEY=\"1\"\n")).unwrap();
    d.signal(libc::SIGHUP);
    let line = d.wait_for("NO_SUCH_KEY", Duration::from_secs(5));
    assert!(line.contains("reload rejected"), "{line}");
    let other = net.attacker_v4[1];
    nmap(&net, "-sS", other, net.server_v4, "20-22");
    wait_banned(&files, &d, other);
    assert!(d.stop().success());
}

/// A reload that moves BLOCKED_FILE writes every ban in force to the new files.
#[test]
fn a_reload_moves_the_blocked_files() {
    require_kernel!();
    let net = TestNet::new(1);
    let files = Workdir::new();
    let conf = files.config(&net.server_if, "");
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
    let first = net.attacker_v4[0];
    nmap(&net, "-sS", first, net.server_v4, "20-22");
    wait_banned(&files, &d, first);
    let listed = |file: &str, ip: IpAddr| {
        fs::read_to_string(files.path(file))
            .unwrap_or_default()
            .contains(&format!("/{ip} Port: "))
    };
    assert!(wait_until(Duration::from_secs(5), || listed(
        "portsentry.blocked.atcp",
        first
    )));

    let moved = files.path("moved.blocked");
    files.config(
        &net.server_if,
        &format!("BLOCKED_FILE=\"{}\"\n", moved.display()),
    );
    d.signal(libc::SIGHUP);
    d.wait_for(
        "configuration and ignore list reloaded",
        Duration::from_secs(5),
    );
    assert!(
        wait_until(Duration::from_secs(5), || listed(
            "moved.blocked.atcp",
            first
        )),
        "the ban in force, in the new file"
    );
    let second = net.attacker_v4[1];
    nmap(&net, "-sS", second, net.server_v4, "20-22");
    wait_banned(&files, &d, second);
    assert!(
        wait_until(Duration::from_secs(5), || listed(
            "moved.blocked.atcp",
            second
        )),
        "a new ban, in the new file"
    );
    assert!(!listed("portsentry.blocked.atcp", second));
    assert!(d.stop().success());
}

/// Forged probes "from" an address of this host are never acted on, including an
/// address added while the daemon runs.
#[test]
fn this_hosts_own_addresses_are_never_banned() {
    require_kernel!();
    let net = TestNet::new(0);
    let files = Workdir::new();
    let conf = files.config(&net.server_if, "");
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
    // An address the server gains after start-up (the daemon re-reads them every second).
    net.server
        .exec(&format!("ip addr add 192.0.2.77/32 dev {}", net.server_if));
    std::thread::sleep(Duration::from_millis(2500));
    let forged: IpAddr = "192.0.2.77".parse().unwrap();
    let server_own = net.server_v4;
    for src in [forged, server_own] {
        forged_syns(&net, src, net.server_v4, 22, 5);
    }
    // A forged source that is not the server's own is banned, proving the probes land.
    let stranger: IpAddr = "192.0.2.99".parse().unwrap();
    forged_syns(&net, stranger, net.server_v4, 22, 5);
    wait_banned(&files, &d, stranger);
    assert!(
        !history_has(&files, forged),
        "an address of this host was banned"
    );
    assert!(
        !history_has(&files, server_own),
        "the server's own address was banned"
    );
    assert!(d.stop().success());
}
