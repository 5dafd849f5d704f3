//! The detector side: each ban we make from a scan goes to the Local API as an alert
//! carrying its decision, and an operator's unban here deletes our decision there.
//!
//! Reports wait in a bounded queue ([`Outbox`], [`QUEUE_LIMIT`]); the task sends as soon as
//! one arrives, all that waited at once (up to [`BATCH`] alerts a call), so a burst of bans
//! becomes a few calls. When the Local API is away the queue keeps them (retried with
//! backoff, nothing lost below the limit); a report beyond it is dropped and counted
//! (`overflow`). The machine logs in first and again when the token is refused (it lasts
//! about an hour).
//!
//! A decision lasts the ban's remaining time (computed when sent); a permanent ban gets
//! [`PERMANENT`] (one year). Scenario names: `portsentry/<scan type>-scan` (e.g.
//! `portsentry/tcp-syn-scan`), `portsentry/escalation` for the ban of a network
//! (ESCALATE_AFTER), and `portsentry/scan` when the scan type is unknown.

use std::{
    collections::{HashMap, VecDeque},
    fs, io,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use ipnet::IpNet;
use portsentry_common::ScanType;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{
    api::{ApiError, Lapi},
    backoff::Backoff,
    decisions::to_go_duration,
    link::{Connection, Link, Which},
};
use crate::{config::crowdsec::Secret, fsutil, metrics::Metrics, report::Logger};

/// The most reports waiting; more are dropped and counted.
pub const QUEUE_LIMIT: usize = 10_000;
/// The most alerts sent in one call.
pub const BATCH: usize = 100;
/// The duration a permanent ban's decision gets.
pub const PERMANENT: Duration = Duration::from_secs(365 * 86_400);
/// The origin CrowdSec records for decisions we send.
pub const ORIGIN: &str = "portsentry";
/// 9999-12-31T23:59:59Z, the last second an RFC 3339 date can say.
const LATEST_SECS: u64 = 253_402_300_799;

/// The scenario name of a ban made for a scan of `scan_type` (`None`: unknown), or of an
/// escalation.
pub fn scenario(scan_type: Option<ScanType>, escalation: bool) -> String {
    match (escalation, scan_type) {
        (true, _) => "portsentry/escalation".to_owned(),
        (false, Some(t)) => format!("portsentry/{}-scan", t.name()),
        (false, None) => "portsentry/scan".to_owned(),
    }
}

/// One report to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A ban we made: an alert with its decision.
    Ban {
        net: IpNet,
        scenario: String,
        since: SystemTime,
        /// `None`: permanent.
        expires: Option<SystemTime>,
    },
    /// A ban the operator lifted: delete our decisions of `net` made by `scenario`.
    Unban { net: IpNet, scenario: String },
}

/// The queue of reports, shared by the daemon (which pushes) and the task (which sends).
///
/// The daemon keeps it in a file across a restart ([`Outbox::save`], [`Outbox::restore`]):
/// an unban's deletion lost there would leave our decision at the Local API, and the
/// ban would come back from it.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    overflow: AtomicU64,
    /// The change last written by [`Outbox::save`] (one save at a time).
    saved: Mutex<u64>,
}

/// The reports waiting, and a count of the changes made to them.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
    changes: u64,
    /// The reports at the front the task is sending ([`Outbox::next`] until
    /// [`Outbox::done`]): an unban cannot take those back.
    sending: usize,
    /// The deletions sent in the last [`SENT_UNBANS_KEPT`], each with when its answer
    /// came: an answer of the stream asked for before then may still name the decision.
    sent_unbans: VecDeque<(SystemTime, IpNet, String)>,
}

/// How long a deletion sent is remembered ([`Outbox::unbans_since`]): longer than a
/// full answer of the stream may take.
const SENT_UNBANS_KEPT: Duration = Duration::from_secs(600);

/// A report as the file keeps it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum Saved {
    Ban {
        net: IpNet,
        scenario: String,
        /// Seconds since the epoch.
        since: u64,
        expires: Option<u64>,
    },
    Unban {
        net: IpNet,
        scenario: String,
    },
}

impl From<&Item> for Saved {
    fn from(item: &Item) -> Saved {
        let secs = |t: &SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        match item {
            Item::Ban {
                net,
                scenario,
                since,
                expires,
            } => Saved::Ban {
                net: *net,
                scenario: scenario.clone(),
                since: secs(since),
                expires: expires.as_ref().map(secs),
            },
            Item::Unban { net, scenario } => Saved::Unban {
                net: *net,
                scenario: scenario.clone(),
            },
        }
    }
}

impl TryFrom<Saved> for Item {
    type Error = anyhow::Error;

    /// A time past what an alert can carry (a damaged file) is an error.
    fn try_from(saved: Saved) -> anyhow::Result<Item> {
        let at = |secs: u64| {
            // RFC 3339 (the alert's dates) ends with the year 9999.
            if secs > LATEST_SECS {
                anyhow::bail!("{secs} seconds since the epoch is past the year 9999");
            }
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        };
        Ok(match saved {
            Saved::Ban {
                net,
                scenario,
                since,
                expires,
            } => Item::Ban {
                net,
                scenario,
                since: at(since)?,
                expires: expires.map(at).transpose()?,
            },
            Saved::Unban { net, scenario } => Item::Unban { net, scenario },
        })
    }
}

impl Outbox {
    /// Queues `item`; false (and counted) when the queue is full.
    ///
    /// An unban first takes back the report of its ban when that is still waiting (not
    /// being sent): the fleet never gets a ban the operator lifted here, and the unban
    /// has its place even in a full queue, which would otherwise drop it and send the
    /// ban. The unban is still queued: a decision of an earlier ban may be there. The
    /// unban of a ban being sent goes in over the limit (by at most a batch): the ban
    /// reaches the fleet, and its unban must follow it.
    pub fn push(&self, item: Item) -> bool {
        let mut q = self.queue.lock().expect("outbox lock");
        let mut room = q.items.len() < QUEUE_LIMIT;
        if let Item::Unban { net, scenario } = &item {
            let its_ban = |i: &Item| matches!(i, Item::Ban { net: n, scenario: s, .. } if n == net && s == scenario);
            if let Some(i) = q.items.iter().skip(q.sending).position(its_ban) {
                let at = q.sending + i;
                q.items.remove(at);
                room = true;
            } else if q.items.iter().take(q.sending).any(its_ban) {
                room = true;
            }
        }
        if !room {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.items.push_back(item);
        q.changes += 1;
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Writes the reports waiting to `path` (atomically, fsync'd) when they changed since
    /// the last write; no reports waiting: removes the file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut saved = self.saved.lock().expect("outbox save lock");
        let (changes, items): (u64, Vec<Saved>) = {
            let q = self.queue.lock().expect("outbox lock");
            if q.changes == *saved {
                return Ok(());
            }
            (q.changes, q.items.iter().map(Saved::from).collect())
        };
        if items.is_empty() {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        } else {
            let mut text = serde_json::to_vec_pretty(&items)?;
            text.push(b'\n');
            fsutil::write_atomic(path, &text, None)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        *saved = changes;
        Ok(())
    }

    /// Queues the reports a daemon before this one left in `path`, ahead of any queued
    /// since (they are older); how many (0: no file), and the reports left out, each an
    /// error naming the file and the report (a time no alert can carry). A file that
    /// cannot be read is an error naming it and where it is broken; it stays as it is.
    pub fn restore(&self, path: &Path) -> anyhow::Result<(usize, Vec<anyhow::Error>)> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, Vec::new())),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let saved: Vec<Saved> = serde_json::from_slice(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a list of reports: {e}", path.display()))?;
        let mut items = Vec::with_capacity(saved.len());
        let mut left_out = Vec::new();
        for (i, s) in saved.into_iter().enumerate() {
            match Item::try_from(s) {
                Ok(item) => items.push(item),
                Err(e) => left_out.push(e.context(format!(
                    "{}: report {} left out",
                    path.display(),
                    i + 1
                ))),
            }
        }
        let n = items.len();
        let mut q = self.queue.lock().expect("outbox lock");
        let queued_since = !q.items.is_empty();
        for item in items.into_iter().rev() {
            q.items.push_front(item);
        }
        // The newest bans beyond the limit are dropped, and counted, as a push over it
        // would; an unban is kept, as a push keeps it.
        let mut over = q.items.len().saturating_sub(QUEUE_LIMIT);
        let mut dropped = 0;
        let mut at = q.items.len();
        while over > 0 && at > 0 {
            at -= 1;
            if matches!(q.items[at], Item::Ban { .. }) {
                q.items.remove(at);
                over -= 1;
                dropped += 1;
            }
        }
        self.overflow.fetch_add(dropped, Ordering::Relaxed);
        // Written as it is, so not again until it changes; unless reports were queued
        // before it was read back (an unban of the guard's sweep at the start, a
        // response to a ban the program made meanwhile): those are not in the file yet.
        if dropped > 0 {
            // Not as it was written: the reports dropped go from the file too.
            q.changes += 1;
        } else if !queued_since {
            *self.saved.lock().expect("outbox save lock") = q.changes;
        }
        drop(q);
        self.notify.notify_one();
        Ok((n, left_out))
    }

    pub fn len(&self) -> usize {
        self.queue.lock().expect("outbox lock").items.len()
    }

    /// The deletions waiting (or being sent), and those sent since `asked` (the Local
    /// API may have read its decisions for an answer asked for then before it deleted
    /// them): the scenarios of our decisions to delete, by network.
    pub fn unbans_since(&self, asked: SystemTime) -> HashMap<IpNet, Vec<String>> {
        let mut out: HashMap<IpNet, Vec<String>> = HashMap::new();
        let q = self.queue.lock().expect("outbox lock");
        for item in &q.items {
            if let Item::Unban { net, scenario } = item {
                out.entry(*net).or_default().push(scenario.clone());
            }
        }
        for (_, net, scenario) in q.sent_unbans.iter().filter(|(at, _, _)| *at >= asked) {
            out.entry(*net).or_default().push(scenario.clone());
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reports dropped because the queue was full, since the last call.
    fn take_overflow(&self) -> u64 {
        self.overflow.swap(0, Ordering::Relaxed)
    }

    /// The reports to send next: the unban at the front, or the bans at the front (up
    /// to [`BATCH`]). They stay queued until [`Outbox::done`].
    fn next(&self) -> Vec<Item> {
        let mut q = self.queue.lock().expect("outbox lock");
        let next: Vec<Item> = match q.items.front() {
            None => Vec::new(),
            Some(Item::Unban { .. }) => vec![q.items[0].clone()],
            Some(Item::Ban { .. }) => q
                .items
                .iter()
                .take(BATCH)
                .take_while(|i| matches!(i, Item::Ban { .. }))
                .cloned()
                .collect(),
        };
        q.sending = next.len();
        next
    }

    /// The reports [`Outbox::next`] gave were not sent (they are tried again): none is
    /// being sent meanwhile, and an unban may take its ban back.
    fn not_sent(&self) {
        self.queue.lock().expect("outbox lock").sending = 0;
    }

    /// The first `n` reports were sent.
    fn done(&self, n: usize) {
        let now = SystemTime::now();
        let mut q = self.queue.lock().expect("outbox lock");
        let n = n.min(q.items.len());
        let sent: Vec<Item> = q.items.drain(..n).collect();
        for item in sent {
            if let Item::Unban { net, scenario } = item {
                q.sent_unbans.push_back((now, net, scenario));
            }
        }
        while q.sent_unbans.front().is_some_and(|(at, _, _)| {
            now.duration_since(*at).unwrap_or_default() > SENT_UNBANS_KEPT
        }) {
            q.sent_unbans.pop_front();
        }
        q.sending = 0;
        q.changes += 1;
    }
}

/// The alert (with its decision) of a ban, its decision lasting the ban's time left at
/// `now`; `None` when the ban has ended. It names no host of ours (the Local API knows
/// the machine that sent it): CrowdSec shares custom scenarios' alerts with its central
/// service, where an internal host name has no business.
pub fn alert(item: &Item, now: SystemTime) -> Option<Value> {
    let Item::Ban {
        net,
        scenario,
        since,
        expires,
    } = item
    else {
        return None;
    };
    let left = match expires {
        None => PERMANENT,
        Some(e) => e.duration_since(now).ok().filter(|d| !d.is_zero())?,
    };
    let (scope, value) = if net.prefix_len() == net.max_prefix_len() {
        ("Ip", net.addr().to_string())
    } else {
        ("Range", net.to_string())
    };
    let mut source = json!({ "scope": scope, "value": value });
    if scope == "Ip" {
        source["ip"] = json!(value);
    } else {
        source["range"] = json!(value);
    }
    let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    Some(json!({
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": format!("{value} banned by portsentry ({scenario})"),
        "events_count": 1,
        "start_at": at(*since),
        "stop_at": at(now),
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "events": [{
            "timestamp": at(*since),
            "meta": [{"key": "service", "value": "portsentry"}, {"key": "source_ip", "value": value}],
        }],
        "source": source,
        "decisions": [{
            "origin": ORIGIN,
            "type": "ban",
            "scope": scope,
            "value": value,
            "duration": to_go_duration(left),
            "scenario": scenario,
        }],
    }))
}

/// What the task needs.
pub struct Reporter {
    pub lapi: Lapi,
    pub machine: String,
    pub password: Secret,
    pub outbox: Arc<Outbox>,
    pub link: Arc<Link>,
    pub metrics: Arc<Metrics>,
    pub log: Logger,
}

impl Reporter {
    /// Sends reports for as long as the daemon runs.
    pub async fn run(self) {
        let mut token: Option<Secret> = None;
        let mut backoff = Backoff::default();
        // Logged in at once, not at the first ban: the login (a bcrypt check at the Local
        // API, 100-250 ms here) is then not part of the first report's delay, and a Local
        // API that cannot be reached shows in `status` before any ban needs it.
        let mut fresh = false;
        loop {
            self.account();
            if token.is_none() {
                match self.lapi.login(&self.machine, &self.password).await {
                    Ok(t) => {
                        token = Some(t);
                        fresh = true;
                        self.connected();
                        backoff.reset();
                    }
                    Err(e) => {
                        self.failed(&e, "logging in");
                        backoff.wait().await;
                        continue;
                    }
                }
            }
            let batch = self.outbox.next();
            if batch.is_empty() {
                self.outbox.notify.notified().await;
                continue;
            }
            let Some(t) = token.clone() else { continue };
            let sent = self.send(&t, &batch).await;
            let was_fresh = std::mem::replace(&mut fresh, false);
            if sent.is_err() {
                self.outbox.not_sent();
            }
            match sent {
                Ok(()) => {
                    self.outbox.done(batch.len());
                    self.connected();
                    backoff.reset();
                }
                Err(ApiError::Denied(_)) if !was_fresh => token = None,
                Err(e) => {
                    if matches!(e, ApiError::Denied(_)) {
                        token = None;
                    }
                    self.failed(&e, "sending");
                    backoff.wait().await;
                }
            }
        }
    }

    /// The Local API answered: the link is up (logged when it was not).
    fn connected(&self) {
        if self.link.ok(Which::Report) != Connection::Connected {
            self.log.notice(&format!(
                "portsentry: crowdsec: reporting to {} as machine {}",
                self.lapi.url(),
                self.machine
            ));
        }
    }

    /// The queue's length and its overflow, into the status and the metrics.
    fn account(&self) {
        let lost = self.outbox.take_overflow();
        if lost > 0 {
            self.link.count_report("overflow", lost);
            self.metrics.crowdsec_report("overflow", lost);
        }
        self.link.set_queued(self.outbox.len() as u64);
    }

    fn failed(&self, e: &ApiError, what: &str) {
        let state = match e {
            ApiError::Denied(_) => Connection::Denied,
            _ => Connection::Down,
        };
        self.metrics.crowdsec_report("failed", 1);
        let before = self
            .link
            .failed(Which::Report, state, format!("{what}: {e}"));
        if before != state {
            self.log.warn(&format!(
                "portsentry: crowdsec: {what} to {} failed, {} reports queued, retrying: {e}",
                self.lapi.url(),
                self.outbox.len()
            ));
        }
    }

    async fn send(&self, token: &Secret, batch: &[Item]) -> Result<(), ApiError> {
        if let [Item::Unban { net, scenario }] = batch {
            let n = self.lapi.delete_decisions(token, net, scenario).await?;
            self.link.count_report("decisions_deleted", n);
            self.metrics.crowdsec_report("deleted", n);
            return Ok(());
        }
        let now = SystemTime::now();
        let alerts: Vec<Value> = batch.iter().filter_map(|i| alert(i, now)).collect();
        let ended = (batch.len() - alerts.len()) as u64;
        self.link.count_report("expired", ended);
        self.metrics.crowdsec_report("expired", ended);
        if alerts.is_empty() {
            return Ok(());
        }
        let n = alerts.len() as u64;
        self.lapi.push_alerts(token, &Value::Array(alerts)).await?;
        self.link.count_report("alerts_sent", n);
        self.metrics.crowdsec_report("sent", n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(net: &str, expires: Option<SystemTime>) -> Item {
        Item::Ban {
            net: net.parse().unwrap(),
            scenario: scenario(Some(ScanType::TcpSyn), false),
            since: SystemTime::UNIX_EPOCH,
            expires,
        }
    }

    #[test]
    fn alerts_carry_the_time_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let a = alert(
            &ban("192.0.2.9/32", Some(now + Duration::from_secs(90))),
            now,
        )
        .unwrap();
        assert_eq!(
            a["message"], "192.0.2.9 banned by portsentry (portsentry/tcp-syn-scan)",
            "no host name of ours"
        );
        assert_eq!(a["scenario"], "portsentry/tcp-syn-scan");
        assert_eq!(a["source"]["ip"], "192.0.2.9");
        let d = &a["decisions"][0];
        assert_eq!(
            (
                d["scope"].as_str(),
                d["value"].as_str(),
                d["duration"].as_str()
            ),
            (Some("Ip"), Some("192.0.2.9"), Some("90s"))
        );
        assert_eq!(d["origin"], ORIGIN);
        let r = alert(&ban("2001:db8::/64", None), now).unwrap();
        assert_eq!(r["decisions"][0]["scope"], "Range");
        assert_eq!(r["decisions"][0]["value"], "2001:db8::/64");
        assert_eq!(r["decisions"][0]["duration"], "31536000s");
        assert_eq!(alert(&ban("192.0.2.9/32", Some(now)), now), None, "ended");
        assert_eq!(scenario(None, true), "portsentry/escalation");
    }

    #[test]
    fn the_queue_is_bounded_and_batches_bans() {
        let o = Outbox::default();
        for i in 0..QUEUE_LIMIT {
            assert!(o.push(ban(&format!("10.{}.{}.1/32", i / 256, i % 256), None)));
        }
        assert!(!o.push(ban("192.0.2.1/32", None)));
        assert_eq!(o.take_overflow(), 1);
        assert_eq!(o.next().len(), BATCH);
        o.done(QUEUE_LIMIT - 1);
        o.push(Item::Unban {
            net: "192.0.2.1/32".parse().unwrap(),
            scenario: "s".into(),
        });
        assert_eq!(o.next().len(), 1, "the ban before the unban");
        o.done(1);
        assert!(matches!(o.next()[..], [Item::Unban { .. }]));
    }

    fn unban(net: &str) -> Item {
        Item::Unban {
            net: net.parse().unwrap(),
            scenario: scenario(Some(ScanType::TcpSyn), false),
        }
    }

    /// The Local API away, the queue full of bans: the operator's unban of one takes
    /// back its report (never sent, so never enforced by the fleet) and is queued; a
    /// ban being sent is not taken back, and its unban follows it over the limit; once
    /// a send failed, its bans wait again and may be taken back.
    #[test]
    fn an_unban_takes_back_its_ban_still_waiting() {
        let o = Outbox::default();
        let net = |i: usize| format!("10.{}.{}.1/32", i / 256, i % 256);
        for i in 0..QUEUE_LIMIT {
            assert!(o.push(ban(&net(i), None)));
        }
        let sending = o.next();
        assert_eq!(sending.len(), BATCH);
        assert!(
            o.push(unban(&net(QUEUE_LIMIT - 1))),
            "queued in a full queue"
        );
        assert!(
            o.push(unban(&net(0))),
            "its ban is being sent: over the limit"
        );
        assert!(
            !o.push(unban("192.0.2.1/32")),
            "no ban of it queued: no room"
        );
        assert_eq!(o.take_overflow(), 1);
        let q: Vec<Item> = o.queue.lock().unwrap().items.iter().cloned().collect();
        assert_eq!(q.len(), QUEUE_LIMIT + 1);
        assert!(!q.contains(&ban(&net(QUEUE_LIMIT - 1), None)), "taken back");
        assert_eq!(q[..BATCH], sending[..], "the batch being sent is untouched");
        assert_eq!(
            q[QUEUE_LIMIT - 1..],
            [unban(&net(QUEUE_LIMIT - 1)), unban(&net(0))]
        );
        // Restored over the limit (a queue saved with unbans over it): the newest bans
        // beyond it are dropped, never an unban.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reports.json");
        o.save(&file).unwrap();
        let again = Outbox::default();
        assert_eq!(again.restore(&file).unwrap().0, o.len());
        let unbans =
            |q: &VecDeque<Item>| q.iter().filter(|i| matches!(i, Item::Unban { .. })).count();
        let kept = {
            let restored = &again.queue.lock().unwrap().items;
            assert!(restored.len() <= QUEUE_LIMIT);
            assert_eq!(unbans(restored), unbans(&o.queue.lock().unwrap().items));
            restored.len()
        };
        // The file follows what was kept (it held the reports dropped until the next
        // change, and a restart dropped and counted them again).
        again.save(&file).unwrap();
        assert_eq!(Outbox::default().restore(&file).unwrap().0, kept);
        // The send failed: its bans wait again, and an unban takes one back.
        o.not_sent();
        assert!(o.push(unban(&net(1))));
        assert!(!o.queue.lock().unwrap().items.contains(&ban(&net(1), None)));
        let sending = o.next();
        o.done(sending.len());
        // Sent: the next unban of a waiting ban takes it back again.
        assert!(o.push(unban(&net(BATCH + 5))));
        // Another scenario's unban of an address does not take its ban back.
        assert!(o.push(Item::Unban {
            net: net(BATCH + 6).parse().unwrap(),
            scenario: scenario(None, true),
        }));
        let q = &o.queue.lock().unwrap().items;
        assert!(!q.contains(&ban(&net(BATCH + 5), None)));
        assert!(q.contains(&ban(&net(BATCH + 6), None)));
    }

    /// The deletions waiting are named by network and scenario until they are sent, and
    /// then to an answer asked for before they were.
    #[test]
    fn the_deletions_waiting_are_known_until_sent() {
        let o = Outbox::default();
        let before = SystemTime::now();
        assert!(o.unbans_since(before).is_empty());
        o.push(ban("192.0.2.1/32", None));
        o.push(unban("192.0.2.2/32"));
        let waiting = o.unbans_since(before);
        let net: IpNet = "192.0.2.2/32".parse().unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!(
            waiting[&net],
            [scenario(Some(ScanType::TcpSyn), false)],
            "{waiting:?}"
        );
        // Being sent: still waiting; sent: not any more, but to an answer asked for
        // before.
        let batch = o.next();
        assert_eq!(o.unbans_since(before).len(), 1);
        o.done(batch.len());
        let batch = o.next();
        assert!(matches!(batch[..], [Item::Unban { .. }]));
        assert_eq!(o.unbans_since(before).len(), 1);
        o.done(batch.len());
        let after = SystemTime::now() + Duration::from_millis(1);
        assert!(o.unbans_since(after).is_empty());
        assert_eq!(
            o.unbans_since(before)[&net],
            [scenario(Some(ScanType::TcpSyn), false)],
            "an answer asked for before the deletion was sent may still name it"
        );
    }

    /// The reports not yet sent outlive a restart, in their order and before those
    /// queued since; the file follows the queue and goes when it is empty.
    #[test]
    fn the_queue_is_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reports.json");
        let first = Outbox::default();
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        first.push(ban("192.0.2.9/32", Some(expires)));
        first.push(unban("192.0.2.10/32"));
        first.push(ban("2001:db8::/64", None));
        first.save(&file).unwrap();
        first.done(1);
        first.save(&file).unwrap();

        let second = Outbox::default();
        second.push(ban("192.0.2.11/32", None));
        assert_eq!(second.restore(&file).unwrap().0, 2);
        let q: Vec<Item> = second.queue.lock().unwrap().items.iter().cloned().collect();
        assert_eq!(
            q,
            [
                unban("192.0.2.10/32"),
                ban("2001:db8::/64", None),
                ban("192.0.2.11/32", None)
            ]
        );
        // The report queued before the file was read back is not in it: the next save
        // writes it. (It was taken as written, and lost at the next restart.)
        second.save(&file).unwrap();
        let again = Outbox::default();
        assert_eq!(again.restore(&file).unwrap().0, 3);
        // Restored as written: no write until the queue changes.
        std::fs::remove_file(&file).unwrap();
        again.save(&file).unwrap();
        assert!(!file.exists());
        again.done(3);
        std::fs::write(&file, "stale").unwrap();
        again.save(&file).unwrap();
        assert!(!file.exists(), "an empty queue leaves no file");
        assert_eq!(Outbox::default().restore(&file).unwrap().0, 0);
    }

    #[test]
    fn a_damaged_file_names_where_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reports.json");
        std::fs::write(
            &file,
            "[\n  {\"kind\": \"ban\", \"net\": \"nonsense\"}\n]\n",
        )
        .unwrap();
        let outbox = Outbox::default();
        let e = format!("{:#}", outbox.restore(&file).unwrap_err());
        assert!(e.starts_with(&format!("{}: ", file.display())), "{e}");
        assert!(
            e.contains("invalid IP address") && e.contains("line 3"),
            "{e}"
        );
        assert!(outbox.is_empty());
        assert!(file.exists());
        // A time no alert can carry (no system clock holds the first; the second is past
        // the year 9999, which the alert's dates end with): those reports are left out and
        // named, not a panic at the start or in the reporter; the others are queued.
        let ban = |since: u64| {
            format!(
                "{{\"kind\": \"ban\", \"net\": \"192.0.2.9/32\", \"scenario\": \"s\", \
                 \"since\": {since}, \"expires\": null}}"
            )
        };
        std::fs::write(
            &file,
            format!(
                "[{{\"kind\": \"unban\", \"net\": \"192.0.2.1/32\", \"scenario\": \"s\"}},\n\
                 {},\n{},\n{}]\n",
                ban(u64::MAX),
                ban(LATEST_SECS + 1),
                ban(LATEST_SECS)
            ),
        )
        .unwrap();
        let (n, left_out) = outbox.restore(&file).unwrap();
        assert_eq!(n, 2);
        let left_out: Vec<String> = left_out.iter().map(|e| format!("{e:#}")).collect();
        assert_eq!(left_out.len(), 2, "{left_out:?}");
        for (e, at) in left_out.iter().zip([2, 3]) {
            assert!(
                e.starts_with(&format!("{}: report {at} left out: ", file.display()))
                    && e.contains("past the year 9999"),
                "{e}"
            );
        }
        assert_eq!(outbox.len(), 2);
        // The last one's alert can be written.
        let q: Vec<Item> = outbox.queue.lock().unwrap().items.iter().cloned().collect();
        let future = SystemTime::UNIX_EPOCH + Duration::from_secs(LATEST_SECS - 10);
        assert!(alert(&q[1], future).is_some());
    }
}
