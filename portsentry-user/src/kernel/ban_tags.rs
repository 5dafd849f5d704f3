//! `PS_BAN_TAGS` from the daemon's side: an IPv4 ban's two-byte tag in its bucket
//! (`portsentry_common::ban_tags`), which the program looks at after the ban filter and
//! before the cache. Only the daemon writes the table; like the cache, it only ever
//! holds bans the hash holds (a tag goes in after the hash, and out before), and may lack
//! any (a full bucket, an IPv6 ban, a ban the program made until the daemon takes it
//! over). A ban whose tag is in is not put in the cache: the program never looks
//! there for it.
//!
//! A bucket carries one `until` for its bans: the soonest end among them. So that it
//! rises again when that ban goes, the daemon keeps the end of each ban that has one,
//! by bucket; bans that never end (most: BLOCK_* bans last until unbanned) cost nothing
//! here. The table is written whole at each load, through a mapping of the array; a ban
//! or two through the map's calls.
//!
//! A program reading a bucket while the daemon rewrites it may see the old and the new
//! tags mixed: the tag of a ban being lifted may still be found, for that packet.

use std::{collections::HashMap, os::fd::AsFd as _};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData};
use portsentry_common::{
    Addr,
    ban_tags::{BAN_TAG_MIN_SHIFT, BanTagPlace, BanTags, ban_tag_place, v4_of},
    maps::{self, BAN_CACHE_FOREVER, cache_until},
    packet::AddrWords,
};

use super::{mapped::Mapped, sys};

pub(super) struct BanTagTable {
    map: MapData,
    /// log2 of the buckets.
    shift: u32,
    /// The tags of the bans that end, and their `until`, by bucket.
    timed: HashMap<u32, Vec<(u16, u32)>>,
}

/// Bans put in through the map's calls, one bucket each; more through a mapping.
const FEW: usize = 64;

impl BanTagTable {
    pub fn new(map: Map) -> Result<BanTagTable> {
        let Map::Array(data) = map else {
            bail!(
                "{} is not an array: run `portsentry unload`",
                maps::BAN_TAGS
            );
        };
        let info = data.info()?;
        let buckets = info.max_entries();
        if info.value_size() as usize != size_of::<BanTags>()
            || !buckets.is_power_of_two()
            || buckets < 1 << BAN_TAG_MIN_SHIFT
        {
            bail!(
                "{} has {buckets} buckets of {} bytes, not a power of two of at least 2^{} \
                 of {}: run `portsentry unload`",
                maps::BAN_TAGS,
                info.value_size(),
                BAN_TAG_MIN_SHIFT,
                size_of::<BanTags>()
            );
        }
        Ok(BanTagTable {
            map: data,
            shift: buckets.trailing_zeros(),
            timed: HashMap::new(),
        })
    }

    /// log2 of the buckets (the program computes it from the cache's sets).
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// The table made anew from `bans` (at load): every bucket that differs written.
    /// Says of each ban whether its tag is in.
    pub fn rebuild<'a>(
        &mut self,
        bans: impl Iterator<Item = (&'a Addr, u64)>,
    ) -> Result<Vec<bool>> {
        self.timed.clear();
        let mut want = vec![BanTags::default(); 1 << self.shift];
        let tagged = bans
            .map(|(key, expires_ns)| {
                let Some((place, until)) = self.place_of(key, expires_ns) else {
                    return false;
                };
                self.insert(&mut want[place.bucket as usize], place, until)
            })
            .collect();
        let m = Mapped::<BanTags>::new(&self.map, maps::BAN_TAGS, false)?;
        for (i, bucket) in want.iter().enumerate() {
            if m.get(i) != *bucket {
                m.put(i, bucket);
            }
        }
        Ok(tagged)
    }

    /// Puts each IPv4 ban's tag in its bucket unless the bucket is full. Says of each
    /// ban whether its tag is in.
    pub fn put_all<'a>(
        &mut self,
        bans: impl Iterator<Item = (&'a Addr, u64)>,
    ) -> Result<Vec<bool>> {
        let mut bans = bans.peekable();
        let first: Vec<(&Addr, u64)> = bans.by_ref().take(FEW).collect();
        if bans.peek().is_none() {
            return first.into_iter().map(|(k, e)| self.put(k, e)).collect();
        }
        let m = Mapped::<BanTags>::new(&self.map, maps::BAN_TAGS, false)?;
        // Each IPv4 ban's place and end, then visited in the order of the buckets: in
        // the bans' order, a bucket's read missed the caches at every ban (4 MiB of
        // buckets at a million bans, 0.17 s of a start's restore). A ban changes its
        // bucket alone, and the bans of a bucket keep their order: the same outcome.
        let mut n = 0;
        let places: Vec<(u32, (u32, u16, u32))> = first
            .into_iter()
            .chain(bans)
            .filter_map(|(key, expires_ns)| {
                let i = n;
                n += 1;
                let p = place(key, self.shift)?;
                Some((p.bucket, (i, p.tag, cache_until(expires_ns))))
            })
            .collect();
        let mut tagged = vec![false; n as usize];
        for (b, (i, tag, until)) in by_bucket(places, 1 << self.shift) {
            let place = BanTagPlace { bucket: b, tag };
            let mut bucket = m.get(b as usize);
            // One that ends within the first unit after boot is taken out (`place_of`).
            let changed = if until == 0 {
                self.take_out(&mut bucket, place)
            } else {
                let inserted = self.insert(&mut bucket, place, until);
                tagged[i as usize] = inserted;
                inserted
            };
            if changed {
                m.put(b as usize, &bucket);
            }
        }
        Ok(tagged)
    }

    /// Puts an IPv4 ban's tag in its bucket unless the bucket is full; true when the tag
    /// is in.
    pub fn put(&mut self, key: &Addr, expires_ns: u64) -> Result<bool> {
        let Some((place, until)) = self.place_of(key, expires_ns) else {
            self.remove(key)?;
            return Ok(false);
        };
        let mut bucket = self.read(place.bucket)?;
        let tagged = self.insert(&mut bucket, place, until);
        if tagged {
            self.write(place.bucket, &bucket)?;
        }
        Ok(tagged)
    }

    /// Puts the tag in `bucket` with its end recorded; false (and nothing recorded) when
    /// the bucket is full.
    fn insert(&mut self, bucket: &mut BanTags, place: BanTagPlace, until: u32) -> bool {
        let until = self.note(place, until);
        let tagged = bucket.insert(place.tag, until, self.shift);
        if !tagged {
            self.forget(place);
        }
        tagged
    }

    /// Takes an IPv4 ban's tag out of its bucket, if there.
    pub fn remove(&mut self, key: &Addr) -> Result<()> {
        let Some(place) = place(key, self.shift) else {
            return Ok(());
        };
        let mut bucket = self.read(place.bucket)?;
        if self.take_out(&mut bucket, place) {
            self.write(place.bucket, &bucket)?;
        }
        Ok(())
    }

    /// Takes the tag out of `bucket` and forgets its end; false when the bucket did not
    /// hold it.
    fn take_out(&mut self, bucket: &mut BanTags, place: BanTagPlace) -> bool {
        let until = self.forget(place);
        bucket.remove(place.tag, until)
    }

    /// True when the tag of `key`'s ban is in its bucket.
    pub fn holds(&self, key: &Addr) -> Result<bool> {
        Ok(match place(key, self.shift) {
            Some(p) => self.read(p.bucket)?.until_of(p.tag, self.shift) != 0,
            None => false,
        })
    }

    /// How many bans the table holds.
    pub fn held(&self) -> Result<u64> {
        let m = Mapped::<BanTags>::new(&self.map, maps::BAN_TAGS, true)?;
        Ok((0..m.len()).map(|i| m.get(i).len() as u64).sum())
    }

    /// An IPv4 ban's place and its `until`; `None` for an IPv6 ban, and for a ban that
    /// ends within the first unit after boot (which the table cannot say it outlasts).
    fn place_of(&self, key: &Addr, expires_ns: u64) -> Option<(BanTagPlace, u32)> {
        let place = place(key, self.shift)?;
        match cache_until(expires_ns) {
            0 => None,
            until => Some((place, until)),
        }
    }

    /// Records the ban's `until` (or that it has none) and returns its bucket's: the
    /// soonest of the bucket's ends.
    fn note(&mut self, place: BanTagPlace, until: u32) -> u32 {
        if until == BAN_CACHE_FOREVER {
            return self.forget(place);
        }
        let ends = self.timed.entry(place.bucket).or_default();
        match ends.iter_mut().find(|(t, _)| *t == place.tag) {
            Some(e) => e.1 = until,
            None => ends.push((place.tag, until)),
        }
        soonest(ends)
    }

    /// Forgets the ban's end, if it had one, and returns its bucket's `until` without it.
    fn forget(&mut self, place: BanTagPlace) -> u32 {
        if self.timed.is_empty() {
            return BAN_CACHE_FOREVER;
        }
        let Some(ends) = self.timed.get_mut(&place.bucket) else {
            return BAN_CACHE_FOREVER;
        };
        ends.retain(|(t, _)| *t != place.tag);
        if ends.is_empty() {
            self.timed.remove(&place.bucket);
            return BAN_CACHE_FOREVER;
        }
        soonest(ends)
    }

    fn read(&self, bucket: u32) -> Result<BanTags> {
        let bytes = sys::lookup_bytes(
            self.map.fd().as_fd(),
            &bucket.to_ne_bytes(),
            size_of::<BanTags>(),
        )
        .context("reading PS_BAN_TAGS")?;
        Ok(bytemuck::pod_read_unaligned(&bytes))
    }

    fn write(&self, bucket: u32, value: &BanTags) -> Result<()> {
        sys::update_bytes(
            self.map.fd().as_fd(),
            &bucket.to_ne_bytes(),
            bytemuck::bytes_of(value),
        )
        .context("writing PS_BAN_TAGS")
    }
}

/// The place of `key` if it is an IPv4 address.
fn place(key: &Addr, shift: u32) -> Option<BanTagPlace> {
    let w: AddrWords = bytemuck::cast(*key);
    v4_of(&w).map(|v4| ban_tag_place(v4, shift))
}

fn soonest(ends: &[(u16, u32)]) -> u32 {
    ends.iter().map(|e| e.1).min().unwrap_or(BAN_CACHE_FOREVER)
}

/// `places` (each a bucket first) in the order of their buckets, those of one bucket in
/// the order they came: a counting sort, the buckets being few (2^shift, a few tens of
/// thousands) against the bans (a million: 19 ms, against 31 for a comparison sort).
fn by_bucket<T: Copy + Default>(places: Vec<(u32, T)>, buckets: usize) -> Vec<(u32, T)> {
    let mut next = vec![0usize; buckets + 1];
    for (b, _) in &places {
        next[*b as usize + 1] += 1;
    }
    for b in 0..buckets {
        next[b + 1] += next[b];
    }
    let mut out = vec![(0, T::default()); places.len()];
    for p in places {
        let at = &mut next[p.0 as usize];
        out[*at] = p;
        *at += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::by_bucket;

    #[test]
    fn by_bucket_is_a_stable_sort_by_bucket() {
        let places: Vec<(u32, u32)> = (0..1000u32).map(|i| ((i * 7919) % 13, i)).collect();
        let mut sorted = places.clone();
        sorted.sort_by_key(|(b, _)| *b);
        assert_eq!(by_bucket(places, 13), sorted);
        assert_eq!(by_bucket(Vec::<(u32, u32)>::new(), 4), vec![]);
    }
}
