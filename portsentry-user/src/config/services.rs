//! What this host serves, in the daemon's network namespace:
//!
//! - the TCP ports a socket listens on ([`tcp_listening`]): a segment with ACK to such a
//!   port is never looked up as a possible ACK scan (`PS_ACK_PORTS`), so established
//!   traffic to a service costs one bitmap read; a segment without ACK to a port with no
//!   socket is not looked up at all (`PS_TCP_SOCKETS`, with the ports of every TCP
//!   socket, [`tcp_ports_in_use`], read once when its hooks are attached). Read from
//!   `/proc/net/tcp` and `/proc/net/tcp6` (of the calling thread's namespace:
//!   `/proc/thread-self`); the kernel lists every listening socket before any other (its
//!   iterator walks the listening hash, then the established one), so the read stops at
//!   the first line in another state: its cost grows with the listeners, not with the
//!   connections of a busy server;
//! - the IP protocols something handles ([`served_protocols`]), for each family: the
//!   kernel's own, those of loaded protocol modules (tunnels, IPsec, SCTP, L2TP) and
//!   those a raw socket is open for (routing and VRRP daemons). A datagram of any other
//!   protocol is answered with an ICMP error, and is a probe (`PS_PROTOCOLS`).

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::{Context as _, Result};

use super::ports::PortSet;

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// The IP protocols something handles, of each family: IPv4's ([`V4`]), then IPv6's
/// ([`V6`]), each indexed by protocol number.
pub type Served = [[bool; 256]; 2];
/// [`Served`]'s IPv4 half.
pub const V4: usize = 0;
/// [`Served`]'s IPv6 half.
pub const V6: usize = 1;

/// Protocols the IPv4 stack always handles: ICMP, IGMP, TCP, UDP, UDP-Lite. Any other
/// (an IPv6 extension header's number too) is answered with a protocol unreachable.
const ALWAYS_SERVED_V4: [u8; 5] = [1, 2, 6, 17, 136];
/// Protocols the IPv6 stack always handles (or that are no datagram of their own): TCP,
/// UDP, ICMPv6, UDP-Lite, and the extension headers with No Next Header (the program
/// walks or passes those itself). ICMP and IGMP are answered with a parameter problem.
const ALWAYS_SERVED_V6: [u8; 10] = [6, 17, 58, 136, 0, 43, 44, 51, 60, 59];

/// Protocol modules and the protocols they handle once loaded, of IPv4 and of IPv6 (a
/// module built into the kernel shows in `/sys/module` too when it has parameters; one
/// that does not is missed, and its protocol counted as a probe: see docs/detection.md).
#[allow(clippy::type_complexity)] // a table
const MODULES: [(&str, &[u8], &[u8]); 20] = [
    ("ipip", &[4], &[]),
    ("tunnel4", &[4, 41], &[]),
    ("xfrm4_tunnel", &[4, 41], &[]),
    ("sit", &[41, 4], &[]),
    ("tunnel6", &[], &[41, 4]),
    ("ip6_tunnel", &[], &[41, 4]),
    ("xfrm6_tunnel", &[], &[41, 4]),
    ("gre", &[47], &[]),
    ("ip_gre", &[47], &[]),
    ("ip6_gre", &[], &[47]),
    ("esp4", &[50], &[]),
    ("esp6", &[], &[50]),
    ("ah4", &[51], &[]),
    ("ah6", &[], &[51]),
    ("ipcomp", &[108], &[]),
    ("ipcomp6", &[], &[108]),
    ("ip_vti", &[4, 50, 51, 108], &[]),
    ("sctp", &[132], &[132]),
    ("l2tp_ip", &[115], &[]),
    ("l2tp_ip6", &[], &[115]),
];

/// Every IP protocol something on this host handles, of each family (see the module
/// documentation).
pub fn served_protocols() -> Result<Served> {
    let mut served = [[false; 256]; 2];
    for (family, always) in [(V4, &ALWAYS_SERVED_V4[..]), (V6, &ALWAYS_SERVED_V6[..])] {
        for p in always {
            served[family][usize::from(*p)] = true;
        }
    }
    for (module, v4, v6) in MODULES {
        if Path::new("/sys/module").join(module).exists() {
            for (family, protos) in [(V4, v4), (V6, v6)] {
                for p in protos {
                    served[family][usize::from(*p)] = true;
                }
            }
        }
    }
    for (family, file) in [
        (V4, "/proc/thread-self/net/raw"),
        (V6, "/proc/thread-self/net/raw6"),
    ] {
        match File::open(file) {
            Ok(f) => {
                for line in BufReader::new(f).lines().skip(1) {
                    let line = line.with_context(|| format!("reading {file}"))?;
                    if let Some(p) = raw_protocol(&line) {
                        served[family][usize::from(p)] = true;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {file}")),
        }
    }
    Ok(served)
}

/// The protocol of a raw socket's line of `/proc/net/raw`: the "port" of its local
/// address. A raw socket of protocol 255 (IPPROTO_RAW) sends only.
fn raw_protocol(line: &str) -> Option<u8> {
    let local = line.split_whitespace().nth(1)?;
    let (_, p) = local.rsplit_once(':')?;
    u8::try_from(u16::from_str_radix(p, 16).ok()?)
        .ok()
        .filter(|p| *p != 255)
}

/// Every TCP port with a listening socket, IPv4 or IPv6, on any address.
pub fn tcp_listening() -> Result<PortSet> {
    let mut ports = PortSet::new();
    for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let path = Path::new(file);
        match File::open(path) {
            Ok(f) => read_listeners(BufReader::new(f), &mut ports)
                .with_context(|| format!("reading {file}"))?,
            // No IPv6 in this kernel: no IPv6 listeners.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {file}")),
        }
    }
    Ok(ports)
}

/// The local port of every TCP socket in `/proc/net/tcp` and `/proc/net/tcp6`: listening,
/// connected, or waiting to close. Its cost grows with the connections: read once, when
/// the program's TCP hooks are attached (`kernel::tcp_sockets`).
pub fn tcp_ports_in_use() -> Result<PortSet> {
    let mut ports = PortSet::new();
    for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        match File::open(file) {
            Ok(f) => read_local_ports(BufReader::new(f), false, &mut ports)
                .with_context(|| format!("reading {file}"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {file}")),
        }
    }
    Ok(ports)
}

/// Adds the local port of each listening socket in a `/proc/net/tcp` text, up to the
/// first socket in another state.
fn read_listeners(text: impl BufRead, ports: &mut PortSet) -> std::io::Result<()> {
    read_local_ports(text, true, ports)
}

/// Adds the local port of each socket in a `/proc/net/tcp` text; with `listeners_only`,
/// up to the first socket in another state.
fn read_local_ports(
    text: impl BufRead,
    listeners_only: bool,
    ports: &mut PortSet,
) -> std::io::Result<()> {
    for line in text.lines().skip(1) {
        let line = line?;
        // "  sl  local_address rem_address   st ...": local is ADDR:PORT in hex.
        let mut fields = line.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) =
            (fields.nth(1), fields.next(), fields.next())
        else {
            continue;
        };
        if listeners_only && state != TCP_LISTEN {
            break;
        }
        if let Some(port) = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        {
            ports.insert(port);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_up_to_the_first_other_state() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:0016 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
";
        let mut ports = PortSet::new();
        read_listeners(text.as_bytes(), &mut ports).unwrap();
        assert_eq!(ports.iter().collect::<Vec<_>>(), [22, 8080]);
        let v6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 0
";
        read_listeners(v6.as_bytes(), &mut ports).unwrap();
        assert_eq!(ports.iter().collect::<Vec<_>>(), [22, 443, 8080]);
        // Every socket: the connected one's local port too, and the listener after it.
        let mut all = PortSet::new();
        read_local_ports(text.as_bytes(), false, &mut all).unwrap();
        assert_eq!(all.iter().collect::<Vec<_>>(), [22, 80, 8080]);
    }

    #[test]
    fn this_hosts_listeners_are_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(tcp_listening().unwrap().contains(port));
    }

    #[test]
    fn raw_sockets_and_the_kernels_own() {
        assert_eq!(
            raw_protocol("   1: 00000000:0070 00000000:0000 07 00000000:00000000 00:00000000"),
            Some(112)
        );
        assert_eq!(
            raw_protocol("   1: 00000000:00FF 00000000:0000 07 00000000:00000000 00:00000000"),
            None
        );
        let served = served_protocols().unwrap();
        for p in [1, 2, 6, 17] {
            assert!(served[V4][p], "IPv4 protocol {p}");
        }
        for p in [6, 17, 58, 0, 43, 44, 60] {
            assert!(served[V6][p], "IPv6 protocol {p}");
        }
        // Each family's own: answered in the other.
        for p in [0, 43, 44, 58, 59, 60] {
            assert!(!served[V4][p], "IPv4 protocol {p}");
        }
        for p in [1, 2] {
            assert!(!served[V6][p], "IPv6 protocol {p}");
        }
    }
}
