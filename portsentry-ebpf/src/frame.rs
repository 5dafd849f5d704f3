//! Bounds-checked access to the frame: every header read or write in the program goes
//! through [`ptr_at`].

use aya_ebpf::programs::XdpContext;
use bytemuck::Pod;
use portsentry_common::packet::Packet;

/// A pointer to the `T` at `off` in the frame, or `None` when the frame is shorter than
/// `off + size_of::<T>()`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let p = ctx.data() + off;
    if p + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(p as *const T)
}

/// [`ptr_at`], writable (the program owns the frame).
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, off).map(<*const T>::cast_mut)
}

/// The frame as the shared parser (`portsentry_common::packet`) reads it.
pub struct XdpPacket<'a>(pub &'a XdpContext);

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn header<T: Pod>(&self, off: usize) -> Option<T> {
        let p = ptr_at::<T>(self.0, off)?;
        // SAFETY: the header lies inside the frame (checked by `ptr_at`). It may be
        // misaligned: the kernel permits misaligned packet reads, and typed loads are
        // one instruction each where `read_unaligned` would be one per byte on BPF.
        Some(unsafe { *p })
    }
}
