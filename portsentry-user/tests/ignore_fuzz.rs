//! Property tests of the ignore-file parser: random bytes and text, and plausible lines
//! whose parse is known exactly.
//!
//! The property tests run with a random seed; a failure prints the minimal failing input.
//! `PROPTEST_CASES` overrides the number of cases.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use common::{SPACES, check_ignore_bytes, check_ignore_text, file_of, is_v4_mapped, run};
use ipnet::IpNet;
use proptest::{prelude::*, sample::Index, test_runner::TestCaseError};

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
