//! Port policy: which TCP and UDP ports the kernel watches, and the warnings an operator
//! should see about them.
//!
//! Ports where a service listens are not taken out here: the XDP program looks up a
//! socket for every probe to a watched port (see the data plane), so a service that
//! starts or stops is accounted for from its very next packet, with no list to poll.

use std::{fs, ops::RangeInclusive, path::Path};

use super::{Config, ports::PortSet};

/// Where the kernel's ephemeral port range is read from.
pub(crate) const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The watched ports and what was said about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    pub tcp: PortSet,
    pub udp: PortSet,
    /// The kernel's ephemeral range, when it could be read.
    pub ephemeral: Option<RangeInclusive<u16>>,
    /// UDP ports taken out because they lie in the ephemeral range.
    pub udp_ephemeral_removed: usize,
    pub warnings: Vec<String>,
}

/// Reads `ip_local_port_range` ("32768\t60999").
pub(crate) fn read_ephemeral_range(path: &Path) -> Option<RangeInclusive<u16>> {
    parse_range(&fs::read_to_string(path).ok()?)
}

fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(|s| s.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) if a <= b => Some(a..=b),
        _ => None,
    }
}

/// The policy for `config` given the ephemeral range.
pub(crate) fn build(config: &Config, ephemeral: Option<RangeInclusive<u16>>) -> PortPolicy {
    let tcp = config.tcp_watched_ports();
    let mut udp = config.udp_watched_ports();
    let mut warnings = Vec::new();
    let mut removed = 0;
    if let Some(range) = &ephemeral {
        let (a, b) = (range.start(), range.end());
        let in_range = |s: &PortSet| range.clone().filter(|p| s.contains(*p)).count();
        let tcp_overlap = in_range(&tcp);
        if tcp_overlap > 0 {
            warnings.push(format!(
                "{tcp_overlap} watched TCP ports lie in the ephemeral range {a}-{b} \
                 ({LOCAL_PORT_RANGE}); replies to this host's own connections use those \
                 ports (they carry ACK and are never counted, but a stray FIN or NULL \
                 packet to a recently closed connection can be)"
            ));
        }
        let udp_overlap = in_range(&udp);
        if udp_overlap > 0 {
            if config.watch_ephemeral_udp {
                warnings.push(format!(
                    "{udp_overlap} watched UDP ports lie in the ephemeral range {a}-{b} and \
                     WATCH_EPHEMERAL_UDP=1 keeps them: a late reply to this host's own UDP \
                     traffic (a DNS answer after the socket closed) will count as a probe"
                ));
            } else {
                for p in range.clone() {
                    udp.remove(p);
                }
                removed = udp_overlap;
                warnings.push(format!(
                    "{udp_overlap} UDP ports in the ephemeral range {a}-{b} are not watched \
                     (replies to this host's own UDP traffic land there; set \
                     WATCH_EPHEMERAL_UDP=1 to watch them anyway)"
                ));
            }
        }
    } else {
        warnings.push(format!(
            "could not read {LOCAL_PORT_RANGE}; the ephemeral UDP range is not excluded"
        ));
    }
    PortPolicy {
        tcp,
        udp,
        ephemeral,
        udp_ephemeral_removed: removed,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, parse};

    fn cfg(text: &str) -> Config {
        parse(text, Path::new("/t/portsentry.conf")).unwrap()
    }

    #[test]
    fn reads_the_kernel_format() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("junk"), None);
    }

    #[test]
    fn advanced_defaults_watch_below_1024_minus_debian_exclusions() {
        let p = build(&Config::default(), Some(32768..=60999));
        assert_eq!(p.tcp.len(), 1023 - 2);
        assert!(p.tcp.contains(1) && p.tcp.contains(1023) && !p.tcp.contains(0));
        assert!(!p.tcp.contains(113) && !p.tcp.contains(139) && !p.tcp.contains(1024));
        for port in [520, 138, 137, 67] {
            assert!(!p.udp.contains(port), "{port}");
        }
        assert_eq!(p.udp.len(), 1023 - 4);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn ephemeral_udp_is_excluded_by_default_and_warned_about() {
        let c = cfg("ADVANCED_PORTS_UDP=\"40000\"\nADVANCED_PORTS_TCP=\"40000\"\n");
        let p = build(&c, Some(32768..=60999));
        assert!(p.udp.contains(32767) && !p.udp.contains(32768) && !p.udp.contains(39999));
        assert_eq!(p.udp_ephemeral_removed, 39999 - 32768 + 1);
        // TCP keeps them, with a warning.
        assert!(p.tcp.contains(35000));
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("TCP") && p.warnings[0].contains("32768-60999"));
        assert!(p.warnings[1].contains("WATCH_EPHEMERAL_UDP"));

        let c = cfg("ADVANCED_PORTS_UDP=\"40000\"\nWATCH_EPHEMERAL_UDP=\"1\"\n");
        let p = build(&c, Some(32768..=60999));
        assert!(p.udp.contains(35000));
        assert_eq!(p.udp_ephemeral_removed, 0);
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("will count as a probe"))
        );
    }

    #[test]
    fn stealth_lists_and_off() {
        let c = cfg("TCP_MODE=\"stcp\"\nTCP_PORTS=\"1,11,15,31337\"\nUDP_MODE=\"off\"\n");
        assert_eq!(c.tcp_mode, Mode::Stealth);
        let p = build(&c, Some(32768..=60999));
        assert_eq!(p.tcp.to_string(), "1,11,15,31337");
        assert!(p.udp.is_empty());
    }

    #[test]
    fn unreadable_range_is_a_warning() {
        let p = build(&Config::default(), None);
        assert!(p.warnings[0].contains(LOCAL_PORT_RANGE));
    }
}
