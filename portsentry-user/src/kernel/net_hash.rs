//! The range bans' hash of lengths (`PS_BAN_NET_HASH` and `PS_BAN_NET_LENS`,
//! `portsentry_common::ban_nets`) beside the trie `PS_BAN_NETS`, which keeps every range
//! ban: the ranges of up to four lengths per family are also in the hash, so that an
//! address in a banned range costs a hash lookup per listed length, not a walk of the
//! trie. A length is listed while a slot of its family is free when its first range
//! comes (at load, the most used lengths first); the ranges of other lengths are found
//! in the trie, which the program then looks at for that family.
//!
//! Order of writes: a range enters the hash before its length is listed, and a family's
//! `hashed_only` bit is cleared before a range of an unlisted length enters the trie, so
//! the program never misses a banned range. At load the entry first sends every address
//! to the trie, while the hash is made that of the ranges in the trie.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context as _, Result};
use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use portsentry_common::{
    Addr,
    ban_nets::{FAMILY_V4, FAMILY_V6, NET_LEN_SLOTS, NetKey, NetLen, NetLens, family_of},
    maps::{self, BanEntry},
    packet::{AddrWords, prefix_words},
};

use super::{Dataplane, addr, maps::fd, sys};

/// What the hash of lengths holds, as this process wrote it.
#[derive(Default)]
pub(super) struct NetHash {
    /// Every range ban in the trie, by its key (length and network).
    known: HashSet<NetKey>,
    /// Ranges per family and length.
    counts: [BTreeMap<u32, u32>; 2],
    /// IPv6 ranges that cover IPv4-mapped addresses: the trie must be looked at for
    /// IPv4 addresses while any is banned.
    mapped: u32,
    /// The lengths listed per family, longest first.
    listed: [Vec<u32>; 2],
}

/// A range's key in the hash.
fn key_of(net: &IpNet) -> NetKey {
    let (len, key) = addr::net_key(net);
    NetKey::of(&words(&key), len)
}

fn words(a: &Addr) -> AddrWords {
    bytemuck::cast(*a)
}

/// True for an IPv6 range that covers IPv4-mapped addresses (`::ffff:0:0/96` or a
/// network around it): its ban applies to IPv4 sources too, as the trie has it.
fn covers_mapped(k: &NetKey) -> bool {
    const MAPPED: AddrWords = [0, 0xffff_0000];
    family_of(&k.net) == FAMILY_V6 && k.len <= 96 && prefix_words(&MAPPED, k.len) == k.net
}

impl NetHash {
    /// Counts `k` in; true when it was not known.
    fn add(&mut self, k: NetKey) -> bool {
        if !self.known.insert(k) {
            return false;
        }
        *self.counts[family_of(&k.net)].entry(k.len).or_insert(0) += 1;
        if covers_mapped(&k) {
            self.mapped += 1;
        }
        true
    }

    /// Counts `k` out; true when it was known.
    fn remove(&mut self, k: &NetKey) -> bool {
        if !self.known.remove(k) {
            return false;
        }
        let counts = &mut self.counts[family_of(&k.net)];
        if let Some(n) = counts.get_mut(&k.len) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&k.len);
            }
        }
        if covers_mapped(k) {
            self.mapped -= 1;
        }
        true
    }

    /// Whether ranges of `k`'s length are in the hash.
    fn is_listed(&self, k: &NetKey) -> bool {
        self.listed[family_of(&k.net)].contains(&k.len)
    }

    /// Counts `k` in, listing its length if it is the first range of it and a slot is
    /// free: (whether `k` was not known, whether it goes in the hash). A length with
    /// ranges in the trie alone is not listed here (they would be missed): only a load
    /// lists it, with all of them.
    fn admit(&mut self, k: NetKey) -> (bool, bool) {
        let family = family_of(&k.net);
        let first = !self.counts[family].contains_key(&k.len);
        let new = self.add(k);
        let hashed = self.is_listed(&k) || (first && self.list(family, k.len));
        (new, hashed)
    }

    /// Lists `len` for `family` if a slot is free; true when listed (now or before).
    fn list(&mut self, family: usize, len: u32) -> bool {
        let listed = &mut self.listed[family];
        if listed.contains(&len) {
            return true;
        }
        if listed.len() == NET_LEN_SLOTS {
            return false;
        }
        listed.push(len);
        listed.sort_unstable_by(|a, b| b.cmp(a));
        true
    }

    /// Unlists the lengths no range has left.
    fn unlist_unused(&mut self) {
        for family in [FAMILY_V4, FAMILY_V6] {
            let counts = &self.counts[family];
            self.listed[family].retain(|len| counts.contains_key(len));
        }
    }

    /// The lengths entry the program reads.
    fn entry(&self) -> NetLens {
        let mut lens = NetLens::default();
        for family in [FAMILY_V4, FAMILY_V6] {
            for (slot, len) in lens.lens[family].iter_mut().zip(&self.listed[family]) {
                *slot = NetLen::new(*len);
            }
            lens.used[family] = self.listed[family].len() as u32;
            let unlisted = self.counts[family]
                .keys()
                .any(|len| !self.listed[family].contains(len));
            let mapped = family == FAMILY_V4 && self.mapped > 0;
            if !unlisted && !mapped {
                lens.hashed_only |= 1 << family;
            }
        }
        lens
    }

    /// Lists the most used lengths of each family (the longer first among equals).
    fn list_most_used(&mut self) {
        for family in [FAMILY_V4, FAMILY_V6] {
            let mut by_use: Vec<(u32, u32)> =
                self.counts[family].iter().map(|(l, n)| (*n, *l)).collect();
            by_use.sort_unstable_by(|a, b| b.cmp(a));
            let mut listed: Vec<u32> = by_use
                .into_iter()
                .take(NET_LEN_SLOTS)
                .map(|(_, l)| l)
                .collect();
            listed.sort_unstable_by(|a, b| b.cmp(a));
            self.listed[family] = listed;
        }
    }
}

impl Dataplane {
    /// Makes the hash of lengths that of `nets`, the ranges in `PS_BAN_NETS` (at load,
    /// with pins kept: the pins of a release without it, a daemon's restart, a resize).
    pub(super) fn rebuild_net_hash(&mut self, nets: &[(Key<Addr>, BanEntry)]) -> Result<()> {
        if self.maps.ban_net_hash.is_none() || self.maps.ban_net_lens.is_none() {
            return Ok(());
        }
        // Every address to the trie while the hash is rewritten.
        self.write_net_lens(&NetLens::default())?;
        let Some(hash) = &self.maps.ban_net_hash else {
            return Ok(());
        };
        let hash_fd = fd(hash);
        let mut state = NetHash::default();
        let ranges: Vec<(NetKey, BanEntry)> = nets
            .iter()
            .map(|(k, v)| (NetKey::of(&words(&k.data()), k.prefix_len()), *v))
            .collect();
        for (k, _) in &ranges {
            state.add(*k);
        }
        state.list_most_used();
        let (keys, values): (Vec<NetKey>, Vec<BanEntry>) = ranges
            .into_iter()
            .filter(|(k, _)| state.is_listed(k))
            .unzip();
        let held: Vec<(NetKey, BanEntry)> =
            sys::read_map(hash_fd).context("reading PS_BAN_NET_HASH")?;
        sys::write_map(hash_fd, &keys, &values)
            .map_err(|e| e.error)
            .context("writing PS_BAN_NET_HASH")?;
        let wanted: HashSet<&NetKey> = keys.iter().collect();
        if let Some(hash) = &mut self.maps.ban_net_hash {
            for (k, _) in held.iter().filter(|(k, _)| !wanted.contains(k)) {
                super::maps::absent_is_false(hash.remove(k))
                    .context("removing from PS_BAN_NET_HASH")?;
            }
        }
        self.write_net_lens(&state.entry())?;
        self.net_hash = state;
        Ok(())
    }

    /// Before `nets` enter the trie (or are written again): each of a listed length,
    /// or the first of a length listed now in a free slot, is written to the hash, then the
    /// lengths entry (a range of an unlisted length clears its family's
    /// `hashed_only`). Returns which of `nets` were not known before.
    pub(super) fn net_hash_add(&mut self, nets: &[(IpNet, BanEntry)]) -> Result<Vec<bool>> {
        let Some(hash) = &self.maps.ban_net_hash else {
            return Ok(vec![true; nets.len()]);
        };
        let before = self.net_hash.entry();
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut new = Vec::with_capacity(nets.len());
        // Which of `keys` were not known: those leave the hash again if the write fails.
        let mut keys_new = Vec::new();
        for (net, entry) in nets {
            let k = key_of(net);
            let (is_new, hashed) = self.net_hash.admit(k);
            new.push(is_new);
            if hashed {
                keys.push(k);
                values.push(*entry);
                keys_new.push(is_new);
            }
        }
        if let Err(e) = sys::write_map(fd(hash), &keys, &values) {
            // None of `nets` enters the trie: the new ranges written before the error
            // leave the hash (else the program would drop their hosts with no ban on
            // record), and the lengths they listed are unlisted.
            let written = keys.iter().zip(&keys_new).take(e.written);
            if let Some(hash) = &mut self.maps.ban_net_hash {
                for (k, _) in written.filter(|(_, n)| **n) {
                    super::maps::absent_is_false(hash.remove(k))
                        .context("removing from PS_BAN_NET_HASH after a failed write")?;
                }
            }
            for (i, (net, _)) in nets.iter().enumerate() {
                if new[i] {
                    self.net_hash.remove(&key_of(net));
                }
            }
            self.net_hash.unlist_unused();
            let net = keys
                .get(e.written)
                .map(|k| addr::net_from_key(k.len, &bytemuck::cast(k.net)));
            return Err(e.error).with_context(|| match net {
                Some(net) => format!("writing the ban of {net} into {}", maps::BAN_NET_HASH),
                None => format!("writing {}", maps::BAN_NET_HASH),
            });
        }
        let after = self.net_hash.entry();
        if after != before {
            self.write_net_lens(&after)?;
        }
        Ok(new)
    }

    /// After `net` left the trie: out of the hash, its length unlisted when it was the
    /// last of it, `hashed_only` set again when no range of an unlisted length is left.
    pub(super) fn net_hash_remove(&mut self, net: &IpNet) -> Result<()> {
        if self.maps.ban_net_hash.is_none() {
            return Ok(());
        }
        let k = key_of(net);
        let listed = self.net_hash.is_listed(&k);
        let before = self.net_hash.entry();
        if !self.net_hash.remove(&k) {
            return Ok(());
        }
        if listed && let Some(hash) = &mut self.maps.ban_net_hash {
            super::maps::absent_is_false(hash.remove(&k))
                .with_context(|| format!("removing the ban of {net} from PS_BAN_NET_HASH"))?;
        }
        self.net_hash.unlist_unused();
        let after = self.net_hash.entry();
        if after != before {
            self.write_net_lens(&after)?;
        }
        Ok(())
    }

    /// The lengths listed per family (IPv4, IPv6; 128-bit form) and which families the
    /// hash holds whole (for the tests).
    pub fn net_lengths(&self) -> Result<Option<NetLens>> {
        match &self.maps.ban_net_lens {
            Some(lens) => Ok(Some(lens.get(&0, 0).context("reading PS_BAN_NET_LENS")?)),
            None => Ok(None),
        }
    }

    fn write_net_lens(&mut self, lens: &NetLens) -> Result<()> {
        if let Some(map) = &mut self.maps.ban_net_lens {
            map.set(0, lens, 0).context("writing PS_BAN_NET_LENS")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(net: &str) -> NetKey {
        key_of(&net.parse().unwrap())
    }

    #[test]
    fn four_lengths_a_family_then_the_trie() {
        let mut h = NetHash::default();
        for (i, net) in ["10.0.0.0/24", "10.1.0.0/16", "10.2.0.0/20", "10.3.0.0/28"]
            .iter()
            .enumerate()
        {
            h.add(k(net));
            assert!(h.list(FAMILY_V4, k(net).len), "{net}");
            assert_eq!(h.listed[FAMILY_V4].len(), i + 1);
        }
        // Longest first.
        assert_eq!(h.listed[FAMILY_V4], vec![124, 120, 116, 112]);
        let e = h.entry();
        assert_eq!(e.used, [4, 0]);
        assert_eq!(e.hashed_only, 0b11);
        // A fifth length waits in the trie: IPv4 addresses look there again.
        h.add(k("10.4.0.0/8"));
        assert!(!h.list(FAMILY_V4, k("10.4.0.0/8").len));
        assert_eq!(h.entry().hashed_only, 0b10);
        // IPv6 is listed on its own.
        h.add(k("2001:db8::/64"));
        assert!(h.list(FAMILY_V6, 64));
        assert_eq!(h.entry().used, [4, 1]);
        assert_eq!(h.entry().hashed_only, 0b10);
        assert!(h.remove(&k("10.4.0.0/8")));
        assert_eq!(h.entry().hashed_only, 0b11);
        assert!(!h.remove(&k("10.4.0.0/8")));
    }

    #[test]
    fn a_freed_slot_is_not_given_to_a_length_the_trie_holds() {
        let mut h = NetHash::default();
        for net in ["10.0.0.0/24", "10.1.0.0/16", "10.2.0.0/20", "10.3.0.0/28"] {
            assert_eq!(h.admit(k(net)), (true, true), "{net}");
        }
        assert_eq!(h.admit(k("10.128.0.0/9")), (true, false));
        assert!(h.remove(&k("10.3.0.0/28")));
        h.listed[FAMILY_V4].retain(|l| *l != 124);
        // A second /9: its length has a range in the trie alone, so it stays there too.
        assert_eq!(h.admit(k("11.0.0.0/9")), (true, false));
        assert_eq!(h.entry().hashed_only & 1, 0);
        // A length never seen takes the free slot.
        assert_eq!(h.admit(k("12.0.0.0/30")), (true, true));
        assert_eq!(h.admit(k("12.0.0.0/30")), (false, true));
    }

    #[test]
    fn a_range_written_twice_is_counted_once() {
        let mut h = NetHash::default();
        assert!(h.add(k("192.0.2.0/24")));
        assert!(!h.add(k("192.0.2.0/24")));
        assert!(h.remove(&k("192.0.2.0/24")));
        assert!(h.counts[FAMILY_V4].is_empty());
    }

    #[test]
    fn an_ipv6_range_over_mapped_addresses_sends_ipv4_to_the_trie() {
        let mut h = NetHash::default();
        h.add(k("::/64"));
        h.list(FAMILY_V6, 64);
        assert_eq!(h.entry().hashed_only, 0b10);
        h.remove(&k("::/64"));
        h.add(k("2001:db8::/32"));
        h.list(FAMILY_V6, 32);
        assert_eq!(h.entry().hashed_only, 0b11);
    }

    #[test]
    fn at_load_the_most_used_lengths_are_listed() {
        let mut h = NetHash::default();
        let mut nets = vec![];
        for i in 0..6u8 {
            // Length 8 + 2i, used i + 1 times.
            for j in 0..=i {
                nets.push(format!("{}.0.0.0/{}", 20 + 10 * i + j, 8 + 2 * i));
            }
        }
        for n in &nets {
            h.add(k(n));
        }
        h.list_most_used();
        assert_eq!(
            h.listed[FAMILY_V4],
            vec![96 + 18, 96 + 16, 96 + 14, 96 + 12]
        );
        assert_eq!(h.entry().hashed_only & 1, 0);
    }
}
