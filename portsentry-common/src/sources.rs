//! The per-source table `PS_SOURCES`: what each source has done, kept by the program
//! and read by the daemon. Both sides find a source here, so both use these functions.
//!
//! A set-associative table in an array (`BPF_F_MMAPABLE`, so that the daemon reads and
//! clears records in place). Entry 0 is the header: the table's hash key and its
//! number of sets. Entries `1..=sets` are the sets: [`SOURCE_WAYS`] sources each, their
//! addresses and ages in the set's first cache line, one line of [`SourceStats`] each.
//! A source's set comes from a keyed hash of its address. A new source takes a free
//! way of its set, or the way seen longest ago.
//!
//! Why not the kernel's LRU hash: a new source costs it a miss, a node taken from its
//! lists and, when the free nodes run out, a batch of the oldest sources evicted, each
//! unlinked from its own bucket under that bucket's lock. A random-source flood pays
//! that at every packet. Here a new source costs its set's first line and the line of
//! the way it takes.
//!
//! The hash is keyed (a random key per table) so that nobody can aim sources at the
//! set of a scanner's record to push it out: with a known hash, a scanner could hide
//! by sending three forged sources of its own set between two probes.
//!
//! No lock: a CPU that found a source's way may update it while another CPU gives that
//! way to a new source of the same set, as a CPU could write a node of the LRU hash
//! that another CPU had just reused for another source (its nodes are preallocated and
//! reused at once). Both need a new source of the same set (of the same map, for the
//! LRU hash) within the few nanoseconds between a read of the record and its write.
//! A way is marked free while it is given to a new source, which narrows the moment in
//! which another CPU could find the new address with the old record.

use crate::{
    maps::{SourceStats, fmix64},
    packet::AddrWords,
};

/// Sources per set: their addresses (16 bytes each) and ages fit one cache line.
pub const SOURCE_WAYS: usize = 3;

/// One entry of `PS_SOURCES`. Entry 0 is the header ([`SourceSet::header`]).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SourceSet {
    /// The sources, as the program keys them (network byte order words).
    pub addrs: [AddrWords; SOURCE_WAYS],
    /// When each way was last seen ([`seen_stamp`]); 0: the way is free.
    pub seen: [u32; SOURCE_WAYS],
    pub _pad: u32,
    pub stats: [SourceStats; SOURCE_WAYS],
}
const _: () = assert!(size_of::<SourceSet>() == 256);

/// The header (entry 0): the hash key and the number of sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceHeader {
    pub key: u64,
    pub sets: u32,
}

impl SourceSet {
    /// Entry 0 read as the header; `sets` 0 while the daemon has not written it.
    #[inline(always)]
    pub fn header(&self) -> SourceHeader {
        SourceHeader {
            key: self.addrs[0][0],
            sets: self.addrs[0][1] as u32,
        }
    }

    /// An entry 0 holding `header`.
    pub fn with_header(header: SourceHeader) -> SourceSet {
        let mut set: SourceSet = bytemuck::Zeroable::zeroed();
        set.addrs[0] = [header.key, u64::from(header.sets)];
        set
    }

    /// The way holding `addr`, if any.
    #[inline(always)]
    pub fn find(&self, addr: &AddrWords) -> Option<usize> {
        // Written out: a loop costs the verifier more than three compares.
        if self.seen[0] != 0 && self.addrs[0][0] == addr[0] && self.addrs[0][1] == addr[1] {
            Some(0)
        } else if self.seen[1] != 0 && self.addrs[1][0] == addr[0] && self.addrs[1][1] == addr[1] {
            Some(1)
        } else if self.seen[2] != 0 && self.addrs[2][0] == addr[0] && self.addrs[2][1] == addr[1] {
            Some(2)
        } else {
            None
        }
    }

    /// Puts `stats` as `addr`'s record: in its way if it has one, else in the way a new
    /// source takes. For the daemon's writes to a copy of a set (the program orders its
    /// stores itself, as other CPUs read the set meanwhile).
    pub fn place(&mut self, addr: &AddrWords, stamp: u32, stats: &SourceStats) {
        let way = self.find(addr).unwrap_or_else(|| self.victim(stamp));
        self.addrs[way] = *addr;
        self.seen[way] = stamp;
        self.stats[way] = *stats;
    }

    /// The way a new source takes at `stamp`: a free one, else the one seen longest ago.
    #[inline(always)]
    pub fn victim(&self, stamp: u32) -> usize {
        let age = |w: usize| {
            if self.seen[w] == 0 {
                u32::MAX
            } else {
                stamp.wrapping_sub(self.seen[w])
            }
        };
        let (a0, a1, a2) = (age(0), age(1), age(2));
        if a0 >= a1 && a0 >= a2 {
            0
        } else if a1 >= a2 {
            1
        } else {
            2
        }
    }
}

/// A way's age stamp at `now_ns`: units of 2^20 ns (about a millisecond), never 0 (a
/// free way). Wraps after about 52 days; ages are compared by wrapping difference.
#[inline(always)]
pub const fn seen_stamp(now_ns: u64) -> u32 {
    (now_ns >> 20) as u32 | 1
}

/// The entry (`1..=sets`) of `addr`'s set in a table of `sets` sets keyed by `key`.
#[inline(always)]
pub const fn source_entry(addr: &AddrWords, key: u64, sets: u32) -> u32 {
    let x = fmix64(fmix64(addr[0] ^ key) ^ addr[1] ^ key.rotate_left(32));
    // The high half scaled to `sets` (no division).
    1 + (((x >> 32) * sets as u64) >> 32) as u32
}

/// The sets for MAX_TRACKED_SOURCES sources.
pub const fn source_sets(sources: u32) -> u32 {
    sources.div_ceil(SOURCE_WAYS as u32)
}

/// `PS_SOURCES`'s entries for MAX_TRACKED_SOURCES sources: the header and the sets.
pub const fn source_entries(sources: u32) -> u32 {
    source_sets(sources) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_in_the_table() {
        for sets in [1u32, 2, 3, 1000, 21846, u32::MAX] {
            for i in 0..2000u64 {
                let e = source_entry(&[i.wrapping_mul(0x9e37), !i], 0x1234 ^ i, sets);
                assert!((1..=sets).contains(&e), "entry {e} of {sets}");
            }
        }
    }

    #[test]
    fn the_key_moves_a_source_to_another_set() {
        let addr = [0u64, 0xffff_0000 | (0x0a00_0001u64 << 32)];
        let moved = (0..64u64)
            .filter(|k| source_entry(&addr, *k, 1 << 20) != source_entry(&addr, 0, 1 << 20))
            .count();
        assert!(moved > 60, "{moved}");
    }

    #[test]
    fn sets_spread_neighbouring_addresses() {
        let sets = 1024u32;
        let mut hits = [0u32; 1024];
        for i in 0..(sets * 16) as u64 {
            let addr = [0u64, 0xffff_0000 | ((0x0a00_0000 + i) << 32)];
            hits[(source_entry(&addr, 77, sets) - 1) as usize] += 1;
        }
        assert!(hits.iter().all(|h| (1..=48).contains(h)), "{hits:?}");
    }

    #[test]
    fn a_free_way_then_the_oldest_is_taken() {
        let mut set: SourceSet = bytemuck::Zeroable::zeroed();
        assert_eq!(set.victim(100), 0);
        set.seen = [99, 0, 50];
        assert_eq!(set.victim(100), 1, "free way first");
        set.seen = [99, 97, 98];
        assert_eq!(set.victim(100), 1, "oldest");
        // Across the stamp's wrap.
        set.seen = [u32::MAX - 1, 3, 5];
        assert_eq!(set.victim(7), 0);
        set.addrs[2] = [1, 2];
        assert_eq!(set.find(&[1, 2]), Some(2));
        set.seen[2] = 0;
        assert_eq!(set.find(&[1, 2]), None, "a free way matches nothing");
    }

    #[test]
    fn the_header_round_trips() {
        let h = SourceHeader {
            key: 0xdead_beef_0123_4567,
            sets: 21846,
        };
        assert_eq!(SourceSet::with_header(h).header(), h);
        assert_eq!(source_entries(65536), 21846 + 1);
    }
}
