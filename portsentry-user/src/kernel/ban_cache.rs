//! `PS_BAN_CACHE` from the daemon's side: the sets of three bans the program looks at
//! before the hash (`portsentry_common::maps::BanSet`), written through a mapping of
//! the array when many go in at once (start-up), so that putting a million bans in is a
//! walk over memory, not a syscall each; a ban or two through the map's calls. The
//! mapping is let go after each use: kept, its pages would count in the daemon's memory.
//!
//! The cache only ever holds bans the hash holds, and may lack any: the daemon puts a
//! ban in after the hash, and takes it out before.
//!
//! An object of an earlier release has a direct-mapped cache of 32-byte slots instead
//! (the bench's baselines load one): written the way that release wrote it.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, Map, MapData};
use portsentry_common::{
    Addr,
    maps::{self, BanSet, ban_cache_set, ban_filter_bit},
    packet::AddrWords,
};

use super::{mapped::Mapped, sys};

pub(super) enum BanCache {
    /// This release's sets, as many as the map has entries.
    Sets { map: MapData, sets: u32 },
    /// An earlier release's `Array<Slot>` of [`SLOTS`].
    Slots(Array<MapData, Slot>),
}

/// An earlier release's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Slot {
    addr: AddrWords,
    expires_ns: u64,
    used: u64,
}
// SAFETY: plain words.
unsafe impl aya::Pod for Slot {}

/// The slots of an earlier release's cache.
const SLOTS: u32 = 1 << 18;

impl BanCache {
    pub fn new(map: Map) -> Result<BanCache> {
        let Map::Array(data) = map else {
            bail!("PS_BAN_CACHE is not an array: run `portsentry unload`");
        };
        let info = data.info()?;
        match info.value_size() as usize {
            n if n == size_of::<BanSet>() => {
                let sets = info.max_entries();
                if !sets.is_power_of_two() {
                    bail!(
                        "PS_BAN_CACHE has {sets} sets, not a power of two: run `portsentry unload`"
                    );
                }
                Ok(BanCache::Sets { map: data, sets })
            }
            n if n == size_of::<Slot>() => Ok(BanCache::Slots(Array::try_from(Map::Array(data))?)),
            n => bail!("PS_BAN_CACHE holds values of {n} bytes: run `portsentry unload`"),
        }
    }

    /// The sets, for the program's settings (`maps::with_ban_cache_sets`); `None` for an
    /// earlier release's cache.
    pub fn sets(&self) -> Option<u32> {
        match self {
            BanCache::Sets { sets, .. } => Some(*sets),
            BanCache::Slots(_) => None,
        }
    }

    /// Puts each ban in its set unless the set is full (bans already there get their
    /// expiry refreshed, which also mends one a crash left stale). Many bans go in
    /// through a mapping of the array; a few through the map's calls (mapping the
    /// array, whose pages the kernel maps all at once, costs about a millisecond).
    pub fn put_all<'a>(&mut self, bans: impl Iterator<Item = (&'a Addr, u64)>) -> Result<()> {
        let mut bans = bans.peekable();
        if bans.peek().is_none() {
            return Ok(());
        }
        let (map, sets) = match self {
            BanCache::Sets { map, sets } => (&*map, *sets),
            BanCache::Slots(a) => return put_all_slots(a, bans),
        };
        let first: Vec<(&Addr, u64)> = bans.by_ref().take(FEW).collect();
        if bans.peek().is_none() {
            for (key, expires_ns) in first {
                let w: AddrWords = bytemuck::cast(*key);
                let i = ban_cache_set(&w, sets);
                let mut set = read_set(map, i)?;
                if set.place(&w, expires_ns) {
                    write_set(map, i, &set)?;
                }
            }
            return Ok(());
        }
        let m = Mapped::<BanSet>::new(map, maps::BAN_CACHE, false)?;
        for (key, expires_ns) in first.into_iter().chain(bans) {
            let w: AddrWords = bytemuck::cast(*key);
            let i = ban_cache_set(&w, sets) as usize;
            let mut set = m.get(i);
            if set.place(&w, expires_ns) {
                m.put(i, &set);
            }
        }
        Ok(())
    }

    /// Puts a ban in its set unless the set is full.
    pub fn put(&mut self, key: &Addr, expires_ns: u64) -> Result<()> {
        let BanCache::Slots(a) = self else {
            return self.put_all(std::iter::once((key, expires_ns)));
        };
        // An earlier release's slot, unless another ban holds it.
        let w: AddrWords = bytemuck::cast(*key);
        let idx = ban_filter_bit(&w) & (SLOTS - 1);
        let cur = a.get(&idx, 0)?;
        if cur.used == 0 || cur.addr == w {
            let slot = Slot {
                addr: w,
                expires_ns,
                used: 1,
            };
            a.set(idx, slot, 0).context("writing PS_BAN_CACHE")?;
        }
        Ok(())
    }

    /// True when the ban of `key` is in its set (an earlier release's cache: its slot).
    pub fn holds(&self, key: &Addr) -> Result<bool> {
        let w: AddrWords = bytemuck::cast(*key);
        Ok(match self {
            BanCache::Sets { map, sets } => {
                read_set(map, ban_cache_set(&w, *sets))?.find(&w).is_some()
            }
            BanCache::Slots(a) => {
                let cur = a.get(&(ban_filter_bit(&w) & (SLOTS - 1)), 0)?;
                cur.used != 0 && cur.addr == w
            }
        })
    }

    /// How many bans the cache holds.
    pub fn held(&self) -> Result<u64> {
        Ok(match self {
            BanCache::Sets { map, .. } => {
                let m = Mapped::<BanSet>::new(map, maps::BAN_CACHE, true)?;
                (0..m.len())
                    .map(|i| m.get(i).until.iter().filter(|u| **u != 0).count() as u64)
                    .sum()
            }
            BanCache::Slots(a) => sys::read_map::<u32, Slot>(super::maps::fd(a))
                .context("reading PS_BAN_CACHE")?
                .iter()
                .filter(|(_, s)| s.used != 0)
                .count() as u64,
        })
    }

    /// Takes a ban out of its set, if there.
    pub fn remove(&mut self, key: &Addr) -> Result<()> {
        let w: AddrWords = bytemuck::cast(*key);
        match self {
            BanCache::Sets { map, sets } => {
                let i = ban_cache_set(&w, *sets);
                let mut set = read_set(map, i)?;
                if set.remove(&w) {
                    write_set(map, i, &set)?;
                }
                Ok(())
            }
            BanCache::Slots(a) => {
                let idx = ban_filter_bit(&w) & (SLOTS - 1);
                let cur = a.get(&idx, 0)?;
                if cur.used != 0 && cur.addr == w {
                    a.set(idx, Slot::default(), 0)
                        .context("writing PS_BAN_CACHE")?;
                }
                Ok(())
            }
        }
    }
}

/// Bans put in through the map's calls, one set each; more through a mapping.
const FEW: usize = 64;

/// Set `i` of this release's cache.
fn read_set(map: &MapData, i: u32) -> Result<BanSet> {
    let bytes = sys::lookup_bytes(map.fd().as_fd(), &i.to_ne_bytes(), size_of::<BanSet>())
        .context("reading PS_BAN_CACHE")?;
    Ok(bytemuck::pod_read_unaligned(&bytes))
}

fn write_set(map: &MapData, i: u32, set: &BanSet) -> Result<()> {
    sys::update_bytes(map.fd().as_fd(), &i.to_ne_bytes(), bytemuck::bytes_of(set))
        .context("writing PS_BAN_CACHE")
}

/// An earlier release's cache: each ban into its slot unless another ban holds it, the
/// cache read and the changed slots written in batches.
fn put_all_slots<'a>(
    a: &mut Array<MapData, Slot>,
    bans: impl Iterator<Item = (&'a Addr, u64)>,
) -> Result<()> {
    let fd = super::maps::fd(a);
    let mut slots = vec![Slot::default(); SLOTS as usize];
    for (i, slot) in sys::read_map::<u32, Slot>(fd).context("reading PS_BAN_CACHE")? {
        if let Some(s) = slots.get_mut(i as usize) {
            *s = slot;
        }
    }
    let mut changed = Vec::new();
    for (key, expires_ns) in bans {
        let w: AddrWords = bytemuck::cast(*key);
        let idx = ban_filter_bit(&w) & (SLOTS - 1);
        let cur = &mut slots[idx as usize];
        let slot = Slot {
            addr: w,
            expires_ns,
            used: 1,
        };
        if (cur.used == 0 || cur.addr == w) && *cur != slot {
            *cur = slot;
            changed.push(idx);
        }
    }
    let vals: Vec<Slot> = changed.iter().map(|i| slots[*i as usize]).collect();
    sys::write_map_parallel(fd, &changed, &vals).context("writing PS_BAN_CACHE")
}

#[cfg(test)]
mod tests {
    use portsentry_common::maps::{BAN_CACHE_FOREVER, cache_until};

    use super::*;

    #[test]
    fn a_set_holds_three_bans_and_finds_each() {
        let mut set = BanSet::default();
        let a: Vec<AddrWords> = (1..=4u64).map(|i| [0, i << 32]).collect();
        assert!(set.place(&a[0], 0));
        assert!(set.place(&a[1], 5 << 30));
        assert!(set.place(&a[2], 7 << 30));
        assert!(!set.place(&a[3], 0), "full");
        assert_eq!(set.find(&a[3]), None);
        assert!(!set.place(&a[1], 5 << 30), "unchanged");
        assert!(set.holds_active(&a[0], u64::MAX), "forever");
        assert!(set.holds_active(&a[1], (5 << 30) - 1));
        assert!(!set.holds_active(&a[1], 5 << 30), "ended: the hash decides");
        assert!(set.remove(&a[1]));
        assert!(!set.remove(&a[1]));
        assert!(set.place(&a[3], 9 << 30), "the freed way");
        assert_eq!(set.find(&a[3]), Some(1));
    }

    #[test]
    fn the_cache_never_outlasts_a_ban() {
        assert_eq!(cache_until(0), BAN_CACHE_FOREVER);
        // Rounded down: a ban ending within the unit is not claimed past its end.
        let ends = (3u64 << 30) + 12345;
        assert_eq!(u64::from(cache_until(ends)) << 30, 3 << 30);
        assert_eq!(cache_until(1000), 0, "not cached");
        assert_eq!(cache_until(u64::MAX), BAN_CACHE_FOREVER - 1);
        // A ban the cache cannot hold takes its address's way back.
        let mut set = BanSet::default();
        assert!(set.place(&[0, 1], 0));
        assert!(set.place(&[0, 1], 1000));
        assert_eq!(set.find(&[0, 1]), None);
        // The address `::` is a real source.
        assert!(set.place(&[0, 0], 0));
        assert_eq!(set.find(&[0, 0]), Some(0));
    }

    #[test]
    fn sets_grow_with_max_bans() {
        use portsentry_common::maps::{
            BAN_CACHE_MAX_SETS, BAN_CACHE_MIN_SETS, ban_cache_mask, ban_cache_sets,
            with_ban_cache_sets,
        };
        assert_eq!(ban_cache_sets(16), BAN_CACHE_MIN_SETS);
        assert_eq!(ban_cache_sets(1 << 20), 1 << 19);
        assert_eq!(ban_cache_sets(1_000_000), 1 << 19);
        assert_eq!(ban_cache_sets(u32::MAX), BAN_CACHE_MAX_SETS);
        let flags = with_ban_cache_sets(0xff00_0007, 1 << 19);
        assert_eq!(ban_cache_mask(flags), (1 << 19) - 1);
        assert_eq!(flags & !(31 << 9), 0xff00_0007, "other flags kept");
        assert_eq!(ban_cache_mask(0), 0, "unwritten: set 0");
    }
}
