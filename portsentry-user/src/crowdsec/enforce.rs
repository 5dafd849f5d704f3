//! The enforcer side (a bouncer): asks the Local API's decision stream for everything in
//! force (`startup=true`), then every CROWDSEC_INTERVAL for what changed, and hands each
//! answer to the daemon ([`Bouncer::run`]'s `apply`), which bans and lifts through the ban
//! book. After any failure the next answer that comes is a full one again, so a deletion
//! missed while the Local API was away (or the daemon stopped) is not missed for good.
//! Decisions already in force stay in force meanwhile, until they expire.
//!
//! A full answer is also asked for again, every [`full_sync_after`]: crowdsec 1.4.6
//! gives in a delta the decisions created after the start of the bouncer's previous call,
//! and one created before that start but committed after the call read the database is in
//! no delta at all (seen here: 100 of 10,000 imported decisions, and now and then one
//! decision of `cscli decisions add` while three bouncers polled one SQLite database). A
//! full answer of a short list costs little: it is asked for every 10 s; of a long one,
//! at most a hundredth of the time, and at least every 5 minutes.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

/// The longest time between two full answers, to catch what the deltas missed.
pub const FULL_SYNC: Duration = Duration::from_secs(300);
/// The shortest.
pub const FULL_SYNC_MIN: Duration = Duration::from_secs(10);

/// When to ask for a full answer again after one that `took` (asked for, read and
/// applied): a hundred times that, within [`FULL_SYNC_MIN`] and [`FULL_SYNC`].
pub fn full_sync_after(took: Duration) -> Duration {
    took.saturating_mul(100).clamp(FULL_SYNC_MIN, FULL_SYNC)
}

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
        let mut full_every = FULL_SYNC;
        // The skipped decisions counted (by id): a full answer counts those it is the
        // first to give, not each of them again.
        let mut skipped: HashSet<i64> = HashSet::new();
        loop {
            if last_full.elapsed() >= full_every {
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
                    let before = if full {
                        std::mem::take(&mut skipped)
                    } else {
                        HashSet::new()
                    };
                    for (id, why) in &answer.skipped {
                        let first = id.is_none_or(|id| skipped.insert(id) && !before.contains(&id));
                        if first {
                            self.link.count(*why, 1);
                            self.metrics.crowdsec_decision(*why, 1);
                        }
                    }
                    drop(before);
                    let read = t0.elapsed();
                    let n = answer.new.len() + answer.deleted.len() + answer.skipped.len();
                    apply(answer, full, asked);
                    if full {
                        last_full = tokio::time::Instant::now();
                        full_every = full_sync_after(t0.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_answer_is_asked_for_again_by_its_cost() {
        let ms = Duration::from_millis;
        assert_eq!(full_sync_after(ms(3)), FULL_SYNC_MIN, "a short list");
        assert_eq!(full_sync_after(ms(250)), Duration::from_secs(25));
        assert_eq!(
            full_sync_after(Duration::from_secs(3)),
            FULL_SYNC,
            "100,000 decisions"
        );
        assert_eq!(full_sync_after(Duration::MAX), FULL_SYNC);
    }
}
