//! The operator commands: `status`, `ban`, `unban`, `unload`. They work whether or not
//! the daemon runs: with a daemon, `ban` and `unban` go through its control socket; without
//! one they change the pinned maps (if loaded) and the state file directly, holding the
//! state lock so that no daemon starts meanwhile.

use std::{
    fmt::Write as _,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use portsentry_common::{Counter, ScanType, maps::BanOrigin};
use serde::Serialize;

use crate::{
    actions::{self, Target},
    bans::Ban,
    book::Book,
    cli::{BanArgs, FileArgs, StatusArgs, UnbanArgs, parse_target},
    config::{self, Config},
    control::{self, Request},
    daemon,
    dataplane::{self, Dataplane},
    metrics::Metrics,
    records::Logger,
    state,
};

/// The configuration for an operator command (the file named, else the default one,
/// else the built-in defaults).
pub fn config(file: &FileArgs) -> Result<Config> {
    Ok(match &file.config {
        Some(p) => config::load(p)?,
        None if Path::new(config::DEFAULT_CONFIG).exists() => {
            config::load(Path::new(config::DEFAULT_CONFIG))?
        }
        None => Config::default(),
    })
}

/// `portsentry ban`.
pub fn ban(args: &BanArgs) -> Result<String> {
    let c = config(&args.file)?;
    let net = parse_target(&args.target).map_err(anyhow::Error::msg)?;
    let req = Request::Ban {
        net,
        seconds: args.time.map(|d| d.as_secs()),
    };
    if let Some(r) = control::send(&c.state_dir, &req)? {
        return if r.ok {
            Ok(r.message)
        } else {
            bail!(r.message)
        };
    }
    let (mut book, _lock) = direct_book(&c)?;
    let ban = book.new_ban(&c, net, BanOrigin::Manual, args.time);
    let expires = ban.expires;
    book.put(ban)?;
    book.persist()?;
    Ok(format!(
        "banned {net}{}{}",
        daemon::describe_expiry(expires),
        if book.dp.is_some() {
            ""
        } else {
            " (recorded; portsentry is not loaded, the next start puts it in force)"
        }
    ))
}

/// `portsentry unban`.
pub fn unban(args: &UnbanArgs) -> Result<String> {
    let c = config(&args.file)?;
    let req = match (&args.target, args.all) {
        (_, true) => Request::UnbanAll,
        (Some(t), false) => Request::Unban {
            net: parse_target(t).map_err(anyhow::Error::msg)?,
        },
        (None, false) => bail!("name an address or network to unban, or --all"),
    };
    if let Some(r) = control::send(&c.state_dir, &req)? {
        return if r.ok {
            Ok(r.message)
        } else {
            bail!(r.message)
        };
    }
    let (mut book, _lock) = direct_book(&c)?;
    let nets: Vec<IpNet> = match req {
        Request::Unban { net } => vec![net],
        _ => book.store.iter().map(|b| b.net).collect(),
    };
    let mut lifted = Vec::new();
    for net in &nets {
        if let Some(b) = book.lift(net)? {
            lifted.push(b);
        }
    }
    book.persist()?;
    if lifted.is_empty() && !args.all {
        bail!("{} is not banned", nets[0]);
    }
    run_undo(&c, &lifted)?;
    Ok(if args.all {
        format!("unbanned {} networks", lifted.len())
    } else {
        format!("unbanned {}", nets[0])
    })
}

/// The ban book without a daemon: the state lock, the pinned maps when loaded.
fn direct_book(c: &Config) -> Result<(Book, fs::File)> {
    let Some(lock) = daemon::lock_state_dir(&c.state_dir)? else {
        bail!(
            "the daemon holds {} but its control socket does not answer; try again, or \
             stop it first",
            c.state_dir.join("portsentry.pid").display()
        );
    };
    let dp = if dataplane::is_pinned(&c.pin_dir) {
        Some(Dataplane::open_pinned(&c.pin_dir)?)
    } else {
        None
    };
    let store = state::load(&c.state_dir)?;
    Ok((Book::new(dp, store, c), lock))
}

/// Runs the UNKILL_* steps of lifted scan bans (no daemon to do it).
fn run_undo(c: &Config, lifted: &[Ban]) -> Result<()> {
    let undo: Vec<&Ban> = lifted
        .iter()
        .filter(|b| b.origin == BanOrigin::Scan && b.net.prefix_len() == b.net.max_prefix_len())
        .collect();
    if undo.is_empty() {
        return Ok(());
    }
    let log = Logger::new(c.syslog, true);
    let metrics = Metrics::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for b in undo {
            let t = Target {
                ip: b.net.addr(),
                port: b.port,
                mode: daemon::mode_token(&b.mode),
            };
            for step in actions::undo_plan(c, &t) {
                daemon::run_step(&log, &metrics, c, b.net.addr(), &step, true).await;
            }
        }
    });
    Ok(())
}

/// `portsentry unload`.
pub fn unload(file: &FileArgs) -> Result<String> {
    let c = config(file)?;
    if let Some(pid) = daemon::running_pid(&c.state_dir) {
        bail!("the daemon is running (pid {pid}); stop it first (it keeps the program attached)");
    }
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(&c.pin_dir) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        // Links first: the program leaves the interfaces before its maps go.
        paths.sort_by_key(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
        });
        for p in paths {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        fs::remove_dir(&c.pin_dir).with_context(|| format!("removing {}", c.pin_dir.display()))?;
    }
    let _ = fs::remove_file(control::socket_path(&c.state_dir));
    if removed.is_empty() {
        return Ok(format!(
            "nothing to unload: {} holds no pins",
            c.pin_dir.display()
        ));
    }
    let links = removed.iter().filter(|n| n.starts_with("link-")).count();
    Ok(format!(
        "unloaded: detached from {links} interface{}, removed {} pinned maps from {} (bans \
         stay on record in {})",
        if links == 1 { "" } else { "s" },
        removed.len() - links,
        c.pin_dir.display(),
        state::path(&c.state_dir).display()
    ))
}

#[derive(Serialize)]
struct Status {
    daemon: DaemonStatus,
    pin_dir: PathBuf,
    loaded: bool,
    interfaces: Vec<String>,
    tcp_mode: String,
    udp_mode: String,
    counters: std::collections::BTreeMap<&'static str, u64>,
    packets: u64,
    dropped: u64,
    sources_tracked: usize,
    sources: Vec<SourceStatus>,
    bans: Vec<BanStatus>,
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
struct BanStatus {
    net: IpNet,
    /// `scan` or `manual`.
    origin: &'static str,
    /// The mode that banned it (`atcp`, ...) or `manual`.
    reason: String,
    name: String,
    port: u16,
    scan_type: Option<&'static str>,
    since: String,
    /// RFC 3339, or null for a permanent ban.
    expires: Option<String>,
    /// Whether the kernel holds it (false: on record only; the next start applies it).
    in_kernel: bool,
    count: u32,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `portsentry status`.
pub fn status(args: &StatusArgs) -> Result<String> {
    let c = config(&args.file)?;
    let pid = daemon::running_pid(&c.state_dir);
    let loaded = dataplane::is_pinned(&c.pin_dir);
    let dp = if loaded {
        Some(Dataplane::open_pinned(&c.pin_dir)?)
    } else {
        None
    };
    let mut interfaces: Vec<String> = fs::read_dir(&c.pin_dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("link-")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    interfaces.sort();
    let saved = state::load(&c.state_dir)?;
    let kernel_bans = match &dp {
        Some(dp) => dp.bans()?,
        None => Vec::new(),
    };
    let tcp_mode = c.tcp_mode.tcp_token().unwrap_or("off");
    let udp_mode = c.udp_mode.udp_token().unwrap_or("off");
    let mut bans: Vec<BanStatus> = Vec::new();
    let kernel_nets: std::collections::HashSet<IpNet> =
        kernel_bans.iter().map(|(n, _)| *n).collect();
    let mut describe = |b: &Ban, in_kernel: bool| {
        bans.push(BanStatus {
            net: b.net,
            origin: state::origin_name(b.origin),
            reason: b.mode.clone(),
            name: b.name.clone(),
            port: b.port,
            scan_type: b.scan_type.map(ScanType::name),
            since: rfc3339(b.since),
            expires: b.expires.map(rfc3339),
            in_kernel,
            count: b.count,
        })
    };
    for b in saved.iter() {
        describe(b, !loaded || kernel_nets.contains(&b.net));
    }
    for (net, e) in &kernel_bans {
        if saved.get(net).is_none() {
            describe(&state::ban_from_kernel(*net, e, tcp_mode, udp_mode), true);
        }
    }
    bans.sort_by_key(|b| b.net);
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
        tcp_mode: tcp_mode.to_owned(),
        udp_mode: udp_mode.to_owned(),
        counters: Counter::ALL
            .iter()
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
        bans,
    };
    if args.json {
        return Ok(serde_json::to_string_pretty(&st)? + "\n");
    }
    Ok(render(&st))
}

fn render(st: &Status) -> String {
    let mut s = String::new();
    let _ = match st.daemon.pid {
        Some(pid) => writeln!(s, "daemon:     running (pid {pid})"),
        None => writeln!(s, "daemon:     not running"),
    };
    let _ = writeln!(
        s,
        "program:    {} ({})",
        if st.loaded {
            "loaded, maps pinned"
        } else {
            "not loaded"
        },
        st.pin_dir.display()
    );
    let _ = writeln!(
        s,
        "interfaces: {}",
        if st.interfaces.is_empty() {
            "none".to_owned()
        } else {
            st.interfaces.join(", ")
        }
    );
    let _ = writeln!(s, "modes:      TCP {}, UDP {}", st.tcp_mode, st.udp_mode);
    let _ = writeln!(s, "packets:    {} seen, {} dropped", st.packets, st.dropped);
    for (name, v) in &st.counters {
        if *v > 0 {
            let _ = writeln!(s, "  {name:<18} {v}");
        }
    }
    let _ = writeln!(s, "sources:    {} tracked", st.sources_tracked);
    for src in &st.sources {
        let _ = writeln!(
            s,
            "  {:<40} {} hits, {} ports, last {} {}, last seen {}",
            src.address,
            src.hits,
            src.distinct_ports,
            src.last_scan_type.unwrap_or("?"),
            src.last_port,
            src.last_seen
        );
    }
    let _ = writeln!(s, "bans:       {}", st.bans.len());
    for b in &st.bans {
        let what = match (b.origin, b.scan_type) {
            ("scan", Some(t)) => format!("{} {t} to port {}", b.reason, b.port),
            _ => "manual".to_owned(),
        };
        let _ = writeln!(
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
        );
    }
    s
}
