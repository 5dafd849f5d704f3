//! The state of the daemon's link to the Local API, as `portsentry status` shows it: each
//! side's connection, the last sync, the decisions by outcome, the bans enforced, the alerts
//! sent. The daemon keeps it in memory ([`Link`]) and writes it to `STATE_DIR/crowdsec.json`
//! when it changes; `status` reads that file (so it works without talking to the daemon).
//! Nothing secret is in it.

use std::{collections::BTreeMap, path::Path, sync::Mutex, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::decisions::Outcome;
use crate::{fsutil, paths};

/// How one side (the bouncer, the machine) stands with the Local API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connection {
    /// Not answered yet (just started).
    #[default]
    Connecting,
    /// The last call succeeded.
    Connected,
    /// The last call got no answer or an error; retried with backoff.
    Down,
    /// The key or the credentials were refused (401/403); retried with backoff.
    Denied,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    pub state: Connection,
    /// RFC 3339: when the state last changed.
    pub since: Option<String>,
    /// RFC 3339: the last call that succeeded (for the bouncer: the last sync).
    pub last_ok: Option<String>,
    pub last_error: Option<String>,
}

/// The bans from the Local API in force, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforced {
    pub ip_v4: u64,
    pub ip_v6: u64,
    pub range_v4: u64,
    pub range_v6: u64,
}

/// Everything `status` shows of the link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub url: String,
    /// `None`: CROWDSEC_ENFORCE is 0.
    pub enforce: Option<Side>,
    /// `None`: CROWDSEC_REPORT is 0.
    pub report: Option<Side>,
    pub enforced: Enforced,
    /// Decisions received, by outcome (`applied`, `duplicate`, `invalid`, ...).
    pub decisions: BTreeMap<String, u64>,
    /// Alerts and deletions sent (`alerts_sent`, `decisions_deleted`), and those lost
    /// (`overflow`: the queue was full; `expired`: the ban ended before it could be sent).
    pub reports: BTreeMap<String, u64>,
    /// Reports waiting to be sent.
    pub queued: u64,
}

/// The live [`LinkStatus`], shared by the daemon's tasks.
#[derive(Debug, Default)]
pub struct Link {
    status: Mutex<LinkStatus>,
    /// What was last written to the file.
    written: Mutex<Option<LinkStatus>>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Which side a change is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Enforce,
    Report,
}

impl Link {
    pub fn new(url: &str, enforce: bool, report: bool) -> Link {
        let side = |on: bool| on.then(Side::default);
        Link {
            status: Mutex::new(LinkStatus {
                url: url.to_owned(),
                enforce: side(enforce),
                report: side(report),
                ..LinkStatus::default()
            }),
            written: Mutex::new(None),
        }
    }

    pub fn get(&self) -> LinkStatus {
        self.status.lock().expect("link lock").clone()
    }

    fn update<T>(&self, f: impl FnOnce(&mut LinkStatus) -> T) -> T {
        f(&mut self.status.lock().expect("link lock"))
    }

    /// A call of `which` succeeded; the previous state.
    pub fn ok(&self, which: Which) -> Connection {
        self.set(which, Connection::Connected, None)
    }

    /// A call of `which` failed; the previous state.
    pub fn failed(&self, which: Which, state: Connection, error: String) -> Connection {
        self.set(which, state, Some(error))
    }

    fn set(&self, which: Which, state: Connection, error: Option<String>) -> Connection {
        self.update(|s| {
            let side = match which {
                Which::Enforce => s.enforce.get_or_insert_with(Side::default),
                Which::Report => s.report.get_or_insert_with(Side::default),
            };
            let before = side.state;
            if before != state || side.since.is_none() {
                side.since = Some(now());
            }
            side.state = state;
            match error {
                None => side.last_ok = Some(now()),
                Some(e) => side.last_error = Some(e),
            }
            before
        })
    }

    pub fn count(&self, outcome: Outcome, n: u64) {
        if n > 0 {
            self.update(|s| *s.decisions.entry(outcome.as_str().to_owned()).or_default() += n);
        }
    }

    pub fn count_report(&self, what: &str, n: u64) {
        if n > 0 {
            self.update(|s| *s.reports.entry(what.to_owned()).or_default() += n);
        }
    }

    pub fn set_enforced(&self, e: Enforced) {
        self.update(|s| s.enforced = e);
    }

    pub fn set_queued(&self, n: u64) {
        self.update(|s| s.queued = n);
    }

    /// Writes `STATE_DIR/crowdsec.json` if the state changed since it was last written.
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let now = self.get();
        let mut written = self.written.lock().expect("link lock");
        if written.as_ref() == Some(&now) {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(&now).map_err(std::io::Error::other)?;
        fsutil::write_atomic(&paths::crowdsec_file(state_dir), &text, None)?;
        *written = Some(now);
        Ok(())
    }
}

/// The link state the daemon last wrote in `state_dir`, if it wrote one.
pub fn read(state_dir: &Path) -> Option<LinkStatus> {
    let text = std::fs::read(paths::crowdsec_file(state_dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Removes the state file (the daemon runs without CrowdSec).
pub fn remove(state_dir: &Path) {
    let _ = std::fs::remove_file(paths::crowdsec_file(state_dir));
}
