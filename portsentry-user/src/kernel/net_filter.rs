//! The range filter `PS_NET_FILTER` in front of the prefix-ban trie `PS_BAN_NETS`: one
//! bit per IPv4 /24 or IPv6 /48 that a range ban touches, each bit counted so that the
//! last range to leave it clears it; a range too wide for the filter sets
//! `SETTING_PREFIX_BANS_WIDE` instead (every packet then looks at the trie).
//!
//! Order of writes: a range's bits (or the flag) are set before it enters the trie and
//! cleared after it left, so the program never skips the trie for an address that a
//! banned range covers.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use portsentry_common::{
    Addr,
    maps::{BanEntry, IGNORE_FILTER_WORDS, NET_FILTER, SETTING_PREFIX_BANS_WIDE},
};

use super::{
    Dataplane, addr,
    bans::{read_words, write_changed_words},
    filter_users::FilterUsers,
    maps::{fd, net_filter_bits},
};

/// Words changed one by one (two calls each) up to this many; more, and the filter is
/// read and written whole in batches.
const FEW_WORDS: usize = 64;

/// How many range bans use each `PS_NET_FILTER` bit, and how many ranges are too wide
/// for the filter.
#[derive(Default)]
pub(super) struct NetFilterUsers {
    bits: FilterUsers,
    wide: u32,
}

impl Dataplane {
    /// Makes `PS_NET_FILTER` and `SETTING_PREFIX_BANS_WIDE` exactly those of `nets`, the
    /// ranges in `PS_BAN_NETS` (at load: pins of a release without the filter get it
    /// filled before the program that reads it is attached).
    pub(super) fn rebuild_net_filter(&mut self, nets: &[(Key<Addr>, BanEntry)]) -> Result<()> {
        if self.maps.net_filter.is_none() {
            return Ok(());
        }
        let mut users = NetFilterUsers::default();
        let mut words = vec![0u64; IGNORE_FILTER_WORDS as usize];
        for (k, _) in nets {
            match net_filter_bits(&addr::net_from_key(k.prefix_len(), &k.data())) {
                Some(bits) => {
                    for bit in bits {
                        users.bits.add(bit);
                        words[(bit >> 6) as usize] |= 1 << (bit & 63);
                    }
                }
                None => users.wide += 1,
            }
        }
        if users.wide > 0 {
            self.set_flag(SETTING_PREFIX_BANS_WIDE, true)?;
        }
        let now = self.read_net_words()?;
        self.write_net_words(&now, &words)?;
        self.set_flag(SETTING_PREFIX_BANS_WIDE, users.wide > 0)?;
        self.net_filter = users;
        Ok(())
    }

    /// Counts `nets` (ranges about to enter the trie) in the filter, setting the bits
    /// that had no user (or the wide flag).
    pub(super) fn net_filter_add<'a>(
        &mut self,
        nets: impl Iterator<Item = &'a IpNet>,
    ) -> Result<()> {
        if self.maps.net_filter.is_none() {
            return Ok(());
        }
        let mut set: BTreeMap<u32, u64> = BTreeMap::new();
        let mut wide = false;
        for net in nets {
            match net_filter_bits(net) {
                Some(bits) => {
                    for bit in bits {
                        if self.net_filter.bits.add(bit) == 1 {
                            *set.entry(bit >> 6).or_insert(0) |= 1 << (bit & 63);
                        }
                    }
                }
                None => {
                    self.net_filter.wide += 1;
                    wide = true;
                }
            }
        }
        if wide {
            self.set_flag(SETTING_PREFIX_BANS_WIDE, true)?;
        }
        self.change_net_words(&set, true)
    }

    /// Uncounts `net` (a range that left the trie), clearing the bits it was the last
    /// user of (or the wide flag).
    pub(super) fn net_filter_remove(&mut self, net: &IpNet) -> Result<()> {
        if self.maps.net_filter.is_none() {
            return Ok(());
        }
        let Some(bits) = net_filter_bits(net) else {
            self.net_filter.wide = self.net_filter.wide.saturating_sub(1);
            if self.net_filter.wide == 0 {
                self.set_flag(SETTING_PREFIX_BANS_WIDE, false)?;
            }
            return Ok(());
        };
        let mut clear: BTreeMap<u32, u64> = BTreeMap::new();
        for bit in bits {
            if self.net_filter.bits.release(bit) == Some(0) {
                *clear.entry(bit >> 6).or_insert(0) |= 1 << (bit & 63);
            }
        }
        self.change_net_words(&clear, false)
    }

    /// Sets (`on`) or clears the masked bits of the given words.
    fn change_net_words(&mut self, masks: &BTreeMap<u32, u64>, on: bool) -> Result<()> {
        let apply = |word: u64, mask: u64| if on { word | mask } else { word & !mask };
        if masks.len() > FEW_WORDS {
            let now = self.read_net_words()?;
            let mut want = now.clone();
            for (i, mask) in masks {
                want[*i as usize] = apply(want[*i as usize], *mask);
            }
            return self.write_net_words(&now, &want);
        }
        let Some(filter) = &mut self.maps.net_filter else {
            return Ok(());
        };
        for (i, mask) in masks {
            let word = filter.get(i, 0).context("reading PS_NET_FILTER")?;
            filter
                .set(*i, apply(word, *mask), 0)
                .context("writing PS_NET_FILTER")?;
        }
        Ok(())
    }

    /// Every word of `PS_NET_FILTER` (all 0 without it).
    fn read_net_words(&self) -> Result<Vec<u64>> {
        match &self.maps.net_filter {
            Some(filter) => read_words(fd(filter), IGNORE_FILTER_WORDS, NET_FILTER),
            None => Ok(vec![0; IGNORE_FILTER_WORDS as usize]),
        }
    }

    /// Writes the `PS_NET_FILTER` words that differ from what the map holds (`now`).
    fn write_net_words(&mut self, now: &[u64], want: &[u64]) -> Result<()> {
        match &self.maps.net_filter {
            Some(filter) => write_changed_words(fd(filter), now, want, NET_FILTER),
            None => Ok(()),
        }
    }
}
