//! The time of a probe or of a ban check: the kernel's coarse clock (CLOCK_MONOTONIC
//! as of the last tick), read once per tick per CPU and kept in `PS_CLOCK`.
//!
//! The coarse clock moves only when the timekeeper is updated, at the tick that also
//! moves `jiffies`. `bpf_jiffies64` is a plain load (the verifier inlines it), while
//! `bpf_ktime_get_coarse_ns` is a helper call: 12 to 14 ns a probe on the AMD host of
//! BENCHMARKS.md, which mitigates SRSO with a safe return (every return costs), a
//! seventh of a probe's cost. So the clock is read when `jiffies` has moved since this
//! CPU last read it, and otherwise taken from the cache. The time may then lag the
//! coarse clock by up to one tick more (a CPU that sees the new `jiffies` before the
//! timekeeper's update keeps the old time until the next tick): a few ms, against bans
//! and windows counted in seconds. So one CPU's time may be a tick behind another's:
//! what compares a time taken on another CPU (a source's first probe, the ban budget's
//! second) must not assume they come in order (`probe::kernel_ban`).

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::PS_CLOCK;

/// The clock as this CPU last read it (`PS_CLOCK`).
#[derive(Clone, Copy)]
pub struct Tick {
    jiffies: u64,
    ns: u64,
}

/// CLOCK_MONOTONIC nanoseconds, at the coarse clock's resolution (see above).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments (the verifier inlines it as a load).
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(tick) = PS_CLOCK.get_ptr_mut(0) else {
        // SAFETY: helper without arguments.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot; the program runs to its end on this CPU.
    let tick = unsafe { &mut *tick };
    if tick.jiffies != jiffies {
        // SAFETY: helper without arguments.
        tick.ns = unsafe { bpf_ktime_get_coarse_ns() };
        tick.jiffies = jiffies;
    }
    tick.ns
}
