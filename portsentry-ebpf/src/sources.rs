//! `PS_SOURCES`, the per-source table (`portsentry_common::sources`): a source's set,
//! its record in it, and a new source's record put in.

use core::ptr::{NonNull, write_volatile};

use portsentry_common::{
    maps::SourceStats,
    packet::AddrWords,
    sources::{SourceSet, source_entry},
};

use crate::PS_SOURCES;

/// The set `src` belongs to; `None` until the daemon has written the header.
/// (`NonNull`: an `Option` of a raw pointer carries an undefined pointer when `None`,
/// which the compiler may spill, and the verifier refuses a read of it.)
#[inline(always)]
pub fn set_of(src: &AddrWords) -> Option<NonNull<SourceSet>> {
    let header = PS_SOURCES.get(0)?.header();
    if header.sets == 0 {
        return None;
    }
    PS_SOURCES
        .get_ptr_mut(source_entry(src, header.key, header.sets))
        .and_then(NonNull::new)
}

/// The record of `src` in `set`, marked seen at `stamp` (`seen_stamp`).
#[inline(always)]
pub fn record_in(
    set: NonNull<SourceSet>,
    src: &AddrWords,
    stamp: u32,
) -> Option<NonNull<SourceStats>> {
    // SAFETY: a value pointer from a successful lookup.
    let set = unsafe { &mut *set.as_ptr() };
    let way = set.find(src)?;
    *set.seen.get_mut(way)? = stamp;
    set.stats.get_mut(way).map(NonNull::from)
}

/// The record of `src`, if it has one (not marked seen).
#[inline(always)]
pub fn record(src: &AddrWords) -> Option<NonNull<SourceStats>> {
    // SAFETY: a value pointer from a successful lookup.
    let set = unsafe { &mut *set_of(src)?.as_ptr() };
    let way = set.find(src)?;
    set.stats.get_mut(way).map(NonNull::from)
}

/// Gives `src` the way of `set` that a new source takes (a free one, else the one seen
/// longest ago) with `stats`, or the way another CPU gave it since `record_in` missed
/// (one record per source; that CPU's probe is then not counted, as when two CPUs
/// inserted one key). The way is marked free while it is written, which narrows the
/// window in which another CPU could find the new address with the old record.
#[inline(always)]
pub fn put_new(set: NonNull<SourceSet>, src: &AddrWords, stamp: u32, stats: &SourceStats) {
    // SAFETY: a value pointer from a successful lookup.
    let set = unsafe { &mut *set.as_ptr() };
    let way = match set.find(src) {
        Some(way) => way,
        None => set.victim(stamp),
    };
    let (Some(seen), Some(addr), Some(record)) = (
        set.seen.get_mut(way),
        set.addrs.get_mut(way),
        set.stats.get_mut(way),
    ) else {
        return;
    };
    // In this order, so that another CPU hardly finds the new address with the old
    // record (it would have to read the way's mark before it is cleared and its
    // address after it is written): volatile stores stay in program order (and so in the JIT's code; x86 keeps
    // stores in order between CPUs; a CPU that reorders stores, arm64, may show them
    // out of order, within the window `portsentry_common::sources` describes). Word
    // by word: a volatile store of the whole record is made of byte stores, and costs
    // a random-source flood about 100 ns a probe.
    // SAFETY: pointers into the set, from the references above; `SourceStats` and
    // `AddrWords` are made of aligned 64-bit words.
    unsafe {
        write_volatile(seen, 0);
        write_words(
            addr as *mut AddrWords as *mut u64,
            src as *const AddrWords as *const u64,
            2,
        );
        write_words(
            record as *mut SourceStats as *mut u64,
            stats as *const SourceStats as *const u64,
            size_of::<SourceStats>() / 8,
        );
        write_volatile(seen, stamp);
    }
}

/// Copies `n` 64-bit words from `src` to `dst` with volatile stores.
///
/// # Safety
/// Both point to `n` aligned, live words.
#[inline(always)]
unsafe fn write_words(dst: *mut u64, src: *const u64, n: usize) {
    for i in 0..n {
        // SAFETY: as the caller promises.
        unsafe { write_volatile(dst.add(i), *src.add(i)) };
    }
}
