//! Escalation: when `ESCALATE_AFTER` hosts of one wider network (`ESCALATE_PREFIX_V4`,
//! `ESCALATE_PREFIX_V6`) are banned within `ESCALATE_WINDOW`, one ban of the network
//! replaces theirs (see `docs/configuration.md`, "Escalation").
//!
//! - **Counted**: the scan bans in the book that lie strictly inside the network and
//!   began within the window, so the memory is the book's own; an operator's ban and an
//!   escalation never count.
//! - **Guarded**: the network ban goes through [`Book::put`], so the ban guard's rules
//!   apply (the ignore list, this host's addresses, loopback, `BAN_MIN_PREFIX_*`); a
//!   refusal leaves the narrow bans as they are.
//! - **Bounded**: a network with a ban of its own (or inside a banned network) is never
//!   escalated again; its later hosts are dropped by that ban and never reach the count.
//! - **Replacing**: the scan bans inside the network are lifted (their undo steps are the
//!   caller's to run), except those whose response still runs its kill steps: undoing a
//!   step before it is done would leave it in place for good, so those bans stay, covered,
//!   until they expire. A host ban that ends after the network's (a repeat offender's)
//!   stays too: the host stays banned until its own end.
//! - **Undone**: the network ban lasts `BAN_TIME` (grown for a repeat, as any ban) and
//!   expires like any other; it runs no kill command and so no undo step.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use portsentry_common::maps::BanOrigin;

use super::{Ban, BanStore, Book, Cause, ScanCause, guard::Refusal};
use crate::config::Config;

/// Refused networks remembered so that each is logged once; past this many the memory
/// starts again (and a network may be logged a second time).
const MAX_REFUSALS_REMEMBERED: usize = 1024;

/// The escalation settings of a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Banned hosts of one network that make a ban of the network (at least 2).
    pub after: u32,
    /// The bans counted began within this; zero: every ban in force counts.
    pub window: Duration,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

impl Settings {
    /// The settings of `config`; `None` when escalation is off (`ESCALATE_AFTER` 0).
    pub fn new(config: &Config) -> Option<Settings> {
        (config.escalate_after > 0).then(|| Settings {
            after: config.escalate_after,
            window: config.escalate_window,
            prefix_v4: u8::try_from(config.escalate_prefix_v4.min(32)).expect("at most 32"),
            prefix_v6: u8::try_from(config.escalate_prefix_v6.min(128)).expect("at most 128"),
        })
    }

    /// The network a ban of `net` escalates to; `None` when `net` is that wide already.
    pub fn network(&self, net: &IpNet) -> Option<IpNet> {
        let prefix = match net {
            IpNet::V4(_) => self.prefix_v4,
            IpNet::V6(_) => self.prefix_v6,
        };
        (net.prefix_len() > prefix).then(|| {
            IpNet::new(net.addr(), prefix)
                .expect("a prefix shorter than the ban's is valid")
                .trunc()
        })
    }

    /// `within 10m`, or nothing when every ban in force counts.
    pub fn describe_window(&self) -> String {
        if self.window.is_zero() {
            String::new()
        } else {
            format!(" within {}", humantime::format_duration(self.window))
        }
    }
}

/// Whether `ban` is one an escalation counts and replaces: a scan ban (not an
/// escalation) strictly inside `network`.
fn replaceable(ban: &Ban, network: &IpNet) -> bool {
    ban.origin == BanOrigin::Scan
        && ban.escalated.is_none()
        && ban.net.prefix_len() > network.prefix_len()
        && network.contains(&ban.net)
}

/// Whether `ban` ends after `other` (a permanent ban after any timed one).
fn outlasts(ban: &Ban, other: &Ban) -> bool {
    match (ban.expires, other.expires) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
        (_, None) => false,
    }
}

/// The bans that count toward escalating `network` at `now`: its hosts' scan bans that
/// began within the window.
pub fn counted<'a>(
    store: &'a BanStore,
    settings: &Settings,
    network: &IpNet,
    now: SystemTime,
) -> impl Iterator<Item = Ban> + 'a {
    let from = (!settings.window.is_zero()).then(|| now - settings.window);
    let network = *network;
    store
        .within(&network)
        .filter(move |b| replaceable(b, &network))
        .filter(move |b| from.is_none_or(|from| b.since >= from))
}

/// What [`after_ban`] did.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing: escalation is off, too few hosts are banned, the ban is as wide as the
    /// network, or the network is banned already.
    Nothing,
    /// The ban guard refused the ban of `network`; the hosts' bans stay.
    Refused {
        network: IpNet,
        hosts: u32,
        refusal: Refusal,
    },
    /// The ban of the network is in force.
    Escalated {
        ban: Ban,
        /// The bans it replaced, lifted: their undo steps are the caller's to run.
        replaced: Vec<Ban>,
        /// Bans left in force (covered) because their response still runs.
        kept: Vec<IpNet>,
        /// Bans whose lift failed (they stay, covered), with why.
        failed: Vec<(IpNet, anyhow::Error)>,
    },
}

/// After a scan ban of (a network holding) `ip` was put in force: bans its wider
/// network when enough of the network's hosts are banned. `busy` says whether a ban's
/// response is still running (such a ban is kept, see the module's doc).
pub fn after_ban(
    book: &mut Book,
    config: &Config,
    ip: IpAddr,
    scan: ScanCause,
    now: SystemTime,
    busy: impl Fn(&IpNet) -> bool,
) -> Result<Outcome> {
    let Some(settings) = Settings::new(config) else {
        return Ok(Outcome::Nothing);
    };
    // The narrowest ban holding `ip`: the scan ban just made, or a wider one that
    // already covers it.
    let Some(banned) = book.store.covering_net(&IpNet::from(ip)) else {
        return Ok(Outcome::Nothing);
    };
    let Some(network) = settings.network(&banned.net) else {
        return Ok(Outcome::Nothing);
    };
    if !replaceable(&banned, &network) || book.store.covering_net(&network).is_some() {
        return Ok(Outcome::Nothing);
    }
    let hosts = counted(&book.store, &settings, &network, now).count();
    if hosts < settings.after as usize {
        return Ok(Outcome::Nothing);
    }
    let hosts = u32::try_from(hosts).unwrap_or(u32::MAX);
    let ban = book.new_ban(
        config,
        network,
        Cause::Escalation { scan, hosts },
        None,
        now,
    );
    if let Err(e) = book.put(ban, false) {
        return match e.downcast::<Refusal>() {
            Ok(refusal) => Ok(Outcome::Refused {
                network,
                hosts,
                refusal,
            }),
            Err(e) => Err(e).with_context(|| format!("banning the network {network}")),
        };
    }
    // A host ban that outlasts the network's (a repeat offender's longer ban) is not
    // replaced: lifting it would free the host when the network ban ends.
    let inside: Vec<IpNet> = book
        .store
        .within(&network)
        .filter(|b| replaceable(b, &network) && !outlasts(b, &ban))
        .map(|b| b.net)
        .collect();
    let (mut replaced, mut kept, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for net in inside {
        if busy(&net) {
            kept.push(net);
            continue;
        }
        match book.lift(&net) {
            Ok(Some(b)) => replaced.push(b),
            Ok(None) => {}
            Err(e) => failed.push((net, e)),
        }
    }
    Ok(Outcome::Escalated {
        ban,
        replaced,
        kept,
        failed,
    })
}

/// The daemon's memory for escalations: the hosts whose response is running, and the
/// networks whose refusal was logged.
#[derive(Debug, Default)]
pub struct Tracker {
    running: HashMap<IpAddr, u32>,
    refused: HashSet<IpNet>,
}

impl Tracker {
    /// A response to `ip` started.
    pub fn start(&mut self, ip: IpAddr) {
        *self.running.entry(ip).or_insert(0) += 1;
    }

    /// A response to `ip` ended.
    pub fn finish(&mut self, ip: IpAddr) {
        if let Some(n) = self.running.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(&ip);
            }
        }
    }

    /// The addresses whose response is running.
    pub fn running(&self) -> Vec<IpAddr> {
        self.running.keys().copied().collect()
    }

    /// Whether the refusal of `network` is to be logged (the first time it is refused).
    pub fn first_refusal(&mut self, network: IpNet) -> bool {
        if self.refused.len() >= MAX_REFUSALS_REMEMBERED && !self.refused.contains(&network) {
            self.refused.clear();
        }
        self.refused.insert(network)
    }
}

#[cfg(test)]
mod tests {
    use portsentry_common::ScanType;

    use super::*;
    use crate::{
        bans::guard::{Guard, Why},
        kinds::ModeToken,
    };

    const MIN: Duration = Duration::from_secs(60);

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const SCAN: ScanCause = ScanCause {
        port: 23,
        scan_type: ScanType::TcpSyn,
        mode: ModeToken::Atcp,
    };

    fn config(dir: &std::path::Path, after: u32) -> Config {
        Config {
            state_dir: dir.to_path_buf(),
            blocked_file: dir.join("blocked"),
            ban_time: Duration::from_secs(3600),
            escalate_after: after,
            ..Config::default()
        }
    }

    /// A book with no kernel, whose guard protects `protected` (as the ignore list).
    fn book(config: &Config, protected: &[&str]) -> Book {
        let mut guard = Guard::limits(config);
        for p in protected {
            guard.protect(ip(p), Why::IgnoreList);
        }
        Book::new(None, BanStore::new(), None, config, guard)
    }

    /// A scan ban of `host` made at `at`.
    fn scan_ban(book: &mut Book, config: &Config, host: &str, at: SystemTime) {
        let b = book.new_ban(config, net(host), Cause::Scan(SCAN), None, at);
        book.put(b, false).unwrap();
    }

    fn escalate(book: &mut Book, config: &Config, host: &str, now: SystemTime) -> Outcome {
        after_ban(book, config, ip(host), SCAN, now, |_| false).unwrap()
    }

    fn nets(book: &Book) -> Vec<String> {
        book.store.iter().map(|b| b.net.to_string()).collect()
    }

    #[test]
    fn settings() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::new(&config(dir.path(), 0)), None, "off");
        let s = Settings::new(&config(dir.path(), 3)).unwrap();
        assert_eq!((s.after, s.prefix_v4, s.prefix_v6), (3, 24, 48));
        assert_eq!(s.describe_window(), " within 10m");
        assert_eq!(
            s.network(&net("198.51.100.77/32")),
            Some(net("198.51.100.0/24"))
        );
        assert_eq!(
            s.network(&net("2001:db8:1:2::/64")),
            Some(net("2001:db8:1::/48"))
        );
        assert_eq!(s.network(&net("198.51.100.0/24")), None, "as wide already");
        assert_eq!(s.network(&net("198.51.0.0/16")), None);
        let all = Settings {
            window: Duration::ZERO,
            ..s
        };
        assert_eq!(all.describe_window(), "");
    }

    /// A host ban that ends after the network's (a repeat offender's longer ban, a
    /// permanent one) is not replaced: the network ban's end would free the host early.
    #[test]
    fn a_host_ban_that_outlasts_the_network_ban_stays() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 3);
        let mut b = book(&c, &[]);
        let now = SystemTime::now();
        let long = b.new_ban(
            &c,
            net("198.51.100.10/32"),
            Cause::Scan(SCAN),
            Some(Duration::from_secs(16 * 3600)),
            now - MIN,
        );
        b.put(long, false).unwrap();
        let forever = b.new_ban(
            &c,
            net("198.51.100.11/32"),
            Cause::Scan(SCAN),
            Some(Duration::ZERO),
            now - MIN,
        );
        b.put(forever, false).unwrap();
        scan_ban(&mut b, &c, "198.51.100.12/32", now);
        let Outcome::Escalated { ban, replaced, .. } = escalate(&mut b, &c, "198.51.100.12", now)
        else {
            panic!("no escalation at the third host");
        };
        assert_eq!(ban.expires, Some(now + Duration::from_secs(3600)));
        let lifted: Vec<String> = replaced.iter().map(|b| b.net.to_string()).collect();
        assert_eq!(lifted, ["198.51.100.12/32"]);
        let mut left = nets(&b);
        left.sort();
        assert_eq!(
            left,
            ["198.51.100.0/24", "198.51.100.10/32", "198.51.100.11/32"]
        );
    }

    #[test]
    fn the_nth_host_of_a_network_bans_the_network_and_replaces_the_host_bans() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 3);
        let mut b = book(&c, &[]);
        let now = SystemTime::now();
        scan_ban(&mut b, &c, "198.51.100.10/32", now - MIN);
        scan_ban(&mut b, &c, "198.51.100.11/32", now - MIN);
        // Another network's host and an operator's ban inside never count.
        scan_ban(&mut b, &c, "203.0.113.9/32", now);
        let manual = b.new_ban(&c, net("198.51.100.99/32"), Cause::Operator, None, now);
        b.put(manual, false).unwrap();
        assert!(matches!(
            escalate(&mut b, &c, "198.51.100.11", now),
            Outcome::Nothing
        ));
        scan_ban(&mut b, &c, "198.51.100.12/32", now);
        let Outcome::Escalated {
            ban,
            replaced,
            kept,
            failed,
        } = escalate(&mut b, &c, "198.51.100.12", now)
        else {
            panic!("no escalation at the third host");
        };
        assert_eq!(ban.net, net("198.51.100.0/24"));
        assert_eq!(
            (ban.escalated, ban.origin, ban.origin_word()),
            (Some(3), BanOrigin::Scan, "escalation")
        );
        assert_eq!(ban.expires, Some(now + Duration::from_secs(3600)));
        assert_eq!((ban.port, ban.mode), (23, Some(ModeToken::Atcp)));
        assert_eq!(ban.default_name(), "198.51.100.0/24");
        assert!(!ban.has_undo(true), "no kill command ran for the network");
        let mut lifted: Vec<String> = replaced.iter().map(|b| b.net.to_string()).collect();
        lifted.sort();
        assert_eq!(
            lifted,
            ["198.51.100.10/32", "198.51.100.11/32", "198.51.100.12/32"]
        );
        assert!(
            replaced.iter().all(|b| b.has_undo(false)),
            "their undo steps run"
        );
        assert!(kept.is_empty() && failed.is_empty());
        assert_eq!(
            nets(&b),
            ["198.51.100.0/24", "198.51.100.99/32", "203.0.113.9/32"],
            "the operator's ban and the other network's stay"
        );
        assert!(b.covers(ip("198.51.100.200")), "a host that never probed");

        // One escalation per network at a time: a host banned after it (in flight when
        // the network was banned) does not escalate again.
        scan_ban(&mut b, &c, "198.51.100.13/32", now);
        assert!(matches!(
            escalate(&mut b, &c, "198.51.100.13", now),
            Outcome::Nothing
        ));
        assert_eq!(b.store.len(), 4);
    }

    #[test]
    fn only_bans_within_the_window_count() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 2);
        let mut b = book(&c, &[]);
        let now = SystemTime::now();
        scan_ban(&mut b, &c, "198.51.100.10/32", now - 11 * MIN);
        scan_ban(&mut b, &c, "198.51.100.11/32", now);
        assert!(matches!(
            escalate(&mut b, &c, "198.51.100.11", now),
            Outcome::Nothing
        ));
        // With no window, every ban in force counts; the older one is replaced too.
        let c = Config {
            escalate_window: Duration::ZERO,
            ..c
        };
        let Outcome::Escalated { replaced, .. } = escalate(&mut b, &c, "198.51.100.11", now) else {
            panic!("no escalation with no window");
        };
        assert_eq!(replaced.len(), 2);
    }

    #[test]
    fn ipv6_prefix_bans_escalate_to_their_48() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 2);
        let mut b = book(&c, &[]);
        let now = SystemTime::now();
        scan_ban(&mut b, &c, "2001:db8:1:1::/64", now);
        scan_ban(&mut b, &c, "2001:db8:1:2::/64", now);
        scan_ban(&mut b, &c, "2001:db8:2::9/128", now);
        let Outcome::Escalated { ban, replaced, .. } =
            escalate(&mut b, &c, "2001:db8:1:2::77", now)
        else {
            panic!("no escalation of the /48");
        };
        assert_eq!(ban.net, net("2001:db8:1::/48"));
        assert_eq!(replaced.len(), 2);
        assert_eq!(nets(&b), ["2001:db8:1::/48", "2001:db8:2::9/128"]);
    }

    #[test]
    fn the_guard_refuses_a_network_over_a_protected_host_and_the_host_bans_stay() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 2);
        // An ignored host inside the network.
        let mut b = book(&c, &["198.51.100.50"]);
        let now = SystemTime::now();
        scan_ban(&mut b, &c, "198.51.100.10/32", now);
        scan_ban(&mut b, &c, "198.51.100.11/32", now);
        let Outcome::Refused {
            network,
            hosts,
            refusal,
        } = escalate(&mut b, &c, "198.51.100.11", now)
        else {
            panic!("the guard let the network over an ignored host be banned");
        };
        assert_eq!((network, hosts), (net("198.51.100.0/24"), 2));
        assert_eq!(
            refusal.to_string(),
            "refusing to ban 198.51.100.0/24: it covers 198.51.100.50, in the ignore list"
        );
        assert_eq!(nets(&b), ["198.51.100.10/32", "198.51.100.11/32"]);
        assert!(!b.covers(ip("198.51.100.50")));

        // Wider than the guard's limit (a configuration that skipped validation).
        let c = Config {
            escalate_prefix_v4: 4,
            ..config(dir.path(), 2)
        };
        let mut b = book(&c, &[]);
        scan_ban(&mut b, &c, "198.51.100.10/32", now);
        scan_ban(&mut b, &c, "198.51.100.11/32", now);
        assert!(matches!(
            escalate(&mut b, &c, "198.51.100.11", now),
            Outcome::Refused {
                refusal: Refusal::TooWide { .. },
                ..
            }
        ));
    }

    #[test]
    fn a_ban_whose_response_runs_is_kept_covered() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 2);
        let mut b = book(&c, &[]);
        let now = SystemTime::now();
        scan_ban(&mut b, &c, "198.51.100.10/32", now);
        scan_ban(&mut b, &c, "198.51.100.11/32", now);
        let busy = net("198.51.100.10/32");
        let Outcome::Escalated { replaced, kept, .. } =
            after_ban(&mut b, &c, ip("198.51.100.11"), SCAN, now, |n| *n == busy).unwrap()
        else {
            panic!("no escalation");
        };
        assert_eq!(replaced.len(), 1);
        assert_eq!(kept, [busy]);
        assert_eq!(nets(&b), ["198.51.100.0/24", "198.51.100.10/32"]);
    }

    #[test]
    fn off_escalates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 0);
        let mut b = book(&c, &[]);
        let now = SystemTime::now();
        for h in 10..20 {
            scan_ban(&mut b, &c, &format!("198.51.100.{h}/32"), now);
        }
        assert!(matches!(
            escalate(&mut b, &c, "198.51.100.19", now),
            Outcome::Nothing
        ));
        assert_eq!(b.store.len(), 10);
    }

    #[test]
    fn tracker() {
        let mut t = Tracker::default();
        let a = ip("198.51.100.10");
        t.start(a);
        t.start(a);
        t.finish(a);
        assert_eq!(t.running(), [a]);
        t.finish(a);
        t.finish(a);
        assert!(t.running().is_empty());
        let n = net("198.51.100.0/24");
        assert!(t.first_refusal(n));
        assert!(!t.first_refusal(n), "logged once");
        for i in 0..MAX_REFUSALS_REMEMBERED as u32 {
            t.first_refusal(IpNet::from(IpAddr::from(i.to_be_bytes())));
        }
        assert!(t.refused.len() <= MAX_REFUSALS_REMEMBERED, "bounded");
    }
}
