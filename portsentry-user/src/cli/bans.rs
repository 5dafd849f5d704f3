//! `portsentry ban` and `unban`: through the daemon's control socket when it runs;
//! otherwise on the pinned maps (if loaded) and the ban journal directly, holding the
//! state lock so that no daemon starts meanwhile. Both ways run the same ban operations
//! ([`crate::bans::ops`]).

use std::fs;

use anyhow::{Result, bail};

use super::{BanArgs, UnbanArgs, config, parse_target};
use crate::{
    actions::execute,
    bans::{
        Ban, Book,
        guard::{self, Guard},
        journal::Journal,
        ops::{self, Unban},
    },
    config::{Config, effective},
    control::{self, Request, Response},
    kernel::{self, Dataplane},
    metrics::Metrics,
    paths, pidfile,
    report::Logger,
};

/// What the daemon answered, as this command's result.
fn answer(r: Response) -> Result<String> {
    if r.ok {
        Ok(r.message)
    } else {
        bail!(r.message)
    }
}

/// `portsentry ban`.
pub fn ban(args: &BanArgs) -> Result<String> {
    let c = config(&args.file)?;
    let net = parse_target(&args.target).map_err(anyhow::Error::msg)?;
    let asker = ops::Asker {
        force: args.force,
        session: guard::session_address(),
    };
    let req = Request::Ban {
        net,
        seconds: args.time.map(|d| d.as_secs()),
        force: asker.force,
        session: asker.session,
    };
    if let Some(r) = control::send(&c.state_dir, &req)? {
        return answer(r);
    }
    let (mut book, _lock) = direct_book(&c)?;
    let ops::Banned { ban, replaced } = ops::ban(&mut book, &c, net, args.time, asker)?;
    // The replaced ban's undo steps run once the replacement is on disk, whether or not
    // the blocked files could be written. Not on disk (the journal's writer stopped
    // with it): they stay due in the journal, and the next start runs them (or, should
    // the replacement be lost, the replaced ban's when it ends); not here as well.
    let undone = undo_once_on_disk(&c, &mut book, replaced.as_slice());
    close(&mut book)?;
    undone?;
    Ok(format!(
        "{}{}",
        ops::banned_message(&ban),
        if book.dp.is_some() {
            ""
        } else {
            " (recorded; portsentry is not loaded, the next start puts it in force)"
        }
    ))
}

/// `portsentry unban`.
pub fn unban(args: &UnbanArgs) -> Result<String> {
    let c = config(&args.file)?;
    let (req, which) = match (&args.target, args.all) {
        (_, true) => (Request::UnbanAll, Unban::All),
        (Some(t), false) => {
            let net = parse_target(t).map_err(anyhow::Error::msg)?;
            (Request::Unban { net }, Unban::One(net))
        }
        (None, false) => bail!("name an address or network to unban, or --all"),
    };
    if let Some(r) = control::send(&c.state_dir, &req)? {
        return answer(r);
    }
    let (mut book, _lock) = direct_book(&c)?;
    let (lifted, result) = ops::unban(&mut book, which);
    // Once the lifts are on disk: else the next start puts the bans back in force, and
    // runs their undo steps when they end (here as well, they would run twice).
    let undone = undo_once_on_disk(&c, &mut book, &lifted);
    let closed = close(&mut book);
    undone?;
    result.and_then(|m| closed.map(|()| m))
}

/// Runs the undo steps of `bans` (lifted or replaced) once their change is on disk,
/// and notes that they ran: steps cut short (the command interrupted) run at the
/// daemon's next start.
fn undo_once_on_disk(c: &Config, book: &mut Book, bans: &[Ban]) -> Result<()> {
    if book.persist().is_err() {
        // Reported by the close that follows.
        return Ok(());
    }
    run_undo(c, bans)?;
    for b in bans {
        book.undone(b);
    }
    Ok(())
}

/// Writes the blocked files and stops the journal's writer once everything is on disk.
fn close(book: &mut Book) -> Result<()> {
    let blocked = book.flush(|_| {}).and_then(|()| book.finish_blocked());
    let journal = book.journal().map_or(Ok(()), Journal::close);
    journal.and(blocked)
}

/// The ban book without a daemon: the state lock, the pinned maps when loaded.
fn direct_book(c: &Config) -> Result<(Book, fs::File)> {
    let Some(lock) = pidfile::lock(&c.state_dir)? else {
        bail!(
            "the daemon holds {} but its control socket does not answer; try again, or \
             stop it first",
            paths::pid_file(&c.state_dir).display()
        );
    };
    let dp = if kernel::is_pinned(&c.pin_dir) {
        Some(Dataplane::open_pinned(&c.pin_dir)?)
    } else {
        None
    };
    let (journal, store, opened) = Journal::open(&c.state_dir)?;
    for line in opened.report() {
        eprintln!("{line}");
    }
    // The guard of the configuration as the daemon would run it: the ignore list,
    // loopback and this host's addresses. Its warnings are the operator's to see (a
    // missing IGNORE_FILE leaves only loopback and this host protected).
    let eff = effective::from_config(c.clone())?;
    for w in &eff.warnings {
        eprintln!("portsentry: warning: {w}");
    }
    let guard = Guard::new(&eff);
    Ok((Book::new(dp, store, Some(journal), c, guard), lock))
}

/// Runs the UNKILL_* steps of lifted scan bans (no daemon to do it).
fn run_undo(c: &Config, lifted: &[Ban]) -> Result<()> {
    if !lifted.iter().any(|b| b.has_undo(c.crowdsec_kill_commands)) {
        return Ok(());
    }
    let log = Logger::new(c.syslog, true);
    let metrics = Metrics::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for b in lifted {
            execute::undo(&log, &metrics, c, b, c.crowdsec_kill_commands, None).await;
        }
    });
    Ok(())
}
