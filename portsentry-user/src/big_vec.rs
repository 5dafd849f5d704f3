//! Vectors of millions of entries (a start's restore of a million bans): their memory
//! asked for in the kernel's huge pages, where it allows them (transparent huge pages
//! `always` or `madvise`). Faulted in 4 KiB at a time, the 40 MB of a million bans' keys
//! and kernel entries are 10,000 page faults, on the path before the map writers begin;
//! the journal's recovery of a million bans took 32,800 page faults, and 19,000 with its
//! list of bans here.

/// The size of a huge page on the architectures the daemon runs on (x86-64, arm64 with
/// 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

/// A vector with room for `capacity` entries, the huge-page-aligned part of that room
/// advised `MADV_HUGEPAGE` when it holds a huge page or more.
pub fn with_capacity<T>(capacity: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(capacity);
    let start = v.as_ptr() as usize;
    let end = start + v.capacity() * size_of::<T>();
    let (first, last) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    if last > first {
        // SAFETY: an advice on pages of this allocation, which nothing reads or writes
        // yet; it changes how they are backed, never their contents. An error (huge
        // pages off) leaves them as they were.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            );
        }
    }
    v
}
