//! The two atomic read-modify-write operations the program needs on values shared by
//! every CPU (BPF_ATOMIC). `core::sync::atomic` offers no read-modify-write on this
//! target, so these call the compiler's intrinsics directly. They return nothing: the
//! value fetched by the intrinsic did not come back right on this target (a test saw it
//! stay below the limit while the count went past it), so a caller reads the value
//! again when it needs it.

use core::intrinsics::{AtomicOrdering, atomic_or, atomic_xadd};

/// `*dst += v`, atomically.
///
/// # Safety
/// `dst` points to a live, aligned `u64` (a map value).
#[inline(always)]
pub unsafe fn add(dst: *mut u64, v: u64) {
    // SAFETY: as the caller promises.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}

/// `*dst |= v`, atomically.
///
/// # Safety
/// `dst` points to a live, aligned `u64` (a map value).
#[inline(always)]
pub unsafe fn or(dst: *mut u64, v: u64) {
    // SAFETY: as the caller promises.
    unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}
