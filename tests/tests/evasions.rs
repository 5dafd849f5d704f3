//! End to end: the scans PortSentry 1.2 (and the previous release) let through, run with
//! real nmap from the attacker namespace against the daemon with its default
//! detection settings: fragmented SYN scans (`-f`, `--mtu 8`, `16` and `24`), ACK,
//! Window and Maimon scans over IPv4 and IPv6, an IP-protocol scan, masscan at 10,000
//! packets a second, and a horizontal scan (one port on five of the server's
//! addresses). nmap 7.93 refuses `-f` with `-6` ("fragmentation [is] not supported with
//! IPv6"), so the IPv6 fragmented SYN scan is sent as nmap `-f` would send it (8-byte
//! fragments) from crafted frames. Each is detected, typed in the attackalert line, and
//! its source banned. With SCAN_TRIGGER=3, a horizontal scan is banned at its third
//! address and a slow scan (`--scan-delay 1s`) at its third port. A client whose stray
//! segments with ACK go to one port that no longer listens is counted and never banned.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    time::Duration,
};

use portsentry_tests::{
    crafted::{checksummed, even_pieces, fragments},
    daemon::{Daemon, Workdir, wait_until},
    frames::{Frame, flags::SYN},
    netns::{TestNet, tcp_connect},
    require_kernel,
    scenario::{check_config, counter, history_has, nmap, nmap_hosts, status, wait_banned},
    wire::{Wire, mac_of},
};

/// Waits for `src`'s ban and checks its attackalert line (`text`: the scan type, `to`:
/// what follows "to ") and its XDP block line.
fn assert_caught(files: &Workdir, d: &Daemon, src: IpAddr, text: &str, to: &str) {
    wait_banned(files, d, src);
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

#[test]
fn evasive_scans_are_detected_typed_and_banned() {
    require_kernel!();
    let net = TestNet::new(11);
    let more_server = net.add_server_v4(&[101, 102, 103, 104]);
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
        (
            "-sS --mtu 8",
            a4[7],
            s4,
            "TCP tiny fragment scan",
            "TCP port: ",
        ),
        // 24 bytes carry nmap's whole SYN header (20 and an MSS option): typed by its flags.
        (
            "-sS --mtu 24",
            a4[8],
            s4,
            "TCP SYN/Normal scan",
            "TCP port: ",
        ),
        ("-sA", a4[2], s4, "TCP ACK scan", "TCP port: "),
        ("-sW", a4[3], s4, "TCP ACK scan", "TCP port: "),
        ("-sM", a4[4], s4, "TCP FIN/ACK (Maimon) scan", "TCP port: "),
        ("-sA", a6[0], s6, "TCP ACK scan", "TCP port: "),
        ("-sO", a4[5], s4, "IP protocol scan", "protocol: "),
        // SCTP INIT: this host serves no SCTP, so one protocol is enough.
        ("-sY", a4[11], s4, "SCTP scan", "protocol: 132"),
    ];
    for (scan, src, dst, text, to) in scans {
        // -sO takes protocol numbers: ones nothing here serves.
        let ports = if scan == "-sO" { "150-160" } else { "20-30" };
        let before = counter(&status(&files), "pass_probe");
        nmap(&net, scan, src, dst, ports);
        assert_caught(&files, &d, src, text, to);
        if ["-sA", "-sW", "-sM"].contains(&scan) && src.is_ipv4() {
            // Banned by the program at its third port (ACK_SCAN_PORTS): two let through.
            // (The IPv6 row's source is on the server's own /64, counted and banned by
            // address: the daemon's ban.)
            let passed = counter(&status(&files), "pass_probe") - before;
            assert_eq!(
                passed, 2,
                "{scan} from {src}: {passed} segments let through"
            );
        }
    }

    // IPv6, as nmap -f splits a SYN (8-byte fragments), to ports 20-30: each first
    // fragment carries the ports only.
    let wire = Wire::open(
        &net.attacker,
        &net.attacker_if,
        (&net.server, &net.server_if),
    );
    for (i, port) in (20..=30u16).enumerate() {
        let whole = checksummed(Frame::tcp(a6[1], s6, port, SYN).build());
        for f in fragments(&whole, &even_pieces(20, 8), 7000 + i as u32) {
            wire.send(&f);
        }
    }
    assert_caught(&files, &d, a6[1], "TCP tiny fragment scan", "TCP port: ");

    // masscan at 10,000 packets a second over 1,000 ports (it writes frames itself: the
    // server's MAC is its router).
    let src = a4[9];
    let mac = mac_of(&net.server, &net.server_if)
        .map(|b| format!("{b:02x}"))
        .join(":");
    net.attacker.exec(&format!(
        "masscan {s4} -p1-1000 --rate 10000 -e {iface} --source-ip {src} --router-mac {mac} \
         --wait 1 2>&1",
        iface = net.attacker_if
    ));
    assert_caught(&files, &d, src, "TCP SYN/Normal scan", "TCP port: ");

    // Horizontal: port 23 on five of the server's addresses.
    let src = a4[10];
    let hosts = [vec![s4], more_server.clone()].concat();
    nmap_hosts(&net, "-sS", src, &hosts, "23");
    assert_caught(&files, &d, src, "TCP SYN/Normal scan", "TCP port: 23");
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
    // Sent again until counted: on a loaded machine the refresh may come later.
    assert!(
        wait_until(Duration::from_secs(15), || {
            net.attacker.exec(&format!(
                "hping3 -q -n -A -a {client} -p 80 -s 40000 -c 20 -i u20000 {s4} 2>&1 || true"
            ));
            wait_until(Duration::from_secs(2), || {
                status(&files)["counters"]["pass_probe"].as_u64().unwrap() >= before + 20
            })
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

/// With SCAN_TRIGGER=3: a horizontal scan (port 23 on one address of the server after
/// another) is banned at the third address, and a slow scan (`--scan-delay 1s` over 4
/// ports) at its third port.
#[test]
fn slow_and_horizontal_scans_reach_the_trigger() {
    require_kernel!();
    let net = TestNet::new(1);
    let hosts = [
        vec![net.server_v4],
        net.add_server_v4(&[101, 102, 103, 104]),
    ]
    .concat();
    let files = Workdir::new();
    let conf = files.config(&net.server_if, "SCAN_TRIGGER=\"3\"\n");
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
    let src = net.attacker_v4[0];
    // One SYN each (no retransmission within 300 ms), address after address.
    let probe = |dst: IpAddr| {
        let _ = net
            .attacker
            .enter(|| tcp_connect(src, SocketAddr::new(dst, 23), Duration::from_millis(300)));
    };
    for dst in &hosts[..2] {
        probe(*dst);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !history_has(&files, src),
        "banned before the third address: {}",
        files.read("portsentry.history")
    );
    probe(hosts[2]);
    assert_caught(&files, &d, src, "TCP SYN/Normal scan", "TCP port: 23");
    let st = status(&files);
    assert_eq!(
        st["counters"]["kernel_banned"].as_u64(),
        Some(1),
        "the third address's probe should have been banned by the program: {}",
        st["counters"]
    );
    // The fourth and fifth addresses: dropped as banned.
    for dst in &hosts[3..] {
        probe(*dst);
    }

    // Slow: one port a second, in order (-r): 20, 21, then 22 reaches the trigger.
    let src = net.attacker_v4[1];
    nmap(&net, "-sS -r --scan-delay 1s", src, net.server_v4, "20-23");
    assert_caught(&files, &d, src, "TCP SYN/Normal scan", "TCP port: ");
    let alert = d.wait_for(&format!("from host: {src}/{src}"), Duration::from_secs(1));
    assert!(
        alert.ends_with("TCP port: 22"),
        "not the third port: {alert}"
    );
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
    assert_eq!(code, Some(i32::from(portsentry_user::cli::EXIT_CONFIG)));
    assert!(
        err.contains(&format!("{}:2:", conf.display())) && err.contains("ACK_SCAN_PORTS"),
        "{err}"
    );
}
