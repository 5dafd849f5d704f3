//! SCAN_DETECTION="trw" end to end, between two namespaces: a client that connects to the
//! server's services and tries three closed watched ports (twice each) is never banned,
//! where PortSentry's trigger (SCAN_TRIGGER="0") bans it at its first; nmap's SYN scan
//! is banned by the program at its 4th closed port (3 probes let through), logged in
//! PortSentry's words, and cut off.

use std::{
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use portsentry_tests::{
    daemon::Workdir,
    netns::{TestNet, tcp_connect},
    require_kernel,
    scenario::{counter, history_has, nmap, start, status, wait_banned},
};

#[test]
fn a_client_is_spared_and_nmap_is_banned_at_its_fourth_closed_port() {
    require_kernel!();
    let net = TestNet::new(2);
    let wd = Workdir::new();
    wd.config(&net.server_if, "SCAN_DETECTION=\"trw\"\n");
    let _services = net
        .server
        .enter(|| [8080, 8081].map(|p| TcpListener::bind(("0.0.0.0", p)).unwrap()));
    let d = start(&net, &wd);
    let (client, scanner) = (net.attacker_v4[0], net.attacker_v4[1]);
    let connect = |src, port| {
        let dst = SocketAddr::new(net.server_v4, port);
        net.attacker
            .enter(|| tcp_connect(src, dst, Duration::from_millis(800)))
    };
    for port in [23, 24, 25] {
        for _ in 0..2 {
            assert!(
                connect(client, 8080).is_ok(),
                "the client reaches its service"
            );
            assert!(connect(client, port).is_err(), "port {port} is closed");
        }
        assert!(connect(client, 8081).is_ok());
    }
    let st = status(&wd);
    assert_eq!(
        counter(&st, "pass_probe"),
        6,
        "the client's probes were counted"
    );
    assert!(connect(client, 8080).is_ok(), "the client is not banned");
    assert!(!history_has(&wd, client));
    // nmap over ports 1-200 (all watched but 113 and 139).
    nmap(&net, "-sS", scanner, net.server_v4, "1-200");
    wait_banned(&wd, &d, scanner);
    let after = status(&wd);
    assert_eq!(
        counter(&after, "pass_probe") - counter(&st, "pass_probe"),
        3,
        "three closed ports let through, the fourth banned"
    );
    assert_eq!(counter(&after, "kernel_banned"), 1, "banned by the program");
    let alert =
        format!("attackalert: TCP SYN/Normal scan from host: {scanner}/{scanner} to TCP port: ");
    assert!(
        d.lines().iter().any(|l| l.contains(&alert)),
        "no alert line {alert:?}:\n{}",
        d.lines().join("\n")
    );
    assert!(connect(scanner, 8080).is_err(), "the scanner is cut off");
    assert!(connect(client, 8080).is_ok(), "the client still is not");
    assert!(!history_has(&wd, client));
    assert!(d.stop().success());
}
