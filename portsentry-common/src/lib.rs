//! What the portsentry XDP program and the daemon agree on: map and program names, the
//! layout and byte order of every map key and value, the counters, and the packet
//! classifier (compiled into the XDP program and, for tests, into the host).
//!
//! Addresses everywhere are 16 bytes in network byte order: IPv6 as it is on the wire,
//! IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`). One key type serves both
//! families, so one map serves both.
#![no_std]

pub mod ban_nets;
pub mod ban_tags;
pub mod counters;
pub mod maps;
pub mod packet;
pub mod scan;
pub mod sources;
pub mod trw;

pub use counters::Counter;
pub use scan::ScanType;

/// Name of the XDP program (the function name in the object).
pub const PROGRAM_NAME: &str = "portsentry";
/// The probe stage, the program's second half (see [`maps::PROGS`]).
pub const PROBE_PROGRAM: &str = "ps_probe";
/// The hooks that keep `PS_TCP_LISTENS` and `PS_TCP_SOCKETS` honest (see
/// [`maps::TCP_LISTENS`]), attached to the root cgroup (every socket of the host): at
/// each bind of an IPv4 or IPv6 socket, before the kernel takes the port, and at each
/// TCP listen, once the listener is in place.
pub const TCP_BIND4_PROGRAM: &str = "ps_tcp_bind4";
pub const TCP_BIND6_PROGRAM: &str = "ps_tcp_bind6";
pub const TCP_LISTEN_PROGRAM: &str = "ps_tcp_listen";

/// A source or destination address: 16 bytes, network byte order, IPv4 mapped into IPv6.
pub type Addr = [u8; 16];

/// Maps an IPv4 address (network byte order octets) into the shared 16-byte form.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Bits an IPv4 prefix length is shifted by inside the 128-bit key space.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// IP protocol numbers used in events and bans.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// SCTP's IP protocol number (nmap `-sY` sends its INIT chunks).
pub const PROTO_SCTP: u8 = 132;
