//! PortSentry's history and blocked files, byte for byte: one line per host acted on,
//! in local time, which fail2ban's shipped `portsentry` filter parses.

use std::{
    io,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    fsutil::{self, KeepAttrs},
    kinds::Protocol,
};

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

/// The protocol word of a history line: `TCP`, `UDP`, or, for a ban no probe caused (an
/// operator's), `PROTO 0`.
fn proto_word(proto: Option<Protocol>) -> &'static str {
    proto.map_or("PROTO 0", Protocol::name)
}

/// One history/blocked-file line in PortSentry 1.2's format, local time, no trailing
/// newline: `1795625334 - 11/25/2026 16:48:54 Host: NAME/IP Port: PORT TCP Blocked` (`UDP`
/// for UDP). fail2ban's `portsentry` filter reads the IP after the last `/`.
pub fn history_line(
    when: SystemTime,
    name: &str,
    ip: IpAddr,
    port: u16,
    proto: Option<Protocol>,
) -> String {
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
        proto_word(proto)
    )
}

/// Appends a history line and waits until it is on disk: [`crate::line_files::append`]
/// (no symlink followed; errors name the path).
pub async fn append_history(path: &Path, line: &str) -> io::Result<()> {
    crate::line_files::append(path, line).await
}

/// `BLOCKED_FILE.<mode>`, as PortSentry 1.2 names it.
pub fn blocked_path(base: &Path, mode: &str) -> PathBuf {
    PathBuf::from(format!("{}.{mode}", base.display()))
}

/// Rewrites a blocked file atomically to exactly `lines`, each ended by `\n`: a temp file in
/// the same directory, fsync, rename. A symlink at `path` is replaced, never followed (the
/// rename replaces the link itself). Creates the parent directory (0755) if missing. A
/// regular file already there keeps its mode; a new one is 0644 less the umask. A line
/// containing a newline is refused. Errors name the path.
pub fn write_blocked(path: &Path, lines: &[String]) -> io::Result<()> {
    let mut content = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        if line.contains('\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: refusing to write a line that contains a newline",
                    path.display()
                ),
            ));
        }
        content.extend_from_slice(line.as_bytes());
        content.push(b'\n');
    }
    write_blocked_bytes(path, &content)
}

/// [`write_blocked`] of lines already joined (each ended by `\n`).
pub fn write_blocked_bytes(path: &Path, content: &[u8]) -> io::Result<()> {
    write_blocked_with(path, |w| w.write_all(content))
}

/// [`write_blocked`] of what `fill` writes (buffered), each line ended by `\n`: a
/// blocked file of a million lines is written as it is made.
pub fn write_blocked_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> io::Result<()> {
    use io::Write as _;
    let write = || -> io::Result<()> {
        create_parent(path)?;
        let keep = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => Some(KeepAttrs {
                mode: meta.mode() & 0o7777,
                owner: None,
            }),
            _ => None,
        };
        fsutil::write_atomic_with(path, keep, |f| {
            let mut w = io::BufWriter::with_capacity(1 << 16, f);
            fill(&mut w)?;
            w.flush()
        })
    };
    write().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn create_parent(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    Ok(())
}

/// Appends lines (each ended by `\n`) to a blocked file, creating it (0644 less the
/// umask) when missing; a symlink is not followed (an error). Not fsynced: the ban
/// journal is the record that must survive a crash; the blocked files are rewritten
/// from it at the next start.
pub fn append_blocked(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let append = || -> io::Result<()> {
        create_parent(path)?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        f.write_all(content)
    };
    append().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::alert::sanitize_hostname;
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        os::unix::fs::{PermissionsExt as _, symlink},
        time::Duration,
    };

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
    const TCP: Option<Protocol> = Some(Protocol::Tcp);
    const UDP: Option<Protocol> = Some(Protocol::Udp);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
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
        let cases: [(IpAddr, Option<&str>, Option<Protocol>); 8] = [
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

    #[tokio::test]
    async fn history_is_appended() {
        let dir = crate::fsutil::temp_dir("records-history");
        let history = dir.join("portsentry.history");
        append_history(&history, "one").await.unwrap();
        append_history(&history, "two").await.unwrap();
        assert_eq!(std::fs::read_to_string(&history).unwrap(), "one\ntwo\n");
        let link = dir.join("link");
        symlink(&history, &link).unwrap();
        let e = append_history(&link, "three").await.unwrap_err();
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
        let dir = crate::fsutil::temp_dir("records-blocked");
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
}
