//! Bans: every ban in force with what caused it ([`Ban`], [`BanStore`]), how long a ban
//! lasts ([`ban_duration`]), the one place that changes them ([`book::Book`]), the
//! operator's actions on them ([`ops`]), the ban of a crowded network ([`escalate`]),
//! their journal on disk ([`journal`]) and the reconciliation with the kernel at
//! start-up ([`state`]). The kernel maps are the enforcement; this is the record the
//! daemon keeps beside them.
//!
//! The store is sized for millions of bans: one fixed-size record a ban (about 55 bytes
//! with the tree around it), no string per ban (a resolved host name is kept aside, only
//! for the bans that have one), lookups by network, by address (one a prefix length in
//! use) and by range, and expiry that reads only the bans ending by now (an index of
//! when each timed ban ends).

pub mod blocked;
pub mod book;
pub mod escalate;
pub mod guard;
pub mod journal;
pub mod ops;
pub mod state;

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use portsentry_common::{
    ScanType,
    maps::{BanEntry, BanOrigin},
};

use crate::{
    clock,
    config::LONGEST,
    kinds::{self, ModeToken, Protocol},
};

pub use book::Book;

/// One ban, as the store hands it out (a copy of its record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    pub net: IpNet,
    pub origin: BanOrigin,
    pub since: SystemTime,
    /// `None`: permanent.
    pub expires: Option<SystemTime>,
    /// Destination port of the probe that caused it (0 for a manual ban).
    pub port: u16,
    /// The protocol of that probe (`None` for a manual ban).
    pub proto: Option<Protocol>,
    pub scan_type: Option<ScanType>,
    /// PortSentry's mode token of the scan (`None` for a manual ban).
    pub mode: Option<ModeToken>,
    /// How many times this network has been banned, this ban included.
    pub count: u32,
    /// `Some(n)`: an escalation, the ban of a network put in force when `n` of its hosts
    /// were banned ([`escalate`]); the kernel holds it as a scan ban.
    pub escalated: Option<u32>,
}

impl Ban {
    /// The ban a CrowdSec Local API decision on `net` makes, in force since `since` until
    /// `expires`.
    pub fn of_decision(net: IpNet, since: SystemTime, expires: SystemTime) -> Ban {
        Ban {
            net,
            origin: BanOrigin::CrowdSec,
            since,
            expires: Some(expires),
            port: 0,
            proto: None,
            scan_type: None,
            mode: None,
            count: 1,
            escalated: None,
        }
    }

    /// The kernel's copy of this ban.
    pub fn kernel_entry(&self) -> BanEntry {
        self.kernel_entry_at(&clock::Anchor::now())
    }

    /// [`Ban::kernel_entry`] with the clocks read once for many bans.
    pub fn kernel_entry_at(&self, clocks: &clock::Anchor) -> BanEntry {
        BanEntry {
            expires_ns: self.expires.map_or(0, |t| clocks.to_kernel(t)),
            since_ns: clocks.to_kernel(self.since),
            port: self.port,
            scan_type: self.scan_type.map_or(0, |t| t as u8),
            origin: self.origin as u8,
            count: self.count,
        }
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// Whether this ban runs the kill commands (KILL_*), and their undo steps (UNKILL_*)
    /// when it ends: a scan ban (of one host, or of the network of an IPv6 source counted
    /// by SOURCE_PREFIX_V6, whose commands name the network's address; an escalation runs
    /// none), and, when CROWDSEC_KILL_COMMANDS is 1 (`crowdsec_kills`), the ban of one
    /// address a Local API decision made (a range runs none, as an escalation).
    pub fn has_undo(&self, crowdsec_kills: bool) -> bool {
        let host = self.net.prefix_len() == self.net.max_prefix_len();
        match self.origin {
            BanOrigin::Scan => self.escalated.is_none(),
            BanOrigin::CrowdSec => host && crowdsec_kills,
            BanOrigin::Manual | BanOrigin::Kernel => false,
        }
    }

    /// What `$MODE$` becomes in its kill commands: the scan's token, or `crowdsec` for a
    /// ban a decision made (`$PORT$` is then 0).
    pub fn mode_token_word(&self) -> &'static str {
        match self.mode {
            Some(m) => m.as_str(),
            None => kinds::origin_name(self.origin),
        }
    }

    /// What made it, as `status` and the state file say: `scan`, `manual` or
    /// `escalation`.
    pub fn origin_word(&self) -> &'static str {
        if self.escalated.is_some() {
            kinds::ESCALATION
        } else {
            kinds::origin_name(self.origin)
        }
    }

    /// The name the host is logged under when no reverse lookup named it: the address
    /// (the network, for an escalation).
    pub fn default_name(&self) -> String {
        self.default_name_shown().to_string()
    }

    /// [`Ban::default_name`] without a string of its own, to be written out.
    pub fn default_name_shown(&self) -> DefaultName {
        match self.escalated {
            Some(_) => DefaultName::Net(self.net),
            None => DefaultName::Addr(self.net.addr()),
        }
    }
}

/// A ban's default name ([`Ban::default_name_shown`]), shown as it is written out.
#[derive(Clone, Copy, Debug)]
pub enum DefaultName {
    Addr(std::net::IpAddr),
    Net(IpNet),
}

impl std::fmt::Display for DefaultName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefaultName::Addr(a) => a.fmt(f),
            DefaultName::Net(n) => n.fmt(f),
        }
    }
}

/// The probe that caused a scan ban.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanCause {
    pub port: u16,
    pub scan_type: ScanType,
    pub mode: ModeToken,
}

/// What a new ban is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// An operator's `portsentry ban`.
    Operator,
    /// A scan the daemon detected.
    Scan(ScanCause),
    /// `hosts` banned hosts of one network ([`escalate`]); the scan is the one whose ban
    /// made the count.
    Escalation { scan: ScanCause, hosts: u32 },
}

/// How long the `nth` ban (1-based) of a source lasts: `base` times `factor` to the
/// power `nth - 1`, capped at `max` (0: no cap) and at [`LONGEST`] (a date past it would
/// overflow). A zero `base` means permanent (`None`).
pub fn ban_duration(base: Duration, factor: u32, max: Duration, nth: u32) -> Option<Duration> {
    if base.is_zero() {
        return None;
    }
    let max = if max.is_zero() {
        LONGEST
    } else {
        max.min(LONGEST)
    };
    let mut d = base;
    for _ in 1..nth {
        d = d.saturating_mul(factor.max(1));
        if d >= max {
            break;
        }
    }
    Some(d.min(max))
}

/// Wall-clock milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// One ban in the store: fixed size (32 bytes), times in wall-clock milliseconds (a
/// ban's times are kept to the millisecond).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec {
    pub since_ms: u64,
    /// 0: permanent.
    pub expires_ms: u64,
    pub count: u32,
    /// 0: not an escalation; else the hosts that made it, plus one.
    pub escalated: u32,
    pub port: u16,
    /// [`BanOrigin`] as u8.
    pub origin: u8,
    /// [`ScanType`] as u8, 0 for none.
    pub scan_type: u8,
    /// IP protocol number, 0 for none.
    pub proto: u8,
    /// 1 + the index of the [`ModeToken`] in [`ModeToken::ALL`], 0 for none.
    pub mode: u8,
    /// [`Rec::KILLS_DUE`], or 0.
    pub flags: u8,
}
const _: () = assert!(size_of::<Rec>() == 32);

impl Rec {
    /// The response to the scan this ban stands for has kill commands (KILL_*) that have
    /// not all run yet: a start runs them when a stop or a crash cut the response short.
    pub const KILLS_DUE: u8 = 1;

    pub fn of(b: &Ban) -> Rec {
        Rec {
            since_ms: unix_ms(b.since),
            expires_ms: b.expires.map_or(0, |e| unix_ms(e).max(1)),
            count: b.count,
            escalated: b.escalated.map_or(0, |n| n.saturating_add(1)),
            port: b.port,
            origin: b.origin as u8,
            scan_type: b.scan_type.map_or(0, |t| t as u8),
            proto: b.proto.map_or(0, Protocol::number),
            mode: b.mode.map_or(0, |m| {
                1 + ModeToken::ALL
                    .iter()
                    .position(|t| *t == m)
                    .expect("a token") as u8
            }),
            flags: 0,
        }
    }

    pub fn kills_due(&self) -> bool {
        self.flags & Rec::KILLS_DUE != 0
    }

    /// The ban of `net` this record holds; `None` when a field holds no valid value
    /// (a record from a damaged or foreign file).
    /// [`Ban::kernel_entry_at`] of [`Rec::ban`], from the record's integers.
    pub fn kernel_entry_at(&self, clocks: &clock::Anchor) -> Option<BanEntry> {
        if !self.is_valid() {
            return None;
        }
        Some(BanEntry {
            expires_ns: match self.expires_ms {
                0 => 0,
                ms => clocks.ms_to_kernel(ms),
            },
            since_ns: clocks.ms_to_kernel(self.since_ms),
            port: self.port,
            scan_type: self.scan_type,
            origin: self.origin,
            count: self.count,
        })
    }

    /// Whether [`Rec::ban`] is `Some`: every field holds a valid value (checked for each
    /// record a journal holds, without making its ban).
    pub fn is_valid(&self) -> bool {
        let origin = [BanOrigin::Scan, BanOrigin::Manual, BanOrigin::CrowdSec]
            .iter()
            .any(|o| *o as u8 == self.origin);
        origin
            && (self.scan_type == 0 || ScanType::from_u8(self.scan_type).is_some())
            && (self.proto == 0 || Protocol::from_number(self.proto).is_some())
            && self.mode().is_some()
            && self.flags & !Rec::KILLS_DUE == 0
    }

    pub fn ban(&self, net: IpNet) -> Option<Ban> {
        let origin = match self.origin {
            o if o == BanOrigin::Scan as u8 => BanOrigin::Scan,
            o if o == BanOrigin::Manual as u8 => BanOrigin::Manual,
            o if o == BanOrigin::CrowdSec as u8 => BanOrigin::CrowdSec,
            _ => return None,
        };
        let scan_type = match self.scan_type {
            0 => None,
            t => Some(ScanType::from_u8(t)?),
        };
        let proto = match self.proto {
            0 => None,
            p => Some(Protocol::from_number(p)?),
        };
        let mode = self.mode()?;
        Some(Ban {
            net,
            origin,
            since: from_unix_ms(self.since_ms),
            expires: (self.expires_ms != 0).then(|| from_unix_ms(self.expires_ms)),
            port: self.port,
            proto,
            scan_type,
            mode,
            count: self.count,
            escalated: self.escalated.checked_sub(1),
        })
    }

    /// The ban's mode (`None` inside: none); `None` for a mode no token has.
    pub fn mode(&self) -> Option<Option<ModeToken>> {
        match self.mode {
            0 => Some(None),
            m => ModeToken::ALL.get(usize::from(m) - 1).copied().map(Some),
        }
    }

    /// A CrowdSec decision's ban: not counted among a network's bans
    /// ([`BanStore::insert`]).
    pub(crate) fn is_crowdsec(&self) -> bool {
        self.origin == BanOrigin::CrowdSec as u8
    }

    fn expires_by(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }
}

/// The bans in force, how often each network has been banned before, and the names
/// hosts were logged under.
#[derive(Debug)]
pub struct BanStore {
    /// Ordered by network (address, then prefix length), so that the bans inside a
    /// network are one range.
    bans: BTreeMap<IpNet, Rec>,
    /// Ban counts of networks not banned now (a banned network's count is in its
    /// record): repeat offenders' durations.
    previous: HashMap<IpNet, u32>,
    /// The names of banned hosts that a reverse lookup named (the others are logged
    /// under their address): kept aside, so that a ban costs no string.
    names: HashMap<IpNet, Box<str>>,
    /// The bytes of those names (the journal's compaction counts them).
    names_bytes: usize,
    /// Bans per prefix length, IPv4 then IPv6: an address's ban is looked up once per
    /// length in use.
    lengths_v4: [u32; 33],
    lengths_v6: [u32; 129],
    /// When the timed bans end: [`Ends`].
    ends: Ends,
    /// Lifted bans whose undo steps (UNKILL_*) have not all run, by network and since
    /// (ms): journaled, so that those a stop or a crash cut short run at the next start.
    /// A handful at a time, but for a mass expiry.
    undos: BTreeMap<(IpNet, u64), Rec>,
    /// The networks whose ban had its kill commands due ([`Rec::KILLS_DUE`]) when the
    /// store was read: found while it is built, not by a look at every ban at a start.
    kills_due_at_load: Vec<IpNet>,
}

/// The timed bans by the second they end in (wall-clock seconds), so that the
/// once-a-second expiry check reads the seconds that have come, not the whole store (a
/// million CrowdSec decisions end all day long). An entry is not taken out when its
/// ban is lifted or replaced: it is checked against the store when its second comes,
/// and dropped then if the ban is gone or now ends in a later second (a replaced ban
/// has an entry of its own). A ban replaced by one that ends at the same time keeps
/// its one entry. So each timed ban has an entry at the second it ends, or is in `due`.
/// Once the entries of bans gone outnumber the timed bans, they are dropped
/// ([`Ends::compact`]).
#[derive(Debug, Default)]
struct Ends {
    by_second: BTreeMap<u64, Vec<IpNet>>,
    /// The entries in `by_second`.
    entries: usize,
    /// The timed bans in the store.
    timed: usize,
    /// Bans whose second has come, until lifted (a lift that failed is retried) or
    /// found to end later; ordered by network after each check.
    due: Vec<IpNet>,
    /// The second of the last check: a wall clock set back behind it puts the bans in
    /// `due` back in the index, so that one taken out within its second is not dropped
    /// as ending later.
    checked: u64,
}

impl Ends {
    fn add(&mut self, net: IpNet, expires_ms: u64) {
        self.by_second
            .entry(expires_ms / 1000)
            .or_default()
            .push(net);
        self.entries += 1;
    }

    /// Follows the store's change of `net`'s record from `old` to `new`.
    fn follow(
        &mut self,
        bans: &BTreeMap<IpNet, Rec>,
        net: IpNet,
        old: Option<Rec>,
        new: Option<Rec>,
    ) {
        let timed = |r: Option<Rec>| r.is_some_and(|r| r.expires_ms != 0);
        self.timed = self.timed + usize::from(timed(new)) - usize::from(timed(old));
        if let Some(new) = new
            && new.expires_ms != 0
            && old.is_none_or(|o| o.expires_ms != new.expires_ms)
        {
            self.add(net, new.expires_ms);
        }
        // Entries of bans gone: dropped once they are the most, so that the index stays
        // within twice the timed bans (the compaction, O(entries), paid back by the
        // changes that made them stale).
        if self.entries > 2 * self.timed + 4096 {
            self.compact(bans);
        }
    }

    /// Keeps in each second the bans that still end in it, once each.
    fn compact(&mut self, bans: &BTreeMap<IpNet, Rec>) {
        let mut entries = 0;
        self.by_second.retain(|second, nets| {
            nets.retain(|n| {
                bans.get(n)
                    .is_some_and(|r| r.expires_ms != 0 && r.expires_ms / 1000 == *second)
            });
            nets.sort_unstable_by_key(state::net_order);
            nets.dedup();
            nets.shrink_to_fit();
            entries += nets.len();
            !nets.is_empty()
        });
        self.entries = entries;
    }

    /// The bans of `bans` that have run out by `now_ms`, in the order of networks.
    fn due(&mut self, bans: &BTreeMap<IpNet, Rec>, now_ms: u64) -> Vec<IpNet> {
        let second = now_ms / 1000;
        if second < self.checked {
            // The wall clock set back: the bans taken out as due go back to their
            // seconds, which are to come again.
            for net in std::mem::take(&mut self.due) {
                if let Some(r) = bans.get(&net).filter(|r| r.expires_ms != 0) {
                    self.add(net, r.expires_ms);
                }
            }
        }
        self.checked = second;
        while let Some(entry) = self.by_second.first_entry()
            && *entry.key() <= second
        {
            let nets = entry.remove();
            self.entries -= nets.len();
            self.due.extend(nets);
        }
        if self.due.is_empty() {
            return Vec::new();
        }
        // Kept while the ban ends by this second: due now, or later within it.
        self.due.retain(|n| {
            bans.get(n)
                .is_some_and(|r| r.expires_ms != 0 && r.expires_ms / 1000 <= second)
        });
        self.due.sort_unstable_by_key(state::net_order);
        self.due.dedup();
        // A mass expiry's list is not kept at its size once lifted.
        if self.due.capacity() > 4 * self.due.len() + 1024 {
            self.due.shrink_to_fit();
        }
        self.due
            .iter()
            .filter(|n| bans.get(n).is_some_and(|r| r.expires_by(now_ms)))
            .copied()
            .collect()
    }

    /// Entries held: the timed bans (those due and not lifted yet among them), and those
    /// of bans lifted or replaced whose second has not come yet.
    fn len(&self) -> usize {
        self.entries + self.due.len()
    }
}

impl Default for BanStore {
    fn default() -> Self {
        BanStore {
            bans: BTreeMap::new(),
            previous: HashMap::new(),
            names: HashMap::new(),
            names_bytes: 0,
            lengths_v4: [0; 33],
            lengths_v6: [0; 129],
            ends: Ends::default(),
            undos: BTreeMap::new(),
            kills_due_at_load: Vec::new(),
        }
    }
}

impl BanStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store from bans sorted by network, each network once (the journal's
    /// recovery): built in one pass, the tree's nodes full.
    pub fn from_sorted(
        bans: Vec<(IpNet, Rec)>,
        previous: HashMap<IpNet, u32>,
        names: HashMap<IpNet, Box<str>>,
    ) -> Self {
        let mut s = BanStore {
            previous,
            names,
            ..BanStore::default()
        };
        for (net, r) in &bans {
            if r.kills_due() {
                s.kills_due_at_load.push(*net);
            }
            *s.length_slot(net) += 1;
            if r.expires_ms != 0 {
                s.ends.add(*net, r.expires_ms);
                s.ends.timed += 1;
            }
        }
        s.bans = bans.into_iter().collect();
        // A name put back to the default is recorded as that default: not kept.
        let defaults: Vec<IpNet> = s
            .names
            .iter()
            .filter(|(n, name)| s.get(n).is_none_or(|b| ***name == *b.default_name()))
            .map(|(n, _)| *n)
            .collect();
        for n in defaults {
            s.names.remove(&n);
        }
        s.names_bytes = s.names.values().map(|n| n.len()).sum();
        s
    }

    fn length_slot(&mut self, net: &IpNet) -> &mut u32 {
        match net {
            IpNet::V4(n) => &mut self.lengths_v4[usize::from(n.prefix_len())],
            IpNet::V6(n) => &mut self.lengths_v6[usize::from(n.prefix_len())],
        }
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    pub fn get(&self, net: &IpNet) -> Option<Ban> {
        self.bans.get(net).and_then(|r| r.ban(*net))
    }

    pub fn contains(&self, net: &IpNet) -> bool {
        self.bans.contains_key(net)
    }

    /// The bans of networks that lie inside `net` (`net`'s own included).
    pub fn within<'a>(&'a self, net: &IpNet) -> impl Iterator<Item = Ban> + use<'a> {
        let net = net.trunc();
        // Ordered by address, then prefix length: every network inside `net` has its
        // address between `net`'s first and last.
        let first = IpNet::new(net.network(), 0).expect("0 is a valid prefix");
        let last = IpNet::new(net.broadcast(), net.max_prefix_len()).expect("a host prefix");
        self.bans
            .range(first..=last)
            .filter(move |(n, _)| net.contains(*n))
            .filter_map(|(n, r)| r.ban(*n))
    }

    /// The networks of the bans that overlap `net`: those inside it (its own included),
    /// then those around it (one lookup per shorter prefix length in use). Bans of the
    /// other family are not looked at.
    pub fn overlapping<'a>(&'a self, net: &IpNet) -> impl Iterator<Item = IpNet> + use<'a> {
        let net = net.trunc();
        let first = IpNet::new(net.network(), 0).expect("0 is a valid prefix");
        let last = IpNet::new(net.broadcast(), net.max_prefix_len()).expect("a host prefix");
        let inside = self
            .bans
            .range(first..=last)
            .map(|(n, _)| *n)
            .filter(move |n| net.contains(n));
        let lengths: &[u32] = match net {
            IpNet::V4(_) => &self.lengths_v4,
            IpNet::V6(_) => &self.lengths_v6,
        };
        let around = (0..net.prefix_len())
            .filter(move |p| lengths[usize::from(*p)] > 0)
            .filter_map(move |p| IpNet::new(net.addr(), p).ok())
            .map(|n| n.trunc())
            .filter(|n| self.bans.contains_key(n));
        inside.chain(around)
    }

    /// Whether a ban of a prefix shorter than `min_v4` (IPv4) or `min_v6` (IPv6) is on
    /// record.
    pub fn any_shorter(&self, min_v4: u8, min_v6: u8) -> bool {
        let used = |lengths: &[u32], min: u8| lengths.iter().take(usize::from(min)).any(|n| *n > 0);
        used(&self.lengths_v4, min_v4) || used(&self.lengths_v6, min_v6)
    }

    /// The record of `net`'s ban, if it has one.
    pub fn record(&self, net: &IpNet) -> Option<&Rec> {
        self.bans.get(net)
    }

    /// The ban of `net` or of a network that contains it, if any (one lookup per prefix
    /// length in use, longest first).
    pub fn covering_net(&self, net: &IpNet) -> Option<Ban> {
        let lengths: &[u32] = match net {
            IpNet::V4(_) => &self.lengths_v4,
            IpNet::V6(_) => &self.lengths_v6,
        };
        (0..=net.prefix_len())
            .rev()
            .filter(|p| lengths[usize::from(*p)] > 0)
            .filter_map(|p| IpNet::new(net.addr(), p).ok())
            .find_map(|n| self.get(&n.trunc()))
    }

    /// The ban that covers `ip` (its own, or a prefix's), if any.
    pub fn covering(&self, ip: IpAddr) -> Option<Ban> {
        self.covering_net(&IpNet::from(ip))
    }

    /// How many bans `net` has had (before the next one); a CrowdSec decision's ban in
    /// force is not one of them.
    pub fn times_banned(&self, net: &IpNet) -> u32 {
        let now = self
            .bans
            .get(net)
            .filter(|r| !r.is_crowdsec())
            .map_or(0, |r| r.count);
        now.max(self.previous.get(net).copied().unwrap_or(0))
    }

    /// Records a ban (replacing one of the same network) and counts it for `net`. A
    /// CrowdSec decision's ban is not counted: it lasts as the decision says, and such
    /// bans come and go by the thousand a day, each network's count kept for good
    /// otherwise; the count the network had stays for its next ban of another kind.
    pub fn insert(&mut self, ban: Ban) {
        self.insert_with(ban, 0);
    }

    /// [`BanStore::insert`] with the record's `flags` ([`Rec::KILLS_DUE`]).
    pub fn insert_with(&mut self, ban: Ban, flags: u8) {
        let rec = Rec {
            flags,
            ..Rec::of(&ban)
        };
        if ban.origin != BanOrigin::CrowdSec {
            self.previous.remove(&ban.net);
        }
        let old = self.bans.insert(ban.net, rec);
        self.ends.follow(&self.bans, ban.net, old, Some(rec));
        if old.is_none() {
            *self.length_slot(&ban.net) += 1;
        }
    }

    /// Records the name a banned network was logged under (nothing when it is the
    /// address it would be logged under anyway, or the network is not banned).
    pub fn set_name(&mut self, net: &IpNet, name: &str) {
        let Some(ban) = self.get(net) else {
            return;
        };
        let old = if name == ban.default_name() {
            self.names.remove(net)
        } else {
            self.names_bytes += name.len();
            self.names.insert(*net, name.into())
        };
        self.names_bytes -= old.map_or(0, |n| n.len());
    }

    /// How many names are recorded, and their bytes.
    pub fn names_size(&self) -> (usize, usize) {
        (self.names.len(), self.names_bytes)
    }

    /// The resolved name recorded for `net`, if any (else its name is its address).
    pub fn resolved_name(&self, net: &IpNet) -> Option<&str> {
        self.names.get(net).map(|n| &**n)
    }

    /// The name a banned network was logged under: its resolved name, or its address.
    pub fn name_of(&self, ban: &Ban) -> Cow<'_, str> {
        match self.names.get(&ban.net) {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(ban.default_name()),
        }
    }

    /// The resolved names recorded (for the journal).
    pub fn names(&self) -> impl Iterator<Item = (&IpNet, &str)> {
        self.names.iter().map(|(n, s)| (n, &**s))
    }

    pub fn remove(&mut self, net: &IpNet) -> Option<Ban> {
        let rec = self.bans.remove(net)?;
        self.ends.follow(&self.bans, *net, Some(rec), None);
        *self.length_slot(net) -= 1;
        if let Some(name) = self.names.remove(net) {
            self.names_bytes -= name.len();
        }
        if !rec.is_crowdsec() {
            let c = self.previous.entry(*net).or_insert(0);
            *c = (*c).max(rec.count);
        }
        rec.ban(*net)
    }

    /// Networks whose ban has run out by `now`, in the order of networks; one stays
    /// due until removed. Reads only the bans that end in the seconds up to `now`
    /// ([`Ends`]), so the once-a-second call costs nothing between expiries and little
    /// at them.
    pub fn expired(&mut self, now: SystemTime) -> Vec<IpNet> {
        self.ends.due(&self.bans, unix_ms(now))
    }

    /// Entries of the expiry index (the timed bans, due ones not lifted yet among them,
    /// and lifted or replaced bans whose end has not come yet): for the memory bench.
    pub fn expiry_entries(&self) -> usize {
        self.ends.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = Ban> + '_ {
        self.bans.iter().filter_map(|(n, r)| r.ban(*n))
    }

    /// The records, ordered by network (for the journal).
    pub fn records(&self) -> impl Iterator<Item = (&IpNet, &Rec)> {
        self.bans.iter()
    }

    /// How many bans networks not banned now have had (for the journal).
    pub fn previous(&self) -> impl Iterator<Item = (&IpNet, &u32)> {
        self.previous.iter()
    }

    pub fn previous_len(&self) -> usize {
        self.previous.len()
    }

    /// Notes that the kill commands of the ban of `net` made at `since` have run;
    /// whether they were due.
    pub fn kills_done(&mut self, net: &IpNet, since: SystemTime) -> bool {
        match self.bans.get_mut(net) {
            Some(r) if r.kills_due() && r.since_ms == unix_ms(since) => {
                r.flags &= !Rec::KILLS_DUE;
                true
            }
            _ => false,
        }
    }

    /// The bans whose kill commands were due when the store was read and still are
    /// ([`Rec::KILLS_DUE`]), in the order of networks: once, at a start.
    pub fn take_kills_due(&mut self) -> Vec<Ban> {
        std::mem::take(&mut self.kills_due_at_load)
            .into_iter()
            .filter_map(|n| self.bans.get(&n).filter(|r| r.kills_due())?.ban(n))
            .collect()
    }

    /// Notes that the undo steps of `ban`, lifted (or replaced), are due.
    pub fn add_undo(&mut self, ban: &Ban) {
        self.add_undo_record(ban.net, Rec::of(ban));
    }

    pub(super) fn add_undo_record(&mut self, net: IpNet, rec: Rec) {
        self.undos.insert((net, rec.since_ms), rec);
    }

    /// Notes that the undo steps of `ban` have run; whether they were due.
    pub fn remove_undo(&mut self, ban: &Ban) -> bool {
        self.undos.remove(&(ban.net, unix_ms(ban.since))).is_some()
    }

    /// The lifted bans whose undo steps are due, in the order of networks.
    pub fn undos(&self) -> Vec<Ban> {
        self.undos
            .iter()
            .filter_map(|((net, _), r)| r.ban(*net))
            .collect()
    }

    /// The records of those bans (for the journal).
    pub fn undo_records(&self) -> impl Iterator<Item = (&IpNet, &Rec)> {
        self.undos.iter().map(|((net, _), r)| (net, r))
    }

    pub fn undos_len(&self) -> usize {
        self.undos.len()
    }

    /// How many bans have their kill commands due, of those that had when the store was
    /// read (for `status`); a CrowdSec decision's only with `crowdsec_kills` (else a start
    /// notes them done and runs nothing).
    pub fn kills_due_len(&self, crowdsec_kills: bool) -> usize {
        self.kills_due_at_load
            .iter()
            .filter(|n| {
                self.bans
                    .get(n)
                    .is_some_and(|r| r.kills_due() && (crowdsec_kills || !r.is_crowdsec()))
            })
            .count()
    }

    /// Restores a ban count (from the journal).
    pub fn set_previous(&mut self, net: IpNet, count: u32) {
        if self
            .bans
            .get(&net)
            .is_some_and(|r| !r.is_crowdsec() && r.count >= count)
        {
            return;
        }
        let c = self.previous.entry(net).or_insert(0);
        *c = (*c).max(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn durations() {
        assert_eq!(ban_duration(Duration::ZERO, 2, H, 3), None);
        assert_eq!(ban_duration(H, 1, Duration::ZERO, 5), Some(H));
        assert_eq!(ban_duration(H, 2, Duration::ZERO, 1), Some(H));
        assert_eq!(ban_duration(H, 2, Duration::ZERO, 3), Some(4 * H));
        assert_eq!(ban_duration(H, 4, 10 * H, 3), Some(10 * H));
        // Grown past any date the clock holds (it panicked the daemon): the longest.
        assert_eq!(ban_duration(H, 100, Duration::ZERO, 1000), Some(LONGEST));
        assert_eq!(ban_duration(H, 100, Duration::MAX, 1000), Some(LONGEST));
        assert_eq!(
            ban_duration(Duration::MAX, 1, Duration::ZERO, 1),
            Some(LONGEST)
        );
    }

    fn ban(net: &str, count: u32, expires: Option<SystemTime>) -> Ban {
        Ban {
            net: net.parse().unwrap(),
            origin: BanOrigin::Scan,
            since: SystemTime::now(),
            expires,
            port: 22,
            proto: Some(Protocol::Tcp),
            scan_type: Some(ScanType::TcpSyn),
            mode: Some(ModeToken::Atcp),
            count,
            escalated: None,
        }
    }

    #[test]
    fn a_record_makes_the_kernel_entry_its_ban_makes() {
        let clocks = clock::Anchor::now();
        let now = SystemTime::now();
        // Times a record keeps (to the millisecond): in the past, ahead, permanent.
        let ms = |t: SystemTime| from_unix_ms(unix_ms(t));
        for expires in [
            None,
            Some(ms(now + Duration::from_secs(90))),
            Some(ms(now - Duration::from_secs(5))),
        ] {
            let mut b = ban("192.0.2.7/32", 3, expires);
            b.since = ms(now - Duration::from_millis(1500));
            let rec = Rec::of(&b);
            assert_eq!(
                rec.kernel_entry_at(&clocks),
                Some(b.kernel_entry_at(&clocks)),
                "{expires:?}"
            );
        }
        let mut rec = Rec::of(&ban("192.0.2.7/32", 1, None));
        rec.origin = 200;
        assert_eq!(rec.kernel_entry_at(&clocks), None);
    }

    #[test]
    fn a_record_is_valid_when_it_makes_a_ban() {
        let net: IpNet = "192.0.2.7/32".parse().unwrap();
        let good = Rec::of(&ban("192.0.2.7/32", 1, None));
        // Every value of each checked field, the others valid.
        let fields: [fn(&mut Rec, u8); 4] = [
            |r, v| r.origin = v,
            |r, v| r.scan_type = v,
            |r, v| r.proto = v,
            |r, v| r.mode = v,
        ];
        for (i, set) in fields.iter().enumerate() {
            for v in 0..=u8::MAX {
                let mut rec = good;
                set(&mut rec, v);
                assert_eq!(rec.is_valid(), rec.ban(net).is_some(), "field {i} = {v}");
            }
        }
    }

    #[test]
    fn store() {
        let mut s = BanStore::new();
        let past = SystemTime::now() - Duration::from_secs(1);
        s.insert(ban("192.0.2.7/32", 1, None));
        s.insert(ban("198.51.100.0/24", 1, Some(past)));
        assert_eq!(s.len(), 2);
        assert!(s.covering("192.0.2.7".parse().unwrap()).is_some());
        assert!(s.covering("198.51.100.9".parse().unwrap()).is_some());
        assert!(s.covering("192.0.2.8".parse().unwrap()).is_none());
        let nets = |n: &str| -> Vec<String> {
            s.within(&n.parse().unwrap())
                .map(|b| b.net.to_string())
                .collect()
        };
        assert_eq!(nets("192.0.2.0/24"), ["192.0.2.7/32"]);
        assert_eq!(nets("192.0.2.7/32"), ["192.0.2.7/32"]);
        assert!(nets("192.0.2.8/29").is_empty());
        assert_eq!(nets("198.51.0.0/16"), ["198.51.100.0/24"]);
        assert!(
            nets("198.51.100.128/25").is_empty(),
            "wider bans are not inside"
        );
        assert!(nets("2001:db8::/32").is_empty(), "the families do not mix");
        let covering = |n: &str| {
            s.covering_net(&n.parse().unwrap())
                .map(|b| b.net.to_string())
        };
        assert_eq!(
            covering("198.51.100.0/24").as_deref(),
            Some("198.51.100.0/24")
        );
        assert_eq!(
            covering("198.51.100.64/26").as_deref(),
            Some("198.51.100.0/24")
        );
        assert_eq!(covering("198.51.0.0/16"), None);
        assert_eq!(covering("192.0.2.7/32").as_deref(), Some("192.0.2.7/32"));
        assert_eq!(covering("192.0.2.0/24"), None);
        assert_eq!(
            s.expired(SystemTime::now()),
            vec!["198.51.100.0/24".parse().unwrap()]
        );
        let net = "192.0.2.7/32".parse().unwrap();
        assert!(s.remove(&net).is_some());
        assert_eq!(s.times_banned(&net), 1, "the count outlives the ban");
        assert!(s.covering("192.0.2.7".parse().unwrap()).is_none());
    }

    /// The expiry check finds each ban at its end, never before and never missed: an
    /// earlier expiry inserted after a check is found at its time.
    #[test]
    fn expiry_is_checked_against_the_earliest_due() {
        let mut s = BanStore::new();
        let now = SystemTime::now();
        s.insert(ban("192.0.2.1/32", 1, None));
        assert!(
            s.expired(now + 1000 * H).is_empty(),
            "a permanent ban never expires"
        );
        s.insert(ban("192.0.2.2/32", 1, Some(now + 2 * H)));
        s.insert(ban("192.0.2.3/32", 1, Some(now + 3 * H)));
        assert!(s.expired(now + H).is_empty());
        let two: IpNet = "192.0.2.2/32".parse().unwrap();
        assert_eq!(s.expired(now + 2 * H), vec![two]);
        // Still due until lifted; the bound is not moved past it.
        assert_eq!(s.expired(now + 2 * H), vec![two]);
        s.remove(&two);
        assert!(s.expired(now + 2 * H).is_empty());
        s.insert(ban("192.0.2.4/32", 1, Some(now + H / 2)));
        assert_eq!(
            s.expired(now + H),
            vec!["192.0.2.4/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(s.expired(now + 4 * H).len(), 2);
    }

    /// The index of ends follows replaced and lifted bans: a ban is due at its own end
    /// (a replacement's, not the one it replaced), once, to the millisecond within its
    /// second, in the order of networks.
    #[test]
    fn expiry_follows_replaced_and_lifted_bans() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let mut s = BanStore::new();
        let t = 1_900_000_000_000u64;
        // Replaced by a ban that ends later: not due at the old end.
        s.insert(ban("192.0.2.1/32", 1, Some(at(t))));
        s.insert(ban("192.0.2.1/32", 1, Some(at(t + 5_000))));
        assert!(s.expired(at(t + 1)).is_empty());
        assert_eq!(s.expired(at(t + 5_000)), vec![net("192.0.2.1/32")]);
        s.remove(&net("192.0.2.1/32"));
        // Replaced by one that ends earlier: due at the earlier end, once.
        s.insert(ban("192.0.2.2/32", 1, Some(at(t + 9_000))));
        s.insert(ban("192.0.2.2/32", 1, Some(at(t + 7_000))));
        assert_eq!(s.expired(at(t + 7_000)), vec![net("192.0.2.2/32")]);
        s.remove(&net("192.0.2.2/32"));
        assert!(
            s.expired(at(t + 9_000)).is_empty(),
            "lifted: its old entry is dropped"
        );
        // The wall clock set back: a ban taken out as due in its second, before its
        // millisecond, is found at its end all the same.
        s.insert(ban("192.0.2.5/32", 1, Some(at(t + 10_500))));
        assert!(s.expired(at(t + 10_100)).is_empty());
        assert!(s.expired(at(t - 60_000)).is_empty());
        assert_eq!(s.expired(at(t + 10_500)), vec![net("192.0.2.5/32")]);
        s.remove(&net("192.0.2.5/32"));
        // Lifted and banned again to the same end: reported once.
        s.insert(ban("192.0.2.3/32", 1, Some(at(t + 11_000))));
        s.remove(&net("192.0.2.3/32"));
        s.insert(ban("192.0.2.3/32", 1, Some(at(t + 11_000))));
        // Within one second: due only from its millisecond on.
        s.insert(ban("192.0.2.4/32", 1, Some(at(t + 11_700))));
        s.insert(ban("192.0.2.0/24", 1, Some(at(t + 11_000))));
        assert!(s.expired(at(t + 10_999)).is_empty());
        assert_eq!(
            s.expired(at(t + 11_500)),
            vec![net("192.0.2.0/24"), net("192.0.2.3/32")]
        );
        assert_eq!(
            s.expired(at(t + 11_700)),
            vec![
                net("192.0.2.0/24"),
                net("192.0.2.3/32"),
                net("192.0.2.4/32")
            ],
            "due until lifted"
        );
        // A ban that ended before it was recorded (restored late) is due at once.
        s.insert(ban("198.51.100.1/32", 1, Some(at(t))));
        assert_eq!(s.expired(at(t + 11_700)).len(), 4);
    }

    /// Entries of lifted bans do not pile up: the index stays within twice the timed
    /// bans (and a margin), and still finds every ban at its end.
    #[test]
    fn expiry_entries_of_lifted_bans_are_dropped() {
        let mut s = BanStore::new();
        let t = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        s.insert(ban("198.51.100.1/32", 1, Some(t + H)));
        for i in 0..50_000u32 {
            let net = IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            s.insert(Ban {
                net,
                ..ban("10.0.0.0/32", 1, Some(t + H / 2))
            });
            s.remove(&net);
        }
        assert!(
            s.expiry_entries() <= 2 + 4096,
            "{} entries for one timed ban",
            s.expiry_entries()
        );
        assert!(s.expired(t + H / 2).is_empty());
        assert_eq!(
            s.expired(t + H),
            vec!["198.51.100.1/32".parse::<IpNet>().unwrap()]
        );
    }

    /// An address's ban is looked up at the prefix lengths in use, which follow inserts
    /// and removals; a name is kept only when it is not the address.
    #[test]
    fn covering_follows_the_lengths_in_use_and_names_are_kept_aside() {
        let mut s = BanStore::new();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        s.insert(ban("198.51.100.0/24", 1, None));
        s.insert(ban("198.51.0.0/16", 1, None));
        assert_eq!(s.covering(ip).unwrap().net.to_string(), "198.51.100.0/24");
        s.remove(&"198.51.100.0/24".parse().unwrap());
        assert_eq!(s.covering(ip).unwrap().net.to_string(), "198.51.0.0/16");
        s.remove(&"198.51.0.0/16".parse().unwrap());
        assert!(s.covering(ip).is_none());
        assert!(s.lengths_v4.iter().all(|n| *n == 0));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        s.insert(ban("2001:db8::/64", 1, None));
        assert!(s.covering(v6).is_some());
        assert!(s.covering(ip).is_none(), "the families do not mix");

        let host: IpNet = "192.0.2.7/32".parse().unwrap();
        s.insert(ban("192.0.2.7/32", 1, None));
        s.set_name(&host, "192.0.2.7");
        assert_eq!(s.names().count(), 0, "the address is not kept as a name");
        s.set_name(&host, "scanner.example");
        let b = s.get(&host).unwrap();
        assert_eq!(s.name_of(&b), "scanner.example");
        s.remove(&host);
        assert_eq!(s.names().count(), 0, "the name goes with the ban");
        assert_eq!(s.times_banned(&host), 1);
        s.insert(ban("192.0.2.7/32", 2, None));
        assert_eq!(s.times_banned(&host), 2);
        assert!(
            s.previous().all(|(n, _)| *n != host),
            "a banned network's count is in its record"
        );
        s.remove(&host);
        assert_eq!(s.times_banned(&host), 2);

        // CrowdSec's bans are not counted: none is remembered once lifted, and the count
        // a network had stays for its next ban.
        let since = SystemTime::now();
        let decision = |net: &str| Ban::of_decision(net.parse().unwrap(), since, since + H);
        s.insert(decision("198.51.100.9/32"));
        s.remove(&"198.51.100.9/32".parse().unwrap());
        s.insert(decision("192.0.2.7/32"));
        assert_eq!(
            s.times_banned(&host),
            2,
            "the decision's ban does not count"
        );
        s.remove(&host);
        assert_eq!(s.times_banned(&host), 2);
        assert!(
            s.previous()
                .all(|(n, _)| n.to_string() != "198.51.100.9/32")
        );
    }

    #[test]
    fn kernel_entry_round_trips_times() {
        let b = ban("192.0.2.7/32", 2, Some(SystemTime::now() + H));
        let e = b.kernel_entry();
        let back = clock::to_system(e.expires_ns);
        let want = b.expires.unwrap();
        let diff = back.duration_since(want).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(50), "{diff:?}");
        assert_eq!(
            (e.port, e.scan_type, e.count),
            (22, ScanType::TcpSyn as u8, 2)
        );
        assert_eq!(ban("192.0.2.7/32", 1, None).kernel_entry().expires_ns, 0);
    }
}
