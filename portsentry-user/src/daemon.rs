//! `portsentry run`: load (or adopt) and attach the XDP program, read probe events,
//! decide, and respond in the configured order, off the packet path.
//!
//! The program, its maps and its links are pinned under PIN_DIR: a daemon that dies
//! (even by `kill -9`) leaves protection in force, and the next one adopts all of it,
//! replacing the program in the links atomically. Bans are also kept in
//! `STATE_DIR/bans.json`, so a reboot restores them.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
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
    bans::Ban,
    book::Book,
    cli::RunArgs,
    config::{
        BlockMode, Config,
        effective::{self, Effective},
        localaddrs,
    },
    control::{self, Request, Response},
    dataplane::{Dataplane, MapSizes},
    detector::{ProbeEvent, Rules, Verdict},
    metrics::{self, Metrics, Snapshot},
    records::{self, Logger},
    state,
};

/// Response jobs (one per host acted on) that may run at once.
const MAX_PARALLEL_JOBS: usize = 16;
/// How long a reverse lookup may take before the address is logged instead.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often expired bans are removed and this host's addresses re-read.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// State shared by the event loop, the response jobs and the control socket.
pub struct Shared {
    book: Mutex<Book>,
    /// Hosts acted on (banned, reported or their command run) and not since released.
    handled: Mutex<HashSet<IpAddr>>,
    eff: Mutex<Arc<Effective>>,
    log: Logger,
    metrics: Arc<Metrics>,
    names: Mutex<HashMap<IpAddr, String>>,
    /// Tracked sources, counted by housekeeping (iterating the map on every scrape
    /// would cost a syscall per entry).
    sources_tracked: Mutex<(u64, Option<std::time::Instant>)>,
    /// MAX_BANS_PER_SEC: new scan bans allowed this second, and scanners turned away.
    ban_budget: Mutex<BanBudget>,
    /// Interfaces the program could not be attached to again (logged once).
    unattached: Mutex<HashSet<String>>,
    /// Scanners MAX_BANS_PER_SEC turned away, banned in the next seconds.
    waiting: Mutex<Waiting>,
    jobs: Arc<Semaphore>,
}

/// Scanners waiting for the ban budget: at most [`MAX_WAITING`], one entry per address,
/// the most persistent (most hits) first. A spoofed flood's one-probe sources cannot
/// push a real scanner out.
#[derive(Default)]
struct Waiting {
    by_ip: HashMap<IpAddr, (ProbeEvent, &'static str, BlockMode)>,
}

const MAX_WAITING: usize = 4096;

impl Waiting {
    fn offer(&mut self, ev: ProbeEvent, mode: &'static str, block: BlockMode) {
        if let Some(e) = self.by_ip.get_mut(&ev.ip) {
            if ev.hits > e.0.hits {
                *e = (ev, mode, block);
            }
            return;
        }
        if self.by_ip.len() >= MAX_WAITING {
            // Every entry has at least one hit: a one-hit source cannot win a place.
            if ev.hits <= 1 {
                return;
            }
            let (ip, hits) = self
                .by_ip
                .iter()
                .map(|(ip, e)| (*ip, e.0.hits))
                .min_by_key(|(_, h)| *h)
                .expect("full");
            if ev.hits <= hits {
                return;
            }
            self.by_ip.remove(&ip);
        }
        self.by_ip.insert(ev.ip, (ev, mode, block));
    }

    /// Removes and returns the `n` most persistent.
    fn take_best(&mut self, n: usize) -> Vec<(ProbeEvent, &'static str, BlockMode)> {
        let mut all: Vec<_> = self.by_ip.drain().map(|(_, v)| v).collect();
        all.sort_by_key(|(ev, _, _)| std::cmp::Reverse(ev.hits));
        let rest = all.split_off(n.min(all.len()));
        for r in rest {
            self.by_ip.insert(r.0.ip, r);
        }
        all
    }
}

/// A one-second window of MAX_BANS_PER_SEC.
#[derive(Default)]
struct BanBudget {
    window: u64,
    used: u32,
    refused: u32,
}

impl BanBudget {
    /// True when this second's bans are all taken (without taking one).
    fn spent(&self, limit: u32, now_secs: u64) -> bool {
        limit != 0 && now_secs == self.window && self.used >= limit
    }

    /// True when one more ban fits in this second (`limit` 0: unlimited).
    fn take(&mut self, limit: u32, now_secs: u64) -> bool {
        if now_secs != self.window {
            self.window = now_secs;
            self.used = 0;
            self.refused = 0;
        }
        if limit != 0 && self.used >= limit {
            self.refused += 1;
            return false;
        }
        self.used += 1;
        true
    }
}

impl Shared {
    fn eff(&self) -> Arc<Effective> {
        self.eff.lock().expect("eff lock").clone()
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().expect("book lock")
    }
}

/// The kernel's runtime settings for a configuration; `secret` keys the challenge
/// cookies.
pub fn kernel_settings(eff: &Effective, secret: u64) -> Settings {
    let rate = eff.config.events_per_sec.clamp(1, 10_000_000);
    Settings {
        event_trigger: eff.config.scan_trigger.max(1),
        events_per_sec: rate,
        event_burst: rate,
        flags: if eff.config.verify_sources {
            portsentry_common::maps::SETTING_VERIFY
        } else {
            0
        },
        cookie_secret: secret,
    }
}

/// A random 64-bit secret from the kernel.
fn random_secret() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a valid 8-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n != 8 {
        // Never fails for 8 bytes once the pool is ready; fall back to the clock.
        return crate::clock::monotonic_ns() ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(b)
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
    // Keep the cookie secret across reloads (and adoptions): answers in flight stay valid.
    let secret = match dp.settings().cookie_secret {
        0 => random_secret(),
        s => s,
    };
    dp.write_settings(kernel_settings(eff, secret))?;
    dp.replace_ignore(&eff.ignored_nets())?;
    Ok(())
}

/// Removes link pins for interfaces no longer configured (detaching them).
fn drop_stale_links(pin_dir: &Path, interfaces: &[String], log: &Logger) {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(iface) = name.strip_prefix("link-")
            && !interfaces.iter().any(|i| i == iface)
        {
            match fs::remove_file(e.path()) {
                Ok(()) => log.notice(&format!(
                    "portsentry: detached from {iface} (no longer in the configuration)"
                )),
                Err(err) => log.warn(&format!(
                    "portsentry: removing {}: {err}",
                    e.path().display()
                )),
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT. Stopping leaves the program attached and
/// the bans in force (`portsentry unload` removes them).
///
/// `lock` is the state directory's lock ([`lock_state_dir`]), taken by the caller
/// before it detaches into the background.
pub async fn run(eff: Arc<Effective>, args: RunArgs, lock: fs::File) -> Result<()> {
    let _lock = lock;
    let log = Logger::new(
        eff.config.syslog && std::env::var_os("JOURNAL_STREAM").is_none(),
        !args.quiet && !args.daemonize,
    );
    let c = &eff.config;
    let mut dp = Dataplane::load(&map_sizes(&eff), Some(c.pin_dir.clone()))?;
    apply(&mut dp, &eff)?;
    drop_stale_links(&c.pin_dir, &eff.interfaces, &log);
    for iface in &eff.interfaces {
        let a = dp.attach(iface, eff.xdp_mode)?;
        match a.mode {
            Some(mode) => log.notice(&format!("portsentry: watching {iface} ({mode:?} XDP)")),
            None => log.notice(&format!(
                "portsentry: watching {iface} (adopted the pinned link; program replaced)"
            )),
        }
    }
    for w in &eff.warnings {
        log.warn(&format!("portsentry: warning: {w}"));
    }

    // Bans: the state file's, reconciled with what the pinned maps kept.
    let saved = state::load(&c.state_dir)?;
    let kernel_bans = dp.bans()?;
    let tcp_mode = c.tcp_mode.tcp_token().unwrap_or("atcp");
    let udp_mode = c.udp_mode.udp_token().unwrap_or("audp");
    let r = state::reconcile(saved, &kernel_bans, SystemTime::now(), tcp_mode, udp_mode);
    for net in &r.to_insert {
        let ban = r.store.get(net).expect("reconciled ban");
        dp.insert_ban(net, &ban.kernel_entry())?;
    }
    for net in &r.adopted {
        log.notice(&format!(
            "portsentry: adopted the ban of {net} from the kernel (made before a restart)"
        ));
    }
    let handled: HashSet<IpAddr> = r
        .store
        .iter()
        .filter(|b| b.net.prefix_len() == b.net.max_prefix_len())
        .map(|b| b.net.addr())
        .collect();
    let ring = dp.take_events()?;
    let restored = r.store.len();
    let mut book = Book::new(Some(dp), r.store, c);
    let expired_at_start = r.expired;
    for b in &expired_at_start {
        book.lift(&b.net)?;
    }
    book.persist()?;

    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared {
        book: Mutex::new(book),
        handled: Mutex::new(handled),
        eff: Mutex::new(eff.clone()),
        log,
        metrics: metrics.clone(),
        names: Mutex::new(HashMap::new()),
        sources_tracked: Mutex::new((0, None)),
        ban_budget: Mutex::new(BanBudget::default()),
        unattached: Mutex::new(HashSet::new()),
        waiting: Mutex::new(Waiting::default()),
        jobs: Arc::new(Semaphore::new(MAX_PARALLEL_JOBS)),
    });
    for b in expired_at_start {
        shared.log.notice(&format!(
            "portsentry: ban of {} expired while portsentry was stopped",
            b.net
        ));
        spawn_undo(&shared, b, "expired");
    }
    recover_detected(&shared);
    if let Some(addr) = c.metrics_address {
        let s = shared.clone();
        let (bound, _thread) = metrics::serve(addr, metrics, move || snapshot(&s))?;
        shared
            .log
            .notice(&format!("portsentry: metrics on http://{bound}/metrics"));
    }
    let control = control::listen(&c.state_dir)?;
    shared.log.notice(&format!(
        "portsentry: active: TCP {} ports, UDP {} ports, {} ignored networks, {restored} bans \
         in force",
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
    let jobs = shared.jobs.clone();
    let mut batch: Vec<ScanEvent> = Vec::new();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut batch);
                guard.clear_ready();
                for raw in batch.drain(..) {
                    shared.metrics.event_read();
                    on_event(&shared, &raw);
                }
            }
            conn = control.accept() => {
                if let Ok((stream, _)) = conn {
                    let s = shared.clone();
                    tokio::spawn(async move { control::serve_one(stream, |req| handle_request(&s, req)).await });
                }
            }
            _ = hup.recv() => reload(&shared, &args),
            _ = tick.tick() => housekeeping(&shared),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    shared
        .log
        .notice("portsentry: stopping; the program stays attached and the bans in force");
    // Let running response jobs finish (each is bounded by KILL_TIMEOUT per command).
    let _ = tokio::time::timeout(
        shared.eff().config.kill_timeout * 3,
        jobs.acquire_many(MAX_PARALLEL_JOBS as u32),
    )
    .await;
    let _ = fs::remove_file(control::socket_path(&shared.eff().config.state_dir));
    shared.book().flush()?;
    Ok(())
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<ScanEvent>) {
    while let Some(item) = ring.next() {
        if let Ok(ev) = bytemuck::try_pod_read_unaligned::<ScanEvent>(&item) {
            out.push(ev);
        }
    }
}

/// SIGHUP: re-reads the configuration and the ignore file with the same command line;
/// on any error the old settings stay in force.
fn reload(shared: &Shared, args: &RunArgs) {
    let old = shared.eff();
    let new = match effective::load(&args.config) {
        Ok(new) => new,
        Err(e) => {
            shared.log.warn(&format!(
                "portsentry: reload rejected, the old configuration stays in force: {e:#}"
            ));
            return;
        }
    };
    if new.interfaces != old.interfaces
        || new.xdp_mode != old.xdp_mode
        || new.config.pin_dir != old.config.pin_dir
        || new.config.state_dir != old.config.state_dir
    {
        shared.log.warn(
            "portsentry: reload rejected, the old configuration stays in force: INTERFACES, \
             XDP_MODE, PIN_DIR and STATE_DIR take effect on restart only",
        );
        return;
    }
    let mut book = shared.book();
    let Some(dp) = book.dp.as_mut() else {
        return;
    };
    match apply(dp, &new) {
        Ok(()) => {
            *shared.eff.lock().expect("eff lock") = Arc::new(new);
            shared
                .log
                .notice("portsentry: configuration and ignore list reloaded");
        }
        Err(e) => {
            // Put the old settings back.
            let _ = apply(dp, &old);
            shared.log.warn(&format!(
                "portsentry: applying the reloaded configuration failed, the old one stays \
                 in force: {e:#}"
            ));
        }
    }
}

fn on_event(shared: &Arc<Shared>, raw: &ScanEvent) {
    let Some(ev) = ProbeEvent::from_raw(raw) else {
        return;
    };
    let eff = shared.eff();
    let Some(mode) = eff.mode_token(ev.proto()) else {
        return;
    };
    let rules = Rules {
        scan_trigger: eff.config.scan_trigger,
        window: eff.config.scan_window,
    };
    if eff.config.verify_sources && !ev.verified {
        // VERIFY_SOURCES: a probe whose source has not answered the challenge may be
        // forged; it is counted, never acted on (and not logged: floods would flood
        // the log).
        shared.metrics.unverified();
        return;
    }
    let handled = is_handled(shared, ev.ip);
    match rules.judge(&ev, eff.is_ignored(ev.ip), handled) {
        Verdict::Ignored | Verdict::BelowTrigger => {}
        Verdict::OutsideWindow => {
            if let Some(dp) = shared.book().dp.as_mut()
                && let Err(e) = dp.forget_source(ev.ip)
            {
                shared.log.warn(&format!("portsentry: {e:#}"));
            }
        }
        Verdict::AlreadyHandled => {
            // Probes that raced the host's own response job are not logged as "already
            // blocked" before the block itself is.
            if !shared.book().covers(ev.ip) {
                return;
            }
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
        Verdict::Act => act(shared, &eff, ev, mode, eff.block_mode(ev.proto())),
    }
}

/// Starts the response to a host, within MAX_BANS_PER_SEC; a scanner over the budget
/// waits for the next seconds.
fn act(
    shared: &Arc<Shared>,
    eff: &Arc<Effective>,
    ev: ProbeEvent,
    mode: &'static str,
    block: BlockMode,
) {
    // A spent budget sends the scanner straight to the waiting list (no task for it).
    if block == BlockMode::Block {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let spent = shared
            .ban_budget
            .lock()
            .expect("budget lock")
            .spent(eff.config.max_bans_per_sec, secs);
        if spent {
            shared.metrics.ban_refused();
            shared
                .waiting
                .lock()
                .expect("waiting lock")
                .offer(ev, mode, block);
            return;
        }
    }
    shared.handled.lock().expect("handled lock").insert(ev.ip);
    let shared = shared.clone();
    let eff = eff.clone();
    tokio::spawn(async move {
        let Ok(_permit) = shared.jobs.clone().acquire_owned().await else {
            return;
        };
        respond(&shared, &eff, ev, mode, block).await;
    });
}

/// Acts on sources the kernel counted past SCAN_TRIGGER that are not banned: their
/// event was read by a daemon that died before it banned them (or was lost). A banned
/// source's entry is removed when it is banned, so what is left here was never acted
/// on. Report-only hosts are skipped (they were reported; their entry stays).
fn recover_detected(shared: &Arc<Shared>) {
    let eff = shared.eff();
    let sources = match shared.book().dp.as_ref().map(|dp| dp.sources()) {
        Some(Ok(s)) => s,
        _ => return,
    };
    let rules = Rules {
        scan_trigger: eff.config.scan_trigger,
        window: eff.config.scan_window,
    };
    let mut n = 0;
    for (ip, st) in sources {
        let Some(scan_type) = portsentry_common::ScanType::from_u8(st.last_scan_type) else {
            continue;
        };
        let ev = ProbeEvent {
            ip,
            port: st.last_port,
            scan_type,
            tcp_flags: scan_type.example_flags(),
            hits: st.hits,
            distinct_ports: st.distinct_ports,
            ts_ns: st.last_ns,
            first_ns: st.first_ns,
            ifindex: 0,
            verified: st.flags & portsentry_common::maps::SOURCE_VERIFIED != 0,
        };
        let Some(mode) = eff.mode_token(ev.proto()) else {
            continue;
        };
        let block = eff.block_mode(ev.proto());
        let verified = st.flags & portsentry_common::maps::SOURCE_VERIFIED != 0;
        if block != BlockMode::Block
            || shared.book().covers(ip)
            || (eff.config.verify_sources && !verified)
        {
            continue;
        }
        if rules.judge(&ev, eff.is_ignored(ip), false) == Verdict::Act {
            n += 1;
            act(shared, &eff, ev, mode, block);
        }
    }
    if n > 0 {
        shared.log.notice(&format!(
            "portsentry: {n} scanners detected before the restart were not banned yet; \
             acting on them now"
        ));
    }
}

/// Takes one ban from this second's MAX_BANS_PER_SEC; false (counted, logged once a
/// second) when it is spent.
fn take_ban_budget(shared: &Shared, eff: &Effective, now: SystemTime) -> bool {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut budget = shared.ban_budget.lock().expect("budget lock");
    if budget.take(eff.config.max_bans_per_sec, secs) {
        return true;
    }
    shared.metrics.ban_refused();
    if budget.refused == 1 {
        shared.log.warn(&format!(
            "portsentry: MAX_BANS_PER_SEC ({}) reached; the scanners beyond it are banned in \
             the next seconds, the most persistent first",
            eff.config.max_bans_per_sec
        ));
    }
    false
}

/// Bans the scanners that waited for the budget, the most persistent first.
fn drain_waiting(shared: &Arc<Shared>) {
    let eff = shared.eff();
    let limit = eff.config.max_bans_per_sec;
    let n = if limit == 0 {
        usize::MAX
    } else {
        limit as usize
    };
    let best = shared.waiting.lock().expect("waiting lock").take_best(n);
    for (ev, mode, block) in best {
        if is_handled(shared, ev.ip) || eff.is_ignored(ev.ip) {
            continue;
        }
        act(shared, &eff, ev, mode, block);
    }
}

/// Whether `ip` was acted on already (or is covered by a ban).
fn is_handled(shared: &Shared, ip: IpAddr) -> bool {
    shared.handled.lock().expect("handled lock").contains(&ip) || shared.book().covers(ip)
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
    // MAX_BANS_PER_SEC is taken when the response starts, and the ban is dated with
    // the same instant, so that no second holds more bans than the limit.
    let now = SystemTime::now();
    if block == BlockMode::Block && !take_ban_budget(shared, eff, now) {
        shared.handled.lock().expect("handled lock").remove(&ev.ip);
        shared
            .waiting
            .lock()
            .expect("waiting lock")
            .offer(ev, mode, block);
        return;
    }
    let steps = actions::plan(c, block, &target);
    // The XDP ban does not wait for the name lookup when it comes first.
    let mut banned = false;
    if steps.first() == Some(&Step::XdpBan) {
        banned = scan_ban(shared, eff, &ev, mode, now);
    }
    let name = resolve(shared, eff, ev.ip).await;
    if banned && name != ev.ip.to_string() {
        shared.book().store.set_name(&IpNet::from(ev.ip), &name);
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
        if *step == Step::XdpBan {
            if !banned && !scan_ban(shared, eff, &ev, mode, now) {
                continue;
            }
            log.notice(&format!(
                "attackalert: Host {} has been blocked via XDP drop",
                ev.ip
            ));
            // The state and blocked files follow within a second (housekeeping).
        } else {
            run_step(&shared.log, &shared.metrics, c, ev.ip, step, false).await;
        }
    }
    let line = records::history_line(SystemTime::now(), &name, ev.ip, ev.port, ev.proto());
    if let Err(e) = records::append_history(&c.history_file, &line) {
        log.warn(&format!(
            "portsentry: could not write the history file: {e}"
        ));
    }
}

/// Puts the XDP ban of a scanner in force; false (logged) when that failed.
fn scan_ban(
    shared: &Shared,
    eff: &Effective,
    ev: &ProbeEvent,
    mode: &str,
    now: SystemTime,
) -> bool {
    let mut book = shared.book();
    let mut ban = book.new_ban(&eff.config, IpNet::from(ev.ip), BanOrigin::Scan, None);
    if let Some(e) = ban.expires {
        ban.expires = Some(now + e.duration_since(ban.since).unwrap_or_default());
    }
    ban.since = now;
    ban.port = ev.port;
    ban.proto = ev.proto();
    ban.scan_type = Some(ev.scan_type);
    ban.mode = mode.to_owned();
    match book.put(ban) {
        Ok(()) => {
            shared.metrics.ban_added("scan");
            true
        }
        Err(e) => {
            shared.metrics.ban_failed();
            shared.log.warn(&format!(
                "attackalert: ERROR: Could not block host {}: {e:#}",
                ev.ip
            ));
            false
        }
    }
}

/// Runs one non-XDP step and logs it as PortSentry does; `undo` marks the steps that
/// lift a ban.
pub async fn run_step(
    log: &Logger,
    metrics: &Metrics,
    c: &Config,
    ip: IpAddr,
    step: &Step,
    undo: bool,
) {
    match step {
        Step::XdpBan => {}
        Step::HostsDeny(line) => match actions::append_line(&c.hosts_deny_file, line) {
            Ok(()) => {
                metrics.action_result("hosts_deny", true);
                log.notice(&records::blocked_via_wrappers(ip, line));
            }
            Err(e) => {
                metrics.action_result("hosts_deny", false);
                log.warn(&format!("attackalert: ERROR: {e}"));
            }
        },
        Step::HostsDenyRemove(line) => match actions::remove_line(&c.hosts_deny_file, line) {
            Ok(_) => {
                metrics.action_result("hosts_deny_remove", true);
                log.notice(&format!(
                    "portsentry: Host {ip} removed from {}",
                    c.hosts_deny_file.display()
                ));
            }
            Err(e) => {
                metrics.action_result("hosts_deny_remove", false);
                log.warn(&format!("portsentry: ERROR: {e}"));
            }
        },
        Step::Route(cmd) | Step::RunCmd(cmd) => {
            let kind = match (step, undo) {
                (Step::Route(_), false) => "route",
                (Step::Route(_), true) => "unroute",
                (_, false) => "run_cmd",
                (_, true) => "unrun_cmd",
            };
            let (outcome, output) = actions::run_shell(cmd, c.kill_timeout).await;
            metrics.action(kind, &outcome);
            match (step, undo) {
                (Step::Route(_), false) => log.notice(&records::blocked_via_route(ip, cmd)),
                (Step::RunCmd(_), false) => log.notice(&records::external_command(ip, cmd)),
                _ => log.notice(&format!(
                    "portsentry: Host {ip} unblocked using command: \"{cmd}\""
                )),
            }
            if !outcome.ok() {
                let output = output.trim();
                log.warn(&format!(
                    "portsentry: command {outcome}: \"{cmd}\"{}",
                    if output.is_empty() {
                        String::new()
                    } else {
                        format!(" output: {output}")
                    }
                ));
            }
        }
    }
}

/// Runs the undo steps of a lifted ban (UNKILL_ROUTE, the hosts.deny line,
/// UNKILL_RUN_CMD) in the background.
fn spawn_undo(shared: &Arc<Shared>, ban: Ban, reason: &'static str) {
    shared.metrics.ban_removed(reason);
    shared
        .handled
        .lock()
        .expect("handled lock")
        .retain(|ip| !ban.net.contains(ip));
    let shared = shared.clone();
    tokio::spawn(async move {
        let eff = shared.eff();
        let c = &eff.config;
        // Manual bans and prefixes ran no kill command: there is nothing to undo.
        if ban.origin != BanOrigin::Scan || ban.net.prefix_len() != ban.net.max_prefix_len() {
            return;
        }
        let target = Target {
            ip: ban.net.addr(),
            port: ban.port,
            mode: mode_token(&ban.mode),
        };
        for step in actions::undo_plan(c, &target) {
            run_step(&shared.log, &shared.metrics, c, ban.net.addr(), &step, true).await;
        }
    });
}

/// The `$MODE$` token of a ban's recorded mode.
pub fn mode_token(mode: &str) -> &'static str {
    match mode {
        "stcp" => "stcp",
        "audp" => "audp",
        "sudp" => "sudp",
        _ => "atcp",
    }
}

/// Expires bans, writes the state and blocked files when bans changed, keeps the
/// always-ignored addresses current, counts tracked sources.
fn housekeeping(shared: &Arc<Shared>) {
    drain_waiting(shared);
    let now = SystemTime::now();
    let expired = shared.book().store.expired(now);
    if !expired.is_empty() {
        let mut lifted = Vec::new();
        {
            let mut book = shared.book();
            for net in &expired {
                match book.lift(net) {
                    Ok(Some(b)) => lifted.push(b),
                    Ok(None) => {}
                    Err(e) => shared
                        .log
                        .warn(&format!("portsentry: removing the ban of {net}: {e:#}")),
                }
            }
        }
        for b in lifted {
            shared
                .log
                .notice(&format!("portsentry: ban of {} expired", b.net));
            spawn_undo(shared, b, "expired");
        }
    }
    if let Err(e) = shared.book().flush() {
        shared.log.warn(&format!("portsentry: {e:#}"));
    }
    watch_links(shared);
    let eff = shared.eff();
    match localaddrs::always_ignored() {
        Ok(now) if now != eff.always_ignored => {
            let mut new = (*eff).clone();
            new.always_ignored = now;
            let r = match shared.book().dp.as_mut() {
                Some(dp) => dp.replace_ignore(&new.ignored_nets()),
                None => Ok(()),
            };
            match r {
                Ok(()) => *shared.eff.lock().expect("eff lock") = Arc::new(new),
                Err(e) => shared
                    .log
                    .warn(&format!("portsentry: updating the ignore list: {e:#}")),
            }
        }
        Ok(_) => {}
        Err(e) => shared.log.warn(&format!("portsentry: {e:#}")),
    }
    // Counting walks every key (a syscall each): every 30 s, not every second.
    let mut tracked = shared.sources_tracked.lock().expect("sources lock");
    if tracked
        .1
        .is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(30))
    {
        drop(tracked);
        let count = shared
            .book()
            .dp
            .as_ref()
            .and_then(|dp| dp.count_sources().ok())
            .unwrap_or(0);
        tracked = shared.sources_tracked.lock().expect("sources lock");
        *tracked = (count, Some(std::time::Instant::now()));
    }
}

/// Puts the program back on an interface when something else detached it (or the
/// interface was deleted and created again), and says so.
fn watch_links(shared: &Shared) {
    let eff = shared.eff();
    let mut book = shared.book();
    let Some(dp) = book.dp.as_mut() else {
        return;
    };
    let mut unattached = shared.unattached.lock().expect("unattached lock");
    for iface in dp.lost_attachments() {
        match dp.reattach(&iface, eff.xdp_mode) {
            Ok(_) => {
                shared.metrics.reattached();
                unattached.remove(&iface);
                shared.log.warn(&format!(
                    "portsentry: the program was detached from {iface} by something else; \
                     attached again"
                ));
            }
            Err(e) => {
                if unattached.insert(iface.clone()) {
                    shared.log.warn(&format!(
                        "portsentry: the program is no longer attached to {iface} and \
                         attaching it again failed (retrying every second): {e:#}"
                    ));
                }
            }
        }
    }
}

/// What the metrics endpoint reports.
fn snapshot(shared: &Shared) -> Snapshot {
    let eff = shared.eff();
    let book = shared.book();
    Snapshot {
        counters: book
            .dp
            .as_ref()
            .and_then(|dp| dp.counters().ok())
            .unwrap_or_default(),
        bans_active: book.store.len() as u64,
        bans_capacity: u64::from(eff.config.max_bans),
        sources_tracked: shared.sources_tracked.lock().expect("sources lock").0,
        sources_capacity: u64::from(eff.config.max_tracked_sources),
        ignored_networks: eff.ignored_nets().len() as u64,
    }
}

/// A control-socket request (`portsentry ban`, `unban`).
fn handle_request(shared: &Arc<Shared>, req: Request) -> Response {
    let eff = shared.eff();
    match req {
        Request::Ban { net, seconds } => {
            let mut book = shared.book();
            let ban = book.new_ban(
                &eff.config,
                net,
                BanOrigin::Manual,
                seconds.map(Duration::from_secs),
            );
            let expires = ban.expires;
            match book.put(ban).and_then(|()| book.persist()) {
                Ok(()) => {
                    shared.metrics.ban_added("manual");
                    shared.log.notice(&format!(
                        "portsentry: {net} banned by the operator{}",
                        describe_expiry(expires)
                    ));
                    Response::ok(format!("banned {net}{}", describe_expiry(expires)))
                }
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
        Request::Unban { net } => {
            let lifted = {
                let mut book = shared.book();
                let r = book.lift(&net);
                let p = book.persist();
                r.and_then(|b| p.map(|()| b))
            };
            match lifted {
                Ok(Some(b)) => {
                    shared
                        .log
                        .notice(&format!("portsentry: {net} unbanned by the operator"));
                    spawn_undo(shared, b, "unbanned");
                    Response::ok(format!("unbanned {net}"))
                }
                Ok(None) => Response::err(format!("{net} is not banned")),
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
        Request::UnbanAll => {
            let (lifted, result) = {
                let mut book = shared.book();
                let nets: Vec<IpNet> = book.store.iter().map(|b| b.net).collect();
                let mut lifted = Vec::new();
                let mut result = Ok(());
                for n in nets {
                    match book.lift(&n) {
                        Ok(Some(b)) => lifted.push(b),
                        Ok(None) => {}
                        Err(e) => result = Err(e),
                    }
                }
                (lifted, result.and(book.persist()))
            };
            let n = lifted.len();
            for b in lifted {
                spawn_undo(shared, b, "unbanned");
            }
            shared
                .log
                .notice(&format!("portsentry: all {n} bans lifted by the operator"));
            match result {
                Ok(()) => Response::ok(format!("unbanned {n} networks")),
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
    }
}

pub fn describe_expiry(expires: Option<SystemTime>) -> String {
    match expires.and_then(|e| e.duration_since(SystemTime::now()).ok()) {
        Some(d) => format!(
            " for {}",
            humantime::format_duration(Duration::from_secs(d.as_secs() + 1))
        ),
        None => " permanently".to_owned(),
    }
}

/// One daemon per state directory: an exclusive lock on `portsentry.pid`, which holds
/// our pid. Returns the open file (the lock lives as long as it does, across fork).
/// `Ok(None)`: another process holds it.
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

/// The pid in the lock file, when a process holds the lock (the daemon is running).
pub fn running_pid(state_dir: &Path) -> Option<u32> {
    match lock_state_dir(state_dir) {
        Ok(None) => fs::read_to_string(state_dir.join("portsentry.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(last: u8, hits: u32) -> ProbeEvent {
        ProbeEvent {
            ip: IpAddr::from([192, 0, 2, last]),
            port: 22,
            scan_type: portsentry_common::ScanType::TcpSyn,
            tcp_flags: 2,
            hits,
            distinct_ports: 1,
            ts_ns: 0,
            first_ns: 0,
            ifindex: 0,
            verified: false,
        }
    }

    #[test]
    fn waiting_keeps_the_most_persistent() {
        let mut w = Waiting::default();
        for i in 0..MAX_WAITING {
            let mut e = ev(0, 1);
            e.ip = IpAddr::from((i as u32 + 0x0a00_0000).to_be_bytes());
            w.offer(e, "atcp", BlockMode::Block);
        }
        w.offer(ev(7, 1), "atcp", BlockMode::Block);
        assert!(
            !w.by_ip.contains_key(&IpAddr::from([192, 0, 2, 7])),
            "full of equals"
        );
        w.offer(ev(8, 5), "atcp", BlockMode::Block);
        assert!(
            w.by_ip.contains_key(&IpAddr::from([192, 0, 2, 8])),
            "a persistent one wins"
        );
        assert_eq!(w.by_ip.len(), MAX_WAITING);
        w.offer(ev(8, 9), "atcp", BlockMode::Block);
        let best = w.take_best(2);
        assert_eq!(best[0].0.hits, 9);
        assert_eq!(best[1].0.hits, 1);
        assert_eq!(w.by_ip.len(), MAX_WAITING - 2);
    }

    #[test]
    fn ban_budget_per_second() {
        let mut b = BanBudget::default();
        assert!(b.take(2, 10) && !b.spent(2, 10) && b.take(2, 10));
        assert!(b.spent(2, 10) && !b.spent(2, 11));
        assert!(!b.take(2, 10) && !b.take(2, 10));
        assert_eq!(b.refused, 2);
        assert!(b.take(2, 11), "a new second, a new budget");
        assert_eq!(b.refused, 0);
        for _ in 0..1000 {
            assert!(b.take(0, 12), "0 = unlimited");
        }
    }
}
