//! `PS_BAN_FILTER` from the daemon's side. The program writes it too: the bits of a ban
//! it makes at the trigger, with an atomic OR. So the daemon never writes a word back
//! whole: it sets and clears bits with atomic operations on the array mapped into its
//! memory (`BPF_F_MMAPABLE`), and a bit the program sets meanwhile in the same word is
//! kept. (Written back whole, a word read before the program's ban and written after it
//! lost that ban's bit: the program let its source through until the daemon took the
//! ban over.)
//!
//! A map made without `BPF_F_MMAPABLE` (an earlier release's object, which the bench
//! loads as a baseline, or its pins opened by `status`) is read and written through the
//! map's calls, as that release did.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use aya::maps::{Array, Map, MapData};
use portsentry_common::maps;

use super::{
    bans::{read_words, write_changed_words},
    mapped::Mapped,
    maps::fd,
};

/// `BPF_F_MMAPABLE` (`include/uapi/linux/bpf.h`).
pub(super) const BPF_F_MMAPABLE: u32 = 1 << 10;

pub(super) enum BanFilter {
    /// This release's map, mapped (the map's fd kept open: the program's instructions
    /// name it while the kernel verifies it).
    Mapped { mem: Mapped<u64>, _map: MapData },
    /// A map without `BPF_F_MMAPABLE`.
    Calls(Array<MapData, u64>),
}

impl BanFilter {
    /// `read_only`: mapped to read only (`status`).
    pub fn new(map: Map, read_only: bool) -> Result<BanFilter> {
        let Map::Array(data) = map else {
            bail!(
                "{} is not an array: run `portsentry unload`",
                maps::BAN_FILTER
            );
        };
        let info = data.info()?;
        if info.max_entries() != maps::BAN_FILTER_WORDS {
            bail!(
                "{} has {} words, not {}: run `portsentry unload`",
                maps::BAN_FILTER,
                info.max_entries(),
                maps::BAN_FILTER_WORDS
            );
        }
        if info.map_flags() & BPF_F_MMAPABLE == 0 {
            return Ok(BanFilter::Calls(Array::try_from(Map::Array(data))?));
        }
        let mem = Mapped::new(&data, maps::BAN_FILTER, read_only)?;
        Ok(BanFilter::Mapped { mem, _map: data })
    }

    /// Every word.
    pub fn read_all(&self) -> Result<Vec<u64>> {
        match self {
            BanFilter::Mapped { mem: m, .. } => Ok((0..m.len())
                .map(|i| word(m, i).load(Ordering::Relaxed))
                .collect()),
            BanFilter::Calls(a) => read_words(fd(a), maps::BAN_FILTER_WORDS, maps::BAN_FILTER),
        }
    }

    /// Sets the bits of `mask` in word `i`.
    pub fn set(&mut self, i: u32, mask: u64) -> Result<()> {
        match self {
            BanFilter::Mapped { .. } => self.set_many(std::iter::once((i, mask))),
            BanFilter::Calls(a) => {
                let now = a.get(&i, 0)?;
                a.set(i, now | mask, 0)?;
                Ok(())
            }
        }
    }

    /// Sets the bits of each `(word, mask)`.
    pub fn set_many(&mut self, bits: impl Iterator<Item = (u32, u64)>) -> Result<()> {
        match self {
            BanFilter::Mapped { mem: m, .. } => {
                writable(m)?;
                for (i, mask) in bits {
                    word(m, i as usize).fetch_or(mask, Ordering::Relaxed);
                }
                Ok(())
            }
            BanFilter::Calls(a) => {
                let now = read_words(fd(a), maps::BAN_FILTER_WORDS, maps::BAN_FILTER)?;
                let mut want = now.clone();
                for (i, mask) in bits {
                    want[i as usize] |= mask;
                }
                write_changed_words(fd(a), &now, &want, maps::BAN_FILTER)
            }
        }
    }

    /// Clears the bits of `mask` in word `i`.
    pub fn clear(&mut self, i: u32, mask: u64) -> Result<()> {
        match self {
            BanFilter::Mapped { mem: m, .. } => {
                writable(m)?;
                word(m, i as usize).fetch_and(!mask, Ordering::Relaxed);
                Ok(())
            }
            BanFilter::Calls(a) => {
                let now = a.get(&i, 0)?;
                a.set(i, now & !mask, 0)?;
                Ok(())
            }
        }
    }

    /// Makes the filter `want` (the bits of the bans read), keeping the bits set since
    /// `before` was read (the program's bans made meanwhile), or every bit set (`keep_all`),
    /// each word as [`kept`] says at the moment it is written.
    pub fn rebuild(&mut self, want: &[u64], before: &[u64], keep_all: bool) -> Result<()> {
        let keep = |cur: u64, want: u64, before: u64| kept(cur, want, before, keep_all);
        match self {
            BanFilter::Mapped { mem: m, .. } => {
                writable(m)?;
                for (i, (w, b)) in want.iter().zip(before).enumerate() {
                    let _ = word(m, i).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                        let new = keep(cur, *w, *b);
                        (new != cur).then_some(new)
                    });
                }
                Ok(())
            }
            BanFilter::Calls(a) => {
                let now = read_words(fd(a), maps::BAN_FILTER_WORDS, maps::BAN_FILTER)?;
                let words: Vec<u64> = now
                    .iter()
                    .zip(want.iter().zip(before))
                    .map(|(cur, (w, b))| keep(*cur, *w, *b))
                    .collect();
                write_changed_words(fd(a), &now, &words, maps::BAN_FILTER)
            }
        }
    }
}

fn writable(m: &Mapped<u64>) -> Result<()> {
    if m.read_only() {
        bail!("{} is mapped to read only", maps::BAN_FILTER);
    }
    Ok(())
}

/// Word `i` of the mapped filter, for atomic access.
fn word(m: &Mapped<u64>, i: usize) -> &AtomicU64 {
    // SAFETY: `Mapped::ptr` checks the index; the word lies in the mapping, which lives
    // as long as `m`, is aligned to 8 (the values start on a page) and is only ever
    // accessed atomically here and in the program.
    unsafe { AtomicU64::from_ptr(m.ptr(i)) }
}

/// A word of the rebuilt filter: `want` (the bits of the bans read) and the bits the
/// attached program set while they were read, those in `cur` (the word now) and not in
/// `before` (the word before the read): the bits of its own bans made meanwhile, whose
/// entries in `PS_BANS` the read may have missed (they get their users when the daemon
/// takes the bans over). With `keep_all`, every bit of `cur`.
fn kept(cur: u64, want: u64, before: u64, keep_all: bool) -> u64 {
    want | if keep_all { cur } else { cur & !before }
}

#[cfg(test)]
mod tests {
    use super::kept;

    #[test]
    fn the_rebuild_keeps_the_bits_the_program_set_meanwhile() {
        // A bit of a ban read (1), a stale bit (2), a bit set meanwhile (4).
        assert_eq!(
            kept(0b111, 0b001, 0b011, false),
            0b101,
            "the stale bit goes, the new ones stay"
        );
        assert_eq!(kept(0b1000, 0, 0, false), 0b1000);
        assert_eq!(
            kept(0b111, 0b001, 0b011, true),
            0b111,
            "during a resize nothing is cleared"
        );
    }
}
