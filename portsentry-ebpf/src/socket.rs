//! Is the probed port in use on this host? A port a local socket owns is never a scan
//! target.

use aya_ebpf::{
    bindings::bpf_sock_tuple,
    helpers::generated::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    programs::XdpContext,
};
use portsentry_common::{
    PROTO_TCP,
    maps::{TCP_BOUND_WORD_BASE, TCP_LISTENS_MARK, TCP_LISTENS_SEEN},
    packet::{AddrWords, Ip, L4},
    scan::tcp_flags::ACK,
};

use crate::{PS_TCP_LISTENS, PS_TCP_SOCKETS};

/// `BPF_F_CURRENT_NETNS`: look sockets up in the netns of the receiving device.
const CURRENT_NETNS: u64 = -1i64 as u64;

/// True when a socket on this host (listening, connected, or a TCP request or
/// time-wait socket) matches the packet's 4-tuple in the receiving device's netns.
#[inline(always)]
pub fn has_local_socket(ctx: &XdpContext, ip: &Ip, l4: &L4) -> bool {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if ip.v6 {
        // SAFETY: writing plain integers into the union's ipv6 member.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            t.saddr = core::mem::transmute::<AddrWords, [u32; 4]>(ip.src);
            t.daddr = core::mem::transmute::<AddrWords, [u32; 4]>(ip.dst);
            t.sport = l4.src_port.to_be();
            t.dport = l4.dst_port.to_be();
        }
        core::mem::size_of::<[u32; 8]>() + 4
    } else {
        let s = ip.src[1].to_ne_bytes();
        let d = ip.dst[1].to_ne_bytes();
        // SAFETY: writing plain integers into the union's ipv4 member.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = u32::from_ne_bytes([s[4], s[5], s[6], s[7]]);
            t.daddr = u32::from_ne_bytes([d[4], d[5], d[6], d[7]]);
            t.sport = l4.src_port.to_be();
            t.dport = l4.dst_port.to_be();
        }
        12
    };
    // SAFETY: ctx is the program's context, tuple lives on the stack for the call.
    let sk = unsafe {
        if l4.proto == PROTO_TCP {
            bpf_skc_lookup_tcp(ctx.ctx.cast(), &mut tuple, size as u32, CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(ctx.ctx.cast(), &mut tuple, size as u32, CURRENT_NETNS, 0).cast()
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: releasing the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    true
}

/// False when no TCP socket of this host can own the port of a segment without ACK, so
/// that the lookup (most of a probe's cost) is skipped: the daemon's bitmap of ports
/// with a listener, and the hook's of ports a bind asked for, both clear, and no bind or
/// listen since the daemon last looked (`PS_TCP_LISTENS`). A segment without ACK
/// (a SYN, or a FIN, NULL or XMAS probe) belongs to no connection but by a listener,
/// or by a socket bound to its port (a simultaneous open); a segment with ACK, a UDP
/// datagram, or any doubt is looked up.
#[inline(always)]
pub fn may_have_socket(l4: &L4) -> bool {
    if l4.proto != PROTO_TCP || l4.tcp_flags & ACK != 0 {
        return true;
    }
    let (Some(seen), Some(mark)) = (
        PS_TCP_LISTENS.get_ptr(TCP_LISTENS_SEEN),
        PS_TCP_LISTENS.get_ptr(TCP_LISTENS_MARK),
    ) else {
        return true;
    };
    // SAFETY: value pointers of the array; the hooks count `seen` up on other CPUs.
    let current =
        unsafe { core::ptr::read_volatile(seen) == core::ptr::read_volatile(mark).wrapping_sub(1) };
    if !current {
        return true;
    }
    let word = l4.dst_port as u32 >> 6;
    let bit = 1u64 << (l4.dst_port & 63);
    match (
        PS_TCP_SOCKETS.get(word),
        PS_TCP_SOCKETS.get(TCP_BOUND_WORD_BASE + word),
    ) {
        (Some(listening), Some(bound)) => (listening | bound) & bit != 0,
        _ => true,
    }
}
