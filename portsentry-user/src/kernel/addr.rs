//! Conversions between std/ipnet addresses and the kernel's 16-byte form
//! (`portsentry_common::Addr`: network order, IPv4 mapped into IPv6).

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use portsentry_common::{Addr, V4_MAPPED_PREFIX_BITS, v4_mapped};

/// The kernel key of an address.
pub fn to_key(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a kernel key stands for (IPv4-mapped keys come back as IPv4).
pub fn from_key(key: &Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(*key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The network `net` is in the kernel's key space, as the daemon names it: host bits
/// cleared, and an IPv4-mapped IPv6 network of /96 or longer (`::ffff:192.0.2.0/120`)
/// as the IPv4 network it stands for (`192.0.2.0/24`), whose key it shares. A ban, an
/// ignore entry or a CrowdSec decision written either way is then one network, never
/// two records over one kernel entry.
pub fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
    {
        let v4 = Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix length at most 32");
        return IpNet::V4(v4.trunc());
    }
    net
}

/// Prefix length and key of a network in the 128-bit key space (host bits cleared).
pub fn net_key(net: &IpNet) -> (u32, Addr) {
    let net = net.trunc();
    match net {
        IpNet::V4(n) => (
            u32::from(n.prefix_len()) + V4_MAPPED_PREFIX_BITS,
            v4_mapped(n.network().octets()),
        ),
        IpNet::V6(n) => (u32::from(n.prefix_len()), n.network().octets()),
    }
}

/// Whether two networks of the 128-bit key space share an address (one holds the
/// other).
pub fn keys_overlap(a: (u32, &Addr), b: (u32, &Addr)) -> bool {
    let bits = a.0.min(b.0).min(128);
    if bits == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - bits);
    u128::from_be_bytes(*a.1) & mask == u128::from_be_bytes(*b.1) & mask
}

/// The network a trie key stands for.
pub fn net_from_key(prefix_len: u32, key: &Addr) -> IpNet {
    match from_key(key) {
        IpAddr::V4(v4) if prefix_len >= V4_MAPPED_PREFIX_BITS => IpNet::V4(
            Ipv4Net::new(v4, (prefix_len - V4_MAPPED_PREFIX_BITS) as u8)
                .expect("prefix length from the kernel is at most 128"),
        ),
        _ => IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(*key), prefix_len.min(128) as u8)
                .expect("prefix length clamped to 128"),
        ),
    }
}

/// True for a network that is a single host (/32 or /128).
pub fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// True for a network the program looks up by exact key (`PS_BANS`): an IPv4 host, and
/// an IPv6 network of the source prefix (`v6_prefix`: `SOURCE_PREFIX_V6`, `None` for
/// single addresses). Every other ban lives in the trie.
pub fn is_source_key(net: &IpNet, v6_prefix: Option<u32>) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() == 32,
        IpNet::V6(n) => u32::from(n.prefix_len()) == v6_prefix.unwrap_or(128),
    }
}

/// The network an exact `PS_BANS` key stands for (see [`is_source_key`]).
pub fn source_key_net(key: &Addr, v6_prefix: Option<u32>) -> IpNet {
    match from_key(key) {
        IpAddr::V4(v4) => IpNet::from(IpAddr::V4(v4)),
        IpAddr::V6(v6) => net_from_key(v6_prefix.unwrap_or(128), &v6.octets()),
    }
}

/// A single-host network.
pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use portsentry_common::packet::{AddrWords, prefix_words};

    use super::*;

    #[test]
    fn overlapping_keys() {
        let k = |s: &str| net_key(&s.parse().unwrap());
        let overlap = |a: &str, b: &str| {
            let ((la, ka), (lb, kb)) = (k(a), k(b));
            keys_overlap((la, &ka), (lb, &kb))
        };
        assert!(overlap("10.0.0.0/8", "10.1.2.3/32"));
        assert!(overlap("10.1.2.3/32", "10.0.0.0/8"));
        assert!(overlap("10.1.2.3/32", "10.1.2.3/32"));
        assert!(!overlap("10.1.2.3/32", "10.1.2.4/32"));
        assert!(!overlap("10.0.0.0/8", "11.0.0.0/8"));
        assert!(
            overlap("::/0", "192.0.2.1/32"),
            "::/0 holds the IPv4-mapped keys"
        );
        assert!(!overlap("2001:db8::/32", "192.0.2.1/32"));
        assert!(overlap("0.0.0.0/0", "192.0.2.1/32"));
    }

    /// The program's prefix masking (`prefix_words`) agrees with ipnet's, for every
    /// length and a few addresses.
    #[test]
    fn prefix_words_is_the_network() {
        for a in [
            "2001:db8:1:2:3:4:5:6",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::1",
        ] {
            let ip: Ipv6Addr = a.parse().unwrap();
            for len in 0..=128u8 {
                let w: AddrWords = bytemuck::cast(ip.octets());
                let got: Addr = bytemuck::cast(prefix_words(&w, u32::from(len)));
                let want = Ipv6Net::new(ip, len).unwrap().network().octets();
                assert_eq!(got, want, "{a}/{len}");
            }
        }
    }

    #[test]
    fn source_keys() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(is_source_key(&net("192.0.2.7/32"), Some(64)));
        assert!(!is_source_key(&net("192.0.2.0/24"), Some(64)));
        assert!(is_source_key(&net("2001:db8::/64"), Some(64)));
        assert!(!is_source_key(&net("2001:db8::5/128"), Some(64)));
        assert!(is_source_key(&net("2001:db8::5/128"), None));
        let key = to_key("2001:db8:0:7::".parse().unwrap());
        assert_eq!(source_key_net(&key, Some(64)), net("2001:db8:0:7::/64"));
        assert_eq!(source_key_net(&key, None), net("2001:db8:0:7::/128"));
        let key = to_key("192.0.2.7".parse().unwrap());
        assert_eq!(source_key_net(&key, Some(64)), net("192.0.2.7/32"));
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn round_trips() {
        for s in [
            "192.0.2.7",
            "::1",
            "2001:db8::5",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(from_key(&to_key(ip)), ip, "{s}");
        }
        for s in [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::/0",
        ] {
            let net: IpNet = s.parse().unwrap();
            let (len, key) = net_key(&net);
            assert_eq!(net_from_key(len, &key), net, "{s}");
        }
    }

    #[test]
    fn v4_prefixes_live_under_the_mapped_range() {
        let (len, key) = net_key(&"10.1.2.3/8".parse().unwrap());
        assert_eq!(len, 104);
        assert_eq!(from_key(&key), v4(10, 0, 0, 0));
        let (len, _) = net_key(&"0.0.0.0/0".parse().unwrap());
        assert_eq!(len, 96, "/0 over IPv4 covers exactly the IPv4-mapped range");
    }
}
