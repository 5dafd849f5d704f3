//! Property test of port lists in the config: any list of ports and ranges, with spacing,
//! parses to exactly its set, and the set as portsentry shows it reads back the same.
//!
//! The property test runs with a random seed; a failure prints the minimal failing input.
//! `PROPTEST_CASES` overrides the number of cases.

mod common;

use std::path::Path;

use common::{SPACES, run};
use portsentry_user::config::{self, ports::PortSet};
use proptest::{prelude::*, test_runner::TestCaseError};

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
