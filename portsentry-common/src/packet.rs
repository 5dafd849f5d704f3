//! The packet parser and classifier. The XDP program runs it over packet memory; the
//! host runs the very same code over byte slices in tests (see the `tests` crate).
//!
//! Written for the BPF verifier: each header is read with one bounds check that covers
//! the whole header ([`Packet::header`]) and its fields are then read from that one
//! checked pointer. (Reading fields one by one lets LLVM drop a check that an earlier,
//! larger check implies and recompute the pointer, which the verifier cannot follow for
//! variable offsets.) Offsets stay bounded, loops have a constant bound, nothing panics.

use bytemuck::{Pod, Zeroable};

use crate::{Addr, Counter, PROTO_TCP, PROTO_UDP, ScanType};

/// Read access to a frame, starting at the Ethernet header.
pub trait Packet {
    /// The header `T` at `off`, or `None` when the frame is shorter than
    /// `off + size_of::<T>()`. Fields are in the frame's byte order.
    fn header<T: Pod>(&self, off: usize) -> Option<T>;
}

impl Packet for [u8] {
    #[inline]
    fn header<T: Pod>(&self, off: usize) -> Option<T> {
        let end = off.checked_add(core::mem::size_of::<T>())?;
        Some(bytemuck::pod_read_unaligned(self.get(off..end)?))
    }
}

/// Ethernet header.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub proto: u16,
}

/// 802.1Q / 802.1ad tag after the TPID: TCI and the inner EtherType (network order).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct VlanTag {
    pub tci: u16,
    pub proto: u16,
}

/// The fixed IPv4 header (options follow).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    /// Flags and fragment offset, network order.
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    /// Addresses in memory (network) order.
    pub src: u32,
    pub dst: u32,
}

/// The fixed IPv6 header.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Ipv6Hdr {
    pub version_tc_flow: u32,
    pub payload_len: u16,
    pub next: u8,
    pub hop_limit: u8,
    /// Addresses in memory (network) order, as words.
    pub src: AddrWords,
    pub dst: AddrWords,
}

/// The first two bytes of an IPv6 extension header.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ExtHdr {
    pub next: u8,
    pub len: u8,
}

/// IPv6 fragment header.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct FragHdr {
    pub next: u8,
    pub reserved: u8,
    /// Offset (13 bits) and flags, network order.
    pub frag: u16,
    pub id: u32,
}

/// TCP header without options.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack_seq: u32,
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

/// The first 14 bytes of a TCP header: ports, sequence numbers (as halves: no
/// padding), data offset and flags. What a first fragment shorter than the whole header
/// may still carry.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct TcpHead {
    pub sport: u16,
    pub dport: u16,
    pub seq: [u16; 2],
    pub ack_seq: [u16; 2],
    pub doff: u8,
    pub flags: u8,
}

/// The two ports at the start of a TCP or UDP header.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Ports {
    pub sport: u16,
    pub dport: u16,
}

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

/// An address as two 64-bit words whose bytes (in memory order) are the [`Addr`]: the
/// form the parser builds keys in, two loads instead of sixteen.
pub type AddrWords = [u64; 2];

/// The bytes of an [`AddrWords`].
#[inline(always)]
pub fn addr_bytes(w: &AddrWords) -> Addr {
    bytemuck::cast(*w)
}

/// The IPv4-mapped [`AddrWords`] of an IPv4 address read raw (memory order).
#[inline(always)]
pub fn v4_mapped_words(raw: u32) -> AddrWords {
    let o = raw.to_ne_bytes();
    [
        0,
        u64::from_ne_bytes([0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3]]),
    ]
}

/// Whether `dst` (a packet's destination, as [`Ip::dst`] holds it) is a group address:
/// IPv4 multicast (224.0.0.0/4) or limited broadcast (255.255.255.255), IPv6 multicast
/// (ff00::/8). The kernel answers no datagram sent to one with an ICMP error, and no TCP
/// segment with a reset. (A subnet's broadcast address is known only from the routes; its
/// frames go to the broadcast MAC, which the caller looks at as well.)
#[inline(always)]
pub fn is_group_addr(dst: &AddrWords, v6: bool) -> bool {
    if v6 {
        dst[0].to_ne_bytes()[0] == 0xff
    } else {
        let o = dst[1].to_ne_bytes();
        o[4] & 0xf0 == 0xe0 || o[4] & o[5] & o[6] & o[7] == 0xff
    }
}

/// Whether the packet was sent to a group: a frame to a multicast or broadcast MAC (the
/// low bit of its first octet set), or a group IP address ([`is_group_addr`]). The
/// kernel answers none of them: TCP drops a segment not addressed to this host alone
/// without a reset, and no ICMP error goes to a datagram sent to a group. So such a
/// packet is no probe (the XDP program's probe stage, and [`classify`]).
#[inline(always)]
pub fn sent_to_group<P: Packet + ?Sized>(p: &P, ip: &Ip) -> bool {
    let group_frame = match p.header::<EthHdr>(0) {
        Some(eth) => eth.dst[0] & 1 != 0,
        None => false,
    };
    group_frame || is_group_addr(&ip.dst, ip.v6)
}

/// Whether an IPv6 packet's source is one no answer reaches: in `::/96` (unspecified,
/// loopback, IPv4-compatible) or `::ffff:0:0/96` (IPv4-mapped). The kernel answers no
/// SYN from a mapped source (`tcp_v6_conn_request`), drops one from `::1` that did not
/// come through loopback, and has no route to the others; `::` is what duplicate address
/// detection sends from. So such a packet is forged, never a probe that learns anything:
/// counted, one forged SYN would ban `::/64`, the network of them all, and with it the
/// neighbours' duplicate address detection. (An IPv4 source is held mapped: only for
/// IPv6.)
#[inline(always)]
pub fn from_nowhere(ip: &Ip) -> bool {
    // Bytes 8 to 11 of the address are the low half of the second word.
    let low = ip.src[1] & 0xffff_ffff;
    ip.v6 && ip.src[0] == 0 && (low == 0 || low == 0xffff_0000)
}

/// `w` with every bit after the first `prefix` cleared (the network of that length).
#[inline(always)]
pub fn prefix_words(w: &AddrWords, prefix: u32) -> AddrWords {
    // SOURCE_PREFIX_V6's default, on every IPv6 packet: no mask arithmetic.
    if prefix == 64 {
        return [w[0], 0];
    }
    [
        w[0] & prefix_mask(prefix),
        w[1] & prefix_mask(prefix.saturating_sub(64)),
    ]
}

/// The mask of one word (memory order) keeping its first `bits` bits (all from 64 on).
#[inline(always)]
fn prefix_mask(bits: u32) -> u64 {
    match bits {
        0 => 0,
        1..64 => (!0u64 << (64 - bits)).to_be(),
        _ => !0,
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags looked through (802.1ad outer plus 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// The VLAN ID bits of a tag's TCI (host order).
const VLAN_VID_MASK: u16 = 0x0fff;
/// IPv6 extension headers walked. A longer chain has no legitimate use (RFC 8200 allows
/// each header once, Destination Options twice: at most 7 before the transport header,
/// ESP ending the walk) but Linux walks any length and answers what it finds at the end:
/// such a chain is [`Counter::PassHeaderChain`], which the program turns into a drop
/// under BLOCK_EVASIVE_PACKETS.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    /// Source address (IPv4 mapped), as words; [`addr_bytes`] gives the bytes.
    pub src: AddrWords,
    /// Destination address, same form.
    pub dst: AddrWords,
    pub v6: bool,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Offset of the upper-layer header.
    pub l4_off: usize,
    /// What makes the datagram unusual, 0 when nothing does (so that the common case
    /// costs one compare): the fragment offset ([`SHAPE_FRAG_OFFSET`], 8-byte units) and
    /// more-fragments flag ([`SHAPE_FRAG_MORE`]) in IPv4's layout for both families (an
    /// IPv6 Fragment header's fields are moved there), and [`SHAPE_LONG_CHAIN`]. A `u32`,
    /// not `u16`: the common case's compare then needs no mask.
    pub shape: u32,
}

/// `Ip::shape`: the fragment offset.
pub const SHAPE_FRAG_OFFSET: u32 = 0x1fff;
/// `Ip::shape`: more fragments follow.
pub const SHAPE_FRAG_MORE: u32 = 0x2000;
/// `Ip::shape`: an IPv6 extension-header chain longer than the walk; `proto` is still
/// an extension header.
pub const SHAPE_LONG_CHAIN: u32 = 0x8000;

impl Ip {
    /// A fragment other than the first: it carries no transport header.
    #[inline(always)]
    pub fn later_fragment(&self) -> bool {
        self.shape & SHAPE_FRAG_OFFSET != 0
    }

    /// The first fragment of a fragmented datagram (offset 0, more to come).
    #[inline(always)]
    pub fn first_fragment(&self) -> bool {
        self.shape & (SHAPE_FRAG_MORE | SHAPE_FRAG_OFFSET) == SHAPE_FRAG_MORE
    }
}

/// The transport layer of a TCP or UDP packet. Ports in host byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Byte 13 of the TCP header; 0 for UDP.
    pub tcp_flags: u8,
    /// A first fragment too short for the whole transport header ([`TINY`]: flags
    /// read; [`TINY_FLAGLESS`]: ports only); 0 otherwise.
    pub tiny: u8,
}

impl L4 {
    /// A datagram of IP protocol `proto` as a probe of that protocol: its "port" is the
    /// protocol number. What [`parse_l4_into`] starts from: it overwrites the ports
    /// (and flags) of TCP and UDP.
    #[inline(always)]
    pub fn of_protocol(proto: u8) -> L4 {
        L4 {
            proto,
            src_port: 0,
            dst_port: proto as u16,
            tcp_flags: 0,
            tiny: 0,
        }
    }
}

/// `L4::tiny`: a first fragment with less than the whole TCP header (but its flags).
pub const TINY: u8 = 1;
/// `L4::tiny`: a first fragment with the ports but not the TCP flags.
pub const TINY_FLAGLESS: u8 = 2;
/// Bytes of TCP header up to and including the flags.
const TCP_FLAGS_END: usize = 14;

/// Walks Ethernet, VLAN tags and the IP header. `Err` is the verdict reason to pass with.
#[inline(always)]
pub fn parse_ip<P: Packet + ?Sized>(p: &P) -> Result<Ip, Counter> {
    let eth = p.header::<EthHdr>(0).ok_or(Counter::PassMalformed)?;
    let mut ethertype = u16::from_be(eth.proto);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = p.header::<VlanTag>(off).ok_or(Counter::PassMalformed)?;
        ethertype = u16::from_be(tag.proto);
        off += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(p, off),
        ETH_P_IPV6 => parse_ipv6(p, off),
        ETH_P_8021Q | ETH_P_8021AD => Err(tag_past_the_walk(p, off)),
        _ => Err(Counter::PassNotIp),
    }
}

/// The verdict reason of a frame with a VLAN tag past the [`MAX_VLAN_TAGS`] the parser
/// looks through, at `off`. The kernel strips a priority tag (VLAN ID 0) that no VLAN
/// device claims, any number of them in a row (`__netif_receive_skb_core`), and delivers
/// what follows as if untagged, or through the VLAN devices of the IDs that follow. So
/// when one of the three tags is a priority tag, a probe behind them may be answered: a
/// chain the program cannot walk, `PassHeaderChain` (dropped with BLOCK_EVASIVE_PACKETS:
/// the ban check never sees the source). Three tags of other IDs reach IP only through
/// VLAN devices nested three deep: `PassNotIp`.
#[inline(always)]
fn tag_past_the_walk<P: Packet + ?Sized>(p: &P, off: usize) -> Counter {
    let vid = |at: usize| {
        p.header::<VlanTag>(at)
            .map(|t| u16::from_be(t.tci) & VLAN_VID_MASK)
    };
    match (vid(ETH_HLEN), vid(ETH_HLEN + 4), vid(off)) {
        (Some(a), Some(b), Some(c)) if a == 0 || b == 0 || c == 0 => Counter::PassHeaderChain,
        (Some(_), Some(_), Some(_)) => Counter::PassNotIp,
        _ => Counter::PassMalformed,
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet + ?Sized>(p: &P, off: usize) -> Result<Ip, Counter> {
    let h = p.header::<Ipv4Hdr>(off).ok_or(Counter::PassMalformed)?;
    if h.version_ihl >> 4 != 4 {
        return Err(Counter::PassMalformed);
    }
    let ihl = (h.version_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Counter::PassMalformed);
    }
    let hlen = ihl * 4;
    // The options must be present too.
    if hlen > 20 {
        p.header::<u8>(off + hlen - 1)
            .ok_or(Counter::PassMalformed)?;
    }
    Ok(Ip {
        src: v4_mapped_words(h.src),
        dst: v4_mapped_words(h.dst),
        v6: false,
        l3_off: off,
        proto: h.proto,
        l4_off: off + hlen,
        // Without DF (0x4000) and the reserved bit: offset and MF, as `Ip::shape` holds
        // them.
        shape: u16::from_be(h.frag) as u32 & (SHAPE_FRAG_MORE | SHAPE_FRAG_OFFSET),
    })
}

#[inline(always)]
fn parse_ipv6<P: Packet + ?Sized>(p: &P, off: usize) -> Result<Ip, Counter> {
    let h = p.header::<Ipv6Hdr>(off).ok_or(Counter::PassMalformed)?;
    if (h.version_tc_flow.to_ne_bytes()[0]) >> 4 != 6 {
        return Err(Counter::PassMalformed);
    }
    let mut ip = Ip {
        src: h.src,
        dst: h.dst,
        v6: true,
        l3_off: off,
        proto: h.next,
        l4_off: off + 40,
        shape: 0,
    };
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let ext_len = match ip.proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = p
                    .header::<ExtHdr>(ip.l4_off)
                    .ok_or_else(|| cut_chain(&ip))?;
                ip.proto = e.next;
                (e.len as usize + 1) * 8
            }
            IPPROTO_AH => {
                let e = p
                    .header::<ExtHdr>(ip.l4_off)
                    .ok_or_else(|| cut_chain(&ip))?;
                ip.proto = e.next;
                (e.len as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let f = p
                    .header::<FragHdr>(ip.l4_off)
                    .ok_or_else(|| cut_chain(&ip))?;
                ip.proto = f.next;
                ip.l4_off += 8;
                // Offset in the top 13 bits, M (more fragments) in the lowest.
                let frag = u16::from_be(f.frag) as u32;
                ip.shape = frag >> 3 | (frag & 1) << 13;
                if ip.later_fragment() {
                    return Ok(ip);
                }
                continue;
            }
            _ => return Ok(ip),
        };
        ip.l4_off += ext_len;
    }
    // A chain longer than the walk: `proto` is still an extension header, and
    // `parse_l4` says so (after the ban check, which such a chain must not escape).
    if is_ext_header(ip.proto) {
        ip.shape |= SHAPE_LONG_CHAIN;
    }
    Ok(ip)
}

/// The verdict reason of an IPv6 header chain that the frame cuts short: in a first
/// fragment (`ip` has come through a Fragment header with more fragments to come; a later
/// one returned already), a chain the first fragment does not hold whole, which
/// [`first_fragment_without_transport`] explains; elsewhere `PassMalformed` (the kernel
/// drops a packet shorter than its headers).
#[inline(always)]
fn cut_chain(ip: &Ip) -> Counter {
    if ip.shape & SHAPE_FRAG_MORE != 0 {
        Counter::PassHeaderChain
    } else {
        Counter::PassMalformed
    }
}

/// Whether an IPv6 first fragment holds not even the start of its transport header: its
/// header chain reaches the end of the datagram (bytes after it, which the kernel trims,
/// may have been walked as headers). RFC 7112 requires the whole chain in the first
/// fragment, so no legitimate sender makes one; the kernel queues it when the datagram
/// ends between two headers of the chain (it checks a first fragment's transport header
/// only when the chain reaches it, `ipv6frag_thdr_truncated`) and answers the
/// reassembled datagram, whose probe is then hidden in a later fragment. Such a
/// fragment is a chain the program cannot walk: `PassHeaderChain`, dropped with
/// BLOCK_EVASIVE_PACKETS.
#[inline(always)]
fn first_fragment_without_transport(ip: &Ip, end: usize) -> bool {
    ip.v6 && ip.l4_off >= end
}

/// An IPv6 extension header the parser walks.
#[inline(always)]
fn is_ext_header(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    )
}

/// Reads the TCP or UDP header. `Err` is the verdict reason to pass with.
#[inline(always)]
pub fn parse_l4<P: Packet + ?Sized>(p: &P, ip: &Ip) -> Result<L4, Counter> {
    let mut l4 = L4::of_protocol(ip.proto);
    parse_l4_into(p, ip, &mut l4)?;
    Ok(l4)
}

/// [`parse_l4`] into `l4`, field by field (a returned `L4` would be packed into one
/// integer and unpacked again, dozens of instructions on every packet). On `Err`, `l4`
/// is left as it was.
#[inline(always)]
pub fn parse_l4_into<P: Packet + ?Sized>(p: &P, ip: &Ip, l4: &mut L4) -> Result<(), Counter> {
    if ip.shape != 0 {
        return unusual_l4(p, ip, l4);
    }
    transport(p, ip, l4)
}

/// The TCP or UDP header of a datagram that holds all of it.
#[inline(always)]
fn transport<P: Packet + ?Sized>(p: &P, ip: &Ip, l4: &mut L4) -> Result<(), Counter> {
    if ip.proto == PROTO_TCP {
        let h = p
            .header::<TcpHdr>(ip.l4_off)
            .ok_or(Counter::PassMalformed)?;
        l4.src_port = u16::from_be(h.sport);
        l4.dst_port = u16::from_be(h.dport);
        l4.tcp_flags = h.flags;
        return Ok(());
    }
    if ip.proto == PROTO_UDP {
        let h = p
            .header::<UdpHdr>(ip.l4_off)
            .ok_or(Counter::PassMalformed)?;
        l4.src_port = u16::from_be(h.sport);
        l4.dst_port = u16::from_be(h.dport);
        return Ok(());
    }
    Err(Counter::PassOtherProto)
}

/// A datagram of an unusual shape: an over-long IPv6 header chain; a fragment (a later
/// one carries no transport header; a first one may carry less than the whole header,
/// RFC 1858's tiny fragment, judged by the datagram's own length: the frame may hold
/// link padding after it).
#[inline(always)]
fn unusual_l4<P: Packet + ?Sized>(p: &P, ip: &Ip, l4: &mut L4) -> Result<(), Counter> {
    if ip.shape & SHAPE_LONG_CHAIN != 0 {
        return Err(Counter::PassHeaderChain);
    }
    if ip.later_fragment() {
        return Err(Counter::PassFragment);
    }
    let end = datagram_end(p, ip)?;
    if first_fragment_without_transport(ip, end) {
        return Err(Counter::PassHeaderChain);
    }
    if ip.proto == PROTO_TCP && end < ip.l4_off + core::mem::size_of::<TcpHdr>() {
        return tiny_tcp(p, ip, end, l4);
    }
    if ip.proto == PROTO_UDP && end < ip.l4_off + core::mem::size_of::<UdpHdr>() {
        let ports = tiny_ports(p, ip, end)?;
        l4.src_port = u16::from_be(ports.sport);
        l4.dst_port = u16::from_be(ports.dport);
        l4.tiny = TINY;
        return Ok(());
    }
    transport(p, ip, l4)
}

/// Where the datagram ends by its own length field.
#[inline(always)]
pub fn datagram_end<P: Packet + ?Sized>(p: &P, ip: &Ip) -> Result<usize, Counter> {
    let len = if ip.v6 {
        let h = p
            .header::<Ipv6Hdr>(ip.l3_off)
            .ok_or(Counter::PassMalformed)?;
        40 + u16::from_be(h.payload_len) as usize
    } else {
        let h = p
            .header::<Ipv4Hdr>(ip.l3_off)
            .ok_or(Counter::PassMalformed)?;
        u16::from_be(h.tot_len) as usize
    };
    Ok(ip.l3_off + len)
}

/// A first TCP fragment shorter than the TCP header (nmap `-f`, `--mtu 8/16`): the
/// kernel reassembles it and answers the segment, so it is classified from what it
/// carries.
#[inline(always)]
fn tiny_tcp<P: Packet + ?Sized>(p: &P, ip: &Ip, end: usize, l4: &mut L4) -> Result<(), Counter> {
    if end >= ip.l4_off + TCP_FLAGS_END {
        let h = p
            .header::<TcpHead>(ip.l4_off)
            .ok_or(Counter::PassMalformed)?;
        l4.src_port = u16::from_be(h.sport);
        l4.dst_port = u16::from_be(h.dport);
        l4.tcp_flags = h.flags;
        l4.tiny = TINY;
        return Ok(());
    }
    let ports = tiny_ports(p, ip, end)?;
    l4.src_port = u16::from_be(ports.sport);
    l4.dst_port = u16::from_be(ports.dport);
    l4.tiny = TINY_FLAGLESS;
    Ok(())
}

/// The ports of a tiny first fragment. Fewer than 4 bytes: malformed (a first fragment
/// holds a multiple of 8 bytes; the kernel discards one that holds less than 8).
#[inline(always)]
fn tiny_ports<P: Packet + ?Sized>(p: &P, ip: &Ip, end: usize) -> Result<Ports, Counter> {
    if end < ip.l4_off + core::mem::size_of::<Ports>() {
        return Err(Counter::PassMalformed);
    }
    p.header::<Ports>(ip.l4_off).ok_or(Counter::PassMalformed)
}

/// The probe type of a TCP or UDP packet: PortSentry's types, the ACK class, a tiny
/// fragment's; of any other protocol's (the XDP program builds an `L4` only for those
/// nothing serves), `IpProto`. `Err(PassNotProbe)` for TCP with RST (never answered).
#[inline(always)]
pub fn scan_type(l4: &L4) -> Result<ScanType, Counter> {
    if l4.proto == PROTO_UDP {
        return Ok(ScanType::Udp);
    }
    if l4.proto != PROTO_TCP {
        return Ok(ScanType::IpProto);
    }
    if l4.tiny == TINY_FLAGLESS {
        return Ok(ScanType::TcpFragment);
    }
    match ScanType::from_tcp_flags(l4.tcp_flags) {
        Some(t) => Ok(t),
        None => ScanType::ack_class(l4.tcp_flags).ok_or(Counter::PassNotProbe),
    }
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
    if sent_to_group(p, &ip) || from_nowhere(&ip) {
        return Err(Counter::PassNotProbe);
    }
    Ok(Probe { ip, l4, scan_type })
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == 14);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == 40);
const _: () = assert!(core::mem::size_of::<FragHdr>() == 8);
const _: () = assert!(core::mem::size_of::<TcpHdr>() == 20);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == 8);
const _: () = assert!(core::mem::size_of::<TcpHead>() == TCP_FLAGS_END);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_addresses() {
        let v4 = |o: [u8; 4]| v4_mapped_words(u32::from_ne_bytes(o));
        for o in [[224, 0, 0, 1], [239, 255, 255, 250], [255, 255, 255, 255]] {
            assert!(is_group_addr(&v4(o), false), "{o:?}");
        }
        for o in [
            [192, 0, 2, 255],
            [223, 255, 255, 255],
            [240, 0, 0, 1],
            [10, 0, 0, 1],
        ] {
            assert!(!is_group_addr(&v4(o), false), "{o:?}");
        }
        let v6 = |a: &str| -> AddrWords {
            bytemuck::cast(a.parse::<core::net::Ipv6Addr>().unwrap().octets())
        };
        for a in ["ff02::1", "ff05::1:3", "ff0e::101"] {
            assert!(is_group_addr(&v6(a), true), "{a}");
        }
        for a in ["2001:db8::1", "fe80::1", "fc00::ff"] {
            assert!(!is_group_addr(&v6(a), true), "{a}");
        }
    }

    #[test]
    fn sources_no_answer_reaches() {
        let ip = |a: &str| {
            let addr: core::net::IpAddr = a.parse().unwrap();
            let src: AddrWords = match addr {
                core::net::IpAddr::V4(v4) => v4_mapped_words(u32::from_ne_bytes(v4.octets())),
                core::net::IpAddr::V6(v6) => bytemuck::cast(v6.octets()),
            };
            Ip {
                src,
                dst: [0; 2],
                v6: addr.is_ipv6(),
                l3_off: 0,
                proto: 0,
                l4_off: 0,
                shape: 0,
            }
        };
        for a in ["::", "::1", "::192.0.2.1", "::ffff:192.0.2.1", "::ffff:0:0"] {
            assert!(from_nowhere(&ip(a)), "{a}");
        }
        for a in [
            "192.0.2.1",
            "0.0.0.0",
            "2001:db8::1",
            "fe80::1",
            "::1:0:0:0",
            "::fffe:192.0.2.1",
            "64:ff9b::192.0.2.1",
        ] {
            assert!(!from_nowhere(&ip(a)), "{a}");
        }
    }
}
