//! PortSentry's `attackalert:` log lines, byte for byte (PortSentry 1.2's `portsentry.c`;
//! docs/configuration.md, "Log lines"). Addresses are formatted by `Display`
//! (`192.0.2.7`, `2001:db8::7`).

use std::net::IpAddr;

use portsentry_common::{PROTO_SCTP, ScanType};

use crate::kinds::Protocol;

/// TCP header flag bits (the 13th byte of the TCP header).
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;

/// The longest name [`sanitize_hostname`] keeps (a DNS name's limit).
pub const MAX_HOSTNAME: usize = 253;

/// The scan-type text of PortSentry 1.2 (`ReportPacketType`) for TCP flags; only SYN FIN
/// ACK PSH URG RST are looked at (ECE and CWR are ignored):
///
/// - none set: `TCP NULL scan`;
/// - FIN, URG and PSH set (whatever else is): `TCP XMAS scan`;
/// - FIN alone: `TCP FIN scan`;
/// - SYN alone: `TCP SYN/Normal scan`;
/// - anything else:
///   `Unknown Type: TCP Packet Flags: SYN: %d FIN: %d ACK: %d PSH: %d URG: %d RST: %d`,
///   each 0 or 1.
pub fn tcp_scan_text(flags: u8) -> String {
    let flags = flags & (FIN | SYN | RST | PSH | ACK | URG);
    let text = if flags == 0 {
        "TCP NULL scan"
    } else if flags & (FIN | URG | PSH) == FIN | URG | PSH {
        "TCP XMAS scan"
    } else if flags == FIN {
        "TCP FIN scan"
    } else if flags == SYN {
        "TCP SYN/Normal scan"
    } else {
        let bit = |f: u8| u8::from(flags & f != 0);
        return format!(
            "Unknown Type: TCP Packet Flags: SYN: {} FIN: {} ACK: {} PSH: {} URG: {} RST: {}",
            bit(SYN),
            bit(FIN),
            bit(ACK),
            bit(PSH),
            bit(URG),
            bit(RST)
        );
    };
    text.to_owned()
}

/// The scan text of a probe: PortSentry 1.2's ([`tcp_scan_text`], `UDP scan`) for the
/// types it knows, and in its style for the types it does not see:
///
/// - a segment with ACK of no connection: `TCP ACK scan` (nmap's ACK and Window scans),
///   with FIN and ACK: `TCP FIN/ACK (Maimon) scan`;
/// - a first fragment too short to carry the TCP flags: `TCP tiny fragment scan`;
/// - a datagram of an IP protocol nothing here serves: `IP protocol scan`.
pub fn scan_text(scan_type: ScanType, tcp_flags: u8) -> String {
    match scan_type {
        ScanType::Udp => "UDP scan".to_owned(),
        ScanType::TcpAck => "TCP ACK scan".to_owned(),
        ScanType::TcpMaimon => "TCP FIN/ACK (Maimon) scan".to_owned(),
        ScanType::TcpFragment => "TCP tiny fragment scan".to_owned(),
        ScanType::IpProto => "IP protocol scan".to_owned(),
        ScanType::TcpNull
        | ScanType::TcpXmas
        | ScanType::TcpFin
        | ScanType::TcpSyn
        | ScanType::TcpUnknown => tcp_scan_text(tcp_flags),
    }
}

/// The alert for a probe:
/// `attackalert: <scan text> from host: NAME/IP to TCP port: PORT` for TCP, with the scan
/// text of [`scan_text`], and
/// `attackalert: UDP scan from host: NAME/IP to UDP port: PORT` for UDP, and
/// `attackalert: IP protocol scan from host: NAME/IP to protocol: N` for an IP protocol
/// (`SCTP scan` for protocol 132: nmap `-sY` where nothing serves SCTP).
/// NAME is the resolved name, or the IP again.
pub fn attack_alert(
    scan_type: ScanType,
    tcp_flags: u8,
    name: &str,
    ip: IpAddr,
    port: u16,
) -> String {
    let scan = scan_text(scan_type, tcp_flags);
    if scan_type == ScanType::IpProto {
        let scan = if port == u16::from(PROTO_SCTP) {
            "SCTP scan"
        } else {
            &scan
        };
        return format!("attackalert: {scan} from host: {name}/{ip} to protocol: {port}");
    }
    let proto = Protocol::of(scan_type);
    format!("attackalert: {scan} from host: {name}/{ip} to {proto} port: {port}")
}

/// `attackalert: Host: NAME/IP is already blocked Ignoring`
pub fn already_blocked(name: &str, ip: IpAddr) -> String {
    format!("attackalert: Host: {name}/{ip} is already blocked Ignoring")
}

/// `attackalert: Host IP has been blocked via wrappers with string: "STRING"`
pub fn blocked_via_wrappers(ip: IpAddr, line: &str) -> String {
    format!("attackalert: Host {ip} has been blocked via wrappers with string: \"{line}\"")
}

/// `attackalert: Host IP has been blocked via dropped route using command: "COMMAND"`
pub fn blocked_via_route(ip: IpAddr, cmd: &str) -> String {
    format!("attackalert: Host {ip} has been blocked via dropped route using command: \"{cmd}\"")
}

/// `attackalert: External command run for host: IP using command: "COMMAND"`
pub fn external_command(ip: IpAddr, cmd: &str) -> String {
    format!("attackalert: External command run for host: {ip} using command: \"{cmd}\"")
}

/// `attackalert: Ignoring TCP response per configuration file setting.` (`UDP` for UDP):
/// what 1.2 logs for a host it acts on with `BLOCK_*="0"`.
pub fn ignoring_response(proto: Protocol) -> String {
    format!("attackalert: Ignoring {proto} response per configuration file setting.")
}

/// A name from reverse DNS made safe for a log line and a history line: only ASCII letters,
/// digits, `.`, `-` and `_` are kept (everything else, control characters, spaces, `/`,
/// shell metacharacters and non-ASCII included, is dropped), at most [`MAX_HOSTNAME`]
/// characters. An empty result is `None`: the caller then uses the IP.
pub fn sanitize_hostname(name: &str) -> Option<String> {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(MAX_HOSTNAME)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
    const TCP: Protocol = Protocol::Tcp;
    const UDP: Protocol = Protocol::Udp;

    /// Reference for `ReportPacketType`, written from the rules in [`tcp_scan_text`]'s documentation over named
    /// booleans rather than bit masks.
    fn reference(syn: bool, fin: bool, ack: bool, psh: bool, urg: bool, rst: bool) -> String {
        let none = !(syn || fin || ack || psh || urg || rst);
        if none {
            "TCP NULL scan".to_owned()
        } else if fin && urg && psh {
            "TCP XMAS scan".to_owned()
        } else if fin && !syn && !ack && !psh && !urg && !rst {
            "TCP FIN scan".to_owned()
        } else if syn && !fin && !ack && !psh && !urg && !rst {
            "TCP SYN/Normal scan".to_owned()
        } else {
            let d = |b: bool| if b { 1 } else { 0 };
            format!(
                "Unknown Type: TCP Packet Flags: SYN: {} FIN: {} ACK: {} PSH: {} URG: {} RST: {}",
                d(syn),
                d(fin),
                d(ack),
                d(psh),
                d(urg),
                d(rst)
            )
        }
    }

    #[test]
    fn scan_text_for_all_64_flag_combinations() {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..64u8 {
            let [syn, fin, ack, psh, urg, rst] = [0, 1, 2, 3, 4, 5].map(|b| i & (1 << b) != 0);
            // The TCP header's bits: FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20.
            let flags = u8::from(fin)
                | u8::from(syn) << 1
                | u8::from(rst) << 2
                | u8::from(psh) << 3
                | u8::from(ack) << 4
                | u8::from(urg) << 5;
            let expected = reference(syn, fin, ack, psh, urg, rst);
            assert_eq!(tcp_scan_text(flags), expected, "flags {flags:#04x}");
            // ECE and CWR are not looked at.
            assert_eq!(tcp_scan_text(flags | 0xc0), expected, "flags {flags:#04x}");
            let kind = expected.split(':').next().unwrap().to_owned();
            *counts.entry(kind).or_insert(0) += 1;
        }
        assert_eq!(counts["TCP NULL scan"], 1);
        assert_eq!(counts["TCP FIN scan"], 1);
        assert_eq!(counts["TCP SYN/Normal scan"], 1);
        assert_eq!(counts["TCP XMAS scan"], 8);
        assert_eq!(counts["Unknown Type"], 53);

        // Literal spot checks.
        assert_eq!(tcp_scan_text(0x00), "TCP NULL scan");
        assert_eq!(tcp_scan_text(0x29), "TCP XMAS scan");
        assert_eq!(tcp_scan_text(0x3f), "TCP XMAS scan");
        assert_eq!(tcp_scan_text(0x01), "TCP FIN scan");
        assert_eq!(tcp_scan_text(0x02), "TCP SYN/Normal scan");
        assert_eq!(tcp_scan_text(0xc2), "TCP SYN/Normal scan");
        assert_eq!(
            tcp_scan_text(0x03),
            "Unknown Type: TCP Packet Flags: SYN: 1 FIN: 1 ACK: 0 PSH: 0 URG: 0 RST: 0"
        );
        assert_eq!(
            tcp_scan_text(0x12),
            "Unknown Type: TCP Packet Flags: SYN: 1 FIN: 0 ACK: 1 PSH: 0 URG: 0 RST: 0"
        );
        assert_eq!(
            tcp_scan_text(0x28),
            "Unknown Type: TCP Packet Flags: SYN: 0 FIN: 0 ACK: 0 PSH: 1 URG: 1 RST: 0"
        );
        assert_eq!(
            tcp_scan_text(0x04),
            "Unknown Type: TCP Packet Flags: SYN: 0 FIN: 0 ACK: 0 PSH: 0 URG: 0 RST: 1"
        );
    }

    #[test]
    fn alert_lines() {
        assert_eq!(
            attack_alert(ScanType::TcpSyn, 0x02, "192.0.2.7", V4, 1),
            "attackalert: TCP SYN/Normal scan from host: 192.0.2.7/192.0.2.7 to TCP port: 1"
        );
        assert_eq!(
            attack_alert(ScanType::TcpNull, 0x00, "scanner.example.org", V4, 143),
            "attackalert: TCP NULL scan from host: scanner.example.org/192.0.2.7 to TCP port: 143"
        );
        assert_eq!(
            attack_alert(ScanType::TcpXmas, 0x29, "2001:db8::7", V6, 79),
            "attackalert: TCP XMAS scan from host: 2001:db8::7/2001:db8::7 to TCP port: 79"
        );
        assert_eq!(
            attack_alert(ScanType::TcpUnknown, 0x03, "192.0.2.7", V4, 65535),
            "attackalert: Unknown Type: TCP Packet Flags: SYN: 1 FIN: 1 ACK: 0 PSH: 0 URG: 0 \
             RST: 0 from host: 192.0.2.7/192.0.2.7 to TCP port: 65535"
        );
        // UDP ignores the flags.
        assert_eq!(
            attack_alert(ScanType::Udp, 0x02, "192.0.2.7", V4, 31337),
            "attackalert: UDP scan from host: 192.0.2.7/192.0.2.7 to UDP port: 31337"
        );
        assert_eq!(
            attack_alert(ScanType::Udp, 0, "h.example", V6, 0),
            "attackalert: UDP scan from host: h.example/2001:db8::7 to UDP port: 0"
        );
        // The types PortSentry 1.2 does not see, in its style.
        assert_eq!(
            attack_alert(ScanType::TcpAck, 0x10, "192.0.2.7", V4, 80),
            "attackalert: TCP ACK scan from host: 192.0.2.7/192.0.2.7 to TCP port: 80"
        );
        assert_eq!(
            attack_alert(ScanType::TcpMaimon, 0x11, "192.0.2.7", V4, 80),
            "attackalert: TCP FIN/ACK (Maimon) scan from host: 192.0.2.7/192.0.2.7 to TCP port: 80"
        );
        assert_eq!(
            attack_alert(ScanType::TcpFragment, 0, "192.0.2.7", V4, 22),
            "attackalert: TCP tiny fragment scan from host: 192.0.2.7/192.0.2.7 to TCP port: 22"
        );
        assert_eq!(
            attack_alert(ScanType::IpProto, 0, "192.0.2.7", V4, 132),
            "attackalert: SCTP scan from host: 192.0.2.7/192.0.2.7 to protocol: 132"
        );
        assert_eq!(
            attack_alert(ScanType::IpProto, 0, "192.0.2.7", V4, 153),
            "attackalert: IP protocol scan from host: 192.0.2.7/192.0.2.7 to protocol: 153"
        );
        assert_eq!(
            already_blocked("192.0.2.7", V4),
            "attackalert: Host: 192.0.2.7/192.0.2.7 is already blocked Ignoring"
        );
        assert_eq!(
            already_blocked("h.example", V6),
            "attackalert: Host: h.example/2001:db8::7 is already blocked Ignoring"
        );
        assert_eq!(
            blocked_via_wrappers(V4, "ALL: 192.0.2.7 : DENY"),
            "attackalert: Host 192.0.2.7 has been blocked via wrappers with string: \
             \"ALL: 192.0.2.7 : DENY\""
        );
        assert_eq!(
            blocked_via_route(V4, "/sbin/route add -host 192.0.2.7 reject"),
            "attackalert: Host 192.0.2.7 has been blocked via dropped route using command: \
             \"/sbin/route add -host 192.0.2.7 reject\""
        );
        assert_eq!(
            blocked_via_route(V6, "/sbin/ip6tables -I INPUT -s 2001:db8::7 -j DROP"),
            "attackalert: Host 2001:db8::7 has been blocked via dropped route using command: \
             \"/sbin/ip6tables -I INPUT -s 2001:db8::7 -j DROP\""
        );
        assert_eq!(
            external_command(V4, "/usr/local/bin/alert 192.0.2.7 1 atcp"),
            "attackalert: External command run for host: 192.0.2.7 using command: \
             \"/usr/local/bin/alert 192.0.2.7 1 atcp\""
        );
        assert_eq!(
            ignoring_response(TCP),
            "attackalert: Ignoring TCP response per configuration file setting."
        );
        assert_eq!(
            ignoring_response(UDP),
            "attackalert: Ignoring UDP response per configuration file setting."
        );
    }

    #[test]
    fn hostnames_are_sanitized() {
        assert_eq!(
            sanitize_hostname("scanner-7.example.org").as_deref(),
            Some("scanner-7.example.org")
        );
        assert_eq!(
            sanitize_hostname("Under_Score.EXAMPLE.").as_deref(),
            Some("Under_Score.EXAMPLE.")
        );
        assert_eq!(sanitize_hostname("$(reboot)").as_deref(), Some("reboot"));
        assert_eq!(
            sanitize_hostname("a;b|c&d`e`>f<g'h\"i\\j*k?l~m#n%o{p}q[r]s!t=u+v,w:x@y z").as_deref(),
            Some("abcdefghijklmnopqrstuvwxyz")
        );
        assert_eq!(
            sanitize_hostname("evil\x1b[31m\r\n.example\0\t\x7f").as_deref(),
            Some("evil31m.example")
        );
        assert_eq!(
            sanitize_hostname("host/1.2.3.4 Port: 1 TCP Blocked").as_deref(),
            Some("host1.2.3.4Port1TCPBlocked")
        );
        assert_eq!(
            sanitize_hostname("münchen.de").as_deref(),
            Some("mnchen.de")
        );
        assert_eq!(sanitize_hostname(""), None);
        assert_eq!(sanitize_hostname("$()"), None);
        assert_eq!(sanitize_hostname("\n\t\r \x1b"), None);
        assert_eq!(sanitize_hostname("ÿ€"), None);
        let long = "a".repeat(1000);
        assert_eq!(sanitize_hostname(&long), Some("a".repeat(MAX_HOSTNAME)));
        let long_mixed = format!("{}{}", "$".repeat(300), "b".repeat(300));
        assert_eq!(sanitize_hostname(&long_mixed), Some("b".repeat(253)));
    }
}
