//! The optional Prometheus endpoint: `GET /metrics` in the OpenMetrics text format.
//!
//! Two kinds of numbers are exposed, and they are kept in two places:
//!
//! - What the kernel counts (`PS_COUNTERS`) and what the daemon can read off its maps at
//!   any moment (bans in force, sources tracked, capacities) is not duplicated here: the
//!   daemon passes [`serve`] a closure that gathers a [`Snapshot`], and [`Metrics::render`]
//!   writes those values as they are at scrape time. They go through a prometheus-client
//!   [`Collector`] built per scrape, with [`ConstCounter`] for the kernel's monotonic
//!   counters (so they render as `# TYPE x counter` with an `x_total` sample, and a
//!   counter reset after a reload is handled by Prometheus as usual) and [`ConstGauge`]
//!   for the levels. A collector per scrape needs no lock and no shared "last snapshot".
//! - What only the daemon sees (events read, bans added and removed, actions run) lives in
//!   [`Metrics`] as ordinary prometheus-client counters in a [`Registry`].
//!
//! Every family has the `portsentry_` prefix and HELP text. Label values the daemon is
//! known to use are created at zero up front, so a rate or an alert over them has a series
//! from the first scrape on.
//!
//! The endpoint is a `tiny_http` server on its own std thread, so a scrape never waits for
//! (or holds up) the tokio runtime that runs the packet loop.

use std::{
    fmt,
    net::SocketAddr,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
    thread::JoinHandle,
};

use anyhow::{Context as _, anyhow};
use portsentry_common::Counter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter as PromCounter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};

use portsentry_common::maps::BanOrigin;

use crate::{
    crowdsec::decisions::Outcome,
    kernel::Counters,
    kinds::{self, ActionKind, ActionResult, BanEnd},
};

/// The prefix of every metric name (`portsentry_...`).
pub const PREFIX: &str = "portsentry";

/// The `Content-Type` of a scrape: the OpenMetrics 1.0 text format that
/// [`Metrics::render`] writes. Prometheus asks for it first in its default
/// `scrape_protocols` and parses it natively (`_total` samples, `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the daemon knows at scrape time (gathered by a closure the daemon passes in).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Kernel counters summed over CPUs.
    pub counters: Counters,
    pub bans_active: u64,
    /// `PS_BANS` max entries.
    pub bans_capacity: u64,
    /// Entries in `PS_SOURCES` (may be a cached count).
    pub sources_tracked: u64,
    pub sources_capacity: u64,
    pub ignored_networks: u64,
    /// The CrowdSec link, when CROWDSEC_LAPI_URL is set.
    pub crowdsec: Option<crate::crowdsec::link::LinkStatus>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    kind: String,
    result: String,
}

/// Counters kept in userspace by the daemon.
///
/// Cheap to update from any thread (atomics behind a read lock); share it as an
/// `Arc<Metrics>` between the daemon and [`serve`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    events_read: PromCounter,
    bans_refused: PromCounter,
    reattached: PromCounter,
    unverified: PromCounter,
    bans_failed: PromCounter,
    bans_added: Family<OriginLabels, PromCounter>,
    bans_removed: Family<ReasonLabels, PromCounter>,
    actions: Family<ActionLabels, PromCounter>,
    crowdsec_decisions: Family<ResultLabels, PromCounter>,
    crowdsec_reports: Family<ResultLabels, PromCounter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The `result` values of `portsentry_crowdsec_reports_total`.
const REPORT_RESULTS: [&str; 5] = ["sent", "deleted", "failed", "overflow", "expired"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix(PREFIX),
            events_read: PromCounter::default(),
            bans_refused: PromCounter::default(),
            reattached: PromCounter::default(),
            unverified: PromCounter::default(),
            bans_failed: PromCounter::default(),
            bans_added: Family::default(),
            bans_removed: Family::default(),
            actions: Family::default(),
            crowdsec_decisions: Family::default(),
            crowdsec_reports: Family::default(),
        };
        for o in Outcome::ALL {
            m.crowdsec_decisions
                .get_or_create_owned(&result_labels(o.as_str()));
        }
        for r in REPORT_RESULTS {
            m.crowdsec_reports.get_or_create_owned(&result_labels(r));
        }
        // The label values the daemon uses exist at zero from the start.
        for origin in kinds::RECORDED_ORIGINS {
            m.bans_added.get_or_create_owned(&origin_labels(origin));
        }
        for reason in BanEnd::ALL {
            m.bans_removed.get_or_create_owned(&reason_labels(reason));
        }
        for kind in ActionKind::ALL {
            for result in ActionResult::ALL {
                // hosts.deny edits are not commands: they cannot time out.
                if result == ActionResult::TimedOut && !kind.is_command() {
                    continue;
                }
                m.actions.get_or_create_owned(&action_labels(kind, result));
            }
        }
        // Names without `_total`: the encoder adds it to counter samples.
        m.registry.register(
            "events_read",
            "Probe events the daemon read from the ring buffer",
            m.events_read.clone(),
        );
        m.registry.register(
            "bans_refused",
            "Scanners made to wait because MAX_BANS_PER_SEC was reached (banned in the next seconds, most persistent first)",
            m.bans_refused.clone(),
        );
        m.registry.register(
            "bans_failed",
            "Bans that could not be put in force (PS_BANS full: existing bans are never evicted)",
            m.bans_failed.clone(),
        );
        m.registry.register(
            "unverified_events",
            "Probe events not acted on because their source has not answered the challenge (VERIFY_SOURCES)",
            m.unverified.clone(),
        );
        m.registry.register(
            "reattached",
            "Times the program was found detached from an interface (by something else) and attached again",
            m.reattached.clone(),
        );
        m.registry.register(
            "bans_added",
            "Bans put in force, by origin (scan: a source reached SCAN_TRIGGER, or an escalation banned its network; manual: the ban command; crowdsec: a decision of the CrowdSec Local API)",
            m.bans_added.clone(),
        );
        m.registry.register(
            "bans_removed",
            "Bans that ended, by reason (expired: its time ran out; unbanned: the unban command; protected: the ban guard lifted it; escalated: the ban of its network replaced it; withdrawn: its CrowdSec decision was deleted)",
            m.bans_removed.clone(),
        );
        m.registry.register(
            "crowdsec_decisions",
            "Decisions of the CrowdSec Local API received, by result (applied, deleted, duplicate: a ban of ours or the operator's was in force, other_type, other_scope, filtered: CROWDSEC_ORIGINS or CROWDSEC_SCENARIOS_EXCLUDE, invalid: malformed, protected: refused by the ban guard, failed: the kernel map refused it)",
            m.crowdsec_decisions.clone(),
        );
        m.registry.register(
            "crowdsec_reports",
            "Reports to the CrowdSec Local API, by result (sent: alerts, deleted: our decisions deleted on unban, failed: calls that failed and are retried, overflow: reports dropped because the queue was full, expired: bans that ended before they could be sent)",
            m.crowdsec_reports.clone(),
        );
        m.registry.register(
            "actions",
            "Response steps run (KILL_HOSTS_DENY, KILL_ROUTE, KILL_RUN_CMD and their undoing), by kind and result",
            m.actions.clone(),
        );
        m
    }

    /// A ban was put in force.
    pub fn ban_added(&self, origin: BanOrigin) {
        self.bans_added.get_or_create(&origin_labels(origin)).inc();
    }

    /// A ban ended.
    pub fn ban_removed(&self, reason: BanEnd) {
        self.bans_removed
            .get_or_create(&reason_labels(reason))
            .inc();
    }

    /// A response step ran (a command, or a hosts.deny edit), and how it ended.
    pub fn action(&self, kind: ActionKind, result: ActionResult) {
        self.actions
            .get_or_create(&action_labels(kind, result))
            .inc();
    }

    /// `n` decisions of the Local API ended as `outcome`.
    pub fn crowdsec_decision(&self, outcome: Outcome, n: u64) {
        self.crowdsec_decisions
            .get_or_create(&result_labels(outcome.as_str()))
            .inc_by(n);
    }

    /// `n` reports to the Local API ended as `result` (one of [`REPORT_RESULTS`]).
    pub fn crowdsec_report(&self, result: &str, n: u64) {
        self.crowdsec_reports
            .get_or_create(&result_labels(result))
            .inc_by(n);
    }

    /// A probe event was read from the ring buffer.
    pub fn event_read(&self) {
        self.events_read.inc();
    }

    /// A ban could not be put in force (the ban map is full).
    pub fn ban_failed(&self) {
        self.bans_failed.inc();
    }

    /// A probe event from a source that has not answered the challenge.
    pub fn unverified(&self) {
        self.unverified.inc();
    }

    /// The program was found detached from an interface and attached again.
    pub fn reattached(&self) {
        self.reattached.inc();
    }

    /// A scanner was not banned because MAX_BANS_PER_SEC was reached.
    pub fn ban_refused(&self) {
        self.bans_refused.inc();
    }

    /// The full text exposition (OpenMetrics text format from prometheus-client), with the
    /// snapshot's values: the kernel-derived families first, then the daemon's counters,
    /// then `# EOF`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut kernel = Registry::with_prefix(PREFIX);
        kernel.register_collector(Box::new(SnapshotCollector(snap.clone())));
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail, and none of our values can fail to encode.
        text::encode_registry(&mut out, &kernel).expect("encoding metrics into a String");
        text::encode_registry(&mut out, &self.registry).expect("encoding metrics into a String");
        text::encode_eof(&mut out).expect("encoding metrics into a String");
        out
    }
}

fn origin_labels(origin: BanOrigin) -> OriginLabels {
    OriginLabels {
        origin: kinds::origin_name(origin).to_owned(),
    }
}

fn result_labels(result: &str) -> ResultLabels {
    ResultLabels {
        result: result.to_owned(),
    }
}

fn reason_labels(reason: BanEnd) -> ReasonLabels {
    ReasonLabels {
        reason: reason.as_str().to_owned(),
    }
}

fn action_labels(kind: ActionKind, result: ActionResult) -> ActionLabels {
    ActionLabels {
        kind: kind.as_str().to_owned(),
        result: result.as_str().to_owned(),
    }
}

/// Writes one [`Snapshot`]'s values; built afresh for every scrape.
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let c = &s.counters;

        let mut family = encoder.encode_descriptor(
            "packets",
            "Packets the XDP program saw, by verdict reason (drop_*: dropped, pass_*: passed); segments of connections are not counted.",
            None,
            MetricType::Counter,
        )?;
        for k in Counter::ALL
            .iter()
            .filter(|k| k.is_verdict() && k.is_counted())
        {
            let labels = [("reason", k.name())];
            ConstCounter::new(c.get(*k)).encode(family.encode_family(&labels)?)?;
        }
        counter(
            &mut encoder,
            "packets_dropped",
            "Packets the XDP program dropped (the sum of the drop reasons).",
            c.dropped(),
        )?;
        counter(
            &mut encoder,
            "packets_seen",
            "Packets the XDP program saw, segments of connections aside (the sum of the verdict reasons).",
            c.packets(),
        )?;

        let mut family = encoder.encode_descriptor(
            "kernel_events",
            "Events the XDP program counted on top of a packet's verdict.",
            None,
            MetricType::Counter,
        )?;
        for k in Counter::ALL.iter().filter(|k| !k.is_verdict()) {
            let labels = [("event", k.name())];
            ConstCounter::new(c.get(*k)).encode(family.encode_family(&labels)?)?;
        }
        counter(
            &mut encoder,
            "events_lost",
            "Probe events lost because the ring buffer was full (the daemon reads too slowly).",
            c.get(Counter::EventLost),
        )?;

        gauge(&mut encoder, "bans_active", "Bans in force.", s.bans_active)?;
        gauge(
            &mut encoder,
            "bans_capacity",
            "Bans the kernel map can hold.",
            s.bans_capacity,
        )?;
        gauge(
            &mut encoder,
            "sources_tracked",
            "Sources whose probes the kernel is counting.",
            s.sources_tracked,
        )?;
        gauge(
            &mut encoder,
            "sources_capacity",
            "Sources the kernel map can track.",
            s.sources_capacity,
        )?;
        gauge(
            &mut encoder,
            "ignored_networks",
            "Addresses and networks in the ignore list.",
            s.ignored_networks,
        )?;
        if let Some(cs) = &s.crowdsec {
            crowdsec_gauges(&mut encoder, cs)?;
        }
        Ok(())
    }
}

/// The CrowdSec link's levels: each side's connection, the bans enforced by kind, the
/// reports queued.
fn crowdsec_gauges(
    encoder: &mut DescriptorEncoder,
    cs: &crate::crowdsec::link::LinkStatus,
) -> fmt::Result {
    use crate::crowdsec::link::Connection;
    let mut family = encoder.encode_descriptor(
        "crowdsec_connected",
        "1 when the last call of this side (enforce: the decision stream; report: alerts) to the CrowdSec Local API succeeded.",
        None,
        MetricType::Gauge,
    )?;
    for (side, s) in [("enforce", &cs.enforce), ("report", &cs.report)] {
        if let Some(s) = s {
            let up = u64::from(s.state == Connection::Connected);
            ConstGauge::new(up).encode(family.encode_family(&[("side", side)])?)?;
        }
    }
    let e = &cs.enforced;
    let mut family = encoder.encode_descriptor(
        "crowdsec_bans",
        "Bans in force from CrowdSec decisions, by scope and family.",
        None,
        MetricType::Gauge,
    )?;
    for (scope, fam, n) in [
        ("ip", "ipv4", e.ip_v4),
        ("ip", "ipv6", e.ip_v6),
        ("range", "ipv4", e.range_v4),
        ("range", "ipv6", e.range_v6),
    ] {
        ConstGauge::new(n).encode(family.encode_family(&[("scope", scope), ("family", fam)])?)?;
    }
    gauge(
        encoder,
        "crowdsec_reports_queued",
        "Reports waiting to be sent to the CrowdSec Local API.",
        cs.queued,
    )
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Serves `GET /metrics` (and 404 for anything else) on `addr` from a background std
/// thread, calling `snapshot()` on every scrape. Returns after binding, so a bind error is
/// returned (with the address in the message); on success, the address actually bound
/// (the port the kernel chose when `addr` has port 0) and the thread, which serves for
/// the life of the process.
///
/// A panic in `snapshot()` answers that scrape with 500 and leaves the server running.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    snapshot: impl Fn() -> Snapshot + Send + Sync + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("the metrics server on {addr} has no IP address"))?;
    let content_type = tiny_http::Header::from_bytes(&b"Content-Type"[..], CONTENT_TYPE)
        .map_err(|()| anyhow!("invalid Content-Type header {CONTENT_TYPE:?}"))?;
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                answer(request, &metrics, &snapshot, &content_type);
            }
        })
        .with_context(|| format!("cannot start the metrics thread for {bound}"))?;
    Ok((bound, thread))
}

fn answer(
    request: tiny_http::Request,
    metrics: &Metrics,
    snapshot: &dyn Fn() -> Snapshot,
    content_type: &tiny_http::Header,
) {
    let path = request.url().split('?').next().unwrap_or_default();
    let response = if *request.method() == tiny_http::Method::Get && path == "/metrics" {
        match catch_unwind(AssertUnwindSafe(|| metrics.render(&snapshot()))) {
            Ok(body) => tiny_http::Response::from_string(body).with_header(content_type.clone()),
            Err(_) => {
                log::warn!("metrics: gathering the snapshot panicked; answered 500");
                tiny_http::Response::from_string("cannot gather metrics\n").with_status_code(500)
            }
        }
    } else {
        tiny_http::Response::from_string("not found; metrics are at /metrics\n")
            .with_status_code(404)
    };
    if let Err(e) = request.respond(response) {
        log::debug!("metrics: cannot answer a scrape: {e}");
    }
}

#[cfg(test)]
mod tests;
