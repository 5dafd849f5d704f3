//! The ban maps: exact bans in `PS_BANS` behind the blocked Bloom filter `PS_BAN_FILTER`,
//! the IPv4 bans' tags `PS_BAN_TAGS` (`ban_tags.rs`) and the set-associative cache
//! `PS_BAN_CACHE` (`ban_cache.rs`), wider prefixes in the trie `PS_BAN_NETS`.
//!
//! The order of writes keeps the program's invariants at every instant: a ban is never
//! in the hash without its filter bits, and neither the tags nor the cache hold a ban
//! the hash lacks.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    os::fd::BorrowedFd,
};

use anyhow::{Context as _, Result};
use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use portsentry_common::{
    Addr,
    maps::{self, BanEntry, BanFilterPlace, SETTING_PREFIX_BANS, Settings},
    packet::AddrWords,
};

use super::{
    Dataplane, addr,
    ban_cache::BanCache,
    ban_filter::BanFilter,
    ban_tags::BanTagTable,
    filter_users::FilterUsers,
    maps::{absent_is_false, absent_is_none, fd},
    sys,
};

/// Bans to write at once ([`Dataplane::write_bans`]), each put where the maps take it:
/// the exact map's keys and entries, apart from the ranges. Filled as the bans come: a
/// start's restore makes no list of a million (network, entry) pairs (48 MB) to sort
/// out before the map writers begin.
pub struct BanWrites {
    keys: Vec<Addr>,
    values: Vec<BanEntry>,
    nets: Vec<(IpNet, BanEntry)>,
    v6_source_prefix: Option<u32>,
}

impl BanWrites {
    pub fn push(&mut self, net: IpNet, entry: BanEntry) {
        if addr::is_source_key(&net, self.v6_source_prefix) {
            self.keys.push(addr::net_key(&net).1);
            self.values.push(entry);
        } else {
            self.nets.push((net, entry));
        }
    }

    /// How many bans it holds.
    pub fn len(&self) -> usize {
        self.keys.len() + self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Dataplane {
    /// An empty [`BanWrites`] for this dataplane's maps, with room for `capacity` exact
    /// bans.
    pub fn ban_writes(&self, capacity: usize) -> BanWrites {
        BanWrites {
            keys: Vec::with_capacity(capacity),
            values: Vec::with_capacity(capacity),
            nets: Vec::new(),
            v6_source_prefix: self.v6_source_prefix(),
        }
    }

    /// Makes `PS_BAN_FILTER` exactly the filter of the bans in `PS_BANS` (at load, which
    /// also adopts the bans of pinned maps) and `PS_BAN_TAGS` exactly their tags, and
    /// gives `PS_BAN_CACHE` every ban without a tag whose set has room or already holds
    /// it (which also refreshes an expiry a crash left stale). Whole maps read and
    /// written in batches ([`sys::read_map`]).
    ///
    /// Returns the exact bans it read.
    pub(super) fn rebuild_ban_filter(&mut self) -> Result<Vec<(Addr, BanEntry)>> {
        // Read first: a bit the attached program sets from here on is of a ban it made
        // while the bans were read (`BanFilter::rebuild`).
        let before = self.read_filter_words()?;
        let bans: Vec<(Addr, BanEntry)> = self.read_bans()?;
        let mut words = vec![0u64; maps::BAN_FILTER_WORDS as usize];
        let mut users = FilterUsers::new(maps::BAN_FILTER_WORDS);
        for (k, _) in &bans {
            let place = filter_place(k);
            words[place.word() as usize] |= place.mask;
            users.add_all(place.bits());
        }
        let expiring = bans.iter().map(|(k, v)| (k, v.expires_ns));
        let tagged = match &mut self.maps.ban_tags {
            Some(tags) => tags.rebuild(expiring.clone())?,
            None => Vec::new(),
        };
        self.maps.ban_cache.put_all(untagged(expiring, tagged))?;
        // While a resized PS_BANS waits for the old program's late bans (its bits set in
        // this shared filter, its entry in the old map until the carry-over), no bit is
        // cleared.
        let resizing = self.resized.iter().any(|r| r.name == maps::BANS);
        self.blank.filter = false;
        self.maps.ban_filter.rebuild(&words, &before, resizing)?;
        self.filter_users = users;
        Ok(bans)
    }

    /// Bans many networks at once, as [`Self::insert_ban`] does one (start-up's restore
    /// of the bans on record): the filter bits first, then the hash and the trie, then
    /// the cache, each map written in batches.
    ///
    /// Takes the bans by value: with a million of them, the list, the keys and values
    /// written and the cache's mapping would otherwise all be held at once (start-up's
    /// peak memory). Every exact ban is counted as a new user of its filter bits, also one
    /// that was in `PS_BANS` already (counting a bit twice only keeps it set longer).
    pub fn insert_bans(&mut self, bans: Vec<(IpNet, BanEntry)>) -> Result<()> {
        let mut writes = self.ban_writes(bans.len());
        for (net, entry) in bans {
            writes.push(net, entry);
        }
        self.write_bans(writes)
    }

    /// Writes the entries of bans the maps may hold already with new values (their
    /// deadlines moved with a step of the wall clock, a decision extended), counting no
    /// filter bit or range a second time: a ban held has its value replaced in the hash
    /// or the trie (and the hash of ranges), and its deadline in the tags or the cache;
    /// one the maps lack is put as [`Self::insert_bans`] puts it. (Counted again, the
    /// bits of a ban would stay set after its lift, and a wide range would keep every
    /// packet going to the trie, until the next load.)
    pub fn refresh_bans(&mut self, bans: Vec<(IpNet, BanEntry)>) -> Result<()> {
        let mut fresh = Vec::new();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut ranges = Vec::new();
        for (net, entry) in bans {
            let (len, key) = addr::net_key(&net);
            let held = if self.exact(&net) {
                absent_is_none(self.maps.bans.get(&key, 0))?.is_some_and(|b| !uncounted(b))
            } else {
                self.trie_ban(&Key::new(len, key))?.is_some()
            };
            match (held, self.exact(&net)) {
                (false, _) => fresh.push((net, entry)),
                (true, true) => {
                    keys.push(key);
                    values.push(entry);
                }
                (true, false) => ranges.push((net, entry)),
            }
        }
        if !keys.is_empty() {
            self.bans_at_load = None;
            sys::write_map_parallel(fd(&self.maps.bans), &keys, &values)
                .map_err(|e| stopped_at(e, None, maps::BANS))?;
            let expires = values.iter().map(|v| v.expires_ns);
            put_cached(
                &mut self.maps.ban_tags,
                &mut self.maps.ban_cache,
                keys.iter().zip(expires),
            )?;
        }
        if !ranges.is_empty() {
            // The hash of ranges decides first: its value, then the trie's.
            self.net_hash_add(&ranges)?;
            let (keys, values) = trie_entries(&ranges);
            sys::write_map(fd(&self.maps.ban_nets), &keys, &values)
                .map_err(|e| stopped_at(e, None, maps::BAN_NETS))?;
        }
        if !fresh.is_empty() {
            self.insert_bans(fresh)?;
        }
        Ok(())
    }

    /// [`Self::insert_bans`] of bans already sorted out ([`Self::ban_writes`]).
    pub fn write_bans(&mut self, writes: BanWrites) -> Result<()> {
        self.bans_at_load = None;
        let BanWrites {
            keys, values, nets, ..
        } = writes;
        if !keys.is_empty() {
            self.blank.filter = false;
            let expires = values.iter().map(|v| v.expires_ns);
            let maps = &mut self.maps;
            let users = &mut self.filter_users;
            let bans_fd = fd(&maps.bans);
            let (filter, tags, cache) = (
                &mut maps.ban_filter,
                &mut maps.ban_tags,
                &mut maps.ban_cache,
            );
            let (written, indexed) = if self.blank.unused {
                // No program runs on these maps yet (a start after a reboot): the
                // filter, the tags and the cache are written here while other threads
                // write the hash (0.1-0.2 s of a million bans' restore), where a running
                // program needs the filter before the hash and the hash before the rest.
                std::thread::scope(|s| {
                    let hash = s.spawn(|| sys::write_map_parallel(bans_fd, &keys, &values));
                    let indexed = set_filter_bits(users, filter, &keys)
                        .and_then(|()| put_cached(tags, cache, keys.iter().zip(expires)));
                    (
                        hash.join().expect("the map writers' thread panicked"),
                        indexed,
                    )
                })
            } else {
                set_filter_bits(users, filter, &keys)?;
                let written = sys::write_map_parallel(bans_fd, &keys, &values);
                let indexed = match written {
                    Ok(()) => put_cached(tags, cache, keys.iter().zip(expires)),
                    Err(_) => Ok(()),
                };
                (written, indexed)
            };
            if let Err(e) = written {
                if self.blank.unused {
                    // The filter, the tags and the cache took every ban: the bans the
                    // hash lacks taken out of the cache (its rebuild only adds), then all
                    // three made the hash's again.
                    let held: HashSet<Addr> =
                        self.read_bans()?.into_iter().map(|(k, _)| k).collect();
                    for key in keys.iter().filter(|k| !held.contains(*k)) {
                        self.maps.ban_cache.remove(key)?;
                    }
                    self.rebuild_ban_filter()?;
                }
                let net = keys
                    .get(e.written)
                    .map(|k| addr::source_key_net(k, self.v6_source_prefix()));
                return Err(stopped_at(e, net, maps::BANS));
            }
            indexed?;
        }
        if !nets.is_empty() {
            let (keys, values) = trie_entries(&nets);
            // The filter first: the program never skips the trie for a banned range.
            // (A range already in the trie is counted again: that only keeps its bits
            // set longer.) Then the hash of lengths, which may send the program to the
            // trie.
            self.net_filter_add(nets.iter().map(|(net, _)| net))?;
            let new = self.net_hash_add(&nets)?;
            if let Err(e) = sys::write_map(fd(&self.maps.ban_nets), &keys, &values) {
                // The ranges not written: a new one leaves the hash (none is in force
                // unlisted), one the trie holds gets its value there back (the hash
                // decides first: a new end the trie refused would be in force).
                let unwritten = nets.iter().zip(&keys).zip(&new).skip(e.written);
                for (((net, _), k), is_new) in unwritten {
                    if *is_new {
                        self.net_hash_remove(net)?;
                    } else if let Some(held) = self.trie_ban(k)? {
                        self.net_hash_add(&[(*net, held)])?;
                    }
                }
                let net = nets.get(e.written).map(|b| b.0);
                return Err(stopped_at(e, net, maps::BAN_NETS));
            }
            self.set_flag(SETTING_PREFIX_BANS, true)?;
        }
        Ok(())
    }

    /// Every word of `PS_BAN_FILTER`.
    fn read_filter_words(&self) -> Result<Vec<u64>> {
        if self.blank.filter {
            return Ok(vec![0; maps::BAN_FILTER_WORDS as usize]);
        }
        self.maps.ban_filter.read_all()
    }

    /// How many bits of `PS_BAN_FILTER` are set (for the tests).
    pub fn ban_filter_bits(&self) -> Result<u64> {
        Ok(self
            .read_filter_words()?
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum())
    }

    /// [`put_cached`] of one ban; a tagged ban leaves the cache (the program
    /// may have put it there: its own bans go in the cache).
    fn cache_put(&mut self, key: &Addr, expires_ns: u64) -> Result<()> {
        let tagged = match &mut self.maps.ban_tags {
            Some(tags) => tags.put(key, expires_ns)?,
            None => false,
        };
        if tagged {
            self.maps.ban_cache.remove(key)
        } else {
            self.maps.ban_cache.put(key, expires_ns)
        }
    }

    /// Takes a ban out of `PS_BAN_TAGS` and its `PS_BAN_CACHE` set, if there.
    fn cache_drop(&mut self, key: &Addr) -> Result<()> {
        if let Some(tags) = &mut self.maps.ban_tags {
            tags.remove(key)?;
        }
        self.maps.ban_cache.remove(key)
    }

    /// Sets (`on`) or clears the bits of `mask` in word `word` of `PS_BAN_FILTER`.
    fn set_filter_bits(&mut self, word: u32, mask: u64, on: bool) -> Result<()> {
        self.blank.filter = false;
        let f = &mut self.maps.ban_filter;
        if on {
            f.set(word, mask)
        } else {
            f.clear(word, mask)
        }
        .context("writing PS_BAN_FILTER")
    }

    /// One ban fewer uses each bit of `place`: the bits no ban uses any more are cleared.
    fn release_filter(&mut self, place: BanFilterPlace) -> Result<()> {
        let freed = place
            .bits()
            .filter(|b| self.filter_users.release(*b) == Some(0))
            .fold(0u64, |m, b| m | 1 << (b & 63));
        if freed != 0 {
            self.set_filter_bits(place.word(), freed, false)?;
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
        self.bans_at_load = None;
        let (len, key) = addr::net_key(net);
        if exact {
            // The filter bits go first: a ban is never in the map without them.
            let place = filter_place(&key);
            // A new ban's bits are counted, and so are those of a ban the program made
            // and the daemon has not taken over (`uncounted`).
            let counts = absent_is_none(self.maps.bans.get(&key, 0))?.is_none_or(uncounted);
            // A bit with no user before may be missing from the map's word.
            if counts && self.filter_users.add_all(place.bits()) {
                self.set_filter_bits(place.word(), place.mask, true)?;
            }
            if let Err(e) = self.maps.bans.insert(key, entry, 0) {
                if counts {
                    self.release_filter(place)?;
                }
                return Err(e)
                    .with_context(|| format!("writing the ban of {net} (is PS_BANS full?)"));
            }
            // After the hash: the tags and the cache never hold a ban the hash lacks.
            self.cache_put(&key, entry.expires_ns)?;
        } else {
            // The range filter first: the program never skips the trie for a banned range.
            let k = Key::new(len, key);
            let is_new = self.trie_ban(&k)?.is_none();
            if is_new {
                self.net_filter_add(std::iter::once(net))?;
            }
            self.net_hash_add(&[(*net, *entry)])?;
            if let Err(e) = self.maps.ban_nets.insert(&k, entry, 0) {
                if is_new {
                    self.net_hash_remove(net)?;
                    self.net_filter_remove(net)?;
                } else if let Some(held) = self.trie_ban(&k)? {
                    // The hash as the trie has it (it decides first).
                    self.net_hash_add(&[(*net, held)])?;
                }
                return Err(e)
                    .with_context(|| format!("writing the ban of {net} (is PS_BAN_NETS full?)"));
            }
            self.set_flag(SETTING_PREFIX_BANS, true)?;
        }
        Ok(())
    }

    /// Takes over a ban the program made itself (origin `Kernel`): it counts the ban's
    /// filter bits as its own (the program set them without telling anyone: `uncounted`)
    /// and rewrites the entry as `entry` (the daemon's length and origin).
    pub fn adopt_kernel_ban(&mut self, net: &IpNet, entry: &BanEntry) -> Result<()> {
        self.insert_ban(net, entry)
    }

    /// Removes the ban of exactly `net`; false when there was none.
    pub fn remove_ban(&mut self, net: &IpNet) -> Result<bool> {
        self.remove_ban_as(net, self.exact(net))
    }

    fn remove_ban_as(&mut self, net: &IpNet, exact: bool) -> Result<bool> {
        self.bans_at_load = None;
        let (len, key) = addr::net_key(net);
        if exact {
            // Before the hash: the tags and the cache never hold a ban the hash lacks.
            self.cache_drop(&key)?;
            let held = absent_is_none(self.maps.bans.get(&key, 0))?;
            let removed = absent_is_false(self.maps.bans.remove(&key))?;
            // A ban whose bits nobody counted releases none: that would take a user
            // from another ban of the same bit, and could clear the bit under it.
            if removed && !held.is_some_and(uncounted) {
                self.release_filter(filter_place(&key))?;
            }
            Ok(removed)
        } else {
            let t = &mut self.maps.ban_nets;
            let removed = absent_is_false(t.remove(&Key::new(len, key)))?;
            let any_left = t.keys().next().is_some();
            self.set_flag(SETTING_PREFIX_BANS, any_left)?;
            // After the trie: the program never skips the trie for a banned range.
            if removed {
                self.net_hash_remove(net)?;
                self.net_filter_remove(net)?;
            }
            Ok(removed)
        }
    }

    /// The ban of exactly `net`, if any.
    pub fn ban(&self, net: &IpNet) -> Result<Option<BanEntry>> {
        let (len, key) = addr::net_key(net);
        if self.exact(net) {
            absent_is_none(self.maps.bans.get(&key, 0))
        } else {
            self.trie_ban(&Key::new(len, key))
        }
    }

    /// The ban of exactly the range `k` in `PS_BAN_NETS`, if the trie holds it. A lookup
    /// in an LPM trie answers with the longest range holding `k`'s network (a /64 for
    /// its /128 when the /128 is not there): the trie holds `k` itself when the key the
    /// kernel gives after `k` is not the trie's first, which it gives after a key it
    /// does not hold. (Taken for `k`, a covering range's ban made a new range look
    /// known: its filter bit went uncounted, and its lift cleared the bit under the
    /// covering range, which then went unseen.) Kernels before 6.13 (without "bpf: Fix
    /// exact match conditions in trie_get_next_key()") may take another key of `k`'s
    /// length for `k` there, and answer as before.
    fn trie_ban(&self, k: &Key<Addr>) -> Result<Option<BanEntry>> {
        let Some(ban) = absent_is_none(self.maps.ban_nets.get(k, 0))? else {
            return Ok(None);
        };
        let trie = fd(&self.maps.ban_nets);
        let next = |key: Option<&Key<Addr>>| {
            sys::next_key(trie, key).context("reading the keys of PS_BAN_NETS")
        };
        let after = next(Some(k))?;
        let held = after.is_none() || !same_key(after.as_ref(), next(None)?.as_ref());
        Ok(held.then_some(ban))
    }

    /// Every ban in the kernel, hosts and prefixes (each map read in batches).
    pub fn bans(&self) -> Result<Vec<(IpNet, BanEntry)>> {
        let hosts = self.read_bans()?;
        self.with_nets(hosts)
    }

    /// Every entry of `PS_BANS` (by two threads: [`sys::read_hash_map`]).
    fn read_bans(&self) -> Result<Vec<(Addr, BanEntry)>> {
        let size = aya::maps::IterableMap::map(&self.maps.bans)
            .info()?
            .max_entries();
        sys::read_hash_map(fd(&self.maps.bans), size).context("reading PS_BANS")
    }

    /// The program's count of lost events when the pins were opened, before their bans
    /// were read: the bans the program made before are among those read, and a ban
    /// whose event is lost after counts above it.
    pub fn events_lost_at_load(&self) -> u64 {
        self.events_lost_at_load
    }

    /// Like [`Self::bans`], once, for start-up: the exact bans are those the load read to
    /// rebuild the filter (a million of them take a second to read again) unless this
    /// process changed a ban since. A ban the program made after that read (at a
    /// source's trigger, in the moments of the attach) is missing from it; its event in
    /// the pinned ring buffer brings it to the daemon.
    pub fn take_bans_at_load(&mut self) -> Result<Vec<(IpNet, BanEntry)>> {
        match self.bans_at_load.take() {
            Some(hosts) => self.with_nets(hosts),
            None => self.bans(),
        }
    }

    /// The exact bans `hosts` as networks, and every ban of the trie.
    fn with_nets(&self, hosts: Vec<(Addr, BanEntry)>) -> Result<Vec<(IpNet, BanEntry)>> {
        let prefix = self.v6_source_prefix();
        let nets: Vec<(Key<Addr>, BanEntry)> =
            sys::read_map(fd(&self.maps.ban_nets)).context("reading PS_BAN_NETS")?;
        let mut out = Vec::with_capacity(hosts.len() + nets.len());
        out.extend(
            hosts
                .into_iter()
                .map(|(k, v)| (addr::source_key_net(&k, prefix), v)),
        );
        out.extend(
            nets.into_iter()
                .map(|(k, v)| (addr::net_from_key(k.prefix_len(), &k.data()), v)),
        );
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
        // Two of them may share a key of the exact map, the network of one prefix and
        // that of the other at the same address (2001:db8::/64 and 2001:db8::/48 trade
        // places): the one coming in overwrites the entry of the one going out, whose
        // key then stays (as the other's), and which an error puts back.
        let key = |net: &IpNet| addr::net_key(net).1;
        let going: StdHashMap<Addr, (IpNet, BanEntry)> = moved
            .iter()
            .filter(|(_, _, was)| *was)
            .map(|(net, entry, _)| (key(net), (*net, *entry)))
            .collect();
        let coming: HashSet<Addr> = moved
            .iter()
            .filter(|(_, _, was)| !was)
            .map(|(net, _, _)| key(net))
            .collect();
        for (i, (net, entry, was)) in moved.iter().enumerate() {
            if let Err(e) = self.insert_ban_as(net, entry, !was) {
                // Nothing half-applied: the copies made so far leave the other map
                // again (a copy left there would stay in force, out of reach of an
                // unban, which looks in the map of the prefix in force).
                for (net, _, was) in &moved[..i] {
                    match going.get(&key(net)) {
                        Some((out, held)) if !was => self.insert_ban_as(out, held, true)?,
                        _ => {
                            self.remove_ban_as(net, !was)?;
                        }
                    }
                }
                return Err(e.context(format!(
                    "moving the IPv6 bans to SOURCE_PREFIX_V6's other map (the prefix in \
                     force is unchanged; the {i} of {} bans copied before the error were \
                     taken back)",
                    moved.len()
                )));
            }
        }
        // The moves may have set SETTING_PREFIX_BANS.
        self.store_settings(self.keep_presence(settings))?;
        for (net, _, was) in &moved {
            if !(*was && coming.contains(&key(net))) {
                self.remove_ban_as(net, *was)?;
            }
        }
        Ok(())
    }
}

/// Every word of a bitmap map of `len` words (`name` for errors), read in batches.
pub(super) fn read_words(map: BorrowedFd<'_>, len: u32, name: &str) -> Result<Vec<u64>> {
    let mut words = vec![0u64; len as usize];
    for (i, w) in sys::read_map::<u32, u64>(map).with_context(|| format!("reading {name}"))? {
        if let Some(slot) = words.get_mut(i as usize) {
            *slot = w;
        }
    }
    Ok(words)
}

/// Writes the words of a bitmap map that differ between `now` (what it holds) and `want`,
/// in batches.
pub(super) fn write_changed_words(
    map: BorrowedFd<'_>,
    now: &[u64],
    want: &[u64],
    name: &str,
) -> Result<()> {
    let (idx, vals): (Vec<u32>, Vec<u64>) = now
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (_, b))| (i as u32, *b))
        .unzip();
    sys::write_map_parallel(map, &idx, &vals).with_context(|| format!("writing {name}"))
}

/// A bulk write into `map` that stopped, as an error naming the ban it stopped at
/// (`net`, when known): [`MapFull`] when the map had no room left.
fn stopped_at(e: sys::WriteError, net: Option<IpNet>, map: &'static str) -> anyhow::Error {
    // A hash map answers E2BIG when full, the trie ENOSPC.
    let full = matches!(e.error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC));
    let err = anyhow::Error::new(e);
    if full {
        err.context(MapFull { map, net })
    } else {
        let net = net.map_or(String::new(), |n| n.to_string());
        err.context(format!("writing the ban of {net} into {map}"))
    }
}

/// A ban not written because its map is full (`PS_BANS`: MAX_BANS bans at once).
#[derive(Debug)]
pub struct MapFull {
    pub map: &'static str,
    /// The ban the write stopped at, when known.
    pub net: Option<IpNet>,
}

impl std::fmt::Display for MapFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net = self.net.map_or(String::new(), |n| format!(" of {n}"));
        let limit = if self.map == maps::BANS {
            " (MAX_BANS bans at once)"
        } else {
            ""
        };
        write!(f, "writing the ban{net}: {} is full{limit}", self.map)
    }
}

fn filter_place(key: &Addr) -> BanFilterPlace {
    maps::ban_filter_place(&bytemuck::cast::<Addr, AddrWords>(*key))
}

/// Sets the `PS_BAN_FILTER` bits of exact bans, each counted as a new user of its bits.
fn set_filter_bits(users: &mut FilterUsers, filter: &mut BanFilter, keys: &[Addr]) -> Result<()> {
    let places: Vec<BanFilterPlace> = keys.iter().map(filter_place).collect();
    for place in &places {
        users.add_all(place.bits());
    }
    filter.set_many(places.iter().map(|p| (p.word(), p.mask)))
}

/// Puts each ban where the program looks before the hash: an IPv4 ban's tag in
/// `PS_BAN_TAGS`, else the ban in its `PS_BAN_CACHE` set, each unless full.
fn put_cached<'a>(
    tags: &mut Option<BanTagTable>,
    cache: &mut BanCache,
    bans: impl Iterator<Item = (&'a Addr, u64)> + Clone,
) -> Result<()> {
    let tagged = match tags {
        Some(tags) => tags.put_all(bans.clone())?,
        None => Vec::new(),
    };
    cache.put_all(untagged(bans, tagged))
}

/// The keys and values of `nets` in `PS_BAN_NETS`.
fn trie_entries(nets: &[(IpNet, BanEntry)]) -> (Vec<Key<Addr>>, Vec<BanEntry>) {
    nets.iter()
        .map(|(net, e)| {
            let (len, key) = addr::net_key(net);
            (Key::new(len, key), *e)
        })
        .unzip()
}

/// Whether two keys of the trie (either absent) are the same range.
fn same_key(a: Option<&Key<Addr>>, b: Option<&Key<Addr>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.prefix_len() == b.prefix_len() && a.data() == b.data(),
        (None, None) => true,
        _ => false,
    }
}

/// A ban the program made and the daemon has not taken over (origin `Kernel`): the
/// program set its filter bits without counting them in `filter_users`. (One the load
/// found in the map was counted then: counted again, its bits only stay set longer.)
fn uncounted(ban: BanEntry) -> bool {
    ban.origin == maps::BanOrigin::Kernel as u8
}

/// The bans of `bans` whose tag is not in (`tagged`: one flag a ban, in order; none
/// when the object has no tags).
fn untagged<'a>(
    bans: impl Iterator<Item = (&'a Addr, u64)>,
    tagged: Vec<bool>,
) -> impl Iterator<Item = (&'a Addr, u64)> {
    bans.zip(tagged.into_iter().chain(std::iter::repeat(false)))
        .filter(|(_, t)| !t)
        .map(|(b, _)| b)
}
