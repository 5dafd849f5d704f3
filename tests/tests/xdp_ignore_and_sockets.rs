//! Sources and ports the XDP program never counts, through BPF_PROG_TEST_RUN: ignored
//! sources (the ignore list), and ports with a local socket.

use std::net::{TcpListener, UdpSocket};

use portsentry_common::{Counter, ScanType, maps::BanEntry};
use portsentry_tests::{
    fixture::Fixture,
    frames::{Frame, flags::*},
    probe_asserts::{V4_DST, V4_SRC, V6_DST, assert_probe, assert_uncounted, ip, net, pairs},
    require_kernel,
    testrun::{XDP_DROP, XDP_PASS},
};

/// An ignore list replaced by another as large, with no network in common: there is no
/// room in the kernel's map for both at once (16,384 entries), so the old entries that
/// share no address with the new list go first. (The replacement failed, and a reload
/// with it was rejected, or a start with the previous run's list still pinned.)
#[test]
fn an_ignore_list_replaced_by_another_as_large_fits() {
    require_kernel!();
    let mut fx = Fixture::new();
    let hosts = |b: u8| -> Vec<ipnet::IpNet> {
        (0..10_000u32)
            .map(|i| net(&format!("10.{b}.{}.{}/32", i >> 8, i & 0xff)))
            .collect()
    };
    let (old, new) = (hosts(0), hosts(1));
    fx.dp.replace_ignore(&old, &[]).unwrap();
    fx.dp.replace_ignore(&new, &[]).unwrap();
    let dst = ip(V4_DST);
    assert_uncounted(
        &mut fx,
        &Frame::tcp(ip("10.1.39.15"), dst, 22, SYN).build(),
        ip("10.1.39.15"),
        Counter::PassIgnored,
    );
    fx.expect(
        &Frame::tcp(ip("10.0.39.15"), dst, 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    // Each host of the list replaced by the /24 around it (9,000 of each: both do not
    // fit, and every old entry lies in a new one): a host goes once its /24 is written.
    let around = |len: u8| -> Vec<ipnet::IpNet> {
        (0..9_000u32)
            .map(|i| net(&format!("11.{}.{}.1/{len}", i >> 8, i & 0xff)))
            .map(|n| n.trunc())
            .collect()
    };
    fx.dp.replace_ignore(&around(32), &[]).unwrap();
    fx.dp.replace_ignore(&around(24), &[]).unwrap();
    for src in ["11.5.7.1", "11.5.7.200", "11.35.39.9"] {
        assert_uncounted(
            &mut fx,
            &Frame::tcp(ip(src), dst, 22, SYN).build(),
            ip(src),
            Counter::PassIgnored,
        );
    }
    fx.expect(
        &Frame::tcp(ip("10.1.39.15"), dst, 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    // More than the map holds: an error that says so, not a half-written list.
    let too_many: Vec<ipnet::IpNet> = (0..16_385u32)
        .map(|i| net(&format!("10.2.{}.{}/32", i >> 8, i & 0xff)))
        .collect();
    let e = format!("{:#}", fx.dp.replace_ignore(&too_many, &[]).unwrap_err());
    assert!(e.contains("the kernel holds at most 16384"), "{e}");
    assert_uncounted(
        &mut fx,
        &Frame::tcp(ip("11.5.7.200"), dst, 22, SYN).build(),
        ip("11.5.7.200"),
        Counter::PassIgnored,
    );
}

#[test]
fn ignored_sources_are_never_counted() {
    require_kernel!();
    let mut fx = Fixture::new();
    fx.dp
        .replace_ignore(
            &[
                net("192.0.2.0/28"),
                net("2001:db8::/126"),
                net("203.0.113.9/32"),
            ],
            &[],
        )
        .unwrap();
    for src in ["192.0.2.7", "192.0.2.15", "2001:db8::3", "203.0.113.9"] {
        let dst = if src.contains(':') {
            ip(V6_DST)
        } else {
            ip(V4_DST)
        };
        for f in [
            Frame::tcp(ip(src), dst, 22, SYN),
            Frame::udp(ip(src), dst, 53),
        ] {
            assert_uncounted(&mut fx, &f.build(), ip(src), Counter::PassIgnored);
        }
    }
    for src in ["192.0.2.16", "2001:db8::4", "203.0.113.10"] {
        let dst = if src.contains(':') {
            ip(V6_DST)
        } else {
            ip(V4_DST)
        };
        fx.expect(
            &Frame::tcp(ip(src), dst, 22, SYN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
    }
    // A ban never cuts off an ignored source: the packet is spared (counted) and goes
    // on as an ignored source's, whether the ban is its own or a range's.
    fx.dp
        .insert_ban(&net("203.0.113.9/32"), &BanEntry::default())
        .unwrap();
    let o = fx.expect(
        &Frame::tcp(ip("203.0.113.9"), ip(V4_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassIgnored,
    );
    assert_eq!(o.delta.get(Counter::BanSpared), 1);
    fx.dp
        .insert_ban(&net("192.0.2.0/24"), &BanEntry::default())
        .unwrap();
    let o = fx.expect(
        &Frame::tcp(ip("192.0.2.7"), ip(V4_DST), 8080, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    assert_eq!(o.delta.get(Counter::BanSpared), 1);
    // The rest of the range is dropped, and no drop is counted as spared.
    let o = fx.expect(
        &Frame::tcp(ip("192.0.2.16"), ip(V4_DST), 8080, ACK).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    assert_eq!(o.delta.get(Counter::BanSpared), 0);
    // An IPv6 entry that covers the IPv4-mapped range (::/0 here) protects IPv4 too.
    fx.dp.replace_ignore(&[net("::/0")], &[]).unwrap();
    fx.expect(
        &Frame::tcp(ip("192.0.2.16"), ip(V4_DST), 8080, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    assert!(fx.dp.remove_ban(&net("192.0.2.0/24")).unwrap());
    assert!(fx.dp.remove_ban(&net("203.0.113.9/32")).unwrap());
    fx.dp
        .replace_ignore(
            &[
                net("192.0.2.0/28"),
                net("2001:db8::/126"),
                net("203.0.113.9/32"),
            ],
            &[],
        )
        .unwrap();
    // Replacing the list removes what is no longer in it.
    fx.dp.replace_ignore(&[net("2001:db8::/126")], &[]).unwrap();
    fx.expect(
        &Frame::tcp(ip("192.0.2.7"), ip(V4_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    fx.expect(
        &Frame::tcp(ip("2001:db8::3"), ip(V6_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassIgnored,
    );
    fx.dp.replace_ignore(&[], &[]).unwrap();
    assert_eq!(
        fx.dp.settings().flags & portsentry_common::maps::SETTING_IGNORE,
        0
    );
    fx.expect(
        &Frame::tcp(ip("2001:db8::3"), ip(V6_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
}

/// A counted network (`IGNORE_SINGLE`: a SOURCE_PREFIX_V6 network holding an ignored
/// address) wider than the ignore filter's /48s: a probe from one of its addresses far
/// from the ignored one is counted by that address, never by the network, whose ban
/// would cut the ignored host off. The trie's `IGNORE_SINGLE` entry covers it; the
/// probe reaches the trie because the filter has a bit for each /48 of the counted
/// network too (with the ignored address's /48 alone, it would be counted by the /32).
#[test]
fn a_counted_network_wider_than_the_filter_is_counted_per_address() {
    require_kernel!();
    use portsentry_common::maps::{SETTING_V6_PREFIX_SHIFT, Settings};
    let mut fx = Fixture::new();
    let s = fx.dp.settings();
    fx.dp
        .write_settings(Settings {
            flags: s.flags & ((1 << SETTING_V6_PREFIX_SHIFT) - 1) | 32 << SETTING_V6_PREFIX_SHIFT,
            ..s
        })
        .unwrap();
    fx.dp
        .replace_ignore(&[net("2001:db8:1:2::9/128")], &[net("2001:db8::/32")])
        .unwrap();
    let far = ip("2001:db8:ffff:7::5");
    fx.expect(
        &Frame::tcp(far, ip(V6_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    assert_eq!(fx.hits(far), 1, "counted by its own address");
    assert_eq!(
        fx.hits(ip("2001:db8::")),
        0,
        "not by the /32 that holds 2001:db8:1:2::9"
    );
    // Outside the counted network, the /32 key.
    let other = ip("2001:db9:5::5");
    fx.expect(
        &Frame::tcp(other, ip(V6_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    assert_eq!(fx.hits(ip("2001:db9::")), 1, "counted by its /32");
    fx.expect(
        &Frame::tcp(ip("2001:db8:1:2::9"), ip(V6_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassIgnored,
    );
}

/// A port with a local socket is never a scan target. BPF_PROG_TEST_RUN looks sockets
/// up in the calling thread's network namespace, so the test runs in one of its own.
#[test]
fn listening_ports_are_not_targets() {
    require_kernel!();
    let mut fx = Fixture::new();
    let (tcp, tcp6, udp, udp6) = fx.ns.enter(|| {
        (
            TcpListener::bind("0.0.0.0:25").unwrap(),
            TcpListener::bind("[::]:26").unwrap(),
            UdpSocket::bind("0.0.0.0:69").unwrap(),
            UdpSocket::bind("[::]:70").unwrap(),
        )
    });
    {
        for (src, dst) in pairs() {
            for f in [SYN, FIN, 0, XMAS] {
                let port = if src.is_ipv4() { 25 } else { 26 };
                assert_uncounted(
                    &mut fx,
                    &Frame::tcp(src, dst, port, f).build(),
                    src,
                    Counter::PassListening,
                );
            }
            let port = if src.is_ipv4() { 69 } else { 70 };
            assert_uncounted(
                &mut fx,
                &Frame::udp(src, dst, port).build(),
                src,
                Counter::PassListening,
            );
            // The neighbouring ports have no socket.
            assert_probe(
                &mut fx,
                &Frame::tcp(src, dst, 27, SYN).build(),
                src,
                27,
                ScanType::TcpSyn,
            );
            assert_probe(
                &mut fx,
                &Frame::udp(src, dst, 71).build(),
                src,
                71,
                ScanType::Udp,
            );
        }
        // Closing the socket makes the port a target again, at once.
        drop(tcp);
        drop(udp);
        let (src, dst) = (ip(V4_SRC), ip(V4_DST));
        assert_probe(
            &mut fx,
            &Frame::tcp(src, dst, 25, SYN).build(),
            src,
            25,
            ScanType::TcpSyn,
        );
        assert_probe(
            &mut fx,
            &Frame::udp(src, dst, 69).build(),
            src,
            69,
            ScanType::Udp,
        );
        drop((tcp6, udp6));
    }
}

/// A TCP listener whose port the kernel chose (listen without bind: no port for the bind
/// hook to mark), in the calling thread's namespace; its port.
fn listen_anywhere() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        assert_eq!(
            libc::listen(fd, 4),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::getsockname(fd, (&raw mut sa).cast(), &mut len),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        (owned, u16::from_be(sa.sin_port))
    }
}

/// The daemon's look at the listeners, as its services refresh makes it (the hooks'
/// count first, then the listeners of the namespace), with `except` left out as if the
/// look had missed it; true when the program trusts the result afterwards (a bind
/// elsewhere on the host in between leaves it untrusted).
fn look_at_listeners(fx: &mut Fixture, except: Option<u16>) -> bool {
    let seen = fx
        .dp
        .tcp_listens_seen()
        .expect("the TCP hooks are attached");
    let mut listening = fx
        .ns
        .enter(portsentry_user::config::services::tcp_listening)
        .unwrap();
    if let Some(p) = except {
        listening.remove(p);
    }
    fx.dp.write_tcp_sockets(&listening, seen).unwrap();
    fx.dp.tcp_sockets_current().unwrap()
}

/// Runs `check` right after a look at the listeners that the program trusts, again if a
/// bind elsewhere on the host made it stale before `check` ran.
fn with_current_look(fx: &mut Fixture, except: Option<u16>, check: impl Fn(&mut Fixture)) {
    for _ in 0..20 {
        if look_at_listeners(fx, except) {
            check(fx);
            if fx.dp.tcp_sockets_current().unwrap() {
                return;
            }
        }
    }
    panic!("the TCP socket bitmap never stayed current (binds on the host all along?)");
}

/// A TCP segment without ACK skips the socket lookup only for a port no socket can have:
/// `PS_TCP_SOCKETS` (the daemon's look at the listeners, and the ports binds asked for)
/// decides, and a bind or listen after the look makes the program look sockets up again
/// until the next look. Without the hooks, a listener started between two looks would
/// have its clients counted as scanners.
#[test]
fn the_tcp_socket_bitmap_is_trusted_only_until_the_next_bind() {
    require_kernel!();
    // A listener from before the hooks (on a port the kernel chose, so that nothing else
    // marks it), in the namespace the program's lookups run in.
    let ns = portsentry_tests::netns::Netns::new("bmp");
    let host = portsentry_user::config::services::tcp_ports_in_use().unwrap();
    let (anywhere, port) = std::iter::repeat_with(|| ns.enter(listen_anywhere))
        .find(|(_, p)| !host.contains(*p))
        .expect("a port none of the host's sockets has");
    let mut fx = Fixture::new();
    fx.ns = ns;
    let (src, dst) = (ip(V4_SRC), ip(V4_DST));
    let (mut tcp, udp) = portsentry_tests::fixture::default_ports();
    // Before any look the bitmap is not trusted.
    assert!(!fx.dp.tcp_sockets_current().unwrap());
    tcp.insert(port);
    fx.dp.write_ports(&tcp, &udp).unwrap();
    assert!(
        !fx.dp.tcp_port_bound(port).unwrap(),
        "{port} was bound before the hooks"
    );

    // The bitmap decides: a look that missed the listener makes its port a target (the
    // lookup is skipped), a look that saw it does not.
    with_current_look(&mut fx, Some(port), |fx| {
        assert_probe(
            fx,
            &Frame::tcp(src, dst, port, SYN).build(),
            src,
            port,
            ScanType::TcpSyn,
        )
    });
    with_current_look(&mut fx, None, |fx| {
        assert_uncounted(
            fx,
            &Frame::tcp(src, dst, port, SYN).build(),
            src,
            Counter::PassListening,
        )
    });
    // Probes of closed ports are counted with the bitmap trusted, every type.
    with_current_look(&mut fx, None, |fx| {
        for (f, kind) in [
            (SYN, ScanType::TcpSyn),
            (FIN, ScanType::TcpFin),
            (0, ScanType::TcpNull),
            (XMAS, ScanType::TcpXmas),
        ] {
            assert_probe(fx, &Frame::tcp(src, dst, 27, f).build(), src, 27, kind);
        }
    });

    // A listener started after a look (the look missed it: it was not there) is looked
    // up at once: its listen was counted.
    assert!(look_at_listeners(&mut fx, None));
    let (late, late_port) = fx.ns.enter(listen_anywhere);
    assert!(
        !fx.dp.tcp_sockets_current().unwrap(),
        "the listen was counted"
    );
    assert!(
        fx.dp.tcp_port_bound(late_port).unwrap(),
        "the listen marked its port"
    );
    tcp.insert(late_port);
    fx.dp.write_ports(&tcp, &udp).unwrap();
    assert_uncounted(
        &mut fx,
        &Frame::tcp(src, dst, late_port, SYN).build(),
        src,
        Counter::PassListening,
    );

    // A port a bind asked for stays looked up, even by a look that missed its socket (a
    // socket bound, then connected rather than listening).
    let bound = fx.ns.enter(|| TcpListener::bind("0.0.0.0:28").unwrap());
    assert!(fx.dp.tcp_port_bound(28).unwrap(), "the bind marked 28");
    with_current_look(&mut fx, Some(28), |fx| {
        assert_uncounted(
            fx,
            &Frame::tcp(src, dst, 28, SYN).build(),
            src,
            Counter::PassListening,
        )
    });
    drop((anywhere, late, bound));
}
