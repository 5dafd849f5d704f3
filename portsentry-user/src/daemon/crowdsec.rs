//! The daemon's side of the CrowdSec link ([`crate::crowdsec`]): the Local API's decisions
//! go into the ban book as bans of origin `crowdsec` (through the ban guard: the ignore
//! list, loopback and this host's addresses win, and so does BAN_MIN_PREFIX_*), and our own
//! scan bans go out as alerts. KILL_* commands run for a CrowdSec ban of one address only
//! when CROWDSEC_KILL_COMMANDS is 1 (and then its UNKILL_* steps when it ends:
//! [`crate::bans::Ban::has_undo`]); a range runs none.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use portsentry_common::maps::BanOrigin;

use super::{
    Shared,
    jobs::Place,
    upkeep::{spawn_undo, spawn_undo_in, undo_place},
};
use crate::{
    actions::{self, Target, execute::run_step},
    bans::{Ban, guard::Refusal},
    config::{BlockMode, crowdsec::Settings},
    crowdsec::{
        api::Lapi,
        decisions::{Answer, Decision, Filter, Outcome},
        enforce::Bouncer,
        held::Held,
        link::{Enforced, Link},
        refused::Refused,
        report::{self, Item, Outbox, Reporter},
    },
    kinds::BanEnd,
    paths,
};

/// How much later than a ban's end a decision's may be and the ban still stand as it
/// is. A decision's end is computed as the time we asked plus the time left it carries,
/// counted when the Local API answered: the same decision in two answers gives ends
/// apart by the difference of the two answers' delays (seconds for a full answer of a
/// large list). Rewritten each time, every CrowdSec ban went back into the maps and the
/// journal at every full answer, and its end crept later.
const END_SLACK: Duration = Duration::from_secs(5);

/// Whether a ban ending at `current` (`None`: never) stands for a decision ending at
/// `end` ([`END_SLACK`]).
fn covers(current: Option<SystemTime>, end: SystemTime) -> bool {
    current.is_none_or(|c| c + END_SLACK >= end)
}

use super::LOG_EACH;
/// An answer of at least this many decisions is followed by a `malloc_trim`.
const TRIM_AFTER: usize = 1000;

/// The link's shared parts, in [`Shared`].
pub(super) struct Fleet {
    pub link: Arc<Link>,
    /// `None`: CROWDSEC_REPORT is 0.
    outbox: Option<Arc<Outbox>>,
    settings: Settings,
    /// What the stream's answers said, for the next answer and for our bans' expiry.
    decisions: Mutex<Decisions>,
}

/// The decisions the stream gave that are in force at the Local API.
#[derive(Default)]
pub(super) struct Decisions {
    /// The decisions that hold each network.
    held: Held,
    /// The decisions refused (by the guard) or that failed: counted once each, each
    /// network's refusal logged once while they stand.
    refused: Refused,
    /// The end of the longest decision on each network banned here by other means (a
    /// scan, the operator): when that ban expires first, the decision's ban takes its
    /// place at once ([`after_expiry`]), not at the next full answer.
    behind: HashMap<IpNet, SystemTime>,
}

impl Fleet {
    pub fn new(settings: &Settings) -> Fleet {
        Fleet {
            link: Arc::new(Link::new(
                &settings.url,
                settings.bouncer_key.is_some(),
                settings.machine.is_some(),
            )),
            outbox: settings
                .machine
                .as_ref()
                .map(|_| Arc::new(Outbox::default())),
            settings: settings.clone(),
            decisions: Mutex::new(Decisions::default()),
        }
    }

    /// CROWDSEC_KILL_COMMANDS, as the daemon started with it (the CROWDSEC_* settings take
    /// effect on restart only).
    pub fn kill_commands(&self) -> bool {
        self.settings.kill_commands
    }
}

/// Starts the bouncer and the reporter tasks (as configured).
pub(super) fn start(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let Some(fleet) = &shared.crowdsec else {
        return Ok(());
    };
    let s = &fleet.settings;
    let lapi = Lapi::new(&s.url)?;
    if let Some(key) = &s.bouncer_key {
        let bouncer = Bouncer {
            lapi: lapi.clone(),
            key: key.clone(),
            filter: Filter {
                origins: s.origins.clone(),
                scenarios_exclude: s.scenarios_exclude.clone(),
            },
            interval: s.interval,
            link: fleet.link.clone(),
            metrics: shared.metrics.clone(),
            log: shared.log.clone(),
        };
        let sh = shared.clone();
        tokio::spawn(bouncer.run(move |answer, full, asked| apply(&sh, answer, full, asked)));
    }
    if let (Some((machine, password)), Some(outbox)) = (&s.machine, &fleet.outbox) {
        // Before the task starts: the reports a stopped daemon left go first.
        let file = paths::crowdsec_reports_file(&shared.eff().config.state_dir);
        match outbox.restore(&file) {
            Ok((n, left_out)) => {
                for e in left_out {
                    shared
                        .log
                        .warn(&format!("portsentry: crowdsec: {e:#}; it is not sent"));
                }
                if n > 0 {
                    shared.log.notice(&format!(
                        "portsentry: crowdsec: {n} reports from before the restart queued ({})",
                        file.display()
                    ));
                }
            }
            Err(e) => shared.log.warn(&format!(
                "portsentry: crowdsec: the reports left from before the restart are not \
                 sent: {e:#}; the file is rewritten with the next report"
            )),
        }
        let reporter = Reporter {
            lapi,
            machine: machine.clone(),
            password: password.clone(),
            outbox: outbox.clone(),
            link: fleet.link.clone(),
            metrics: shared.metrics.clone(),
            log: shared.log.clone(),
        };
        tokio::spawn(reporter.run());
    }
    shared.log.notice(&format!(
        "portsentry: crowdsec: Local API {}: enforcing its decisions {}, reporting our bans {}",
        s.url,
        if s.bouncer_key.is_some() { "on" } else { "off" },
        if s.machine.is_some() { "on" } else { "off" },
    ));
    Ok(())
}

/// At a start with the enforcement of decisions off (no CROWDSEC_LAPI_URL, or no bouncer
/// key): lifts the bans decisions made before, which no deletion at the Local API or
/// full answer would end any more (they would stay until they expire, for weeks for a
/// list). Turned on again, the first answer puts those still decided back.
pub(super) fn lift_when_off(shared: &Arc<Shared>) {
    if shared
        .crowdsec
        .as_ref()
        .is_some_and(|f| f.settings.bouncer_key.is_some())
    {
        return;
    }
    let (lifted, failed) = {
        let mut book = shared.book();
        let nets: Vec<IpNet> = book
            .store
            .records()
            .filter(|(_, rec)| rec.is_crowdsec())
            .map(|(net, _)| *net)
            .collect();
        book.lift_many(&nets)
    };
    for (net, e) in failed {
        shared.log.warn(&format!(
            "portsentry: crowdsec: removing the ban of {net}: {e:#}"
        ));
    }
    if lifted.is_empty() {
        return;
    }
    shared.log.notice(&format!(
        "portsentry: crowdsec: enforcing its decisions is off (no CROWDSEC_LAPI_URL, or no \
         bouncer key): lifted the bans its decisions made ({})",
        lifted.len()
    ));
    for b in lifted {
        spawn_undo(shared, b, BanEnd::Withdrawn);
    }
}

/// Queues the report of a ban we made from a scan (or an escalation).
pub(super) fn report_ban(shared: &Shared, ban: &Ban) {
    queue(shared, ban, |scenario| Item::Ban {
        net: ban.net,
        scenario,
        since: ban.since,
        expires: ban.expires,
    });
}

/// Queues the deletion of our decision for a scan ban the operator lifted (the caller
/// then writes the queue to its file, [`save_reports`]: lost at a restart, the deletion
/// would never be made and the ban would come back from our decision), or an escalation
/// replaced (written at the next housekeeping: the network's decision covers the host
/// meanwhile), or the ban guard lifted (the host protected now; at the next
/// housekeeping too).
pub(super) fn report_unban(shared: &Shared, ban: &Ban) {
    queue(shared, ban, |scenario| Item::Unban {
        net: ban.net,
        scenario,
    });
}

/// Writes the reports not yet sent to STATE_DIR's file when they changed
/// (housekeeping, once a second; an unban; the stop).
pub(super) fn save_reports(shared: &Shared) {
    let Some(outbox) = shared.crowdsec.as_ref().and_then(|f| f.outbox.as_ref()) else {
        return;
    };
    let file = paths::crowdsec_reports_file(&shared.eff().config.state_dir);
    if let Err(e) = outbox.save(&file) {
        shared.log.warn(&format!(
            "portsentry: crowdsec: the reports not yet sent may not survive a restart: {e:#}"
        ));
    }
}

/// Queues `item(scenario)` when reporting is on and `ban` is one we made from a scan.
fn queue(shared: &Shared, ban: &Ban, item: impl FnOnce(String) -> Item) {
    let Some(outbox) = shared.crowdsec.as_ref().and_then(|f| f.outbox.as_ref()) else {
        return;
    };
    if ban.origin == BanOrigin::Scan {
        outbox.push(item(report::scenario(
            ban.scan_type,
            ban.escalated.is_some(),
        )));
    }
}

/// Writes the link's state for `status` (housekeeping, once a second).
pub(super) fn write_status(shared: &Shared) {
    let dir = shared.eff().config.state_dir.clone();
    match &shared.crowdsec {
        Some(f) => {
            if let Err(e) = f.link.write(&dir) {
                shared
                    .log
                    .warn(&format!("portsentry: crowdsec: writing its state: {e}"));
            }
        }
        None => crate::crowdsec::link::remove(&dir),
    }
}

/// Enforces one answer of the stream (`full`: it lists everything in force, so the
/// CrowdSec bans it does not name are lifted), asked for at `asked`.
fn apply(shared: &Arc<Shared>, answer: Answer, full: bool, asked: SystemTime) {
    let Some(fleet) = &shared.crowdsec else {
        return;
    };
    let mut decisions = fleet.decisions.lock().expect("decisions lock");
    let Decisions {
        held,
        refused,
        behind,
    } = &mut *decisions;
    let now = SystemTime::now();
    let answer_len = answer.new.len() + answer.deleted.len() + answer.skipped.len();
    // Our decisions whose deletion is on its way (an operator's unban of our scan ban), or
    // was sent after this answer was asked for (the Local API may have read them first):
    // not put in force again.
    let withdrawing = fleet
        .outbox
        .as_ref()
        .map(|o| o.unbans_since(asked))
        .unwrap_or_default();
    let mut counts: BTreeMap<Outcome, u64> = BTreeMap::new();
    let mut lifted: Vec<Ban> = Vec::new();
    let mut added: Vec<Ban> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    // The refusals of networks not logged yet, and why (a full map refuses every
    // decision of a long list: logged up to `LOG_EACH`, then counted).
    let mut refusals: Vec<(Outcome, String)> = Vec::new();
    let changed;
    let places: Vec<_>;
    let kills: Vec<_>;
    {
        let mut book = shared.book();
        let ours = |b: &Option<Ban>| b.is_some_and(|b| b.origin == BanOrigin::CrowdSec);
        // A full answer names every decision again: what it counts is what it is the
        // first to give (a delta missed it), not each decision once more.
        let (held_before, refused_before) = if full {
            behind.clear();
            (std::mem::take(held), std::mem::take(refused))
        } else {
            Default::default()
        };
        let counted = |id: i64, held: &Held| !held.has_id(id) && !held_before.has_id(id);
        for d in &answer.deleted {
            refused.remove(d.id);
            let Some(net) = held.remove(d.id) else {
                continue;
            };
            behind.remove(&net);
            if ours(&book.store.get(&net)) {
                match book.lift(&net) {
                    Ok(Some(b)) => {
                        lifted.push(b);
                        *counts.entry(Outcome::Deleted).or_default() += 1;
                    }
                    Ok(None) => {}
                    Err(e) => warnings.push(format!("removing the ban of {net}: {e:#}")),
                }
            }
        }
        // One ban a network (the longest of its decisions in this answer), all put at
        // once: the maps are written in batches.
        let mut pending: Vec<(Ban, bool, Vec<&Decision>)> = Vec::new();
        let mut at: HashMap<IpNet, usize> = HashMap::new();
        for d in &answer.new {
            if withdrawing
                .get(&d.net)
                .is_some_and(|s| s.contains(&d.scenario))
            {
                continue;
            }
            let expires = asked + d.left;
            if let Some(&i) = at.get(&d.net) {
                let (ban, _, ds) = &mut pending[i];
                ban.expires = ban.expires.max(Some(expires));
                ds.push(d);
                continue;
            }
            let current = book.store.get(&d.net);
            if current.is_some() && !ours(&current) {
                // Ours (a scan, the operator's): it stays as it is, and the decision waits
                // behind it in case it ends first; our own decisions coming back end here.
                if counted(d.id, held) {
                    *counts.entry(Outcome::Duplicate).or_default() += 1;
                }
                held.add(d.id, d.net);
                let end = behind.entry(d.net).or_insert(expires);
                *end = (*end).max(expires);
                continue;
            }
            if let Some(b) = current
                && covers(b.expires, expires)
            {
                // A decision of a network in force by another: a duplicate too.
                if counted(d.id, held) {
                    *counts.entry(Outcome::Duplicate).or_default() += 1;
                }
                held.add(d.id, d.net);
                continue;
            }
            at.insert(d.net, pending.len());
            let ban = Ban::of_decision(d.net, current.map_or(now, |b| b.since), expires);
            pending.push((ban, current.is_none(), vec![d]));
        }
        // Counted once each: not a decision held before (a ban put back after the
        // operator's unban, a rewrite to a later end).
        let first: Vec<usize> = pending
            .iter()
            .map(|(_, _, ds)| ds.iter().filter(|d| counted(d.id, held)).count())
            .collect();
        let bans: Vec<Ban> = pending.iter().map(|(b, _, _)| *b).collect();
        let results = book.put_many(&bans);
        drop(bans);
        for (((ban, new, ds), result), first) in pending.into_iter().zip(results).zip(first) {
            match result {
                Ok(()) => {
                    for d in &ds {
                        held.add(d.id, d.net);
                        refused.remove(d.id);
                    }
                    if first > 0 {
                        *counts.entry(Outcome::Applied).or_default() += first as u64;
                    }
                    if new {
                        shared.metrics.ban_added(BanOrigin::CrowdSec);
                        added.push(ban);
                    }
                }
                Err(e) => {
                    let outcome = refusal_outcome(&e);
                    let first = ds
                        .iter()
                        .filter(|d| refused.insert(d.id, d.net) && !refused_before.contains(d.id))
                        .count();
                    if first > 0 {
                        *counts.entry(outcome).or_default() += first as u64;
                    }
                    // Logged before a full answer named a decision of it again: not again.
                    let standing = ds.iter().any(|d| refused_before.logged_with(d.id, &d.net));
                    if refused.log_once(ban.net) && !standing {
                        refusals.push((
                            outcome,
                            format!(
                                "not enforcing the decision on {} ({}, {}): {e:#}",
                                ban.net, ds[0].origin, ds[0].scenario
                            ),
                        ));
                    }
                }
            }
        }
        if full {
            let stale: Vec<IpNet> = book
                .store
                .records()
                .filter(|(net, rec)| rec.is_crowdsec() && !held.holds(net))
                .map(|(net, _)| *net)
                .collect();
            for net in stale {
                match book.lift(&net) {
                    Ok(Some(b)) => {
                        lifted.push(b);
                        *counts.entry(Outcome::Deleted).or_default() += 1;
                    }
                    Ok(None) => {}
                    Err(e) => warnings.push(format!("removing the ban of {net}: {e:#}")),
                }
            }
        }
        changed = full || !added.is_empty() || !lifted.is_empty() || !counts.is_empty();
        if changed {
            fleet.link.set_enforced(enforced(&book.store));
        }
        // The undo steps' places, then the kill commands', before the book is let go
        // (`upkeep::undo_place`).
        places = lifted.iter().map(|b| undo_place(shared, b)).collect();
        kills = kill_places(shared, &added);
    }
    drop(decisions);
    for (o, n) in &counts {
        fleet.link.count(*o, *n);
        shared.metrics.crowdsec_decision(*o, *n);
    }
    let log = &shared.log;
    for w in warnings {
        log.warn(&format!("portsentry: crowdsec: {w}"));
    }
    for line in refusal_lines(&refusals) {
        log.warn(&line);
    }
    for line in ban_lines(
        &added,
        "banned by a decision of the Local API",
        "bans put in force by decisions of the Local API",
    ) {
        log.notice(&line);
    }
    if answer_len >= TRIM_AFTER {
        // A large answer's parse (a JSON value per field of every decision) is freed:
        // give the pages back rather than keep them as free heap.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free memory of the allocator to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    // The undo steps first: an address whose decision was deleted and decided again in
    // this answer (lifted, then put back) has its old ban's UNKILL_* run before the new
    // ban's KILL_* (each address's jobs run in the order they are lined up).
    for (b, place) in lifted.into_iter().zip(places) {
        if added.len() <= LOG_EACH {
            log.notice(&format!(
                "portsentry: crowdsec: the ban of {} lifted, its decision deleted at the Local \
                 API",
                b.net
            ));
        }
        spawn_undo_in(shared, b, BanEnd::Withdrawn, place);
    }
    spawn_kills(shared, kills);
}

/// The decisions' lock, when the link is on: taken before the book, as [`apply`] does.
pub(super) fn decisions(shared: &Shared) -> Option<MutexGuard<'_, Decisions>> {
    shared
        .crowdsec
        .as_ref()
        .map(|f| f.decisions.lock().expect("decisions lock"))
}

/// Puts in force the decisions that waited behind bans of ours (a scan's, the
/// operator's) that expired (`ended`, the networks lifted): the address stays banned,
/// as a CrowdSec ban until the decision ends, rather than unbanned until the next full
/// answer. An operator's `unban` does not come here: a decision on it is enforced again
/// at the next full answer, as for any CrowdSec ban an operator lifts.
///
/// `decisions` ([`decisions`]) was taken before the book that lifted `ended`, and held
/// since: an answer applied in between would find no ban on such a network and put the
/// decision in force itself, as a new one.
pub(super) fn after_expiry(
    shared: &Arc<Shared>,
    decisions: Option<MutexGuard<'_, Decisions>>,
    ended: &[Ban],
) {
    let (Some(fleet), Some(mut decisions)) = (&shared.crowdsec, decisions) else {
        return;
    };
    if decisions.behind.is_empty() || ended.is_empty() {
        return;
    }
    let now = SystemTime::now();
    let mut book = shared.book();
    // Each network that ended, and for a network of ours (an escalation) the hosts it
    // covered: a million bans expiring at once cost a lookup each.
    let mut due: Vec<(IpNet, SystemTime)> = Vec::new();
    for e in ended {
        if let Some(end) = decisions.behind.get(&e.net) {
            due.push((e.net, *end));
        }
        if e.origin != BanOrigin::CrowdSec && e.net.prefix_len() < e.net.max_prefix_len() {
            due.extend(
                decisions
                    .behind
                    .iter()
                    .filter(|(net, _)| **net != e.net && e.net.contains(*net))
                    .map(|(net, end)| (*net, *end)),
            );
        }
    }
    due.sort_unstable();
    due.dedup();
    due.retain(|(net, _)| book.store.get(net).is_none());
    let mut bans = Vec::new();
    for (net, end) in due {
        decisions.behind.remove(&net);
        if end > now {
            bans.push(Ban::of_decision(net, now, end));
        } else {
            decisions.held.forget(&net);
        }
    }
    let results = book.put_many(&bans);
    let mut added = Vec::new();
    let mut refusals = Vec::new();
    let mut counts: BTreeMap<Outcome, u64> = BTreeMap::new();
    let Decisions { held, refused, .. } = &mut *decisions;
    for (ban, result) in bans.into_iter().zip(results) {
        match result {
            Ok(()) => {
                shared.metrics.ban_added(BanOrigin::CrowdSec);
                added.push(ban);
            }
            Err(e) => {
                // Its decisions stand refused, as an answer's would: counted once each,
                // and not logged again when the next full answer names them.
                // (No longer held: enforced later, they are counted as applied.)
                let outcome = refusal_outcome(&e);
                let ids = held.ids_of(&ban.net).to_vec();
                held.forget(&ban.net);
                let first = ids
                    .iter()
                    .filter(|id| refused.insert(**id, ban.net))
                    .count();
                if first > 0 {
                    *counts.entry(outcome).or_default() += first as u64;
                }
                if refused.log_once(ban.net) || ids.is_empty() {
                    refusals.push((
                        outcome,
                        format!(
                            "not enforcing the decision on {} after our ban of it expired: {e:#}",
                            ban.net
                        ),
                    ));
                }
            }
        }
    }
    if !added.is_empty() {
        fleet.link.set_enforced(enforced(&book.store));
    }
    let kills = kill_places(shared, &added);
    drop(book);
    drop(decisions);
    for (o, n) in &counts {
        fleet.link.count(*o, *n);
        shared.metrics.crowdsec_decision(*o, *n);
    }
    for line in refusal_lines(&refusals) {
        shared.log.warn(&line);
    }
    for line in ban_lines(
        &added,
        "stays banned by a decision of the Local API",
        "bans kept in force by decisions of the Local API after ours expired",
    ) {
        shared.log.notice(&line);
    }
    spawn_kills(shared, kills);
}

/// How a decision whose ban was not put is counted: refused by the guard, or failed.
fn refusal_outcome(e: &anyhow::Error) -> Outcome {
    if e.downcast_ref::<Refusal>().is_some() {
        Outcome::Protected
    } else {
        Outcome::Failed
    }
}

/// The log lines of the refusals of one answer, or of the decisions behind our bans that
/// expired together (each network's once while a decision on it stays refused): one
/// each up to [`LOG_EACH`], then one counting the rest by why (a full map refuses every
/// decision of a long list).
fn refusal_lines(refusals: &[(Outcome, String)]) -> Vec<String> {
    let rest = &refusals[refusals.len().min(LOG_EACH)..];
    let mut lines: Vec<String> = refusals[..refusals.len() - rest.len()]
        .iter()
        .map(|(_, w)| format!("portsentry: crowdsec: {w}"))
        .collect();
    if !rest.is_empty() {
        let protected = rest
            .iter()
            .filter(|(o, _)| *o == Outcome::Protected)
            .count();
        let failed = rest.len() - protected;
        let why: Vec<String> = [(protected, "refused by the ban guard"), (failed, "failed")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, why)| format!("{n} {why}"))
            .collect();
        lines.push(format!(
            "portsentry: crowdsec: not enforcing the decisions on {} more networks ({}); \
             `portsentry status` counts the decisions",
            rest.len(),
            why.join(", ")
        ));
    }
    lines
}

/// The log lines of the bans decisions put in force: one per ban (`each`, with its end)
/// up to [`LOG_EACH`] of them, else one line counting them (`many`).
fn ban_lines(added: &[Ban], each: &str, many: &str) -> Vec<String> {
    if added.len() > LOG_EACH {
        return vec![format!("portsentry: crowdsec: {} {many}", added.len())];
    }
    added
        .iter()
        .map(|b| {
            format!(
                "portsentry: crowdsec: {} {each}, until {}",
                b.net,
                b.expires
                    .map(|e| humantime::format_rfc3339_seconds(e).to_string())
                    .unwrap_or_default()
            )
        })
        .collect()
}

/// The places in their addresses' lines of the kill commands of the bans decisions put
/// in force (CROWDSEC_KILL_COMMANDS=1), taken with the book held, as the undo steps' are
/// (`upkeep::undo_place`): a ban lifted once the book is let go (expired, unbanned) has
/// its undo steps lined up after its kill commands, not before them (they would then
/// find nothing to undo, and the route and line would stay).
fn kill_places(shared: &Arc<Shared>, added: &[Ban]) -> Vec<(Ban, Place)> {
    let Some(fleet) = &shared.crowdsec else {
        return Vec::new();
    };
    let kills = fleet.kill_commands();
    added
        .iter()
        .filter(|b| b.has_undo(kills))
        .map(|b| (*b, shared.jobs.line_up(b.net.addr())))
        .collect()
}

/// Runs the kill commands of the bans decisions put in force, at their places
/// ([`kill_places`]): for each address (not a range) the steps `BLOCK_TCP=1` would run
/// but the XDP ban (in force already), in PortSentry's order, with `$PORT$` 0 and
/// `$MODE$` `crowdsec`, once the ban is in the journal on disk; off the stream's task,
/// within the response jobs' limit. Due until they have run ([`crate::bans::Rec::KILLS_DUE`]):
/// a start runs those a stop or a crash cut short ([`super::respond::resume`]).
fn spawn_kills(shared: &Arc<Shared>, kills: Vec<(Ban, Place)>) {
    for (ban, place) in kills {
        let shared = shared.clone();
        tokio::spawn(async move {
            let Some(mut seated) = place.seat().await else {
                return;
            };
            let ticket = shared.book().ticket();
            if let Some((journal, seq)) = ticket
                && let Err(e) = journal.wait_async(seq).await
            {
                shared.log.warn(&format!(
                    "portsentry: the ban of {} may not survive a reboot: {e:#}",
                    ban.net
                ));
            }
            seated.after_the_job_before().await;
            let eff = shared.eff();
            let target = Target::of_ban(&ban);
            for step in actions::plan(&eff.config, BlockMode::Block, &target) {
                run_step(
                    &shared.log,
                    &shared.metrics,
                    &eff.config,
                    target.ip,
                    &step,
                    false,
                )
                .await;
            }
            // Noted due in the journal with the ban: the next start does not run them.
            shared.book().kills_done(&ban.net, ban.since);
        });
    }
}

/// The CrowdSec bans in force, by kind.
fn enforced(store: &crate::bans::BanStore) -> Enforced {
    let mut e = Enforced::default();
    for (net, _) in store.records().filter(|(_, rec)| rec.is_crowdsec()) {
        let host = net.prefix_len() == net.max_prefix_len();
        let n = match (net, host) {
            (IpNet::V4(_), true) => &mut e.ip_v4,
            (IpNet::V6(_), true) => &mut e.ip_v6,
            (IpNet::V4(_), false) => &mut e.range_v4,
            (IpNet::V6(_), false) => &mut e.range_v6,
        };
        *n += 1;
    }
    e
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{Ban, LOG_EACH, Outcome, ban_lines, covers, refusal_lines};

    #[test]
    fn a_decision_seen_again_leaves_its_ban_as_it_is() {
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // The same decision, its end computed a little later or earlier.
        assert!(covers(Some(end), end + Duration::from_millis(2800)));
        assert!(covers(Some(end), end - Duration::from_secs(1)));
        assert!(covers(None, end), "a permanent ban");
        // A decision extended (a new one, hours longer).
        assert!(!covers(Some(end), end + Duration::from_secs(3600)));
    }

    /// A few bans are logged one by one, with their end; many at once (a million
    /// decisions behind our bans, expiring together) in one line.
    #[test]
    fn many_bans_put_in_force_at_once_are_counted_in_one_line() {
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let bans: Vec<Ban> = (0..=LOG_EACH as u8)
            .map(|i| {
                Ban::of_decision(
                    format!("198.51.100.{i}/32").parse().unwrap(),
                    SystemTime::UNIX_EPOCH,
                    end,
                )
            })
            .collect();
        assert_eq!(
            ban_lines(&bans[..1], "stays banned", "kept"),
            ["portsentry: crowdsec: 198.51.100.0/32 stays banned, until 2027-01-15T08:00:00Z"]
        );
        assert_eq!(
            ban_lines(&bans[..LOG_EACH], "stays banned", "kept").len(),
            LOG_EACH
        );
        assert_eq!(
            ban_lines(&bans, "stays banned", "kept"),
            [format!("portsentry: crowdsec: {} kept", LOG_EACH + 1)]
        );
    }

    /// A few refusals are logged one by one; beyond [`LOG_EACH`] (a full map refusing a
    /// long list) the rest in one line, counted by why.
    #[test]
    fn many_refusals_at_once_are_counted_in_one_line() {
        let refusal = |i: usize, o: Outcome| (o, format!("not enforcing {i}"));
        let few: Vec<_> = (0..LOG_EACH).map(|i| refusal(i, Outcome::Failed)).collect();
        let lines = refusal_lines(&few);
        assert_eq!(lines.len(), LOG_EACH);
        assert_eq!(lines[0], "portsentry: crowdsec: not enforcing 0");
        let many: Vec<_> = (0..LOG_EACH + 5)
            .map(|i| {
                let o = if i % 2 == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Protected
                };
                refusal(i, o)
            })
            .collect();
        let lines = refusal_lines(&many);
        assert_eq!(lines.len(), LOG_EACH + 1);
        assert_eq!(
            lines[LOG_EACH],
            "portsentry: crowdsec: not enforcing the decisions on 5 more networks (2 refused \
             by the ban guard, 3 failed); `portsentry status` counts the decisions"
        );
        assert!(refusal_lines(&[]).is_empty());
    }
}
