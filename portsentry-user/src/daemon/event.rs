//! A probe event from the kernel's ring buffer, in userspace types.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};

use portsentry_common::{
    ScanType,
    maps::{EVENT_KERNEL_BANNED, EVENT_PREFIX, EVENT_VERIFIED, ScanEvent},
};

use crate::{kernel::addr, kinds::Protocol};

/// A probe event from the kernel, in userspace types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeEvent {
    /// The source's address as the program counts it: under SOURCE_PREFIX_V6 an IPv6
    /// source's network address (what the log lines and commands show).
    pub ip: IpAddr,
    /// What a ban of the source covers: `ip` alone, or its network.
    pub source: IpNet,
    pub port: u16,
    pub scan_type: ScanType,
    pub tcp_flags: u8,
    pub hits: u32,
    pub distinct_ports: u32,
    /// The source's successful first contacts (SCAN_DETECTION="trw"; else 0).
    pub successes: u32,
    pub ts_ns: u64,
    pub first_ns: u64,
    pub ifindex: u32,
    /// The source answered the SYN-ACK challenge (VERIFY_SOURCES).
    pub verified: bool,
    /// The program banned the source at this probe (the kernel-side ban).
    pub kernel_banned: bool,
}

impl ProbeEvent {
    /// `None` for a record no version of the program writes (unknown scan type).
    /// `v6_prefix` is SOURCE_PREFIX_V6: the length of an event's network.
    pub fn from_raw(e: &ScanEvent, v6_prefix: u32) -> Option<ProbeEvent> {
        let ip = addr::from_key(&e.addr);
        let source = match ip {
            IpAddr::V6(a) if e.flags & EVENT_PREFIX != 0 => IpNet::V6(
                Ipv6Net::new(a, u8::try_from(v6_prefix.min(128)).expect("at most 128"))
                    .expect("a valid length")
                    .trunc(),
            ),
            _ => IpNet::from(ip),
        };
        Some(ProbeEvent {
            ip,
            source,
            port: e.port,
            scan_type: ScanType::from_u8(e.scan_type)?,
            tcp_flags: e.tcp_flags,
            hits: e.hits,
            distinct_ports: e.distinct_ports,
            successes: e.successes,
            ts_ns: e.ts_ns,
            first_ns: e.first_ns,
            ifindex: e.ifindex,
            verified: e.flags & EVENT_VERIFIED != 0,
            kernel_banned: e.flags & EVENT_KERNEL_BANNED != 0,
        })
    }

    pub fn proto(&self) -> Protocol {
        Protocol::of(self.scan_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_raw() {
        let mut raw = ScanEvent {
            addr: portsentry_common::v4_mapped([192, 0, 2, 7]),
            port: 22,
            scan_type: ScanType::TcpXmas as u8,
            ..Default::default()
        };
        let e = ProbeEvent::from_raw(&raw, 64).unwrap();
        assert_eq!(e.ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(e.source, "192.0.2.7/32".parse::<IpNet>().unwrap());
        assert_eq!(e.proto(), Protocol::Tcp);
        // An IPv6 source counted by its network.
        raw.addr = "2001:db8:0:7::"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let e = ProbeEvent::from_raw(&raw, 64).unwrap();
        assert_eq!(e.source, "2001:db8:0:7::/128".parse::<IpNet>().unwrap());
        raw.flags = EVENT_PREFIX;
        let e = ProbeEvent::from_raw(&raw, 64).unwrap();
        assert_eq!(e.source, "2001:db8:0:7::/64".parse::<IpNet>().unwrap());
        raw.scan_type = 0;
        assert_eq!(ProbeEvent::from_raw(&raw, 64), None);
    }
}
