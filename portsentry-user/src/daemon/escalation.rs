//! The daemon's side of escalation ([`crate::bans::escalate`]): which responses are
//! running ([`Running`]), and the check after each scan ban, with its log lines, metrics
//! and the undo steps of the bans replaced ([`after_ban`]).

use std::{net::IpAddr, sync::Arc, time::SystemTime};

use portsentry_common::maps::BanOrigin;

use super::{Shared, upkeep};
use crate::{
    bans::{
        ScanCause,
        escalate::{self, Outcome, Settings},
    },
    config::effective::Effective,
    kinds::BanEnd,
};

/// A response to a host that is running (its kill steps may not be done yet), from
/// [`Running::new`] until dropped.
pub(super) struct Running {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Running {
    pub(super) fn new(shared: &Arc<Shared>, ip: IpAddr) -> Running {
        shared.escalation.lock().expect("escalation lock").start(ip);
        Running {
            shared: shared.clone(),
            ip,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared
            .escalation
            .lock()
            .expect("escalation lock")
            .finish(self.ip);
    }
}

/// After the response to a scan ban of `ip` has run: bans its network when enough of
/// the network's hosts are banned, and says so.
pub(super) fn after_ban(shared: &Arc<Shared>, eff: &Effective, ip: IpAddr, scan: ScanCause) {
    let Some(settings) = Settings::new(&eff.config) else {
        return;
    };
    let running = shared.escalation.lock().expect("escalation lock").running();
    let mut book = shared.book();
    let outcome = escalate::after_ban(&mut book, &eff.config, ip, scan, SystemTime::now(), |net| {
        running.iter().any(|ip| net.contains(ip))
    });
    // Reported with the book still held (an operator's unban of the network, which
    // queues the deletion of its decision, comes after it). The hosts' decisions are
    // deleted: the network's covers them on the fleet, and one left would ban its host
    // again here once the network's ban is lifted. The queue reaches its file at the
    // next housekeeping, not here: an escalation may come from a response started
    // before the reports of the last run are read back from that file.
    if let Ok(Outcome::Escalated { ban, replaced, .. }) = &outcome {
        super::crowdsec::report_ban(shared, ban);
        for b in replaced {
            super::crowdsec::report_unban(shared, b);
        }
    }
    drop(book);
    let log = &shared.log;
    match outcome {
        Ok(Outcome::Nothing) => {}
        Ok(Outcome::Refused {
            network,
            hosts,
            refusal,
        }) => {
            if shared
                .escalation
                .lock()
                .expect("escalation lock")
                .first_refusal(network)
            {
                log.warn(&format!(
                    "portsentry: not blocking the network {network} ({hosts} hosts banned{}): \
                     {}; the bans of its hosts stay",
                    settings.describe_window(),
                    refusal.reason()
                ));
            }
        }
        Ok(Outcome::Escalated {
            ban,
            replaced,
            kept,
            failed,
        }) => {
            shared.metrics.ban_added(BanOrigin::Scan);
            log.notice(&format!(
                "attackalert: Network {} has been blocked via XDP drop: {} hosts banned{}",
                ban.net,
                ban.escalated.unwrap_or(0),
                settings.describe_window()
            ));
            let mut line = format!(
                "portsentry: the ban of {} replaces the bans of {} of its hosts",
                ban.net,
                replaced.len()
            );
            if !kept.is_empty() {
                line += &format!(
                    "; {} whose response is still running stay until they expire",
                    kept.len()
                );
            }
            log.notice(&line);
            for (net, e) in failed {
                log.warn(&format!(
                    "portsentry: removing the ban of {net} (covered by {}): {e:#}",
                    ban.net
                ));
            }
            for b in replaced {
                upkeep::spawn_undo(shared, b, BanEnd::Escalated);
            }
        }
        Err(e) => log.warn(&format!("attackalert: ERROR: {e:#}")),
    }
}
