//! Bans: every ban in force with what caused it ([`Ban`], [`BanStore`]), how long a ban
//! lasts ([`ban_duration`]), the one place that changes them ([`book::Book`]), the
//! operator's actions on them ([`ops`]), the ban of a crowded network ([`escalate`]) and
//! their file ([`state`]). The kernel maps are
//! the enforcement; this is the record the daemon keeps beside them.

pub mod book;
pub mod escalate;
pub mod guard;
pub mod ops;
pub mod state;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use portsentry_common::{
    ScanType,
    maps::{BanEntry, BanOrigin},
};

use crate::{
    clock,
    kinds::{self, ModeToken, Protocol},
};

pub use book::Book;

/// One ban.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The name the host was logged under (resolved name, or the address).
    pub name: String,
    /// How many times this network has been banned, this ban included.
    pub count: u32,
    /// `Some(n)`: an escalation, the ban of a network put in force when `n` of its hosts
    /// were banned ([`escalate`]); the kernel holds it as a scan ban.
    pub escalated: Option<u32>,
}

impl Ban {
    /// The kernel's copy of this ban.
    pub fn kernel_entry(&self) -> BanEntry {
        BanEntry {
            expires_ns: self.expires.map_or(0, clock::from_system),
            since_ns: clock::from_system(self.since),
            port: self.port,
            scan_type: self.scan_type.map_or(0, |t| t as u8),
            origin: self.origin as u8,
            count: self.count,
        }
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// Whether ending this ban runs undo steps (UNKILL_*): only a scan ban of one host
    /// ran kill commands (an escalation runs none).
    pub fn has_undo(&self) -> bool {
        self.origin == BanOrigin::Scan
            && self.escalated.is_none()
            && self.net.prefix_len() == self.net.max_prefix_len()
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
/// power `nth - 1`, capped at `max` (0: no cap). A zero `base` means permanent (`None`).
pub fn ban_duration(base: Duration, factor: u32, max: Duration, nth: u32) -> Option<Duration> {
    if base.is_zero() {
        return None;
    }
    let mut d = base;
    for _ in 1..nth {
        d = d.saturating_mul(factor.max(1));
        if !max.is_zero() && d >= max {
            break;
        }
    }
    Some(if max.is_zero() { d } else { d.min(max) })
}

/// The bans in force, and how often each network has been banned before.
#[derive(Default, Debug)]
pub struct BanStore {
    bans: BTreeMap<IpNet, Ban>,
    previous: HashMap<IpNet, u32>,
}

impl BanStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    pub fn get(&self, net: &IpNet) -> Option<&Ban> {
        self.bans.get(net)
    }

    /// The bans of networks that lie inside `net` (`net`'s own included).
    pub fn within<'a>(&'a self, net: &IpNet) -> impl Iterator<Item = &'a Ban> + use<'a> {
        let net = net.trunc();
        // Ordered by address, then prefix length: every network inside `net` has its
        // address between `net`'s first and last.
        let first = IpNet::new(net.network(), 0).expect("0 is a valid prefix");
        let last = IpNet::new(net.broadcast(), net.max_prefix_len()).expect("a host prefix");
        self.bans
            .range(first..=last)
            .map(|(_, b)| b)
            .filter(move |b| net.contains(&b.net))
    }

    /// The ban of `net` or of a network that contains it, if any (one lookup a prefix
    /// length).
    pub fn covering_net(&self, net: &IpNet) -> Option<&Ban> {
        (0..=net.prefix_len())
            .rev()
            .filter_map(|p| IpNet::new(net.addr(), p).ok())
            .find_map(|n| self.bans.get(&n.trunc()))
    }

    /// The ban that covers `ip` (its own, or a prefix's), if any.
    pub fn covering(&self, ip: IpAddr) -> Option<&Ban> {
        self.bans
            .get(&IpNet::from(ip))
            .or_else(|| self.bans.values().find(|b| b.net.contains(&ip)))
    }

    /// How many bans `net` has had (before the next one).
    pub fn times_banned(&self, net: &IpNet) -> u32 {
        self.previous.get(net).copied().unwrap_or(0)
    }

    /// Records a ban (replacing one of the same network) and counts it for `net`.
    pub fn insert(&mut self, ban: Ban) {
        self.previous.insert(ban.net, ban.count);
        self.bans.insert(ban.net, ban);
    }

    /// Records the name a banned network was logged under.
    pub fn set_name(&mut self, net: &IpNet, name: &str) {
        if let Some(b) = self.bans.get_mut(net) {
            b.name = name.to_owned();
        }
    }

    pub fn remove(&mut self, net: &IpNet) -> Option<Ban> {
        self.bans.remove(net)
    }

    /// Networks whose ban has run out by `now`.
    pub fn expired(&self, now: SystemTime) -> Vec<IpNet> {
        self.bans
            .values()
            .filter(|b| b.is_expired(now))
            .map(|b| b.net)
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Ban> {
        self.bans.values()
    }

    /// How many bans each network has had (for the state file).
    pub fn previous(&self) -> impl Iterator<Item = (&IpNet, &u32)> {
        self.previous.iter()
    }

    /// Restores a ban count (from the state file).
    pub fn set_previous(&mut self, net: IpNet, count: u32) {
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
        assert_eq!(
            ban_duration(H, 100, Duration::ZERO, 1000),
            Some(Duration::MAX)
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
            name: net.into(),
            count,
            escalated: None,
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
