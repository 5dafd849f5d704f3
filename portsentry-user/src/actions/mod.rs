//! What happens to a host that scanned: PortSentry's kill actions, planned and run.
//!
//! [`plan`] turns the configuration into the ordered [`Step`]s for one host, in PortSentry
//! 1.2's order (`DisposeTCP`/`DisposeUDP`), with our XDP ban standing in for the blocking;
//! [`undo_plan`] gives the steps that undo them when a ban ends. [`execute::run_step`]
//! runs a step: `KILL_HOSTS_DENY` through [`crate::line_files`], the commands
//! through [`shell::run_shell`], which, unlike 1.2's `system()`, never blocks the packet
//! loop and kills a command that hangs. The XDP ban itself is the ban book's.
//!
//! Token substitution ([`substitute`]) is 1.2's `SubstString`, applied to `$TARGET$`, then
//! `$PORT$`, then `$MODE$`; we format every value ourselves, so nothing an attacker sends
//! reaches a shell.

pub mod deny_templates;
pub mod execute;
pub mod shell;

use std::{net::IpAddr, path::PathBuf};

pub use crate::kinds::{ActionKind, ActionResult};
use crate::{
    bans::Ban,
    config::{BlockMode, Config},
    kinds::ModeToken,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Our XDP ban (done by the daemon itself, not here).
    XdpBan,
    /// Append this (already substituted) line to the hosts.deny file.
    HostsDeny(String),
    /// Run this (already substituted) KILL_ROUTE (or UNKILL_ROUTE) command with /bin/sh -c.
    Route(String),
    /// Run this (already substituted) KILL_RUN_CMD (or UNKILL_RUN_CMD) command with
    /// /bin/sh -c.
    RunCmd(String),
    /// Remove every line equal to this (already substituted) line from the hosts.deny file
    /// ([`crate::fsutil::remove_line`]): the undo of [`Step::HostsDeny`].
    HostsDenyRemove(String),
    /// The same for the line an earlier `KILL_HOSTS_DENY` template (or file) made
    /// ([`deny_templates`]): logged only when it was there.
    EarlierHostsDenyRemove { file: PathBuf, line: String },
}

/// The kinds of kill steps a response ran before it stopped short (its ban lifted while
/// it waited for its turn, its host protected since): its ban's undo steps undo those
/// alone ([`Ran::undoes`]). An UNKILL_ROUTE of a route never added could delete the
/// operator's own rule for the host, a hosts.deny line removed could be the operator's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ran {
    route: bool,
    hosts_deny: bool,
    run_cmd: bool,
}

impl Ran {
    /// `step` (of [`plan`]) ran.
    pub fn add(&mut self, step: &Step) {
        match step {
            Step::Route(_) => self.route = true,
            Step::HostsDeny(_) => self.hosts_deny = true,
            Step::RunCmd(_) => self.run_cmd = true,
            Step::XdpBan | Step::HostsDenyRemove(_) | Step::EarlierHostsDenyRemove { .. } => {}
        }
    }

    /// Whether the undo step `undo` (of [`undo_plan`]) undoes a step that ran.
    pub fn undoes(&self, undo: &Step) -> bool {
        match undo {
            Step::Route(_) => self.route,
            Step::HostsDenyRemove(_) | Step::EarlierHostsDenyRemove { .. } => self.hosts_deny,
            Step::RunCmd(_) => self.run_cmd,
            Step::XdpBan | Step::HostsDeny(_) => false,
        }
    }
}

/// The values substituted into command templates. We format all of them ourselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// `$TARGET$`, formatted by `Display` (`192.0.2.7`, `2001:db8::7`).
    pub ip: IpAddr,
    /// `$PORT$`, in decimal.
    pub port: u16,
    /// `$MODE$`: `atcp`, `audp`, `stcp` or `sudp` ([`ModeToken::as_str`]); `crowdsec` for
    /// the ban a Local API decision made.
    pub mode: &'static str,
}

impl Target {
    /// The target of a scan of `ip` on `port` seen in `mode`.
    pub fn scan(ip: IpAddr, port: u16, mode: ModeToken) -> Target {
        Target {
            ip,
            port,
            mode: mode.as_str(),
        }
    }

    /// The target of the kill commands of `ban` (its address, port and mode word).
    pub fn of_ban(ban: &Ban) -> Target {
        Target {
            ip: ban.net.addr(),
            port: ban.port,
            mode: ban.mode_token_word(),
        }
    }
}

/// Replaces every `$TARGET$`, `$PORT$` and `$MODE$` in `template` (all occurrences, nothing
/// else).
///
/// As PortSentry 1.2 does, the tokens are replaced one after the other: every `$TARGET$`
/// first, then `$PORT$`, then `$MODE$`. The values hold no `$`, so a replacement can never
/// form a new token; the order only matters for overlapping tokens such as `$PORT$TARGET$`,
/// where 1.2 replaces `$TARGET$`.
pub fn substitute(template: &str, t: &Target) -> String {
    template
        .replace("$TARGET$", &t.ip.to_string())
        .replace("$PORT$", &t.port.to_string())
        .replace("$MODE$", t.mode)
}

/// [`substitute`] for a `KILL_HOSTS_DENY` line: an IPv6 `$TARGET$` in brackets
/// (`[2001:db8::7]`), as tcp_wrappers reads an IPv6 address in a pattern (hosts_access(5):
/// its fields are separated by colons, so a bare IPv6 address never matches). IPv4 as
/// [`substitute`] writes it.
pub fn substitute_hosts_deny(template: &str, t: &Target) -> String {
    match t.ip {
        IpAddr::V4(_) => substitute(template, t),
        IpAddr::V6(a) => substitute(&template.replace("$TARGET$", &format!("[{a}]")), t),
    }
}

/// The ordered steps for one host, in PortSentry 1.2's order (README.md, "What happens
/// to a scanner"):
///
/// - `BLOCK=0` ([`BlockMode::ReportOnly`]): no steps.
/// - `BLOCK=2` ([`BlockMode::RunCmdOnly`]): `[RunCmd]` if `KILL_RUN_CMD` is set (else none).
/// - `BLOCK=1` ([`BlockMode::Block`]): with `KILL_RUN_CMD_FIRST=0`
///   `[XdpBan, HostsDeny, Route, RunCmd]`; with `KILL_RUN_CMD_FIRST=1`
///   `[RunCmd, XdpBan, HostsDeny, Route]`.
///
/// Each of `HostsDeny`/`Route`/`RunCmd` is there only when its `KILL_*` key is set. The XDP
/// ban is "the blocking": it heads the blocking steps, so with `KILL_RUN_CMD_FIRST=1` a
/// script still reaches the host before it is blocked.
pub fn plan(cfg: &Config, block: BlockMode, t: &Target) -> Vec<Step> {
    let run_cmd = cfg
        .kill_run_cmd
        .as_deref()
        .map(|c| Step::RunCmd(substitute(c, t)));
    match block {
        BlockMode::ReportOnly => Vec::new(),
        BlockMode::RunCmdOnly => run_cmd.into_iter().collect(),
        BlockMode::Block => {
            let mut steps = Vec::with_capacity(4);
            let (before, after) = if cfg.kill_run_cmd_first {
                (run_cmd, None)
            } else {
                (None, run_cmd)
            };
            steps.extend(before);
            steps.push(Step::XdpBan);
            if let Some(line) = &cfg.kill_hosts_deny {
                steps.push(Step::HostsDeny(substitute_hosts_deny(line, t)));
            }
            if let Some(cmd) = &cfg.kill_route {
                steps.push(Step::Route(substitute(cmd, t)));
            }
            steps.extend(after);
            steps
        }
    }
}

/// The steps that undo a ban when it ends (expiry or unban), from the extension keys:
/// `Route(UNKILL_ROUTE)` if set, then `HostsDenyRemove(KILL_HOSTS_DENY)` if
/// `UNKILL_HOSTS_DENY` is on and `KILL_HOSTS_DENY` is set, and with it an
/// `EarlierHostsDenyRemove` for each line an `earlier` template makes for the host that
/// the one in force does not (newest first), and for an IPv6 host each line as written
/// before its address was bracketed ([`substitute_hosts_deny`]), then
/// `RunCmd(UNKILL_RUN_CMD)` if set.
///
/// The blocking is undone in the reverse of [`plan`]'s order (route, then hosts.deny), and
/// the run command comes last, when the host is no longer blocked, whatever
/// `KILL_RUN_CMD_FIRST` says. Lifting the XDP ban is the daemon's and not a step here; the
/// caller only runs this for a host that [`plan`] blocked (`BLOCK=1`).
pub fn undo_plan(cfg: &Config, earlier: &[deny_templates::Template], t: &Target) -> Vec<Step> {
    let mut steps = Vec::with_capacity(3);
    if let Some(cmd) = &cfg.unkill_route {
        steps.push(Step::Route(substitute(cmd, t)));
    }
    if cfg.unkill_hosts_deny {
        let mut seen = Vec::new();
        if let Some(template) = &cfg.kill_hosts_deny {
            let line = substitute_hosts_deny(template, t);
            seen.push((cfg.hosts_deny_file.clone(), line.clone()));
            steps.push(Step::HostsDenyRemove(line));
        }
        // The lines of the earlier templates (newest first), each also as a release
        // before IPv6 addresses were bracketed wrote it ([`substitute`]; the same line
        // for IPv4), the template in force's too.
        let mut others = Vec::new();
        if let Some(template) = &cfg.kill_hosts_deny {
            others.push((cfg.hosts_deny_file.clone(), substitute(template, t)));
        }
        for e in earlier.iter().rev() {
            if let Some(template) = &e.template {
                others.push((e.file.clone(), substitute_hosts_deny(template, t)));
                others.push((e.file.clone(), substitute(template, t)));
            }
        }
        for (file, line) in others {
            if !seen.contains(&(file.clone(), line.clone())) {
                seen.push((file.clone(), line.clone()));
                steps.push(Step::EarlierHostsDenyRemove { file, line });
            }
        }
    }
    if let Some(cmd) = &cfg.unkill_run_cmd {
        steps.push(Step::RunCmd(substitute(cmd, t)));
    }
    steps
}

#[cfg(test)]
mod tests;
