//! The hooks that keep the TCP socket bitmap (`PS_TCP_SOCKETS`) trustworthy between two
//! looks of the daemon at the listeners. Attached to the root cgroup, they see every
//! socket of the host: each bind of a stream socket is counted in `PS_TCP_LISTENS`
//! before the kernel takes the port (so before the socket can be found), and each TCP
//! listen once more when the listener is in place; the XDP program looks sockets up
//! again until the daemon has looked at the listeners since. The port of a bind, and of
//! a listener, is also marked for good: a socket bound and then connected (a
//! simultaneous open) is found by its port, though it never listens.

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_LISTEN_CB,
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};
use portsentry_common::maps::{TCP_BOUND_WORD_BASE, TCP_LISTENS_SEEN};

use crate::{PS_TCP_LISTENS, PS_TCP_SOCKETS, atomic};

/// `SOCK_STREAM`: TCP (and MPTCP) sockets.
const SOCK_STREAM: u32 = 1;

#[cgroup_sock_addr(bind4)]
pub fn ps_tcp_bind4(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn ps_tcp_bind6(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx)
}

/// A bind: a stream socket's port marked (0: any free port, chosen later) and the bind
/// counted. Always allowed.
#[inline(always)]
fn on_bind(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context the kernel passed; these fields are readable in every bind
    // hook.
    let (kind, port) = unsafe { ((*ctx.sock_addr).type_, (*ctx.sock_addr).user_port) };
    if kind == SOCK_STREAM {
        // Network byte order in the low 16 bits.
        mark(u16::from_be(port as u16));
        count();
    }
    1
}

/// Every socket operation of a TCP socket; only the listen (the listener is in place)
/// is counted, its port marked.
#[sock_ops]
pub fn ps_tcp_listen(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_LISTEN_CB {
        // Host byte order.
        mark(ctx.local_port() as u16);
        count();
    }
    1
}

#[inline(always)]
fn mark(port: u16) {
    if port == 0 {
        return;
    }
    if let Some(word) = PS_TCP_SOCKETS.get_ptr_mut(TCP_BOUND_WORD_BASE + (port as u32 >> 6)) {
        // SAFETY: an aligned u64 of the array, shared by every CPU.
        unsafe { atomic::or(word, 1u64 << (port & 63)) };
    }
}

#[inline(always)]
fn count() {
    if let Some(seen) = PS_TCP_LISTENS.get_ptr_mut(TCP_LISTENS_SEEN) {
        // SAFETY: an aligned u64 of the array, shared by every CPU.
        unsafe { atomic::add(seen, 1) };
    }
}
