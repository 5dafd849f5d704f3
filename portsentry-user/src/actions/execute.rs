//! Running the planned steps that are not the XDP ban (the ban book does that one), and
//! logging each as PortSentry does; the daemon and the CLI (which lifts bans itself when
//! no daemon runs) both run steps through here.

use std::net::IpAddr;

use super::{ActionKind, ActionResult, Ran, Step, Target, shell::run_shell, undo_plan};
use crate::{
    bans::Ban,
    config::Config,
    line_files,
    metrics::Metrics,
    report::{Logger, alert},
};

/// Runs one non-XDP step and logs it; `undo` marks the steps that lift a ban.
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
        Step::HostsDeny(line) => match line_files::append(&c.hosts_deny_file, line).await {
            Ok(()) => {
                metrics.action(ActionKind::HostsDeny, ActionResult::Ok);
                log.notice(&alert::blocked_via_wrappers(ip, line));
            }
            Err(e) => {
                metrics.action(ActionKind::HostsDeny, ActionResult::Failed);
                log.warn(&format!("attackalert: ERROR: {e}"));
            }
        },
        Step::HostsDenyRemove(line) => {
            remove_deny_line(log, metrics, ip, &c.hosts_deny_file, line, false).await
        }
        Step::EarlierHostsDenyRemove { file, line } => {
            remove_deny_line(log, metrics, ip, file, line, true).await
        }
        Step::Route(cmd) | Step::RunCmd(cmd) => {
            let kind = match (step, undo) {
                (Step::Route(_), false) => ActionKind::Route,
                (Step::Route(_), true) => ActionKind::Unroute,
                (_, false) => ActionKind::RunCmd,
                (_, true) => ActionKind::UnrunCmd,
            };
            let (outcome, output) = run_shell(cmd, c.kill_timeout).await;
            metrics.action(kind, outcome.result());
            match kind {
                ActionKind::Route => log.notice(&alert::blocked_via_route(ip, cmd)),
                ActionKind::RunCmd => log.notice(&alert::external_command(ip, cmd)),
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

/// Removes `ip`'s hosts.deny `line` from `file` and logs it; the line of an `earlier`
/// KILL_HOSTS_DENY only when it was there.
async fn remove_deny_line(
    log: &Logger,
    metrics: &Metrics,
    ip: IpAddr,
    file: &std::path::Path,
    line: &str,
    earlier: bool,
) {
    match line_files::remove(file, line).await {
        Ok(removed) => {
            metrics.action(ActionKind::HostsDenyRemove, ActionResult::Ok);
            match (earlier, removed) {
                (false, _) => log.notice(&format!(
                    "portsentry: Host {ip} removed from {}",
                    file.display()
                )),
                (true, true) => log.notice(&format!(
                    "portsentry: Host {ip} removed from {} (its line of an earlier \
                     KILL_HOSTS_DENY)",
                    file.display()
                )),
                (true, false) => {}
            }
        }
        Err(e) => {
            metrics.action(ActionKind::HostsDenyRemove, ActionResult::Failed);
            log.warn(&format!("portsentry: ERROR: {e}"));
        }
    }
}

/// Runs the undo steps of a lifted ban (UNKILL_ROUTE, the hosts.deny line,
/// UNKILL_RUN_CMD); nothing for a ban that ran no kill command ([`Ban::has_undo`];
/// `crowdsec_kills`: CROWDSEC_KILL_COMMANDS as the daemon runs with it). `ran`: the kill
/// steps its response ran when it stopped short of the others (only theirs are undone).
pub async fn undo(
    log: &Logger,
    metrics: &Metrics,
    c: &Config,
    ban: &Ban,
    crowdsec_kills: bool,
    ran: Option<Ran>,
) {
    if !ban.has_undo(crowdsec_kills) {
        return;
    }
    let ip = ban.net.addr();
    let earlier = if c.unkill_hosts_deny {
        super::deny_templates::load(&c.state_dir).unwrap_or_else(|e| {
            log.warn(&format!(
                "portsentry: ERROR: {e}; only the line of the KILL_HOSTS_DENY in force is \
                 removed"
            ));
            Vec::new()
        })
    } else {
        Vec::new()
    };
    let earlier = super::deny_templates::made_with(&earlier, ban.since);
    let plan = undo_plan(c, earlier, &Target::of_ban(ban));
    let planned = plan.len();
    let steps: Vec<Step> = plan
        .into_iter()
        .filter(|s| ran.is_none_or(|r| r.undoes(s)))
        .collect();
    if steps.is_empty() && planned > 0 {
        log.notice(&format!(
            "portsentry: not running the undo steps of the ban of {}: its response stopped \
             before any kill command ran",
            ban.net
        ));
    } else if steps.len() < planned {
        log.notice(&format!(
            "portsentry: running only the undo steps of the kill commands that ran against \
             {} (its response stopped before the others)",
            ban.net
        ));
    }
    for step in steps {
        run_step(log, metrics, c, ip, &step, true).await;
    }
}
