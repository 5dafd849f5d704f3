//! The enforcer side (a bouncer): asks the Local API's decision stream for everything in
//! force (`startup=true`), then every CROWDSEC_INTERVAL for what changed, and hands each
//! answer to the daemon ([`Bouncer::run`]'s `apply`), which bans and lifts through the ban
//! book. After any failure the next answer that comes is a full one again, so a deletion
//! missed while the Local API was away (or the daemon stopped) is not missed for good.
//! Decisions already in force stay in force meanwhile, until they expire. A full answer is
//! also asked for every [`FULL_SYNC`]: crowdsec 1.4.6 computes a delta from the time of the
//! bouncer's previous call, and decisions written while that call ran (a large import) can
//! be in no delta at all (seen here: 100 of 10,000 imported decisions).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

/// How often the whole list is asked for again, to catch what the deltas missed.
pub const FULL_SYNC: Duration = Duration::from_secs(300);

use super::{
    api::{ApiError, Lapi},
    backoff::Backoff,
    decisions::{self, Answer, Filter, Outcome},
    link::{Connection, Link, Which},
};
use crate::{config::crowdsec::Secret, metrics::Metrics, report::Logger};

pub struct Bouncer {
    pub lapi: Lapi,
    pub key: Secret,
    pub filter: Filter,
    pub interval: Duration,
    pub link: Arc<Link>,
    pub metrics: Arc<Metrics>,
    pub log: Logger,
}

impl Bouncer {
    /// Polls for as long as the daemon runs; `apply(answer, full, asked)` enforces an
    /// answer (`full`: everything in force, so what it does not name is lifted) asked for
    /// at `asked` (its decisions' time left is counted from a moment after it).
    pub async fn run(self, mut apply: impl FnMut(Answer, bool, SystemTime) + Send) {
        let mut full = true;
        let mut backoff = Backoff::default();
        let mut last_full = tokio::time::Instant::now();
        loop {
            if last_full.elapsed() >= FULL_SYNC {
                full = true;
            }
            let t0 = std::time::Instant::now();
            let asked = SystemTime::now();
            let got = self
                .lapi
                .stream(
                    &self.key,
                    full,
                    &self.filter.origins,
                    &self.filter.scenarios_exclude,
                )
                .await;
            let fetched = t0.elapsed();
            let bytes = got.as_ref().map_or(0, Vec::len);
            let result = got.and_then(|body| {
                decisions::read(&body, &self.filter).map_err(|e| {
                    self.link.count(Outcome::Invalid, 1);
                    self.metrics.crowdsec_decision(Outcome::Invalid, 1);
                    ApiError::Status(200, format!("unreadable answer: {e}"))
                })
            });
            match result {
                Ok(answer) => {
                    for why in &answer.skipped {
                        self.link.count(*why, 1);
                        self.metrics.crowdsec_decision(*why, 1);
                    }
                    let read = t0.elapsed();
                    let n = answer.new.len() + answer.deleted.len() + answer.skipped.len();
                    apply(answer, full, asked);
                    if full {
                        last_full = tokio::time::Instant::now();
                    }
                    if self.link.ok(Which::Enforce) != Connection::Connected {
                        // How long the first answer took, by stage (a large list's cost).
                        self.log.notice(&format!(
                            "portsentry: crowdsec: enforcing the decisions of {} (first \
                             answer: {n} decisions, {bytes} bytes, received in {} ms, read in \
                             {} ms, applied in {} ms)",
                            self.lapi.url(),
                            fetched.as_millis(),
                            (read - fetched).as_millis(),
                            (t0.elapsed() - read).as_millis()
                        ));
                    }
                    full = false;
                    backoff.reset();
                    tokio::time::sleep(self.interval).await;
                }
                Err(e) => {
                    full = true;
                    let state = match e {
                        ApiError::Denied(_) => Connection::Denied,
                        _ => Connection::Down,
                    };
                    let before = self.link.failed(Which::Enforce, state, e.to_string());
                    if before != state {
                        self.log.warn(&format!(
                            "portsentry: crowdsec: the decision stream of {} failed (bans \
                             received stay in force until they expire; retrying): {e}",
                            self.lapi.url()
                        ));
                    }
                    backoff.wait().await;
                }
            }
        }
    }
}
