//! What the parser tests share: the invariants every parse of a config or ignore file must
//! keep (errors name the file and a real line, nothing after the first bad line matters,
//! `load` and `parse` agree), the proptest runner, and the generators used by more than one
//! test file.
//!
//! Each test file is its own crate and uses a part of this module.
#![allow(dead_code)]

use std::{collections::HashSet, fs, net::IpAddr, path::Path};

use ipnet::IpNet;
use portsentry_user::config::{self, Config, ConfigError, MAX_LINE_BYTES, ignore::IgnoreList};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{TestCaseError, TestRunner},
};

// ---------------------------------------------------------------------------------------------
// The runner

/// A runner for `cases` cases, or as many as `PROPTEST_CASES` says (for a longer soak).
pub fn runner(cases: u32) -> TestRunner {
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

pub fn run<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    runner(cases)
        .run(&strategy, test)
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// Shared checks

/// An error about a small file: it names the file, a line of it (line 0, the whole file, is
/// only for files too big or unreadable), and says something, on one line.
pub fn check_error(e: &ConfigError, path: &Path, line_count: usize) -> Result<(), TestCaseError> {
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
pub fn is_validate_error(message: &str) -> bool {
    message.contains("is watched in stealth mode")
        || message.contains("but KILL_RUN_CMD is not set")
        || message.contains("is shorter than BAN_TIME")
        || message.contains("wider than BAN_MIN_PREFIX_V6")
        || message.contains("so every escalation would be refused")
        || message.contains("but CROWDSEC_LAPI_URL is not")
        || message.contains("so CROWDSEC_LAPI_URL is used by nothing")
        || message.contains("CROWDSEC_ENFORCE is 1 but no bouncer key is set")
        || message.contains("CROWDSEC_REPORT is 1 but")
        || message.contains("CROWDSEC_KILL_COMMANDS is 1 but CROWDSEC_ENFORCE is 0")
}

/// The text lines of a `parse` input, as it numbers them.
pub fn text_lines(text: &str) -> Vec<&str> {
    text.split('\n').collect()
}

/// `line` without its `\r`, and without the byte-order mark if it is line 1.
pub fn clean_line(line: &str, n: usize) -> &str {
    let line = if n == 1 {
        line.strip_prefix('\u{feff}').unwrap_or(line)
    } else {
        line
    };
    line.strip_suffix('\r').unwrap_or(line)
}

/// The invariants of `config::parse` on `text`; returns what it parsed.
pub fn check_config_text(
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
pub fn check_encoding_error(bytes: &[u8], e: &ConfigError) -> Result<(), TestCaseError> {
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
pub fn loads_as_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let clean = !body.contains('\0') && body.split('\n').all(|l| l.len() <= MAX_LINE_BYTES + 1);
    clean.then_some(text)
}

/// The invariants of `config::load` on the file `path` holding `bytes`, and of `config::parse`
/// on the same bytes read lossily.
pub fn check_config_bytes(bytes: &[u8], path: &Path) -> Result<(), TestCaseError> {
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
pub fn check_ignore_text(
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
pub fn is_v4_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// Every network has its host bits cleared, appears once, is not an IPv4-mapped IPv6 network
/// (those become IPv4), and contains its first and last address.
pub fn check_ignore_list(list: &IgnoreList) -> Result<(), TestCaseError> {
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

pub fn check_ignore_bytes(bytes: &[u8], path: &Path) -> Result<(), TestCaseError> {
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
// Shared generators

/// Spacing around keys, `=` and entries.
pub const SPACES: &[&str] = &["", "", "", " ", "\t", "  ", " \t "];

/// Lines joined by `\n` or `\r\n`, maybe after a byte-order mark, then maybe a few stray bytes.
pub fn file_of(lines: BoxedStrategy<String>, max_lines: usize) -> BoxedStrategy<Vec<u8>> {
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
