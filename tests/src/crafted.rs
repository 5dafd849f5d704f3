//! Frames a real stack accepts: [`checksummed`] fills in the transport checksum of a
//! frame from [`crate::frames::Frame`] (the builder leaves it 0), and [`fragments`]
//! splits a checksummed datagram into IPv4 or IPv6 fragments of any shape (tiny,
//! overlapping, duplicate, out of order).

use std::net::IpAddr;

use portsentry_common::packet::{self, addr_bytes};

/// One's-complement sum of 16-bit big-endian words, added to `sum`.
fn ones_sum(bytes: &[u8], mut sum: u64) -> u64 {
    for c in bytes.chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The addresses of a parsed frame, as the pseudo-header holds them.
fn addr_octets(w: &packet::AddrWords, v6: bool) -> Vec<u8> {
    let a = addr_bytes(w);
    if v6 { a.to_vec() } else { a[12..].to_vec() }
}

/// `frame` with its TCP or UDP checksum filled in over the whole datagram (by the IP
/// length). Frames of other protocols are returned unchanged.
pub fn checksummed(mut frame: Vec<u8>) -> Vec<u8> {
    let Ok(mut ip) = packet::parse_ip(frame.as_slice()) else {
        return frame;
    };
    if ip.v6 {
        // The program walks 8 extension headers; a crafted chain may be longer.
        (ip.proto, ip.l4_off) = walk_v6_chain(&frame, ip.l3_off);
    }
    let at = match ip.proto {
        6 => 16,
        17 => 6,
        _ => return frame,
    };
    let end = packet::datagram_end(frame.as_slice(), &ip).unwrap_or(usize::MAX);
    let (l4, end) = (ip.l4_off, end.min(frame.len()));
    if end < l4 + at + 2 {
        return frame;
    }
    frame[l4 + at..l4 + at + 2].copy_from_slice(&[0, 0]);
    let len = end - l4;
    let mut sum = ones_sum(&addr_octets(&ip.src, ip.v6), 0);
    sum = ones_sum(&addr_octets(&ip.dst, ip.v6), sum);
    sum += u64::from(ip.proto) + len as u64;
    sum = ones_sum(&frame[l4..end], sum);
    let mut c = !fold(sum);
    if c == 0 && ip.proto == 17 {
        // UDP sends a computed zero as all ones (zero means "no checksum").
        c = 0xffff;
    }
    frame[l4 + at..l4 + at + 2].copy_from_slice(&c.to_be_bytes());
    frame
}

/// The upper-layer protocol and its offset behind an IPv6 header at `l3` and any
/// number of extension headers.
fn walk_v6_chain(frame: &[u8], l3: usize) -> (u8, usize) {
    let (mut proto, mut off) = (frame[l3 + 6], l3 + 40);
    loop {
        let len = match proto {
            0 | 43 | 60 => (usize::from(frame[off + 1]) + 1) * 8,
            51 => (usize::from(frame[off + 1]) + 2) * 4,
            44 => 8,
            _ => return (proto, off),
        };
        proto = frame[off];
        off += len;
        if off + 2 > frame.len() {
            return (proto, off);
        }
    }
}

/// One fragment: `len` bytes of the datagram's transport part from byte `offset` (a
/// multiple of 8), with the more-fragments flag `more`.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    pub offset: usize,
    pub len: usize,
    pub more: bool,
}

/// Splits into `Piece`s of `size` bytes (the last shorter), in order: what nmap's `-f`
/// (8) and `--mtu N` do.
pub fn even_pieces(total: usize, size: usize) -> Vec<Piece> {
    (0..total)
        .step_by(size)
        .map(|offset| Piece {
            offset,
            len: size.min(total - offset),
            more: offset + size < total,
        })
        .collect()
}

/// The fragments of a checksummed, unfragmented frame (Ethernet, one IPv4 header with
/// any options or one IPv6 header, then the transport part), one frame per piece, with
/// fragment id `id`. IPv6 extension headers after the fixed header go into the
/// fragmentable part, as the transport part does (the Fragment header follows the fixed
/// header).
pub fn fragments(frame: &[u8], pieces: &[Piece], id: u32) -> Vec<Vec<u8>> {
    let ip = packet::parse_ip(frame).expect("an IP frame");
    let l3 = ip.l3_off;
    let (l4, next) = if ip.v6 {
        (l3 + 40, frame[l3 + 6])
    } else {
        (ip.l4_off, ip.proto)
    };
    let end = packet::datagram_end(frame, &ip).expect("an IP header");
    let payload = &frame[l4..end.min(frame.len())];
    pieces
        .iter()
        .map(|p| {
            let data = &payload[p.offset.min(payload.len())..(p.offset + p.len).min(payload.len())];
            let mut f = frame[..l3].to_vec();
            if ip.v6 {
                let mut h = frame[l3..l3 + 40].to_vec();
                h[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
                h[6] = 44;
                f.extend_from_slice(&h);
                let off = ((p.offset / 8) as u16) << 3 | u16::from(p.more);
                f.push(next);
                f.push(0);
                f.extend_from_slice(&off.to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
            } else {
                let mut h = frame[l3..l4].to_vec();
                let total = (h.len() + data.len()) as u16;
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                let fo = (p.offset / 8) as u16 | if p.more { 0x2000 } else { 0 };
                h[6..8].copy_from_slice(&fo.to_be_bytes());
                h[10..12].copy_from_slice(&[0, 0]);
                let c = !fold(ones_sum(&h, 0));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            f.extend_from_slice(data);
            f
        })
        .collect()
}

/// Recomputes the IPv4 header checksum of `frame` (after a test changed a header byte).
pub fn ipv4_header_checksummed(mut frame: Vec<u8>) -> Vec<u8> {
    let l3 = 14;
    let hlen = usize::from(frame[l3] & 0x0f) * 4;
    if frame.len() < l3 + hlen || hlen < 20 {
        return frame;
    }
    frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = !fold(ones_sum(&frame[l3..l3 + hlen], 0));
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    frame
}

/// The address family of a frame's source, for labels.
pub fn family(src: IpAddr) -> &'static str {
    if src.is_ipv4() { "v4" } else { "v6" }
}
