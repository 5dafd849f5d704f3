//! Raw frames on a veth end: crafted frames sent as they are (AF_PACKET), and every
//! frame the other side sends back, for tests that compare the program with the
//! kernel's own stack. The sockets are opened inside a namespace of the test's, on an
//! interface of that namespace.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// ETH_P_ALL in network order, as `socket(2)` and `sockaddr_ll` want it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// An AF_PACKET socket bound to one interface: sends whole frames, receives every frame
/// the interface receives.
pub struct Wire {
    fd: OwnedFd,
    ifindex: i32,
    /// The interface's MAC, and its peer's (the other veth end's).
    pub mac: [u8; 6],
    pub peer_mac: [u8; 6],
}

/// The MAC address of `iface` in `ns`.
pub fn mac_of(ns: &Netns, iface: &str) -> [u8; 6] {
    let out = ns.exec(&format!("ip -o link show dev {iface}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC address for {iface} in: {text}"));
    let mut mac = [0u8; 6];
    for (i, part) in addr.split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).expect("a MAC address");
    }
    mac
}

impl Wire {
    /// Opens the socket on `iface` in `ns`; `peer` is the namespace and name of the
    /// other end (for its MAC).
    pub fn open(ns: &Netns, iface: &str, peer: (&Netns, &str)) -> Wire {
        let mac = mac_of(ns, iface);
        let peer_mac = mac_of(peer.0, peer.1);
        let (fd, ifindex) = ns.enter(|| {
            // SAFETY: plain socket(2); the descriptor is owned right away.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    i32::from(ETH_P_ALL_BE),
                )
            };
            assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // SAFETY: a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let name = std::ffi::CString::new(iface).unwrap();
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            assert!(ifindex > 0, "no interface {iface}");
            // SAFETY: an all-zero sockaddr_ll is valid; filled in below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL_BE;
            sll.sll_ifindex = ifindex;
            // SAFETY: binding our socket to a valid sockaddr_ll of its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
            (fd, ifindex)
        });
        Wire {
            fd,
            ifindex,
            mac,
            peer_mac,
        }
    }

    /// Sends `frame` as it is, after writing the Ethernet addresses (to the peer, from
    /// this end).
    pub fn send(&self, frame: &[u8]) {
        let mut f = frame.to_vec();
        f[0..6].copy_from_slice(&self.peer_mac);
        f[6..12].copy_from_slice(&self.mac);
        // SAFETY: an all-zero sockaddr_ll is valid; filled in below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&self.peer_mac);
        // SAFETY: sending from a valid buffer to a valid address of its size.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            f.len() as isize,
            "sending a frame: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame received within `timeout` (frames this end sent are skipped).
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: an all-zero sockaddr_ll is valid output space.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: receiving into a buffer of its length.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut sll).cast(),
                    &mut len,
                )
            };
            if n >= 0 {
                if sll.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                return Some(buf[..n as usize].to_vec());
            }
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "receiving: {e}");
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        }
    }

    /// Drops every frame waiting.
    pub fn drain(&self) {
        while self.recv(Duration::ZERO).is_some() {}
    }
}

/// What a frame from the server says back to a probe: a TCP segment (a RST, a SYN-ACK)
/// or an ICMP/ICMPv6 error, from `from` to `to`. Neighbour discovery, echo and other
/// chatter are not answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// TCP, with the flags and the destination port (the probe's source port).
    Tcp { flags: u8, dport: u16 },
    /// An ICMP or ICMPv6 error: type and code.
    IcmpError { icmp_type: u8, code: u8 },
}

/// The answer `frame` carries from `from` to `to`, if it is one.
pub fn answer(frame: &[u8], from: IpAddr, to: IpAddr) -> Option<Answer> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (proto, l4, src, dst) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let src = IpAddr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?);
            let dst = IpAddr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?);
            (*ip.get(9)?, ip.get(ihl..)?, src, dst)
        }
        0x86dd => {
            let src = IpAddr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?);
            let dst = IpAddr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?);
            (*ip.get(6)?, ip.get(40..)?, src, dst)
        }
        _ => return None,
    };
    if src != from || dst != to {
        return None;
    }
    match proto {
        6 => Some(Answer::Tcp {
            flags: *l4.get(13)?,
            dport: u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
        }),
        // ICMP errors: unreachable, time exceeded, parameter problem.
        1 if matches!(l4.first()?, 3 | 11 | 12) => Some(Answer::IcmpError {
            icmp_type: l4[0],
            code: *l4.get(1)?,
        }),
        // ICMPv6 errors: 1 to 4 (unreachable, too big, time exceeded, parameter problem).
        58 if (1..=4).contains(l4.first()?) => Some(Answer::IcmpError {
            icmp_type: l4[0],
            code: *l4.get(1)?,
        }),
        _ => None,
    }
}
