//! Property tests of the config parser: random bytes, random plausible lines and mutations
//! of Debian's stock file. Every parse keeps the invariants in `common`.
//!
//! The property tests run with a random seed; a failure prints the minimal failing input.
//! `PROPTEST_CASES` overrides the number of cases.

mod common;

use std::path::Path;

use common::{SPACES, check_config_bytes, file_of, is_validate_error, run};
use portsentry_user::config;
use proptest::{prelude::*, sample::Index};

// ---------------------------------------------------------------------------------------------
// Generators

// Regex and per-character strategies are slow in an unoptimised test build, so the
// generators pick mostly from lists and use random text sparingly.

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
    ("SCAN_DETECTION", &["trigger", "trw"]),
    // Every θ1 below every θ0, every α below every β: any mix is valid.
    ("TRW_THETA0", &["0.8", "0.9", "0.99"]),
    ("TRW_THETA1", &["0.2", "0.5", "0.01"]),
    ("TRW_ALPHA", &["0.01", "0.001", "0.2"]),
    ("TRW_BETA", &["0.99", "0.9", "0.5"]),
    ("WATCH_EPHEMERAL_UDP", &["0", "1"]),
    ("VERIFY_SOURCES", &["0", "1"]),
    ("STATE_DIR", &["/var/lib/portsentry"]),
    ("PIN_DIR", &["/sys/fs/bpf/portsentry"]),
    ("EVENTS_PER_SEC", &["1", "20000", "10000000"]),
    ("MAX_BANS_PER_SEC", &["0", "100"]),
    ("MAX_TRACKED_SOURCES", &["1024", "65536"]),
    ("MAX_BANS", &["16", "1048576"]),
    ("BAN_MIN_PREFIX_V4", &["0", "8", "32"]),
    ("BAN_MIN_PREFIX_V6", &["0", "32", "128"]),
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
