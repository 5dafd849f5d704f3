//! End to end: the real daemon in a server namespace, real nmap scans from an attacker
//! namespace, checked through the daemon's log, history, blocked and hosts.deny files,
//! the order its commands ran in, and whether the attacker's packets still arrive.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use portsentry_tests::{
    daemon::{Daemon, binary, wait_until},
    netns::{TestNet, tcp_connect},
    require_kernel,
};

struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        Files { _dir: dir, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// A configuration for `iface` with commands that record their order.
    fn config(&self, iface: &str, extra: &str) -> PathBuf {
        let order = self.path("order").display().to_string();
        let text = format!(
            "# written by the test\n\
             INTERFACES=\"{iface}\"\n\
             XDP_MODE=\"native\"\n\
             STATE_DIR=\"{state}\"\n\
             HISTORY_FILE=\"{history}\"\n\
             BLOCKED_FILE=\"{blocked}\"\n\
             HOSTS_DENY_FILE=\"{deny}\"\n\
             IGNORE_FILE=\"{ignore}\"\n\
             BLOCK_TCP=\"1\"\n\
             BLOCK_UDP=\"1\"\n\
             KILL_ROUTE=\"echo route $TARGET$ $PORT$ $MODE$ >> {order}\"\n\
             KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n\
             KILL_RUN_CMD=\"echo run $TARGET$ $PORT$ $MODE$ >> {order}\"\n\
             SCAN_TRIGGER=\"0\"\n\
             SYSLOG=\"0\"\n\
             {extra}",
            state = self.path("state").display(),
            history = self.path("portsentry.history").display(),
            blocked = self.path("portsentry.blocked").display(),
            deny = self.path("hosts.deny").display(),
            ignore = self.path("portsentry.ignore").display(),
        );
        let path = self.path("portsentry.conf");
        fs::write(&path, text).unwrap();
        path
    }
}

/// Runs nmap from `src` in the attacker namespace against `dst`.
fn nmap(net: &TestNet, scan: &str, src: IpAddr, dst: IpAddr, ports: &str) {
    let six = if dst.is_ipv6() { "-6" } else { "" };
    let out = net.attacker.try_exec(&format!(
        "nmap {six} -n -Pn {scan} -e {iface} -S {src} -p {ports} --max-retries 0 \
         --host-timeout 20s -T4 {dst}",
        iface = net.attacker_if
    ));
    assert!(
        out.status.success(),
        "nmap {scan} from {src} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn history_has(files: &Files, ip: IpAddr) -> bool {
    files
        .read("portsentry.history")
        .lines()
        .any(|l| l.contains(&format!("/{ip} Port: ")))
}

fn wait_banned(files: &Files, d: &Daemon, ip: IpAddr) {
    assert!(
        wait_until(Duration::from_secs(15), || history_has(files, ip)),
        "{ip} was not banned; log:\n{}\nhistory:\n{}",
        d.lines().join("\n"),
        files.read("portsentry.history")
    );
}

#[test]
fn nmap_scans_are_banned_with_their_type_and_actions_in_order() {
    require_kernel!();
    let net = TestNet::new(8);
    let files = Files::new();
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
        assert!(deny.contains(&format!("ALL: {src} : DENY\n")), "{deny}");
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
        let blocked = files.read(&format!("portsentry.blocked.{mode}"));
        assert!(
            blocked.contains(&format!("/{src} Port: ")),
            "{mode}: {blocked}"
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
    let files = Files::new();
    fs::write(files.path("portsentry.ignore"), "").unwrap();
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
    let files = Files::new();
    fs::write(files.path("portsentry.ignore"), "").unwrap();
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
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{}:2:", bad.display())), "{err}");
    assert!(err.contains("BLOCK_TCP"), "{err}");
}
