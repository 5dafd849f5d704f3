//! VERIFY_SOURCES: a SYN probe is answered with a SYN-ACK whose sequence number is a
//! cookie (`portsentry_common::maps::cookie`); a pure ACK that returns cookie + 1 proves
//! the source address is its own.

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, programs::XdpContext};
use portsentry_common::{
    Counter, PROTO_TCP, ScanType,
    maps::{Settings, cookie, cookie_slot},
    packet::{AddrWords, EthHdr, Ip, Ipv4Hdr, Ipv6Hdr, L4, TcpHdr, parse_ip},
    scan::tcp_flags,
};

use crate::{
    count, counted_as,
    frame::{XdpPacket, ptr_at, ptr_at_mut},
    probe::{is_watched, record_probe},
};

/// The cookie for this packet's 4-tuple in time slot `slot`.
#[inline(always)]
fn packet_cookie(ip: &Ip, l4: &L4, secret: u64, slot: u64) -> u32 {
    cookie(&ip.src, &ip.dst, l4.src_port, l4.dst_port, secret, slot)
}

/// A pure ACK to a watched port: what may answer a challenge ([`answers_challenge`]
/// checks the rest).
#[inline(always)]
pub fn may_answer_challenge(l4: &L4) -> bool {
    let f = l4.tcp_flags & tcp_flags::CLASSIFIED;
    l4.proto == PROTO_TCP
        && f & tcp_flags::ACK != 0
        && f & (tcp_flags::SYN | tcp_flags::RST | tcp_flags::FIN) == 0
        && is_watched(l4)
}

/// A segment [`may_answer_challenge`] let through whose acknowledgment number is our
/// cookie + 1: the source received our SYN-ACK, so its address is its own. Recorded as
/// a verified probe of the source as its SYN was counted (`key`, its network under
/// SOURCE_PREFIX_V6 `prefix`, as the ignore trie has it: [`counted_as`]).
#[inline(always)]
pub fn answers_challenge(
    ctx: &XdpContext,
    ip: &Ip,
    l4: &L4,
    key: &AddrWords,
    prefix: Option<u32>,
    settings: &Settings,
) -> bool {
    // SAFETY: helper without arguments.
    let slot = cookie_slot(unsafe { bpf_ktime_get_coarse_ns() });
    // The acknowledgment number, read here and not by the parser for every packet; the
    // frame is parsed again for its offsets (see `send_challenge`). After the helper
    // call: before it, the compiler may reuse the packet pointers' earlier loads as
    // plain numbers, which the verifier refuses.
    let Some(ack_seq) = acknowledgment(ctx) else {
        return false;
    };
    let want = ack_seq.wrapping_sub(1);
    if want != packet_cookie(ip, l4, settings.cookie_secret, slot)
        && want != packet_cookie(ip, l4, settings.cookie_secret, slot.wrapping_sub(1))
    {
        return false;
    }
    count(Counter::Verified);
    // Looked up once the answer is known to be one (a pure ACK of a served watched port
    // comes here with each segment): a source in a network that holds an ignored
    // address is counted by its own address, as its SYN was, and never banned by that
    // network, whose ban would cut the ignored host off (a LAN's link-local /64); a
    // source ignored since its challenge is not counted.
    let Some(src) = counted_as(ip, *key, prefix, settings) else {
        return true;
    };
    // Reported as what it answers: the SYN probe.
    let mut syn = *l4;
    syn.tcp_flags = tcp_flags::SYN;
    // A verified source that reaches the trigger here is banned by `record_probe`; this
    // ACK itself passes (it completes nothing: the challenge was ours).
    let _ = record_probe(ctx, &src, &syn, ScanType::TcpSyn, true, settings);
    true
}

/// The TCP acknowledgment number of the frame's segment, host order.
#[inline(always)]
fn acknowledgment(ctx: &XdpContext) -> Option<u32> {
    let ip = parse_ip(&XdpPacket(ctx)).ok()?;
    let tcp = ptr_at::<TcpHdr>(ctx, ip.l4_off)?;
    // SAFETY: bounds-checked.
    Some(u32::from_be(unsafe { (*tcp).ack_seq }))
}

/// Turns a SYN without payload into our SYN-ACK challenge in place (sent with XDP_TX).
/// False when the SYN does not qualify.
#[inline(always)]
#[allow(
    clippy::manual_swap,
    reason = "headers may be misaligned: swap through the raw pointer, not references"
)]
pub fn send_challenge(ctx: &XdpContext, l4: &L4, settings: &Settings) -> bool {
    // The frame is parsed again for its offsets: the caller's are dead by now, which
    // keeps the verifier from walking the whole program once per header shape.
    let ip = match parse_ip(&XdpPacket(ctx)) {
        Ok(ip) => ip,
        Err(_) => return false,
    };
    let ip = &ip;
    // SAFETY: helper without arguments.
    let slot = cookie_slot(unsafe { bpf_ktime_get_coarse_ns() });
    let cookie = packet_cookie(ip, l4, settings.cookie_secret, slot);
    let (Some(eth), Some(tcp)) = (
        ptr_at_mut::<EthHdr>(ctx, 0),
        ptr_at_mut::<TcpHdr>(ctx, ip.l4_off),
    ) else {
        return false;
    };
    // Only a SYN without payload (the TCP header is the whole segment) is answered.
    // SAFETY: bounds-checked.
    let hlen = ((unsafe { (*tcp).doff } >> 4) as usize) * 4;
    let segment = if ip.v6 {
        let Some(h) = ptr_at::<Ipv6Hdr>(ctx, ip.l3_off) else {
            return false;
        };
        // SAFETY: bounds-checked.
        (u16::from_be(unsafe { (*h).payload_len }) as usize)
            .wrapping_sub(ip.l4_off - ip.l3_off - 40)
    } else {
        let Some(h) = ptr_at::<Ipv4Hdr>(ctx, ip.l3_off) else {
            return false;
        };
        // SAFETY: bounds-checked.
        (u16::from_be(unsafe { (*h).tot_len }) as usize).wrapping_sub(ip.l4_off - ip.l3_off)
    };
    if !(20..=60).contains(&hlen) || segment != hlen {
        return false;
    }
    // SAFETY: both pointers were bounds-checked just above; the program owns the buffer.
    unsafe {
        let e = *eth;
        (*eth).dst = e.src;
        (*eth).src = e.dst;
    }
    if ip.v6 {
        let Some(h) = ptr_at_mut::<Ipv6Hdr>(ctx, ip.l3_off) else {
            return false;
        };
        // SAFETY: bounds-checked.
        unsafe {
            let src = (*h).src;
            (*h).src = (*h).dst;
            (*h).dst = src;
        }
    } else {
        let Some(h) = ptr_at_mut::<Ipv4Hdr>(ctx, ip.l3_off) else {
            return false;
        };
        // SAFETY: bounds-checked.
        unsafe {
            let src = (*h).src;
            (*h).src = (*h).dst;
            (*h).dst = src;
        }
    }
    // SAFETY: bounds-checked above.
    unsafe {
        let t = *tcp;
        (*tcp).sport = t.dport;
        (*tcp).dport = t.sport;
        (*tcp).seq = cookie.to_be();
        (*tcp).ack_seq = (u32::from_be(t.seq).wrapping_add(1)).to_be();
        (*tcp).flags = tcp_flags::SYN | tcp_flags::ACK;
        (*tcp).check = 0;
    }
    // The checksum is computed afresh, not adjusted: a SYN from a local stack may carry
    // only a partial checksum (offloaded), which an adjustment would keep wrong. Sums
    // are over raw (memory-order) words, which one's-complement arithmetic allows.
    let mut acc = addr_sum(&ip.src, ip.v6)
        + addr_sum(&ip.dst, ip.v6)
        + (PROTO_TCP as u16).to_be() as u64
        + (hlen as u16).to_be() as u64;
    for i in 0..15usize {
        if i * 4 >= hlen {
            break;
        }
        let Some(w) = ptr_at::<u32>(ctx, ip.l4_off + i * 4) else {
            return false;
        };
        // SAFETY: bounds-checked.
        acc += unsafe { *w } as u64;
    }
    // SAFETY: bounds-checked above.
    unsafe { (*tcp).check = !csum_fold(acc) };
    true
}

/// Folds a one's-complement sum to 16 bits.
#[inline(always)]
fn csum_fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The one's-complement sum of an address held as words (raw, memory order): the IPv4
/// part only for an IPv4-mapped address.
#[inline(always)]
fn addr_sum(w: &AddrWords, v6: bool) -> u64 {
    if v6 {
        (w[0] & 0xffff_ffff) + (w[0] >> 32) + (w[1] & 0xffff_ffff) + (w[1] >> 32)
    } else {
        w[1] >> 32
    }
}
