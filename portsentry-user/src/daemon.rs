//! `portsentry run`: load and attach the XDP program, read probe events, decide, and
//! respond in the configured order, off the packet path.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use ipnet::IpNet;
use portsentry_common::maps::{BanOrigin, ScanEvent, Settings};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::Semaphore,
};

use crate::{
    actions::{self, Step, Target},
    bans::{Ban, BanStore, ban_duration},
    cli::RunArgs,
    config::BlockMode,
    dataplane::{Dataplane, MapSizes},
    detector::{ProbeEvent, Rules, Verdict},
    localaddrs, records,
    records::Logger,
    settings::{self, Effective},
};

/// Response jobs (one per host acted on) that may run at once.
const MAX_PARALLEL_JOBS: usize = 16;
/// How long a reverse lookup may take before the address is logged instead.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often expired bans are removed and this host's addresses re-read.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// State shared by the event loop and the response jobs.
struct Shared {
    dp: Mutex<Dataplane>,
    bans: Mutex<BanStore>,
    log: Logger,
    names: Mutex<HashMap<IpAddr, String>>,
    /// Modes whose blocked file was written, so that it is emptied when its last ban goes.
    blocked_modes: Mutex<BTreeSet<String>>,
}

/// The kernel's runtime settings for a configuration.
pub fn kernel_settings(eff: &Effective) -> Settings {
    let rate = eff.config.events_per_sec.clamp(1, 10_000_000);
    Settings {
        event_trigger: eff.config.scan_trigger.max(1),
        events_per_sec: rate,
        event_burst: rate,
        flags: 0,
    }
}

/// The map sizes for a configuration.
pub fn map_sizes(eff: &Effective) -> MapSizes {
    MapSizes {
        bans: eff.config.max_bans,
        sources: eff.config.max_tracked_sources,
        ..MapSizes::default()
    }
}

/// Writes ports, settings and the ignore list into the kernel.
fn apply(dp: &mut Dataplane, eff: &Effective) -> Result<()> {
    dp.write_ports(&eff.policy.tcp, &eff.policy.udp)?;
    dp.write_settings(kernel_settings(eff))?;
    dp.replace_ignore(&eff.ignored_nets())?;
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// `lock` is the state directory's lock ([`lock_state_dir`]), taken by the caller
/// before it detaches into the background.
pub async fn run(mut eff: Arc<Effective>, args: RunArgs, lock: fs::File) -> Result<()> {
    let _lock = lock;
    let log = Logger::new(eff.config.syslog, !args.quiet && !args.daemonize);

    let mut dp = Dataplane::load(&map_sizes(&eff), None)?;
    apply(&mut dp, &eff)?;
    for iface in &eff.interfaces {
        let mode = dp.attach(iface, eff.xdp_mode)?;
        log.notice(&format!("portsentry: watching {iface} ({mode:?} XDP)"));
    }
    for w in &eff.warnings {
        log.warn(&format!("portsentry: warning: {w}"));
    }
    let ring = dp.take_events()?;
    let shared = Arc::new(Shared {
        dp: Mutex::new(dp),
        bans: Mutex::new(BanStore::new()),
        log,
        names: Mutex::new(HashMap::new()),
        blocked_modes: Mutex::new(BTreeSet::new()),
    });
    shared.log.notice(&format!(
        "portsentry: active: TCP {} ports, UDP {} ports, {} ignored networks",
        eff.policy.tcp.len(),
        eff.policy.udp.len(),
        eff.ignored_nets().len()
    ));

    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for as long
    // as the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .context("watching the event ring buffer")?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let jobs = Arc::new(Semaphore::new(MAX_PARALLEL_JOBS));
    let mut handled: HashSet<IpAddr> = HashSet::new();
    let mut batch: Vec<ScanEvent> = Vec::new();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut batch);
                guard.clear_ready();
                for raw in batch.drain(..) {
                    on_event(&shared, &eff, &jobs, &mut handled, &raw);
                }
            }
            _ = hup.recv() => {
                match reload(&args, &eff) {
                    Ok(new) => {
                        let mut dp = shared.dp.lock().expect("dataplane lock");
                        match apply(&mut dp, &new) {
                            Ok(()) => {
                                eff = Arc::new(new);
                                shared.log.notice("portsentry: configuration and ignore list reloaded");
                            }
                            Err(e) => shared.log.warn(&format!(
                                "portsentry: applying the reloaded configuration failed, the old one \
                                 stays in force: {e:#}")),
                        }
                    }
                    Err(e) => shared.log.warn(&format!(
                        "portsentry: reload rejected, the old configuration stays in force: {e:#}")),
                }
            }
            _ = tick.tick() => {
                housekeeping(&shared, &mut eff, &mut handled);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    shared.log.notice("portsentry: stopping");
    // Let running response jobs finish (each is bounded by KILL_TIMEOUT per command).
    let _ = tokio::time::timeout(
        eff.config.kill_timeout * 3,
        jobs.acquire_many(MAX_PARALLEL_JOBS as u32),
    )
    .await;
    shared.dp.lock().expect("dataplane lock").detach_all()?;
    Ok(())
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<ScanEvent>) {
    while let Some(item) = ring.next() {
        if let Ok(ev) = bytemuck::try_pod_read_unaligned::<ScanEvent>(&item) {
            out.push(ev);
        }
    }
}

/// Re-reads the configuration and the ignore file with the same command line.
fn reload(args: &RunArgs, old: &Effective) -> Result<Effective> {
    let new = settings::load(&args.config)?;
    if new.interfaces != old.interfaces || new.xdp_mode != old.xdp_mode {
        bail!(
            "the interfaces or the XDP mode changed; they take effect on restart only \
             (restart portsentry to apply them)"
        );
    }
    Ok(new)
}

fn on_event(
    shared: &Arc<Shared>,
    eff: &Arc<Effective>,
    jobs: &Arc<Semaphore>,
    handled: &mut HashSet<IpAddr>,
    raw: &ScanEvent,
) {
    let Some(ev) = ProbeEvent::from_raw(raw) else {
        return;
    };
    let Some(mode) = eff.mode_token(ev.proto()) else {
        return;
    };
    let rules = Rules {
        scan_trigger: eff.config.scan_trigger,
        window: eff.config.scan_window,
    };
    match rules.judge(&ev, eff.is_ignored(ev.ip), handled.contains(&ev.ip)) {
        Verdict::Ignored | Verdict::BelowTrigger => {}
        Verdict::OutsideWindow => {
            if let Err(e) = shared
                .dp
                .lock()
                .expect("dataplane lock")
                .forget_source(ev.ip)
            {
                shared.log.warn(&format!("portsentry: {e:#}"));
            }
        }
        Verdict::AlreadyHandled => {
            let name = cached_name(shared, ev.ip);
            shared.log.notice(&records::attack_alert(
                ev.proto(),
                ev.tcp_flags,
                &name,
                ev.ip,
                ev.port,
            ));
            shared.log.notice(&records::already_blocked(&name, ev.ip));
        }
        Verdict::Act => {
            handled.insert(ev.ip);
            let block = eff.block_mode(ev.proto());
            let shared = shared.clone();
            let eff = eff.clone();
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let Ok(_permit) = jobs.acquire_owned().await else {
                    return;
                };
                respond(&shared, &eff, ev, mode, block).await;
            });
        }
    }
}

fn cached_name(shared: &Shared, ip: IpAddr) -> String {
    shared
        .names
        .lock()
        .expect("names lock")
        .get(&ip)
        .cloned()
        .unwrap_or_else(|| ip.to_string())
}

/// The name to log a host under: its sanitized reverse-DNS name when RESOLVE_HOST is
/// on and the lookup answers in time, else the address.
async fn resolve(shared: &Shared, eff: &Effective, ip: IpAddr) -> String {
    if !eff.config.resolve_host {
        return ip.to_string();
    }
    if let Some(n) = shared.names.lock().expect("names lock").get(&ip) {
        return n.clone();
    }
    let lookup = tokio::task::spawn_blocking(move || dns_lookup::lookup_addr(&ip));
    let name = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(Ok(n))) => records::sanitize_hostname(&n).unwrap_or_else(|| ip.to_string()),
        _ => ip.to_string(),
    };
    let mut names = shared.names.lock().expect("names lock");
    if names.len() > 10_000 {
        names.clear();
    }
    names.insert(ip, name.clone());
    name
}

/// Acts on one host, in the configured order.
async fn respond(
    shared: &Shared,
    eff: &Effective,
    ev: ProbeEvent,
    mode: &'static str,
    block: BlockMode,
) {
    let c = &eff.config;
    let target = Target {
        ip: ev.ip,
        port: ev.port,
        mode,
    };
    let steps = actions::plan(c, block, &target);
    // The XDP ban does not wait for the name lookup when it comes first.
    let mut name = ev.ip.to_string();
    let mut banned_early = false;
    if steps.first() == Some(&Step::XdpBan) {
        banned_early = true;
        if let Err(e) = xdp_ban(shared, eff, &ev, mode, &name) {
            shared.log.warn(&format!(
                "attackalert: ERROR: Could not block host {}: {e:#}",
                ev.ip
            ));
        }
    }
    name = resolve(shared, eff, ev.ip).await;
    if banned_early && name != ev.ip.to_string() {
        shared
            .bans
            .lock()
            .expect("bans lock")
            .set_name(&IpNet::from(ev.ip), &name);
    }
    let log = &shared.log;
    log.notice(&records::attack_alert(
        ev.proto(),
        ev.tcp_flags,
        &name,
        ev.ip,
        ev.port,
    ));
    if block == BlockMode::ReportOnly {
        log.notice(&records::ignoring_response(ev.proto()));
    }
    for step in &steps {
        match step {
            Step::XdpBan => {
                if !banned_early && let Err(e) = xdp_ban(shared, eff, &ev, mode, &name) {
                    log.warn(&format!(
                        "attackalert: ERROR: Could not block host {}: {e:#}",
                        ev.ip
                    ));
                    continue;
                }
                log.notice(&format!(
                    "attackalert: Host {} has been blocked via XDP drop",
                    ev.ip
                ));
                write_blocked_files(shared, &c.blocked_file);
            }
            Step::HostsDeny(line) => match actions::append_line(&c.hosts_deny_file, line) {
                Ok(()) => log.notice(&records::blocked_via_wrappers(ev.ip, line)),
                Err(e) => log.warn(&format!(
                    "attackalert: ERROR: could not write {}: {e}",
                    c.hosts_deny_file.display()
                )),
            },
            Step::Route(cmd) => {
                run_logged(shared, cmd, c.kill_timeout).await;
                log.notice(&records::blocked_via_route(ev.ip, cmd));
            }
            Step::RunCmd(cmd) => {
                run_logged(shared, cmd, c.kill_timeout).await;
                log.notice(&records::external_command(ev.ip, cmd));
            }
            other => log.warn(&format!("portsentry: unexpected step {other:?}")),
        }
    }
    let line = records::history_line(SystemTime::now(), &name, ev.ip, ev.port, ev.proto());
    if let Err(e) = records::append_history(&c.history_file, &line) {
        log.warn(&format!(
            "portsentry: could not write the history file {}: {e}",
            c.history_file.display()
        ));
    }
}

async fn run_logged(shared: &Shared, cmd: &str, timeout: Duration) {
    let (outcome, output) = actions::run_shell(cmd, timeout).await;
    if !outcome.ok() {
        shared.log.warn(&format!(
            "portsentry: command {outcome:?}: \"{cmd}\"{}",
            if output.trim().is_empty() {
                String::new()
            } else {
                format!(" output: {}", output.trim())
            }
        ));
    }
}

/// Puts the XDP ban in force and records it.
fn xdp_ban(
    shared: &Shared,
    eff: &Effective,
    ev: &ProbeEvent,
    mode: &str,
    name: &str,
) -> Result<()> {
    let c = &eff.config;
    let net = IpNet::from(ev.ip);
    let now = SystemTime::now();
    let nth = shared.bans.lock().expect("bans lock").times_banned(&net) + 1;
    let ban = Ban {
        net,
        origin: BanOrigin::Scan,
        since: now,
        expires: ban_duration(c.ban_time, c.repeat_ban_factor, c.ban_time_max, nth)
            .map(|d| now + d),
        port: ev.port,
        proto: ev.proto(),
        scan_type: Some(ev.scan_type),
        mode: mode.to_owned(),
        name: name.to_owned(),
        count: nth,
    };
    {
        let mut dp = shared.dp.lock().expect("dataplane lock");
        dp.insert_ban(&net, &ban.kernel_entry())?;
        dp.forget_source(ev.ip)?;
    }
    shared.bans.lock().expect("bans lock").insert(ban);
    Ok(())
}

/// Rewrites `BLOCKED_FILE.<mode>` for every mode that has (or had) bans.
fn write_blocked_files(shared: &Shared, base: &Path) {
    let mut by_mode: HashMap<String, Vec<String>> = HashMap::new();
    for b in shared.bans.lock().expect("bans lock").iter() {
        by_mode
            .entry(b.mode.clone())
            .or_default()
            .push(records::history_line(
                b.since,
                &b.name,
                b.net.addr(),
                b.port,
                b.proto,
            ));
    }
    let mut modes = shared.blocked_modes.lock().expect("modes lock");
    modes.extend(by_mode.keys().cloned());
    for mode in modes.iter() {
        let path = PathBuf::from(format!("{}.{mode}", base.display()));
        let lines = by_mode.get(mode).cloned().unwrap_or_default();
        if let Err(e) = records::write_blocked(&path, &lines) {
            shared.log.warn(&format!(
                "portsentry: could not write the blocked file {}: {e}",
                path.display()
            ));
        }
    }
}

/// Expires bans and keeps the always-ignored addresses current.
fn housekeeping(shared: &Shared, eff: &mut Arc<Effective>, handled: &mut HashSet<IpAddr>) {
    let expired = shared
        .bans
        .lock()
        .expect("bans lock")
        .expired(SystemTime::now());
    if !expired.is_empty() {
        for net in &expired {
            let removed = shared.dp.lock().expect("dataplane lock").remove_ban(net);
            if let Err(e) = removed {
                shared
                    .log
                    .warn(&format!("portsentry: removing the ban of {net}: {e:#}"));
                continue;
            }
            shared.bans.lock().expect("bans lock").remove(net);
            handled.retain(|ip| !net.contains(ip));
            shared
                .log
                .notice(&format!("portsentry: ban of {net} expired"));
        }
        write_blocked_files(shared, &eff.config.blocked_file);
    }
    match localaddrs::always_ignored() {
        Ok(now) if now != eff.always_ignored => {
            let mut new = (**eff).clone();
            new.always_ignored = now;
            let r = shared
                .dp
                .lock()
                .expect("dataplane lock")
                .replace_ignore(&new.ignored_nets());
            match r {
                Ok(()) => *eff = Arc::new(new),
                Err(e) => shared
                    .log
                    .warn(&format!("portsentry: updating the ignore list: {e:#}")),
            }
        }
        Ok(_) => {}
        Err(e) => shared.log.warn(&format!("portsentry: {e:#}")),
    }
}

/// One daemon per state directory: an exclusive lock on `portsentry.pid`, which holds
/// our pid. Returns the open file (the lock lives as long as it does, across fork).
/// `Ok(None)`: another daemon holds it.
pub fn lock_state_dir(dir: &Path) -> Result<Option<fs::File>> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating the state directory {}", dir.display()))?;
    let path = dir.join("portsentry.pid");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a valid descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(file))
}

/// Writes our pid into the lock file (after any fork).
pub fn write_pid(file: &fs::File) -> Result<()> {
    use std::io::Write as _;
    file.set_len(0)?;
    (&*file).write_all(format!("{}\n", std::process::id()).as_bytes())?;
    Ok(())
}
