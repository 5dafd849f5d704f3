//! The ban book: one place that changes bans, keeping the kernel maps, the in-memory
//! store, the state file and the blocked files in step. The daemon, its control socket
//! and the CLI (when no daemon runs) all go through it.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use portsentry_common::maps::BanOrigin;

use super::{
    Ban, BanStore, Cause, ban_duration,
    guard::{Guard, Refusal, Why},
    state,
};
use crate::{
    config::Config,
    kernel::Dataplane,
    kinds::{self, Protocol},
    report::history,
};

pub struct Book {
    /// The kernel maps; `None` when nothing is loaded (CLI with no pinned maps): the
    /// state file alone is then changed, and the next start applies it.
    pub dp: Option<Dataplane>,
    pub store: BanStore,
    state_dir: PathBuf,
    blocked_file: PathBuf,
    /// Modes whose blocked file was written, so it is emptied when its last ban goes.
    blocked_modes: BTreeSet<&'static str>,
    /// Bans changed since the files were last written.
    dirty: bool,
    /// What no ban may cut off.
    guard: Guard,
}

/// What [`Book::sweep`] found among the bans in force.
#[derive(Debug, Default)]
pub struct Swept {
    /// Bans wholly inside protected networks: lifted (their undo steps are the caller's).
    pub lifted: Vec<(Ban, Refusal)>,
    /// Bans that cover protected networks: they stay, and the kernel spares those.
    pub spared: Vec<(IpNet, Vec<(IpNet, Why)>)>,
}

impl Book {
    pub fn new(dp: Option<Dataplane>, store: BanStore, config: &Config, guard: Guard) -> Book {
        Book {
            dp,
            store,
            state_dir: config.state_dir.clone(),
            blocked_file: config.blocked_file.clone(),
            blocked_modes: BTreeSet::new(),
            dirty: false,
            guard,
        }
    }

    /// Replaces the guard (a reload, this host's addresses changed); [`Book::sweep`]
    /// then applies it to the bans in force.
    pub fn set_guard(&mut self, guard: Guard) {
        self.guard = guard;
    }

    /// Applies the guard to the bans in force: a ban wholly inside a protected network
    /// is lifted, one that covers protected networks is reported (the kernel never drops
    /// a packet from an ignored network). Width limits are not applied again: a forced
    /// ban stays.
    pub fn sweep(&mut self) -> Swept {
        let mut out = Swept::default();
        let nets: Vec<IpNet> = self.store.iter().map(|b| b.net).collect();
        for net in nets {
            let Err(refusal) = self.guard.check(&net, true) else {
                continue;
            };
            if self.guard.inside_protected(&net) {
                if let Ok(Some(ban)) = self.lift(&net) {
                    out.lifted.push((ban, refusal));
                }
            } else {
                out.spared.push((net, self.guard.spared(&net)));
            }
        }
        out
    }

    /// Puts `ban` in force: the guard first ([`Guard::check`]; `force` lifts its width
    /// limit and the operator's session), then the kernel (the moment it counts), then
    /// the store. The state file is written by [`Book::persist`].
    pub fn put(&mut self, ban: Ban, force: bool) -> Result<()> {
        self.guard.check(&ban.net, force)?;
        if let Some(dp) = &mut self.dp {
            dp.insert_ban(&ban.net, &ban.kernel_entry())?;
            if ban.net.prefix_len() == ban.net.max_prefix_len() {
                dp.forget_source(ban.net.addr())?;
            }
        }
        self.store.insert(ban);
        self.dirty = true;
        Ok(())
    }

    /// Takes over a ban the program made itself at the trigger (it is in the kernel
    /// already): the guard first, and a ban it refuses is lifted from the kernel; then
    /// the entry is rewritten as `ban` (its length, its origin) and recorded.
    pub fn adopt(&mut self, ban: Ban) -> Result<()> {
        if let Err(refusal) = self.guard.check(&ban.net, false) {
            if let Some(dp) = &mut self.dp {
                dp.remove_ban(&ban.net)?;
            }
            return Err(refusal.into());
        }
        if let Some(dp) = &mut self.dp {
            dp.adopt_kernel_ban(&ban.net, &ban.kernel_entry())?;
            dp.forget_source(ban.net.addr())?;
        }
        self.store.insert(ban);
        self.dirty = true;
        Ok(())
    }

    /// Lifts the ban of exactly `net`; the ban that was in force, if any.
    pub fn lift(&mut self, net: &IpNet) -> Result<Option<Ban>> {
        if let Some(dp) = &mut self.dp {
            dp.remove_ban(net)?;
        }
        let removed = self.store.remove(net);
        self.dirty |= removed.is_some();
        Ok(removed)
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
            name: match escalated {
                Some(_) => net.to_string(),
                None => net.addr().to_string(),
            },
            count: nth,
            escalated,
        }
    }

    pub fn covers(&self, ip: IpAddr) -> bool {
        self.store.covering(ip).is_some()
    }

    /// Writes the state file and the blocked files now. Errors are returned after
    /// trying every file (and the book stays dirty).
    pub fn persist(&mut self) -> Result<()> {
        let state = state::save(&self.state_dir, &self.store);
        let blocked = self.write_blocked_files();
        let r = state.and(blocked);
        self.dirty = r.is_err();
        r
    }

    /// Writes the files if bans changed since they were last written. The daemon calls
    /// it once a second, so that a storm of bans costs one rewrite a second rather
    /// than one per ban; the kernel (pinned) holds every ban meanwhile, so a crash
    /// loses none, and only a crash followed by a reboot within that second could.
    pub fn flush(&mut self) -> Result<()> {
        if self.dirty { self.persist() } else { Ok(()) }
    }

    /// Rewrites `BLOCKED_FILE.<mode>` for every mode that has (or had) bans.
    fn write_blocked_files(&mut self) -> Result<()> {
        let mut by_mode: HashMap<&'static str, Vec<String>> = HashMap::new();
        for b in self.store.iter() {
            by_mode
                .entry(kinds::mode_word(b.mode))
                .or_default()
                .push(history::history_line(
                    b.since,
                    &b.name,
                    b.net.addr(),
                    b.port,
                    b.proto,
                ));
        }
        self.blocked_modes.extend(by_mode.keys().copied());
        let mut result = Ok(());
        for mode in &self.blocked_modes {
            let path = history::blocked_path(&self.blocked_file, mode);
            let lines = by_mode.get(mode).cloned().unwrap_or_default();
            if let Err(e) = history::write_blocked(&path, &lines) {
                result = Err(e).context("writing a blocked file");
            }
        }
        result
    }
}
