//! `PS_BAN_TAGS`: the IPv4 exact bans in two bytes each, so that a million of them fit
//! 4 MiB (`PS_BAN_CACHE` needs 32 MiB for as many: a way holds a whole 16-byte address).
//! A packet from a banned source then costs its filter word and one line of a table small
//! enough for the CPU's caches to keep much of, where the cache's line is one the CPU
//! rarely holds.
//!
//! An IPv4 address goes through a bijective 32-bit mix ([`mix`]); the top bits of the
//! result pick a bucket of 64 bytes (one cache line: the array is made with
//! `BPF_F_MMAPABLE`, so its values start on a page), and its low 16 bits are the
//! address's tag. With at least 2^16 buckets the bucket's bits and the tag together are
//! the whole mixed value, so a tag in its bucket stands for exactly one address: a tag
//! found is a ban, never a likeness.
//!
//! A bucket holds up to [`BAN_TAG_SLOTS`] tags and one `until` for all of them: the
//! soonest end of its bans, in the units of [`crate::maps::cache_until`]. The table only
//! ever says yes: a source whose tag is absent (its bucket full, its ban made by the
//! program and not yet taken over by the daemon) goes on to the cache and the hash, and
//! so does one whose bucket's `until` has passed. Only the daemon writes the table.

use bytemuck::{Pod, Zeroable};

use crate::maps::ban_cache_sets;

/// Tags per bucket.
pub const BAN_TAG_SLOTS: usize = 29;
/// Fewest buckets (4 MiB): below 2^16, the tag would not hold the rest of the address.
pub const BAN_TAG_MIN_SHIFT: u32 = 16;

/// log2 of the buckets for a `PS_BAN_CACHE` of 2^`cache_shift` sets: an eighth as many
/// (sixteen bans a bucket at MAX_BANS, for 29 slots), at least 2^16.
#[inline(always)]
pub const fn ban_tag_shift(cache_shift: u32) -> u32 {
    if cache_shift > BAN_TAG_MIN_SHIFT + 3 {
        cache_shift - 3
    } else {
        BAN_TAG_MIN_SHIFT
    }
}

/// The buckets of `PS_BAN_TAGS` for MAX_BANS `bans`.
pub const fn ban_tag_buckets(bans: u32) -> u32 {
    1 << ban_tag_shift(ban_cache_sets(bans).trailing_zeros())
}

/// The buckets of `PS_BAN_TAGS` by `Settings::flags` (which carry `PS_BAN_CACHE`'s sets:
/// [`crate::maps::SETTING_BAN_CACHE_SHIFT`]), as log2.
#[inline(always)]
pub const fn ban_tag_shift_of(flags: u32) -> u32 {
    ban_tag_shift((flags >> crate::maps::SETTING_BAN_CACHE_SHIFT) & 31)
}

/// A bijective mix of 32 bits (Chris Wellons' lowbias32): every address gets its own
/// value, and the buckets fill as evenly for consecutive addresses as for random ones.
#[inline(always)]
pub const fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Where an IPv4 address's tag goes: its bucket and the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanTagPlace {
    pub bucket: u32,
    pub tag: u16,
}

/// The place of the IPv4 address `v4` (as the second word of
/// [`crate::packet::AddrWords`] holds it: bits 32 to 63) in a table of 2^`shift`
/// buckets.
#[inline(always)]
pub const fn ban_tag_place(v4: u32, shift: u32) -> BanTagPlace {
    let h = mix(v4);
    BanTagPlace {
        bucket: h >> (32 - shift),
        tag: h as u16,
    }
}

/// The IPv4 address of an address in the program's form, if it is one (mapped:
/// `::ffff:a.b.c.d`).
#[inline(always)]
pub const fn v4_of(addr: &crate::packet::AddrWords) -> Option<u32> {
    if addr[0] == 0 && addr[1] & 0xffff_ffff == 0xffff_0000 {
        Some((addr[1] >> 32) as u32)
    } else {
        None
    }
}

/// A value of `PS_BAN_TAGS`: the tags of up to [`BAN_TAG_SLOTS`] bans, in the slots from
/// the first; every slot after them repeats the first tag (so that a lookup compares
/// whole words without a count). `until` 0: the bucket is empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BanTags {
    /// Until when every ban of the bucket is surely active (the soonest of their
    /// [`crate::maps::cache_until`]; [`crate::maps::BAN_CACHE_FOREVER`] when none
    /// ends).
    pub until: u32,
    /// log2 of the buckets of the table it was written for. A tag is the address only
    /// in its own bucket: a program that computes another number of buckets (an earlier
    /// program still attached while a resized table is filled) finds nothing.
    pub shift: u16,
    /// Slot 0.
    pub head: u16,
    /// Slots 1 to 28, four a word.
    pub words: [u64; 7],
}
const _: () = assert!(size_of::<BanTags>() == 64);

/// Each 16-bit lane's lowest bit, and its highest.
const LANE_LOW: u64 = 0x0001_0001_0001_0001;
const LANE_HIGH: u64 = 0x8000_8000_8000_8000;

/// True when a 16-bit lane of `x` is zero (exact: a borrow only starts at a zero lane).
#[inline(always)]
const fn has_zero_lane(x: u64) -> bool {
    x.wrapping_sub(LANE_LOW) & !x & LANE_HIGH != 0
}

/// The high bit of each 16-bit lane of `x` that is zero, and no other bit (no carry
/// crosses a lane: each lane's low 15 bits are added apart).
const fn zero_lanes(x: u64) -> u64 {
    let low = !LANE_HIGH;
    !(((x & low) + low) | x | low)
}

impl BanTags {
    /// The `until` of the bucket when it holds `tag` and was written for 2^`shift`
    /// buckets (0 when not): eight compares, no loop.
    #[inline(always)]
    pub fn until_of(&self, tag: u16, shift: u32) -> u32 {
        if self.until == 0 || self.shift as u32 != shift {
            return 0;
        }
        let all = tag as u64 * LANE_LOW;
        let w = &self.words;
        let found = self.head == tag
            || has_zero_lane(w[0] ^ all)
            || has_zero_lane(w[1] ^ all)
            || has_zero_lane(w[2] ^ all)
            || has_zero_lane(w[3] ^ all)
            || has_zero_lane(w[4] ^ all)
            || has_zero_lane(w[5] ^ all)
            || has_zero_lane(w[6] ^ all);
        if found { self.until } else { 0 }
    }

    /// Slot `i`'s tag.
    fn slot(&self, i: usize) -> u16 {
        if i == 0 {
            self.head
        } else {
            (self.words[(i - 1) / 4] >> (16 * ((i - 1) % 4))) as u16
        }
    }

    fn set_slot(&mut self, i: usize, tag: u16) {
        if i == 0 {
            self.head = tag;
        } else {
            let (w, lane) = ((i - 1) / 4, 16 * ((i - 1) % 4));
            self.words[w] = self.words[w] & !(0xffff << lane) | (tag as u64) << lane;
        }
    }

    /// How many tags the bucket holds: 29 less the slots after the first that repeat it.
    pub fn len(&self) -> usize {
        if self.until == 0 {
            return 0;
        }
        let first = self.head as u64 * LANE_LOW;
        let repeats: u32 = self
            .words
            .iter()
            .map(|w| zero_lanes(w ^ first).count_ones())
            .sum();
        BAN_TAG_SLOTS - repeats as usize
    }

    pub fn is_empty(&self) -> bool {
        self.until == 0
    }

    /// The slots from `from` on repeat the first tag.
    fn fill_from(&mut self, from: usize) {
        let first = self.head;
        for i in from..BAN_TAG_SLOTS {
            self.set_slot(i, first);
        }
    }

    /// Adds `tag` (with `until` as the bucket's `until`, which the caller computes) to a
    /// bucket of a table of 2^`shift` buckets; false when the bucket is full. A tag
    /// already there only takes the new `until`.
    pub fn insert(&mut self, tag: u16, until: u32, shift: u32) -> bool {
        debug_assert!(until != 0);
        if self.until_of(tag, shift) == 0 {
            let n = self.len();
            if n == BAN_TAG_SLOTS {
                return false;
            }
            if n == 0 {
                self.head = tag;
                self.shift = shift as u16;
                self.fill_from(1);
            } else {
                self.set_slot(n, tag);
            }
        }
        self.until = until;
        true
    }

    /// Takes `tag` out (the last tag moves to its slot), with `until` as the bucket's
    /// `until` if tags are left; false when the bucket did not hold it.
    pub fn remove(&mut self, tag: u16, until: u32) -> bool {
        let n = self.len();
        let Some(i) = (0..n).find(|i| self.slot(*i) == tag) else {
            return false;
        };
        if n == 1 {
            *self = BanTags::default();
            return true;
        }
        let last = self.slot(n - 1);
        self.set_slot(i, last);
        // The fill repeats the first tag, which may just have changed.
        self.fill_from(n - 1);
        self.until = until;
        true
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::BTreeSet, vec::Vec};

    use super::*;
    use crate::maps::BAN_CACHE_FOREVER;

    /// The inverse of [`mix`].
    fn unmix(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x4302_1123);
        x ^= x >> 15 ^ x >> 30;
        x = x.wrapping_mul(0x1d69_e2a5);
        x ^= x >> 16;
        x
    }

    /// The address whose place is `place` in 2^`shift` buckets (`shift` < 32).
    fn ban_tag_addr(place: BanTagPlace, shift: u32) -> u32 {
        unmix(place.bucket << (32 - shift) | u32::from(place.tag))
    }

    #[test]
    fn mix_is_a_bijection_and_unmix_its_inverse() {
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            x = x.wrapping_mul(0x2545_f491).wrapping_add(0x9e37_79b9);
            assert_eq!(unmix(mix(x)), x, "{x:#x}");
        }
        for x in [0, 1, u32::MAX, 0x8000_0000] {
            assert_eq!(unmix(mix(x)), x);
        }
    }

    #[test]
    fn a_place_stands_for_one_address() {
        for shift in [16, 17, 19, 22] {
            let mut seen = BTreeSet::new();
            for i in 0..50_000u32 {
                let v4 = 0x0a00_0000u32.wrapping_add(i.wrapping_mul(7919));
                let p = ban_tag_place(v4, shift);
                assert!(p.bucket < 1 << shift);
                assert_eq!(ban_tag_addr(p, shift), v4, "shift {shift}");
                assert!(seen.insert((p.bucket, p.tag)), "two addresses, one place");
            }
        }
    }

    /// A table's log2 of buckets.
    const S: u32 = 16;

    #[test]
    fn a_bucket_finds_exactly_its_tags() {
        let mut b = BanTags::default();
        assert_eq!(b.until_of(0, S), 0, "empty");
        let tags: Vec<u16> = (0..BAN_TAG_SLOTS as u16).map(|i| i * 2111 + 1).collect();
        for (n, t) in tags.iter().enumerate() {
            assert!(b.insert(*t, 5, S));
            assert_eq!(b.len(), n + 1);
            for (m, u) in tags.iter().enumerate() {
                assert_eq!(b.until_of(*u, S), if m <= n { 5 } else { 0 }, "{n} {m}");
            }
        }
        assert!(!b.insert(9, 5, S), "full");
        assert!(b.insert(tags[3], 7, S), "already there");
        assert_eq!(b.until, 7);
        // A program computing another number of buckets finds nothing.
        assert_eq!(b.until_of(tags[3], S + 1), 0);
        // Every other value is absent: the fill repeats a tag, it adds none.
        let mut found = 0;
        for t in 0..=u16::MAX {
            if b.until_of(t, S) != 0 {
                found += 1;
            }
        }
        assert_eq!(found, BAN_TAG_SLOTS);
        // Out again, the first one too, down to empty.
        for (n, t) in tags.iter().enumerate().rev() {
            assert!(b.remove(*t, 6));
            assert!(!b.remove(*t, 6));
            assert_eq!(b.until_of(*t, S), 0);
            assert_eq!(b.len(), n);
            for u in &tags[..n] {
                assert_eq!(b.until_of(*u, S), 6);
            }
        }
        assert_eq!(b, BanTags::default());
        // Removing the first tag of three keeps the other two.
        for t in [0u16, 0xffff, 0x8000] {
            b.insert(t, BAN_CACHE_FOREVER, S);
        }
        assert!(b.remove(0, BAN_CACHE_FOREVER));
        assert_eq!(b.len(), 2);
        assert_eq!(b.until_of(0, S), 0);
        assert_eq!(b.until_of(0xffff, S), BAN_CACHE_FOREVER);
        assert_eq!(b.until_of(0x8000, S), BAN_CACHE_FOREVER);
    }

    #[test]
    fn a_million_bans_fit_their_buckets() {
        // MAX_BANS of a million: 2^16 buckets of 29 for 2^20 bans (sixteen a bucket on
        // average); random addresses overflow a few buckets, the rest go to the cache.
        let shift = ban_tag_shift(ban_cache_sets(1 << 20).trailing_zeros());
        assert_eq!(shift, 16);
        assert_eq!(ban_tag_buckets(1 << 20), 1 << 16);
        assert_eq!(ban_tag_buckets(16), 1 << 16, "at least 2^16");
        assert_eq!(ban_tag_buckets(u32::MAX), 1 << 19);
        let mut count = std::vec![0u32; 1 << shift];
        let mut x = 0x9e37_79b9u64;
        let mut left_out = 0;
        for _ in 0..1 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = ban_tag_place(x as u32, shift).bucket as usize;
            if count[b] as usize == BAN_TAG_SLOTS {
                left_out += 1;
            } else {
                count[b] += 1;
            }
        }
        assert!(left_out < 1000, "{left_out} of a million left out");
    }
}
