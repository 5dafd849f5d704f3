//! The operator's actions on bans (`portsentry ban`, `unban`, `unban --all`), written
//! once: the daemon's control socket and the CLI, when no daemon runs, both call these,
//! and differ only in who runs the undo steps of the lifted bans afterwards.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::IpNet;

use super::{
    Ban, Book, Cause,
    guard::{Guard, Why},
    journal::Journal,
};
use crate::{
    config::{Config, LONGEST},
    kernel::addr::canonical_net,
};

/// Which bans to lift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unban {
    /// The ban of exactly this network.
    One(IpNet),
    /// Every ban.
    All,
}

/// Who asks for an operator's ban, and how firmly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Asker {
    /// `--force`: past the guard's width limit and the operator's own session.
    pub force: bool,
    /// The address of the operator's SSH session, protected unless forced.
    pub session: Option<IpAddr>,
}

/// An operator's ban, and the ban it replaced.
#[derive(Clone, Copy, Debug)]
pub struct Banned {
    pub ban: Ban,
    /// The ban of `net` in force before, if any. A scan ban (or a CrowdSec one under
    /// CROWDSEC_KILL_COMMANDS) ran kill commands that the operator's ban does not own:
    /// their undo steps are the caller's to run, as for a lifted ban (noted as due in
    /// the book: [`Book::undone`] once they ran).
    pub replaced: Option<Ban>,
}

/// Bans `net` for `duration` (`None`: BAN_TIME; zero: permanent), in the kernel when it
/// is loaded and in the journal, if the ban guard lets it; the ban made. The caller
/// answers once it is on disk ([`on_disk`]), outside the book's lock.
pub fn ban(
    book: &mut Book,
    config: &Config,
    net: IpNet,
    duration: Option<Duration>,
    asker: Asker,
) -> Result<Banned> {
    // As the command line names it (a request on the control socket may not): one
    // network, one record, found by range like every other ban.
    let net = canonical_net(net);
    let force = asker.force;
    if duration.is_some_and(|d| d > LONGEST) {
        // The command line never asks for one; a date that far ahead would overflow.
        bail!("a ban of more than 100 years (100y) was asked for; 0 = permanent");
    }
    if let Some(ip) = asker.session.filter(|_| !force) {
        let mut session = Guard::default();
        session.protect(ip, Why::OperatorSession);
        session.check(&net, false)?;
    }
    let ban = book.new_ban(config, net, Cause::Operator, duration, SystemTime::now());
    let replaced = book.put_replacing(ban, force)?;
    Ok(Banned { ban, replaced })
}

/// Waits until the change a [`Book::ticket`] names is on disk (call it without the
/// book locked).
pub fn on_disk(ticket: Option<(Journal, u64)>) -> Result<()> {
    match ticket {
        Some((journal, seq)) => journal
            .wait(seq)
            .context("the change is in force but not on disk"),
        None => Ok(()),
    }
}

/// Lifts bans (recorded in the journal; the caller answers once that is on disk,
/// [`on_disk`]). Returns the bans lifted (their undo steps are the caller's to run,
/// whatever else happened) and what to tell the operator: an error when a lift failed,
/// or when the network named was not banned.
pub fn unban(book: &mut Book, which: Unban) -> (Vec<Ban>, Result<String>) {
    let which = match which {
        Unban::One(net) => Unban::One(canonical_net(net)),
        Unban::All => Unban::All,
    };
    // A ban the program made that the daemon has not recorded yet is lifted too: the one
    // named, or every one.
    let (unrecorded, reading) = match which {
        Unban::One(net) => {
            let held = book.store.get(&net).is_none() && book.kernel_holds(&net);
            (if held { vec![net] } else { Vec::new() }, Ok(()))
        }
        Unban::All => match book.kernel_only() {
            Ok(nets) => (nets, Ok(())),
            Err(e) => (
                Vec::new(),
                Err(e.context("reading the bans the program made")),
            ),
        },
    };
    let nets: Vec<IpNet> = match which {
        Unban::One(net) => vec![net],
        Unban::All => book
            .store
            .iter()
            .map(|b| b.net)
            .chain(unrecorded.iter().copied())
            .collect(),
    };
    let (lifted, failed) = book.lift_many(&nets);
    let lifting = match failed.into_iter().next() {
        Some((net, e)) => Err(e.context(format!("lifting the ban of {net}"))),
        None => reading,
    };
    let result = lifting.and_then(|()| match which {
        Unban::One(net) if lifted.is_empty() && !unrecorded.is_empty() => Ok(format!(
            "unbanned {net} (a ban the program had just made, not yet recorded)"
        )),
        // The address an alert names for an IPv6 network's ban, or a host an
        // escalation's range took in: say which ban to lift.
        Unban::One(net) if lifted.is_empty() => match book.store.covering_net(&net) {
            Some(wider) => Err(anyhow!(
                "{net} is not banned itself; the ban of {wider} covers it (portsentry unban \
                 {wider})",
                wider = wider.net
            )),
            None => Err(anyhow!("{net} is not banned")),
        },
        Unban::One(net) => Ok(format!("unbanned {net}")),
        Unban::All if unrecorded.is_empty() => Ok(format!("unbanned {} networks", lifted.len())),
        Unban::All => Ok(format!(
            "unbanned {} networks and {} bans the program had just made, not yet recorded",
            lifted.len(),
            unrecorded.len()
        )),
    });
    (lifted, result)
}

/// What `portsentry ban` says of a ban's end: ` for 1h 2m`, or ` permanently`.
pub fn describe_expiry(expires: Option<SystemTime>) -> String {
    match expires.and_then(|e| e.duration_since(SystemTime::now()).ok()) {
        Some(d) => format!(
            " for {}",
            humantime::format_duration(Duration::from_secs(d.as_secs() + 1))
        ),
        None => " permanently".to_owned(),
    }
}

/// What `portsentry ban` says of a ban it made.
pub fn banned_message(ban: &Ban) -> String {
    format!("banned {}{}", ban.net, describe_expiry(ban.expires))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds;

    fn book(dir: &std::path::Path) -> (Book, Config) {
        let config = Config {
            state_dir: dir.to_path_buf(),
            blocked_file: dir.join("blocked"),
            ..Config::default()
        };
        (
            {
                let (journal, store, _) = super::super::journal::Journal::open(dir).unwrap();
                Book::new(
                    None,
                    store,
                    Some(journal),
                    &config,
                    super::super::guard::Guard::limits(&config),
                )
            },
            config,
        )
    }

    #[test]
    fn ban_then_unban_one_and_all() {
        let dir = tempfile::tempdir().unwrap();
        let (mut book, config) = book(dir.path());
        let net: IpNet = "192.0.2.7/32".parse().unwrap();
        let b = ban(
            &mut book,
            &config,
            net,
            Some(Duration::from_secs(3600)),
            Asker::default(),
        )
        .unwrap();
        assert!(b.replaced.is_none());
        let b = b.ban;
        assert_eq!(kinds::origin_name(b.origin), "manual");
        assert!(banned_message(&b).starts_with("banned 192.0.2.7/32 for 1h"));
        let permanent = ban(
            &mut book,
            &config,
            "198.51.100.0/24".parse().unwrap(),
            None,
            Asker::default(),
        );
        assert_eq!(
            banned_message(&permanent.unwrap().ban),
            "banned 198.51.100.0/24 permanently"
        );
        on_disk(book.ticket()).unwrap();
        assert_eq!(super::super::journal::load(dir.path()).unwrap().len(), 2);

        let (lifted, r) = unban(&mut book, Unban::One(net));
        assert_eq!(
            (lifted.len(), r.unwrap()),
            (1, "unbanned 192.0.2.7/32".into())
        );
        let (lifted, r) = unban(&mut book, Unban::One(net));
        assert!(lifted.is_empty());
        assert_eq!(r.unwrap_err().to_string(), "192.0.2.7/32 is not banned");
        let (lifted, r) = unban(&mut book, Unban::One("198.51.100.9/32".parse().unwrap()));
        assert!(lifted.is_empty());
        assert_eq!(
            r.unwrap_err().to_string(),
            "198.51.100.9/32 is not banned itself; the ban of 198.51.100.0/24 covers it \
             (portsentry unban 198.51.100.0/24)"
        );
        let (lifted, r) = unban(&mut book, Unban::All);
        assert_eq!(
            (lifted.len(), r.unwrap()),
            (1, "unbanned 1 networks".into())
        );
        on_disk(book.ticket()).unwrap();
        assert_eq!(super::super::journal::load(dir.path()).unwrap().len(), 0);
    }

    /// A network named with host bits set, or IPv4 as mapped IPv6 (a request written to
    /// the control socket by hand), is banned and unbanned as the network it stands for.
    #[test]
    fn a_network_is_banned_and_unbanned_as_it_stands() {
        let dir = tempfile::tempdir().unwrap();
        let (mut book, config) = book(dir.path());
        for (asked, stored) in [
            ("198.51.100.9/24", "198.51.100.0/24"),
            ("::ffff:192.0.2.7/128", "192.0.2.7/32"),
        ] {
            let b = ban(
                &mut book,
                &config,
                asked.parse().unwrap(),
                None,
                Asker::default(),
            )
            .unwrap();
            let stored: IpNet = stored.parse().unwrap();
            assert_eq!(b.ban.net, stored);
            assert!(book.store.contains(&stored), "{asked}");
            let (lifted, r) = unban(&mut book, Unban::One(asked.parse().unwrap()));
            assert_eq!(
                (lifted.len(), r.unwrap()),
                (1, format!("unbanned {stored}"))
            );
        }
        assert!(book.store.is_empty());
    }

    /// An operator's ban over a scan ban returns the scan ban, whose kill commands the
    /// operator's ban does not own: the caller runs their undo steps.
    #[test]
    fn a_ban_over_a_scan_ban_hands_back_the_scan_ban() {
        let dir = tempfile::tempdir().unwrap();
        let (mut book, config) = book(dir.path());
        let net: IpNet = "192.0.2.7/32".parse().unwrap();
        let cause = Cause::Scan(super::super::ScanCause {
            port: 23,
            scan_type: portsentry_common::ScanType::TcpSyn,
            mode: kinds::ModeToken::Atcp,
        });
        let scan = book.new_ban(&config, net, cause, None, SystemTime::now());
        book.put(scan, false).unwrap();
        assert!(scan.has_undo(false));
        let b = ban(&mut book, &config, net, None, Asker::default()).unwrap();
        let replaced = b.replaced.expect("the scan ban");
        assert_eq!((replaced.net, replaced.origin), (net, scan.origin));
        assert!(replaced.has_undo(false));
        assert!(!b.ban.has_undo(false));
        let again = ban(&mut book, &config, net, None, Asker::default()).unwrap();
        assert!(again.replaced.is_some_and(|r| !r.has_undo(false)));
    }
}
