//! The daemon's side of the control socket: `portsentry ban` and `unban` while the
//! daemon runs, through the same ban operations the CLI uses when it does not
//! ([`crate::bans::ops`]); the daemon logs them and runs the undo steps in the
//! background.

use std::{sync::Arc, time::Duration};

use portsentry_common::maps::BanOrigin;

use super::{
    Shared,
    upkeep::{spawn_undo_in, spawn_undo_steps, undo_place},
};
use crate::{
    bans::ops::{self, Unban},
    control::{Request, Response},
    kinds::BanEnd,
};

/// Answers one request.
pub(super) fn handle(shared: &Arc<Shared>, req: Request) -> Response {
    let eff = shared.eff();
    let which = match req {
        Request::Ban {
            net,
            seconds,
            force,
            session,
        } => {
            let duration = seconds.map(Duration::from_secs);
            let asker = ops::Asker { force, session };
            let made = ops::ban(&mut shared.book(), &eff.config, net, duration, asker);
            // Answered once on disk; the book is not held meanwhile.
            let ticket = shared.book().ticket();
            return match made {
                Ok(ops::Banned { ban, replaced }) => {
                    // In force, and the ban it replaced ended, whether or not the journal
                    // could be written (its writer tries again): the replaced ban's undo
                    // steps run, and the ban is logged, either way.
                    if let Some(old) = replaced {
                        spawn_undo_steps(shared, old);
                    }
                    shared.metrics.ban_added(BanOrigin::Manual);
                    shared.log.notice(&format!(
                        "portsentry: {net} banned by the operator{}",
                        ops::describe_expiry(ban.expires)
                    ));
                    match ops::on_disk(ticket) {
                        Ok(()) => Response::ok(ops::banned_message(&ban)),
                        Err(e) => Response::err(format!("{e:#}")),
                    }
                }
                Err(e) => Response::err(format!("{e:#}")),
            };
        }
        Request::Unban { net } => Unban::One(net),
        Request::UnbanAll => Unban::All,
    };
    let (lifted, result, places) = {
        let mut book = shared.book();
        let (lifted, result) = ops::unban(&mut book, which);
        // Each undo takes its place in its host's line before the book is let go: the
        // program may ban the host again as soon as the lift is in the kernel, and the
        // response to that ban (lined up once it has the book) must run its kill
        // commands after these undo steps, not before them.
        let places: Vec<_> = lifted.iter().map(|b| undo_place(shared, b)).collect();
        (lifted, result, places)
    };
    let ticket = shared.book().ticket();
    let result = result.and_then(|m| ops::on_disk(ticket).map(|()| m));
    match which {
        // Ok with nothing lifted: the program's ban, not yet recorded.
        Unban::One(net) if !lifted.is_empty() || result.is_ok() => shared
            .log
            .notice(&format!("portsentry: {net} unbanned by the operator")),
        Unban::One(_) => {}
        Unban::All => shared.log.notice(&format!(
            "portsentry: all {} bans lifted by the operator",
            lifted.len()
        )),
    }
    let unbanned = !lifted.is_empty();
    for (b, place) in lifted.into_iter().zip(places) {
        super::crowdsec::report_unban(shared, &b);
        spawn_undo_in(shared, b, BanEnd::Unbanned, place);
    }
    if unbanned {
        // Before the answer: the deletions outlive a restart right after it.
        super::crowdsec::save_reports(shared);
    }
    match result {
        Ok(message) => Response::ok(message),
        Err(e) => Response::err(format!("{e:#}")),
    }
}
