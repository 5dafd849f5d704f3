//! How many bans use each bit of a filter (`PS_BAN_FILTER`, `PS_NET_FILTER`), so that
//! the last ban to leave a bit clears it.
//!
//! Most bits in use have one user (a million exact bans, three bits each in
//! `PS_BAN_FILTER`, use about 2.7 million bits, one in eleven of them more than once),
//! so a bit's first user is a bit of a bitset and only the others are counted in a map:
//! a million bans counted at start-up are three million bit writes (three in one word
//! per ban) and some 250,000 map entries, not three million map entries.

use std::collections::HashMap;

/// The users of each bit of a filter of up to `words` 64-bit words.
#[derive(Default)]
pub(super) struct FilterUsers {
    /// Bit set: the bit has at least one user. Allocated zeroed (its pages become
    /// resident as bits are set).
    used: Vec<u64>,
    /// Users beyond the first, for the bits that have more than one.
    more: HashMap<u32, u32, std::hash::BuildHasherDefault<BitHasher>>,
}

impl FilterUsers {
    /// Counts for a filter of `words` words (a bit beyond them grows the set).
    pub(super) fn new(words: u32) -> FilterUsers {
        FilterUsers {
            used: vec![0; words as usize],
            more: HashMap::default(),
        }
    }

    /// One more user of `bit`; its number of users now.
    pub(super) fn add(&mut self, bit: u32) -> u32 {
        let (w, mask) = ((bit >> 6) as usize, 1u64 << (bit & 63));
        if w >= self.used.len() {
            self.used.resize(w + 1, 0);
        }
        if self.used[w] & mask == 0 {
            self.used[w] |= mask;
            return 1;
        }
        let more = self.more.entry(bit).or_insert(0);
        *more += 1;
        *more + 1
    }

    /// One user fewer of `bit`: its number of users now, `None` when it had none.
    pub(super) fn release(&mut self, bit: u32) -> Option<u32> {
        let (w, mask) = ((bit >> 6) as usize, 1u64 << (bit & 63));
        let word = self.used.get_mut(w).filter(|word| **word & mask != 0)?;
        match self.more.get_mut(&bit) {
            Some(more) => {
                *more -= 1;
                let left = *more + 1;
                if *more == 0 {
                    self.more.remove(&bit);
                }
                Some(left)
            }
            None => {
                *word &= !mask;
                Some(0)
            }
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
        assert_eq!(u.add(70), 1);
        assert_eq!(u.release(5), Some(2));
        assert_eq!(u.release(5), Some(1));
        assert_eq!(u.release(5), Some(0));
        assert_eq!(u.release(5), None, "freed");
        assert_eq!(u.add(5), 1, "a new first user");
        assert_eq!(u.release(70), Some(0));
        assert_eq!(u.release(200), None, "beyond the words: none");
        assert_eq!(u.add(200), 1, "the set grows");
        assert_eq!(u.release(200), Some(0));
        assert!(u.more.is_empty());
    }
}
