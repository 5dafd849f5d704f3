//! `portsentry run`: load (or adopt) and attach the XDP program, read probe events,
//! decide ([`detect`]), admit within MAX_BANS_PER_SEC ([`admission`]) and respond in the
//! configured order, off the packet path ([`respond`]); keep bans, the configuration and
//! the attachments current ([`upkeep`]); answer the control socket ([`control`]).
//!
//! The program, its maps and its links are pinned under PIN_DIR: a daemon that dies
//! (even by `kill -9`) leaves protection in force, and the next one adopts all of it,
//! replacing the program in the links atomically. Bans are also recorded in the ban
//! journal (`STATE_DIR/bans.journal`), so a reboot restores them.

mod admission;
mod control;
mod crowdsec;
pub mod detect;
mod escalation;
mod event;
mod jobs;
mod respond;
mod upkeep;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use portsentry_common::maps::ScanEvent;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    bans::{Book, escalate::Tracker, guard::Guard, journal::Journal, state},
    config::{
        effective::{ConfigArgs, Effective},
        gateways::RouteWatch,
        localaddrs,
    },
    kernel::{
        Dataplane, MapFull, MapTooSmall,
        configure::{self, map_sizes},
    },
    kinds::{BanEnd, ModeToken, Protocol},
    metrics::{self, Metrics},
    paths,
    report::Logger,
};
use admission::Admission;
use detect::Rules;

/// How often expired bans are removed and this host's addresses re-read.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// At most this many bans of one event (an answer of the Local API, a start's steps
/// due) are logged one by one, then one line counts them.
const LOG_EACH: usize = 10;

/// The configuration in force and the detection rules built from it (once per
/// configuration).
#[derive(Clone)]
struct Current {
    eff: Arc<Effective>,
    rules: Rules,
}

impl Current {
    fn new(eff: Arc<Effective>) -> Current {
        let rules = Rules::new(&eff.config);
        Current { eff, rules }
    }
}

/// Hosts acted on (banned, reported or their command run) and not since released: the
/// ones acted on since start, each for the protocol it scanned (as PortSentry keeps a
/// blocked file a protocol: a host reported for a UDP scan is still acted on for a TCP
/// one), and every host whose own ban is in the book, for every protocol (restored bans
/// included, without a second copy of a million addresses).
struct Handled {
    hosts: Acted,
    book: Arc<Mutex<Book>>,
}

impl Handled {
    /// Locks the book (so never call it with the book locked).
    fn contains(&self, ip: IpAddr, proto: Protocol) -> bool {
        self.hosts.0.contains_key(&(ip, proto))
            || self
                .book
                .lock()
                .expect("book lock")
                .store
                .contains(&ipnet::IpNet::from(ip))
    }

    /// Marks `ip` acted on for `proto` (a mark already there stays as it is).
    fn insert(&mut self, ip: IpAddr, proto: Protocol, mark: Mark) {
        self.hosts.0.entry((ip, proto)).or_insert(mark);
    }

    /// Forgets the hosts of `net`, for every protocol.
    fn release(&mut self, net: &ipnet::IpNet) {
        self.hosts.release(net);
    }

    /// Forgets the hosts whose scan of `proto` was only reported or had its command run
    /// ([`Mark::Scan`]): a reload made the response to `proto` stronger
    /// ([`stronger_response`]), and their next scan gets it, as after a restart.
    fn release_scan_marks(&mut self, proto: Protocol) {
        self.hosts
            .0
            .retain(|(_, p), mark| *p != proto || *mark != Mark::Scan);
    }

    /// Forgets the marks of `ip` that a response banning it made ([`Mark::Ban`]): its
    /// ban failed or was refused. A scan of another protocol responded to before (its
    /// command run under BLOCK_UDP="2", say) stays acted on.
    fn release_ban_marks(&mut self, ip: IpAddr) {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            if self.hosts.0.get(&(ip, proto)) == Some(&Mark::Ban) {
                self.hosts.0.remove(&(ip, proto));
            }
        }
    }
}

/// Whether the response of `new` does more than that of `old`: a report becomes a
/// command or a ban, a command a ban.
fn stronger_response(old: crate::config::BlockMode, new: crate::config::BlockMode) -> bool {
    use crate::config::BlockMode::{Block, ReportOnly, RunCmdOnly};
    matches!(
        (old, new),
        (ReportOnly, RunCmdOnly | Block) | (RunCmdOnly, Block)
    )
}

/// What marked a host acted on for a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// A response to its scan of that protocol that does not ban it (reported only, or
    /// its command run).
    Scan,
    /// A response that bans it, for every protocol (its ban drops them all).
    Ban,
}

/// The hosts acted on since start, for the protocol each scanned. Ordered by address,
/// so that a lifted ban releases the hosts of its network in a few steps: a pass over
/// all of them at each lift (a million, after a long run on a busy server) stalled
/// the housekeeping that lifts a hundred expired bans a second.
#[derive(Default)]
struct Acted(BTreeMap<(IpAddr, Protocol), Mark>);

impl Acted {
    fn release(&mut self, net: &ipnet::IpNet) {
        // From the network's first address with the first protocol to its last address
        // with the last (`Protocol` orders Tcp before Udp).
        let inside: Vec<_> = self
            .0
            .range((net.network(), Protocol::Tcp)..=(net.broadcast(), Protocol::Udp))
            .map(|(host, _)| *host)
            .collect();
        for host in inside {
            self.0.remove(&host);
        }
    }
}

/// State shared by the event loop, the response jobs and the control socket.
struct Shared {
    book: Arc<Mutex<Book>>,
    /// Hosts acted on (banned, reported or their command run) and not since released.
    handled: Mutex<Handled>,
    current: Mutex<Current>,
    log: Logger,
    metrics: Arc<Metrics>,
    names: Mutex<HashMap<IpAddr, String>>,
    /// Tracked sources, counted by housekeeping (iterating the map on every scrape
    /// would cost a syscall per entry).
    sources_tracked: Mutex<(u64, Option<std::time::Instant>)>,
    /// MAX_BANS_PER_SEC and the scanners it turned away.
    admission: Mutex<Admission>,
    /// Interfaces the program could not be attached to again (logged once).
    unattached: Mutex<HashSet<String>>,
    /// This host's addresses the kernel's ignore list could not take (logged once for
    /// each set of addresses; tried again every second).
    addresses_refused: Mutex<Option<Vec<localaddrs::Always>>>,
    /// When to read the gateways of this host's routes again.
    routes: Mutex<RouteWatch>,
    /// The responses running and the escalations refused ([`escalation`]).
    escalation: Mutex<Tracker>,
    /// The response jobs' pool and each address's line ([`jobs`]).
    jobs: Arc<jobs::Jobs>,
    /// The CrowdSec Local API link (CROWDSEC_LAPI_URL), fixed until a restart.
    crowdsec: Option<crowdsec::Fleet>,
    /// The look for bans whose event was lost ([`detect::recover_lost_bans`]).
    lost: Mutex<detect::LostLook>,
    /// MAX_BANS and MAX_TRACKED_SOURCES as the maps were sized at this start (a reload
    /// that changes them resizes the maps at the next start only).
    map_sizes: (u32, u32),
    /// The kill steps that ran of the responses that stopped short of some (their ban
    /// lifted while they waited, their host protected since), by ban (network, and when
    /// it was made, in ms): the ban's undo steps, which follow in the host's line, undo
    /// those alone.
    cut_short: Mutex<HashMap<(ipnet::IpNet, u64), crate::actions::Ran>>,
}

impl Shared {
    fn current(&self) -> Current {
        self.current.lock().expect("config lock").clone()
    }

    fn eff(&self) -> Arc<Effective> {
        self.current().eff
    }

    fn set_eff(&self, eff: Effective) {
        *self.current.lock().expect("config lock") = Current::new(Arc::new(eff));
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().expect("book lock")
    }

    /// Whether a response that bans `ip` was started for its scan of `proto` (it may
    /// still wait for its turn) and the host not released since: that response takes a
    /// ban the program made of it over. (A host reported only, or whose command alone
    /// ran, has none coming.)
    fn ban_under_way(&self, ip: IpAddr, proto: Protocol) -> bool {
        self.handled
            .lock()
            .expect("handled lock")
            .hosts
            .0
            .get(&(ip, proto))
            == Some(&Mark::Ban)
    }

    /// Whether `ip` was acted on already for a scan of `proto` (or is covered by a ban).
    fn is_handled(&self, ip: IpAddr, proto: Protocol) -> bool {
        self.handled
            .lock()
            .expect("handled lock")
            .contains(ip, proto)
            || self.book().covers(ip)
    }
}

/// Holds `signals` pending until [`run`] takes them (it takes SIGHUP, SIGTERM and
/// SIGINT): called before any thread exists (threads inherit the mask; the commands the
/// daemon runs start with none, as `std::process` resets it).
pub fn hold_signals(signals: &[libc::c_int]) {
    set_signal_mask(libc::SIG_BLOCK, signals);
}

fn set_signal_mask(how: libc::c_int, signals: &[libc::c_int]) {
    // SAFETY: a sigset_t filled by sigemptyset/sigaddset, passed to pthread_sigmask
    // for the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Runs the daemon until SIGTERM or SIGINT. Stopping leaves the program attached and
/// the bans in force (`portsentry unload` removes them).
///
/// `lock` is the state directory's lock ([`crate::pidfile::lock`]), taken by the
/// caller before it detaches into the background.
///
/// `args` are the command line's settings, read again with the files on SIGHUP;
/// `stderr` copies the log lines to stderr.
pub async fn run(
    eff: Arc<Effective>,
    args: ConfigArgs,
    stderr: bool,
    lock: fs::File,
) -> Result<()> {
    let _lock = lock;
    // Taken first: a SIGHUP (a log rotation's, say) or SIGTERM that came since
    // [`hold_signals`] waits for the loop below instead of killing the daemon midway.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // This thread runs this function to its end: the signals held go to it now.
    set_signal_mask(
        libc::SIG_UNBLOCK,
        &[libc::SIGHUP, libc::SIGTERM, libc::SIGINT],
    );
    // Before the program runs with this start's settings: the KILL_HOSTS_DENY in force
    // from here on, when the last stop did not say when.
    let began = SystemTime::now();
    let log = Logger::install(
        eff.config.syslog && std::env::var_os("JOURNAL_STREAM").is_none(),
        stderr,
    );
    let c = &eff.config;
    // The journal is read on a thread of its own while the maps are opened (or the
    // program verified): the two are a start-up's longest steps with many bans.
    let restoring = std::time::Instant::now();
    let reading = {
        let dir = c.state_dir.clone();
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || Journal::open(&dir))
            .context("starting the journal reader's thread")?
    };
    // The kernel verifies the program while the maps are filled: the bans on record are
    // in the maps before the program is attached (or replaced in its pinned links).
    let mut dp = Dataplane::load_verifying(&map_sizes(&eff), Some(c.pin_dir.clone()))
        .map_err(|e| too_small(e, c))?;
    for line in dp.resized_maps() {
        log.notice(&format!("portsentry: {line}"));
    }
    configure::apply(&mut dp, &eff)?;
    for w in &eff.warnings {
        log.warn(&format!("portsentry: warning: {w}"));
    }
    if let Some(path) = &eff.modes_file {
        log.notice(&format!(
            "portsentry: modes from {} (PortSentry 1.2's start-up file): TCP {}, UDP {}",
            path.display(),
            c.tcp_mode,
            c.udp_mode
        ));
    }

    if dp.program_reused() {
        log.notice(
            "portsentry: the program pinned by an earlier start of this build is kept (not \
             verified again)",
        );
    }
    // Bans: the journal's, reconciled with what the pinned maps kept.
    let (journal, saved, opened) = reading
        .join()
        .map_err(|_| anyhow::anyhow!("the journal reader's thread panicked"))??;
    for line in opened.report() {
        log.warn(&line);
    }
    log.notice(&format!(
        "portsentry: ban journal read: {} bans from {} bytes in {:.2?}",
        saved.len(),
        opened.bytes,
        opened.took
    ));
    let t = std::time::Instant::now();
    let kernel_bans = dp.take_bans_at_load()?;
    let read_kernel = t.elapsed();
    let in_kernel = kernel_bans.len();
    // A kernel-only ban of a protocol whose mode is now off is recorded under the
    // advanced mode's token.
    let tcp_mode = eff.mode_token(Protocol::Tcp).unwrap_or(ModeToken::Atcp);
    let udp_mode = eff.mode_token(Protocol::Udp).unwrap_or(ModeToken::Audp);
    let mut to_insert = dp.ban_writes(saved.len());
    let mut r = state::reconcile(
        saved,
        kernel_bans,
        SystemTime::now(),
        tcp_mode,
        udp_mode,
        |net, entry| to_insert.push(net, entry),
    );
    let pending = std::mem::take(&mut r.pending);
    let t = std::time::Instant::now();
    let written = to_insert.len();
    dp.write_bans(to_insert).map_err(|e| too_small(e, c))?;
    let moved = std::mem::take(&mut r.moved);
    if !moved.is_empty() {
        log.notice(&format!(
            "portsentry: the kernel's deadlines of {} timed bans were off by a step of the \
             wall clock (or a suspend) while no daemon ran; written again",
            moved.len()
        ));
        dp.refresh_bans(moved)?;
    }
    log.notice(&format!(
        "portsentry: kernel maps: {in_kernel} bans read in {read_kernel:.2?}, {written} \
         written in {:.2?}",
        t.elapsed()
    ));
    let kernel_io = read_kernel + t.elapsed();
    for net in &r.adopted {
        log.notice(&format!(
            "portsentry: adopted the ban of {net} from the kernel (made before a restart)"
        ));
    }
    // Bans the program still attached made in maps replaced at this load, since they
    // were copied: a ban that cannot be written fails the start here, while that
    // program still runs on them.
    let mut late = dp.carry_over_late_bans().map_err(|e| too_small(e, c))?;
    upkeep::drop_stale_links(&c.pin_dir, &eff.interfaces, &log);
    for iface in &eff.interfaces {
        let a = dp.attach(iface, eff.xdp_mode)?;
        match a.mode {
            Some(mode) => log.notice(&format!("portsentry: watching {iface} ({mode:?} XDP)")),
            None => log.notice(&format!(
                "portsentry: watching {iface} (adopted the pinned link; program replaced)"
            )),
        }
    }
    if let Some(took) = dp.verified_in() {
        log.notice(&format!(
            "portsentry: the kernel verified the program in {took:.2?} (while the bans were \
             restored)"
        ));
    }
    // And those it made until the attach replaced it.
    late += dp.carry_over_after_attach().map_err(|e| too_small(e, c))?;
    dp.release_replaced_maps();
    if late > 0 {
        log.notice(&format!(
            "portsentry: {late} bans made meanwhile carried over into the resized maps"
        ));
    }
    let ring = dp.take_events()?;
    let mut book = Book::new(Some(dp), r.store, Some(journal), c, Guard::new(&eff));
    // Before the lifts below, which note their own.
    let (cut_short, superseded) = book.cut_short_undos();
    for net in &r.adopted {
        book.record(net);
    }
    let expired_at_start = r.expired;
    for b in &expired_at_start {
        // One the kernel held alone (made while the daemon was stopped) is not on
        // record: its undo steps are noted as due here.
        if book.lift(&b.net)?.is_none() {
            book.undo_due(b);
        }
    }
    // Bans in force whose response's kill commands a stop or a crash cut short.
    let kills_cut_short = book.store.take_kills_due();
    // A journal that cannot be written does not stop the start: the changes stay in
    // memory and its writer keeps trying (it logs when it fails and when it works
    // again), as it does for every change once the daemon runs.
    if let Err(e) = book.persist_patiently() {
        log.warn(&format!(
            "portsentry: {e:#}; starting anyway: the bans are in force, and the changes \
             are written to the journal once it can be written"
        ));
    }
    let restored = book.store.len();

    let (routes, listening) = RouteWatch::new();
    if let Some(e) = listening {
        log.warn(&format!("portsentry: {e:#}"));
    }
    let metrics = Arc::new(Metrics::new());
    let lost_at_load = book.dp.as_ref().map_or(0, |dp| dp.events_lost_at_load());
    let book = Arc::new(Mutex::new(book));
    let shared = Arc::new(Shared {
        book: book.clone(),
        handled: Mutex::new(Handled {
            hosts: Acted::default(),
            book,
        }),
        current: Mutex::new(Current::new(eff.clone())),
        log,
        metrics: metrics.clone(),
        names: Mutex::new(HashMap::new()),
        sources_tracked: Mutex::new((0, None)),
        admission: Mutex::new(Admission::default()),
        unattached: Mutex::new(HashSet::new()),
        addresses_refused: Mutex::new(None),
        routes: Mutex::new(routes),
        escalation: Mutex::new(Tracker::default()),
        jobs: jobs::Jobs::new(),
        crowdsec: eff.crowdsec.as_ref().map(crowdsec::Fleet::new),
        lost: Mutex::new(detect::LostLook::after(lost_at_load)),
        map_sizes: (eff.config.max_bans, eff.config.max_tracked_sources),
        cut_short: Mutex::new(HashMap::new()),
    });
    upkeep::spawn_cut_short_undos(&shared, cut_short, superseded);
    respond::resume(&shared, kills_cut_short);
    for b in expired_at_start {
        shared.log.notice(&format!(
            "portsentry: ban of {} expired while portsentry was stopped",
            b.net
        ));
        upkeep::spawn_undo(&shared, b, BanEnd::Expired);
    }
    // Bans kept from before (the state file, the pinned maps) that the guard refuses now.
    upkeep::enforce_guard(&shared, "at start");
    crowdsec::lift_when_off(&shared);
    // The kernel's own bans first: recovering the sources it counted skips them.
    detect::respond_to_pending(&shared, &pending, "while no daemon responded");
    detect::recover_detected(&shared);
    if let Some(addr) = c.metrics_address {
        let s = shared.clone();
        let (bound, _thread) = metrics::serve(addr, metrics, move || upkeep::snapshot(&s))?;
        shared
            .log
            .notice(&format!("portsentry: metrics on http://{bound}/metrics"));
    }
    let control = crate::control::listen(&c.state_dir)?;
    // After the guard and the restored bans: the first full answer reconciles with them.
    crowdsec::start(&shared)?;
    // The start is done: the KILL_HOSTS_DENY in force since the last stop (or `began`).
    upkeep::note_deny_template(&shared.log, c, began);
    crowdsec::write_status(&shared);
    shared.log.notice(&format!(
        "portsentry: bans restored in {:.2?}, {:.2?} of it writing and reading the kernel's \
         maps",
        restoring.elapsed(),
        kernel_io
    ));
    // Start-up's buffers (the journal's records, the kernel's bans) are freed: give
    // their pages back rather than keep them as free heap.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator to the system.
    unsafe {
        libc::malloc_trim(0);
    }
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
                    detect::on_event(&shared, &raw);
                }
            }
            conn = control.accept() => {
                if let Ok((stream, _)) = conn {
                    let s = shared.clone();
                    tokio::spawn(async move { crate::control::serve_one(stream, |req| control::handle(&s, req)).await });
                }
            }
            _ = hup.recv() => upkeep::reload(&shared, &args),
            _ = tick.tick() => upkeep::housekeeping(&shared),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // No request is taken from here on: a command finds no socket, and says that the
    // daemon holds the state until it stops, rather than wait for an answer that would
    // never come.
    drop(control);
    let _ = fs::remove_file(paths::control_socket(&shared.eff().config.state_dir));
    shared
        .log
        .notice("portsentry: stopping; the program stays attached and the bans in force");
    // Let running response jobs and undo steps finish, and those asked for before now
    // (each command is bounded by KILL_TIMEOUT).
    jobs.drain(shared.eff().config.kill_timeout * 3).await;
    // No kill command runs from now until the next start.
    upkeep::note_stopped(&shared.log, &shared.eff().config);
    crowdsec::save_reports(&shared);
    let mut book = shared.book();
    // The journal is put on disk even when the blocked files cannot be written.
    let blocked = book.flush(|_| {}).and_then(|()| book.finish_blocked());
    book.persist_patiently()?;
    blocked
}

/// Logs each of `lines` as a notice, or, when there are more than [`LOG_EACH`], one line
/// saying how many (`many`): a start after a crash during a mass expiry of CrowdSec bans
/// may find thousands of steps due.
fn notice_each(
    log: &Logger,
    lines: impl ExactSizeIterator<Item = String>,
    many: impl FnOnce(usize) -> String,
) {
    let n = lines.len();
    if n > LOG_EACH {
        log.notice(&many(n));
        return;
    }
    for line in lines {
        log.notice(&line);
    }
}

/// A map that cannot shrink to the configured size, or a `PS_BANS` too full for the bans
/// the start restores, as an error at the key that sets it.
fn too_small(e: anyhow::Error, c: &crate::config::Config) -> anyhow::Error {
    // `unban` waits for a start that carries a replaced map over.
    let or_unban = || {
        if crate::kernel::replaced_maps_wait(&c.pin_dir) {
            ", start portsentry with it, then unban some and lower it"
        } else {
            ", or unban some first (`portsentry unban`)"
        }
    };
    if let Some(t) = e.downcast_ref::<MapTooSmall>()
        && t.map == portsentry_common::maps::BANS
    {
        let room = if t.needed > t.entries as u64 {
            " (room for the bans made while it starts)"
        } else {
            ""
        };
        return c
            .error_at(
                "MAX_BANS",
                format!(
                    "MAX_BANS is {} for the {} bans in force (PS_BANS); raise MAX_BANS to at \
                     least {}{room}{}",
                    t.size,
                    t.entries,
                    t.needed,
                    or_unban()
                ),
            )
            .into();
    }
    if let Some(f) = e.downcast_ref::<MapFull>()
        && f.map == portsentry_common::maps::BANS
    {
        return c
            .error_at(
                "MAX_BANS",
                format!(
                    "MAX_BANS is {} and PS_BANS is full: {e:#}; raise MAX_BANS{}",
                    c.max_bans,
                    or_unban()
                ),
            )
            .into();
    }
    e
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<ScanEvent>) {
    while let Some(item) = ring.next() {
        if let Ok(ev) = bytemuck::try_pod_read_unaligned::<ScanEvent>(&item) {
            out.push(ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_lift_releases_the_hosts_of_its_network_only() {
        let mut acted = Acted::default();
        for (host, proto) in [
            ("192.0.2.0", Protocol::Udp),
            ("192.0.2.7", Protocol::Tcp),
            ("192.0.2.7", Protocol::Udp),
            ("192.0.2.255", Protocol::Tcp),
            ("192.0.3.0", Protocol::Tcp),
            ("192.0.1.255", Protocol::Udp),
            ("2001:db8::7", Protocol::Tcp),
            ("::ffff:192.0.2.7", Protocol::Tcp),
        ] {
            acted.0.insert((ip(host), proto), Mark::Scan);
        }
        acted.release(&"192.0.2.7/32".parse().unwrap());
        assert!(!acted.0.keys().any(|(h, _)| *h == ip("192.0.2.7")));
        assert_eq!(acted.0.len(), 6);
        acted.release(&"192.0.2.0/24".parse().unwrap());
        let left: Vec<_> = acted.0.keys().map(|(h, _)| h.to_string()).collect();
        assert_eq!(
            left,
            [
                "192.0.1.255",
                "192.0.3.0",
                "::ffff:192.0.2.7",
                "2001:db8::7"
            ]
        );
        acted.release(&"2001:db8::/64".parse().unwrap());
        assert_eq!(acted.0.len(), 3);
    }

    /// No host handled yet, with an empty ban book.
    fn handled() -> Handled {
        let config = crate::config::Config::default();
        Handled {
            hosts: Acted::default(),
            book: Arc::new(Mutex::new(Book::new(
                None,
                crate::bans::BanStore::default(),
                None,
                &config,
                crate::bans::guard::Guard::limits(&config),
            ))),
        }
    }

    /// A ban that failed releases the marks its response made, not those of an earlier
    /// response to the host's scan of the other protocol.
    #[test]
    fn a_failed_ban_releases_its_own_marks_only() {
        let mut handled = handled();
        let host = ip("192.0.2.7");
        // Its UDP scan's command run (BLOCK_UDP="2"), then its TCP scan's ban.
        handled.insert(host, Protocol::Udp, Mark::Scan);
        for proto in [Protocol::Tcp, Protocol::Udp] {
            handled.insert(host, proto, Mark::Ban);
        }
        handled.release_ban_marks(host);
        assert!(!handled.contains(host, Protocol::Tcp));
        assert!(handled.contains(host, Protocol::Udp));
        // A ban alone: both released.
        let other = ip("192.0.2.8");
        for proto in [Protocol::Tcp, Protocol::Udp] {
            handled.insert(other, proto, Mark::Ban);
        }
        handled.release_ban_marks(other);
        assert!(!handled.contains(other, Protocol::Tcp));
        assert!(!handled.contains(other, Protocol::Udp));
    }

    /// A reload that makes blocking stronger for a protocol releases the hosts only
    /// reported (or whose command alone ran) for it: their next scan is acted on anew.
    #[test]
    fn a_stronger_response_releases_the_hosts_only_reported() {
        use crate::config::BlockMode::{Block, ReportOnly, RunCmdOnly};
        assert!(stronger_response(ReportOnly, Block));
        assert!(stronger_response(ReportOnly, RunCmdOnly));
        assert!(stronger_response(RunCmdOnly, Block));
        for (old, new) in [
            (Block, RunCmdOnly),
            (Block, ReportOnly),
            (RunCmdOnly, ReportOnly),
        ] {
            assert!(!stronger_response(old, new), "{old:?} -> {new:?}");
        }
        let mut handled = handled();
        let (reported, banned) = (ip("192.0.2.7"), ip("192.0.2.8"));
        handled.insert(reported, Protocol::Tcp, Mark::Scan);
        handled.insert(reported, Protocol::Udp, Mark::Scan);
        handled.insert(banned, Protocol::Tcp, Mark::Ban);
        handled.release_scan_marks(Protocol::Tcp);
        assert!(!handled.contains(reported, Protocol::Tcp));
        assert!(handled.contains(reported, Protocol::Udp));
        assert!(handled.contains(banned, Protocol::Tcp));
    }

    /// `Acted::release` takes Tcp and Udp as the least and greatest protocols: a new
    /// protocol must be placed between them or the bounds changed.
    #[test]
    fn the_protocols_are_tcp_then_udp() {
        let within = |p: Protocol| match p {
            Protocol::Tcp | Protocol::Udp => (Protocol::Tcp..=Protocol::Udp).contains(&p),
        };
        assert!(within(Protocol::Tcp) && within(Protocol::Udp));
    }
}
