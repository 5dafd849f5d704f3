//! The packet parser and classifier. The XDP program runs it over packet memory; the
//! host runs the very same code over byte slices in tests (see the `tests` crate).
//!
//! It is written for the BPF verifier: every read goes through [`Packet::bytes`] with
//! its bounds check, offsets stay bounded, loops have a constant bound, nothing panics.

use crate::{Addr, Counter, PROTO_TCP, PROTO_UDP, ScanType, v4_mapped};

/// Read access to a frame, starting at the Ethernet header.
pub trait Packet {
    /// The `N` bytes at `off`, or `None` when the frame is shorter than `off + N`.
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]>;

    #[inline(always)]
    fn u8_at(&self, off: usize) -> Option<u8> {
        match self.bytes::<1>(off) {
            Some([b]) => Some(b),
            None => None,
        }
    }

    #[inline(always)]
    fn be16_at(&self, off: usize) -> Option<u16> {
        match self.bytes::<2>(off) {
            Some(b) => Some(u16::from_be_bytes(b)),
            None => None,
        }
    }
}

impl Packet for [u8] {
    #[inline]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let end = off.checked_add(N)?;
        self.get(off..end)?.try_into().ok()
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags looked through (802.1ad outer plus 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up (the packet is then passed as
/// malformed).
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    /// Source address (IPv4 mapped).
    pub src: Addr,
    pub v6: bool,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Offset of the upper-layer header.
    pub l4_off: usize,
    /// A fragment other than the first: it carries no transport header.
    pub later_fragment: bool,
}

/// The transport layer of a TCP or UDP packet. Ports in host byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Byte 13 of the TCP header; 0 for UDP.
    pub tcp_flags: u8,
}

/// Walks Ethernet, VLAN tags and the IP header. `Err` is the verdict reason to pass with.
#[inline(always)]
pub fn parse_ip<P: Packet + ?Sized>(p: &P) -> Result<Ip, Counter> {
    let mut off = ETH_HLEN;
    let mut ethertype = p.be16_at(12).ok_or(Counter::PassMalformed)?;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = p.be16_at(off + 2).ok_or(Counter::PassMalformed)?;
        off += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(p, off),
        ETH_P_IPV6 => parse_ipv6(p, off),
        _ => Err(Counter::PassNotIp),
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet + ?Sized>(p: &P, off: usize) -> Result<Ip, Counter> {
    // version/IHL, TOS, total length, id, flags/fragment offset, TTL, protocol, checksum,
    // source: the first 16 bytes.
    let h = p.bytes::<16>(off).ok_or(Counter::PassMalformed)?;
    if h[0] >> 4 != 4 {
        return Err(Counter::PassMalformed);
    }
    let ihl = (h[0] & 0x0f) as usize;
    if ihl < 5 {
        return Err(Counter::PassMalformed);
    }
    let hlen = ihl * 4;
    // The whole header, options included, must be present.
    p.u8_at(off + hlen - 1).ok_or(Counter::PassMalformed)?;
    let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    Ok(Ip {
        src: v4_mapped([h[12], h[13], h[14], h[15]]),
        v6: false,
        l3_off: off,
        proto: h[9],
        l4_off: off + hlen,
        later_fragment: frag_off != 0,
    })
}

#[inline(always)]
fn parse_ipv6<P: Packet + ?Sized>(p: &P, off: usize) -> Result<Ip, Counter> {
    let h = p.bytes::<8>(off).ok_or(Counter::PassMalformed)?;
    if h[0] >> 4 != 6 {
        return Err(Counter::PassMalformed);
    }
    let src = p.bytes::<16>(off + 8).ok_or(Counter::PassMalformed)?;
    // The destination address must be present too.
    p.bytes::<16>(off + 24).ok_or(Counter::PassMalformed)?;
    let mut ip = Ip {
        src,
        v6: true,
        l3_off: off,
        proto: h[6],
        l4_off: off + 40,
        later_fragment: false,
    };
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let ext_len = match ip.proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = p.bytes::<2>(ip.l4_off).ok_or(Counter::PassMalformed)?;
                ip.proto = e[0];
                (e[1] as usize + 1) * 8
            }
            IPPROTO_AH => {
                let e = p.bytes::<2>(ip.l4_off).ok_or(Counter::PassMalformed)?;
                ip.proto = e[0];
                (e[1] as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let e = p.bytes::<8>(ip.l4_off).ok_or(Counter::PassMalformed)?;
                ip.proto = e[0];
                ip.l4_off += 8;
                if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                    ip.later_fragment = true;
                    return Ok(ip);
                }
                continue;
            }
            _ => return Ok(ip),
        };
        ip.l4_off += ext_len;
    }
    match ip.proto {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Err(Counter::PassMalformed)
        }
        _ => Ok(ip),
    }
}

/// Reads the TCP or UDP header. `Err` is the verdict reason to pass with.
#[inline(always)]
pub fn parse_l4<P: Packet + ?Sized>(p: &P, ip: &Ip) -> Result<L4, Counter> {
    if ip.later_fragment {
        return Err(Counter::PassFragment);
    }
    match ip.proto {
        PROTO_TCP => {
            let h = p.bytes::<20>(ip.l4_off).ok_or(Counter::PassMalformed)?;
            Ok(L4 {
                proto: PROTO_TCP,
                src_port: u16::from_be_bytes([h[0], h[1]]),
                dst_port: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: h[13],
            })
        }
        PROTO_UDP => {
            let h = p.bytes::<8>(ip.l4_off).ok_or(Counter::PassMalformed)?;
            Ok(L4 {
                proto: PROTO_UDP,
                src_port: u16::from_be_bytes([h[0], h[1]]),
                dst_port: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: 0,
            })
        }
        _ => Err(Counter::PassOtherProto),
    }
}

/// The probe type of a TCP or UDP packet; `Err(PassNotProbe)` for TCP with ACK or RST.
#[inline(always)]
pub fn scan_type(l4: &L4) -> Result<ScanType, Counter> {
    if l4.proto == PROTO_UDP {
        return Ok(ScanType::Udp);
    }
    ScanType::from_tcp_flags(l4.tcp_flags).ok_or(Counter::PassNotProbe)
}

/// What the classifier alone (no maps) makes of a frame: the source and the probe, or
/// the reason it is passed. The XDP program interleaves its map lookups with these same
/// steps; differential tests compare the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub ip: Ip,
    pub l4: L4,
    pub scan_type: ScanType,
}

/// Runs every parsing and classification step in order.
pub fn classify<P: Packet + ?Sized>(p: &P) -> Result<Probe, Counter> {
    let ip = parse_ip(p)?;
    let l4 = parse_l4(p, &ip)?;
    let scan_type = scan_type(&l4)?;
    Ok(Probe { ip, l4, scan_type })
}
