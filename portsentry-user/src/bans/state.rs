//! The reconciliation of the bans on record (the [journal](super::journal)) with the
//! kernel's pinned maps at start-up, and the state file of earlier releases
//! (`STATE_DIR/bans.json`, one JSON document rewritten whole), read once to migrate it
//! to the journal.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use portsentry_common::{
    ScanType,
    maps::{BanEntry, BanOrigin},
};
use serde::{Deserialize, Serialize};

use super::{Ban, BanStore};
use crate::{
    clock,
    kinds::{self, ModeToken, Protocol},
    paths,
};

const VERSION: u32 = 1;

/// The state file of earlier releases.
pub fn json_path(state_dir: &Path) -> PathBuf {
    paths::state_file(state_dir)
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct StateFile {
    version: u32,
    bans: Vec<BanRecord>,
    /// Bans each network has had, for repeat-offender durations.
    previous: Vec<(IpNet, u32)>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct BanRecord {
    net: IpNet,
    origin: String,
    since_ms: u64,
    expires_ms: Option<u64>,
    port: u16,
    proto: u8,
    scan_type: Option<String>,
    mode: String,
    name: String,
    count: u32,
    /// An escalation: how many banned hosts of the network made it (origin `scan`, as
    /// the kernel holds it). Absent for any other ban, and in files from before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    escalated: Option<u32>,
}

use super::{from_unix_ms as from_ms, unix_ms as ms};

/// Serializes the store in the old format (tests, and the bench's migration case).
pub fn to_json(store: &BanStore) -> String {
    // As the old format had it: every network's count, banned now or not.
    let mut previous: Vec<(IpNet, u32)> = store
        .previous()
        .map(|(n, c)| (*n, *c))
        .chain(store.iter().map(|b| (b.net, store.times_banned(&b.net))))
        .collect();
    previous.sort();
    let file = StateFile {
        version: VERSION,
        bans: store
            .iter()
            .map(|b| BanRecord {
                net: b.net,
                origin: kinds::origin_name(b.origin).to_owned(),
                since_ms: ms(b.since),
                expires_ms: b.expires.map(ms),
                port: b.port,
                proto: b.proto.map_or(0, Protocol::number),
                scan_type: b.scan_type.map(|t| t.name().to_owned()),
                mode: kinds::mode_word(b.mode).to_owned(),
                name: store.name_of(&b).into_owned(),
                count: b.count,
                escalated: b.escalated,
            })
            .collect(),
        previous,
    };
    serde_json::to_string_pretty(&file).expect("plain data serializes")
}

/// Parses a state file's text; errors say what is wrong.
pub fn from_json(text: &str) -> Result<BanStore> {
    let file: StateFile = serde_json::from_str(text)?;
    if file.version != VERSION {
        bail!("version {} is not {VERSION}", file.version);
    }
    let mut store = BanStore::new();
    for (net, count) in file.previous {
        store.set_previous(net, count);
    }
    let mut names = Vec::new();
    for r in file.bans {
        let origin = kinds::origin_from_name(&r.origin)
            .with_context(|| format!("ban of {}: unknown origin {:?}", r.net, r.origin))?;
        let mode = match r.mode.as_str() {
            kinds::MANUAL => None,
            m => Some(
                ModeToken::parse(m)
                    .with_context(|| format!("ban of {}: unknown mode {m:?}", r.net))?,
            ),
        };
        let proto = match r.proto {
            0 => None,
            n => Some(
                Protocol::from_number(n)
                    .with_context(|| format!("ban of {}: unknown protocol {n}", r.net))?,
            ),
        };
        let scan_type = match &r.scan_type {
            Some(n) => Some(
                ScanType::from_name(n)
                    .with_context(|| format!("ban of {}: unknown scan type {n:?}", r.net))?,
            ),
            None => None,
        };
        store.insert(Ban {
            net: r.net,
            origin,
            since: from_ms(r.since_ms),
            expires: r.expires_ms.map(from_ms),
            port: r.port,
            proto,
            scan_type,
            mode,
            count: r.count,
            escalated: r.escalated,
        });
        names.push((r.net, r.name));
    }
    for (net, name) in names {
        store.set_name(&net, &name);
    }
    Ok(store)
}

/// Reads an old `STATE_DIR/bans.json`; an empty store when there is none. A file that
/// cannot be read or parsed is an error: bans are never dropped silently.
pub fn load_json(state_dir: &Path) -> Result<BanStore> {
    let path = json_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => from_json(&text).with_context(|| {
            format!(
                "{} is not a valid portsentry state file (move it away to start without \
                 its bans)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BanStore::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A ban known only to the kernel (made just before a crash): rebuilt from its entry.
/// `tcp_mode` and `udp_mode` are the configured modes' tokens.
pub fn ban_from_kernel(net: IpNet, e: &BanEntry, tcp_mode: ModeToken, udp_mode: ModeToken) -> Ban {
    let scan_type = ScanType::from_u8(e.scan_type);
    let origin = match e.origin {
        o if o == BanOrigin::Manual as u8 => BanOrigin::Manual,
        o if o == BanOrigin::CrowdSec as u8 => BanOrigin::CrowdSec,
        _ => BanOrigin::Scan,
    };
    let mode = match (origin, scan_type) {
        (BanOrigin::Manual | BanOrigin::CrowdSec, _) | (_, None) => None,
        (_, Some(ScanType::Udp)) => Some(udp_mode),
        (_, Some(_)) => Some(tcp_mode),
    };
    let proto = mode.map(ModeToken::protocol);
    Ban {
        net,
        origin,
        since: clock::to_system(e.since_ns),
        expires: (e.expires_ns != 0).then(|| clock::to_system(e.expires_ns)),
        port: e.port,
        proto,
        scan_type,
        mode,
        count: e.count.max(1),
        // The kernel does not know escalations: one rebuilt from its entry alone is a
        // scan ban of the network.
        escalated: None,
    }
}

/// What start-up reconciliation decided.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Bans in force after start-up.
    pub store: BanStore,
    /// Bans that ran out while no daemon ran: remove them and run their undo steps.
    pub expired: Vec<Ban>,
    /// Kernel bans the file did not know (made just before a crash).
    pub adopted: Vec<IpNet>,
    /// Bans the program made itself at the trigger that no daemon responded to yet
    /// (origin `Kernel`): in the kernel, not in `store`; the daemon responds to them.
    pub pending: Vec<(IpNet, BanEntry)>,
    /// Bans on record the kernel holds with a deadline the wall clock has moved away
    /// from (a step, or a suspend, while no daemon ran), with the entry their record
    /// makes now: the daemon writes them again ([`Dataplane::refresh_bans`]).
    ///
    /// [`Dataplane::refresh_bans`]: crate::kernel::Dataplane::refresh_bans
    pub moved: Vec<(IpNet, BanEntry)>,
}

/// Merges the bans on record with the kernel's: a ban in either is kept (the kernel
/// entry only fills in what the record lacks), one that has run out is reported expired
/// (and stays in the store until the caller lifts it, so that its end is recorded).
/// One pass over both, in the order of networks (the kernel's are sorted here). The bans
/// on record that the kernel lacks (all of them after a reboot) go to `to_insert`, each
/// with its kernel entry, as they are met.
pub fn reconcile(
    saved: BanStore,
    kernel: Vec<(IpNet, BanEntry)>,
    now: SystemTime,
    tcp_mode: ModeToken,
    udp_mode: ModeToken,
    mut to_insert: impl FnMut(IpNet, BanEntry),
) -> Reconciled {
    let mut out = Reconciled {
        store: saved,
        ..Reconciled::default()
    };
    let order = net_ordered(&kernel);
    let clocks = crate::clock::Anchor::now();
    let now_ms = super::unix_ms(now);
    let mut kernel_only = Vec::new();
    let mut k = order.iter().map(|i| &kernel[*i as usize]).peekable();
    for (net, rec) in out.store.records() {
        // Compared as `net_order`'s integers: `IpNet`'s derived order was a tenth of a
        // restart.
        let at = net_order(net);
        while let Some(e) = k.next_if(|(n, _)| net_order(n) < at) {
            kernel_only.push(*e);
        }
        let in_kernel = k.next_if(|(n, _)| n == net).map(|(_, e)| e.expires_ns);
        if rec.expires_ms != 0 && rec.expires_ms <= now_ms {
            out.expired.extend(rec.ban(*net));
        } else if let Some(entry) = rec.kernel_entry_at(&clocks) {
            match in_kernel {
                // Lacking (all of them after a reboot).
                None => to_insert(*net, entry),
                Some(k) if deadline_moved(k, entry.expires_ns) => out.moved.push((*net, entry)),
                Some(_) => {}
            }
        }
    }
    kernel_only.extend(k.copied());
    drop((order, kernel));
    for (net, entry) in kernel_only {
        if entry.origin == BanOrigin::Kernel as u8 {
            out.pending.push((net, entry));
            continue;
        }
        let ban = ban_from_kernel(net, &entry, tcp_mode, udp_mode);
        if ban.is_expired(now) {
            out.expired.push(ban);
        } else {
            out.adopted.push(net);
            out.store.insert(ban);
        }
    }
    out
}

/// Whether the kernel's deadline `kernel` of a ban is more than a second away from
/// `record`, the one its end on record makes as the clocks read now: the kernel's
/// deadlines are monotonic, worked out from the wall clock when each ban was written.
fn deadline_moved(kernel: u64, record: u64) -> bool {
    const SLACK_NS: u64 = 1_000_000_000;
    kernel.abs_diff(record) > SLACK_NS
}

/// `IpNet`'s order (IPv4 first, then by address, then by prefix length) as plain
/// integers: sorting a million kernel bans by it takes a fraction of the derived
/// comparison's time.
pub fn net_order(net: &IpNet) -> (bool, u128, u8) {
    match net {
        IpNet::V4(n) => (false, u128::from(u32::from(n.addr())), n.prefix_len()),
        IpNet::V6(n) => (true, u128::from(n.addr()), n.prefix_len()),
    }
}

/// The indices of `items` in the order of their networks ([`net_order`]). The keys are
/// worked out once and sorted apart from the items, the IPv4 ones as one integer each:
/// a million kernel bans sorted in place by [`net_order`] took a quarter of a second
/// of a restart.
pub fn net_ordered<T>(items: &[(IpNet, T)]) -> Vec<u32> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (i, (net, _)) in items.iter().enumerate() {
        let i = u32::try_from(i).expect("fewer than 2^32 bans");
        match net {
            IpNet::V4(n) => v4.push((
                u64::from(u32::from(n.addr())) << 8 | u64::from(n.prefix_len()),
                i,
            )),
            IpNet::V6(n) => v6.push((u128::from(n.addr()), n.prefix_len(), i)),
        }
    }
    v4.sort_unstable();
    v6.sort_unstable();
    v4.into_iter()
        .map(|(_, i)| i)
        .chain(v6.into_iter().map(|(_, _, i)| i))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn net_order_is_the_order_of_networks() {
        let mut nets: Vec<IpNet> = [
            "10.0.0.0/8",
            "10.0.0.0/32",
            "9.255.255.255/32",
            "255.255.255.255/32",
            "0.0.0.0/0",
            "::/0",
            "::1/128",
            "::ffff:10.0.0.1/128",
            "2001:db8::/32",
            "2001:db8::/64",
            "ffff::1/128",
            "10.0.0.1/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut by_key = nets.clone();
        let items: Vec<(IpNet, ())> = nets.iter().map(|n| (*n, ())).collect();
        let ordered: Vec<IpNet> = net_ordered(&items)
            .into_iter()
            .map(|i| nets[i as usize])
            .collect();
        nets.sort();
        by_key.sort_by_key(net_order);
        assert_eq!(nets, by_key);
        assert_eq!(nets, ordered);
    }

    fn ban(net: &str, expires: Option<SystemTime>, origin: BanOrigin) -> Ban {
        Ban {
            net: net.parse().unwrap(),
            origin,
            since: UNIX_EPOCH + Duration::from_millis(1_795_625_334_123),
            expires,
            port: 22,
            proto: Some(Protocol::Tcp),
            scan_type: Some(ScanType::TcpSyn),
            mode: Some(ModeToken::Atcp),
            count: 2,
            escalated: None,
        }
    }

    #[test]
    fn round_trip() {
        let mut s = BanStore::new();
        s.insert(ban("192.0.2.7/32", None, BanOrigin::Scan));
        s.insert(ban(
            "2001:db8::/64",
            Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
            BanOrigin::Manual,
        ));
        s.insert(Ban {
            escalated: Some(5),
            ..ban("203.0.113.0/24", None, BanOrigin::Scan)
        });
        s.set_previous("198.51.100.1/32".parse().unwrap(), 4);
        let text = to_json(&s);
        assert_eq!(text.matches("\"escalated\"").count(), 1, "{text}");
        let back = from_json(&text).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            s.iter().collect::<Vec<_>>()
        );
        assert_eq!(back.times_banned(&"198.51.100.1/32".parse().unwrap()), 4);
        let escalation = back.get(&"203.0.113.0/24".parse().unwrap()).unwrap();
        assert_eq!(
            (escalation.escalated, escalation.origin_word()),
            (Some(5), "escalation")
        );
        assert!(!escalation.has_undo(true));
        assert_eq!(to_json(&back), text);
    }

    /// A state file as the first release wrote it (mode and protocol as words and
    /// numbers, `manual` for an operator's ban) loads into the typed store and is written
    /// back byte for byte.
    #[test]
    fn a_file_from_the_first_release_loads() {
        let text = r#"{
  "version": 1,
  "bans": [
    {
      "net": "192.0.2.7/32",
      "origin": "scan",
      "since_ms": 1795625334123,
      "expires_ms": null,
      "port": 31337,
      "proto": 17,
      "scan_type": "udp",
      "mode": "sudp",
      "name": "scanner.example",
      "count": 1
    },
    {
      "net": "198.51.100.0/24",
      "origin": "manual",
      "since_ms": 1795625334123,
      "expires_ms": 1900000000000,
      "port": 0,
      "proto": 0,
      "scan_type": null,
      "mode": "manual",
      "name": "198.51.100.0",
      "count": 1
    }
  ],
  "previous": [
    [
      "192.0.2.7/32",
      1
    ],
    [
      "198.51.100.0/24",
      1
    ]
  ]
}"#;
        let s = from_json(text).unwrap();
        let udp = s.get(&"192.0.2.7/32".parse().unwrap()).unwrap();
        assert_eq!(
            (udp.proto, udp.mode, udp.scan_type),
            (
                Some(Protocol::Udp),
                Some(ModeToken::Sudp),
                Some(ScanType::Udp)
            )
        );
        let manual = s.get(&"198.51.100.0/24".parse().unwrap()).unwrap();
        assert_eq!((manual.proto, manual.mode), (None, None));
        assert_eq!(to_json(&s), text);
        let bad_mode = text.replace("\"sudp\"", "\"xtcp\"");
        let e = from_json(&bad_mode).unwrap_err();
        assert!(format!("{e:#}").contains("unknown mode"), "{e:#}");
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(from_json("").is_err());
        assert!(from_json("{\"version\": 9, \"bans\": [], \"previous\": []}").is_err());
        let bad_origin = to_json(&{
            let mut s = BanStore::new();
            s.insert(ban("192.0.2.7/32", None, BanOrigin::Scan));
            s
        })
        .replace("\"scan\"", "\"alien\"");
        let e = from_json(&bad_origin).unwrap_err();
        assert!(format!("{e:#}").contains("unknown origin"), "{e:#}");
    }

    #[test]
    fn load_json_reads_an_old_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_json(dir.path()).unwrap().len(), 0, "no file: no bans");
        let mut s = BanStore::new();
        s.insert(ban("192.0.2.7/32", None, BanOrigin::Scan));
        std::fs::write(json_path(dir.path()), to_json(&s)).unwrap();
        assert_eq!(load_json(dir.path()).unwrap().len(), 1);
        std::fs::write(json_path(dir.path()), "garbage").unwrap();
        let e = load_json(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("bans.json"), "{e:#}");
    }

    #[test]
    fn reconcile_after_crash_and_after_reboot() {
        let now = SystemTime::now();
        let mut saved = BanStore::new();
        saved.insert(ban("192.0.2.1/32", None, BanOrigin::Scan)); // in kernel
        saved.insert(ban("192.0.2.2/32", None, BanOrigin::Scan)); // not in kernel: reboot
        saved.insert(ban(
            "192.0.2.3/32",
            Some(now - Duration::from_secs(1)),
            BanOrigin::Scan,
        ));
        let live = BanEntry {
            expires_ns: 0,
            since_ns: clock::monotonic_ns(),
            port: 80,
            scan_type: ScanType::TcpFin as u8,
            origin: BanOrigin::Scan as u8,
            count: 1,
        };
        let pending = BanEntry {
            origin: BanOrigin::Kernel as u8,
            ..live
        };
        let kernel = vec![
            ("192.0.2.1/32".parse().unwrap(), live),
            ("192.0.2.4/32".parse().unwrap(), live), // made just before a crash
            ("192.0.2.5/32".parse().unwrap(), pending), // made by the program, no response yet
        ];
        let mut nets: Vec<IpNet> = Vec::new();
        let r = reconcile(
            saved,
            kernel,
            now,
            ModeToken::Atcp,
            ModeToken::Audp,
            |n, _| nets.push(n),
        );
        assert_eq!(nets, vec!["192.0.2.2/32".parse::<IpNet>().unwrap()]);
        assert_eq!(r.adopted, vec!["192.0.2.4/32".parse::<IpNet>().unwrap()]);
        assert_eq!(r.pending, vec![("192.0.2.5/32".parse().unwrap(), pending)]);
        assert_eq!(r.expired.len(), 1);
        // The expired ban stays in the store until the daemon lifts it (and records
        // that).
        assert_eq!(r.store.len(), 4);
        let adopted = r.store.get(&"192.0.2.4/32".parse().unwrap()).unwrap();
        assert_eq!(
            (adopted.port, adopted.proto, adopted.mode),
            (80, Some(Protocol::Tcp), Some(ModeToken::Atcp))
        );
        assert_eq!(adopted.scan_type, Some(ScanType::TcpFin));
    }

    /// A timed ban the kernel holds with a deadline the wall clock has moved away from
    /// (stepped back an hour while no daemon ran: it would end an hour early) is written
    /// again from its end on record; one whose deadline agrees is left as it is.
    #[test]
    fn a_kernel_deadline_off_by_a_step_is_written_again() {
        let now = SystemTime::now();
        let end = now + Duration::from_secs(7200);
        let mut saved = BanStore::new();
        saved.insert(ban("192.0.2.1/32", Some(end), BanOrigin::Scan));
        saved.insert(ban("192.0.2.2/32", Some(end), BanOrigin::Scan));
        let agreed = saved
            .get(&"192.0.2.1/32".parse().unwrap())
            .unwrap()
            .kernel_entry();
        let stepped = BanEntry {
            expires_ns: agreed.expires_ns - 3_600_000_000_000,
            ..agreed
        };
        let kernel = vec![
            ("192.0.2.1/32".parse().unwrap(), agreed),
            ("192.0.2.2/32".parse().unwrap(), stepped),
        ];
        let mut lacking = 0;
        let r = reconcile(
            saved,
            kernel,
            now,
            ModeToken::Atcp,
            ModeToken::Audp,
            |_, _| lacking += 1,
        );
        assert_eq!(lacking, 0);
        let written = r.moved;
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0].0, "192.0.2.2/32".parse::<IpNet>().unwrap());
        assert!(written[0].1.expires_ns.abs_diff(agreed.expires_ns) < 10_000_000);
    }
}
