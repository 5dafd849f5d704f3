//! Networks that are never acted on whatever the ignore file says: loopback and every
//! address this host has (so forged probes "from" this host cannot ban it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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

/// Loopback plus this host's addresses.
pub(crate) fn always_ignored() -> Result<Vec<IpNet>> {
    let mut v = loopback();
    v.extend(host_addresses()?);
    v.sort();
    v.dedup();
    Ok(v)
}

/// True when `ip` is one of `nets`' addresses or inside one of them.
pub(crate) fn covered(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_own_addresses() {
        let all = always_ignored().unwrap();
        assert!(covered(&all, "127.0.0.1".parse().unwrap()));
        assert!(covered(&all, "127.9.9.9".parse().unwrap()));
        assert!(covered(&all, "::1".parse().unwrap()));
        assert!(!covered(&all, "192.0.2.200".parse().unwrap()));
        for a in host_addresses().unwrap() {
            assert!(covered(&all, a.addr()));
            assert_eq!(a.prefix_len(), a.max_prefix_len());
        }
    }
}
