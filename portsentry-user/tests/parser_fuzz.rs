//! The config and ignore-file parsers against bad input: a corpus of malformed files
//! (`testdata/malformed`), each of which must be rejected naming its file and line, and
//! property tests that feed the parsers random bytes, random plausible lines and mutations of
//! Debian's stock file.
//!
//! The property tests run with a random seed; a failure prints the minimal failing input.
//! `PROPTEST_CASES` overrides the number of cases.

use std::{
    collections::{BTreeSet, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use portsentry_user::config::{
    self, Config, ConfigError, MAX_FILE_BYTES, MAX_LINE_BYTES, ignore::IgnoreList, ports::PortSet,
};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{TestCaseError, TestRunner},
};

// ---------------------------------------------------------------------------------------------
// The corpus

/// Every file in `testdata/malformed` (but the README), the line its error must name, and a
/// fragment its message must contain. `testdata/malformed/README.md` lists the same.
const CORPUS: &[(&str, usize, &str)] = &[
    (
        "unknown-key.conf",
        5,
        "unknown key SCAN_TRIGER; did you mean SCAN_TRIGGER?",
    ),
    (
        "unknown-key-no-suggestion.conf",
        5,
        "unknown key LOG_FLAGS; the known keys are TCP_PORTS, UDP_PORTS",
    ),
    (
        "unquoted-value.conf",
        5,
        "the value of SCAN_TRIGGER must be in double quotes: SCAN_TRIGGER=\"1\"",
    ),
    (
        "unterminated-quote.conf",
        4,
        "the value of KILL_RUN_CMD has no closing quote",
    ),
    (
        "trailing-junk.conf",
        5,
        "unexpected text after the closing quote of RESOLVE_HOST: \"yes\"",
    ),
    (
        "no-equals.conf",
        4,
        "found no '=' in \"RESOLVE_HOST \"0\"\"",
    ),
    (
        "lowercase-key.conf",
        5,
        "(keys are upper case); did you mean SCAN_TRIGGER?",
    ),
    (
        "duplicate-key.conf",
        8,
        "SCAN_TRIGGER is set twice, on line 4 and line 8",
    ),
    (
        "bad-block-mode.conf",
        5,
        "BLOCK_TCP must be 0, 1 or 2, not \"3\"",
    ),
    (
        "port-out-of-range.conf",
        5,
        "TCP_PORTS has the port 70000, which is out of range",
    ),
    (
        "reversed-range.conf",
        4,
        "TCP_PORTS has the range 515-512, which runs backwards; write 512-515",
    ),
    ("empty-port-item.conf", 6, "UDP_PORTS has an empty item"),
    (
        "bad-duration.conf",
        4,
        "BAN_TIME must be a duration: seconds",
    ),
    (
        "relative-path.conf",
        5,
        "HISTORY_FILE must be an absolute path (starting with /), not \"portsentry.history\"",
    ),
    (
        "kill-route-without-target.conf",
        5,
        "KILL_ROUTE must contain $TARGET$",
    ),
    (
        "kill-hosts-deny-without-target.conf",
        5,
        "KILL_HOSTS_DENY must contain $TARGET$",
    ),
    (
        "unkill-route-without-target.conf",
        6,
        "UNKILL_ROUTE must contain $TARGET$",
    ),
    (
        "stealth-without-ports.conf",
        4,
        "TCP is watched in stealth mode (TCP_MODE) but TCP_PORTS is not set",
    ),
    (
        "block-2-without-run-cmd.conf",
        4,
        "BLOCK_UDP is 2 (run KILL_RUN_CMD only) but KILL_RUN_CMD is not set",
    ),
    (
        "ban-time-max-too-short.conf",
        5,
        "BAN_TIME_MAX (1h) is shorter than BAN_TIME (2h)",
    ),
    (
        "huge-line.conf",
        4,
        "line is 5194 bytes long; lines may be at most 4096 bytes",
    ),
    (
        "binary-junk.conf",
        4,
        "is not valid UTF-8 text (byte 0x89 at column 1)",
    ),
    ("nul-byte.conf", 5, "contains a NUL byte"),
    (
        "control-character.conf",
        4,
        "contains the control character U+001B",
    ),
    (
        "bad-metrics-address.conf",
        5,
        "METRICS_ADDRESS must be an IP address and a port other than 0",
    ),
    (
        "bad-interface-name.conf",
        4,
        "has the interface name \"wlp0s20f3-very-long\", which is longer than 15 characters",
    ),
    (
        "bad-flag.conf",
        5,
        "RESOLVE_HOST must be 0 or 1, not \"yes\"",
    ),
    (
        "wrong-protocol-mode.conf",
        4,
        "TCP_MODE must be atcp or advanced, stcp or stealth, tcp (run as stealth), or off, not \
         \"audp\" (audp is a mode of the other protocol)",
    ),
    (
        "ignore-bad-address.ignore",
        4,
        "\"192.168.300.1\" is not an IPv4 or IPv6 address",
    ),
    (
        "ignore-prefix-too-long.ignore",
        4,
        "\"10.0.0.0/33\" has the prefix length /33, but an IPv4 prefix length is 0 to 32",
    ),
    (
        "ignore-hostname.ignore",
        4,
        "\"gateway.example.org\" is not an IPv4 or IPv6 address; write an address (host names \
         are not accepted)",
    ),
    (
        "ignore-netmask.ignore",
        3,
        "(write /24 for the netmask 255.255.255.0)",
    ),
    (
        "ignore-two-entries.ignore",
        4,
        "expected one address or address/bits, found \"10.0.0.1 10.0.0.2\"; write one entry \
         per line",
    ),
    (
        "ignore-zone.ignore",
        4,
        "\"fe80::1%eth0\" is not an IPv4 or IPv6 address",
    ),
    ("ignore-binary.ignore", 4, "contains a NUL byte"),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/malformed")
}

/// Loads `path` as a config file (`.conf`) or an ignore file (`.ignore`); `Ok(())` if it loads.
fn load_any(path: &Path) -> Result<(), ConfigError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("conf") => config::load(path).map(drop),
        Some("ignore") => IgnoreList::load(path).map(drop),
        _ => panic!("{}: corpus files end in .conf or .ignore", path.display()),
    }
}

/// The lines of a file's bytes, as `read_text` numbers them (a final newline ends the last
/// line rather than starting an empty one).
fn byte_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.split(|b| *b == b'\n').collect()
}

fn join_lines(lines: &[&[u8]]) -> Vec<u8> {
    let mut out = lines.join(&b'\n');
    out.push(b'\n');
    out
}

#[test]
fn malformed_corpus_is_rejected_with_file_and_line() {
    let dir = corpus_dir();
    let on_disk: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "README.md")
        .collect();
    let in_table: BTreeSet<String> = CORPUS.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(in_table.len(), CORPUS.len(), "a file is listed twice");
    let unlisted: Vec<_> = on_disk.difference(&in_table).collect();
    assert!(
        unlisted.is_empty(),
        "corpus files not in CORPUS: {unlisted:?}"
    );
    let missing: Vec<_> = in_table.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "CORPUS entries with no file: {missing:?}"
    );
    let readme = fs::read_to_string(dir.join("README.md")).unwrap();

    let scratch = tempfile::tempdir().unwrap();
    for &(name, line, fragment) in CORPUS {
        let path = dir.join(name);
        let e = load_any(&path).expect_err(name);
        assert_eq!(e.path, path, "{name}: {e}");
        assert_eq!(e.line, line, "{name}: {e}");
        assert_eq!(
            e.to_string(),
            format!("{}:{line}: {}", path.display(), e.message),
            "{name}: the message is shown as PATH:LINE: MESSAGE"
        );
        assert!(!e.message.trim().is_empty(), "{name}: empty message");
        assert!(!e.message.contains('\n'), "{name}: {e}");
        assert!(
            e.message.contains(fragment),
            "{name}: message {:?} lacks {fragment:?}",
            e.message
        );
        assert!(
            readme.contains(&format!("| `{name}` | {line} |")),
            "{name}: README.md does not list it at line {line}"
        );

        // The bad line is in the middle of the file, and it is the first bad line: the lines
        // before it load.
        let bytes = fs::read(&path).unwrap();
        let lines = byte_lines(&bytes);
        assert!(
            1 < line && line < lines.len(),
            "{name}: the bad line should be neither the first nor the last"
        );
        let copy = scratch.path().join(name);
        fs::write(&copy, join_lines(&lines[..line - 1])).unwrap();
        if let Err(e) = load_any(&copy) {
            panic!("{name}: the lines before line {line} should load: {e}");
        }
        // And apart from that line the file is valid (binary junk spans several lines): with
        // it blanked out the file loads, or only misses what the line was to set (e.g. a
        // stealth mode's port list).
        if std::str::from_utf8(&bytes).is_ok() {
            let mut blanked = lines.clone();
            blanked[line - 1] = b"";
            fs::write(&copy, join_lines(&blanked)).unwrap();
            if let Err(e) = load_any(&copy)
                && !(is_validate_error(&e.message) && e.line != line)
            {
                panic!("{name}: with line {line} blanked the file should load: {e}");
            }
        }
    }

    // Whole-file errors (line 0) are shown as PATH: MESSAGE. A file over 1 MiB is generated
    // here rather than kept in the corpus.
    let big = "# padding\n".repeat(MAX_FILE_BYTES as usize / 10 + 1);
    for name in ["too-big.conf", "too-big.ignore"] {
        let path = scratch.path().join(name);
        fs::write(&path, &big).unwrap();
        let e = load_any(&path).expect_err(name);
        assert_eq!((e.path.as_path(), e.line), (path.as_path(), 0), "{e}");
        assert!(e.message.contains("larger than 1048576 bytes"), "{e}");
        assert_eq!(e.to_string(), format!("{}: {}", path.display(), e.message));
    }
    let missing = scratch.path().join("missing.conf");
    let e = load_any(&missing).unwrap_err();
    assert_eq!((e.path.as_path(), e.line), (missing.as_path(), 0), "{e}");
    assert!(e.message.starts_with("cannot open"), "{e}");
    assert_eq!(
        e.to_string(),
        format!("{}: {}", missing.display(), e.message)
    );
}

// ---------------------------------------------------------------------------------------------
// All or nothing

/// 30 lines, each setting a different key to a value other than its default.
const THIRTY_VALID_LINES: &str = r#"TCP_PORTS="1,11,15,79,111,512-515"
UDP_PORTS="1,7,9,69,161"
ADVANCED_PORTS_TCP="2048"
ADVANCED_PORTS_UDP="4096"
ADVANCED_EXCLUDE_TCP="113,139,445"
ADVANCED_EXCLUDE_UDP="520,138,137,67,5353"
IGNORE_FILE="/etc/portsentry/portsentry.ignore"
HISTORY_FILE="/srv/portsentry/history"
BLOCKED_FILE="/srv/portsentry/blocked"
RESOLVE_HOST="1"
BLOCK_TCP="2"
BLOCK_UDP="0"
KILL_ROUTE="/sbin/iptables -I INPUT -s $TARGET$ -j DROP"
KILL_HOSTS_DENY="ALL: $TARGET$ : DENY"
KILL_RUN_CMD="/usr/local/bin/alert $TARGET$ $PORT$"
KILL_RUN_CMD_FIRST="1"
SCAN_TRIGGER="3"
TCP_MODE="stcp"
UDP_MODE="off"
INTERFACES="eth0,eth1"
XDP_MODE="skb"
BAN_TIME="1h"
BAN_TIME_MAX="1d"
REPEAT_BAN_FACTOR="4"
UNKILL_ROUTE="/sbin/iptables -D INPUT -s $TARGET$ -j DROP"
UNKILL_HOSTS_DENY="0"
HOSTS_DENY_FILE="/srv/portsentry/hosts.deny"
KILL_TIMEOUT="10s"
SCAN_WINDOW="5m"
METRICS_ADDRESS="127.0.0.1:9100"
"#;

#[test]
fn nothing_is_applied_from_a_bad_file() {
    let path = Path::new("/etc/portsentry/portsentry.conf");
    assert_eq!(THIRTY_VALID_LINES.lines().count(), 30);
    let good = config::parse(THIRTY_VALID_LINES, path).unwrap_or_else(|e| panic!("{e}"));
    // Every line took effect, so there would be something to apply.
    assert_eq!(good.lines.len(), 30);
    let lines: BTreeSet<usize> = good.lines.values().copied().collect();
    assert_eq!(lines, (1..=30).collect(), "each line sets one key");
    let d = Config::default();
    assert_ne!(good.tcp_ports, d.tcp_ports);
    assert_ne!(good.block_tcp, d.block_tcp);
    assert_ne!(good.kill_route, d.kill_route);
    assert_ne!(good.ban_time, d.ban_time);
    assert_ne!(good.metrics_address, d.metrics_address);
    assert_ne!(good.interfaces, d.interfaces);

    // One bad last line of any kind, and the whole file is refused.
    let scratch = tempfile::tempdir().unwrap();
    for (bad, fragment) in [
        ("SYSLOG=\"maybe\"", "SYSLOG must be 0 or 1"),
        ("SYSLOG=1", "must be in double quotes"),
        ("syslog=\"1\"", "did you mean SYSLOG?"),
        ("SCAN_TRIGGER=\"4\"", "set twice, on line 17 and line 31"),
        ("MAX_BANS=\"15\"", "at least 16"),
        ("SYSLOG=\"1", "no closing quote"),
        ("EVENTS_PER_SEC=\"1000\" junk", "unexpected text"),
        ("\u{7}", "control character U+0007"),
    ] {
        let text = format!("{THIRTY_VALID_LINES}{bad}\n");
        let e = config::parse(&text, path).expect_err(bad);
        assert_eq!((e.path.as_path(), e.line), (path, 31), "{bad}: {e}");
        assert!(e.message.contains(fragment), "{bad}: {e}");
        // load is the same all-or-nothing parse.
        let file = scratch.path().join("portsentry.conf");
        fs::write(&file, &text).unwrap();
        let loaded = config::load(&file).expect_err(bad);
        assert_eq!((loaded.line, &loaded.message), (31, &e.message));
    }
}

// ---------------------------------------------------------------------------------------------
// Shared checks

/// A runner for `cases` cases, or as many as `PROPTEST_CASES` says (for a longer soak).
fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    TestRunner::new(ProptestConfig {
        cases,
        // Do not write proptest-regressions files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn run<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    runner(cases)
        .run(&strategy, test)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// An error about a small file: it names the file, a line of it (line 0, the whole file, is
/// only for files too big or unreadable), and says something, on one line.
fn check_error(e: &ConfigError, path: &Path, line_count: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(&e.path, path);
    prop_assert!(
        (1..=line_count).contains(&e.line),
        "line {} of a {}-line input: {}",
        e.line,
        line_count,
        e
    );
    prop_assert!(!e.message.trim().is_empty(), "empty message: {:?}", e);
    prop_assert!(!e.message.contains('\n'), "multi-line message: {:?}", e);
    prop_assert_eq!(
        e.to_string(),
        format!("{}:{}: {}", path.display(), e.line, e.message)
    );
    Ok(())
}

/// Errors `Config::validate` finds after the whole file is read; they name the line of one of
/// the keys involved, which need not be the last line read.
fn is_validate_error(message: &str) -> bool {
    message.contains("is watched in stealth mode")
        || message.contains("but KILL_RUN_CMD is not set")
        || message.contains("is shorter than BAN_TIME")
}

/// The text lines of a `parse` input, as it numbers them.
fn text_lines(text: &str) -> Vec<&str> {
    text.split('\n').collect()
}

/// `line` without its `\r`, and without the byte-order mark if it is line 1.
fn clean_line(line: &str, n: usize) -> &str {
    let line = if n == 1 {
        line.strip_prefix('\u{feff}').unwrap_or(line)
    } else {
        line
    };
    line.strip_suffix('\r').unwrap_or(line)
}

/// The invariants of `config::parse` on `text`; returns what it parsed.
fn check_config_text(
    text: &str,
    path: &Path,
) -> Result<Result<Config, ConfigError>, TestCaseError> {
    let lines = text_lines(text);
    let parsed = config::parse(text, path);
    // (Only one: a second is text.)
    if let Some(rest) = text.strip_prefix('\u{feff}')
        && !rest.starts_with('\u{feff}')
    {
        prop_assert_eq!(
            &config::parse(rest, path),
            &parsed,
            "a byte-order mark is skipped"
        );
    }
    match &parsed {
        Ok(c) => {
            prop_assert_eq!(c.source.as_deref(), Some(path));
            if let Err(e) = c.validate() {
                return Err(TestCaseError::fail(format!("parsed but invalid: {e}")));
            }
            // Each key line set exactly one key, recorded at that line.
            let key_lines: Vec<usize> = (1..=lines.len())
                .filter(|n| {
                    let l = clean_line(lines[n - 1], *n).trim();
                    !l.is_empty() && !l.starts_with('#')
                })
                .collect();
            let mut recorded: Vec<usize> = c.lines.values().copied().collect();
            recorded.sort_unstable();
            prop_assert_eq!(recorded, key_lines);
            for (key, n) in &c.lines {
                let l = clean_line(lines[n - 1], *n).trim_start();
                let rest = l.strip_prefix(key).map(str::trim_start);
                prop_assert!(
                    rest.is_some_and(|r| r.starts_with('=')),
                    "{} recorded at line {}: {:?}",
                    key,
                    n,
                    l
                );
            }
        }
        Err(e) => {
            check_error(e, path, lines.len())?;
            let n = e.line;
            // The lines before the one named have no error of their own.
            match config::parse(&lines[..n - 1].join("\n"), path) {
                Ok(_) => {}
                Err(b) => prop_assert!(
                    is_validate_error(&b.message),
                    "error {} at line {}, but its first {} lines fail with {}",
                    e,
                    n,
                    n - 1,
                    b
                ),
            }
            // The line named is bad: the text up to it fails the same way.
            match config::parse(&lines[..n].join("\n"), path) {
                Err(u) if u == *e => {}
                Err(u) if is_validate_error(&e.message) && u.line <= n => {}
                // BAN_TIME_MAX is named even when BAN_TIME comes later.
                Ok(_) if e.message.contains("BAN_TIME_MAX (") => {}
                other => {
                    return Err(TestCaseError::fail(format!(
                        "error {e}, but the first {n} lines give {other:?}"
                    )));
                }
            }
        }
    }
    Ok(parsed)
}

/// For bytes that are not UTF-8 or contain a NUL: `load` fails at the first line that is not
/// UTF-8, has a NUL or is too long, with a message saying which.
fn check_encoding_error(bytes: &[u8], e: &ConfigError) -> Result<(), TestCaseError> {
    // A leading byte-order mark is not part of line 1.
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let (n, line) = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .find(|(_, l)| {
            l.len() > MAX_LINE_BYTES + 1 || l.contains(&0) || std::str::from_utf8(l).is_err()
        })
        .expect("the bytes have a bad line");
    prop_assert_eq!(e.line, n + 1, "{}", e);
    let expected = if line.len() > MAX_LINE_BYTES + 1 {
        "lines may be at most".to_string()
    } else if line.contains(&0) {
        "contains a NUL byte".to_string()
    } else {
        let at = std::str::from_utf8(line).unwrap_err().valid_up_to();
        format!(
            "is not valid UTF-8 text (byte 0x{:02x} at column {})",
            line[at],
            at + 1
        )
    };
    prop_assert!(e.message.contains(&expected), "{} lacks {:?}", e, expected);
    Ok(())
}

/// Whether `load` reads `bytes` as exactly the text `parse` gets.
fn loads_as_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let clean = !body.contains('\0') && body.split('\n').all(|l| l.len() <= MAX_LINE_BYTES + 1);
    clean.then_some(text)
}

/// The invariants of `config::load` on the file `path` holding `bytes`, and of `config::parse`
/// on the same bytes read lossily.
fn check_config_bytes(bytes: &[u8], path: &Path) -> Result<(), TestCaseError> {
    fs::write(path, bytes).unwrap();
    let loaded = config::load(path);
    let parsed = check_config_text(&String::from_utf8_lossy(bytes), path)?;
    match loads_as_text(bytes) {
        // (Then the lossy text is the text.)
        Some(_) => prop_assert_eq!(&loaded, &parsed),
        None => check_encoding_error(bytes, loaded.as_ref().expect_err("not text"))?,
    }
    if let Err(e) = &loaded {
        check_error(e, path, bytes.split(|b| *b == b'\n').count())?;
    }
    Ok(())
}

/// The invariants of `IgnoreList::parse` on `text`; returns what it parsed.
fn check_ignore_text(
    text: &str,
    path: &Path,
) -> Result<Result<IgnoreList, ConfigError>, TestCaseError> {
    let lines = text_lines(text);
    let parsed = IgnoreList::parse(text, path);
    // (Only one: a second is text.)
    if let Some(rest) = text.strip_prefix('\u{feff}')
        && !rest.starts_with('\u{feff}')
    {
        prop_assert_eq!(
            &IgnoreList::parse(rest, path),
            &parsed,
            "a byte-order mark is skipped"
        );
    }
    match &parsed {
        Ok(list) => check_ignore_list(list)?,
        Err(e) => {
            check_error(e, path, lines.len())?;
            let n = e.line;
            if let Err(b) = IgnoreList::parse(&lines[..n - 1].join("\n"), path) {
                return Err(TestCaseError::fail(format!(
                    "error {e} at line {n}, but its first {} lines fail with {b}",
                    n - 1
                )));
            }
            prop_assert_eq!(&IgnoreList::parse(&lines[..n].join("\n"), path), &parsed);
        }
    }
    Ok(parsed)
}

/// An IPv4-mapped IPv6 address, which the list matches as the IPv4 address it stands for.
fn is_v4_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// Every network has its host bits cleared, appears once, is not an IPv4-mapped IPv6 network
/// (those become IPv4), and contains its first and last address.
fn check_ignore_list(list: &IgnoreList) -> Result<(), TestCaseError> {
    let mut seen = HashSet::new();
    prop_assert_eq!(list.len(), list.nets().len());
    prop_assert_eq!(list.is_empty(), list.nets().is_empty());
    for net in list.nets() {
        prop_assert_eq!(*net, net.trunc(), "host bits set");
        prop_assert!(seen.insert(*net), "{} listed twice", net);
        if let IpNet::V6(v6) = net {
            prop_assert!(
                !(v6.prefix_len() >= 96 && v6.network().to_ipv4_mapped().is_some()),
                "{} should have become IPv4",
                net
            );
        }
        // (A mapped address is looked up as IPv4, so an IPv6 network reaching into
        // ::ffff:0:0/96 does not match it; see config/ignore.rs.)
        for ip in [net.network(), net.broadcast()] {
            if !is_v4_mapped(ip) {
                prop_assert!(list.contains(ip), "{} does not contain {}", net, ip);
            }
        }
    }
    Ok(())
}

fn check_ignore_bytes(bytes: &[u8], path: &Path) -> Result<(), TestCaseError> {
    fs::write(path, bytes).unwrap();
    let loaded = IgnoreList::load(path);
    let parsed = check_ignore_text(&String::from_utf8_lossy(bytes), path)?;
    match loads_as_text(bytes) {
        // (Then the lossy text is the text.)
        Some(_) => prop_assert_eq!(&loaded, &parsed),
        None => check_encoding_error(bytes, loaded.as_ref().expect_err("not text"))?,
    }
    if let Err(e) = &loaded {
        check_error(e, path, bytes.split(|b| *b == b'\n').count())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Generators

// Regex and per-character strategies are slow in an unoptimised test build, so the
// generators pick mostly from lists and use random text sparingly.

/// Spacing around keys, `=` and entries.
const SPACES: &[&str] = &["", "", "", " ", "\t", "  ", " \t "];

/// Keys that are not: near misses, bad characters, PortSentry 2.0 names.
const NOT_KEYS: &[&str] = &[
    "",
    "FOO",
    "TCP-PORTS",
    "RESOLVE HOST",
    "LOG_FLAGS",
    "Tcp_Ports",
    "TCP_PORTS_",
    "_",
    "#",
    "\u{feff}SYSLOG",
    "K\u{e9}Y",
    "TCP_PORTSTCP_PORTS",
];

/// Values a key may get: valid for some key, nearly valid, or not at all.
const VALUES: &[&str] = &[
    "",
    " ",
    "0",
    "1",
    "2",
    "3",
    " 2 ",
    "-1",
    "+5",
    "1.5",
    "x",
    "yes",
    "1024",
    "65535",
    "65536",
    "65537",
    "4294967295",
    "4294967296",
    "99999999999999999999",
    "1,11,15",
    "1, 11 ,15",
    "512-515",
    "2 - 4",
    "5-3",
    "1,,2",
    "1,2,",
    ",",
    "-",
    "1-2-3",
    "0-65535",
    "70000",
    "http",
    "90s",
    "30m",
    "12h",
    "7d",
    "1h 30m",
    "0s",
    "soon",
    "5 parsecs",
    "18446744073709551615s",
    "584942417355y",
    "99999999999999999999999ns",
    "1x",
    "atcp",
    "stcp",
    "tcp",
    "audp",
    "sudp",
    "udp",
    "advanced",
    "stealth",
    "off",
    "native",
    "skb",
    "auto",
    "drv",
    "/",
    "/var/lib/x",
    "portsentry.history",
    "./b",
    "~/ps",
    "/sbin/route add -host $TARGET$ reject",
    "ALL: $TARGET$ : DENY",
    "$TARGET$",
    "$TARGET",
    "/bin/echo \"$TARGET$\" $PORT$ $MODE$",
    "eth0",
    "eth0,eth1",
    "eth0,",
    "eth0,eth0",
    "averyveryverylongname",
    "eth0/1",
    "eth0:1",
    "..",
    ".",
    "127.0.0.1:9100",
    "[::1]:9100",
    "::1:9100",
    "localhost:9100",
    "127.0.0.1",
    "127.0.0.1:0",
    "0.0.0.0:65535",
    "[fe80::1%2]:9100",
];

/// What may follow a closing quote.
const TAILS: &[&str] = &[
    "",
    "",
    "",
    "",
    "",
    " # comment",
    "\t#",
    "#\"x\"",
    " junk",
    "\"",
    " \"",
    "x\"",
];

/// Comment and blank lines.
const COMMENT_LINES: &[&str] = &[
    "",
    "",
    "   ",
    "\t",
    "# comment",
    "   # indented",
    "#KEY=\"value\"",
    "#\"",
    "\t#\t",
];

/// Lines that are neither comments nor `KEY="value"`.
const JUNK_LINES: &[&str] = &[
    "=\"1\"",
    "\"",
    "\"\"",
    "KEY",
    "A=B=C",
    "\u{feff}",
    "\u{feff}# comment",
    "\u{85}",
    "\u{2028}",
    "\r",
    "\x0c",
];

/// Values `key` accepts, or for a key missing from [`VALID`] (a new one), [`VALUES`].
fn valid_values(key: &str) -> &'static [&'static str] {
    VALID
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(VALUES, |(_, v)| v)
}

/// Values each key accepts (alone: `Config::validate` may still refuse a combination).
const VALID: &[(&str, &[&str])] = &[
    (
        "TCP_PORTS",
        &["1,11,15,79,111", "", "0-65535", "1 - 5, 7", "512-515,65535"],
    ),
    (
        "UDP_PORTS",
        &["1,7,9,69,161", "", "0", "31335, 32770-32774"],
    ),
    ("ADVANCED_PORTS_TCP", &["0", "1", "1024", "65536", " 2048 "]),
    ("ADVANCED_PORTS_UDP", &["0", "1024", "65536"]),
    ("ADVANCED_EXCLUDE_TCP", &["113,139", "", "1-1023"]),
    ("ADVANCED_EXCLUDE_UDP", &["520,138,137,67", ""]),
    ("IGNORE_FILE", &["/etc/portsentry/portsentry.ignore", ""]),
    (
        "HISTORY_FILE",
        &["/var/lib/portsentry/portsentry.history", " /h "],
    ),
    ("BLOCKED_FILE", &["/var/lib/portsentry/portsentry.blocked"]),
    ("RESOLVE_HOST", &["0", "1"]),
    ("BLOCK_TCP", &["0", "1", "2"]),
    ("BLOCK_UDP", &["0", "1", "2"]),
    ("KILL_ROUTE", &["/sbin/route add -host $TARGET$ reject", ""]),
    ("KILL_HOSTS_DENY", &["ALL: $TARGET$ : DENY", ""]),
    (
        "KILL_RUN_CMD",
        &["/bin/echo \"$TARGET$\" $PORT$ $MODE$", "/bin/true", ""],
    ),
    ("KILL_RUN_CMD_FIRST", &["0", "1"]),
    ("SCAN_TRIGGER", &["0", "1", "4294967295"]),
    ("PORT_BANNER", &["** UNAUTHORIZED ACCESS PROHIBITED **", ""]),
    (
        "TCP_MODE",
        &["atcp", "stcp", "tcp", "advanced", "stealth", "off"],
    ),
    (
        "UDP_MODE",
        &["audp", "sudp", "udp", "advanced", "stealth", "off"],
    ),
    ("INTERFACES", &["", "eth0", "eth0, eth1", "enp0s31f6"]),
    ("XDP_MODE", &["native", "skb", "auto"]),
    ("BAN_TIME", &["0", "3600", "90s", "1h 30m", "7d"]),
    ("BAN_TIME_MAX", &["0", "1h", "30d"]),
    ("REPEAT_BAN_FACTOR", &["1", "2", "100"]),
    (
        "UNKILL_ROUTE",
        &["/sbin/route del -host $TARGET$ reject", ""],
    ),
    ("UNKILL_HOSTS_DENY", &["0", "1"]),
    ("UNKILL_RUN_CMD", &["/bin/true", ""]),
    ("HOSTS_DENY_FILE", &["/etc/hosts.deny"]),
    ("KILL_TIMEOUT", &["30s", "1", "5m"]),
    ("SCAN_WINDOW", &["0", "60", "1h"]),
    ("WATCH_EPHEMERAL_UDP", &["0", "1"]),
    ("VERIFY_SOURCES", &["0", "1"]),
    ("STATE_DIR", &["/var/lib/portsentry"]),
    ("PIN_DIR", &["/sys/fs/bpf/portsentry"]),
    ("EVENTS_PER_SEC", &["1", "20000", "10000000"]),
    ("MAX_BANS_PER_SEC", &["0", "100"]),
    ("MAX_TRACKED_SOURCES", &["1024", "65536"]),
    ("MAX_BANS", &["16", "1048576"]),
    ("METRICS_ADDRESS", &["127.0.0.1:9100", "[::1]:9100", ""]),
    ("SYSLOG", &["0", "1"]),
];

/// The names of the known keys.
fn key_names() -> Vec<&'static str> {
    config::KEYS.iter().map(|k| k.name).collect()
}

/// A key: usually a real one, sometimes a near miss or junk.
fn config_key() -> BoxedStrategy<String> {
    let key = || prop::sample::select(key_names());
    prop_oneof![
        12 => key().prop_map(String::from),
        2 => (key(), any::<Index>()).prop_map(|(k, i)| {
            let mut k = k.to_string();
            k.remove(i.index(k.len()));
            k
        }),
        1 => key().prop_map(|k| k.to_ascii_lowercase()),
        2 => prop::sample::select(NOT_KEYS).prop_map(String::from),
        1 => "[A-Za-z0-9_ -]{0,12}",
    ]
    .boxed()
}

/// A value: something plausible for some key, or junk.
fn config_value() -> BoxedStrategy<String> {
    prop_oneof![
        12 => prop::sample::select(VALUES).prop_map(String::from),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| format!("{a},{b}-{a}")),
        1 => (any::<u32>(), prop::sample::select(&["s", "m", "h", "d", "w", "M", "y", "ms", "x", " min"][..]))
            .prop_map(|(n, u)| format!("{n}{u}")),
        1 => "[ -!#-~]{0,20}(\\$TARGET\\$)?",
        1 => "[ -~]{0,30}",
    ]
    .boxed()
}

/// A line of a config file: mostly a valid `KEY="value"` with spaces, tabs and comments
/// around, sometimes a line with something wrong.
fn config_line() -> BoxedStrategy<String> {
    let ws = || prop::sample::select(SPACES);
    let valid = (prop::sample::select(key_names()), any::<Index>()).prop_map(|(key, i)| {
        let values = valid_values(key);
        (key, values[i.index(values.len())])
    });
    let valid_tail = prop::sample::select(&["", "", "", " # comment", "\t#"][..]);
    prop_oneof![
        30 => (ws(), valid, ws(), ws(), valid_tail)
            .prop_map(|(a, (k, v), b, c, tail)| format!("{a}{k}{b}={c}\"{v}\"{tail}")),
        2 => (ws(), config_key(), ws(), ws(), config_value(), prop::sample::select(TAILS))
            .prop_map(|(a, k, b, c, v, tail)| format!("{a}{k}{b}={c}\"{v}\"{tail}")),
        1 => (config_key(), prop::sample::select(VALUES)).prop_map(|(k, v)| format!("{k}={v}")),
        6 => prop::sample::select(COMMENT_LINES).prop_map(String::from),
        1 => prop::sample::select(JUNK_LINES).prop_map(String::from),
        1 => "[ -~]{0,40}",
        1 => prop::collection::vec(any::<char>(), 0..8)
            .prop_map(|c| c.into_iter().collect::<String>()),
    ]
    .boxed()
}

/// Lines joined by `\n` or `\r\n`, maybe after a byte-order mark, then maybe a few stray bytes.
fn file_of(lines: BoxedStrategy<String>, max_lines: usize) -> BoxedStrategy<Vec<u8>> {
    (
        prop::bool::weighted(0.05),
        prop::collection::vec((lines, prop::bool::weighted(0.2)), 0..max_lines),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => prop::collection::vec((any::<Index>(), any::<u8>()), 1..3),
        ],
    )
        .prop_map(|(bom, lines, stray)| {
            let mut out = Vec::new();
            if bom {
                out.extend_from_slice("\u{feff}".as_bytes());
            }
            for (i, (line, crlf)) in lines.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                }
                out.extend_from_slice(line.as_bytes());
            }
            for (at, byte) in stray {
                out.insert(at.index(out.len() + 1), byte);
            }
            out
        })
        .boxed()
}

/// Anything from random bytes to nearly valid files, at most about 2 KiB.
fn config_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..2048),
        1 => "[ -~\t\r\n]{0,400}".prop_map(String::into_bytes),
        6 => file_of(config_line(), 20),
    ]
}

// ---------------------------------------------------------------------------------------------
// Config properties

#[test]
fn config_parser_never_panics_and_errors_name_a_real_line() {
    // The generator's table of valid values is right and complete.
    for (key, values) in VALID {
        assert!(key_names().contains(key), "{key} is not a key");
        for value in *values {
            if let Err(e) = config::parse(&format!("{key}=\"{value}\""), Path::new("/p")) {
                assert!(is_validate_error(&e.message), "{key}=\"{value}\": {e}");
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portsentry.conf");
    run(2000, config_bytes(), |bytes| {
        check_config_bytes(&bytes, &path)
    });
}

const STOCK: &str = include_str!("../testdata/debian/portsentry.conf");

#[derive(Clone, Debug)]
enum Mutation {
    /// Replace line N (of the lines setting a key, if true) with this text.
    ReplaceLine(Index, bool, String),
    /// Insert a copy of line N (of the lines setting a key, if true) after it.
    DuplicateLine(Index, bool),
    /// Delete the Nth double quote.
    DeleteQuote(Index),
    /// Insert a byte at offset N.
    InsertByte(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (
            any::<Index>(),
            prop_oneof![1 => "[ -~]{0,60}", 3 => config_line()]
        )
            .prop_map(|(i, s)| Mutation::ReplaceLine(i, false, s)),
        (any::<Index>(), config_line()).prop_map(|(i, s)| Mutation::ReplaceLine(i, true, s)),
        any::<Index>().prop_map(|i| Mutation::DuplicateLine(i, false)),
        any::<Index>().prop_map(|i| Mutation::DuplicateLine(i, true)),
        any::<Index>().prop_map(Mutation::DeleteQuote),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::InsertByte(i, b)),
    ]
}

/// Whether a (stock file) line sets a key, rather than being blank or a comment.
fn is_key_line(line: &[u8]) -> bool {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    !line.is_empty() && !line.starts_with('#')
}

/// Applies `m` to `bytes`; returns the error line the mutation must cause, when it must.
fn mutate(bytes: &mut Vec<u8>, m: &Mutation) -> Option<(usize, &'static str)> {
    let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    // Line N of all lines, or of the lines setting a key (if any are left).
    let pick = |i: &Index, key_line: bool| {
        let keys: Vec<usize> = (0..lines.len())
            .filter(|&n| is_key_line(&lines[n]))
            .collect();
        if key_line && !keys.is_empty() {
            keys[i.index(keys.len())]
        } else {
            i.index(lines.len())
        }
    };
    let must = match m {
        Mutation::ReplaceLine(i, key_line, text) => {
            let i = pick(i, *key_line);
            lines[i] = text.clone().into_bytes();
            None
        }
        Mutation::DuplicateLine(i, key_line) => {
            let i = pick(i, *key_line);
            let copy = lines[i].clone();
            let must = is_key_line(&copy).then_some((i + 2, "is set twice"));
            lines.insert(i + 1, copy);
            must
        }
        Mutation::DeleteQuote(i) => {
            let quotes: Vec<usize> = (0..bytes.len()).filter(|&p| bytes[p] == b'"').collect();
            if quotes.is_empty() {
                return None;
            }
            let at = quotes[i.index(quotes.len())];
            let n = bytes[..at].iter().filter(|b| **b == b'\n').count();
            let line_is_key = is_key_line(&lines[n]);
            bytes.remove(at);
            return line_is_key.then_some((n + 1, "quote"));
        }
        Mutation::InsertByte(i, b) => {
            bytes.insert(i.index(bytes.len() + 1), *b);
            return None;
        }
    };
    *bytes = lines.join(&b'\n');
    must
}

#[test]
fn config_parser_survives_mutations_of_the_stock_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portsentry.conf");
    let stock = config::parse(STOCK, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(stock.lines.len() > 10, "the stock file sets keys");
    // Every key line of the stock file has exactly two quotes, so deleting one breaks it.
    for line in STOCK.lines().filter(|l| is_key_line(l.as_bytes())) {
        assert_eq!(line.matches('"').count(), 2, "{line}");
    }
    run(2000, prop::collection::vec(mutation(), 1..4), |mutations| {
        let mut bytes = STOCK.as_bytes().to_vec();
        let mut must = None;
        for m in &mutations {
            must = mutate(&mut bytes, m);
        }
        check_config_bytes(&bytes, &path)?;
        // A single mutation that must break the file breaks it at the right line.
        if let (1, Some((line, fragment))) = (mutations.len(), must) {
            let e = config::load(&path).expect_err("a mutation that must fail");
            prop_assert_eq!(e.line, line, "{}", e);
            prop_assert!(e.message.contains(fragment), "{} lacks {:?}", e, fragment);
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Ignore-file properties

/// What a generated ignore-file line must parse to.
#[derive(Clone, Debug)]
enum Expect {
    /// Blank or a comment.
    Nothing,
    /// An entry for `net`, written with the address `addr`.
    Net { addr: IpAddr, net: IpNet },
    /// An error.
    Bad,
}

fn ip_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        2 => any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
        // Mostly zero, so the text is compressed with `::`.
        2 => (any::<u16>(), 0..8usize, any::<u16>(), 0..8usize).prop_map(|(a, i, b, j)| {
            let mut s = [0u16; 8];
            s[i] = a;
            s[j] = b;
            IpAddr::V6(Ipv6Addr::from(s))
        }),
        2 => any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        1 => prop::sample::select(&[
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::BROADCAST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ][..]),
    ]
}

/// The network an entry stands for: host bits cleared, IPv4-mapped as IPv4.
fn expected_net(addr: IpAddr, prefix: u8) -> IpNet {
    let net = IpNet::new(addr, prefix).unwrap().trunc();
    match net {
        IpNet::V6(v6) if prefix >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), prefix - 96).unwrap().trunc(),
            None => net,
        },
        _ => net,
    }
}

/// An entry that must be an error. None contains `#`, which would start a comment.
fn bad_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "localhost",
                "256.1.1.1",
                "1.2.3",
                "1.2.3.4.5",
                "01.2.3.4",
                "0x7f.0.0.1",
                "/24",
                "1.2.3.4/24/8",
                "1.2.3.4/-1",
                "1.2.3.4/+8",
                "::ffff:1.2.3.4/129",
                "2001:db8:::1",
                "10.0.0.1,",
                "fe80::1%eth0",
                "1.2.3.4-1.2.3.9",
                "*",
                ":::",
            ][..]
        )
        .prop_map(String::from),
        ip_addr().prop_map(|a| format!("{a}/")),
        (ip_addr(), ip_addr()).prop_map(|(a, b)| format!("{a} {b}")),
        (ip_addr(), ip_addr()).prop_map(|(a, b)| format!("{a},{b}")),
        (
            ip_addr(),
            prop::sample::select(&["eth0", "lo", "1", "wlp0s20f3"][..])
        )
            .prop_map(|(a, z)| format!("{a}%{z}")),
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(a, m)| format!(
            "{}/{}",
            Ipv4Addr::from(a),
            Ipv4Addr::from(m)
        )),
        // Starts with a letter and has no ':', so it is no address.
        "[a-z][a-z0-9.-]{0,20}",
    ]
}

/// Comments, some holding what would be an error outside one.
const COMMENTS: &[&str] = &[
    "#",
    "##",
    "# the office LAN",
    "#10.0.0.1",
    "# 1.2.3.4/33 localhost",
    "#\t\"quoted\"",
];

/// A prefix length: one valid for the address, or any number up to 199.
#[derive(Clone, Debug)]
enum Prefix {
    InRange(Index),
    Any(u8),
}

fn prefix() -> impl Strategy<Value = Prefix> {
    prop_oneof![
        9 => any::<Index>().prop_map(Prefix::InRange),
        1 => (0u8..200).prop_map(Prefix::Any),
    ]
}

/// A line of an ignore file and what it must parse to.
fn ignore_line() -> impl Strategy<Value = (String, Expect)> {
    let entry = prop_oneof![
        20 => (ip_addr(), prop::option::of(prefix()), any::<bool>()).prop_map(
            |(addr, prefix, padded)| {
                let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
                let prefix = prefix.map(|p| match p {
                    Prefix::InRange(i) => i.index(usize::from(max) + 1) as u8,
                    Prefix::Any(p) => p,
                });
                let text = match prefix {
                    None => addr.to_string(),
                    Some(p) if padded => format!("{addr}/{p:03}"),
                    Some(p) => format!("{addr}/{p}"),
                };
                let expect = match prefix.unwrap_or(max) {
                    p if p > max => Expect::Bad,
                    p => Expect::Net { addr, net: expected_net(addr, p) },
                };
                (text, expect)
            }
        ),
        1 => bad_entry().prop_map(|t| (t, Expect::Bad)),
    ];
    let ws = || prop::sample::select(SPACES);
    let comment = || prop::option::of(prop::sample::select(COMMENTS));
    prop_oneof![
        5 => (ws(), entry, ws(), comment()).prop_map(|(a, (text, expect), b, comment)| {
            (format!("{a}{text}{b}{}", comment.unwrap_or_default()), expect)
        }),
        1 => (ws(), comment())
            .prop_map(|(a, c)| (format!("{a}{}", c.unwrap_or_default()), Expect::Nothing)),
    ]
}

#[test]
fn ignore_parser_never_panics_and_errors_name_a_real_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portsentry.ignore");

    // Anything: random bytes, random text, plausible lines with stray bytes.
    let any_line = prop_oneof![
        ignore_line().prop_map(|(t, _)| t),
        "[ -~]{0,40}",
        prop::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()),
    ]
    .boxed();
    let anything = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::vec(any::<char>(), 0..300)
            .prop_map(|c| c.into_iter().collect::<String>().into_bytes()),
        file_of(any_line, 24),
    ];
    run(2000, anything, |bytes| check_ignore_bytes(&bytes, &path));
}

#[test]
fn ignore_parser_parses_plausible_lines_exactly() {
    let path = Path::new("/etc/portsentry/portsentry.ignore");

    // Plausible lines, with what each must parse to: the list holds exactly the entries'
    // networks, in order, each once; or the error names the first bad line.
    let lines = prop::collection::vec((ignore_line(), prop::bool::weighted(0.2)), 0..16);
    run(2000, lines, |lines| {
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, ((t, _), crlf))| match (i, crlf) {
                (0, _) => t.clone(),
                (_, true) => format!("\r\n{t}"),
                (_, false) => format!("\n{t}"),
            })
            .collect();
        let parsed = check_ignore_text(&text, path)?;
        let first_bad = lines
            .iter()
            .position(|((_, e), _)| matches!(e, Expect::Bad));
        match (parsed, first_bad) {
            (Err(e), Some(i)) => prop_assert_eq!(e.line, i + 1, "{}", e),
            (Ok(list), None) => {
                let mut want: Vec<IpNet> = Vec::new();
                for ((_, e), _) in &lines {
                    if let Expect::Net { addr, net } = e {
                        if !want.contains(net) {
                            want.push(*net);
                        }
                        // An entry contains the address it was written with (but a mapped
                        // address under a prefix below 96 stays IPv6 and is looked up as IPv4).
                        if !(is_v4_mapped(*addr) && matches!(net, IpNet::V6(_))) {
                            prop_assert!(list.contains(*addr), "{} not in {:?}", addr, list);
                        }
                    }
                }
                prop_assert_eq!(list.nets(), &want[..]);
            }
            (result, first_bad) => {
                return Err(TestCaseError::fail(format!(
                    "first bad line {first_bad:?}, but the parse gave {result:?}"
                )));
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Port lists

#[derive(Clone, Debug)]
enum Item {
    Port(u16),
    Range(u16, u16),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => any::<u16>().prop_map(Item::Port),
        4 => (any::<u16>(), 0u16..64).prop_map(|(a, len)| Item::Range(a, a.saturating_add(len))),
        1 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Item::Range(a.min(b), a.max(b))),
        1 => prop::sample::select(&[
            Item::Port(0),
            Item::Port(65535),
            Item::Range(0, 65535),
            Item::Range(65535, 65535),
            Item::Range(0, 0),
        ][..]),
    ]
}

#[test]
fn valid_port_lists_round_trip() {
    let path = Path::new("/etc/portsentry/portsentry.conf");
    let ws = || prop::sample::select(SPACES);
    let list = prop::collection::vec((item(), ws(), ws(), ws(), ws()), 0..20);
    run(500, list, |items| {
        let mut want = PortSet::new();
        let rendered: Vec<String> = items
            .iter()
            .map(|(item, a, b, c, d)| match *item {
                Item::Port(p) => {
                    want.insert(p);
                    format!("{a}{p}{d}")
                }
                Item::Range(lo, hi) => {
                    for p in lo..=hi {
                        want.insert(p);
                    }
                    format!("{a}{lo}{b}-{c}{hi}{d}")
                }
            })
            .collect();
        let text = format!(
            "# stealth\nTCP_MODE=\"stcp\"\nTCP_PORTS=\"{}\"\n",
            rendered.join(",")
        );
        let c = config::parse(&text, path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(c.tcp_ports.as_ref(), Some(&want));
        prop_assert_eq!(c.tcp_watched_ports(), want.clone());
        // What portsentry shows for the set reads back as the same set.
        if !want.is_empty() {
            let again = config::parse(&format!("UDP_PORTS=\"{want}\"\nUDP_MODE=\"sudp\""), path)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.udp_ports.as_ref(), Some(&want));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Known bugs

/// `load` measures line 1 with its byte-order mark, which `parse` (and the documentation)
/// skip: a first line of 4095 or 4096 bytes after a BOM is refused by `load` only.
#[test]
fn load_skips_the_byte_order_mark_before_measuring_line_1() {
    let dir = tempfile::tempdir().unwrap();
    for len in [MAX_LINE_BYTES - 1, MAX_LINE_BYTES] {
        let line = format!("PORT_BANNER=\"{}\"", "x".repeat(len - 14));
        assert_eq!(line.len(), len);
        let text = format!("\u{feff}{line}\nSCAN_TRIGGER=\"0\"\n");
        let path = dir.path().join("portsentry.conf");
        fs::write(&path, &text).unwrap();
        assert!(config::parse(&text, &path).is_ok(), "{len}");
        assert_eq!(config::load(&path), config::parse(&text, &path), "{len}");

        let text = format!("\u{feff}10.0.0.1 #{}\n127.0.0.1\n", "x".repeat(len - 10));
        let path = dir.path().join("portsentry.ignore");
        fs::write(&path, &text).unwrap();
        assert!(IgnoreList::parse(&text, &path).is_ok(), "{len}");
        assert_eq!(
            IgnoreList::load(&path),
            IgnoreList::parse(&text, &path),
            "{len}"
        );
    }
}
