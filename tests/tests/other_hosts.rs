//! Packets for other hosts: a SYN this host only passes on (a router's, here routed
//! through the server and dropped there unanswered, its forwarding off) is no probe,
//! and its client is never banned. PortSentry and psad see only what is delivered to the
//! host; an XDP program sees what the interface receives, so it looks at the
//! destination: this host's addresses (`PS_LOCAL_FILTER`), an address added while it
//! runs, and a range a local route gives it (`ip route add local`) are watched.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    time::Duration,
};

use portsentry_tests::{
    daemon::{Workdir, wait_until},
    netns::{TestNet, tcp_connect},
    require_kernel,
    scenario::{counter, history_has, reaches, start, status, wait_banned},
};

/// A SYN from `src` (the attacker's) to `dst`.
fn syn(net: &TestNet, src: IpAddr, dst: SocketAddr) {
    let _ = net
        .attacker
        .enter(|| tcp_connect(src, dst, Duration::from_millis(300)));
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[test]
fn a_probe_for_another_host_is_not_counted() {
    require_kernel!();
    let net = TestNet::new(1);
    let (v4, v6, other) = (net.attacker_v4[0], net.attacker_v6[0], net.attacker_v4[1]);
    // Other hosts' networks, routed through the server.
    net.attacker.exec(&format!(
        "ip route add 198.51.100.0/24 via {}",
        net.server_v4
    ));
    net.attacker.exec(&format!(
        "ip -6 route add 2001:db8:ff::/64 via {}",
        net.server_v6
    ));
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    for port in [23, 25, 110, 143] {
        syn(&net, v4, at("198.51.100.9", port));
        syn(&net, v6, at("2001:db8:ff::9", port));
    }
    std::thread::sleep(Duration::from_secs(2));
    let st = status(&wd);
    assert_eq!(
        counter(&st, "pass_probe"),
        0,
        "probes for other hosts were counted: {st}"
    );
    assert!(!history_has(&wd, v4) && !history_has(&wd, v6));
    assert!(reaches(&net, v4), "the client routed through the server");
    // An address the server takes while running is watched within seconds.
    net.server.exec(&format!(
        "ip addr add 198.51.100.77/32 dev {}",
        net.server_if
    ));
    assert!(
        wait_until(Duration::from_secs(10), || {
            syn(&net, other, at("198.51.100.77", 23));
            history_has(&wd, other)
        }),
        "a probe of the server's new address was not acted on; log:\n{}",
        d.lines().join("\n")
    );
    // And the server's own address, as always.
    syn(&net, v4, SocketAddr::new(net.server_v4, 23));
    wait_banned(&wd, &d, v4);
    assert!(d.stop().success());
}

/// A range a local route gives this host (AnyIP) is answered on whole: the filter of
/// single addresses cannot hold it, so every destination is watched, once the route is
/// added while the daemon runs and at a start that finds it.
#[test]
fn a_range_this_host_answers_on_is_watched() {
    require_kernel!();
    let net = TestNet::new(1);
    let (first, second) = (net.attacker_v4[0], net.attacker_v4[1]);
    net.attacker.exec(&format!(
        "ip route add 192.0.2.128/25 via {}",
        net.server_v4
    ));
    let wd = Workdir::new();
    wd.config(&net.server_if, "");
    let d = start(&net, &wd);
    // Not this host's yet: not counted.
    syn(&net, second, at("192.0.2.130", 23));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!history_has(&wd, second));
    net.server.exec("ip route add local 192.0.2.128/25 dev lo");
    assert!(
        wait_until(Duration::from_secs(15), || {
            syn(&net, second, at("192.0.2.130", 23));
            history_has(&wd, second)
        }),
        "a probe of a range routed to this host while running was not acted on; log:\n{}",
        d.lines().join("\n")
    );
    assert!(d.stop().success());
    let d = start(&net, &wd);
    syn(&net, first, at("192.0.2.140", 23));
    wait_banned(&wd, &d, first);
    assert!(d.stop().success());
}
