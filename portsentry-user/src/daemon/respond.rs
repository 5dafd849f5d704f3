//! The response to a scanner: admitted within MAX_BANS_PER_SEC ([`act`]), then, off
//! the event loop, the attackalert line, the planned steps in PortSentry's order (the
//! XDP ban through the ban book, the rest through the action executor) and the history
//! line ([`respond`]).

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use portsentry_common::maps::BanOrigin;

use super::{Mark, Shared, admission::Admit, escalation, event::ProbeEvent, jobs::Seated};
use crate::{
    actions::{self, Step, Target, execute::run_step},
    bans::{Cause, ScanCause, book::LiftedMeanwhile, guard::Refusal},
    config::BlockMode,
    config::effective::Effective,
    kernel::addr,
    kinds::{ModeToken, Protocol},
    report::{alert, history},
};

/// How long a reverse lookup may take before the address is logged instead.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the response to a host. A ban takes one of this second's MAX_BANS_PER_SEC
/// here (the only place it is taken), and the ban is dated with the same instant; a
/// scanner over the budget waits for the next seconds.
pub(super) fn act(
    shared: &Arc<Shared>,
    eff: &Arc<Effective>,
    ev: ProbeEvent,
    mode: ModeToken,
    block: BlockMode,
) {
    let now = SystemTime::now();
    if block == BlockMode::Block {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let limit = eff.config.max_bans_per_sec;
        // One budget with the program's own bans. When there is room, the ban is shown
        // to the program before the program's are read again, as the program adds its
        // own before it reads ours: of two bans racing for the second's last place, one
        // may be refused too many, never one let through too many (read first, both
        // could take it). A budget already spent is seen by the first read alone.
        let mut admission = shared.admission.lock().expect("admission lock");
        let before = admission.used_in(secs);
        let kernel_bans = || match shared.book().dp.as_ref() {
            Some(dp) => dp.kernel_bans_in(secs).unwrap_or(0),
            None => 0,
        };
        let share = |used: u32| {
            if let Some(dp) = shared.book().dp.as_mut()
                && let Err(e) = dp.share_ban_budget(secs, used)
            {
                shared.log.warn(&format!("portsentry: {e:#}"));
            }
        };
        let mut kernel = kernel_bans();
        let reserve = limit != 0 && before.saturating_add(kernel) < limit;
        if reserve {
            share(before + 1);
            kernel = kernel_bans();
        }
        let admit = admission.admit(limit, secs, kernel, ev, mode);
        match (reserve, admit == Admit::Now) {
            (true, false) => share(before),
            (false, true) => share(admission.used_in(secs)),
            _ => {}
        }
        drop(admission);
        if let Admit::Wait { first, new } = admit {
            // A scanner, not each of its events while it waits.
            if new {
                shared.metrics.ban_refused();
            }
            if first {
                shared.log.warn(&format!(
                    "portsentry: MAX_BANS_PER_SEC ({limit}) reached; the scanners beyond it \
                     are banned in the next seconds, the most persistent first"
                ));
            }
            return;
        }
    }
    mark_handled(shared, &ev, block == BlockMode::Block);
    let place = shared.jobs.line_up(ev.ip);
    let started = start(shared, eff, &ev, mode, block, now, true);
    let shared = shared.clone();
    let eff = eff.clone();
    tokio::spawn(async move {
        let Some(seated) = place.seat().await else {
            return;
        };
        respond(&shared, &eff, ev, mode, block, now, started, seated).await;
    });
}

/// Starts the response to a source the program banned itself at the trigger (within the
/// MAX_BANS_PER_SEC budget the program and the daemon share): the same as to the
/// daemon's own ban, dated when the kernel made it, with the XDP step already done.
pub(super) fn act_banned(
    shared: &Arc<Shared>,
    eff: &Arc<Effective>,
    ev: ProbeEvent,
    mode: ModeToken,
) {
    mark_handled(shared, &ev, true);
    let since = crate::clock::to_system(ev.ts_ns);
    let place = shared.jobs.line_up(ev.ip);
    let shared = shared.clone();
    let eff = eff.clone();
    tokio::spawn(async move {
        let Some(seated) = place.seat().await else {
            return;
        };
        // In force already: recorded when the job has its slot (an unban meanwhile
        // lifts it as a ban not yet recorded).
        let started = start(&shared, &eff, &ev, mode, BlockMode::Block, since, false);
        respond(
            &shared,
            &eff,
            ev,
            mode,
            BlockMode::Block,
            since,
            started,
            seated,
        )
        .await;
    });
}

/// Bans the scanners that waited for the budget, the most persistent first.
pub(super) fn drain_waiting(shared: &Arc<Shared>) {
    let eff = shared.eff();
    let limit = eff.config.max_bans_per_sec;
    let n = if limit == 0 {
        usize::MAX
    } else {
        limit as usize
    };
    let best = shared
        .admission
        .lock()
        .expect("admission lock")
        .take_waiting(n);
    for (ev, _) in best {
        if shared.is_handled(ev.ip, ev.proto()) || eff.is_ignored(ev.ip) {
            continue;
        }
        // As the configuration in force says (a reload may have come while it waited):
        // reported only, its command run, or not watched any more.
        let Some(mode) = eff.mode_token(ev.proto()) else {
            continue;
        };
        act(shared, &eff, ev, mode, eff.block_mode(ev.proto()));
    }
}

/// The name a host was logged under, or its address.
pub(super) fn cached_name(shared: &Shared, ip: IpAddr) -> String {
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
        Ok(Ok(Ok(n))) => alert::sanitize_hostname(&n).unwrap_or_else(|| ip.to_string()),
        _ => ip.to_string(),
    };
    let mut names = shared.names.lock().expect("names lock");
    if names.len() > 10_000 {
        names.clear();
    }
    names.insert(ip, name.clone());
    name
}

/// What a response did before it waited for its slot of the pool ([`start`]).
struct Started {
    /// The host's response is running (escalation leaves its ban alone) until dropped.
    running: escalation::Running,
    /// The XDP ban, when it was put (or found refused or made already) at the start.
    early: Option<Ban>,
}

/// The start of a response: the host is marked running and, with `ban_now`, the XDP
/// ban put when it comes first. [`act`] starts a response before its job waits for a
/// slot of the pool: the daemon's ban does not wait for the kill commands of other
/// hosts (sixteen that hang, or a long queue of them, kept the scanner unbanned for
/// as long).
fn start(
    shared: &Arc<Shared>,
    eff: &Effective,
    ev: &ProbeEvent,
    mode: ModeToken,
    block: BlockMode,
    now: SystemTime,
    ban_now: bool,
) -> Started {
    let target = Target::scan(ev.ip, ev.port, mode);
    let steps = actions::plan(&eff.config, block, &target);
    let first = steps.first() == Some(&Step::XdpBan);
    let running = escalation::Running::new(shared, ev.ip);
    let early = (ban_now && first).then(|| scan_ban(shared, eff, ev, mode, now, &steps));
    Started { running, early }
}

/// Acts on one host, in the configured order, from what [`start`] did; `now` is when
/// it was admitted. A scan ban may then escalate to the host's network
/// ([`escalation::after_ban`]).
#[allow(clippy::too_many_arguments)] // the response's event and what its start did
async fn respond(
    shared: &Arc<Shared>,
    eff: &Effective,
    ev: ProbeEvent,
    mode: ModeToken,
    block: BlockMode,
    now: SystemTime,
    started: Started,
    mut seated: Seated,
) {
    let c = &eff.config;
    let target = Target::scan(ev.ip, ev.port, mode);
    let steps = actions::plan(c, block, &target);
    let Started { running, mut early } = started;
    let mut banned = false;
    // The kill steps run so far.
    let mut ran = actions::Ran::default();
    // The XDP ban does not wait for the name lookup when it comes first. When a step
    // comes before it (KILL_RUN_CMD_FIRST), a ban the guard refuses or the operator
    // lifted meanwhile (while the job waited for its slot) is found out before that
    // step runs against the host.
    if early.is_none()
        && (steps.first() == Some(&Step::XdpBan)
            || (steps.contains(&Step::XdpBan) && {
                let book = shared.book();
                book.would_refuse(&ev.source, ev.kernel_banned) || book.holds(&ev.source)
            }))
    {
        early = Some(scan_ban(shared, eff, &ev, mode, now, &steps));
    }
    let name = resolve(shared, eff, ev.ip).await;
    if early == Some(Ban::Done) && name != ev.ip.to_string() {
        // Not a ban made since in its place (the operator's, once this one was lifted).
        let mut book = shared.book();
        if book.holds(&ev.source) {
            book.set_name(&ev.source, &name);
        }
    }
    let log = &shared.log;
    log.notice(&alert::attack_alert(
        ev.scan_type,
        ev.tcp_flags,
        &name,
        ev.ip,
        ev.port,
    ));
    if block == BlockMode::ReportOnly {
        log.notice(&alert::ignoring_response(ev.proto()));
    }
    // The host's undo steps of a ban lifted before this one end first (a refused
    // response too: ended before them, it would let the host's next job start while
    // they still run).
    seated.after_the_job_before().await;
    // Put before the job had its slot ([`start`]) and lifted since (an operator's unban,
    // its expiry): no kill command runs against the host. (A KILL_RUN_CMD without an
    // UNKILL_RUN_CMD would keep its effect on a host no longer banned.)
    if early == Some(Ban::Done) && !shared.book().holds(&ev.source) {
        log.notice(&format!(
            "portsentry: the ban of {} ended before its kill commands ran; they do not run",
            ev.source
        ));
        cut_short(shared, &ev.source, now, actions::Ran::default());
        return;
    }
    // A response without a ban (BLOCK_*="2") has nothing for the guard to refuse: it is
    // asked here, before KILL_RUN_CMD runs against a host protected since the scan.
    if !steps.is_empty() && !steps.contains(&Step::XdpBan) {
        let refusal = shared.book().refusal(&addr::host_net(ev.ip));
        if let Some(r) = refusal {
            log.warn(&format!(
                "portsentry: not running KILL_RUN_CMD against {}: {}",
                ev.ip,
                r.reason()
            ));
            release(shared, ev.ip);
            return;
        }
    }
    // Refused, lifted or banned already: no step runs against the host.
    match early {
        Some(Ban::Refused) => return,
        Some(Ban::Already) => {
            log.notice(&alert::already_blocked(&name, ev.ip));
            return;
        }
        _ => {}
    }
    for (i, step) in steps.iter().enumerate() {
        if *step == Step::XdpBan {
            match early
                .take()
                .unwrap_or_else(|| scan_ban(shared, eff, &ev, mode, now, &steps))
            {
                Ban::Done => banned = true,
                // The guard protects the host, the operator lifted the ban, or another
                // ban of the host came, while KILL_RUN_CMD ran before it; or the ban
                // failed (PS_BANS full), and with no ban in force nothing would ever
                // undo a kill command (a route or a hosts.deny line kept for good):
                // what ran is undone (UNKILL_RUN_CMD), and no other kill command runs.
                stopped @ (Ban::Failed | Ban::Refused | Ban::Already) => {
                    if stopped == Ban::Failed {
                        log.warn(&format!(
                            "portsentry: not running the kill commands against {}: its XDP \
                             ban failed, and they would never be undone",
                            ev.ip
                        ));
                    }
                    if i > 0 {
                        for undo in actions::undo_plan(c, &[], &target) {
                            if matches!(undo, Step::RunCmd(_)) {
                                run_step(&shared.log, &shared.metrics, c, ev.ip, &undo, true).await;
                            }
                        }
                    }
                    return;
                }
            }
            // A source counted by its network (SOURCE_PREFIX_V6) is banned with it: the
            // line names the network (the other lines its address, as PortSentry's).
            let blocked = if crate::kernel::addr::is_host(&ev.source) {
                ev.ip.to_string()
            } else {
                ev.source.to_string()
            };
            log.notice(&format!(
                "attackalert: Host {blocked} has been blocked via XDP drop"
            ));
            // The kill commands that follow run once the ban is in the journal on disk
            // (one fsync, shared with the bans made meanwhile); the blocked files follow
            // within a second (housekeeping).
            let ticket = shared.book().ticket();
            if let Some((journal, seq)) = ticket
                && let Err(e) = journal.wait_async(seq).await
            {
                log.warn(&format!(
                    "portsentry: the ban of {blocked} may not survive a reboot: {e:#}"
                ));
            }
        } else {
            // The host protected since the response began (the ignore list reloaded while
            // the name was looked up or a command ran): no kill command left runs against
            // it. A ban of the host alone was lifted by the guard, and its undo steps
            // follow in the host's line; a wider ban (a SOURCE_PREFIX_V6 network) stays,
            // and the kernel spares the host.
            if let Some(r) = shared.book().refusal(&addr::host_net(ev.ip)) {
                log.warn(&format!(
                    "portsentry: not running the kill commands left against {}: {}",
                    ev.ip,
                    r.reason()
                ));
                // Its ban's undo steps undo those that ran (none before the ban was put).
                if banned {
                    cut_short(shared, &ev.source, now, ran);
                }
                banned = false;
                break;
            }
            run_step(&shared.log, &shared.metrics, c, ev.ip, step, false).await;
            ran.add(step);
        }
    }
    let line = history::history_line(SystemTime::now(), &name, ev.ip, ev.port, Some(ev.proto()));
    if let Err(e) = history::append_history(&c.history_file, &line).await {
        log.warn(&format!(
            "portsentry: could not write the history file: {e}"
        ));
    }
    // Done with the ban's kill commands (run, or given up): the next start does not run
    // them ([`resume`]). Nothing when the ban is not this response's.
    shared.book().kills_done(&ev.source, now);
    // This host's kill steps are done: its ban may be replaced.
    drop(running);
    if banned {
        let scan = ScanCause {
            port: ev.port,
            scan_type: ev.scan_type,
            mode,
        };
        escalation::after_ban(shared, eff, ev.ip, scan);
    }
}

/// Runs the kill commands of bans in force whose response a stop or a crash cut short
/// (their record says they were due: [`crate::bans::Rec::KILLS_DUE`]), each in its host's
/// line: of a scan ban, the steps after the XDP ban as the configuration in force plans
/// them, then the history line; of a CrowdSec decision's ban (CROWDSEC_KILL_COMMANDS),
/// every step but the XDP ban, as [`super::crowdsec`] runs them. At least once: steps
/// that had run may run again (a second `route add` fails harmlessly).
pub(super) fn resume(shared: &Arc<Shared>, bans: Vec<crate::bans::Ban>) {
    // A decision's commands with CROWDSEC_KILL_COMMANDS turned off (or the link): none
    // runs, nor its undo steps when the ban ends.
    let crowdsec_kills = shared.crowdsec.as_ref().is_some_and(|f| f.kill_commands());
    let (bans, off): (Vec<_>, Vec<_>) = bans
        .into_iter()
        .partition(|b| b.origin != BanOrigin::CrowdSec || crowdsec_kills);
    for ban in off {
        shared.book().kills_done(&ban.net, ban.since);
    }
    super::notice_each(
        &shared.log,
        bans.iter().map(|ban| {
            format!(
                "portsentry: running the kill commands of the ban of {}, whose response the \
                 last stop cut short",
                ban.net
            )
        }),
        |n| {
            format!(
                "portsentry: running the kill commands of {n} bans, whose responses the last \
                 stop cut short"
            )
        },
    );
    for ban in bans {
        let ip = ban.net.addr();
        let decision = ban.origin == BanOrigin::CrowdSec;
        let place = shared.jobs.line_up(ip);
        // Escalation leaves the host's ban alone until its commands have run.
        let running = escalation::Running::new(shared, ip);
        let shared = shared.clone();
        tokio::spawn(async move {
            let Some(_turn) = place.turn().await else {
                return;
            };
            let eff = shared.eff();
            let c = &eff.config;
            let block = ban.proto.map_or(BlockMode::Block, |p| eff.block_mode(p));
            let target = Target::of_ban(&ban);
            let steps = actions::plan(c, block, &target);
            // A scan ban's steps after the XDP ban: those before it (KILL_RUN_CMD under
            // KILL_RUN_CMD_FIRST) ran before the ban was put. A decision's ban ran none.
            let after_ban = match steps.iter().position(|s| *s == Step::XdpBan) {
                Some(_) if decision => 0,
                Some(at) => at + 1,
                None => steps.len(),
            };
            let mut ran = 0;
            for step in steps[after_ban..].iter().filter(|s| **s != Step::XdpBan) {
                // Ended or replaced meanwhile (an operator's ban, which runs no kill
                // command), or its host protected now: no kill command left runs.
                let stop = {
                    let book = shared.book();
                    if book.kills_due(&ban) {
                        book.refusal(&addr::host_net(ip)).map(|r| r.reason())
                    } else {
                        Some("its ban ended or was replaced".to_owned())
                    }
                };
                if let Some(why) = stop {
                    shared.log.warn(&format!(
                        "portsentry: not running the kill commands left against {ip}: {why}"
                    ));
                    break;
                }
                run_step(&shared.log, &shared.metrics, c, ip, step, false).await;
                ran += 1;
            }
            // A decision's commands write no history line (a scan's response does).
            if ran > 0 && !decision {
                let name = shared.book().store.name_of(&ban).into_owned();
                let line = history::history_line(SystemTime::now(), &name, ip, ban.port, ban.proto);
                if let Err(e) = history::append_history(&c.history_file, &line).await {
                    shared.log.warn(&format!(
                        "portsentry: could not write the history file: {e}"
                    ));
                }
            }
            shared.book().kills_done(&ban.net, ban.since);
            drop(running);
        });
    }
}

/// Notes that the response to the ban of `net` made at `since` stopped after running
/// the kill steps `ran` alone: the ban's undo steps undo those alone.
fn cut_short(shared: &Shared, net: &ipnet::IpNet, since: SystemTime, ran: actions::Ran) {
    shared
        .cut_short
        .lock()
        .expect("cut-short lock")
        .insert((*net, crate::bans::unix_ms(since)), ran);
}

/// Marks `ev`'s host as acted on for its protocol, or for both when the response bans
/// it (`bans`): the ban drops every packet of the host, and a response to its scan of
/// the other protocol, racing this one before its ban is in the book, would take a
/// second place in MAX_BANS_PER_SEC and run the kill commands again.
fn mark_handled(shared: &Shared, ev: &ProbeEvent, bans: bool) {
    let (protos, mark): (&[Protocol], _) = if bans {
        (&[Protocol::Tcp, Protocol::Udp], Mark::Ban)
    } else {
        (&[ev.proto()], Mark::Scan)
    };
    let mut handled = shared.handled.lock().expect("handled lock");
    for proto in protos {
        handled.insert(ev.ip, *proto, mark);
    }
}

/// Forgets that `ip` was acted on: its next scan is acted on again.
fn release(shared: &Shared, ip: IpAddr) {
    shared
        .handled
        .lock()
        .expect("handled lock")
        .release(&ipnet::IpNet::from(ip));
}

/// What became of a scanner's XDP ban.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ban {
    /// In force.
    Done,
    /// Not in force (the ban map is full): the response stops, as nothing would undo
    /// its kill commands.
    Failed,
    /// Refused by the ban guard (the host is protected): the response stops.
    Refused,
    /// Another ban of the same network came first (the operator's, a CrowdSec
    /// decision's, or another response's, made while this one waited): it stays as it
    /// is, and the response stops, as PortSentry stops for a host already blocked.
    Already,
}

/// Puts the XDP ban of a scanner in force, dated `now` (logged when it is not), with the
/// kill commands among the response's `steps` due until the response ends.
fn scan_ban(
    shared: &Shared,
    eff: &Effective,
    ev: &ProbeEvent,
    mode: ModeToken,
    now: SystemTime,
    steps: &[Step],
) -> Ban {
    let mut book = shared.book();
    if book.holds(&ev.source) {
        return Ban::Already;
    }
    let cause = Cause::Scan(ScanCause {
        port: ev.port,
        scan_type: ev.scan_type,
        mode,
    });
    let ban = book.new_ban(&eff.config, ev.source, cause, None, now);
    // A ban the program made at the trigger is in force already: taken over, or lifted
    // when the guard refuses it.
    // Those after the XDP ban: a step before it (KILL_RUN_CMD_FIRST) ran before it was
    // put.
    let kills_due = steps
        .iter()
        .skip_while(|s| **s != Step::XdpBan)
        .nth(1)
        .is_some();
    let put = if ev.kernel_banned {
        book.adopt(ban, kills_due)
    } else {
        book.put_scan(ban, kills_due)
    };
    // Its report queued with the book still held: an operator's unban of the ban,
    // which queues the deletion of its decision, comes after it.
    if put.is_ok() {
        super::crowdsec::report_ban(shared, &ban);
    }
    // Before the handled set is locked below (it locks the book in its turn).
    drop(book);
    // Refused by the guard, or lifted while the response waited: the response stops.
    let refused = put.as_ref().err().is_some_and(|e| {
        e.downcast_ref::<Refusal>().is_some() || e.downcast_ref::<LiftedMeanwhile>().is_some()
    });
    // Unbanned by the operator before it was recorded, or protected now (added to the
    // ignore list while the response waited): the host is released, as an unban
    // releases it, so that its next scan is acted on once nothing protects it (and a
    // ban the program makes then taken over, not left in the kernel unrecorded). While
    // it is protected the program does not count it. A ban that failed (PS_BANS full)
    // releases it too: its next reported probe tries again, and is banned once a ban
    // has expired; a flood of forged sources against a full map is not remembered
    // address by address. Only what this response marked is released: a scan of the
    // other protocol responded to before (BLOCK_UDP="2": its command run) is not acted
    // on again.
    if put.is_err() {
        shared
            .handled
            .lock()
            .expect("handled lock")
            .release_ban_marks(ev.ip);
    }
    match put {
        Ok(()) => {
            shared.metrics.ban_added(BanOrigin::Scan);
            return Ban::Done;
        }
        Err(e) if e.downcast_ref::<LiftedMeanwhile>().is_some() => {
            shared.log.notice(&format!("portsentry: {e}"));
        }
        Err(e) if refused && ev.kernel_banned => shared.log.warn(&format!(
            "portsentry: lifted the ban the kernel made of {}: {e:#}",
            ev.ip
        )),
        Err(e) if refused => shared
            .log
            .warn(&format!("portsentry: not banning {}: {e:#}", ev.ip)),
        Err(e) => {
            shared.metrics.ban_failed();
            shared.log.warn(&format!(
                "attackalert: ERROR: Could not block host {}: {e:#}",
                ev.ip
            ));
        }
    }
    if refused { Ban::Refused } else { Ban::Failed }
}
