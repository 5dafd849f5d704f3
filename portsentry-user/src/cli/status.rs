//! `portsentry status`: the daemon, the program, the interfaces, the kernel counters,
//! the tracked sources and every ban; read from the pins and the state file, so it works
//! whether the daemon runs or not. Written out as each ban is described, not gathered
//! first: a million bans would hold half a GiB.

use std::{
    fmt::Write as _,
    fs,
    io::{self, Write},
    net::IpAddr,
    path::PathBuf,
    time::SystemTime,
};

use anyhow::Result;
use ipnet::IpNet;
use portsentry_common::{Counter, ScanType, maps::BanEntry};
use serde::Serialize;

use super::{StatusArgs, config};
use crate::{
    bans::journal,
    bans::{Ban, BanStore, DefaultName, state},
    crowdsec::link::{self, LinkStatus},
    kernel::{self, Dataplane},
    kinds::{self, ModeToken, Protocol},
    paths, pidfile,
};

#[derive(Serialize)]
struct Status<'a> {
    daemon: DaemonStatus,
    pin_dir: PathBuf,
    loaded: bool,
    interfaces: Vec<String>,
    tcp_mode: &'static str,
    udp_mode: &'static str,
    counters: std::collections::BTreeMap<&'static str, u64>,
    packets: u64,
    dropped: u64,
    sources_tracked: usize,
    sources: Vec<SourceStatus>,
    /// The CrowdSec Local API link as the daemon last wrote it; `None` when off.
    crowdsec: Option<LinkStatus>,
    steps_due: StepsDue,
    bans: Bans<'a>,
}

/// Commands the journal notes as due: not run yet, or cut short by a stop or a crash.
/// The daemon runs them in each host's turn; a start runs those the last stop left.
#[derive(Serialize)]
struct StepsDue {
    /// Bans in force whose kill commands (KILL_*) have not all run.
    kill_commands: usize,
    /// Lifted or replaced bans whose undo steps (UNKILL_*, the hosts.deny line's
    /// removal) have not run.
    undo_steps: usize,
}

/// Every ban of the journal and of the kernel, described one at a time as it is written
/// out ([`merge`]).
struct Bans<'a> {
    saved: &'a BanStore,
    kernel: &'a [(IpNet, BanEntry)],
    /// `kernel`'s indices in the order of networks (sorted once for both passes).
    order: Vec<u32>,
    loaded: bool,
    /// A kernel-only ban's mode tokens (TCP, UDP).
    tokens: (ModeToken, ModeToken),
    /// How many there are (one pass ahead of the listing, for its header and length).
    count: usize,
}

impl<'a> Bans<'a> {
    fn new(
        saved: &'a BanStore,
        kernel: &'a [(IpNet, BanEntry)],
        loaded: bool,
        tokens: (ModeToken, ModeToken),
    ) -> Bans<'a> {
        let order = state::net_ordered(kernel);
        let mut count = 0;
        merge(saved, kernel, &order, loaded, tokens, |_, _, _| count += 1);
        Bans {
            saved,
            kernel,
            order,
            loaded,
            tokens,
            count,
        }
    }

    /// Each ban, described, in the order of networks.
    fn each(&self, mut f: impl FnMut(BanStatus<'a>)) {
        merge(
            self.saved,
            self.kernel,
            &self.order,
            self.loaded,
            self.tokens,
            |b, name, in_kernel| {
                f(BanStatus {
                    net: b.net,
                    origin: b.origin_word(),
                    escalated: b.escalated,
                    reason: kinds::mode_word(b.mode),
                    name,
                    port: b.port,
                    scan_type: b.scan_type.map(ScanType::name),
                    since: Rfc3339(b.since),
                    expires: b.expires.map(Rfc3339),
                    in_kernel,
                    count: b.count,
                })
            },
        );
    }

    /// Each ban to `f` until it fails; its first error.
    fn try_each<E>(&self, mut f: impl FnMut(BanStatus<'a>) -> Result<(), E>) -> Result<(), E> {
        let mut failed = None;
        self.each(|b| {
            if failed.is_none()
                && let Err(e) = f(b)
            {
                failed = Some(e);
            }
        });
        failed.map_or(Ok(()), Err)
    }
}

impl Serialize for Bans<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = s.serialize_seq(Some(self.count))?;
        self.try_each(|b| seq.serialize_element(&b))?;
        seq.end()
    }
}

#[derive(Serialize)]
struct DaemonStatus {
    running: bool,
    pid: Option<u32>,
}

#[derive(Serialize)]
struct SourceStatus {
    address: IpAddr,
    hits: u32,
    distinct_ports: u32,
    last_port: u16,
    last_scan_type: Option<&'static str>,
    first_seen: String,
    last_seen: String,
}

#[derive(Serialize)]
struct BanStatus<'a> {
    net: IpNet,
    /// `scan`, `manual`, `escalation` (the ban of a network whose hosts were banned) or
    /// `crowdsec` (a decision of the CrowdSec Local API).
    origin: &'static str,
    /// For an escalation: how many banned hosts of the network made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    escalated: Option<u32>,
    /// The mode that banned it (`atcp`, ...) or `manual`.
    reason: &'static str,
    name: BanName<'a>,
    port: u16,
    scan_type: Option<&'static str>,
    since: Rfc3339,
    /// RFC 3339, or null for a permanent ban.
    expires: Option<Rfc3339>,
    /// Whether the kernel holds it (false: on record only; the next start applies it).
    in_kernel: bool,
    count: u32,
}

/// A ban's name as logged: its resolved name, else its default name
/// ([`Ban::default_name_shown`]), written out with no string of its own.
#[derive(Clone, Copy)]
enum BanName<'a> {
    Resolved(&'a str),
    Default(DefaultName),
}

impl<'a> BanName<'a> {
    /// `ban`'s name, with `resolved` the name on record.
    fn of(ban: &Ban, resolved: Option<&'a str>) -> BanName<'a> {
        match resolved {
            Some(n) => BanName::Resolved(n),
            None => BanName::Default(ban.default_name_shown()),
        }
    }
}

impl std::fmt::Display for BanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BanName::Resolved(n) => f.write_str(n),
            BanName::Default(d) => d.fmt(f),
        }
    }
}

impl Serialize for BanName<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A time shown as RFC 3339 (seconds), formatted only when written out: a million bans
/// make no million strings.
#[derive(Clone, Copy)]
struct Rfc3339(SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_rfc3339_seconds(self.0).fmt(f)
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Every ban of the journal and of the kernel, in the order of networks, to `each`
/// with its name and whether the kernel holds it (`loaded` false: no pins to ask, the
/// journal's bans count as held). A kernel-only ban is described with `tokens` (TCP,
/// UDP); `order` is `kernel`'s indices in the order of networks
/// (`state::net_ordered`). One pass over both: a lookup per ban in the journal's map
/// was a fifth of the time at a million bans.
fn merge<'a>(
    saved: &'a BanStore,
    kernel: &[(IpNet, BanEntry)],
    order: &[u32],
    loaded: bool,
    tokens: (ModeToken, ModeToken),
    mut each: impl FnMut(&Ban, BanName<'a>, bool),
) {
    let kernel_only =
        |net: &IpNet, e: &BanEntry| state::ban_from_kernel(*net, e, tokens.0, tokens.1);
    let mut k = order.iter().map(|i| &kernel[*i as usize]).peekable();
    for (net, rec) in saved.records() {
        let at = state::net_order(net);
        while let Some((n, e)) = k.next_if(|(n, _)| state::net_order(n) < at) {
            let b = kernel_only(n, e);
            each(&b, BanName::of(&b, None), true);
        }
        let in_kernel = k.next_if(|(n, _)| n == net).is_some();
        if let Some(b) = rec.ban(*net) {
            let name = BanName::of(&b, saved.resolved_name(net));
            each(&b, name, !loaded || in_kernel);
        }
    }
    for (n, e) in k {
        let b = kernel_only(n, e);
        each(&b, BanName::of(&b, None), true);
    }
}

/// `portsentry status`, written to `out`.
pub fn status(args: &StatusArgs, out: &mut dyn Write) -> Result<()> {
    let c = config(&args.file)?;
    let pid = pidfile::running_pid(&c.state_dir);
    // The journal is read while the pinned maps are (each takes a few hundred ms at a
    // million bans).
    let reading = {
        let dir = c.state_dir.clone();
        std::thread::spawn(move || journal::load(&dir))
    };
    let loaded = kernel::is_pinned(&c.pin_dir);
    let dp = if loaded {
        Some(Dataplane::inspect_pinned(&c.pin_dir)?)
    } else {
        None
    };
    let mut interfaces: Vec<String> = fs::read_dir(&c.pin_dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    paths::link_interface(&name).map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    interfaces.sort();
    let kernel_bans = match &dp {
        Some(dp) => dp.bans()?,
        None => Vec::new(),
    };
    let saved = reading
        .join()
        .map_err(|_| anyhow::anyhow!("the journal reader's thread panicked"))??;
    let tcp_mode = c.tcp_mode.token(Protocol::Tcp);
    let udp_mode = c.udp_mode.token(Protocol::Udp);
    // A kernel-only ban of a protocol whose mode is off: recorded under the advanced
    // mode's token, as the daemon does.
    let tokens = (
        tcp_mode.unwrap_or(ModeToken::Atcp),
        udp_mode.unwrap_or(ModeToken::Audp),
    );
    let steps_due = StepsDue {
        kill_commands: saved
            .kills_due_len(c.crowdsec_lapi_url.is_some() && c.crowdsec_kill_commands),
        undo_steps: saved.undos_len(),
    };
    let bans = Bans::new(&saved, &kernel_bans, loaded, tokens);
    let counters = match &dp {
        Some(dp) => dp.counters()?,
        None => Default::default(),
    };
    let mut sources = match &dp {
        Some(dp) => dp.sources()?,
        None => Vec::new(),
    };
    let tracked = sources.len();
    sources.sort_by(|a, b| b.1.hits.cmp(&a.1.hits).then(a.0.cmp(&b.0)));
    let st = Status {
        daemon: DaemonStatus {
            running: pid.is_some(),
            pid,
        },
        pin_dir: c.pin_dir.clone(),
        loaded,
        interfaces,
        tcp_mode: tcp_mode.map_or("off", ModeToken::as_str),
        udp_mode: udp_mode.map_or("off", ModeToken::as_str),
        counters: Counter::ALL
            .iter()
            .filter(|k| k.is_counted())
            .map(|k| (k.name(), counters.get(*k)))
            .collect(),
        packets: counters.packets(),
        dropped: counters.dropped(),
        sources_tracked: tracked,
        sources: sources
            .iter()
            .take(args.sources)
            .map(|(ip, s)| SourceStatus {
                address: *ip,
                hits: s.hits,
                distinct_ports: s.distinct_ports,
                last_port: s.last_port,
                last_scan_type: ScanType::from_u8(s.last_scan_type).map(ScanType::name),
                first_seen: rfc3339(crate::clock::to_system(s.first_ns)),
                last_seen: rfc3339(crate::clock::to_system(s.last_ns)),
            })
            .collect(),
        crowdsec: c
            .crowdsec_lapi_url
            .as_ref()
            .and_then(|_| link::read(&c.state_dir)),
        steps_due,
        bans,
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &st)?;
        writeln!(out)?;
    } else {
        render(&st, out)?;
    }
    Ok(())
}

fn render(st: &Status, s: &mut dyn Write) -> io::Result<()> {
    match st.daemon.pid {
        Some(pid) => writeln!(s, "daemon:     running (pid {pid})")?,
        None => writeln!(s, "daemon:     not running")?,
    }
    writeln!(
        s,
        "program:    {} ({})",
        if st.loaded {
            "loaded, maps pinned"
        } else {
            "not loaded"
        },
        st.pin_dir.display()
    )?;
    writeln!(
        s,
        "interfaces: {}",
        if st.interfaces.is_empty() {
            "none".to_owned()
        } else {
            st.interfaces.join(", ")
        }
    )?;
    writeln!(s, "modes:      TCP {}, UDP {}", st.tcp_mode, st.udp_mode)?;
    writeln!(s, "packets:    {} seen, {} dropped", st.packets, st.dropped)?;
    for (name, v) in &st.counters {
        if *v > 0 {
            writeln!(s, "  {name:<18} {v}")?;
        }
    }
    writeln!(s, "sources:    {} tracked", st.sources_tracked)?;
    for src in &st.sources {
        writeln!(
            s,
            "  {:<40} {} hits, {} ports, last {} {}, last seen {}",
            src.address,
            src.hits,
            src.distinct_ports,
            src.last_scan_type.unwrap_or("?"),
            src.last_port,
            src.last_seen
        )?;
    }
    if let Some(cs) = &st.crowdsec {
        let mut lines = String::new();
        render_crowdsec(cs, &mut lines);
        s.write_all(lines.as_bytes())?;
    }
    let due = &st.steps_due;
    if due.kill_commands + due.undo_steps > 0 {
        writeln!(
            s,
            "steps due:  kill commands of {} bans, undo steps of {} lifted bans ({})",
            due.kill_commands,
            due.undo_steps,
            if st.daemon.running {
                "the daemon runs them in each host's turn"
            } else {
                "the next start runs them"
            }
        )?;
    }
    writeln!(s, "bans:       {}", st.bans.count)?;
    st.bans.try_each(|b| {
        let what = match (b.origin, b.scan_type) {
            ("scan", Some(t)) => format!("{} {t} to port {}", b.reason, b.port),
            (kinds::ESCALATION, _) => format!(
                "escalation: {} of its hosts banned, the last {} {} to port {}",
                b.escalated.unwrap_or(0),
                b.reason,
                b.scan_type.unwrap_or("?"),
                b.port
            ),
            ("crowdsec", _) => "crowdsec decision".to_owned(),
            _ => "manual".to_owned(),
        };
        writeln!(
            s,
            "  {:<40} {what}, since {}, {}{}{}",
            b.net,
            b.since,
            b.expires
                .as_ref()
                .map_or("permanent".to_owned(), |e| format!("until {e}")),
            if b.count > 1 {
                format!(", ban #{}", b.count)
            } else {
                String::new()
            },
            if b.in_kernel { "" } else { " (on record only)" }
        )
    })
}

/// The CrowdSec lines of `status`.
fn render_crowdsec(cs: &LinkStatus, s: &mut String) {
    let _ = writeln!(s, "crowdsec:   {}", cs.url);
    for (name, side) in [("enforce", &cs.enforce), ("report", &cs.report)] {
        let Some(side) = side else {
            let _ = writeln!(s, "  {name:<8} off");
            continue;
        };
        let state = serde_json::to_value(side.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {name:<8} {state} since {}, last {} {}{}",
            side.since.as_deref().unwrap_or("?"),
            if name == "enforce" { "sync" } else { "success" },
            side.last_ok.as_deref().unwrap_or("never"),
            side.last_error
                .as_ref()
                .map_or(String::new(), |e| format!(", last error: {e}"))
        );
    }
    let e = &cs.enforced;
    let _ = writeln!(
        s,
        "  enforced {} addresses ({} IPv4, {} IPv6), {} ranges ({} IPv4, {} IPv6)",
        e.ip_v4 + e.ip_v6,
        e.ip_v4,
        e.ip_v6,
        e.range_v4 + e.range_v6,
        e.range_v4,
        e.range_v6
    );
    let join = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let _ = writeln!(s, "  decisions {}", join(&cs.decisions));
    let _ = writeln!(s, "  reports  {}; {} queued", join(&cs.reports), cs.queued);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use portsentry_common::maps::BanOrigin;

    use super::*;

    #[test]
    fn a_ban_is_named_as_it_was_logged() {
        let now = SystemTime::now();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let mut saved = BanStore::new();
        let host = Ban::of_decision(net("192.0.2.7/32"), now, now);
        let named = Ban::of_decision(net("192.0.2.8/32"), now, now);
        let mut escalation = Ban::of_decision(net("198.51.100.0/24"), now, now);
        escalation.escalated = Some(5);
        for b in [&host, &named, &escalation] {
            saved.insert(*b);
        }
        saved.set_name(&named.net, "scanner.example");
        let mut names = Vec::new();
        let tokens = (ModeToken::Atcp, ModeToken::Audp);
        merge(&saved, &[], &[], false, tokens, |b, n, _| {
            names.push((n.to_string(), saved.name_of(b).into_owned()))
        });
        let shown: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(shown, ["192.0.2.7", "scanner.example", "198.51.100.0/24"]);
        // The same as the log's and the journal's.
        assert!(
            names.iter().all(|(shown, logged)| shown == logged),
            "{names:?}"
        );
        let json = serde_json::to_string(&BanName::Resolved("a\"b")).unwrap();
        assert_eq!(json, r#""a\"b""#);
    }

    #[test]
    fn merge_lists_both_in_order_with_where_each_is_held() {
        let now = SystemTime::now();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let mut saved = BanStore::new();
        for n in ["10.0.0.9/32", "10.0.0.0/24", "2001:db8::1/128"] {
            saved.insert(Ban::of_decision(net(n), now, now + Duration::from_secs(60)));
        }
        let entry = BanEntry {
            expires_ns: 0,
            since_ns: crate::clock::monotonic_ns(),
            port: 23,
            scan_type: ScanType::TcpSyn as u8,
            origin: BanOrigin::Scan as u8,
            count: 1,
        };
        // The kernel's, in its hash order: two of the journal's and two of its own.
        let kernel = vec![
            (net("2001:db8::1/128"), entry),
            (net("192.0.2.1/32"), entry),
            (net("10.0.0.9/32"), entry),
            (net("9.9.9.9/32"), entry),
        ];
        let tokens = (ModeToken::Atcp, ModeToken::Audp);
        let mut seen = Vec::new();
        let order = state::net_ordered(&kernel);
        merge(&saved, &kernel, &order, true, tokens, |b, _, held| {
            seen.push((b.net.to_string(), b.origin, held))
        });
        let want = [
            ("9.9.9.9/32", BanOrigin::Scan, true),
            ("10.0.0.0/24", BanOrigin::CrowdSec, false),
            ("10.0.0.9/32", BanOrigin::CrowdSec, true),
            ("192.0.2.1/32", BanOrigin::Scan, true),
            ("2001:db8::1/128", BanOrigin::CrowdSec, true),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(n, o, h)| (n.to_string(), *o, *h))
            .collect();
        assert_eq!(seen, want);

        // No pins to ask: the journal's bans count as held, nothing else is listed.
        let mut seen = Vec::new();
        merge(&saved, &[], &[], false, tokens, |b, _, held| {
            seen.push((b.net.to_string(), held))
        });
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|(_, held)| *held), "{seen:?}");
    }
}
