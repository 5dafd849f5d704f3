//! TCP flag classification: PortSentry 1.2's `ReportPacketType` for segments without ACK
//! and RST, and the ACK class (segments of no connection: nmap's ACK, Window and Maimon
//! scans) that 1.2 does not look at.

/// TCP flag bits as they sit in byte 13 of the TCP header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    /// The six flags PortSentry looks at; ECE and CWR are ignored.
    pub const CLASSIFIED: u8 = FIN | SYN | RST | PSH | ACK | URG;
}

/// What kind of probe a packet is. Stored as `u8` in maps and events.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScanType {
    /// No flag among SYN, FIN, ACK, PSH, URG, RST set.
    TcpNull = 1,
    /// FIN, URG and PSH set, the other three clear.
    TcpXmas = 2,
    /// FIN alone.
    TcpFin = 3,
    /// SYN alone.
    TcpSyn = 4,
    /// Any other combination without ACK and RST.
    TcpUnknown = 5,
    /// Any UDP datagram to a watched port.
    Udp = 6,
    /// ACK set, RST clear, and not FIN+ACK without SYN: a segment of a connection this
    /// host does not have (nmap's ACK and Window scans send a bare ACK).
    TcpAck = 7,
    /// FIN and ACK set, SYN and RST clear (Maimon's scan, nmap `-sM`), to a connection
    /// this host does not have.
    TcpMaimon = 8,
    /// The first fragment of a TCP segment too short to carry its flags (fewer than 14
    /// bytes of TCP header: RFC 1858's tiny fragment, nmap `-f`).
    TcpFragment = 9,
    /// A datagram of an IP protocol nothing on this host serves (nmap `-sO`, SCTP with
    /// no SCTP stack): the kernel answers it with an ICMP error. Its "port" is the
    /// protocol number.
    IpProto = 10,
}

impl ScanType {
    /// Classifies TCP flags (byte 13 of the header). `None`: ACK or RST is set, so the
    /// packet belongs to a conversation and is not a probe.
    #[inline(always)]
    pub const fn from_tcp_flags(flags: u8) -> Option<ScanType> {
        use tcp_flags::*;
        let f = flags & CLASSIFIED;
        if f & (ACK | RST) != 0 {
            return None;
        }
        Some(match f {
            0 => ScanType::TcpNull,
            x if x == FIN | URG | PSH => ScanType::TcpXmas,
            FIN => ScanType::TcpFin,
            SYN => ScanType::TcpSyn,
            _ => ScanType::TcpUnknown,
        })
    }

    /// The ACK class of flags PortSentry's classification leaves out (`from_tcp_flags`
    /// gives `None`): `None` when RST is set (a reset is never answered).
    #[inline(always)]
    pub const fn ack_class(flags: u8) -> Option<ScanType> {
        use tcp_flags::*;
        let f = flags & CLASSIFIED;
        if f & RST != 0 || f & ACK == 0 {
            return None;
        }
        Some(if f & (FIN | SYN) == FIN {
            ScanType::TcpMaimon
        } else {
            ScanType::TcpAck
        })
    }

    /// Every type, in `as u8` order.
    pub const ALL: [ScanType; 10] = [
        ScanType::TcpNull,
        ScanType::TcpXmas,
        ScanType::TcpFin,
        ScanType::TcpSyn,
        ScanType::TcpUnknown,
        ScanType::Udp,
        ScanType::TcpAck,
        ScanType::TcpMaimon,
        ScanType::TcpFragment,
        ScanType::IpProto,
    ];

    /// The inverse of `as u8`; `None` for a value no version of the program writes.
    pub const fn from_u8(v: u8) -> Option<ScanType> {
        Some(match v {
            1 => ScanType::TcpNull,
            2 => ScanType::TcpXmas,
            3 => ScanType::TcpFin,
            4 => ScanType::TcpSyn,
            5 => ScanType::TcpUnknown,
            6 => ScanType::Udp,
            7 => ScanType::TcpAck,
            8 => ScanType::TcpMaimon,
            9 => ScanType::TcpFragment,
            10 => ScanType::IpProto,
            _ => return None,
        })
    }

    /// A segment of a connection this host does not have: acted on only once its source
    /// has probed ACK_SCAN_PORTS distinct ports (a client's late segments after a
    /// listener went away go to one port), by the program too ([`Settings::ban_spread`]).
    ///
    /// [`Settings::ban_spread`]: crate::maps::Settings::ban_spread
    pub const fn is_ack_class(self) -> bool {
        matches!(self, ScanType::TcpAck | ScanType::TcpMaimon)
    }

    /// Whether the program may ban at this probe itself: not for IP protocols, which the
    /// daemon acts on only over several protocols (the ACK class is banned once it has
    /// spread over ACK_SCAN_PORTS ports).
    pub const fn kernel_bannable(self) -> bool {
        !matches!(self, ScanType::IpProto)
    }

    /// Whether a probe of this type is a failed first contact of the Threshold Random
    /// Walk (SCAN_DETECTION="trw"): not the ACK class and IP protocols, which keep
    /// ACK_SCAN_PORTS and PROTO_SCAN_PROTOCOLS in every mode.
    pub const fn walks(self) -> bool {
        !self.is_ack_class() && self.kernel_bannable()
    }

    /// Short stable name, used in JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            ScanType::TcpNull => "tcp-null",
            ScanType::TcpXmas => "tcp-xmas",
            ScanType::TcpFin => "tcp-fin",
            ScanType::TcpSyn => "tcp-syn",
            ScanType::TcpUnknown => "tcp-unknown",
            ScanType::Udp => "udp",
            ScanType::TcpAck => "tcp-ack",
            ScanType::TcpMaimon => "tcp-maimon",
            ScanType::TcpFragment => "tcp-fragment",
            ScanType::IpProto => "ip-proto",
        }
    }

    /// The inverse of [`ScanType::name`].
    pub fn from_name(name: &str) -> Option<ScanType> {
        ScanType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// TCP flags that classify as this type (for a probe known only by its type).
    pub const fn example_flags(self) -> u8 {
        use tcp_flags::*;
        match self {
            ScanType::TcpNull | ScanType::Udp | ScanType::TcpFragment | ScanType::IpProto => 0,
            ScanType::TcpXmas => FIN | URG | PSH,
            ScanType::TcpFin => FIN,
            ScanType::TcpSyn => SYN,
            ScanType::TcpUnknown => SYN | FIN,
            ScanType::TcpAck => ACK,
            ScanType::TcpMaimon => FIN | ACK,
        }
    }

    /// A TCP probe; also an IP-protocol one, which the daemon treats under the TCP
    /// settings (TCP_MODE, BLOCK_TCP).
    pub const fn is_tcp(self) -> bool {
        !matches!(self, ScanType::Udp)
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::*;

    #[test]
    fn classification_matches_portsentry() {
        assert_eq!(ScanType::from_tcp_flags(0), Some(ScanType::TcpNull));
        assert_eq!(
            ScanType::from_tcp_flags(FIN | URG | PSH),
            Some(ScanType::TcpXmas)
        );
        assert_eq!(ScanType::from_tcp_flags(FIN), Some(ScanType::TcpFin));
        assert_eq!(ScanType::from_tcp_flags(SYN), Some(ScanType::TcpSyn));
        // ECE and CWR are not looked at: an ECN-setup SYN is a SYN.
        assert_eq!(ScanType::from_tcp_flags(SYN | 0xc0), Some(ScanType::TcpSyn));
        assert_eq!(ScanType::from_tcp_flags(0xc0), Some(ScanType::TcpNull));
        assert_eq!(
            ScanType::from_tcp_flags(SYN | FIN),
            Some(ScanType::TcpUnknown)
        );
        assert_eq!(
            ScanType::from_tcp_flags(FIN | PSH),
            Some(ScanType::TcpUnknown)
        );
        assert_eq!(
            ScanType::from_tcp_flags(FIN | URG | PSH | SYN),
            Some(ScanType::TcpUnknown)
        );
        for f in [
            ACK,
            RST,
            SYN | ACK,
            FIN | ACK,
            RST | ACK,
            FIN | URG | PSH | ACK,
        ] {
            assert_eq!(ScanType::from_tcp_flags(f), None, "flags {f:#x}");
        }
    }

    #[test]
    fn the_program_bans_the_ack_class_at_ack_scan_ports() {
        use crate::maps::{SETTING_ACK_PORTS_SHIFT, SETTING_V6_PREFIX_SHIFT, Settings};
        let with = |ports: u32| Settings {
            event_trigger: 1,
            events_per_sec: 0,
            event_burst: 0,
            flags: (ports << SETTING_ACK_PORTS_SHIFT) | (64 << SETTING_V6_PREFIX_SHIFT),
            cookie_secret: 0,
            trw: Default::default(),
        };
        assert_eq!(with(3).ban_spread(ScanType::TcpAck), 3);
        assert_eq!(with(3).ban_spread(ScanType::TcpMaimon), 3);
        assert_eq!(with(0).ban_spread(ScanType::TcpAck), u32::MAX, "0: never");
        for t in [ScanType::TcpSyn, ScanType::Udp, ScanType::TcpFragment] {
            assert_eq!(with(3).ban_spread(t), 1, "{t:?}");
        }
        assert!(ScanType::TcpAck.kernel_bannable() && !ScanType::TcpAck.walks());
        assert!(!ScanType::IpProto.kernel_bannable() && !ScanType::IpProto.walks());
        assert!(ScanType::TcpSyn.walks());
    }

    #[test]
    fn ack_class() {
        assert_eq!(ScanType::ack_class(ACK), Some(ScanType::TcpAck));
        assert_eq!(ScanType::ack_class(ACK | PSH), Some(ScanType::TcpAck));
        assert_eq!(ScanType::ack_class(SYN | ACK), Some(ScanType::TcpAck));
        assert_eq!(ScanType::ack_class(FIN | ACK), Some(ScanType::TcpMaimon));
        assert_eq!(
            ScanType::ack_class(FIN | ACK | PSH | URG),
            Some(ScanType::TcpMaimon)
        );
        assert_eq!(ScanType::ack_class(FIN | SYN | ACK), Some(ScanType::TcpAck));
        for f in 0..=255u8 {
            let ps = ScanType::from_tcp_flags(f);
            let ack = ScanType::ack_class(f);
            // Every flag combination is exactly one of: a PortSentry type, the ACK
            // class, or a reset.
            assert_eq!(
                ps.is_some() as u8 + ack.is_some() as u8 + (f & RST != 0) as u8,
                1,
                "flags {f:#x}"
            );
        }
    }

    #[test]
    fn example_flags_classify_as_their_type() {
        for t in [
            ScanType::TcpNull,
            ScanType::TcpXmas,
            ScanType::TcpFin,
            ScanType::TcpSyn,
            ScanType::TcpUnknown,
        ] {
            assert_eq!(ScanType::from_tcp_flags(t.example_flags()), Some(t));
        }
    }

    #[test]
    fn u8_round_trip() {
        for v in 0..=255u8 {
            if let Some(t) = ScanType::from_u8(v) {
                assert_eq!(t as u8, v);
            }
        }
        assert_eq!(ScanType::from_u8(0), None);
    }
}
