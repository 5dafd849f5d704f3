//! Hand-built Ethernet frames for the parser and BPF_PROG_TEST_RUN tests.

use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// TCP flag bits.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const XMAS: u8 = FIN | PSH | URG;
}

/// An IPv6 extension header.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options, `units` × 8 bytes in all (at least 1).
    HopByHop(u8),
    /// Routing header, `units` × 8 bytes.
    Routing(u8),
    /// Destination options, `units` × 8 bytes.
    DestOpts(u8),
    /// Fragment header with this offset (in 8-byte units) and more-fragments flag.
    Fragment { offset: u16, more: bool },
    /// Authentication header, `units` × 4 bytes in all (at least 3).
    Auth(u8),
}

impl Ext {
    fn proto(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::Routing(_) => 43,
            Ext::DestOpts(_) => 60,
            Ext::Fragment { .. } => 44,
            Ext::Auth(_) => 51,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(u) | Ext::Routing(u) | Ext::DestOpts(u) => {
                let len = usize::from(*u).max(1) * 8;
                let mut b = vec![0u8; len];
                b[0] = next;
                b[1] = (len / 8 - 1) as u8;
                if let Ext::HopByHop(_) | Ext::DestOpts(_) = self {
                    // PadN filling the option area.
                    b[2] = 1;
                    b[3] = (len - 4) as u8;
                }
                b
            }
            Ext::Fragment { offset, more } => {
                let v = (offset << 3) | u16::from(*more);
                let mut b = vec![next, 0, 0, 0, 0, 0, 0x12, 0x34];
                b[2..4].copy_from_slice(&v.to_be_bytes());
                b
            }
            Ext::Auth(u) => {
                let len = usize::from(*u).max(3) * 4;
                let mut b = vec![0u8; len];
                b[0] = next;
                b[1] = (len / 4 - 2) as u8;
                b
            }
        }
    }
}

/// The transport part of a frame.
#[derive(Clone, Debug)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Another IP protocol with a few payload bytes.
    Other(u8),
}

/// A frame description; `build()` turns it into bytes.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Outer to inner VLAN TPIDs (0x88a8, 0x8100), each tag with VLAN id 5.
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 option bytes (padded with NOPs to a multiple of 4).
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag.
    pub ipv4_fragment: (u16, bool),
    pub ipv6_ext: Vec<Ext>,
    pub transport: Transport,
    pub payload: Vec<u8>,
    /// Overrides the EtherType (for non-IP frames).
    pub ethertype: Option<u16>,
    /// Keeps only this many bytes of the transport part (header and payload), the IP
    /// lengths saying so: a first fragment's share of a split header.
    pub l4_keep: Option<usize>,
    /// Zero bytes appended after the datagram up to this frame length (link padding:
    /// Ethernet pads a frame to 60 bytes; the IP lengths do not count it).
    pub pad_to: usize,
}

impl Frame {
    pub fn tcp(src: IpAddr, dst: IpAddr, dport: u16, flags: u8) -> Frame {
        Frame::new(
            src,
            dst,
            Transport::Tcp {
                sport: 40000,
                dport,
                flags,
            },
        )
    }

    pub fn udp(src: IpAddr, dst: IpAddr, dport: u16) -> Frame {
        Frame::new(
            src,
            dst,
            Transport::Udp {
                sport: 40000,
                dport,
            },
        )
    }

    pub fn new(src: IpAddr, dst: IpAddr, transport: Transport) -> Frame {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed address families");
        Frame {
            vlans: Vec::new(),
            src,
            dst,
            ipv4_options: Vec::new(),
            ipv4_fragment: (0, false),
            ipv6_ext: Vec::new(),
            transport,
            payload: Vec::new(),
            ethertype: None,
            l4_keep: None,
            pad_to: 0,
        }
    }

    /// Keeps `n` bytes of the transport part ([`Frame::l4_keep`]).
    pub fn l4_keep(mut self, n: usize) -> Frame {
        self.l4_keep = Some(n);
        self
    }

    /// Pads the frame to `len` bytes ([`Frame::pad_to`]).
    pub fn pad_to(mut self, len: usize) -> Frame {
        self.pad_to = len;
        self
    }

    pub fn vlans(mut self, tpids: &[u16]) -> Frame {
        self.vlans = tpids.to_vec();
        self
    }

    pub fn ipv4_options(mut self, opts: &[u8]) -> Frame {
        self.ipv4_options = opts.to_vec();
        self
    }

    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Frame {
        self.ipv4_fragment = (offset, more);
        self
    }

    pub fn ext(mut self, ext: Ext) -> Frame {
        self.ipv6_ext.push(ext);
        self
    }

    pub fn sport(mut self, port: u16) -> Frame {
        match &mut self.transport {
            Transport::Tcp { sport, .. } | Transport::Udp { sport, .. } => *sport = port,
            Transport::Other(_) => {}
        }
        self
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let mut b = match self.transport {
            Transport::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = flags;
                h[14..16].copy_from_slice(&1024u16.to_be_bytes());
                h
            }
            Transport::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                let len = (8 + self.payload.len()) as u16;
                h[4..6].copy_from_slice(&len.to_be_bytes());
                h
            }
            Transport::Other(_) => vec![0u8; 8],
        };
        b.extend_from_slice(&self.payload);
        let proto = match self.transport {
            Transport::Tcp { .. } => TCP,
            Transport::Udp { .. } => UDP,
            Transport::Other(p) => p,
        };
        (proto, b)
    }

    /// The frame's bytes and the offsets where its headers begin and end (header
    /// boundaries, for truncation tests).
    pub fn build_with_boundaries(&self) -> (Vec<u8>, Vec<usize>) {
        let mut f = Vec::new();
        let mut bounds = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        for tpid in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            bounds.push(f.len());
            f.extend_from_slice(&5u16.to_be_bytes());
        }
        let ethertype = self.ethertype.unwrap_or(match self.src {
            IpAddr::V4(_) => 0x0800,
            IpAddr::V6(_) => 0x86dd,
        });
        f.extend_from_slice(&ethertype.to_be_bytes());
        bounds.push(f.len());
        let (proto, mut l4) = self.l4_bytes();
        if let Some(n) = self.l4_keep {
            l4.truncate(n);
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut opts = self.ipv4_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(1);
                }
                let hlen = 20 + opts.len();
                let mut h = vec![0u8; 20];
                h[0] = 0x40 | (hlen / 4) as u8;
                h[2..4].copy_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
                let (off, more) = self.ipv4_fragment;
                let fo = (off & 0x1fff) | if more { 0x2000 } else { 0 };
                h[6..8].copy_from_slice(&fo.to_be_bytes());
                h[8] = 64;
                h[9] = proto;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                h.extend_from_slice(&opts);
                let sum = checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut exts = Vec::new();
                for (i, e) in self.ipv6_ext.iter().enumerate() {
                    let next = self.ipv6_ext.get(i + 1).map_or(proto, Ext::proto);
                    exts.push(e.bytes(next));
                }
                let first = self.ipv6_ext.first().map_or(proto, Ext::proto);
                let plen = exts.iter().map(Vec::len).sum::<usize>() + l4.len();
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
                h[6] = first;
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                f.extend_from_slice(&h);
                for e in exts {
                    bounds.push(f.len());
                    f.extend_from_slice(&e);
                }
            }
            _ => unreachable!("checked in Frame::new"),
        }
        bounds.push(f.len());
        f.extend_from_slice(&l4);
        if f.len() < self.pad_to {
            f.resize(self.pad_to, 0);
        }
        (f, bounds)
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_boundaries().0
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One's-complement sum of 16-bit big-endian words.
fn ones_sum(bytes: &[u8], mut sum: u32) -> u32 {
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

/// The pseudo-header sum of a TCP segment of `len` bytes.
fn pseudo_sum(src: IpAddr, dst: IpAddr, len: usize) -> u32 {
    let octets = |a: IpAddr| match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    ones_sum(&octets(dst), ones_sum(&octets(src), 0)) + 6 + len as u32
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// True when the TCP checksum of the segment at `l4` in `frame` is right.
pub fn tcp_checksum_ok(frame: &[u8], src: IpAddr, dst: IpAddr, l4: usize) -> bool {
    let seg = &frame[l4..];
    fold(ones_sum(seg, pseudo_sum(src, dst, seg.len()))) == 0xffff
}

/// Fills in a TCP checksum for `frame` (the builder leaves it 0).
pub fn with_tcp_checksum(mut frame: Vec<u8>, src: IpAddr, dst: IpAddr, l4: usize) -> Vec<u8> {
    frame[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let seg = &frame[l4..];
    let c = !fold(ones_sum(seg, pseudo_sum(src, dst, seg.len())));
    frame[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    frame
}

/// A random frame for differential testing: usually a well-formed frame of a random
/// shape (VLAN tags, IPv4 options, IPv6 extension headers, fragments, any TCP flags,
/// other protocols), then often damaged (truncated, bytes flipped); sometimes raw junk
/// behind an interesting EtherType. At least 14 bytes (BPF_PROG_TEST_RUN's minimum).
pub fn random_frame(rng: &mut fastrand::Rng) -> Vec<u8> {
    let v6 = rng.bool();
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            IpAddr::V6(std::net::Ipv6Addr::from(rng.u128(..))),
            IpAddr::V6(std::net::Ipv6Addr::from(rng.u128(..))),
        )
    } else {
        (
            IpAddr::V4(std::net::Ipv4Addr::from(rng.u32(..))),
            IpAddr::V4(std::net::Ipv4Addr::from(rng.u32(..))),
        )
    };
    let transport = match rng.u8(0..10) {
        0..=4 => Transport::Tcp {
            sport: rng.u16(..),
            dport: rng.u16(..),
            flags: rng.u8(..),
        },
        5..=8 => Transport::Udp {
            sport: rng.u16(..),
            dport: rng.u16(..),
        },
        _ => Transport::Other(rng.u8(..)),
    };
    let mut f = Frame::new(src, dst, transport);
    let tpids = [0x8100u16, 0x88a8];
    for _ in 0..rng.usize(0..4).saturating_sub(1) {
        f.vlans.push(tpids[rng.usize(0..2)]);
    }
    if v6 {
        for _ in 0..rng.usize(0..10).saturating_sub(5) {
            f.ipv6_ext.push(match rng.u8(0..5) {
                0 => Ext::HopByHop(rng.u8(1..4)),
                1 => Ext::Routing(rng.u8(1..4)),
                2 => Ext::DestOpts(rng.u8(1..4)),
                3 => Ext::Auth(rng.u8(3..6)),
                _ => Ext::Fragment {
                    offset: if rng.bool() { 0 } else { rng.u16(..0x1fff) },
                    more: rng.bool(),
                },
            });
        }
    } else {
        if rng.u8(0..4) == 0 {
            f.ipv4_options = vec![1; rng.usize(1..41)];
        }
        if rng.u8(0..5) == 0 {
            f.ipv4_fragment = (if rng.bool() { 0 } else { rng.u16(..0x1fff) }, rng.bool());
        }
    }
    if rng.u8(0..20) == 0 {
        f.ethertype = Some([0x0806, 0x0800, 0x86dd, 0x8100, 0x88a8, rng.u16(..)][rng.usize(0..6)]);
    }
    f.payload = vec![0; rng.usize(0..16)];
    let mut bytes = f.build();
    match rng.u8(0..10) {
        // Truncated anywhere from the Ethernet header on.
        0..=2 => bytes.truncate(rng.usize(14..=bytes.len())),
        // A few bytes of the headers changed.
        3..=5 => {
            let head = bytes.len().min(120);
            for _ in 0..rng.usize(1..5) {
                let i = rng.usize(12..head);
                bytes[i] = rng.u8(..);
            }
        }
        // Junk after a real EtherType.
        6 => {
            let n = rng.usize(0..100);
            bytes.truncate(14);
            bytes.extend((0..n).map(|_| rng.u8(..)));
        }
        _ => {}
    }
    bytes
}
