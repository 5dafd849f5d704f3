//! The ban maps: exact bans in `PS_BANS` behind the one-hash filter `PS_BAN_FILTER` and
//! the direct-mapped cache `PS_BAN_CACHE`, wider prefixes in the trie `PS_BAN_NETS`.
//!
//! The order of writes keeps the program's invariants at every instant: a ban is never
//! in the hash without its filter bit, and the cache never holds a ban the hash lacks.

use anyhow::{Context as _, Result};
use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use portsentry_common::{
    Addr,
    maps::{self, BanEntry, BanSlot, SETTING_PREFIX_BANS, Settings},
    packet::AddrWords,
};

use super::{
    Dataplane, addr,
    maps::{absent_is_false, absent_is_none},
};

impl Dataplane {
    /// Makes `PS_BAN_FILTER` exactly the filter of the bans in `PS_BANS` (at load, which
    /// also adopts the bans of pinned maps).
    pub(super) fn rebuild_ban_filter(&mut self) -> Result<()> {
        let mut words = vec![0u64; maps::BAN_FILTER_WORDS as usize];
        let mut users = std::collections::HashMap::new();
        let mut bans = Vec::new();
        for item in self.maps.bans.iter() {
            let (k, v) = item?;
            let bit = filter_bit(&k);
            words[(bit >> 6) as usize] |= 1 << (bit & 63);
            *users.entry(bit).or_insert(0) += 1;
            bans.push((k, v.expires_ns));
        }
        // The cache gets every ban whose slot is free or already its own (which also
        // refreshes an expiry a crash left stale).
        for (k, expires_ns) in bans {
            self.cache_put(&k, expires_ns)?;
        }
        let a = &mut self.maps.ban_filter;
        for (i, w) in words.iter().enumerate() {
            if a.get(&(i as u32), 0)? != *w {
                a.set(i as u32, *w, 0)?;
            }
        }
        self.filter_users = users;
        Ok(())
    }

    /// Puts a ban into its `PS_BAN_CACHE` slot unless another ban holds it.
    fn cache_put(&mut self, key: &Addr, expires_ns: u64) -> Result<()> {
        let w: AddrWords = bytemuck::cast(*key);
        let idx = maps::ban_cache_slot(&w);
        let a = &mut self.maps.ban_cache;
        let cur = a.get(&idx, 0)?;
        if cur.used == 0 || cur.addr == w {
            let slot = BanSlot {
                addr: w,
                expires_ns,
                used: 1,
            };
            a.set(idx, slot, 0).context("writing PS_BAN_CACHE")?;
        }
        Ok(())
    }

    /// Empties the `PS_BAN_CACHE` slot of a ban if the ban holds it.
    fn cache_drop(&mut self, key: &Addr) -> Result<()> {
        let w: AddrWords = bytemuck::cast(*key);
        let idx = maps::ban_cache_slot(&w);
        let a = &mut self.maps.ban_cache;
        let cur = a.get(&idx, 0)?;
        if cur.used != 0 && cur.addr == w {
            a.set(idx, BanSlot::default(), 0)
                .context("writing PS_BAN_CACHE")?;
        }
        Ok(())
    }

    fn set_filter_bit(&mut self, bit: u32, on: bool) -> Result<()> {
        let a = &mut self.maps.ban_filter;
        let word = a.get(&(bit >> 6), 0)?;
        let mask = 1u64 << (bit & 63);
        a.set(bit >> 6, if on { word | mask } else { word & !mask }, 0)
            .context("writing PS_BAN_FILTER")?;
        Ok(())
    }

    fn release_filter_bit(&mut self, bit: u32) -> Result<()> {
        if let Some(users) = self.filter_users.get_mut(&bit) {
            *users -= 1;
            if *users == 0 {
                self.filter_users.remove(&bit);
                self.set_filter_bit(bit, false)?;
            }
        }
        Ok(())
    }

    /// The IPv6 prefix length sources are counted and banned by, if not single
    /// addresses (`SOURCE_PREFIX_V6`, as the program has it now).
    pub fn v6_source_prefix(&self) -> Option<u32> {
        maps::v6_source_prefix(self.settings.flags)
    }

    /// Whether the program finds a ban of `net` in the exact map (an IPv4 host, an IPv6
    /// network of the source prefix) rather than in the trie.
    fn exact(&self, net: &IpNet) -> bool {
        addr::is_source_key(net, self.v6_source_prefix())
    }

    /// Bans `net` (an IPv4 host or an IPv6 network of the source prefix goes to the exact
    /// map, everything else to the trie). Replaces an existing ban of the same network.
    pub fn insert_ban(&mut self, net: &IpNet, entry: &BanEntry) -> Result<()> {
        self.insert_ban_as(net, entry, self.exact(net))
    }

    fn insert_ban_as(&mut self, net: &IpNet, entry: &BanEntry, exact: bool) -> Result<()> {
        let (len, key) = addr::net_key(net);
        if exact {
            // The filter bit goes first: a ban is never in the map without its bit.
            let bit = filter_bit(&key);
            let is_new = absent_is_none(self.maps.bans.get(&key, 0))?.is_none();
            if is_new {
                let users = self.filter_users.entry(bit).or_insert(0);
                *users += 1;
                if *users == 1 {
                    self.set_filter_bit(bit, true)?;
                }
            }
            if let Err(e) = self.maps.bans.insert(key, entry, 0) {
                if is_new {
                    self.release_filter_bit(bit)?;
                }
                return Err(e)
                    .with_context(|| format!("writing the ban of {net} (is PS_BANS full?)"));
            }
            // After the hash: the cache never holds a ban the hash lacks.
            self.cache_put(&key, entry.expires_ns)?;
        } else {
            self.maps
                .ban_nets
                .insert(&Key::new(len, key), entry, 0)
                .with_context(|| format!("writing the ban of {net} (is PS_BAN_NETS full?)"))?;
            self.set_flag(SETTING_PREFIX_BANS, true)?;
        }
        Ok(())
    }

    /// Takes over a ban the program made itself (origin `Kernel`): it counts the ban's
    /// filter bit as one of its own (the program set the bit without telling anyone)
    /// and rewrites the entry as `entry` (the daemon's length and origin). Counting a bit
    /// twice only keeps it set longer; never counting it could clear it under the ban.
    pub fn adopt_kernel_ban(&mut self, net: &IpNet, entry: &BanEntry) -> Result<()> {
        let (_, key) = addr::net_key(net);
        let bit = filter_bit(&key);
        *self.filter_users.entry(bit).or_insert(0) += 1;
        self.set_filter_bit(bit, true)?;
        self.insert_ban(net, entry)
    }

    /// Removes the ban of exactly `net`; false when there was none.
    pub fn remove_ban(&mut self, net: &IpNet) -> Result<bool> {
        self.remove_ban_as(net, self.exact(net))
    }

    fn remove_ban_as(&mut self, net: &IpNet, exact: bool) -> Result<bool> {
        let (len, key) = addr::net_key(net);
        if exact {
            // Before the hash: the cache never holds a ban the hash lacks.
            self.cache_drop(&key)?;
            let removed = absent_is_false(self.maps.bans.remove(&key))?;
            if removed {
                self.release_filter_bit(filter_bit(&key))?;
            }
            Ok(removed)
        } else {
            let t = &mut self.maps.ban_nets;
            let removed = absent_is_false(t.remove(&Key::new(len, key)))?;
            let any_left = t.keys().next().is_some();
            self.set_flag(SETTING_PREFIX_BANS, any_left)?;
            Ok(removed)
        }
    }

    /// The ban of exactly `net`, if any.
    pub fn ban(&self, net: &IpNet) -> Result<Option<BanEntry>> {
        let (len, key) = addr::net_key(net);
        absent_is_none(if self.exact(net) {
            self.maps.bans.get(&key, 0)
        } else {
            self.maps.ban_nets.get(&Key::new(len, key), 0)
        })
    }

    /// Every ban in the kernel, hosts and prefixes.
    pub fn bans(&self) -> Result<Vec<(IpNet, BanEntry)>> {
        let mut out = Vec::new();
        let prefix = self.v6_source_prefix();
        for item in self.maps.bans.iter() {
            let (k, v) = item?;
            out.push((addr::source_key_net(&k, prefix), v));
        }
        for item in self.maps.ban_nets.iter() {
            let (k, v) = item?;
            out.push((addr::net_from_key(k.prefix_len(), &k.data()), v));
        }
        Ok(out)
    }
}

impl Dataplane {
    /// Moves the IPv6 bans between the exact map and the trie for a new source prefix
    /// (`new`), then writes `settings` (which carry it): each ban is put where the
    /// program will look for it first, the settings switch the program over, and only
    /// then the ban leaves its old place, so that no ban is ever out of sight.
    pub(super) fn change_v6_prefix(&mut self, new: Option<u32>, settings: Settings) -> Result<()> {
        let old = self.v6_source_prefix();
        let moved: Vec<(IpNet, BanEntry, bool)> = self
            .bans()?
            .into_iter()
            .filter(|(net, _)| net.addr().is_ipv6())
            .filter_map(|(net, entry)| {
                let was = addr::is_source_key(&net, old);
                let will = addr::is_source_key(&net, new);
                (was != will).then_some((net, entry, was))
            })
            .collect();
        for (net, entry, was) in &moved {
            self.insert_ban_as(net, entry, !was)?;
        }
        // The moves may have set SETTING_PREFIX_BANS.
        self.store_settings(self.keep_presence(settings))?;
        for (net, _, was) in &moved {
            self.remove_ban_as(net, *was)?;
        }
        Ok(())
    }
}

fn filter_bit(key: &Addr) -> u32 {
    maps::ban_filter_bit(&bytemuck::cast::<Addr, AddrWords>(*key))
}
