//! PortSentry's ignore file: hosts and networks never acted on.
//!
//! One entry per line: an IPv4 or IPv6 address, or `address/bits`. `#` starts a comment
//! anywhere on a line; blank lines and leading or trailing whitespace are fine. A bare address
//! is a /32 (IPv4) or /128 (IPv6); `/0` matches every address of its family; host bits are
//! masked, so `192.168.1.5/24` means `192.168.1.0/24`. An IPv4-mapped IPv6 entry
//! (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it stands for. Any other line is an
//! error naming the file and line.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use ipnet::IpNet;

use portsentry_common::maps::IGNORE_MAX;

use crate::kernel::addr::canonical_net;

/// The most networks an ignore file may list: the kernel's list (`IGNORE_MAX` entries)
/// also holds loopback, this host's addresses, its gateways and SOURCE_PREFIX_V6's
/// networks.
pub const MAX_FILE_ENTRIES: usize = IGNORE_MAX as usize - 1024;

use super::{
    ConfigError,
    text::{check_line, check_size, read_text, text_lines},
};

/// The networks never acted on, deduplicated, in the order first seen.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IgnoreList {
    nets: Vec<IpNet>,
    seen: HashSet<IpNet>,
}

impl IgnoreList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the text of an ignore file; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        check_size(text.len(), path)?;
        let mut list = IgnoreList::new();
        for (n, line) in text_lines(text) {
            check_line(line, n, path)?;
            let entry = line.split_once('#').map_or(line, |(e, _)| e).trim();
            if entry.is_empty() {
                continue;
            }
            let net = parse_entry(entry).map_err(|m| ConfigError::new(path, n, m))?;
            if list.insert(net) && list.len() > MAX_FILE_ENTRIES {
                return Err(ConfigError::new(
                    path,
                    n,
                    format!(
                        "more than {MAX_FILE_ENTRIES} networks: the kernel's ignore list holds \
                         {IGNORE_MAX}, with room kept for loopback, this host's addresses, its \
                         gateways and SOURCE_PREFIX_V6's networks; list wider networks instead"
                    ),
                ));
            }
        }
        Ok(list)
    }

    /// Reads and parses an ignore file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        Self::parse(&text, path)
    }

    /// The networks, deduplicated, in the order first seen; host bits cleared, IPv4-mapped
    /// IPv6 networks as IPv4.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpNet> + '_ {
        self.nets.iter()
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Adds a network (normalised like the file's entries); false if it was already there.
    pub fn insert(&mut self, net: IpNet) -> bool {
        let net = canonical_net(net);
        if self.seen.insert(net) {
            self.nets.push(net);
            true
        } else {
            false
        }
    }

    /// Adds every network of `other` (e.g. the always-ignored networks).
    pub fn merge(&mut self, other: &IgnoreList) {
        self.extend(other.nets.iter().copied());
    }

    /// Whether `ip` falls in any network of the list. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) is matched as the IPv4 address, and an IPv4 address also by an
    /// IPv6 entry that covers its mapped form (`::/0`, `::ffff:0:0/96`), as the kernel
    /// matches it.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let mapped = match ip {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        };
        self.nets
            .iter()
            .any(|n| n.contains(&ip) || mapped.is_some_and(|m| n.contains(&m)))
    }
}

impl fmt::Debug for IgnoreList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IgnoreList").field(&self.nets).finish()
    }
}

impl Extend<IpNet> for IgnoreList {
    fn extend<I: IntoIterator<Item = IpNet>>(&mut self, nets: I) {
        for net in nets {
            self.insert(net);
        }
    }
}

impl FromIterator<IpNet> for IgnoreList {
    fn from_iter<I: IntoIterator<Item = IpNet>>(nets: I) -> Self {
        let mut list = IgnoreList::new();
        list.extend(nets);
        list
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn parse_entry(entry: &str) -> Result<IpNet, String> {
    if entry.chars().any(char::is_whitespace) {
        return Err(format!(
            "expected one address or address/bits, found \"{entry}\"; write one entry per line, \
             e.g. 192.168.2.0/24 or 2001:db8::/32"
        ));
    }
    let (addr_text, bits) = match entry.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (entry, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        format!(
            "\"{addr_text}\" is not an IPv4 or IPv6 address; write an address (host names are \
             not accepted) or address/bits, e.g. 192.168.2.0/24 or 2001:db8::/32"
        )
    })?;
    let (family, max) = match addr {
        IpAddr::V4(_) => ("IPv4", 32u8),
        IpAddr::V6(_) => ("IPv6", 128u8),
    };
    let prefix = match bits {
        None => max,
        Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => {
            match b.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(format!(
                        "\"{entry}\" has the prefix length /{b}, but an {family} prefix length \
                         is 0 to {max}"
                    ));
                }
            }
        }
        Some(b) => {
            let hint = match (addr, b.parse::<Ipv4Addr>()) {
                (IpAddr::V4(_), Ok(mask)) => mask_bits(mask)
                    .map(|p| format!(" (write /{p} for the netmask {b})"))
                    .unwrap_or_else(|| format!(" ({b} is not a contiguous netmask)")),
                _ => String::new(),
            };
            return Err(format!(
                "\"{entry}\" has \"/{b}\" where the prefix length should be: a number from 0 to \
                 {max}{hint}"
            ));
        }
    };
    let net = IpNet::new(addr, prefix).expect("prefix length checked against the family");
    Ok(canonical_net(net))
}

/// The prefix length of a contiguous IPv4 netmask.
fn mask_bits(mask: Ipv4Addr) -> Option<u32> {
    let m = u32::from(mask);
    let bits = m.leading_ones();
    (m.checked_shl(bits).unwrap_or(0) == 0).then_some(bits)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    const PATH: &str = "/etc/portsentry/portsentry.ignore";

    fn ok(text: &str) -> IgnoreList {
        IgnoreList::parse(text, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    fn bad(text: &str, line: usize, fragment: &str) {
        let e = IgnoreList::parse(text, Path::new(PATH)).expect_err("should not load");
        assert_eq!((e.path.as_path(), e.line), (Path::new(PATH), line), "{e}");
        assert!(
            e.message.contains(fragment),
            "message {:?} lacks {fragment:?}",
            e.message
        );
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn debian_static_file() {
        let l = ok(include_str!(
            "../../testdata/debian/portsentry.ignore.static"
        ));
        assert_eq!(l.nets(), [net("127.0.0.1/32"), net("0.0.0.0/32")]);
        assert_eq!(l.len(), 2);
        assert!(l.contains(ip("127.0.0.1")));
        assert!(l.contains(ip("0.0.0.0")));
        assert!(!l.contains(ip("127.0.0.2")));
        assert!(!l.contains(ip("::1")));
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/debian/portsentry.ignore.static");
        assert_eq!(IgnoreList::load(&path).unwrap(), l);
    }

    #[test]
    fn syntax() {
        let l = ok("# full-line comment\n\
                    \n\
                    \t  10.0.0.0/8   # trailing comment\n\
                    192.168.1.5/24\n\
                    2001:db8::1\n\
                    2001:db8:1::/48#tight comment\r\n\
                    fe80::/10\n\
                    ::ffff:172.16.0.0/108\n\
                    10.1.2.3/8\n\
                    \n   # indented comment\n");
        assert_eq!(
            l.nets(),
            [
                net("10.0.0.0/8"),
                net("192.168.1.0/24"),
                net("2001:db8::1/128"),
                net("2001:db8:1::/48"),
                net("fe80::/10"),
                net("172.16.0.0/12"),
            ],
            "host bits masked, duplicates dropped, order kept"
        );
        assert!(l.contains(ip("10.200.0.1")));
        assert!(l.contains(ip("192.168.1.200")), "host bits are masked");
        assert!(!l.contains(ip("192.168.2.5")));
        assert!(l.contains(ip("2001:db8::1")));
        assert!(!l.contains(ip("2001:db8::2")));
        assert!(l.contains(ip("2001:db8:1:ffff::9")));
        assert!(l.contains(ip("fe80::1234")));
        assert!(l.contains(ip("172.31.255.255")));
        // An IPv4-mapped IPv6 address matches IPv4 entries.
        assert!(l.contains(ip("::ffff:10.9.8.7")));
        assert!(l.contains(IpAddr::V6(Ipv4Addr::new(192, 168, 1, 1).to_ipv6_mapped())));
        assert!(!l.contains(ip("::ffff:11.0.0.1")));
        assert!(ok("").is_empty());
        assert!(ok("# nothing\n\n").is_empty());
    }

    #[test]
    fn at_most_what_the_kernel_holds() {
        let list = |n: usize| -> String {
            (0..n)
                .map(|i| format!("10.{}.{}.1\n", i >> 8, i & 0xff))
                .collect()
        };
        assert_eq!(ok(&list(MAX_FILE_ENTRIES)).len(), MAX_FILE_ENTRIES);
        // A duplicate is not one more.
        assert_eq!(
            ok(&(list(MAX_FILE_ENTRIES) + "10.0.0.1\n")).len(),
            MAX_FILE_ENTRIES
        );
        let e = IgnoreList::parse(&list(MAX_FILE_ENTRIES + 1), Path::new("/x/ignore"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "/x/ignore:{}: more than 15360 networks",
                MAX_FILE_ENTRIES + 1
            )),
            "{e}"
        );
    }

    #[test]
    fn slash_zero() {
        let l = ok("0.0.0.0/0");
        assert!(l.contains(ip("1.2.3.4")) && l.contains(ip("255.255.255.255")));
        assert!(l.contains(ip("::ffff:1.2.3.4")));
        assert!(!l.contains(ip("2001:db8::1")));
        let l = ok("::/0");
        assert!(l.contains(ip("2001:db8::1")) && l.contains(ip("::1")));
        // It covers ::ffff:0:0/96, the IPv4-mapped addresses: IPv4 sources too, as in
        // the kernel's trie.
        assert!(l.contains(ip("1.2.3.4")));
        assert!(ok("::ffff:0:0/95").contains(ip("1.2.3.4")));
        assert!(!ok("2001:db8::/32").contains(ip("1.2.3.4")));
        // 5.6.7.8/0 is 0.0.0.0/0.
        assert_eq!(ok("5.6.7.8/0").nets(), [net("0.0.0.0/0")]);
    }

    #[test]
    fn errors() {
        bad(
            "127.0.0.1\n\nlocalhost",
            3,
            "\"localhost\" is not an IPv4 or IPv6 address",
        );
        bad(
            "256.1.1.1",
            1,
            "\"256.1.1.1\" is not an IPv4 or IPv6 address",
        );
        bad("10.0.0.0/33", 1, "an IPv4 prefix length is 0 to 32");
        bad("2001:db8::/129", 1, "an IPv6 prefix length is 0 to 128");
        bad("10.0.0.0/300", 1, "prefix length /300");
        bad("10.0.0.0/", 1, "a number from 0 to 32");
        bad("10.0.0.0/-1", 1, "a number from 0 to 32");
        bad("10.0.0.0/24/8", 1, "\"/24/8\"");
        bad(
            "10.0.0.0/255.255.255.0",
            1,
            "write /24 for the netmask 255.255.255.0",
        );
        bad("10.0.0.0/255.0.255.0", 1, "is not a contiguous netmask");
        bad("10.0.0.1 10.0.0.2", 1, "write one entry per line");
        bad("# ok\n10.0.0.1, 10.0.0.2", 2, "write one entry per line");
        bad("fe80::1%eth0", 1, "is not an IPv4 or IPv6 address");
        bad("/24", 1, "\"\" is not an IPv4 or IPv6 address");
        bad("1.2.3.4\nab\0cd", 2, "NUL byte");
        bad(&"#".repeat(5000), 1, "at most 4096 bytes");
        bad(&"# padding padding padding\n".repeat(50_000), 0, "1 MiB");
    }

    #[test]
    fn load_errors() {
        let dir =
            std::env::temp_dir().join(format!("portsentry-ignore-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latin1.ignore");
        std::fs::write(&path, b"10.0.0.1\n# caf\xe9\n").unwrap();
        let e = IgnoreList::load(&path).unwrap_err();
        assert_eq!((e.path.as_path(), e.line), (path.as_path(), 2), "{e}");
        assert!(e.message.contains("not valid UTF-8"), "{e}");
        let e = IgnoreList::load(&dir.join("missing")).unwrap_err();
        assert_eq!(e.line, 0);
        assert!(e.message.starts_with("cannot open"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn insert_extend_merge() {
        let mut l = ok("10.0.0.0/8");
        assert!(!l.insert(net("10.1.2.3/8")), "already there once masked");
        assert!(l.insert(net("::1/128")));
        l.extend([net("127.0.0.0/8"), net("::1/128")]);
        assert_eq!(
            l.nets(),
            [net("10.0.0.0/8"), net("::1/128"), net("127.0.0.0/8")]
        );
        let mut always: IgnoreList = [net("127.0.0.0/8"), net("::ffff:169.254.0.0/112")]
            .into_iter()
            .collect();
        assert_eq!(always.nets()[1], net("169.254.0.0/16"));
        always.merge(&l);
        assert_eq!(
            always.nets(),
            [
                net("127.0.0.0/8"),
                net("169.254.0.0/16"),
                net("10.0.0.0/8"),
                net("::1/128"),
            ]
        );
        assert_eq!(always.len(), 4);
        assert!(always.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(always.iter().any(|n| *n == net("10.0.0.0/8")));
    }

    #[test]
    fn netmask_bits() {
        assert_eq!(mask_bits(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_bits(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_bits(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(mask_bits(Ipv4Addr::new(255, 0, 0, 1)), None);
    }
}
