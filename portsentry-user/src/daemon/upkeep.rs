//! Keeping the daemon current: bans that expire (and their undo steps), the blocked
//! files and the journal's compaction, this host's addresses, the program's attachments, the tracked-source
//! count, a reloaded configuration (SIGHUP), and the metrics snapshot.

use std::{
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{Shared, respond};
use crate::{
    actions::{deny_templates, execute},
    bans::{
        Ban,
        guard::{Guard, Refusal},
    },
    config::{
        Config,
        effective::{self, ConfigArgs, Gateways},
        gateways::Read,
        localaddrs,
    },
    kernel::configure,
    kinds::{BanEnd, Protocol},
    metrics::Snapshot,
    paths,
    report::Logger,
};

/// Removes link pins for interfaces no longer configured (detaching them).
pub(super) fn drop_stale_links(pin_dir: &Path, interfaces: &[String], log: &Logger) {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(iface) = paths::link_interface(&name)
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

/// SIGHUP: re-reads the configuration and the ignore file with the same command line;
/// on any error the old settings stay in force.
pub(super) fn reload(shared: &Arc<Shared>, args: &ConfigArgs) {
    let old = shared.eff();
    let new = match effective::load_with(args, Gateways::Keep(&old.always_ignored)) {
        Ok(new) => new,
        Err(e) => {
            shared.log.warn(&format!(
                "portsentry: reload rejected, the old configuration stays in force: {e:#}"
            ));
            return;
        }
    };
    // An ignore file gone (a typo, an editor's rename) would leave only loopback and this
    // host's addresses protected, where a start with it missing only warns (as 1.2 does).
    if let Some(path) = new
        .config
        .ignore_file
        .as_ref()
        .filter(|_| new.ignore_file_missing)
    {
        shared.log.warn(&format!(
            "portsentry: reload rejected, the old configuration and ignore list stay in \
             force: IGNORE_FILE {} does not exist (set IGNORE_FILE=\"\" to ignore no file)",
            path.display()
        ));
        return;
    }
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    if sorted(&new.interfaces) != sorted(&old.interfaces)
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
    let mut restore_failed = None;
    let applied = {
        let mut book = shared.book();
        let Some(dp) = book.dp.as_mut() else {
            return;
        };
        let applied = configure::apply(dp, &new).inspect_err(|_| {
            // Put the old settings back.
            restore_failed = configure::apply(dp, &old).err();
        });
        if applied.is_ok() {
            // Every ban into the new BLOCKED_FILE.* at the next housekeeping.
            book.set_blocked_file(&new.config.blocked_file);
            // The guard follows the kernel's ignore list under the same lock: no response
            // bans a host the new list protects with the old guard meanwhile
            // ([`enforce_guard`] below lifts the bans made before).
            book.set_guard(Guard::new(&new));
        }
        applied
    };
    if let Some(e) = restore_failed {
        shared.log.warn(&format!(
            "portsentry: putting the old settings back into the kernel's maps failed too, \
             some of the reloaded ones may be in force there: {e:#}; fix the configuration \
             and reload, or restart portsentry"
        ));
    }
    match applied {
        Ok(()) => {
            for w in &new.warnings {
                shared.log.warn(&format!("portsentry: warning: {w}"));
            }
            if new.crowdsec != old.crowdsec {
                shared.log.warn(
                    "portsentry: the CROWDSEC_* settings changed; they take effect on restart \
                     only",
                );
            }
            let (c, o) = (&new.config, &old.config);
            if c.syslog != o.syslog || c.metrics_address != o.metrics_address {
                shared.log.warn(
                    "portsentry: SYSLOG and METRICS_ADDRESS changed; they take effect on \
                     restart only",
                );
            }
            if c.max_bans != o.max_bans || c.max_tracked_sources != o.max_tracked_sources {
                shared.log.notice(
                    "portsentry: MAX_BANS and MAX_TRACKED_SOURCES take effect at the next \
                     start (the maps are resized then, every ban kept)",
                );
            }
            note_deny_template(&shared.log, &new.config, SystemTime::now());
            // Hosts only reported (or whose command alone ran) get the stronger
            // response at their next scan, as after a restart.
            for proto in [Protocol::Tcp, Protocol::Udp] {
                if super::stronger_response(old.block_mode(proto), new.block_mode(proto)) {
                    shared
                        .handled
                        .lock()
                        .expect("handled lock")
                        .release_scan_marks(proto);
                }
            }
            shared.set_eff(new);
            shared
                .log
                .notice("portsentry: configuration and ignore list reloaded");
            enforce_guard(shared, "after the reload");
        }
        Err(e) => shared.log.warn(&format!(
            "portsentry: applying the reloaded configuration failed, the old one stays in \
             force: {e:#}"
        )),
    }
}

/// Notes the `KILL_HOSTS_DENY` in force from `from` ([`deny_templates::note`]), so that
/// the undo of a ban made with it finds its line after it changes; a failure is logged.
pub(super) fn note_deny_template(log: &Logger, c: &Config, from: SystemTime) {
    if let Err(e) = deny_templates::note(c, from) {
        log.warn(&format!(
            "portsentry: ERROR: noting KILL_HOSTS_DENY in {}: {e}; if it changes, the lines \
             of the bans made with it stay in {} when they end",
            deny_templates::path(&c.state_dir).display(),
            c.hosts_deny_file.display()
        ));
    }
}

/// Notes the stop ([`deny_templates::stopped`]): the bans the program makes until the
/// next start run their kill commands with that start's template. A failure is logged.
pub(super) fn note_stopped(log: &Logger, c: &Config) {
    if let Err(e) = deny_templates::stopped(&c.state_dir) {
        log.warn(&format!(
            "portsentry: ERROR: noting the stop in {}: {e}; an unban of a ban made while \
             stopped may remove the line an earlier KILL_HOSTS_DENY would make for its host",
            deny_templates::path(&c.state_dir).display(),
        ));
    }
}

/// Runs the undo steps of a lifted ban (UNKILL_ROUTE, the hosts.deny line,
/// UNKILL_RUN_CMD) in the background, and releases its hosts: a scan from one of them is
/// acted on again.
pub(super) fn spawn_undo(shared: &Arc<Shared>, ban: Ban, reason: BanEnd) {
    let place = undo_place(shared, &ban);
    spawn_undo_in(shared, ban, reason, place);
}

/// [`spawn_undo`] in a place of the host's line taken before ([`undo_place`]).
pub(super) fn spawn_undo_in(
    shared: &Arc<Shared>,
    ban: Ban,
    reason: BanEnd,
    place: Option<UndoPlace>,
) {
    shared.metrics.ban_removed(reason);
    let net = ban.net;
    // In the host's line before the host is released: the kill commands of its next ban
    // run after these undo steps.
    run_undo_steps(shared, ban, place);
    shared.handled.lock().expect("handled lock").release(&net);
}

/// The place of a lifted ban's undo steps in its host's line, `None` when it has none
/// ([`Ban::has_undo`]). Taken where the ban is lifted (the book held: only the jobs'
/// lock is taken here), so that a response to a ban the program makes of the host as
/// soon as the lift reaches the kernel comes after it in the line.
pub(super) fn undo_place(shared: &Arc<Shared>, ban: &Ban) -> Option<UndoPlace> {
    let crowdsec_kills = shared.crowdsec.as_ref().is_some_and(|f| f.kill_commands());
    ban.has_undo(crowdsec_kills).then(|| UndoPlace {
        place: shared.jobs.line_up(ban.net.addr()),
        crowdsec_kills,
    })
}

/// A place in a host's line for a ban's undo steps ([`undo_place`]).
pub(super) struct UndoPlace {
    place: super::jobs::Place,
    crowdsec_kills: bool,
}

/// Runs the undo steps of `ban` in the background, and nothing else: a ban another
/// replaced (its network stays banned, by a ban that ran no kill commands).
///
/// Each is a response job ([`super::jobs`]): a mass expiry or `unban --all` runs
/// MAX_PARALLEL_JOBS shells at a time, not one per ban at once; the host's kill
/// commands asked for before run first, those of its next ban after; and a stop waits
/// for the undo steps asked for before it, as for the responses: the lift is in the
/// journal already, and an undo cut short would never run again.
pub(super) fn spawn_undo_steps(shared: &Arc<Shared>, ban: Ban) {
    let place = undo_place(shared, &ban);
    run_undo_steps(shared, ban, place);
}

/// Runs the undo steps of `ban` in `place` (none: nothing to undo).
fn run_undo_steps(shared: &Arc<Shared>, ban: Ban, place: Option<UndoPlace>) {
    let Some(UndoPlace {
        place,
        crowdsec_kills,
    }) = place
    else {
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let Some(_turn) = place.turn().await else {
            return;
        };
        let eff = shared.eff();
        // After the response before it in the line: what it ran, when it stopped short.
        let ran = shared
            .cut_short
            .lock()
            .expect("cut-short lock")
            .remove(&(ban.net, crate::bans::unix_ms(ban.since)));
        execute::undo(
            &shared.log,
            &shared.metrics,
            &eff.config,
            &ban,
            crowdsec_kills,
            ran,
        )
        .await;
        // Done (a crash before this is on disk runs them again at the next start,
        // unless a later ban of the host is in force: [`Book::cut_short_undos`]).
        shared.book().undone(&ban);
    });
}

/// Runs the undo steps of the bans lifted before the last stop (or a crash) whose steps
/// had not all run ([`Book::cut_short_undos`]), each first in its host's line (call it
/// before any other job is lined up). Its steps were due when the ban ended: they run
/// whatever CROWDSEC_KILL_COMMANDS says now.
pub(super) fn spawn_cut_short_undos(shared: &Arc<Shared>, bans: Vec<Ban>, superseded: Vec<Ban>) {
    super::notice_each(
        &shared.log,
        superseded.iter().map(|ban| {
            format!(
                "portsentry: not running the undo steps of an earlier ban of {}, which the \
                 last stop cut short: the host is banned again, and the undo steps of its ban \
                 in force undo both",
                ban.net
            )
        }),
        |n| {
            format!(
                "portsentry: not running the undo steps of earlier bans of {n} hosts, which \
                 the last stop cut short: each is banned again, and the undo steps of its ban \
                 in force undo both"
            )
        },
    );
    super::notice_each(
        &shared.log,
        bans.iter().map(|ban| {
            format!(
                "portsentry: running the undo steps of the ban of {}, which the last stop cut \
                 short",
                ban.net
            )
        }),
        |n| {
            format!("portsentry: running the undo steps of {n} bans, which the last stop cut short")
        },
    );
    for ban in bans {
        let place = UndoPlace {
            place: shared.jobs.line_up(ban.net.addr()),
            crowdsec_kills: true,
        };
        run_undo_steps(shared, ban, Some(place));
    }
}

/// Applies the ban guard of the configuration in force to the bans in force (at start,
/// after a reload, when this host's addresses change): a ban wholly inside a protected
/// network is lifted and its undo steps run; a ban that covers protected networks stays,
/// and the log says which addresses the kernel spares. `when` goes into the log lines.
pub(super) fn enforce_guard(shared: &Arc<Shared>, when: &str) {
    let swept = {
        let mut book = shared.book();
        book.set_guard(Guard::new(&shared.eff()));
        book.sweep()
    };
    for (net, refusal, e) in swept.failed {
        let meanwhile = match refusal {
            Refusal::TooWide { .. } => "it is too wide, and stays in force until then",
            Refusal::Protected { .. } => {
                "it lies inside a protected network; the kernel spares that network's \
                 packets meanwhile"
            }
        };
        shared.log.warn(&format!(
            "portsentry: lifting the ban of {net} {when} failed (tried again at the guard's \
             next change; {meanwhile}): {e:#}"
        ));
    }
    for (ban, refusal) in swept.lifted {
        shared.log.warn(&format!(
            "portsentry: lifted the ban of {} {when}: {}",
            ban.net,
            refusal.reason()
        ));
        // Our decision goes too, as at an operator's unban: the host is trusted here now.
        // (Written to the reports file at the next housekeeping: at start, before the
        // last run's file is read back.)
        super::crowdsec::report_unban(shared, &ban);
        spawn_undo(shared, ban, BanEnd::Protected);
    }
    for (net, spared) in swept.spared {
        for (p, why) in spared {
            shared.log.warn(&format!(
                "portsentry: the ban of {net} does not drop {p} ({why}), {when}"
            ));
        }
    }
    if let Err(e) = shared.book().persist() {
        shared.log.warn(&format!("portsentry: {e:#}"));
    }
}

/// Bans the scanners that waited for the budget, expires bans, writes the blocked files
/// when bans changed (and compacts the journal when it has grown), keeps the program's
/// budget seconds on the wall clock, the ports and protocols this host serves and the
/// always-ignored addresses current, counts tracked sources.
pub(super) fn housekeeping(shared: &Arc<Shared>) {
    respond::drain_waiting(shared);
    super::detect::recover_lost_bans(shared);
    let now = SystemTime::now();
    // The CrowdSec decisions first, held until those behind the expired bans are put in
    // force (`crowdsec::after_expiry`).
    let decisions = super::crowdsec::decisions(shared);
    // One hold of the book for both: a ban of the same network made in between (the
    // control socket's) would be lifted as expired.
    let mut book = shared.book();
    let expired = book.store.expired(now);
    let (lifted, failed) = book.lift_many(&expired);
    // Lined up before the book is let go (see `undo_place`).
    let places: Vec<_> = lifted.iter().map(|b| undo_place(shared, b)).collect();
    drop(book);
    if !expired.is_empty() {
        for (net, e) in failed {
            shared
                .log
                .warn(&format!("portsentry: removing the ban of {net}: {e:#}"));
        }
        for (b, place) in lifted.iter().zip(places) {
            shared
                .log
                .notice(&format!("portsentry: ban of {} expired", b.net));
            spawn_undo_in(shared, *b, BanEnd::Expired, place);
        }
        super::crowdsec::after_expiry(shared, decisions, &lifted);
    } else {
        drop(decisions);
    }
    let s = shared.clone();
    let compacted = move |r: anyhow::Result<u64>| match r {
        Ok(bytes) => s.log.notice(&format!(
            "portsentry: ban journal compacted to {bytes} bytes"
        )),
        Err(e) => s
            .log
            .warn(&format!("portsentry: compacting the ban journal: {e:#}")),
    };
    if let Err(e) = shared.book().flush(compacted) {
        shared.log.warn(&format!("portsentry: {e:#}"));
    }
    watch_links(shared);
    follow_wall_clock(shared);
    super::crowdsec::write_status(shared);
    super::crowdsec::save_reports(shared);
    let eff = shared.eff();
    // The hooks' count before the listeners are read: a listen between the two leaves
    // the bitmap untrusted until the next look.
    let seen = shared
        .book()
        .dp
        .as_ref()
        .and_then(|dp| dp.tcp_listens_seen());
    let services = configure::Services::read(seen);
    if let Err(e) = services.and_then(|served| match shared.book().dp.as_mut() {
        Some(dp) => configure::write_services(dp, &eff, &served),
        None => Ok(()),
    }) {
        shared.log.warn(&format!(
            "portsentry: updating the ports and protocols this host serves: {e:#}"
        ));
    }
    let read = shared.routes.lock().expect("routes lock").poll();
    let now = match read {
        Read::Fresh(gateways) => localaddrs::with_gateways(gateways),
        Read::Unchanged => localaddrs::always_ignored_keeping_gateways(&eff.always_ignored),
        Read::Failed { error, first } => {
            if first {
                shared.log.warn(&format!(
                    "portsentry: {error:#}; the gateways read before stay protected, and the \
                     routes are read again"
                ));
            }
            localaddrs::always_ignored_keeping_gateways(&eff.always_ignored)
        }
    };
    let retrying = || {
        shared
            .addresses_refused
            .lock()
            .expect("addresses lock")
            .is_some()
    };
    match now {
        Ok(now) if now != eff.always_ignored || retrying() => {
            let changed = now != eff.always_ignored;
            let mut new = (*eff).clone();
            new.always_ignored = now;
            let r = match shared.book().dp.as_mut() {
                Some(dp) => dp.replace_ignore(&new.ignored_nets(), &new.single_source_nets()),
                None => Ok(()),
            };
            let mut refused = shared.addresses_refused.lock().expect("addresses lock");
            match r {
                Ok(()) => *refused = None,
                Err(e) => {
                    if refused.as_ref() != Some(&new.always_ignored) {
                        shared.log.warn(&format!(
                            "portsentry: this host's addresses or the gateways of its routes \
                             changed, and the kernel's ignore list cannot take them (tried \
                             again every second): {e:#}; until it can, the guard refuses bans \
                             of them all the same, and lifts a ban the program makes of one"
                        ));
                        *refused = Some(new.always_ignored.clone());
                    }
                }
            }
            drop(refused);
            // The guard (and the daemon's own ignore check) follows the host whether or
            // not the kernel's list could.
            if changed {
                shared.set_eff(new);
                enforce_guard(
                    shared,
                    "now that this host's addresses or the gateways of its routes changed",
                );
            }
        }
        Ok(_) => {}
        Err(e) => shared.log.warn(&format!("portsentry: {e:#}")),
    }
    // This host's addresses as they stand now (written only when they changed).
    let local = localaddrs::local_destinations(&shared.eff().always_ignored);
    if let Some(Err(e)) = shared
        .book()
        .dp
        .as_mut()
        .map(|dp| dp.write_local(local.as_deref()))
    {
        shared.log.warn(&format!(
            "portsentry: writing this host's addresses into the kernel: {e:#}"
        ));
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

/// Moves the program's budget seconds, and the kernel's deadlines of the timed bans,
/// with a step of the wall clock since they were set.
fn follow_wall_clock(shared: &Shared) {
    let step = match shared.book().dp.as_mut() {
        Some(dp) => dp.follow_wall_clock(configure::wall_offset_ns()),
        None => return,
    };
    match step {
        Ok(Some(ns)) => {
            let took = std::time::Instant::now();
            // The bans' ends on record are wall-clock times (a decision's too): the
            // kernel's deadlines are made theirs again.
            let rebased = shared.book().rebase_deadlines();
            let step = format!(
                "portsentry: the wall clock was stepped by {:.3} s; MAX_BANS_PER_SEC's \
                 seconds in the kernel follow it",
                ns as f64 / 1e9
            );
            match rebased {
                Ok(n) => shared.log.notice(&format!(
                    "{step}, and so do the kernel's deadlines of {n} timed bans (written in \
                     {:.2?})",
                    took.elapsed()
                )),
                Err(e) => {
                    shared.log.notice(&step);
                    shared.log.warn(&format!(
                        "portsentry: writing the timed bans' deadlines after the step: {e:#}; \
                         the kernel's are off by the step until the next start"
                    ));
                }
            }
        }
        Ok(None) => {}
        Err(e) => shared.log.warn(&format!("portsentry: {e:#}")),
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
pub(super) fn snapshot(shared: &Shared) -> Snapshot {
    let eff = shared.eff();
    let book = shared.book();
    Snapshot {
        counters: book
            .dp
            .as_ref()
            .and_then(|dp| dp.counters().ok())
            .unwrap_or_default(),
        bans_active: book.store.len() as u64,
        bans_capacity: u64::from(shared.map_sizes.0),
        sources_tracked: shared.sources_tracked.lock().expect("sources lock").0,
        sources_capacity: u64::from(shared.map_sizes.1),
        ignored_networks: eff.ignored_nets().len() as u64,
        crowdsec: shared.crowdsec.as_ref().map(|f| f.link.get()),
    }
}
