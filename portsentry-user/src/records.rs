//! PortSentry's record formats, byte for byte: the `attackalert:` log lines, the history and
//! blocked file lines (which fail2ban's shipped `portsentry` filter parses), and where log
//! lines go ([`Logger`]: syslog as PortSentry logs, and/or stderr).
//!
//! Every text here is PortSentry 1.2's (`portsentry.c`, `portsentry_io.c`); see
//! `PORTSENTRY.md` ("Formats"). Addresses are formatted by `Display` (`192.0.2.7`,
//! `2001:db8::7`).

use std::{
    ffi::CString,
    io::{self, Write as _},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::actions::{self, KeepAttrs};

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

/// `TCP` for 6, `UDP` for 17; other protocols (which PortSentry never reports) as
/// `PROTO <n>`.
fn proto_name(proto: u8) -> String {
    match proto {
        6 => "TCP".to_owned(),
        17 => "UDP".to_owned(),
        n => format!("PROTO {n}"),
    }
}

/// The alert for a probe:
/// `attackalert: <scan text> from host: NAME/IP to TCP port: PORT` for TCP (proto 6), with
/// the scan text of [`tcp_scan_text`], and
/// `attackalert: UDP scan from host: NAME/IP to UDP port: PORT` for UDP (proto 17).
/// NAME is the resolved name, or the IP again.
pub fn attack_alert(proto: u8, tcp_flags: u8, name: &str, ip: IpAddr, port: u16) -> String {
    let scan = if proto == 6 {
        tcp_scan_text(tcp_flags)
    } else {
        format!("{} scan", proto_name(proto))
    };
    let proto = proto_name(proto);
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

/// `attackalert: Ignoring TCP response per configuration file setting.` (`UDP` for 17):
/// what 1.2 logs for a host it acts on with `BLOCK_*="0"`.
pub fn ignoring_response(proto: u8) -> String {
    format!(
        "attackalert: Ignoring {} response per configuration file setting.",
        proto_name(proto)
    )
}

/// Seconds since the epoch, rounded down (negative before it), as `time(2)`.
fn epoch_seconds(when: SystemTime) -> i64 {
    match when.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            -secs - i64::from(d.subsec_nanos() > 0)
        }
    }
}

/// `t` broken down in local time (`localtime_r`, which follows `TZ`; after changing `TZ`
/// call `tzset`). Falls back to UTC, then to all zeros, should the C library fail.
fn local_tm(t: i64) -> libc::tm {
    let time = t as libc::time_t;
    // SAFETY: `tm` is plain data, all-zero is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time_t and a tm we own.
    if unsafe { libc::localtime_r(&time, &mut tm) }.is_null() {
        // SAFETY: as above.
        if unsafe { libc::gmtime_r(&time, &mut tm) }.is_null() {
            // SAFETY: as above.
            tm = unsafe { std::mem::zeroed() };
        }
    }
    tm
}

/// One history/blocked-file line in PortSentry 1.2's format, local time, no trailing
/// newline: `1795625334 - 11/25/2026 16:48:54 Host: NAME/IP Port: PORT TCP Blocked` (`UDP`
/// for UDP). fail2ban's `portsentry` filter reads the IP after the last `/`.
pub fn history_line(when: SystemTime, name: &str, ip: IpAddr, port: u16, proto: u8) -> String {
    let t = epoch_seconds(when);
    let tm = local_tm(t);
    format!(
        "{t} - {:02}/{:02}/{:04} {:02}:{:02}:{:02} Host: {name}/{ip} Port: {port} {} Blocked",
        tm.tm_mon + 1,
        tm.tm_mday,
        i64::from(tm.tm_year) + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        proto_name(proto)
    )
}

/// Appends a history line: [`actions::append_line`] (append, no symlink followed, fsync;
/// errors name the path).
pub fn append_history(path: &Path, line: &str) -> io::Result<()> {
    actions::append_line(path, line)
}

/// Rewrites a blocked file atomically to exactly `lines`, each ended by `\n`: a temp file in
/// the same directory, fsync, rename. A symlink at `path` is replaced, never followed (the
/// rename replaces the link itself). Creates the parent directory (0755) if missing. A
/// regular file already there keeps its mode; a new one is 0644 less the umask. A line
/// containing a newline is refused. Errors name the path.
pub fn write_blocked(path: &Path, lines: &[String]) -> io::Result<()> {
    let write = || -> io::Result<()> {
        let mut content = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            if line.contains('\n') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "refusing to write a line that contains a newline",
                ));
            }
            content.extend_from_slice(line.as_bytes());
            content.push(b'\n');
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
        let keep = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => Some(KeepAttrs {
                mode: meta.mode() & 0o7777,
                owner: None,
            }),
            _ => None,
        };
        actions::write_atomic(path, &content, keep)
    };
    write().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
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

/// Where record lines go: syslog (ident `portsentry`, `LOG_PID`, facility `LOG_DAEMON`)
/// and/or stderr, each line as it is.
#[derive(Debug)]
pub struct Logger {
    syslog: bool,
    stderr: bool,
}

/// syslog keeps the pointer it is given: a static string.
const SYSLOG_IDENT: &std::ffi::CStr = c"portsentry";

impl Logger {
    /// A logger to the sinks that are on; with `syslog`, opens the process's syslog
    /// connection (`openlog`) under PortSentry's ident.
    pub fn new(syslog: bool, stderr: bool) -> Logger {
        if syslog {
            // SAFETY: the ident is a static NUL-terminated string, as openlog requires.
            unsafe { libc::openlog(SYSLOG_IDENT.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        }
        Logger { syslog, stderr }
    }

    /// Logs `line` at `LOG_NOTICE` (PortSentry's level for everything it reports).
    pub fn notice(&self, line: &str) {
        self.emit(libc::LOG_NOTICE, line);
    }

    /// Logs `line` at `LOG_WARNING`.
    pub fn warn(&self, line: &str) {
        self.emit(libc::LOG_WARNING, line);
    }

    fn emit(&self, level: libc::c_int, line: &str) {
        if self.syslog {
            // A NUL would end the C string early; the line never holds one, but be sure.
            let text =
                CString::new(line.replace('\0', "")).expect("no NUL bytes are left in the line");
            // SAFETY: a "%s" format with one valid C string argument: the line is never
            // read as a format.
            unsafe { libc::syslog(level | libc::LOG_DAEMON, c"%s".as_ptr(), text.as_ptr()) };
        }
        if self.stderr {
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            // One write per line; a closed stderr must not stop the daemon.
            let _ = io::stderr().lock().write_all(&bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        os::unix::fs::{PermissionsExt as _, symlink},
        path::PathBuf,
        time::Duration,
    };

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
    const TCP: u8 = 6;
    const UDP: u8 = 17;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portsentry-records-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Reference for `ReportPacketType`, written from PORTSENTRY.md's rules over named
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
            attack_alert(TCP, 0x02, "192.0.2.7", V4, 1),
            "attackalert: TCP SYN/Normal scan from host: 192.0.2.7/192.0.2.7 to TCP port: 1"
        );
        assert_eq!(
            attack_alert(TCP, 0x00, "scanner.example.org", V4, 143),
            "attackalert: TCP NULL scan from host: scanner.example.org/192.0.2.7 to TCP port: 143"
        );
        assert_eq!(
            attack_alert(TCP, 0x29, "2001:db8::7", V6, 79),
            "attackalert: TCP XMAS scan from host: 2001:db8::7/2001:db8::7 to TCP port: 79"
        );
        assert_eq!(
            attack_alert(TCP, 0x03, "192.0.2.7", V4, 65535),
            "attackalert: Unknown Type: TCP Packet Flags: SYN: 1 FIN: 1 ACK: 0 PSH: 0 URG: 0 \
             RST: 0 from host: 192.0.2.7/192.0.2.7 to TCP port: 65535"
        );
        // UDP ignores the flags.
        assert_eq!(
            attack_alert(UDP, 0x02, "192.0.2.7", V4, 31337),
            "attackalert: UDP scan from host: 192.0.2.7/192.0.2.7 to UDP port: 31337"
        );
        assert_eq!(
            attack_alert(UDP, 0, "h.example", V6, 0),
            "attackalert: UDP scan from host: h.example/2001:db8::7 to UDP port: 0"
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

    fn set_tz(tz: Option<&str>) {
        // SAFETY: this is the only test that changes the environment, and it restores it.
        unsafe {
            match tz {
                Some(tz) => std::env::set_var("TZ", tz),
                None => std::env::remove_var("TZ"),
            }
        }
        // SAFETY: tzset has no arguments; it re-reads TZ.
        unsafe { tzset() };
    }

    unsafe extern "C" {
        fn tzset();
    }

    /// Every assertion that depends on TZ, in one test (tests run in parallel).
    #[test]
    fn history_lines_in_local_time() {
        let saved = std::env::var("TZ").ok();
        // POSIX TZ strings: no tzdata needed.
        set_tz(Some("UTC0"));
        let utc_tcp = history_line(at(1_795_625_334), "192.0.2.7", V4, 1, TCP);
        let utc_udp = history_line(at(1_795_625_334), "h.example", V6, 53, UDP);
        let utc_early = history_line(at(86_400 * 31 + 3_661), "192.0.2.7", V4, 7, TCP);
        let utc_subsec = history_line(
            at(1_795_625_334) + Duration::from_millis(999),
            "192.0.2.7",
            V4,
            1,
            TCP,
        );
        set_tz(Some("IST-5:30"));
        let ist = history_line(at(1_795_625_334), "192.0.2.7", V4, 1, TCP);
        set_tz(Some("EST5EDT,M3.2.0,M11.1.0"));
        let est_winter = history_line(at(1_795_625_334), "192.0.2.7", V4, 1, TCP);
        let edt_summer = history_line(at(1_783_000_000), "192.0.2.7", V4, 1, TCP);
        set_tz(saved.as_deref());

        assert_eq!(
            utc_tcp,
            "1795625334 - 11/25/2026 16:48:54 Host: 192.0.2.7/192.0.2.7 Port: 1 TCP Blocked"
        );
        assert_eq!(
            utc_udp,
            "1795625334 - 11/25/2026 16:48:54 Host: h.example/2001:db8::7 Port: 53 UDP Blocked"
        );
        // Zero padding of every field.
        assert_eq!(
            utc_early,
            "2682061 - 02/01/1970 01:01:01 Host: 192.0.2.7/192.0.2.7 Port: 7 TCP Blocked"
        );
        // Whole seconds, rounded down, as time(2).
        assert_eq!(utc_subsec, utc_tcp);
        assert_eq!(
            ist,
            "1795625334 - 11/25/2026 22:18:54 Host: 192.0.2.7/192.0.2.7 Port: 1 TCP Blocked"
        );
        assert_eq!(
            est_winter,
            "1795625334 - 11/25/2026 11:48:54 Host: 192.0.2.7/192.0.2.7 Port: 1 TCP Blocked"
        );
        // 1783000000 is 2026-07-02 13:46:40 UTC: daylight time, UTC-4.
        assert_eq!(
            edt_summer,
            "1783000000 - 07/02/2026 09:46:40 Host: 192.0.2.7/192.0.2.7 Port: 1 TCP Blocked"
        );
    }

    #[test]
    fn epoch_seconds_round_down() {
        assert_eq!(epoch_seconds(at(0)), 0);
        assert_eq!(epoch_seconds(at(5) + Duration::from_nanos(1)), 5);
        assert_eq!(epoch_seconds(UNIX_EPOCH - Duration::from_secs(2)), -2);
        assert_eq!(epoch_seconds(UNIX_EPOCH - Duration::from_millis(1)), -1);
    }

    /// fail2ban's `filter.d/portsentry.conf`: `failregex = /<HOST> Port\: [0-9]+ (TCP|UDP)
    /// Blocked$`, with `<HOST>` standing for a group that matches a host or address.
    #[test]
    fn fail2ban_filter_finds_the_ip() {
        let re = regex::Regex::new(r"/(?P<host>[0-9a-fA-F:.]+) Port\: [0-9]+ (TCP|UDP) Blocked$")
            .unwrap();
        let hostile = sanitize_hostname("x/10.9.9.9 Port: 1 TCP Blocked\n/10.8.8.8").unwrap();
        let cases: [(IpAddr, Option<&str>, u8); 8] = [
            (V4, None, TCP),
            (V4, Some("scanner.example.org"), UDP),
            (V6, None, UDP),
            (V6, Some("scanner.example.org"), TCP),
            // Names that look like addresses or hex digits.
            (V4, Some("10.0.0.1"), TCP),
            (V6, Some("cafe.be"), TCP),
            ("::ffff:192.0.2.7".parse().unwrap(), None, TCP),
            (V4, Some(hostile.as_str()), TCP),
        ];
        for (ip, name, proto) in cases {
            let ip_text = ip.to_string();
            let line = history_line(at(1_795_625_334), name.unwrap_or(&ip_text), ip, 1024, proto);
            let caps = re
                .captures(&line)
                .unwrap_or_else(|| panic!("no match: {line}"));
            assert_eq!(&caps["host"], ip_text, "{line}");
        }
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

    #[test]
    fn history_is_appended() {
        let dir = temp_dir("history");
        let history = dir.join("portsentry.history");
        append_history(&history, "one").unwrap();
        append_history(&history, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&history).unwrap(), "one\ntwo\n");
        let link = dir.join("link");
        symlink(&history, &link).unwrap();
        let e = append_history(&link, "three").unwrap_err();
        assert_eq!(e.kind(), io::Error::from_raw_os_error(libc::ELOOP).kind());
        assert_eq!(std::fs::read_to_string(&history).unwrap(), "one\ntwo\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn blocked_file_is_replaced_atomically() {
        let dir = temp_dir("blocked");
        // The parent directory is created.
        let blocked = dir.join("state/portsentry.blocked.atcp");
        let lines = vec![
            "1795625334 - 11/25/2026 16:48:54 Host: 192.0.2.7/192.0.2.7 Port: 1 TCP Blocked"
                .to_owned(),
            "1795625335 - 11/25/2026 16:48:55 Host: h/2001:db8::7 Port: 2 TCP Blocked".to_owned(),
        ];
        write_blocked(&blocked, &lines).unwrap();
        assert_eq!(
            std::fs::read_to_string(&blocked).unwrap(),
            format!("{}\n{}\n", lines[0], lines[1])
        );
        let state = dir.join("state");
        let dir_mode = std::fs::metadata(&state).unwrap().mode() & 0o777;
        assert_eq!(dir_mode & !0o755, 0, "{dir_mode:o}");

        // A rewrite is a new file renamed into place: a reader holding the old one sees
        // the old content whole, and no temp file is left.
        let old = std::fs::File::open(&blocked).unwrap();
        std::fs::set_permissions(&blocked, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_blocked(&blocked, &lines[1..]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&blocked).unwrap(),
            format!("{}\n", lines[1])
        );
        assert_eq!(
            std::io::read_to_string(old).unwrap(),
            format!("{}\n{}\n", lines[0], lines[1])
        );
        assert_eq!(
            std::fs::metadata(&blocked).unwrap().mode() & 0o7777,
            0o600,
            "an existing file keeps its mode"
        );
        write_blocked(&blocked, &[]).unwrap();
        assert_eq!(std::fs::read(&blocked).unwrap(), b"");
        assert_eq!(names_in(&state), ["portsentry.blocked.atcp"]);

        // A symlink at the path is replaced; the file it pointed to is untouched.
        let target = dir.join("precious");
        std::fs::write(&target, "do not touch\n").unwrap();
        let link = state.join("portsentry.blocked.audp");
        symlink(&target, &link).unwrap();
        write_blocked(&link, &lines[..1]).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "do not touch\n");
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_file(), "the link itself was replaced");
        assert_eq!(
            std::fs::read_to_string(&link).unwrap(),
            format!("{}\n", lines[0])
        );
        // A dangling symlink: replaced, nothing created where it pointed.
        let dangling = state.join("dangling");
        symlink(dir.join("nowhere"), &dangling).unwrap();
        write_blocked(&dangling, &lines[..1]).unwrap();
        assert!(!dir.join("nowhere").exists());
        assert!(std::fs::symlink_metadata(&dangling).unwrap().is_file());

        // A line holding a newline would be two lines: refused, file unchanged.
        let e = write_blocked(&blocked, &["a\nb".to_owned()]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("portsentry.blocked.atcp"), "{e}");
        assert_eq!(std::fs::read(&blocked).unwrap(), b"");
        assert_eq!(
            names_in(&state),
            [
                "dangling",
                "portsentry.blocked.atcp",
                "portsentry.blocked.audp"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn logger_never_uses_the_line_as_a_format() {
        // With "%n" read as a format this would write through a garbage pointer.
        let line = "portsentry unit test: %s%n%d%n%x are not conversions";
        Logger::new(true, false).notice(line);
        Logger::new(true, false).warn(line);
        Logger::new(false, true).notice("portsentry unit test: a line on stderr");
        Logger::new(false, false).warn("nowhere");
    }
}
