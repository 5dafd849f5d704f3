//! The ban book: one place that changes bans, keeping the kernel maps, the in-memory
//! store, the ban journal and the blocked files in step. The daemon, its control socket
//! and the CLI (when no daemon runs) all go through it.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use ipnet::IpNet;
use portsentry_common::maps::{BanEntry, BanOrigin};

use super::{
    Ban, BanStore, Cause, ban_duration,
    blocked::BlockedFiles,
    guard::{Guard, Refusal, Why},
    journal::Journal,
};
use crate::{config::Config, kernel::Dataplane, kinds::Protocol};

/// [`Book::adopt`] of a ban the kernel no longer holds: lifted (an operator's unban)
/// after the program made it and before the daemon took it over. Nothing is put back.
#[derive(Debug)]
pub struct LiftedMeanwhile {
    pub net: IpNet,
}

impl std::fmt::Display for LiftedMeanwhile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the ban the kernel made of {} was lifted before it was taken over; it is not \
             put back",
            self.net
        )
    }
}

impl std::error::Error for LiftedMeanwhile {}

pub struct Book {
    /// The kernel maps; `None` when nothing is loaded (CLI with no pinned maps): the
    /// state file alone is then changed, and the next start applies it.
    pub dp: Option<Dataplane>,
    pub store: BanStore,
    /// Where every change is recorded (`None`: in memory only, for tests).
    journal: Option<Journal>,
    blocked: BlockedFiles,
    /// What no ban may cut off.
    guard: Guard,
    /// CROWDSEC_KILL_COMMANDS in force (a Local API named): a decision's ban of a host
    /// ran kill commands, whose undo steps are due when it ends ([`Ban::has_undo`]).
    crowdsec_kills: bool,
}

/// What [`Book::sweep`] found among the bans in force.
#[derive(Debug, Default)]
pub struct Swept {
    /// Bans wholly inside protected networks, and CrowdSec ranges now too wide: lifted
    /// (their undo steps are the caller's).
    pub lifted: Vec<(Ban, Refusal)>,
    /// Bans that cover protected networks: they stay, and the kernel spares those.
    pub spared: Vec<(IpNet, Vec<(IpNet, Why)>)>,
    /// Bans to lift that could not be (the kernel's maps refused), with why they were
    /// to be lifted: they stay on record, and the next sweep tries again.
    pub failed: Vec<(IpNet, Refusal, anyhow::Error)>,
}

/// The record's flags of a scan's ban.
fn kills_flag(kills_due: bool) -> u8 {
    if kills_due {
        crate::bans::Rec::KILLS_DUE
    } else {
        0
    }
}

impl Book {
    /// A book over `store` (read from `journal`, which records every change from now).
    pub fn new(
        dp: Option<Dataplane>,
        store: BanStore,
        journal: Option<Journal>,
        config: &Config,
        guard: Guard,
    ) -> Book {
        Book {
            dp,
            store,
            journal,
            blocked: BlockedFiles::new(config.blocked_file.clone()),
            guard,
            crowdsec_kills: config.crowdsec_lapi_url.is_some() && config.crowdsec_kill_commands,
        }
    }

    /// The journal, if the book has one.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Records the ban of `net` in force in the journal (one the book did not make:
    /// adopted from the kernel at start-up).
    pub fn record(&mut self, net: &IpNet) {
        if let Some(ban) = self.store.get(net) {
            self.recorded(&ban);
        }
    }

    /// Journals the ban of `ban`'s network as the store holds it (with its flags).
    fn recorded(&mut self, ban: &Ban) {
        if let Some(j) = &self.journal
            && let Some(rec) = self.store.record(&ban.net)
        {
            j.put_rec(&ban.net, rec);
        }
        self.blocked.added(ban.net);
    }

    /// Records the name a banned host was logged under.
    /// A change is journaled, a name put back to the default too (a later
    /// response that found no name): the journal's last name record is the one a
    /// restart gives the ban.
    pub fn set_name(&mut self, net: &IpNet, name: &str) {
        let Some(ban) = self.store.get(net) else {
            return;
        };
        let before = self.store.name_of(&ban).into_owned();
        self.store.set_name(net, name);
        let after = self.store.name_of(&ban);
        if after != before
            && let Some(j) = &self.journal
        {
            j.name(net, &after);
        }
    }

    /// Replaces the guard (a reload, this host's addresses changed); [`Book::sweep`]
    /// then applies it to the bans in force.
    pub fn set_guard(&mut self, guard: Guard) {
        self.guard = guard;
    }

    /// Applies the guard to the bans in force: a ban wholly inside a protected network
    /// is lifted, one that covers protected networks is reported (the kernel never drops
    /// a packet from an ignored network). Width limits are applied again to CrowdSec
    /// decisions' bans only (a tighter `BAN_MIN_PREFIX_*` lifts a range one put in
    /// force, as it refuses the next): an operator's ban may have been forced, and stays.
    pub fn sweep(&mut self) -> Swept {
        let mut out = Swept::default();
        for (net, refusal) in self.guard.refused_in(&self.store) {
            if matches!(refusal, Refusal::TooWide { .. }) || self.guard.inside_protected(&net) {
                match self.lift(&net) {
                    Ok(Some(ban)) => out.lifted.push((ban, refusal)),
                    Ok(None) => {}
                    Err(e) => out.failed.push((net, refusal, e)),
                }
            } else {
                out.spared.push((net, self.guard.spared(&net)));
            }
        }
        out
    }

    /// Puts `ban` in force: the guard first ([`Guard::check`]; `force` lifts its width
    /// limit and the operator's session), then the kernel (the moment it counts), then
    /// the store and the journal ([`Book::persist`] waits until it is on disk).
    pub fn put(&mut self, ban: Ban, force: bool) -> Result<()> {
        self.put_over(ban, force, None, 0)
    }

    /// [`Book::put`] of a scan's ban; with `kills_due`, its response's kill commands are
    /// noted as due until [`Book::kills_done`] (a start runs those a stop or a crash
    /// cut short).
    pub fn put_scan(&mut self, ban: Ban, kills_due: bool) -> Result<()> {
        self.put_over(ban, false, None, kills_flag(kills_due))
    }

    /// [`Book::put`] over the ban of the same network in force, which ran kill commands
    /// the new one does not own (an operator's ban over a scan ban): its undo steps are
    /// noted as due, in the journal with the new ban and before it, and the caller runs
    /// them, then says so ([`Book::undone`]). The ban replaced, if any.
    pub fn put_replacing(&mut self, ban: Ban, force: bool) -> Result<Option<Ban>> {
        let replaced = self.store.get(&ban.net);
        let undo = replaced.filter(|old| old.has_undo(self.crowdsec_kills));
        self.put_over(ban, force, undo.as_ref(), 0)?;
        Ok(replaced)
    }

    fn put_over(&mut self, ban: Ban, force: bool, undo: Option<&Ban>, flags: u8) -> Result<()> {
        self.guard.check(&ban.net, force)?;
        if let Some(dp) = &mut self.dp {
            dp.insert_ban(&ban.net, &ban.kernel_entry())?;
            if ban.net.prefix_len() == ban.net.max_prefix_len() {
                dp.forget_source(ban.net.addr())?;
            }
        }
        self.store.insert_with(ban, flags);
        match undo {
            Some(old) => {
                self.store.add_undo(old);
                if let Some(j) = &self.journal {
                    j.replace(old, &ban);
                }
                self.blocked.added(ban.net);
            }
            None => self.recorded(&ban),
        }
        Ok(())
    }

    /// [`Book::put`] of many bans (of distinct networks) at once, each map written in
    /// batches (a Local API's list of 100,000 decisions: one write per ban was 1.9 s of
    /// the 2.3 s its first answer took to enforce). The result of each ban, in order: the
    /// guard's refusals, and when a batch fails (a map full), every ban put one by one to
    /// say which.
    pub fn put_many(&mut self, bans: &[Ban]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = bans
            .iter()
            .map(|b| self.guard.check(&b.net, false).map_err(Into::into))
            .collect();
        let accepted: Vec<usize> = (0..bans.len()).filter(|i| results[*i].is_ok()).collect();
        if let Some(dp) = &mut self.dp {
            // A network banned already (a decision extended) has its entry replaced,
            // its filter bits not counted a second time.
            let (held, new): (Vec<(IpNet, BanEntry)>, Vec<_>) = accepted
                .iter()
                .map(|i| (bans[*i].net, bans[*i].kernel_entry()))
                .partition(|(net, _)| self.store.get(net).is_some());
            let refreshed = if held.is_empty() {
                Ok(())
            } else {
                dp.refresh_bans(held)
            };
            let written = refreshed.and_then(|()| {
                if new.is_empty() {
                    Ok(())
                } else {
                    dp.insert_bans(new)
                }
            });
            if written.is_err() {
                for i in accepted {
                    let flags = self.decision_flags(&bans[i]);
                    results[i] = self.put_over(bans[i], false, None, flags);
                }
                return results;
            }
            for i in &accepted {
                let net = bans[*i].net;
                if net.prefix_len() == net.max_prefix_len()
                    && let Err(e) = dp.forget_source(net.addr())
                {
                    results[*i] = Err(e);
                }
            }
        }
        for i in accepted {
            if results[i].is_ok() {
                let flags = self.decision_flags(&bans[i]);
                self.store.insert_with(bans[i], flags);
                self.recorded(&bans[i]);
            }
        }
        results
    }

    /// The flags of a ban [`Book::put_many`] puts: a new decision's ban of one address
    /// has its kill commands due (CROWDSEC_KILL_COMMANDS) until [`Book::kills_done`]; a
    /// ban put over one of the same network (a decision extended) keeps that one's note,
    /// as its commands run no second time.
    fn decision_flags(&self, ban: &Ban) -> u8 {
        match self.store.record(&ban.net) {
            Some(r) => r.flags & crate::bans::Rec::KILLS_DUE,
            None => {
                kills_flag(ban.origin == BanOrigin::CrowdSec && ban.has_undo(self.crowdsec_kills))
            }
        }
    }

    /// Takes over a ban the program made itself at the trigger (it is in the kernel
    /// already): the guard first, and a ban it refuses is lifted from the kernel; then
    /// the entry is rewritten as `ban` (its length, its origin) and recorded, with its
    /// kill commands due as [`Book::put_scan`] says.
    pub fn adopt(&mut self, ban: Ban, kills_due: bool) -> Result<()> {
        if let Err(refusal) = self.guard.check(&ban.net, false) {
            if let Some(dp) = &mut self.dp {
                dp.remove_ban(&ban.net)?;
            }
            return Err(refusal.into());
        }
        if let Some(dp) = &mut self.dp {
            // Gone from the kernel: lifted before this take-over (an operator's unban
            // while the response waited), which it must not undo.
            if dp.ban(&ban.net)?.is_none() {
                return Err(LiftedMeanwhile { net: ban.net }.into());
            }
            dp.adopt_kernel_ban(&ban.net, &ban.kernel_entry())?;
            dp.forget_source(ban.net.addr())?;
        }
        self.store.insert_with(ban, kills_flag(kills_due));
        self.recorded(&ban);
        Ok(())
    }

    /// Whether `ban` is in force, not replaced since and not expired, with its kill
    /// commands due.
    pub fn kills_due(&self, ban: &Ban) -> bool {
        self.store
            .record(&ban.net)
            .and_then(|r| r.ban(ban.net).filter(|_| r.kills_due()))
            .is_some_and(|now| {
                crate::bans::unix_ms(now.since) == crate::bans::unix_ms(ban.since)
                    && !now.is_expired(std::time::SystemTime::now())
            })
    }

    /// The kill commands of the ban of `net` made at `since` have run (or were given
    /// up): noted in the journal, when they were due.
    pub fn kills_done(&mut self, net: &IpNet, since: std::time::SystemTime) {
        if self.store.kills_done(net, since)
            && let Some(j) = &self.journal
        {
            j.killed(net, since);
        }
    }

    /// Lifts the ban of exactly `net`; the ban that was in force, if any. A ban that ran
    /// kill commands has its undo steps noted as due, in the journal with the lift: the
    /// caller runs them, then says so ([`Book::undone`]).
    pub fn lift(&mut self, net: &IpNet) -> Result<Option<Ban>> {
        if let Some(dp) = &mut self.dp {
            dp.remove_ban(net)?;
        }
        let removed = self.store.remove(net);
        if let Some(ban) = &removed {
            let undo = ban.has_undo(self.crowdsec_kills);
            if undo {
                self.store.add_undo(ban);
            }
            if let Some(j) = &self.journal {
                if undo {
                    j.lift_to_undo(ban);
                } else {
                    j.lift(net);
                }
            }
            self.blocked.ended();
        }
        Ok(removed)
    }

    /// Notes the undo steps of `ban`, ended and not on record (a ban the kernel held
    /// alone), as due (the caller runs them, then says so: [`Book::undone`]).
    pub fn undo_due(&mut self, ban: &Ban) {
        if ban.has_undo(self.crowdsec_kills) {
            self.store.add_undo(ban);
            if let Some(j) = &self.journal {
                j.undo(ban);
            }
        }
    }

    /// The undo steps of `ban` have run: noted in the journal, when they were due;
    /// whether they were.
    pub fn undone(&mut self, ban: &Ban) -> bool {
        let due = self.store.remove_undo(ban);
        if due && let Some(j) = &self.journal {
            j.undone(ban);
        }
        due
    }

    /// The undo steps due when the book was read (the bans lifted before a stop or a
    /// crash whose steps had not all run), to run first at a start; and those not to
    /// run, noted done here: of a host banned again since, by a ban that ran kill
    /// commands. Such a ban's kill commands may have run before the crash (after these
    /// steps, whose end had not reached the disk): these steps would undo them. Not
    /// run, they leave the host blocked as it is, and its ban's own undo steps undo both.
    pub fn cut_short_undos(&mut self) -> (Vec<Ban>, Vec<Ban>) {
        let (superseded, due): (Vec<Ban>, Vec<Ban>) =
            self.store.undos().into_iter().partition(|b| {
                self.store
                    .get(&b.net)
                    .is_some_and(|now| now.has_undo(self.crowdsec_kills))
            });
        for b in &superseded {
            self.undone(b);
        }
        (due, superseded)
    }

    /// The bans in the kernel's maps that are not on record: those the program made at a
    /// trigger and the daemon has not taken over yet (none without the maps).
    pub fn kernel_only(&self) -> Result<Vec<IpNet>> {
        let Some(dp) = &self.dp else {
            return Ok(Vec::new());
        };
        Ok(dp
            .bans()?
            .into_iter()
            .map(|(net, _)| net)
            .filter(|net| self.store.get(net).is_none())
            .collect())
    }

    /// Whether [`Book::put`] (`adopted`: [`Book::adopt`]) of a ban of `net` would be
    /// refused, by the guard or as lifted meanwhile; nothing is changed.
    pub fn would_refuse(&self, net: &IpNet, adopted: bool) -> bool {
        self.refusal(net).is_some() || (adopted && self.dp.is_some() && !self.kernel_holds(net))
    }

    /// Why the guard would refuse a ban of `net`, if it would (nothing is changed).
    pub fn refusal(&self, net: &IpNet) -> Option<Refusal> {
        self.guard.check(net, false).err()
    }

    /// Whether the kernel's maps hold a ban of exactly `net` (false without them, or when
    /// they cannot be read).
    pub fn kernel_holds(&self, net: &IpNet) -> bool {
        self.dp
            .as_ref()
            .is_some_and(|dp| dp.ban(net).is_ok_and(|b| b.is_some()))
    }

    /// Lifts the bans of `nets`, trying every one: the bans that were in force, and the
    /// networks whose lift failed with why.
    pub fn lift_many(&mut self, nets: &[IpNet]) -> (Vec<Ban>, Vec<(IpNet, anyhow::Error)>) {
        let mut lifted = Vec::new();
        let mut failed = Vec::new();
        for net in nets {
            match self.lift(net) {
                Ok(Some(b)) => lifted.push(b),
                Ok(None) => {}
                Err(e) => failed.push((*net, e)),
            }
        }
        (lifted, failed)
    }

    /// A new ban of `net` for `cause`, starting `now`: BAN_TIME grown for repeat
    /// offenders (the store counts them), unless `duration` overrides it (zero meaning
    /// permanent).
    pub fn new_ban(
        &self,
        config: &Config,
        net: IpNet,
        cause: Cause,
        duration: Option<Duration>,
        now: SystemTime,
    ) -> Ban {
        let nth = self.store.times_banned(&net) + 1;
        let d = match duration {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => ban_duration(
                config.ban_time,
                config.repeat_ban_factor,
                config.ban_time_max,
                nth,
            ),
        };
        let (origin, port, scan_type, mode, escalated) = match cause {
            Cause::Operator => (BanOrigin::Manual, 0, None, None, None),
            Cause::Scan(s) => (
                BanOrigin::Scan,
                s.port,
                Some(s.scan_type),
                Some(s.mode),
                None,
            ),
            Cause::Escalation { scan: s, hosts } => (
                BanOrigin::Scan,
                s.port,
                Some(s.scan_type),
                Some(s.mode),
                Some(hosts),
            ),
        };
        Ban {
            net,
            origin,
            since: now,
            expires: d.map(|d| now + d),
            port,
            proto: scan_type.map(Protocol::of),
            scan_type,
            mode,
            count: nth,
            escalated,
        }
    }

    pub fn covers(&self, ip: IpAddr) -> bool {
        self.store.covering(ip).is_some()
    }

    /// Writes the kernel's deadline of every timed ban in force again from its end on
    /// record, as the clocks read now: the kernel's deadlines are monotonic, worked out
    /// from the wall clock when each ban was written, so a step of the wall clock (NTP
    /// setting it at boot, an operator's `date`) leaves them off by the step, and a step
    /// back would end them early while the record says they are in force. The number of
    /// bans rewritten.
    pub fn rebase_deadlines(&mut self) -> Result<usize> {
        let Some(dp) = &mut self.dp else {
            return Ok(0);
        };
        let clocks = crate::clock::Anchor::now();
        let now_ms = super::unix_ms(SystemTime::now());
        let timed: Vec<(IpNet, BanEntry)> = self
            .store
            .records()
            .filter(|(_, r)| r.expires_ms > now_ms)
            .filter_map(|(net, r)| Some((*net, r.kernel_entry_at(&clocks)?)))
            .collect();
        let n = timed.len();
        if n > 0 {
            dp.refresh_bans(timed)?;
        }
        Ok(n)
    }

    /// Whether the bans on record answer for the ban the program made of `source` at
    /// its trigger, so that no response takes it over: a ban of exactly `source`
    /// (responded to already: an event that waited in the ring over a restart), or the
    /// narrowest wider one while it is in force. One that has run out (housekeeping
    /// lifts it within a second) does not: the program counted the source again once it
    /// ran out, and its ban would stay in force unrecorded. Nor does a narrower one (the
    /// operator's /120 holding a SOURCE_PREFIX_V6 network's first address).
    pub fn answers_for(&self, source: &IpNet) -> bool {
        self.store
            .covering_net(source)
            .is_some_and(|b| b.net == *source || !b.is_expired(SystemTime::now()))
    }

    /// Whether a ban of exactly `net` is recorded and in force (not expired, whether
    /// or not housekeeping has lifted it yet).
    pub fn holds(&self, net: &IpNet) -> bool {
        self.store
            .get(net)
            .is_some_and(|b| !b.is_expired(SystemTime::now()))
    }

    /// Waits until every change so far is in the journal on disk (an error when
    /// writing it failed). The blocked files follow in [`Book::flush`].
    pub fn persist(&self) -> Result<()> {
        match &self.journal {
            Some(j) => j.wait(j.last()),
            None => Ok(()),
        }
    }

    /// [`Book::persist`] through the writer's retries (about a second of failures in a
    /// row), for the start and the stop: a write that fails once and works at the next
    /// try is not an error.
    pub fn persist_patiently(&self) -> Result<()> {
        match &self.journal {
            Some(j) => j.wait_patiently(j.last()),
            None => Ok(()),
        }
    }

    /// The last change recorded, to wait for outside the book's lock
    /// ([`Journal::wait_async`]).
    pub fn ticket(&self) -> Option<(Journal, u64)> {
        self.journal.as_ref().map(|j| (j.clone(), j.last()))
    }

    /// Writes the blocked files if bans changed since they were last written: the lines
    /// of new bans appended, or every file rewritten when a ban ended (no more often than
    /// ten times the last rewrite took; with many bans on a thread of its own:
    /// [`BlockedFiles`]). The daemon calls it once a second (the journal holds every ban
    /// meanwhile). Starts a compaction of the journal when it has grown well past what the
    /// bans need; `compacted` gets its outcome.
    pub fn flush(&mut self, compacted: impl FnOnce(Result<u64>) + Send + 'static) -> Result<()> {
        if let Some(j) = &self.journal
            && j.wants_compaction(&self.store)
        {
            j.compact(&self.store, compacted);
        }
        self.blocked.write(&self.store, false)
    }

    /// Puts the blocked files on disk as the bans stand, before a stop (waits for a
    /// rewrite running apart, and rewrites now if one is due).
    pub fn finish_blocked(&mut self) -> Result<()> {
        self.blocked.write(&self.store, true)
    }

    /// BLOCKED_FILE changed (a reload): the next flush writes every ban to the new
    /// files (the old ones are left as they are).
    pub fn set_blocked_file(&mut self, path: &std::path::Path) {
        self.blocked.set_file(path);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        bans::{BanStore, ScanCause, journal},
        fsutil::lines,
        kinds,
        report::history,
    };
    use portsentry_common::ScanType;

    /// A book of no kernel and no journal, with `config`'s width limits.
    fn in_memory(config: &Config) -> Book {
        Book::new(
            None,
            BanStore::default(),
            None,
            config,
            Guard::limits(config),
        )
    }

    /// The program's ban of a source is answered for by a ban of exactly it and by a
    /// wider one in force; not by a wider one that has run out (not lifted yet), nor by
    /// a narrower one.
    #[test]
    fn a_wider_ban_answers_for_the_programs_ban_only_while_in_force() {
        let mut book = in_memory(&Config::default());
        let now = SystemTime::now();
        let ban = |net: &str, since: SystemTime, secs| {
            Ban::of_decision(
                net.parse().unwrap(),
                since,
                since + Duration::from_secs(secs),
            )
        };
        let host: IpNet = "192.0.2.9/32".parse().unwrap();
        let v6: IpNet = "2001:db8::/64".parse().unwrap();
        assert!(!book.answers_for(&host));
        book.put(ban("192.0.2.0/24", now, 60), false).unwrap();
        assert!(book.answers_for(&host), "a wider ban in force");
        let past = now - Duration::from_secs(120);
        book.put(ban("192.0.2.0/24", past, 60), false).unwrap();
        assert!(!book.answers_for(&host), "a wider ban that has run out");
        book.put(ban("192.0.2.9/32", past, 60), false).unwrap();
        assert!(book.answers_for(&host), "its own ban, even run out");
        book.put(ban("2001:db8::/120", now, 60), false).unwrap();
        assert!(!book.answers_for(&v6), "a narrower ban");
        book.put(ban("2001:db8::/48", now, 60), false).unwrap();
        assert!(book.answers_for(&v6));
    }

    /// `put_many`: the guard's refusals come back in place, the others are recorded.
    #[test]
    fn put_many_refuses_in_place_and_records_the_rest() {
        let config = Config {
            ban_min_prefix_v4: 16,
            ..Config::default()
        };
        let mut book = in_memory(&config);
        let now = SystemTime::now();
        let ban =
            |net: &str| Ban::of_decision(net.parse().unwrap(), now, now + Duration::from_secs(60));
        let bans = [ban("192.0.2.9/32"), ban("10.0.0.0/8"), ban("2001:db8::/64")];
        let results = book.put_many(&bans);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            results[1]
                .as_ref()
                .is_err_and(|e| e.downcast_ref::<Refusal>().is_some()),
            "wider than BAN_MIN_PREFIX_V4"
        );
        assert_eq!(book.store.len(), 2);
        assert!(book.store.get(&bans[2].net).is_some());
        assert_eq!(book.store.get(&bans[1].net), None);
    }

    /// Under CROWDSEC_KILL_COMMANDS a new decision's ban of one address has its kill
    /// commands due until they are done (a range runs none); a decision extended keeps
    /// its ban's note; with the setting off nothing is due.
    #[test]
    fn a_decisions_kill_commands_are_due_until_done() {
        let config = Config {
            crowdsec_lapi_url: Some("http://127.0.0.1:8080".into()),
            crowdsec_kill_commands: true,
            ..Config::default()
        };
        let mut book = in_memory(&config);
        let now = SystemTime::now();
        let ban = |net: &str, secs| {
            Ban::of_decision(net.parse().unwrap(), now, now + Duration::from_secs(secs))
        };
        let due = |book: &Book, net: &str| {
            book.store
                .record(&net.parse().unwrap())
                .is_some_and(|r| r.kills_due())
        };
        let results = book.put_many(&[ban("192.0.2.9/32", 60), ban("198.51.100.0/24", 60)]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(due(&book, "192.0.2.9/32"));
        assert!(
            !due(&book, "198.51.100.0/24"),
            "a range runs no kill command"
        );
        // Extended while its commands wait: still due.
        book.put_many(&[ban("192.0.2.9/32", 120)]);
        assert!(due(&book, "192.0.2.9/32"));
        assert_eq!(book.store.take_kills_due().len(), 0, "none was due at load");
        book.kills_done(&"192.0.2.9/32".parse().unwrap(), now);
        assert!(!due(&book, "192.0.2.9/32"));
        // Extended once they ran: not due again.
        book.put_many(&[ban("192.0.2.9/32", 180)]);
        assert!(!due(&book, "192.0.2.9/32"));

        let mut off = in_memory(&Config {
            crowdsec_kill_commands: false,
            ..config
        });
        off.put_many(&[ban("192.0.2.9/32", 60)]);
        assert!(!due(&off, "192.0.2.9/32"));
    }

    /// A tighter BAN_MIN_PREFIX_V4 (a reload) lifts the CrowdSec ranges now too wide, as
    /// it refuses the next; an operator's range of the same width stays (it may have
    /// been forced).
    #[test]
    fn a_tighter_width_limit_lifts_crowdsec_ranges_only() {
        let config = Config::default();
        let mut book = in_memory(&config);
        let now = SystemTime::now();
        let over_protected = Ban::of_decision(
            "10.16.0.0/12".parse().unwrap(),
            now,
            now + Duration::from_secs(60),
        );
        book.put(over_protected, false).unwrap();
        let decision = Ban::of_decision(
            "10.0.0.0/12".parse().unwrap(),
            now,
            now + Duration::from_secs(60),
        );
        book.put(decision, false).unwrap();
        let operator = book.new_ban(
            &config,
            "172.16.0.0/12".parse().unwrap(),
            Cause::Operator,
            None,
            now,
        );
        book.put(operator, false).unwrap();
        let narrow = Ban::of_decision(
            "192.168.0.0/16".parse().unwrap(),
            now,
            now + Duration::from_secs(60),
        );
        book.put(narrow, false).unwrap();
        assert!(book.sweep().lifted.is_empty(), "nothing too wide yet");
        let tighter = Config {
            ban_min_prefix_v4: 16,
            ..Config::default()
        };
        // One of the ranges also covers a protected address now (a gateway, say): too
        // wide all the same.
        let mut guard = Guard::limits(&tighter);
        guard.protect("10.16.0.1".parse().unwrap(), Why::Gateway);
        book.set_guard(guard);
        let swept = book.sweep();
        let mut lifted: Vec<String> = swept
            .lifted
            .iter()
            .map(|(b, _)| b.net.to_string())
            .collect();
        lifted.sort();
        assert_eq!(lifted, ["10.0.0.0/12", "10.16.0.0/12"]);
        assert!(
            swept
                .lifted
                .iter()
                .all(|(_, r)| matches!(r, Refusal::TooWide { min_prefix: 16, .. }))
        );
        assert!(swept.spared.is_empty(), "{:?}", swept.spared);
        let mut left: Vec<String> = book.store.iter().map(|b| b.net.to_string()).collect();
        left.sort();
        assert_eq!(left, ["172.16.0.0/12", "192.168.0.0/16"]);
    }

    /// A book over a journal in `dir`, with no kernel; its configuration.
    fn journaled(dir: &std::path::Path) -> (Config, Book) {
        let config = Config {
            state_dir: dir.join("state"),
            blocked_file: dir.join("blocked"),
            ..Config::default()
        };
        let (j, store, _) = journal::Journal::open(&config.state_dir).unwrap();
        let book = Book::new(None, store, Some(j), &config, Guard::limits(&config));
        (config, book)
    }

    /// A lift of a ban that ran kill commands notes its undo steps as due, in the
    /// journal too, until [`Book::undone`]; an operator's ban's lift notes none.
    #[test]
    fn a_lift_notes_its_undo_steps_due_until_they_ran() {
        let dir = tempfile::tempdir().unwrap();
        let (config, mut book) = journaled(dir.path());
        let scan = Cause::Scan(ScanCause {
            port: 23,
            scan_type: ScanType::TcpSyn,
            mode: kinds::ModeToken::Atcp,
        });
        let now = SystemTime::now();
        let (a, b): (IpNet, IpNet) = (
            "192.0.2.1/32".parse().unwrap(),
            "192.0.2.2/32".parse().unwrap(),
        );
        let scanned = book.new_ban(&config, a, scan, None, now);
        book.put(scanned, false).unwrap();
        let manual = book.new_ban(&config, b, Cause::Operator, None, now);
        book.put(manual, false).unwrap();
        book.lift(&a).unwrap();
        book.lift(&b).unwrap();
        let nets = |s: &BanStore| s.undos().iter().map(|b| b.net).collect::<Vec<_>>();
        assert_eq!(nets(&book.store), [a]);
        book.persist().unwrap();
        assert_eq!(nets(&journal::load(&config.state_dir).unwrap()), [a]);
        assert!(book.undone(&scanned), "they were due");
        book.persist().unwrap();
        assert!(book.store.undos().is_empty());
        assert!(journal::load(&config.state_dir).unwrap().undos().is_empty());
        assert!(!book.undone(&scanned), "noted once");

        // An operator's ban over a scan ban: the scan ban's steps are due, noted before
        // the new ban in the journal.
        let later = |s: u64| crate::bans::from_unix_ms(crate::bans::unix_ms(now) + s * 1000);
        let again = book.new_ban(&config, a, scan, None, later(1));
        book.put(again, false).unwrap();
        let by_hand = book.new_ban(&config, a, Cause::Operator, None, later(2));
        assert_eq!(book.put_replacing(by_hand, false).unwrap(), Some(again));
        assert_eq!(nets(&book.store), [a]);
        book.persist().unwrap();
        let on_disk = journal::load(&config.state_dir).unwrap();
        assert_eq!((nets(&on_disk), on_disk.get(&a)), (vec![a], Some(by_hand)));
        // Still due at a start, with the operator's ban in force (it ran no kill
        // command): to run.
        let (due, superseded) = book.cut_short_undos();
        assert_eq!((due, superseded), (vec![again], vec![]));
        assert!(book.undone(&again));
        // A scan ban lifted with its steps due, then the host banned again by a scan:
        // the new ban ran kill commands, which those steps would undo. Not run, and
        // noted done.
        let first = book.new_ban(&config, a, scan, None, later(3));
        book.put(first, false).unwrap();
        book.lift(&a).unwrap();
        let rescan = book.new_ban(&config, a, scan, None, later(4));
        book.put(rescan, false).unwrap();
        let (due, superseded) = book.cut_short_undos();
        assert_eq!((due, superseded), (vec![], vec![first]));
        assert!(book.store.undos().is_empty());
    }

    /// New bans are appended to their blocked file and journaled; a lift rewrites the
    /// file and is journaled too.
    #[test]
    fn blocked_files_are_appended_to_then_rewritten_and_the_journal_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (config, mut book) = journaled(dir.path());
        let cause = Cause::Scan(ScanCause {
            port: 23,
            scan_type: ScanType::TcpSyn,
            mode: kinds::ModeToken::Atcp,
        });
        let now = SystemTime::now();
        let atcp = history::blocked_path(&config.blocked_file, "atcp");
        for ip in ["192.0.2.1", "192.0.2.2"] {
            let b = book.new_ban(
                &config,
                IpNet::from(ip.parse::<IpAddr>().unwrap()),
                cause,
                None,
                now,
            );
            book.put(b, false).unwrap();
        }
        book.set_name(&"192.0.2.2/32".parse().unwrap(), "two.example");
        book.flush(|_| {}).unwrap();
        assert_eq!(lines(&atcp).len(), 2, "{:?}", lines(&atcp));
        assert!(lines(&atcp)[1].contains("Host: two.example/192.0.2.2 Port: 23 TCP"));
        let b = book.new_ban(
            &config,
            "192.0.2.3/32".parse().unwrap(),
            cause,
            Some(Duration::from_secs(60)),
            now,
        );
        book.put(b, false).unwrap();
        book.flush(|_| {}).unwrap();
        assert_eq!(lines(&atcp).len(), 3, "appended");
        book.lift(&"192.0.2.1/32".parse().unwrap()).unwrap();
        book.flush(|_| {}).unwrap();
        let after = lines(&atcp);
        assert_eq!(after.len(), 2, "rewritten: {after:?}");
        assert!(!after.iter().any(|l| l.contains("/192.0.2.1 ")));
        book.persist().unwrap();
        let on_disk = journal::load(&config.state_dir).unwrap();
        let nets: Vec<String> = on_disk.iter().map(|b| b.net.to_string()).collect();
        assert_eq!(nets, ["192.0.2.2/32", "192.0.2.3/32"]);
        let two = on_disk.get(&"192.0.2.2/32".parse().unwrap()).unwrap();
        assert_eq!(on_disk.name_of(&two), "two.example");
        assert_eq!(on_disk.times_banned(&"192.0.2.1/32".parse().unwrap()), 1);
        // A name put back to the address (a later response found none) is journaled too.
        book.set_name(&"192.0.2.2/32".parse().unwrap(), "192.0.2.2");
        book.persist().unwrap();
        let on_disk = journal::load(&config.state_dir).unwrap();
        let two = on_disk.get(&"192.0.2.2/32".parse().unwrap()).unwrap();
        assert_eq!(on_disk.name_of(&two), "192.0.2.2");
        assert_eq!(on_disk.names_size(), (0, 0), "no name kept for the default");
        let _ = BanStore::new();
    }
}
