//! End to end: the scans PortSentry 1.2 (and the previous release) let through, run with
//! real nmap from the attacker namespace against the daemon with its default
//! detection settings: fragmented SYN scans (`-f`, `--mtu 16`; nmap fragments IPv4
//! only: IPv6 fragments are sent by `stack_differential.rs`), ACK, Window and Maimon
//! scans over IPv4 and IPv6, and an IP-protocol scan. Each is detected, typed in the
//! attackalert line, and its source banned. A client whose stray segments with ACK go
//! to one port that no longer listens is counted and never banned.

use std::{
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use portsentry_tests::{
    daemon::{Daemon, Workdir, wait_until},
    netns::{TestNet, tcp_connect},
    require_kernel,
    scenario::{check_config, history_has, nmap, status, wait_banned},
};

#[test]
fn evasive_scans_are_detected_typed_and_banned() {
    require_kernel!();
    let net = TestNet::new(8);
    let files = Workdir::new();
    let conf = files.config(&net.server_if, "");
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
    let (s4, s6) = (net.server_v4, net.server_v6);
    let (a4, a6) = (&net.attacker_v4, &net.attacker_v6);
    // (nmap options, source, target, the attackalert's scan text, its "to ..." part)
    let scans = [
        ("-sS -f", a4[0], s4, "TCP tiny fragment scan", "TCP port: "),
        (
            "-sS --mtu 16",
            a4[1],
            s4,
            "TCP SYN/Normal scan",
            "TCP port: ",
        ),
        ("-sA", a4[2], s4, "TCP ACK scan", "TCP port: "),
        ("-sW", a4[3], s4, "TCP ACK scan", "TCP port: "),
        ("-sM", a4[4], s4, "TCP FIN/ACK (Maimon) scan", "TCP port: "),
        ("-sA", a6[0], s6, "TCP ACK scan", "TCP port: "),
        ("-sO", a4[5], s4, "IP protocol scan", "protocol: "),
    ];
    for (scan, src, dst, text, to) in scans {
        // -sO takes protocol numbers: ones nothing here serves.
        let ports = if scan == "-sO" { "150-160" } else { "20-30" };
        nmap(&net, scan, src, dst, ports);
        wait_banned(&files, &d, src);
        let alert = d.wait_for(
            &format!("attackalert: {text} from host: {src}/{src} to {to}"),
            Duration::from_secs(5),
        );
        assert!(alert.contains(text), "{alert}");
        d.wait_for(
            &format!("attackalert: Host {src} has been blocked via XDP drop"),
            Duration::from_secs(5),
        );
    }
    let st = status(&files);
    // The tiny fragment that reached the trigger was banned by the program itself, and
    // dropped as banned with everything after it.
    for c in ["kernel_banned", "pass_probe", "drop_banned"] {
        assert!(
            st["counters"][c].as_u64().unwrap() > 0,
            "{c}: {}",
            st["counters"]
        );
    }

    // A client of a service that went away: its late segments with ACK, all to that
    // one port, are counted as the ACK class and never ban it.
    let client = a4[6];
    let listener = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let conn = net.attacker.enter(|| {
        tcp_connect(client, SocketAddr::new(s4, 80), Duration::from_secs(2))
            .expect("the service accepts")
    });
    drop(listener);
    // The daemon refreshes the ports that listen every second.
    std::thread::sleep(Duration::from_millis(2500));
    let before = status(&files)["counters"]["pass_probe"].as_u64().unwrap();
    net.attacker.exec(&format!(
        "hping3 -q -n -A -a {client} -p 80 -s 40000 -c 20 -i u20000 {s4} 2>&1 || true"
    ));
    assert!(
        wait_until(Duration::from_secs(5), || {
            status(&files)["counters"]["pass_probe"].as_u64().unwrap() >= before + 20
        }),
        "the stray segments were not counted: {}",
        status(&files)["counters"]
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !history_has(&files, client),
        "a service's client was banned"
    );
    assert!(!d.has_line(&format!("from host: {client}/")));
    drop(conn);
}

/// `check-config` says what the evasion settings do, and refuses bad values at their
/// line.
#[test]
fn check_config_shows_the_evasion_settings() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("portsentry.conf");
    let check = |text: &str| check_config(&conf, text);
    let (code, out, err) = check("SYSLOG=\"0\"\n");
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "evasive shapes: dropped (BLOCK_EVASIVE_PACKETS)",
        "ACK class:     segments of no connection (nmap -sA, -sW, -sM) acted on at 3 distinct \
         ports",
        "IP protocols:  datagrams of protocols nothing here serves (nmap -sO) acted on at 3 \
         distinct protocols",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let (code, out, err) =
        check("BLOCK_EVASIVE_PACKETS=\"0\"\nACK_SCAN_PORTS=\"0\"\nPROTO_SCAN_PROTOCOLS=\"0\"\n");
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "evasive shapes: counted and passed (BLOCK_EVASIVE_PACKETS)",
        "ACK class:     not watched (ACK_SCAN_PORTS=0)",
        "IP protocols:  not watched (PROTO_SCAN_PROTOCOLS=0)",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let (code, _, err) = check("SYSLOG=\"0\"\nACK_SCAN_PORTS=\"65\"\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("{}:2:", conf.display())) && err.contains("ACK_SCAN_PORTS"),
        "{err}"
    );
}
