//! Typed handles on the program's maps, opened once by name (the names are shared with
//! the XDP program in portsentry-common), and the reads and writes of every map but the
//! ban maps ([`super::bans`]): watched ports, settings, the ignore trie, counters and
//! tracked sources.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{
    Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf,
    lpm_trie::Key,
};
use ipnet::{IpNet, Ipv6Net};
use portsentry_common::{
    Addr, Counter,
    ban_nets::{NetKey, NetLens},
    maps::{
        self, BanEntry, IGNORE_FILTER_WORDS, IGNORE_IGNORED, IGNORE_MAX, IGNORE_SINGLE,
        KBAN_DAEMON, KBAN_PROGRAM, KernelBan, LOCAL_FILTER_WORDS, SETTING_IGNORE,
        SETTING_IGNORE_WIDE, Settings, SourceStats, local_filter_bit, net_filter_bit,
    },
    packet::AddrWords,
};

use super::{
    Dataplane, addr,
    ban_cache::BanCache,
    ban_filter::BanFilter,
    ban_tags::BanTagTable,
    bans::{read_words, write_changed_words},
    sources::SourceTable,
};
use crate::config::ports::PortSet;

/// How far the wall clock may move against CLOCK_MONOTONIC before the program's offset
/// follows it ([`Dataplane::follow_wall_clock`]). NTP's slewing moves both clocks
/// alike; only a step (or a leap second) moves one against the other. Well above the
/// noise of measuring the offset (`configure::wall_offset_ns`: a thread preempted
/// between its two reads), well below a second.
const WALL_STEP_NS: u64 = 10_000_000;

/// Every map of the program, typed.
pub(super) struct Maps {
    pub bans: HashMap<MapData, Addr, BanEntry>,
    pub ban_nets: LpmTrie<MapData, Addr, BanEntry>,
    /// `None` for an object (or pins) from before the hash of lengths (`net_hash.rs`).
    pub ban_net_hash: Option<HashMap<MapData, NetKey, BanEntry>>,
    pub ban_net_lens: Option<Array<MapData, NetLens>>,
    pub ban_filter: BanFilter,
    pub ban_cache: BanCache,
    /// `None` for an object (or pins) from before the tags.
    pub ban_tags: Option<BanTagTable>,
    pub ignore: LpmTrie<MapData, Addr, u32>,
    /// `None` for an object built before the filter existed (the bench loads one).
    pub ignore_filter: Option<Array<MapData, u64>>,
    /// `None` for an object (or pins) from before the range filter.
    pub net_filter: Option<Array<MapData, u64>>,
    /// `None` for an object (or pins) from before the filter of this host's addresses.
    pub local_filter: Option<Array<MapData, u64>>,
    pub ports: Array<MapData, u64>,
    /// `None` for an object (or pins) from before the ACK class.
    pub ack_ports: Option<Array<MapData, u64>>,
    /// `None` for an object (or pins) from before IP-protocol probes.
    pub protocols: Option<Array<MapData, u64>>,
    pub sources: SourceTable,
    pub counters: PerCpuArray<MapData, u64>,
    pub settings: SettingsMap,
    /// `None` for an object built before the kernel-side ban (the bench loads one).
    pub kban: Option<Array<MapData, KernelBan>>,
    /// `None` for an object (or pins) from before the TCP socket bitmap.
    pub tcp_sockets: Option<Array<MapData, u64>>,
    pub tcp_listens: Option<Array<MapData, u64>>,
    /// The event ring buffer, until the daemon takes it.
    pub events: Option<RingBuf<MapData>>,
    /// Kernel memory charged to each map (`memlock` in its fdinfo), in bytes.
    pub memory: Vec<(&'static str, u64)>,
    /// The maps no handle above is for (`PS_EV_BUDGET`): held open, as the program
    /// may still be in the verifier, which needs every map fd it names.
    _rest: Vec<Map>,
}

impl Maps {
    /// Types the maps of `maps::ALL`, taken from a loaded object or opened from pins.
    /// `read_only`: nothing is written (`status`).
    pub fn new(mut named: StdHashMap<&'static str, Map>, read_only: bool) -> Result<Maps> {
        let mut memory: Vec<(&'static str, u64)> =
            named.iter().map(|(n, m)| (*n, memlock(m))).collect();
        memory.sort();
        let ignore_filter = optional(&mut named, maps::IGNORE_FILTER)?;
        let kban = optional(&mut named, maps::KBAN)?;
        let ban_tags = named
            .remove(maps::BAN_TAGS)
            .map(BanTagTable::new)
            .transpose()?;
        let ban_net_hash = optional(&mut named, maps::BAN_NET_HASH)?;
        let ban_net_lens = optional(&mut named, maps::BAN_NET_LENS)?;
        let net_filter = optional(&mut named, maps::NET_FILTER)?;
        let local_filter = optional(&mut named, maps::LOCAL_FILTER)?;
        let ack_ports = optional(&mut named, maps::ACK_PORTS)?;
        let protocols = optional(&mut named, maps::PROTOCOLS)?;
        let tcp_sockets = optional(&mut named, maps::TCP_SOCKETS)?;
        let tcp_listens = optional(&mut named, maps::TCP_LISTENS)?;
        let mut take = |name: &'static str| {
            named
                .remove(name)
                .ok_or_else(|| anyhow!("the XDP object has no map `{name}`"))
        };
        let bans = HashMap::try_from(take(maps::BANS)?)?;
        Ok(Maps {
            bans,
            ban_nets: LpmTrie::try_from(take(maps::BAN_NETS)?)?,
            ban_net_hash,
            ban_net_lens,
            ban_filter: BanFilter::new(take(maps::BAN_FILTER)?, read_only)?,
            ban_cache: BanCache::new(take(maps::BAN_CACHE)?)?,
            ban_tags,
            ignore: LpmTrie::try_from(take(maps::IGNORE)?)?,
            ignore_filter,
            net_filter,
            local_filter,
            ports: Array::try_from(take(maps::PORTS)?)?,
            ack_ports,
            protocols,
            sources: SourceTable::new(take(maps::SOURCES)?, read_only)?,
            counters: PerCpuArray::try_from(take(maps::COUNTERS)?)?,
            settings: SettingsMap::new(take(maps::SETTINGS)?)?,
            kban,
            tcp_sockets,
            tcp_listens,
            events: Some(RingBuf::try_from(take(maps::EVENTS)?)?),
            memory,
            _rest: named.into_values().collect(),
        })
    }
}

/// The map `name` of `named`, typed; `None` when the object (or the pins) has none.
fn optional<T: TryFrom<Map, Error = MapError>>(
    named: &mut StdHashMap<&'static str, Map>,
    name: &str,
) -> Result<Option<T>> {
    Ok(named.remove(name).map(T::try_from).transpose()?)
}

/// `PS_SETTINGS`, whatever the size of its value: an object or pins of an earlier
/// release hold fewer fields (fields are only ever added at the end), so a value is read
/// into this release's [`Settings`] with the missing fields zero (off), and written
/// cut to the map's size. The bench's baseline objects and `status` over pins that a
/// daemon of the earlier release still runs on both need this.
pub(super) struct SettingsMap {
    map: MapData,
    value_size: usize,
}

impl SettingsMap {
    fn new(map: Map) -> Result<SettingsMap> {
        let Map::Array(map) = map else {
            return Err(anyhow!("PS_SETTINGS is not an array"));
        };
        let value_size = map.info()?.value_size() as usize;
        Ok(SettingsMap { map, value_size })
    }

    pub fn get(&self) -> Result<Settings> {
        let bytes =
            super::sys::lookup_bytes(self.map.fd().as_fd(), &0u32.to_ne_bytes(), self.value_size)?;
        Ok(super::resize::grown(&bytes))
    }

    pub fn set(&mut self, s: &Settings) -> Result<()> {
        let mut bytes = bytemuck::bytes_of(s).to_vec();
        bytes.resize(self.value_size, 0);
        super::sys::update_bytes(self.map.fd().as_fd(), &0u32.to_ne_bytes(), &bytes)?;
        Ok(())
    }
}

/// The `memlock` line of a map's fdinfo, in bytes (0 when unreadable).
fn memlock(map: &Map) -> u64 {
    let fd = match map {
        Map::Array(m)
        | Map::PerCpuArray(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::LpmTrie(m)
        | Map::RingBuf(m) => m.fd().as_fd().as_raw_fd(),
        _ => return 0,
    };
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Counter totals summed over CPUs, indexed by [`Counter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Packets seen (the sum of the verdict reasons).
    pub fn packets(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.is_verdict())
            .map(|c| self.get(*c))
            .sum()
    }

    /// Packets dropped.
    pub fn dropped(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.is_drop())
            .map(|c| self.get(*c))
            .sum()
    }

    /// Counts that grew from `earlier` to `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = Counters::default();
        for (i, v) in d.0.iter_mut().enumerate() {
            *v = self.0[i].wrapping_sub(earlier.0[i]);
        }
        d
    }
}

impl Dataplane {
    pub(super) fn read_settings(&self) -> Result<Settings> {
        self.maps.settings.get()
    }

    /// Writes the runtime settings. The presence flags (`SETTING_PREFIX_BANS`,
    /// `SETTING_IGNORE`) and `PS_BAN_CACHE`'s sets are kept by this type itself and are
    /// not taken from `s`.
    pub fn write_settings(&mut self, s: Settings) -> Result<()> {
        let s = self.keep_presence(s);
        let prefix = maps::v6_source_prefix(s.flags);
        if prefix != self.v6_source_prefix() {
            return self.change_v6_prefix(prefix, s);
        }
        self.store_settings(s)
    }

    /// `s` with the presence flags (`SETTING_PREFIX_BANS`, `SETTING_PREFIX_BANS_WIDE`,
    /// `SETTING_IGNORE`, `SETTING_IGNORE_WIDE`) and `PS_BAN_CACHE`'s sets as they are now.
    pub(super) fn keep_presence(&self, s: Settings) -> Settings {
        let presence = maps::SETTING_PREFIX_BANS
            | maps::SETTING_PREFIX_BANS_WIDE
            | SETTING_IGNORE
            | SETTING_IGNORE_WIDE
            | maps::SETTING_LOCAL_DST
            | 31 << maps::SETTING_BAN_CACHE_SHIFT;
        Settings {
            flags: (s.flags & !presence) | (self.settings.flags & presence),
            ..s
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The kernel-side ban's settings and the program's bans this second.
    pub fn kernel_ban(&self) -> Result<Option<KernelBan>> {
        self.maps
            .kban
            .as_ref()
            .map(|a| a.get(&KBAN_PROGRAM, 0))
            .transpose()
            .map_err(Into::into)
    }

    /// Bans the program made in Unix second `second` (0 when it made none then, or it
    /// has no kernel-side ban).
    pub fn kernel_bans_in(&self, second: u64) -> Result<u32> {
        Ok(match self.kernel_ban()? {
            Some(kb) if kb.second == second => u32::try_from(kb.used).unwrap_or(u32::MAX),
            _ => 0,
        })
    }

    /// Tells the program how many bans the daemon made in Unix second `second`: they
    /// share its MAX_BANS_PER_SEC budget.
    pub fn share_ban_budget(&mut self, second: u64, used: u32) -> Result<()> {
        if let Some(a) = &mut self.maps.kban {
            let kb = KernelBan {
                second,
                used: u64::from(used),
                ..KernelBan::default()
            };
            a.set(KBAN_DAEMON, kb, 0).context("writing PS_KBAN")?;
        }
        Ok(())
    }

    /// Keeps the program's wall-clock offset (`wall_offset_ns`, taken when the settings
    /// were written) within [`WALL_STEP_NS`] of `offset`, the one of now: after a step of
    /// the wall clock (NTP setting it at boot, an operator's `date`) the budget's seconds
    /// are the daemon's again; otherwise the two would count different seconds and each
    /// spend a whole MAX_BANS_PER_SEC in every one. Only the offset changes: the
    /// settings and the second's count are written back as read. (What the program
    /// counts between the read and the write, microseconds apart, is lost: at most one
    /// second's budget of slack, once per step.) Returns the step, when there was one.
    pub fn follow_wall_clock(&mut self, offset: u64) -> Result<Option<i64>> {
        let Some(a) = &mut self.maps.kban else {
            return Ok(None);
        };
        let kb = a.get(&KBAN_PROGRAM, 0).context("reading PS_KBAN")?;
        let step = offset.wrapping_sub(kb.wall_offset_ns) as i64;
        if step.unsigned_abs() <= WALL_STEP_NS {
            return Ok(None);
        }
        let kb = KernelBan {
            wall_offset_ns: offset,
            ..kb
        };
        a.set(KBAN_PROGRAM, kb, 0).context("writing PS_KBAN")?;
        Ok(Some(step))
    }

    /// Writes the kernel-side ban's settings, keeping the bans the program counted
    /// this second: a reload (or a restart) does not give the second a budget afresh.
    /// (What the program counts between the read and the write, microseconds apart, is
    /// lost, as in [`Self::follow_wall_clock`].)
    pub fn set_kernel_ban_settings(&mut self, kb: KernelBan) -> Result<()> {
        let Some(a) = &mut self.maps.kban else {
            return Ok(());
        };
        let held = a.get(&KBAN_PROGRAM, 0).context("reading PS_KBAN")?;
        let kb = KernelBan {
            second: held.second,
            used: held.used,
            ..kb
        };
        a.set(KBAN_PROGRAM, kb, 0).context("writing PS_KBAN")?;
        Ok(())
    }

    /// Writes the kernel-side ban's entry as given (its budget's second and count too).
    pub fn write_kernel_ban(&mut self, kb: KernelBan) -> Result<()> {
        if let Some(a) = &mut self.maps.kban {
            a.set(KBAN_PROGRAM, kb, 0).context("writing PS_KBAN")?;
        }
        Ok(())
    }

    pub(super) fn store_settings(&mut self, s: Settings) -> Result<()> {
        self.maps.settings.set(&s).context("writing PS_SETTINGS")?;
        self.settings = s;
        Ok(())
    }

    pub(super) fn set_flag(&mut self, flag: u32, on: bool) -> Result<()> {
        let flags = if on {
            self.settings.flags | flag
        } else {
            self.settings.flags & !flag
        };
        if flags != self.settings.flags {
            self.store_settings(Settings {
                flags,
                ..self.settings
            })?;
        }
        Ok(())
    }

    /// Replaces the watched TCP and UDP ports.
    pub fn write_ports(&mut self, tcp: &PortSet, udp: &PortSet) -> Result<()> {
        for (base, set) in [(0, tcp), (maps::UDP_PORT_WORD_BASE, udp)] {
            for (i, w) in set.words().iter().enumerate() {
                self.maps.ports.set(base + i as u32, *w, 0)?;
            }
        }
        Ok(())
    }

    /// Replaces the ports a segment with ACK is looked up on (`PS_ACK_PORTS`), writing
    /// only the words that change.
    pub fn write_ack_ports(&mut self, ports: &PortSet) -> Result<()> {
        let Some(map) = self.maps.ack_ports.as_mut() else {
            return Ok(());
        };
        let current = match self.ack_words.take() {
            Some(w) => w,
            None => (0..maps::ACK_PORT_WORDS)
                .map(|i| map.get(&i, 0))
                .collect::<Result<Vec<u64>, MapError>>()?,
        };
        for (i, (now, want)) in current.iter().zip(ports.words()).enumerate() {
            if now != want {
                map.set(i as u32, *want, 0)?;
            }
        }
        self.ack_words = Some(ports.words().to_vec());
        Ok(())
    }

    /// Replaces the IP protocols whose datagrams are probes (`PS_PROTOCOLS`).
    pub fn write_protocols(&mut self, words: &super::configure::ProtocolWords) -> Result<()> {
        let Some(map) = self.maps.protocols.as_mut() else {
            return Ok(());
        };
        for (i, w) in words.iter().enumerate() {
            if map.get(&(i as u32), 0)? != *w {
                map.set(i as u32, *w, 0)?;
            }
        }
        Ok(())
    }

    /// Makes the kernel's ignore list exactly `nets`, in an order that never leaves an
    /// address the new list protects unprotected: the filter bits and the trie entries
    /// of the new list first, then the stale entries and bits go. When the map cannot
    /// hold both lists at once, the stale entries that share no address with the new
    /// list go first, and one inside an ignored network of the new list as soon as that
    /// network is written.
    ///
    /// `singles` are the `SOURCE_PREFIX_V6` networks whose sources are counted one
    /// address at a time (value `IGNORE_SINGLE`: not ignored, and no prefix ban).
    pub fn replace_ignore(&mut self, nets: &[IpNet], singles: &[IpNet]) -> Result<()> {
        let mut want: StdHashMap<(u32, Addr), u32> = singles
            .iter()
            .map(|n| (addr::net_key(n), IGNORE_SINGLE))
            .collect();
        want.extend(nets.iter().map(|n| (addr::net_key(n), IGNORE_IGNORED)));
        // Refused before anything is touched: the daemon tries again every second while
        // this host's addresses do not fit, and each try would read the filter back.
        let capacity = IGNORE_MAX as usize;
        if want.len() > capacity {
            bail!(
                "the ignore list has {} networks with loopback, this host's addresses, its \
                 gateways and SOURCE_PREFIX_V6's networks; the kernel holds at most \
                 {capacity}",
                want.len()
            );
        }
        // The filter covers the counted networks too: a probe's source whose bit is
        // clear is neither ignored nor counted by address, and skips the trie.
        let listed: Vec<IpNet> = nets.iter().chain(singles).copied().collect();
        let (words, wide) = ignore_filter(&listed);
        let current = match (self.ignore_words.take(), &self.maps.ignore_filter) {
            (Some(w), _) => w,
            (None, Some(filter)) => (0..IGNORE_FILTER_WORDS)
                .map(|i| filter.get(&i, 0))
                .collect::<Result<Vec<u64>, MapError>>()?,
            (None, None) => vec![0; IGNORE_FILTER_WORDS as usize],
        };
        let union: Vec<u64> = current.iter().zip(&words).map(|(a, b)| a | b).collect();
        self.write_ignore_words(&current, &union)?;
        if wide {
            self.set_flag(SETTING_IGNORE_WIDE, true)?;
        }
        let t = &mut self.maps.ignore;
        let present: StdHashMap<(u32, Addr), u32> = t
            .iter()
            .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
            .collect::<Result<_, MapError>>()
            .context("reading PS_IGNORE's entries")?;
        let mut stale: Vec<(u32, Addr)> = present
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        // What changes (an entry already there with its value is not written again): the
        // ignored networks first, widest first, then the networks counted by address (one
        // written before an ignored network inside it would count that network's
        // addresses meanwhile).
        let mut writes: Vec<((u32, Addr), u32)> = want
            .iter()
            .filter(|(k, v)| present.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
            .collect();
        writes.sort_unstable_by_key(|((len, _), v)| (*v != IGNORE_IGNORED, *len));
        // The stale entries go widest first: a narrower one still there keeps its
        // addresses as they were, not under a wider stale entry (one counting them by
        // address) for a moment.
        stale.sort_unstable_by_key(|(len, _)| *len);
        let new_entries = writes
            .iter()
            .filter(|(k, _)| !present.contains_key(k))
            .count();
        // No room for both lists at once: the stale entries that share no address with
        // the new list go first, and one that lies inside an ignored network of the new
        // list goes as soon as that network is written (its addresses stay protected).
        // Any other goes last.
        let tight = present.len() + new_entries > capacity;
        let overlap =
            |a: &(u32, Addr), b: &(u32, Addr)| addr::keys_overlap((a.0, &a.1), (b.0, &b.1));
        let remove = |t: &mut LpmTrie<MapData, Addr, u32>, k: &(u32, Addr)| {
            absent_is_false(t.remove(&Key::new(k.0, k.1)))
        };
        if tight {
            let (early, late): (Vec<_>, Vec<_>) = stale
                .into_iter()
                .partition(|s| !want.keys().any(|w| overlap(s, w)));
            for k in &early {
                remove(t, k)?;
            }
            stale = late;
        }
        for (k, value) in &writes {
            t.insert(&Key::new(k.0, k.1), value, 0).with_context(|| {
                format!(
                    "writing PS_IGNORE ({} entries left of the old list while the new one's \
                     {} go in: more than its {capacity})",
                    stale.len(),
                    want.len()
                )
            })?;
            if tight && *value == IGNORE_IGNORED {
                let (inside, rest): (Vec<_>, Vec<_>) =
                    stale.into_iter().partition(|s| s.0 >= k.0 && overlap(s, k));
                for s in &inside {
                    remove(t, s)?;
                }
                stale = rest;
            }
        }
        for k in &stale {
            remove(t, k)?;
        }
        self.set_flag(SETTING_IGNORE, !want.is_empty())?;
        self.set_flag(SETTING_IGNORE_WIDE, wide)?;
        self.write_ignore_words(&union, &words)?;
        self.ignore_words = Some(words);
        Ok(())
    }

    /// Makes `PS_LOCAL_FILTER` hold `addrs`, this host's addresses, and puts the filter
    /// in force (`SETTING_LOCAL_DST`: a probe to another address is not counted); with
    /// `None` (this host answers on more than it can list), every destination counts.
    /// New addresses' bits are set before the old ones go, so that no address of this
    /// host goes unwatched for a moment.
    pub fn write_local(&mut self, addrs: Option<&[IpAddr]>) -> Result<()> {
        let Some(map) = &self.maps.local_filter else {
            return Ok(());
        };
        let Some(addrs) = addrs else {
            self.local_words = None;
            return self.set_flag(maps::SETTING_LOCAL_DST, false);
        };
        let words = local_filter(addrs);
        let in_force = self.settings.flags & maps::SETTING_LOCAL_DST != 0;
        if in_force && self.local_words.as_ref() == Some(&words) {
            return Ok(());
        }
        // Its own descriptor: the flag is written between the two passes.
        let filter = fd(map)
            .try_clone_to_owned()
            .context("duplicating the descriptor of PS_LOCAL_FILTER")?;
        let write = |now: &[u64], want: &[u64]| {
            write_changed_words(filter.as_fd(), now, want, maps::LOCAL_FILTER)
        };
        let current = match self.local_words.take() {
            Some(w) => w,
            None => read_words(filter.as_fd(), LOCAL_FILTER_WORDS, maps::LOCAL_FILTER)?,
        };
        let union: Vec<u64> = current.iter().zip(&words).map(|(a, b)| a | b).collect();
        write(&current, &union)?;
        // In force once it holds every address; the stale bits go after.
        self.set_flag(maps::SETTING_LOCAL_DST, true)?;
        write(&union, &words)?;
        self.local_words = Some(words);
        Ok(())
    }

    /// Writes the `PS_IGN_FILTER` words that differ from what the map holds.
    fn write_ignore_words(&mut self, now: &[u64], want: &[u64]) -> Result<()> {
        let Some(filter) = &mut self.maps.ignore_filter else {
            return Ok(());
        };
        for (i, (a, b)) in now.iter().zip(want).enumerate() {
            if a != b {
                filter
                    .set(i as u32, *b, 0)
                    .context("writing PS_IGN_FILTER")?;
            }
        }
        Ok(())
    }

    /// One kernel counter summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64> {
        Ok(self.maps.counters.get(&(c as u32), 0)?.iter().sum())
    }

    /// Kernel counters summed over CPUs.
    ///
    /// A `PS_COUNTERS` pinned by an older release has fewer slots (a pinned map is kept
    /// across upgrades until `portsentry unload`): the counters it lacks read as 0.
    pub fn counters(&self) -> Result<Counters> {
        let slots = self.maps.counters.len();
        let mut c = Counters::default();
        for (i, slot) in c.0.iter_mut().enumerate().take(slots as usize) {
            *slot = self.maps.counters.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(c)
    }

    /// What the kernel has recorded of one source.
    pub fn source(&self, ip: IpAddr) -> Result<Option<SourceStats>> {
        self.maps.sources.get(&addr::to_key(ip))
    }

    /// Sets what the kernel has recorded of one source: for the tests, a state the
    /// program reaches only when CPUs race (a first probe timed by a CPU whose clock is
    /// ahead of this one's, say).
    pub fn put_source(&mut self, ip: IpAddr, stats: &SourceStats) -> Result<()> {
        self.maps.sources.put(&addr::to_key(ip), stats)
    }

    /// Which set of `PS_SOURCES` holds `ip`'s record (its entry), for the tests that
    /// fill one set: `None` for an earlier release's map.
    pub fn source_set(&self, ip: IpAddr) -> Option<usize> {
        self.maps.sources.set_of(&addr::to_key(ip))
    }

    /// `PS_BAN_CACHE`'s sets (`None` for an earlier release's cache).
    pub fn ban_cache_sets(&self) -> Option<u32> {
        self.maps.ban_cache.sets()
    }

    /// True when `ip`'s ban is in `PS_BAN_CACHE` (for the tests).
    pub fn ban_cached(&self, ip: IpAddr) -> Result<bool> {
        self.maps.ban_cache.holds(&addr::to_key(ip))
    }

    /// True when `ip`'s ban is in `PS_BAN_TAGS` (for the tests).
    pub fn ban_tagged(&self, ip: IpAddr) -> Result<bool> {
        match &self.maps.ban_tags {
            Some(t) => t.holds(&addr::to_key(ip)),
            None => Ok(false),
        }
    }

    /// How many bans `PS_BAN_TAGS` holds (`None`: an object without it).
    pub fn ban_tags_held(&self) -> Result<Option<u64>> {
        self.maps.ban_tags.as_ref().map(|t| t.held()).transpose()
    }

    /// Empties `PS_BAN_TAGS` and writes it no more (for the tests: the bans made after
    /// go to the cache, which is then seen alone, as for IPv6 bans).
    pub fn stop_ban_tags(&mut self) -> Result<()> {
        if let Some(mut t) = self.maps.ban_tags.take() {
            t.rebuild(std::iter::empty())?;
        }
        Ok(())
    }

    /// How many bans `PS_BAN_CACHE` holds.
    pub fn ban_cache_held(&self) -> Result<u64> {
        self.maps.ban_cache.held()
    }

    /// Takes `ip`'s ban out of `PS_BANS` alone, its filter bits and cache way left as
    /// they are: for the tests, to see which answers the program takes from the cache
    /// (a state the daemon never makes).
    pub fn remove_hashed_ban_only(&mut self, ip: IpAddr) -> Result<()> {
        self.maps
            .bans
            .remove(&addr::to_key(ip))
            .context("removing from PS_BANS")
    }

    /// How many sources are tracked.
    pub fn count_sources(&self) -> Result<u64> {
        self.maps.sources.count()
    }

    /// Kernel memory charged to each map (`memlock` in its fdinfo), in bytes.
    pub fn map_memory(&self) -> Vec<(&'static str, u64)> {
        self.maps.memory.clone()
    }

    /// Every tracked source.
    pub fn sources(&self) -> Result<Vec<(IpAddr, SourceStats)>> {
        Ok(self
            .maps
            .sources
            .all()?
            .into_iter()
            .map(|(k, v)| (addr::from_key(&k), v))
            .collect())
    }

    /// Forgets a source's probe history (after it was banned or unbanned).
    pub fn forget_source(&mut self, ip: IpAddr) -> Result<()> {
        self.maps.sources.forget(&addr::to_key(ip))?;
        Ok(())
    }

    /// Takes the event ring buffer out (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        self.maps
            .events
            .take()
            .ok_or_else(|| anyhow!("the event ring buffer was already taken"))
    }
}

/// The file descriptor of a typed map, for the raw calls of [`super::sys`].
pub(super) fn fd<K: aya::Pod, V, M: IterableMap<K, V>>(map: &M) -> std::os::fd::BorrowedFd<'_> {
    map.map().fd().as_fd()
}

pub(super) fn absent_is_none<V>(r: Result<V, MapError>) -> Result<Option<V>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn absent_is_false(r: Result<(), MapError>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The `PS_LOCAL_FILTER` words of this host's addresses.
pub(super) fn local_filter(addrs: &[IpAddr]) -> Vec<u64> {
    let mut words = vec![0u64; LOCAL_FILTER_WORDS as usize];
    for a in addrs {
        let bit = local_filter_bit(&bytemuck::cast(addr::to_key(*a)));
        words[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
    words
}

/// The `PS_IGN_FILTER` words of an ignore list (one bit per IPv4 /24 and IPv6 /48 its
/// networks touch), and whether a network is too wide to list that way
/// ([`net_filter_bits`]).
pub(super) fn ignore_filter(nets: &[IpNet]) -> (Vec<u64>, bool) {
    let mut words = vec![0u64; IGNORE_FILTER_WORDS as usize];
    let mut wide = false;
    for net in nets {
        match net_filter_bits(net) {
            Some(bits) => {
                for bit in bits {
                    words[(bit >> 6) as usize] |= 1 << (bit & 63);
                }
            }
            None => wide = true,
        }
    }
    (words, wide)
}

/// The filter bits ([`net_filter_bit`]) of every IPv4 /24 or IPv6 /48 that `net`
/// touches; `None` for a network too wide to list that way: shorter than /8 (IPv4) or
/// /32 (IPv6), or covering or inside the IPv4-mapped range (`::ffff:0:0/96`).
pub(super) fn net_filter_bits(net: &IpNet) -> Option<Vec<u32>> {
    let bit = |ip: IpAddr| {
        let w: AddrWords = bytemuck::cast(addr::to_key(ip));
        net_filter_bit(&w)
    };
    let mapped = Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).expect("valid");
    Some(match net.trunc() {
        IpNet::V4(n) if n.prefix_len() >= 24 => vec![bit(IpAddr::V4(n.network()))],
        IpNet::V4(n) if n.prefix_len() >= 8 => n
            .subnets(24)
            .expect("24 is at least the prefix")
            .map(|sub| bit(IpAddr::V4(sub.network())))
            .collect(),
        IpNet::V6(n) if n.contains(&mapped) || mapped.contains(&n) => return None,
        IpNet::V6(n) if n.prefix_len() >= 48 => vec![bit(IpAddr::V6(n.network()))],
        IpNet::V6(n) if n.prefix_len() >= 32 => n
            .subnets(48)
            .expect("48 is at least the prefix")
            .map(|sub| bit(IpAddr::V6(sub.network())))
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_filter(words: &[u64], ip: &str) -> bool {
        let w: AddrWords = bytemuck::cast(addr::to_key(ip.parse().unwrap()));
        let bit = net_filter_bit(&w);
        words[(bit >> 6) as usize] & (1 << (bit & 63)) != 0
    }

    #[test]
    fn the_ignore_filter_holds_every_address_of_every_network() {
        let nets: Vec<IpNet> = [
            "192.0.2.7/32",
            "10.0.0.0/8",
            "2001:db8:1::/48",
            "2001:db9::/32",
            "::1/128",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let (words, wide) = ignore_filter(&nets);
        assert!(!wide);
        for ip in [
            "192.0.2.7",
            "192.0.2.200",
            "10.0.0.1",
            "10.255.255.255",
            "10.77.3.9",
            "2001:db8:1::1",
            "2001:db8:1:ffff::9",
            "2001:db9:ffff:1::2",
            "::1",
        ] {
            assert!(in_filter(&words, ip), "{ip}");
        }
        // The filter is sparse: most other addresses miss it (a miss needs no trie).
        let misses = (0..=255u32)
            .filter(|i| !in_filter(&words, &format!("198.51.{i}.1")))
            .count();
        assert!(misses > 200, "{misses}");
        for wide_net in ["0.0.0.0/7", "::/0", "::ffff:0:0/96", "2001::/31"] {
            let (_, wide) = ignore_filter(&[wide_net.parse().unwrap()]);
            assert!(wide, "{wide_net}");
        }
    }
}
