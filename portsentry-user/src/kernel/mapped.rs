//! An array map made with `BPF_F_MMAPABLE`, mapped into the daemon's memory: reading or
//! writing a million values is a walk over memory, not a syscall each. The program
//! writes the same memory on every CPU at once, so every access here is volatile (or,
//! through [`Mapped::ptr`], atomic). The mapping holds the map: it lives as long as
//! the mapping does, whatever happens to the fd it was made from.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;

pub(super) struct Mapped<T> {
    base: NonNull<T>,
    entries: usize,
    /// Mapped to read only: [`Mapped::put`] refuses.
    read_only: bool,
    /// The map's name, for errors.
    name: &'static str,
}

// SAFETY: the mapping is shared memory, accessed only through volatile and atomic
// operations; the pointer is not tied to a thread.
unsafe impl<T> Send for Mapped<T> {}
unsafe impl<T> Sync for Mapped<T> {}

impl<T: bytemuck::Pod> Mapped<T> {
    /// Maps `map`, the map `name`, whose values must be `T`.
    pub fn new(map: &MapData, name: &'static str, read_only: bool) -> Result<Self> {
        let info = map.info()?;
        if info.value_size() as usize != size_of::<T>() {
            bail!(
                "{name} holds values of {} bytes, not {}: run `portsentry unload`",
                info.value_size(),
                size_of::<T>()
            );
        }
        let entries = info.max_entries() as usize;
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: maps the array's values (BPF_F_MMAPABLE), whole pages from offset 0.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len::<T>(entries),
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!("mapping {name} into memory (was it made without BPF_F_MMAPABLE?)")
            });
        }
        let base = NonNull::new(ptr.cast::<T>()).context("mmap returned null")?;
        Ok(Mapped {
            base,
            entries,
            read_only,
            name,
        })
    }

    /// The entries the array has.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// A copy of entry `i` (`i < len`).
    pub fn get(&self, i: usize) -> T {
        assert!(
            i < self.entries,
            "{}: entry {i} of {}",
            self.name,
            self.entries
        );
        // SAFETY: within the mapping; a volatile read of memory the program writes.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(i)) }
    }

    /// Writes entry `i` whole (`i < len`; the mapping writable).
    pub fn put(&self, i: usize, value: &T) {
        assert!(
            i < self.entries && !self.read_only,
            "{}: entry {i}",
            self.name
        );
        // SAFETY: within a writable mapping.
        unsafe { std::ptr::write_volatile(self.base.as_ptr().add(i), *value) }
    }

    /// Entry `i` in place, for atomic access to its fields (`i < len`).
    pub fn ptr(&self, i: usize) -> *mut T {
        assert!(
            i < self.entries,
            "{}: entry {i} of {}",
            self.name,
            self.entries
        );
        // SAFETY: within the mapping.
        unsafe { self.base.as_ptr().add(i) }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of this length.
        unsafe { libc::munmap(self.base.as_ptr().cast(), mapped_len::<T>(self.entries)) };
    }
}

/// The bytes mapped for `entries` values (whole pages).
fn mapped_len<T>(entries: usize) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    (entries * size_of::<T>()).next_multiple_of(page)
}
