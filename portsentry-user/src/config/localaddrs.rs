//! Networks that are never acted on whatever the ignore file says: loopback, every
//! address this host has (so forged probes "from" this host cannot ban it) and the
//! gateways of its routes (a ban of one cuts the host off).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::gateways;

/// Why a network is always ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// 127.0.0.0/8 or ::1.
    Loopback,
    /// An address of one of this host's interfaces.
    ThisHost,
    /// The gateway of one of this host's routes.
    Gateway,
}

/// An always-ignored network and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Always {
    pub net: IpNet,
    pub kind: Kind,
}

/// Loopback networks.
fn loopback() -> Vec<IpNet> {
    vec![
        IpNet::V4(Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).expect("valid").trunc()),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("valid")),
    ]
}

/// Every address of every interface in this network namespace, as host networks,
/// sorted and deduplicated.
fn host_addresses() -> Result<Vec<IpNet>> {
    let mut out: Vec<IpNet> = if_addrs::get_if_addrs()
        .context("listing this host's addresses")?
        .into_iter()
        .map(|i| IpNet::from(i.ip()))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Loopback, this host's addresses and the gateways of its routes. Should the routes not
/// be read, a warning in `warnings` says so, and the rest is returned.
pub(crate) fn always_ignored(warnings: &mut Vec<String>) -> Result<Vec<Always>> {
    let gateways = gateways::gateways().unwrap_or_else(|e| match e.downcast() {
        Ok(partial @ gateways::NexthopsUnread { .. }) => {
            warnings.push(format!(
                "{partial}: the gateways of this host's nexthop objects are not protected until \
                 they are read (those the routes name are)"
            ));
            partial.routes
        }
        Err(e) => {
            warnings.push(format!(
                "{e:#}: the gateways of this host's routes are not protected until they are \
                 read"
            ));
            Vec::new()
        }
    });
    with_gateways(gateways)
}

/// Loopback and this host's addresses read now, with the gateways of `before` (when the
/// routes are not read again).
pub(crate) fn always_ignored_keeping_gateways(before: &[Always]) -> Result<Vec<Always>> {
    with_gateways(
        before
            .iter()
            .filter(|a| a.kind == Kind::Gateway)
            .map(|a| a.net.addr())
            .collect(),
    )
}

/// Loopback and this host's addresses read now, with `gateways`.
pub(crate) fn with_gateways(gateways: Vec<IpAddr>) -> Result<Vec<Always>> {
    let tag = |kind| move |net| Always { net, kind };
    let mut v: Vec<Always> = loopback().into_iter().map(tag(Kind::Loopback)).collect();
    v.extend(host_addresses()?.into_iter().map(tag(Kind::ThisHost)));
    v.extend(
        gateways
            .into_iter()
            .map(IpNet::from)
            .map(tag(Kind::Gateway)),
    );
    // A network listed for two reasons is listed twice (sorted, its first reason
    // first): a gateway that is also one of this host's addresses stays a gateway when
    // the address goes (the kernel's list and the guard take each network once).
    v.sort();
    v.dedup();
    Ok(v)
}

/// The addresses this host answers on, for the program's filter of them: this host's
/// addresses in `always` and the single addresses of its local routes. `None` before the
/// routes are read, or when a local route covers more than one address (`ip route add
/// local 192.0.2.0/24 dev lo`, a transparent proxy's `local default`): every
/// destination is then taken as this host's.
pub(crate) fn local_destinations(always: &[Always]) -> Option<Vec<IpAddr>> {
    destinations(always, gateways::local_routes()?)
}

/// [`local_destinations`] with the local routes `routes`.
fn destinations(always: &[Always], routes: Vec<IpNet>) -> Option<Vec<IpAddr>> {
    // Loopback's range (127.0.0.0/8 is a local route) arrives on `lo` alone, from
    // loopback sources, which are never counted.
    let lo = loopback();
    let routes: Vec<IpNet> = routes
        .into_iter()
        .filter(|n| !lo.iter().any(|l| l.contains(n)))
        .collect();
    if routes.iter().any(|n| n.prefix_len() < n.max_prefix_len()) {
        return None;
    }
    let mut v: Vec<IpAddr> = always
        .iter()
        .filter(|a| a.kind == Kind::ThisHost)
        .map(|a| a.net.addr())
        .chain(routes.iter().map(IpNet::addr))
        .collect();
    v.sort();
    v.dedup();
    Some(v)
}

/// The networks of `always`.
pub(crate) fn nets(always: &[Always]) -> impl Iterator<Item = IpNet> + '_ {
    always.iter().map(|a| a.net)
}

/// True when `ip` is one of `always`' addresses or inside one of its networks.
pub(crate) fn covered(always: &[Always], ip: IpAddr) -> bool {
    always.iter().any(|a| a.net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_own_addresses() {
        let all = always_ignored(&mut Vec::new()).unwrap();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
        assert!(covered(&all, "127.0.0.1".parse().unwrap()));
        assert!(covered(&all, "127.9.9.9".parse().unwrap()));
        assert!(covered(&all, "::1".parse().unwrap()));
        assert!(!covered(&all, "192.0.2.200".parse().unwrap()));
        for a in host_addresses().unwrap() {
            assert!(covered(&all, a.addr()));
            assert_eq!(a.prefix_len(), a.max_prefix_len());
        }
        for g in gateways::gateways().unwrap() {
            assert!(covered(&all, g));
        }
    }

    #[test]
    fn this_hosts_destinations_are_its_addresses_and_single_local_routes() {
        let own = Always {
            net: "198.51.100.200/32".parse().unwrap(),
            kind: Kind::ThisHost,
        };
        let gw = Always {
            net: "192.0.2.254/32".parse().unwrap(),
            kind: Kind::Gateway,
        };
        let nets = |v: &[&str]| v.iter().map(|n| n.parse().unwrap()).collect::<Vec<IpNet>>();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Host routes and this host's addresses, not the gateway; loopback's are left
        // out (a loopback source is never counted).
        let got = destinations(
            &[own, gw],
            nets(&["127.0.0.0/8", "127.0.0.1/32", "2001:db8::/128", "::1/128"]),
        );
        assert_eq!(got, Some(vec![ip("198.51.100.200"), ip("2001:db8::")]));
        // A range (AnyIP, a transparent proxy's `local default`): none listed.
        for wide in ["203.0.113.0/24", "0.0.0.0/0", "2001:db8:1::/64"] {
            assert_eq!(destinations(&[own], nets(&[wide])), None, "{wide}");
        }
    }

    #[test]
    fn gateways_are_kept_when_the_routes_are_not_read_again() {
        let gw = Always {
            net: "192.0.2.254/32".parse().unwrap(),
            kind: Kind::Gateway,
        };
        let own = Always {
            net: "198.51.100.200/32".parse().unwrap(),
            kind: Kind::ThisHost,
        };
        let now = always_ignored_keeping_gateways(&[gw, own]).unwrap();
        assert!(now.contains(&gw));
        assert!(!now.contains(&own), "addresses are read again: {now:?}");
        // A gateway that is also loopback (or one of this host's addresses) is both,
        // loopback first: kept as a gateway should the address go.
        let lo = Always {
            net: "::1/128".parse().unwrap(),
            kind: Kind::Gateway,
        };
        let now = always_ignored_keeping_gateways(&[lo]).unwrap();
        let kinds: Vec<Kind> = now
            .iter()
            .filter(|a| a.net == lo.net)
            .map(|a| a.kind)
            .collect();
        assert_eq!(kinds.first(), Some(&Kind::Loopback), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&Kind::Gateway), "{kinds:?}");
        let again = always_ignored_keeping_gateways(&now).unwrap();
        assert!(again.contains(&lo));
    }
}
