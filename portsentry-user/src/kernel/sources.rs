//! `PS_SOURCES` from the daemon's side: the set-associative table the program keeps
//! (`portsentry_common::sources`), mapped into the daemon's memory, so that reading a
//! million records is a walk over memory, not a syscall each. An object or pins of an
//! earlier release hold an LRU hash instead (the bench's baselines, `status` over a
//! daemon of that release): read and written through the map's calls.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData};
use portsentry_common::{
    Addr,
    maps::SourceStats,
    packet::AddrWords,
    sources::{SOURCE_WAYS, SourceHeader, SourceSet, seen_stamp, source_entry},
};

use super::{mapped::Mapped, sys};

/// A forgotten way's address, `ff00::` (a multicast address of the reserved scope 0,
/// which no host's packet comes from), so that the way matches no source if a probe
/// in flight marks it seen again.
const FORGOTTEN: AddrWords = [0xff, 0];

/// The per-source table of the loaded object or of the pins.
pub(super) enum SourceTable {
    Sets(SetTable),
    /// An earlier release's `LruHashMap<Addr, SourceStats>`.
    Lru(HashMap<MapData, Addr, SourceStats>),
}

impl SourceTable {
    /// Types `PS_SOURCES`. A table whose header is unwritten (a map this load created)
    /// gets one with a random key, unless `read_only`.
    pub fn new(map: Map, read_only: bool) -> Result<SourceTable> {
        match map {
            Map::LruHashMap(_) => Ok(SourceTable::Lru(HashMap::try_from(map)?)),
            Map::Array(data) => Ok(SourceTable::Sets(SetTable::new(data, read_only)?)),
            other => bail!("PS_SOURCES is of an unknown type ({other:?}): run `portsentry unload`"),
        }
    }

    /// The record of `key`.
    pub fn get(&self, key: &Addr) -> Result<Option<SourceStats>> {
        match self {
            SourceTable::Sets(t) => Ok(t.get(key)),
            SourceTable::Lru(m) => super::maps::absent_is_none(m.get(key, 0)),
        }
    }

    /// Writes the record of `key` (for the tests: states only racing CPUs reach).
    pub fn put(&mut self, key: &Addr, stats: &SourceStats) -> Result<()> {
        match self {
            SourceTable::Sets(t) => t.put(key, stats),
            SourceTable::Lru(m) => m.insert(key, stats, 0).map_err(Into::into),
        }
        .context("writing PS_SOURCES")
    }

    /// How many sources have a record.
    pub fn count(&self) -> Result<u64> {
        match self {
            SourceTable::Sets(t) => Ok(t.records().count() as u64),
            // One syscall per entry.
            SourceTable::Lru(m) => Ok(m.keys().count() as u64),
        }
    }

    /// Every record.
    pub fn all(&self) -> Result<Vec<(Addr, SourceStats)>> {
        match self {
            SourceTable::Sets(t) => Ok(t.records().collect()),
            SourceTable::Lru(m) => sys::read_map(super::maps::fd(m)).context("reading PS_SOURCES"),
        }
    }

    /// The entry of `key`'s set (`None` for an LRU hash, or a table without header).
    pub fn set_of(&self, key: &Addr) -> Option<usize> {
        match self {
            SourceTable::Sets(t) => t.entry(&bytemuck::cast(*key)),
            SourceTable::Lru(_) => None,
        }
    }

    /// Frees the record of `key`; false when it had none.
    pub fn forget(&mut self, key: &Addr) -> Result<bool> {
        match self {
            SourceTable::Sets(t) => Ok(t.forget(key)),
            SourceTable::Lru(m) => super::maps::absent_is_false(m.remove(key)),
        }
    }
}

/// The table mapped into memory (shared with the program: every access is volatile or
/// atomic, as the program writes it on every CPU at once).
pub(super) struct SetTable {
    sets: Mapped<SourceSet>,
    header: SourceHeader,
    /// Keeps the map's fd open: the program being verified names the map by it.
    _map: MapData,
}

impl SetTable {
    fn new(map: MapData, read_only: bool) -> Result<SetTable> {
        let sets = Mapped::<SourceSet>::new(&map, "PS_SOURCES", read_only)?;
        let entries = sets.len();
        let mut table = SetTable {
            header: sets.get(0).header(),
            sets,
            _map: map,
        };
        if table.header.sets != 0 && table.header.sets as usize != entries - 1 {
            bail!(
                "PS_SOURCES's header says {} sets, but the map holds {}: run `portsentry \
                 unload`",
                table.header.sets,
                entries - 1
            );
        }
        if table.header.sets == 0 && !read_only {
            table.header = SourceHeader {
                key: super::configure::random_secret(),
                sets: (entries - 1) as u32,
            };
            table.sets.put(0, &SourceSet::with_header(table.header));
        }
        Ok(table)
    }

    /// The entry of `key`'s set; `None` while the header is unwritten.
    fn entry(&self, key: &AddrWords) -> Option<usize> {
        let h = self.header;
        (h.sets != 0 && (h.sets as usize) < self.sets.len())
            .then(|| source_entry(key, h.key, h.sets) as usize)
    }

    fn get(&self, key: &Addr) -> Option<SourceStats> {
        let words: AddrWords = bytemuck::cast(*key);
        let set = self.sets.get(self.entry(&words)?);
        set.find(&words).map(|w| set.stats[w])
    }

    fn put(&self, key: &Addr, stats: &SourceStats) -> Result<()> {
        if self.sets.read_only() {
            bail!("PS_SOURCES is open to read only");
        }
        let words: AddrWords = bytemuck::cast(*key);
        let i = self.entry(&words).context("PS_SOURCES has no header yet")?;
        let mut set = self.sets.get(i);
        set.place(&words, seen_stamp(stats.last_ns), stats);
        self.sets.put(i, &set);
        Ok(())
    }

    fn records(&self) -> impl Iterator<Item = (Addr, SourceStats)> + '_ {
        (1..=self.header.sets as usize)
            .filter(|i| *i < self.sets.len())
            .flat_map(move |i| {
                let set = self.sets.get(i);
                (0..SOURCE_WAYS)
                    .filter(move |w| set.seen[*w] != 0 && set.addrs[*w] != FORGOTTEN)
                    .map(move |w| (bytemuck::cast(set.addrs[w]), set.stats[w]))
            })
    }

    /// Frees every way of `key` (a race of two CPUs may have given it two). Each is
    /// marked free only if it still holds `key` (compare-and-swap on its mark, the
    /// address checked before and after), so that a way the program gave to another
    /// source meanwhile is kept; then its address is made one no source holds, in case
    /// a probe in flight marks it seen again. The set is never written whole: the
    /// program writes its other ways meanwhile.
    fn forget(&self, key: &Addr) -> bool {
        if self.sets.read_only() {
            return false;
        }
        let words: AddrWords = bytemuck::cast(*key);
        let Some(i) = self.entry(&words) else {
            return false;
        };
        let mut forgot = false;
        for way in 0..SOURCE_WAYS {
            // SAFETY: fields of an entry within a writable mapping, aligned for the
            // atomics (the set is 64-byte aligned; `addrs` starts it, `seen` at 48).
            unsafe {
                let set = self.sets.ptr(i);
                let seen = AtomicU32::from_ptr(std::ptr::addr_of_mut!((*set).seen[way]));
                let addr =
                    |w: usize| AtomicU64::from_ptr(std::ptr::addr_of_mut!((*set).addrs[way][w]));
                let holds = || {
                    addr(0).load(Ordering::SeqCst) == words[0]
                        && addr(1).load(Ordering::SeqCst) == words[1]
                };
                // A probe of the source may mark it seen again between the load and
                // the swap: a few tries.
                let mut freed = None;
                for _ in 0..4 {
                    let mark = seen.load(Ordering::SeqCst);
                    if mark == 0 || !holds() {
                        break;
                    }
                    if seen
                        .compare_exchange(mark, 0, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        freed = Some(mark);
                        break;
                    }
                }
                let Some(mark) = freed else {
                    continue;
                };
                if !holds() {
                    // Given to another source with the same mark: given back.
                    let _ = seen.compare_exchange(0, mark, Ordering::SeqCst, Ordering::SeqCst);
                    continue;
                }
                addr(0).store(FORGOTTEN[0], Ordering::SeqCst);
                addr(1).store(FORGOTTEN[1], Ordering::SeqCst);
                forgot = true;
            }
        }
        forgot
    }
}

/// A new table's entries, header included, holding `records` (the newest of a set's
/// sources kept when more fall into it than it holds), keyed by `key`.
pub(super) fn fill(entries: u32, key: u64, records: &[(Addr, SourceStats)]) -> Vec<SourceSet> {
    let header = SourceHeader {
        key,
        sets: entries.saturating_sub(1),
    };
    let mut table = vec![SourceSet::with_header(header); 1];
    table.resize(entries as usize, bytemuck::Zeroable::zeroed());
    if header.sets == 0 {
        return table;
    }
    let mut sorted: Vec<&(Addr, SourceStats)> = records.iter().collect();
    // Oldest first: a set that overflows keeps its newest sources.
    sorted.sort_by_key(|(_, s)| s.last_ns);
    for (addr, stats) in sorted {
        let words: AddrWords = bytemuck::cast(*addr);
        table[source_entry(&words, key, header.sets) as usize].place(
            &words,
            seen_stamp(stats.last_ns),
            stats,
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(i: u32) -> Addr {
        portsentry_common::v4_mapped((0x0a00_0000 + i).to_be_bytes())
    }

    #[test]
    fn a_filled_table_finds_every_record_that_fits() {
        let records: Vec<(Addr, SourceStats)> = (0..300)
            .map(|i| {
                let stats = SourceStats {
                    hits: i + 1,
                    last_ns: u64::from(i) << 20,
                    ..SourceStats::default()
                };
                (v4(i), stats)
            })
            .collect();
        let table = fill(1 + 1000, 42, &records);
        assert_eq!(table[0].header().sets, 1000);
        for (addr, stats) in &records {
            let words: AddrWords = bytemuck::cast(*addr);
            let set = &table[source_entry(&words, 42, 1000) as usize];
            let way = set.find(&words).expect("kept");
            assert_eq!(set.stats[way], *stats);
        }
    }

    #[test]
    fn an_overflowing_set_keeps_its_newest_sources() {
        // One set: every record falls into it.
        let records: Vec<(Addr, SourceStats)> = (0..10)
            .map(|i| {
                let stats = SourceStats {
                    last_ns: u64::from(10 - i) << 20,
                    ..SourceStats::default()
                };
                (v4(i), stats)
            })
            .collect();
        let table = fill(2, 7, &records);
        let mut kept: Vec<u64> = (0..SOURCE_WAYS)
            .map(|w| table[1].stats[w].last_ns >> 20)
            .collect();
        kept.sort();
        assert_eq!(kept, [8, 9, 10]);
    }
}
