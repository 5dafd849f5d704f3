//! Map sizes changed in the configuration, applied at the next start without `unload`:
//! a pinned map whose size is not the configured one is replaced by a new map of that
//! size with the same entries (copied in batches), pinned in its place before the new
//! program replaces the old one in its links ([`super::attach`]); the bans the old
//! program made in between are carried over after the attach
//! ([`Dataplane::carry_over_late_bans`]). A pinned map whose value an earlier release
//! made smaller (fields are only ever added at the end) is replaced the same way, its
//! value's bytes carried over into the start of the new one.
//!
//! The old `PS_BANS` (and `PS_BAN_FILTER`) keep a pin of their own, named after the
//! time of the copy, until the start that replaced them has carried over their late
//! bans after its attach ([`Dataplane::release_replaced_maps`]). A start that stops
//! before (killed, or failing) leaves the old program running on them: the next start
//! finds them by that pin ([`orphaned`]) and carries over the bans the program made in
//! them since the copy.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, MapInfo, MapType, lpm_trie::Key};
use portsentry_common::{
    Addr,
    ban_tags::ban_tag_buckets,
    maps::{self as names, BanEntry, BanOrigin, BanSet, Settings, ban_cache_sets},
    sources::{SOURCE_WAYS, source_entries},
};

use super::{
    Dataplane, MapSizes, addr,
    ban_filter::BPF_F_MMAPABLE,
    bans,
    sources::{self, SourceTable},
    sys,
};

/// A map of bans to shrink below the entries it holds, or so close to them that it
/// keeps no [`ban_room`]: refused, so that no ban is dropped.
#[derive(Debug)]
pub struct MapTooSmall {
    /// The map's name (`PS_BANS`, ...).
    pub map: &'static str,
    /// Entries it holds now.
    pub entries: usize,
    /// The size asked for.
    pub size: u32,
    /// The least size it takes ([`size_for`]).
    pub needed: u64,
}

impl std::fmt::Display for MapTooSmall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} holds {} entries, too many for the new size {}; raise the size to at least \
             {} (or unban some first)",
            self.map, self.entries, self.size, self.needed
        )
    }
}

/// The room a map of bans that a resize shrinks keeps beyond the bans it holds, for the
/// bans the start itself adds: those the program still attached makes at its triggers
/// until the new one replaces it (MAX_BANS_PER_SEC, 100 a second by default) and those
/// the journal holds that the kernel lacks. Shrunk to exactly the bans it held, the map
/// would refuse them, and every ban after (an eighth of a map smaller than 8192).
pub fn ban_room(size: u32) -> u32 {
    (size / 8).min(1024)
}

/// The least size whose map holds `entries` bans and its [`ban_room`].
pub fn size_for(entries: usize) -> u64 {
    let entries = entries as u64;
    let mut size = entries;
    while entries + u64::from(ban_room(size.min(u64::from(u32::MAX)) as u32)) > size {
        size += 1;
    }
    size
}

impl std::error::Error for MapTooSmall {}

/// A pinned map being replaced by a map of another size.
pub(super) struct Resized {
    pub name: &'static str,
    pub old: MapData,
    /// Entries, or with `value` the value's bytes.
    pub old_size: u32,
    pub new_size: u32,
    /// What the old map held, as the configuration counts it (sources for
    /// `PS_SOURCES`, whose sets hold three; else entries).
    pub old_capacity: u32,
    /// `PS_SOURCES`: the records carried over, of those the old map held (a set keeps
    /// three; where more fall into one, the newest).
    pub carried: std::cell::Cell<Option<(usize, usize)>>,
    /// `PS_BANS`, `PS_BAN_NETS`: the bans copied, each as its key and the time it was
    /// made, sorted ([`Copied`]).
    pub copied: std::cell::RefCell<Vec<Copied>>,
    /// The value grew (a release added fields), not the number of entries.
    pub value: bool,
    /// A map an earlier start replaced and did not release ([`orphaned`]): the time of
    /// its copy (CLOCK_MONOTONIC ns). Only the program's bans made since are carried over
    /// from it, into the pinned map.
    pub orphan: Option<u64>,
    /// The pin that holds the old map until [`Dataplane::release_replaced_maps`].
    pub replaced_pin: std::cell::RefCell<Option<PathBuf>>,
}

impl Resized {
    fn new(
        name: &'static str,
        old: MapData,
        old_size: u32,
        new_size: u32,
        old_capacity: u32,
        value: bool,
    ) -> Resized {
        Resized {
            name,
            old,
            old_size,
            new_size,
            old_capacity,
            carried: Default::default(),
            copied: Default::default(),
            value,
            orphan: None,
            replaced_pin: Default::default(),
        }
    }

    /// A map replaced by one of its size (another flag, its pair replaced, an orphan).
    fn same_size(name: &'static str, old: MapData, size: u32) -> Resized {
        Resized::new(name, old, size, size, size, false)
    }
}

/// What a replaced map's own pin adds to its name, before the time of the copy.
const REPLACED: &str = "_replaced_";

/// What a resized map's pin adds to its name until it is renamed over the old pin
/// (bpffs refuses a name with a dot).
const RESIZED: &str = "_resized";

/// Removes the pins of resized maps that a start left under their temporary name
/// ([`RESIZED`]: it stopped between the pin and its rename). No program uses such a map,
/// and nothing else would unpin it while the size stays as it is (a full copy of the
/// bans, in kernel memory, until `unload`).
pub(super) fn remove_temporary_pins(pin_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(RESIZED) else {
            continue;
        };
        if !names::ALL.contains(&name) {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => log::warn!(
                "removed {}: a resized {name} an interrupted start left unused",
                e.path().display()
            ),
            Err(err) => log::warn!("removing {}: {err}", e.path().display()),
        }
    }
}

/// The maps the old program writes bans to, which keep a pin of their own once
/// replaced ([`REPLACED`]): its bans, and an earlier release's filter.
const KEPT_UNTIL_CARRIED: [&str; 2] = [names::BANS, names::BAN_FILTER];

/// A program's ban made before the copy may carry a time up to a few ticks earlier
/// than it was made (the program's coarse clock): bans of this much before the copy
/// are taken as late too, when the pinned map lacks them.
const CLOCK_SLACK_NS: u64 = 1_000_000_000;

/// The sizable maps and their configured sizes, in entries (`PS_BAN_CACHE` and
/// `PS_BAN_TAGS` are sized by MAX_BANS).
fn sized(sizes: &MapSizes) -> [(&'static str, u32); 8] {
    [
        (names::BANS, sizes.bans),
        (names::BAN_CACHE, ban_cache_sets(sizes.bans)),
        (names::BAN_TAGS, ban_tag_buckets(sizes.bans)),
        (names::BAN_NETS, sizes.ban_nets),
        (names::BAN_NET_HASH, sizes.ban_nets),
        (names::IGNORE, sizes.ignore),
        (names::SOURCES, source_entries(sizes.sources)),
        // Not configured: IPv6's words came after IPv4's (written at every start).
        (names::PROTOCOLS, names::PROTOCOL_WORDS),
    ]
}

/// The maps whose value changed since a release, and their value now: `PS_BAN_CACHE`
/// held 32-byte slots. (Nothing is carried over: the cache is filled from the bans.)
fn revalued() -> [(&'static str, u32); 1] {
    [(names::BAN_CACHE, size_of::<BanSet>() as u32)]
}

/// The maps whose type changed since a release, and their type now: `PS_SOURCES` was
/// an LRU hash.
fn retyped() -> [(&'static str, MapType); 1] {
    [(names::SOURCES, MapType::Array)]
}

/// The maps whose value grew since a release, and its size now: `PS_SETTINGS` was 24
/// bytes before the Threshold Random Walk's steps.
fn grown_values() -> [(&'static str, u32); 1] {
    [(names::SETTINGS, size_of::<Settings>() as u32)]
}

/// The maps made with a flag an earlier release did not give them, and the flag:
/// `PS_BAN_FILTER` is mapped into the daemon, which sets and clears its bits atomically
/// (`ban_filter.rs`).
fn reflagged() -> [(&'static str, u32); 1] {
    [(names::BAN_FILTER, BPF_F_MMAPABLE)]
}

/// The pinned maps under `pin_dir` whose size differs from `sizes`, whose value from
/// this release's, or made without a flag this release gives them ([`reflagged`]),
/// opened (the loader is then not given their pins: it creates new maps
/// of the configured sizes and this release's values).
pub(super) fn pinned_to_resize(pin_dir: &Path, sizes: &MapSizes) -> Result<Vec<Resized>> {
    let mut out = Vec::new();
    let entries = sized(sizes).map(|(name, size)| (name, size, false));
    let values = grown_values().map(|(name, size)| (name, size, true));
    for (name, new_size, value) in entries.into_iter().chain(values) {
        let Some((old, info)) = open_pinned(pin_dir, name)? else {
            continue;
        };
        let old_size = if value {
            info.value_size()
        } else {
            info.max_entries()
        };
        let type_changed = retyped()
            .iter()
            .any(|(n, t)| *n == name && info.map_type().ok() != Some(*t))
            || revalued()
                .iter()
                .any(|(n, size)| *n == name && !value && info.value_size() != *size);
        let old_capacity = match info.map_type() {
            Ok(MapType::Array) if name == names::SOURCES => {
                old_size.saturating_sub(1) * SOURCE_WAYS as u32
            }
            _ => old_size,
        };
        if old_size != new_size || type_changed {
            out.push(Resized::new(
                name,
                old,
                old_size,
                new_size,
                old_capacity,
                value,
            ));
        }
    }
    for (name, flag) in reflagged() {
        let Some((old, info)) = open_pinned(pin_dir, name)? else {
            continue;
        };
        if info.map_flags() & flag == 0 {
            let size = info.max_entries();
            out.push(Resized::same_size(name, old, size));
        }
    }
    // The lengths entry goes with its hash: the program still attached keeps both old
    // maps until the attach, and the new program finds the new hash with a new entry
    // (all zeros: every address to the trie) until the load fills them.
    if out.iter().any(|r| r.name == names::BAN_NET_HASH) {
        let path = pin_dir.join(names::BAN_NET_LENS);
        if path.exists() {
            let old = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned map {}", path.display()))?;
            out.push(Resized::same_size(names::BAN_NET_LENS, old, 1));
        }
    }
    Ok(out)
}

/// The map pinned as `name` under `pin_dir`, and what it is; `None` when none is.
fn open_pinned(pin_dir: &Path, name: &str) -> Result<Option<(MapData, MapInfo)>> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let old = MapData::from_pin(&path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    let info = old.info()?;
    Ok(Some((old, info)))
}

/// The maps an earlier start replaced and did not release: pinned under their name,
/// [`REPLACED`] and the time of their copy. Each `PS_BANS` among them comes with what
/// the pinned `PS_BANS` holds now as its copy. One that cannot be opened or read is
/// logged and returned apart: its pin goes at the release all the same (nothing can
/// carry its bans over).
pub(super) fn orphaned(pin_dir: &Path) -> (Vec<Resized>, Vec<PathBuf>) {
    let (mut out, mut unusable) = (Vec::new(), Vec::new());
    for (name, at, pin) in replaced_pins(pin_dir) {
        match orphan(pin_dir, name, at, pin.clone()) {
            Ok(r) => out.push(r),
            Err(err) => {
                log::warn!(
                    "{err:#}: the bans the replaced program made in {} since an interrupted \
                     start are not carried over",
                    pin.display()
                );
                unusable.push(pin);
            }
        }
    }
    (out, unusable)
}

/// The pins of replaced maps in `pin_dir` ([`REPLACED`]): each map's name, the time of
/// its copy, and the pin.
pub(super) fn replaced_pins(pin_dir: &Path) -> Vec<(&'static str, u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let (name, at) = file.split_once(REPLACED)?;
            let name = KEPT_UNTIL_CARRIED.into_iter().find(|n| *n == name)?;
            Some((name, at.parse::<u64>().ok()?, e.path()))
        })
        .collect()
}

/// The replaced map `name` pinned at `pin` by a start that copied it at `at`.
fn orphan(pin_dir: &Path, name: &'static str, at: u64, pin: PathBuf) -> Result<Resized> {
    let old = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let info = old.info()?;
    let r = Resized {
        orphan: Some(at),
        replaced_pin: std::cell::RefCell::new(Some(pin)),
        ..Resized::same_size(name, old, info.max_entries())
    };
    if name == names::BANS {
        if (info.key_size() as usize, info.value_size() as usize)
            != (size_of::<Addr>(), size_of::<BanEntry>())
        {
            anyhow::bail!(
                "its entries are not of this release ({} and {} bytes)",
                info.key_size(),
                info.value_size()
            );
        }
        let path = pin_dir.join(name);
        let pinned = MapData::from_pin(&path)
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        let held: Vec<(Addr, BanEntry)> = sys::read_map(pinned.fd().as_fd())
            .with_context(|| format!("reading the pinned {name}"))?;
        let (keys, values): (Vec<Addr>, Vec<BanEntry>) = held.into_iter().unzip();
        record_copied(&r, keys.into_iter().map(|k| (0, k)), &values);
    }
    Ok(r)
}

/// A ban as copied into a resized map: its prefix length (0 in `PS_BANS`), its key, and
/// when it was made. A ban the old program made after the copy is one the copy lacks,
/// or one it holds made at another time (a lapsed ban made again).
pub(super) type Copied = (u32, Addr, u64);

/// Copies every entry of `old` into `new` (the new map of the same name): a map that
/// keeps bans refuses to shrink below what it holds ([`MapTooSmall`]); the tracked
/// sources keep what fits (the newest of each set), under a new hash key.
fn carry_over(r: &Resized, new: &Map) -> Result<()> {
    let from = r.old.fd().as_fd();
    let to = map_fd(new).with_context(|| format!("{} is not of the type it should be", r.name))?;
    fn copy<K: aya::Pod, V: aya::Pod>(
        r: &Resized,
        from: std::os::fd::BorrowedFd<'_>,
        to: std::os::fd::BorrowedFd<'_>,
        keeps_all: bool,
    ) -> Result<(Vec<K>, Vec<V>)> {
        let all: Vec<(K, V)> =
            sys::read_map(from).with_context(|| format!("reading the pinned {}", r.name))?;
        // Shrunk, it keeps room for the bans the start adds (a map kept at its size,
        // or grown, has all the room it had).
        let shrunk = r.new_size < r.old_size && !r.value;
        let room = if shrunk { ban_room(r.new_size) } else { 0 };
        if keeps_all && all.len() as u64 + u64::from(room) > u64::from(r.new_size) {
            return Err(MapTooSmall {
                map: r.name,
                entries: all.len(),
                size: r.new_size,
                // The old size takes them as they are (no resize, no room asked).
                needed: if shrunk {
                    size_for(all.len()).min(u64::from(r.old_size))
                } else {
                    all.len() as u64
                },
            }
            .into());
        }
        let take = all.len().min(r.new_size as usize);
        let (keys, values): (Vec<K>, Vec<V>) = all.into_iter().take(take).unzip();
        sys::write_map(to, &keys, &values)
            .with_context(|| format!("copying {} into its new map", r.name))?;
        Ok((keys, values))
    }
    match r.name {
        names::BANS => {
            let (keys, values) = copy::<Addr, BanEntry>(r, from, to, true)?;
            record_copied(r, keys.into_iter().map(|k| (0, k)), &values);
            Ok(())
        }
        names::BAN_NETS => {
            let (keys, values) = copy::<Key<Addr>, BanEntry>(r, from, to, true)?;
            let keys = keys.into_iter().map(|k| (k.prefix_len(), k.data()));
            record_copied(r, keys, &values);
            Ok(())
        }
        // The ignore list is written whole from the configuration at every start;
        // the ban cache and the tags are filled from the bans at every load, the hash of
        // lengths from the trie.
        names::IGNORE
        | names::BAN_CACHE
        | names::BAN_TAGS
        | names::BAN_NET_HASH
        | names::BAN_NET_LENS => Ok(()),
        names::SOURCES => {
            // An earlier release's LRU hash, or a table of sets of another size.
            let fd = r.old.fd().as_fd().try_clone_to_owned()?;
            let old = SourceTable::new(Map::from_map_data(MapData::from_fd(fd)?)?, true)
                .with_context(|| format!("opening the pinned {}", r.name))?;
            let records = old.all()?;
            let table = sources::fill(r.new_size, super::configure::random_secret(), &records);
            let kept = table[1..]
                .iter()
                .map(|set| set.seen.iter().filter(|s| **s != 0).count())
                .sum();
            r.carried.set(Some((kept, records.len())));
            let keys: Vec<u32> = (0..table.len() as u32).collect();
            sys::write_map(to, &keys, &table).context("copying PS_SOURCES into its new map")
        }
        // Its words as they are (the load then makes it the filter of the bans).
        names::BAN_FILTER => copy::<u32, u64>(r, from, to, false).map(drop),
        names::SETTINGS => {
            let old = sys::lookup_bytes(from, &0u32.to_ne_bytes(), r.old_size as usize)
                .context("reading the pinned PS_SETTINGS")?;
            let new = grown::<Settings>(&old);
            sys::write_map(to, &[0u32], &[new]).context("copying PS_SETTINGS into its new map")
        }
        _ => Ok(()),
    }
}

fn record_copied(r: &Resized, keys: impl Iterator<Item = (u32, Addr)>, values: &[BanEntry]) {
    let mut copied: Vec<Copied> = keys
        .zip(values)
        .map(|((len, k), v)| (len, k, v.since_ns))
        .collect();
    copied.sort_unstable();
    *r.copied.borrow_mut() = copied;
}

/// Whether the old program made `ban` (of length `len`, 0 for `PS_BANS`, and key `key`)
/// after `r` was copied.
fn is_late(r: &Resized, len: u32, key: Addr, ban: &BanEntry) -> bool {
    r.copied
        .borrow()
        .binary_search(&(len, key, ban.since_ns))
        .is_err()
}

/// A value of this release from an earlier release's bytes: the fields they hold, the
/// added ones zero (off).
pub(super) fn grown<V: bytemuck::Pod>(old: &[u8]) -> V {
    let mut v = V::zeroed();
    let bytes = bytemuck::bytes_of_mut(&mut v);
    let n = old.len().min(bytes.len());
    bytes[..n].copy_from_slice(&old[..n]);
    v
}

fn map_fd(map: &Map) -> Option<std::os::fd::BorrowedFd<'_>> {
    match map {
        Map::HashMap(m) | Map::LruHashMap(m) | Map::LpmTrie(m) | Map::Array(m) => {
            Some(m.fd().as_fd())
        }
        _ => None,
    }
}

impl Dataplane {
    /// Fills the new maps of `resized` from the pinned ones, then pins them in their
    /// place (a new pin under a temporary name, renamed over the old: the pin path
    /// always names one of the two). Every map is filled before the first is pinned, so
    /// that a map refused (too small for what it holds) leaves every pin as it was. Runs
    /// before the program is attached: the old program keeps running on the old maps
    /// until the attach replaces it.
    pub(super) fn take_over_resized(
        pin_dir: &Path,
        resized: &[Resized],
        taken: &std::collections::HashMap<&'static str, Map>,
    ) -> Result<()> {
        let new: Vec<(&Resized, &Map)> = resized
            .iter()
            .filter_map(|r| Some((r, taken.get(r.name)?)))
            .collect();
        // Before the copy's read: a ban the old program makes after it is late.
        let copied_at = crate::clock::monotonic_ns();
        for (r, map) in &new {
            carry_over(r, map)?;
        }
        // The old maps the program writes bans to keep a pin until their late bans are
        // carried over after the attach ([`orphaned`] finds them if this start stops
        // before).
        for (r, _) in new
            .iter()
            .filter(|(r, _)| KEPT_UNTIL_CARRIED.contains(&r.name))
        {
            let pin = pin_dir.join(format!("{}{REPLACED}{copied_at}", r.name));
            r.old
                .pin(&pin)
                .with_context(|| format!("pinning the replaced {} at {}", r.name, pin.display()))?;
            *r.replaced_pin.borrow_mut() = Some(pin);
        }
        for (r, map) in new {
            let path = pin_dir.join(r.name);
            let tmp: PathBuf = pin_dir.join(format!("{}{RESIZED}", r.name));
            let _ = std::fs::remove_file(&tmp);
            map.pin(&tmp)
                .with_context(|| format!("pinning the new {} at {}", r.name, tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| {
                format!("replacing the pin {} by the resized map", path.display())
            })?;
        }
        Ok(())
    }

    /// The bans the old program made in the old maps since they were copied (at a
    /// source's trigger, until the attach replaces it) are copied too. Called before the
    /// attach, so that a ban that cannot be written fails this start while the old
    /// program still runs on its maps (the next start finds them, [`orphaned`]), and
    /// again after it for the bans made in between. Returns how many bans that was.
    ///
    /// Late is what the copy lacks, not what the new maps lack: since the copy the
    /// daemon may have lifted bans from the new maps, or moved them between the two
    /// (a SOURCE_PREFIX_V6 changed at this start), and those stay as it left them.
    pub fn carry_over_late_bans(&mut self) -> Result<usize> {
        let mut late = Vec::new();
        let mut taken: Vec<(usize, Copied)> = Vec::new();
        for (i, r) in self.resized.iter().enumerate() {
            let from = r.old.fd().as_fd();
            match r.name {
                names::BANS => {
                    let old: Vec<(Addr, BanEntry)> = sys::read_map(from)?;
                    let prefix = self.v6_source_prefix();
                    // From a map an earlier start replaced: the program's own bans
                    // made since its copy (others were lifted or moved since, maybe).
                    let since_copy = |e: &BanEntry| {
                        r.orphan.is_none_or(|at| {
                            e.origin == BanOrigin::Kernel as u8
                                && e.since_ns >= at.saturating_sub(CLOCK_SLACK_NS)
                        })
                    };
                    let found = old
                        .into_iter()
                        .filter(|(k, e)| since_copy(e) && is_late(r, 0, *k, e));
                    for (k, e) in found {
                        taken.push((i, (0, k, e.since_ns)));
                        late.push((addr::source_key_net(&k, prefix), e));
                    }
                }
                names::BAN_NETS => {
                    let old: Vec<(Key<Addr>, BanEntry)> = sys::read_map(from)?;
                    for (k, e) in old {
                        let (len, key) = (k.prefix_len(), k.data());
                        if is_late(r, len, key, &e) {
                            taken.push((i, (len, key, e.since_ns)));
                            late.push((addr::net_from_key(len, &key), e));
                        }
                    }
                }
                // An earlier release's filter (its bans in the shared PS_BANS): the bits
                // the old program set since the load read the bans, for its bans made
                // meanwhile. A bit of a ban lifted since only costs a hash lookup until
                // the next start's rebuild.
                names::BAN_FILTER => {
                    let old = bans::read_words(from, names::BAN_FILTER_WORDS, names::BAN_FILTER)?;
                    self.maps
                        .ban_filter
                        .set_many((0u32..).zip(old).filter(|(_, w)| *w != 0))?;
                }
                _ => {}
            }
        }
        let carried = late.len();
        if carried > 0 {
            self.insert_bans(late)?;
            // Carried once: a later pass does not count their filter bits again.
            for (i, c) in taken {
                self.resized[i].copied.borrow_mut().push(c);
            }
            for r in &self.resized {
                r.copied.borrow_mut().sort_unstable();
            }
        }
        Ok(carried)
    }

    /// [`Self::carry_over_late_bans`] once the attach replaced the old program: the
    /// kernel lets a packet the old program was handling at the swap run to its end, and
    /// a ban it makes then lands in the old maps; one RCU grace period first, and no such
    /// run is left.
    pub fn carry_over_after_attach(&mut self) -> Result<usize> {
        if !self.resized.is_empty() {
            sys::wait_for_program_runs();
        }
        self.carry_over_late_bans()
    }

    /// Lets go of the maps replaced at this load (and by earlier starts), their pins
    /// too, once the attach replaced the program that used them and
    /// [`Self::carry_over_late_bans`] took their last bans.
    /// A pin that cannot be removed is logged: the next start carries over from it
    /// again the program's bans made since its copy that the pinned map lacks, which
    /// may put back one lifted meanwhile.
    pub fn release_replaced_maps(&mut self) {
        let pins = std::mem::take(&mut self.resized)
            .into_iter()
            .filter_map(|r| r.replaced_pin.take())
            .chain(std::mem::take(&mut self.unusable_replaced));
        for pin in pins {
            if let Err(e) = std::fs::remove_file(&pin) {
                log::warn!("removing the pin {}: {e}", pin.display());
            }
        }
    }

    /// The maps replaced by new ones of the configured sizes at this load, each with
    /// its line for the log.
    pub fn resized_maps(&self) -> Vec<String> {
        self.resized
            .iter()
            .filter(|r| !r.value)
            .map(|r| match (r.name, r.carried.get()) {
                (name, _) if r.orphan.is_some() => format!(
                    "{name} replaced by a start that stopped before its attach: the bans \
                     the program made in the old map since are carried over"
                ),
                (names::SOURCES, carried) => {
                    let (kept, of) = carried.unwrap_or_default();
                    format!(
                        "{} resized from {} to {} sources tracked (the configuration's \
                             size, rounded up to sets of three), {kept} of its {of} records \
                             carried over (a set keeps its three most recent)",
                        r.name,
                        r.old_capacity,
                        r.new_size.saturating_sub(1) * SOURCE_WAYS as u32
                    )
                }
                (names::BAN_CACHE, _) => format!(
                    "{} resized from {} to {} sets (for MAX_BANS), filled from the bans",
                    r.name, r.old_capacity, r.new_size
                ),
                (names::BAN_NET_HASH, _) => format!(
                    "{} resized from {} to {} entries (as {}), filled from it",
                    r.name,
                    r.old_capacity,
                    r.new_size,
                    names::BAN_NETS
                ),
                (names::BAN_NET_LENS, _) => format!(
                    "{} replaced with {}, filled from {}",
                    r.name,
                    names::BAN_NET_HASH,
                    names::BAN_NETS
                ),
                (names::BAN_FILTER, _) => format!(
                    "{} replaced with a map the daemon sets bits of atomically, its words \
                     carried over",
                    r.name
                ),
                (names::BAN_TAGS, _) => format!(
                    "{} resized from {} to {} buckets (for MAX_BANS), filled from the bans",
                    r.name, r.old_capacity, r.new_size
                ),
                _ => format!(
                    "{} resized from {} to {} entries (the configuration's size), every \
                         entry carried over",
                    r.name, r.old_capacity, r.new_size
                ),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_of_the_earlier_release_grow_with_the_walk_off() {
        let before = Settings {
            event_trigger: 3,
            events_per_sec: 20_000,
            event_burst: 20_000,
            flags: names::SETTING_VERIFY | 64 << names::SETTING_V6_PREFIX_SHIFT,
            cookie_secret: 0x1234_5678_9abc_def0,
            trw: portsentry_common::trw::Walk {
                fail: 1,
                success: 2,
                upper: 3,
                lower: 4,
            },
        };
        // The 24 bytes a map of the earlier release holds.
        let old = &bytemuck::bytes_of(&before)[..24];
        assert_eq!(
            grown::<Settings>(old),
            Settings {
                trw: Default::default(),
                ..before
            }
        );
    }

    /// The size a shrink asks for is the least that keeps the bans and the room: a map
    /// of exactly the bans it holds is refused.
    #[test]
    fn a_shrunk_map_of_bans_keeps_room() {
        assert_eq!(ban_room(16), 2);
        assert_eq!(ban_room(8192), 1024);
        assert_eq!(ban_room(1 << 20), 1024);
        for entries in [
            0usize,
            1,
            13,
            14,
            15,
            41,
            7000,
            7168,
            7169,
            100_000,
            1 << 20,
        ] {
            let size = size_for(entries);
            assert!(entries as u64 + u64::from(ban_room(size as u32)) <= size);
            assert!(
                size == entries as u64
                    || entries as u64 + u64::from(ban_room(size as u32 - 1)) > size - 1,
                "{entries}: {size} is not the least"
            );
        }
        assert_eq!(size_for(41), 46);
        assert_eq!(size_for(100_000), 101_024);
    }

    /// A resized map's temporary pin an interrupted start left is removed; the pins in
    /// use, a replaced map's own pin and files of other names stay.
    #[test]
    fn temporary_pins_left_by_an_interrupted_start_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let keep = [
            names::BANS.to_string(),
            format!("{}{REPLACED}123", names::BANS),
            "notes_resized".to_string(),
        ];
        let gone = [
            format!("{}{RESIZED}", names::BANS),
            format!("{}{RESIZED}", names::SOURCES),
        ];
        for f in keep.iter().chain(&gone) {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        remove_temporary_pins(dir.path());
        for f in &keep {
            assert!(dir.path().join(f).exists(), "{f} removed");
        }
        for f in &gone {
            assert!(!dir.path().join(f).exists(), "{f} left");
        }
    }
}
