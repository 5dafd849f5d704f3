//! The ban guard: every ban, whatever made it (a scan, `portsentry ban`, the control
//! socket, a restored state file), passes [`Guard::check`] before it is put in force.
//!
//! A ban is refused when it overlaps a protected network (it covers one, or lies inside
//! one): an ignore-list entry, loopback, one of this host's addresses, a gateway of its
//! routes, or, for the operator's own `portsentry ban`, the address of their SSH
//! session. A ban wider than `BAN_MIN_PREFIX_V4` / `BAN_MIN_PREFIX_V6` is refused unless
//! forced; nothing forces the protected networks. The kernel enforces the same rule on its side: a packet from
//! an ignored network is never dropped, whatever the ban maps hold.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::BanStore;
use crate::config::{Config, effective::Effective, localaddrs::Kind};

/// Why a network is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// An entry of IGNORE_FILE.
    IgnoreList,
    /// 127.0.0.0/8 or ::1.
    Loopback,
    /// An address of one of this host's interfaces.
    ThisHost,
    /// The gateway of one of this host's routes.
    Gateway,
    /// The address the operator's SSH session comes from (`SSH_CLIENT`).
    OperatorSession,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::IgnoreList => "in the ignore list",
            Why::Loopback => "loopback",
            Why::ThisHost => "an address of this host",
            Why::Gateway => "a gateway of this host's routes",
            Why::OperatorSession => {
                "the address of your SSH session (--force bans it all the same)"
            }
        })
    }
}

/// A ban the guard refuses, with what it would have cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The ban overlaps a protected network.
    Protected { ban: IpNet, net: IpNet, why: Why },
    /// The ban is wider than the configured limit.
    TooWide {
        ban: IpNet,
        min_prefix: u8,
        key: &'static str,
    },
}

impl Refusal {
    /// The network refused.
    pub fn ban(&self) -> IpNet {
        match self {
            Refusal::Protected { ban, .. } | Refusal::TooWide { ban, .. } => *ban,
        }
    }

    /// Why, without the network refused: `it covers 192.0.2.5, in the ignore list`.
    pub fn reason(&self) -> String {
        match self {
            Refusal::Protected { ban, net, why } => {
                let relation = if covers(ban, net) {
                    "it covers"
                } else {
                    "it lies inside"
                };
                format!("{relation} {}, {why}", show(net))
            }
            Refusal::TooWide {
                min_prefix, key, ..
            } => format!(
                "it is wider than /{min_prefix}, the widest ban {key} allows; `portsentry ban \
                 --force` bans it all the same"
            ),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refusing to ban {}: {}", self.ban(), self.reason())
    }
}

impl std::error::Error for Refusal {}

/// A host network as its address, any other as ADDR/PREFIX.
fn show(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// `net` in the IPv6 space the kernel uses (IPv4 mapped into `::ffff:0:0/96`): its
/// first address, host bits cleared, and its prefix length. Plain integers: a restart
/// checks every ban on record against every protected network.
fn span(net: &IpNet) -> (u128, u8) {
    let (addr, len) = match net {
        IpNet::V4(v4) => (
            (0xffff_u128 << 32) | u128::from(u32::from(v4.addr())),
            v4.prefix_len() + 96,
        ),
        IpNet::V6(v6) => (u128::from(v6.addr()), v6.prefix_len()),
    };
    (addr & prefix_mask(len), len)
}

fn prefix_mask(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// Whether `outer` contains all of `inner` (IPv4 and IPv6 compared as the kernel does).
fn covers(outer: &IpNet, inner: &IpNet) -> bool {
    span_covers(span(outer), span(inner))
}

fn span_covers((o, olen): (u128, u8), (i, ilen): (u128, u8)) -> bool {
    olen <= ilen && i & prefix_mask(olen) == o
}

/// Whether two networks share an address.
#[cfg(test)]
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    spans_overlap(span(a), span(b))
}

/// Two prefixes share an address when they agree on the bits of the shorter.
fn spans_overlap((a, alen): (u128, u8), (b, blen): (u128, u8)) -> bool {
    (a ^ b) & prefix_mask(alen.min(blen)) == 0
}

/// The network of each family that holds the addresses of `span`: a network overlaps
/// `span` exactly when it overlaps the one of its own family. The IPv4 one is `None`
/// when `span` holds no mapped address (`::ffff:a.b.c.d`), and all of IPv4 when it holds
/// all of them.
fn family_nets((addr, len): (u128, u8)) -> (Option<IpNet>, IpNet) {
    const MAPPED: u128 = 0xffff << 32;
    let v6 = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).expect("at most 128"));
    let v4 = if len >= 96 {
        (addr >> 32 == MAPPED >> 32).then(|| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr as u32), len - 96).expect("at most 32"))
        })
    } else {
        (MAPPED & prefix_mask(len) == addr).then(|| IpNet::V4(Ipv4Net::default()))
    };
    (v4, v6)
}

/// The protected networks and the width limits.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    protected: Vec<Protected>,
    min_v4: u8,
    min_v6: u8,
}

/// A protected network, with its [`span`] worked out once: a start checks every ban
/// on record against every protected network.
#[derive(Clone, Copy, Debug)]
struct Protected {
    net: IpNet,
    span: (u128, u8),
    why: Why,
}

impl Protected {
    fn new(net: IpNet, why: Why) -> Protected {
        Protected {
            net,
            span: span(&net),
            why,
        }
    }
}

impl Guard {
    /// The guard of a configuration in force: its ignore list, loopback and this host's
    /// addresses, and its width limits.
    pub fn new(eff: &Effective) -> Guard {
        let mut g = Guard::limits(&eff.config);
        g.protected.extend(
            eff.ignore_file
                .iter()
                .map(|n| Protected::new(*n, Why::IgnoreList)),
        );
        // A network listed for two reasons (sorted together) is protected once, for the
        // first.
        let once = eff
            .always_ignored
            .chunk_by(|a, b| a.net == b.net)
            .map(|same| &same[0]);
        g.protected.extend(once.map(|a| {
            let why = match a.kind {
                Kind::Loopback => Why::Loopback,
                Kind::ThisHost => Why::ThisHost,
                Kind::Gateway => Why::Gateway,
            };
            Protected::new(a.net, why)
        }));
        g
    }

    /// A guard with `config`'s width limits and nothing protected (yet).
    pub fn limits(config: &Config) -> Guard {
        Guard {
            protected: Vec::new(),
            min_v4: u8::try_from(config.ban_min_prefix_v4.min(32)).expect("at most 32"),
            min_v6: u8::try_from(config.ban_min_prefix_v6.min(128)).expect("at most 128"),
        }
    }

    /// Also protects `ip` for the reason `why` (the operator's session).
    pub fn protect(&mut self, ip: IpAddr, why: Why) {
        self.protected.push(Protected::new(IpNet::from(ip), why));
    }

    /// Whether `net` may be banned; `force` lifts the width limit and the operator's
    /// session, never the other protected networks.
    pub fn check(&self, net: &IpNet, force: bool) -> Result<(), Refusal> {
        let net = net.trunc();
        let ban = span(&net);
        let binding = |why: Why| !(force && why == Why::OperatorSession);
        if let Some(p) = self
            .protected
            .iter()
            .find(|p| binding(p.why) && spans_overlap(ban, p.span))
        {
            return Err(Refusal::Protected {
                ban: net,
                net: p.net,
                why: p.why,
            });
        }
        match self.too_wide(&net) {
            Some(refusal) if !force => Err(refusal),
            _ => Ok(()),
        }
    }

    /// The refusal of `net` for its width alone, if it is wider than the limit.
    pub fn too_wide(&self, net: &IpNet) -> Option<Refusal> {
        let (min_prefix, key) = match net {
            IpNet::V4(_) => (self.min_v4, "BAN_MIN_PREFIX_V4"),
            IpNet::V6(_) => (self.min_v6, "BAN_MIN_PREFIX_V6"),
        };
        (net.prefix_len() < min_prefix).then_some(Refusal::TooWide {
            ban: net.trunc(),
            min_prefix,
            key,
        })
    }

    /// Whether a protected network holds all of `net`.
    pub fn inside_protected(&self, net: &IpNet) -> bool {
        let inner = span(net);
        self.protected.iter().any(|p| span_covers(p.span, inner))
    }

    /// The bans on record this guard refuses, each with its refusal ([`Guard::refusal`]),
    /// in the order of networks. Only the bans that may be refused are looked at: those
    /// that overlap a protected network (found by range in the store), and when bans
    /// wider than a width limit are on record, those. (A million bans checked one by one
    /// took 74-117 ms in a bare process, at each start, reload and change of this
    /// host's addresses, the book held; by range, 8-20 µs.)
    pub fn refused_in(&self, store: &BanStore) -> Vec<(IpNet, Refusal)> {
        let mut nets = BTreeSet::new();
        for p in &self.protected {
            let (v4, v6) = family_nets(p.span);
            for net in v4.iter().chain([&v6]) {
                nets.extend(store.overlapping(net));
            }
        }
        if store.any_shorter(self.min_v4, self.min_v6) {
            nets.extend(
                store
                    .records()
                    .map(|(net, _)| *net)
                    .filter(|net| self.too_wide(net).is_some()),
            );
        }
        nets.into_iter()
            .filter_map(|net| {
                let rec = store.record(&net)?;
                Some((net, self.refusal(&net, rec.is_crowdsec())?))
            })
            .collect()
    }

    /// Why a ban on record is refused now, if it is: a CrowdSec decision's ban wider than
    /// the width limit (lifted whole, whatever it covers), else one that overlaps a
    /// protected network other than the operator's session. (An operator's ban may have
    /// been forced past the limit: it stays.)
    pub fn refusal(&self, net: &IpNet, crowdsec: bool) -> Option<Refusal> {
        let too_wide = crowdsec.then(|| self.too_wide(net)).flatten();
        too_wide.or_else(|| self.check(net, true).err())
    }

    /// The protected networks inside `net` (for a ban that covers some of them: the
    /// kernel spares those addresses).
    pub fn spared(&self, net: &IpNet) -> Vec<(IpNet, Why)> {
        let outer = span(net);
        self.protected
            .iter()
            .filter(|p| span_covers(outer, p.span) && !span_covers(p.span, outer))
            .map(|p| (p.net, p.why))
            .collect()
    }
}

/// The address of the operator's SSH session, from `SSH_CLIENT` ("ADDR PORT PORT") or
/// `SSH_CONNECTION` ("ADDR PORT ADDR PORT"), when this runs inside one.
fn ssh_client(client: Option<&str>, connection: Option<&str>) -> Option<IpAddr> {
    [client, connection]
        .into_iter()
        .flatten()
        .find_map(|v| v.split_whitespace().next()?.parse().ok())
}

/// The address of the SSH session this command runs in: from its own `SSH_CLIENT` or
/// `SSH_CONNECTION`, or else from the nearest process it descends from that has them.
/// `sudo` (its `env_reset`), `sudo -i` and `su -` run the command with neither, while
/// the session's shell, and `sudo` itself, still hold them in the environment they
/// started with (`/proc/PID/environ`, which root may read).
pub fn session_address() -> Option<IpAddr> {
    let own = |name| std::env::var(name).ok();
    if let Some(addr) = ssh_client(
        own("SSH_CLIENT").as_deref(),
        own("SSH_CONNECTION").as_deref(),
    ) {
        return Some(addr);
    }
    let mut pid = std::process::id();
    // A chain of a few processes (sshd's shell, sudo, its monitor, a root shell);
    // bounded all the same.
    for _ in 0..64 {
        pid = parent_of(pid)?;
        if pid <= 1 {
            return None;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let var = |name: &str| {
            environ
                .split(|&b| b == 0)
                .find_map(|kv| kv.strip_prefix(name.as_bytes())?.strip_prefix(b"="))
                .and_then(|v| std::str::from_utf8(v).ok())
        };
        if let Some(addr) = ssh_client(var("SSH_CLIENT"), var("SSH_CONNECTION")) {
            return Some(addr);
        }
    }
    None
}

/// The parent of process `pid`, from `/proc/PID/stat` (its fourth field, after the
/// name in parentheses, which may hold spaces and parentheses itself).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn guard() -> Guard {
        let mut g = Guard::limits(&Config::default());
        g.protected = [
            ("192.0.2.5/32", Why::IgnoreList),
            ("198.51.100.0/24", Why::IgnoreList),
            ("127.0.0.0/8", Why::Loopback),
            ("::1/128", Why::Loopback),
            ("203.0.113.1/32", Why::ThisHost),
            ("2001:db8::1/128", Why::ThisHost),
        ]
        .map(|(n, why)| Protected::new(net(n), why))
        .to_vec();
        g
    }

    #[test]
    fn the_parent_of_this_process_is_read_from_proc() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }

    #[test]
    fn covers_compares_ipv4_inside_the_ipv6_space() {
        assert!(covers(&net("::ffff:0:0/96"), &net("10.1.2.3/32")));
        assert!(covers(&net("::/0"), &net("10.0.0.1/32")));
        assert!(covers(&net("10.1.2.3/8"), &net("10.200.0.0/16")));
        assert!(covers(&net("2001:db8::/32"), &net("2001:db8:ffff::1/128")));
        assert!(!covers(&net("0.0.0.0/0"), &net("::1/128")));
        assert!(!covers(&net("10.0.0.0/16"), &net("10.0.0.0/8")));
        assert!(!covers(&net("10.0.0.0/8"), &net("11.0.0.1/32")));
        assert!(overlaps(&net("10.0.0.0/16"), &net("10.0.0.0/8")));
        assert!(!overlaps(&net("2001:db8::/33"), &net("2001:db8:8000::/33")));
    }

    #[test]
    fn refuses_what_covers_or_lies_inside_a_protected_network() {
        let g = guard();
        let refuse = |s: &str, force: bool| g.check(&net(s), force).unwrap_err().to_string();
        assert_eq!(
            refuse("0.0.0.0/0", true),
            "refusing to ban 0.0.0.0/0: it covers 192.0.2.5, in the ignore list"
        );
        assert_eq!(
            refuse("::/0", true),
            "refusing to ban ::/0: it covers 192.0.2.5, in the ignore list",
            "::/0 covers the IPv4-mapped addresses too"
        );
        assert_eq!(
            refuse("192.0.2.0/24", true),
            "refusing to ban 192.0.2.0/24: it covers 192.0.2.5, in the ignore list"
        );
        assert_eq!(
            refuse("192.0.2.5/32", true),
            "refusing to ban 192.0.2.5/32: it covers 192.0.2.5, in the ignore list"
        );
        assert_eq!(
            refuse("198.51.100.7/32", true),
            "refusing to ban 198.51.100.7/32: it lies inside 198.51.100.0/24, in the ignore list"
        );
        assert_eq!(
            refuse("127.0.0.1/32", true),
            "refusing to ban 127.0.0.1/32: it lies inside 127.0.0.0/8, loopback"
        );
        assert_eq!(
            refuse("203.0.113.0/30", true),
            "refusing to ban 203.0.113.0/30: it covers 203.0.113.1, an address of this host"
        );
        assert_eq!(
            refuse("2001:db8::/64", true),
            "refusing to ban 2001:db8::/64: it covers 2001:db8::1, an address of this host"
        );
        assert!(g.check(&net("192.0.2.6/32"), false).is_ok());
        assert!(g.check(&net("192.0.2.6/31"), false).is_ok());
        assert!(g.check(&net("2001:db8:1::/48"), false).is_ok());
    }

    #[test]
    fn width_limit_and_force() {
        let g = guard();
        assert_eq!(
            g.check(&net("10.0.0.0/7"), false).unwrap_err().to_string(),
            "refusing to ban 10.0.0.0/7: it is wider than /8, the widest ban \
             BAN_MIN_PREFIX_V4 allows; `portsentry ban --force` bans it all the same"
        );
        assert!(g.check(&net("10.0.0.0/8"), false).is_ok());
        assert!(g.check(&net("10.0.0.0/7"), true).is_ok());
        assert!(matches!(
            g.check(&net("2001:dc0::/31"), false),
            Err(Refusal::TooWide {
                min_prefix: 32,
                key: "BAN_MIN_PREFIX_V6",
                ..
            })
        ));
        assert!(g.check(&net("2001:dc0::/32"), false).is_ok());
    }

    #[test]
    fn the_operator_session_is_protected() {
        let mut g = guard();
        let ip = ssh_client(Some("192.0.2.77 51000 22"), None).unwrap();
        assert_eq!(
            ssh_client(None, Some("2001:db8::9 51000 2001:db8::1 22")),
            Some("2001:db8::9".parse().unwrap())
        );
        assert_eq!(ssh_client(Some("garbage"), None), None);
        g.protect(ip, Why::OperatorSession);
        assert!(g.check(&net("192.0.2.77/32"), true).is_ok(), "forced");
        assert_eq!(
            g.check(&net("192.0.2.64/26"), false)
                .unwrap_err()
                .to_string(),
            "refusing to ban 192.0.2.64/26: it covers 192.0.2.77, the address of your SSH \
             session (--force bans it all the same)"
        );
    }

    #[test]
    fn spared_lists_protected_networks_strictly_inside() {
        let g = guard();
        assert_eq!(
            g.spared(&net("192.0.2.0/24")),
            vec![(net("192.0.2.5/32"), Why::IgnoreList)]
        );
        assert!(g.spared(&net("198.51.100.7/32")).is_empty());
    }

    mod refused_in {
        use std::time::{Duration, SystemTime};

        use portsentry_common::maps::BanOrigin;
        use proptest::prelude::*;

        use super::*;
        use crate::bans::Ban;

        /// Networks of both families that nest in and around each other: IPv4, IPv6,
        /// and IPv4 seen in the IPv6 space (`::ffff:a.b.c.d`, `::/0`).
        fn a_net() -> impl Strategy<Value = IpNet> {
            let v4 = (0..4u32, 0..=32u8).prop_map(|(a, len)| {
                let addr = Ipv4Addr::from(0x0a00_0000 | (a << 22) | (a << 3) | a);
                IpNet::V4(Ipv4Net::new(addr, len).unwrap()).trunc()
            });
            let v6 = (0..4u32, 0..3usize, 0..=128u8).prop_map(|(a, base, len)| {
                let base: u128 = [0xffff << 32, 0x2001_0db8 << 96, 0][base];
                let addr = base | u128::from(0x0a00_0000 | (a << 22) | (a << 3) | a);
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap()).trunc()
            });
            prop_oneof![v4, v6]
        }

        fn whys() -> impl Strategy<Value = Why> {
            prop_oneof![
                Just(Why::IgnoreList),
                Just(Why::Gateway),
                Just(Why::OperatorSession),
            ]
        }

        proptest! {
            /// The bans found by range are those a look at every ban refuses.
            #[test]
            fn are_the_bans_each_checked_alone_refuses(
                bans in proptest::collection::vec((a_net(), any::<bool>()), 0..40),
                protected in proptest::collection::vec((a_net(), whys()), 0..5),
                min_v4 in 0..=33u8,
                min_v6 in 0..=129u8,
            ) {
                let mut store = BanStore::new();
                let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
                for (net, crowdsec) in bans {
                    let mut ban = Ban::of_decision(net, since, since + Duration::from_secs(60));
                    if !crowdsec {
                        ban.origin = BanOrigin::Manual;
                    }
                    store.insert(ban);
                }
                let mut g = Guard::limits(&Config::default());
                (g.min_v4, g.min_v6) = (min_v4.min(32), min_v6.min(128));
                g.protected = protected.into_iter().map(|(n, why)| Protected::new(n, why)).collect();
                let each: Vec<(IpNet, Refusal)> = store
                    .records()
                    .filter_map(|(net, rec)| Some((*net, g.refusal(net, rec.is_crowdsec())?)))
                    .collect();
                prop_assert_eq!(g.refused_in(&store), each);
            }
        }
    }
}
