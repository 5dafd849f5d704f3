//! How many bans use each bit of a filter (`PS_BAN_FILTER`, `PS_NET_FILTER`), so that
//! the last ban to leave a bit clears it.
//!
//! Most bits in use have one user, and nearly all the others two: a million exact bans,
//! three bits each in `PS_BAN_FILTER`, use about 2.7 million bits, one in eleven of
//! them twice and one in two hundred more often. So a bit's first and second users are
//! bits of two bit sets (side by side: one cache line for both) and only the users
//! beyond are counted in a map: a million bans counted at start-up are three million bit
//! writes, three in one word a ban, and some fifteen thousand map entries. (A map of
//! every bit with a second user held about 250,000 entries: 2 MiB more resident memory
//! and up to a tenth of a second more of a start with a million bans.)

use std::collections::HashMap;

/// The users of each bit of a filter of up to `words` 64-bit words.
#[derive(Default)]
pub(super) struct FilterUsers {
    /// Two bit sets word by word (one cache line for both): `[0]`, the bit has at least
    /// one user; `[1]`, at least two. Allocated zeroed (its pages become resident as
    /// bits are set).
    used: Vec<[u64; 2]>,
    /// Users beyond the second, for the bits that have more than two.
    more: HashMap<u32, u32, std::hash::BuildHasherDefault<BitHasher>>,
}

impl FilterUsers {
    /// Counts for a filter of `words` words (a bit beyond them grows the sets).
    pub(super) fn new(words: u32) -> FilterUsers {
        FilterUsers {
            used: vec![[0; 2]; words as usize],
            more: HashMap::default(),
        }
    }

    /// One more user of `bit`; its number of users now.
    pub(super) fn add(&mut self, bit: u32) -> u32 {
        let (w, mask) = ((bit >> 6) as usize, 1u64 << (bit & 63));
        if w >= self.used.len() {
            self.used.resize(w + 1, [0; 2]);
        }
        let [once, twice] = &mut self.used[w];
        if *once & mask == 0 {
            *once |= mask;
            return 1;
        }
        if *twice & mask == 0 {
            *twice |= mask;
            return 2;
        }
        let more = self.more.entry(bit).or_insert(0);
        *more += 1;
        *more + 2
    }

    /// One more user of each of `bits`; true when one of them had none before. Every bit
    /// is counted (no short cut at the first new one).
    pub(super) fn add_all(&mut self, bits: impl Iterator<Item = u32>) -> bool {
        let mut new = false;
        for b in bits {
            new |= self.add(b) == 1;
        }
        new
    }

    /// One user fewer of `bit`: its number of users now, `None` when it had none.
    pub(super) fn release(&mut self, bit: u32) -> Option<u32> {
        let (w, mask) = ((bit >> 6) as usize, 1u64 << (bit & 63));
        let [once, twice] = self.used.get_mut(w).filter(|w| w[0] & mask != 0)?;
        if let Some(more) = self.more.get_mut(&bit) {
            *more -= 1;
            let left = *more + 2;
            if *more == 0 {
                self.more.remove(&bit);
            }
            return Some(left);
        }
        if *twice & mask != 0 {
            *twice &= !mask;
            Some(1)
        } else {
            *once &= !mask;
            Some(0)
        }
    }
}

/// The hash of a filter bit (already a hash of the address): one multiplication that
/// spreads it over the 64 bits the table's control bytes are taken from.
#[derive(Default)]
struct BitHasher(u64);

impl std::hash::Hasher for BitHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_user_of_a_bit_frees_it() {
        let mut u = FilterUsers::new(2);
        assert_eq!(u.release(5), None, "no user yet");
        assert_eq!(u.add(5), 1);
        assert_eq!(u.add(5), 2);
        assert_eq!(u.add(5), 3);
        assert_eq!(u.add(5), 4);
        assert_eq!(u.add(70), 1);
        assert_eq!(u.add(70), 2);
        assert_eq!(u.release(5), Some(3));
        assert_eq!(u.release(70), Some(1), "second users counted per bit");
        assert_eq!(u.release(5), Some(2));
        assert_eq!(u.release(5), Some(1));
        assert_eq!(u.release(5), Some(0));
        assert_eq!(u.release(5), None, "freed");
        assert_eq!(u.add(5), 1, "a new first user");
        assert_eq!(u.release(70), Some(0));
        assert_eq!(u.release(200), None, "beyond the words: none");
        assert_eq!(u.add(200), 1, "the set grows");
        assert_eq!(u.release(200), Some(0));
        assert_eq!(u.release(5), Some(0));
        assert!(u.add_all([3, 4].into_iter()), "3 and 4 were free");
        assert!(u.add_all([4, 9].into_iter()), "9 was free");
        assert!(!u.add_all([3, 9].into_iter()), "both in use");
        assert_eq!(u.release(4), Some(1), "4 counted twice");
        assert_eq!(u.release(3), Some(1), "3 counted twice");
        for b in [3, 4, 9, 9] {
            u.release(b);
        }
        assert!(u.more.is_empty());
        assert!(u.used.iter().all(|w| *w == [0; 2]));
    }
}
