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

use crate::{actions::Outcome, dataplane::Counters};

/// The prefix of every metric name (`portsentry_...`).
pub const PREFIX: &str = "portsentry";

/// The `Content-Type` of a scrape: the OpenMetrics 1.0 text format that
/// [`Metrics::render`] writes. Prometheus asks for it first in its default
/// `scrape_protocols` and parses it natively (`_total` samples, `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `origin` values of [`Metrics::ban_added`] created at zero.
const BAN_ORIGINS: [&str; 2] = ["scan", "manual"];
/// The `reason` values of [`Metrics::ban_removed`] created at zero.
const BAN_END_REASONS: [&str; 2] = ["expired", "unbanned"];
/// The `kind` values of [`Metrics::action`] and [`Metrics::action_result`] created at zero.
const ACTION_KINDS: [&str; 6] = [
    "hosts_deny",
    "route",
    "run_cmd",
    "unroute",
    "hosts_deny_remove",
    "unrun_cmd",
];
/// Every `result` value of `portsentry_actions_total`.
const ACTION_RESULTS: [&str; 3] = ["ok", "failed", "timed_out"];

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
}

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
        };
        // The label values the daemon uses exist at zero from the start.
        for origin in BAN_ORIGINS {
            m.bans_added.get_or_create_owned(&origin_labels(origin));
        }
        for reason in BAN_END_REASONS {
            m.bans_removed.get_or_create_owned(&reason_labels(reason));
        }
        for kind in ACTION_KINDS {
            for result in ACTION_RESULTS {
                // hosts.deny edits are not commands: they cannot time out.
                if result == "timed_out" && kind.starts_with("hosts_deny") {
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
            "Bans put in force, by origin (scan: a source reached SCAN_TRIGGER; manual: the ban command)",
            m.bans_added.clone(),
        );
        m.registry.register(
            "bans_removed",
            "Bans that ended, by reason (expired: its time ran out; unbanned: the unban command)",
            m.bans_removed.clone(),
        );
        m.registry.register(
            "actions",
            "Response steps run (KILL_HOSTS_DENY, KILL_ROUTE, KILL_RUN_CMD and their undoing), by kind and result",
            m.actions.clone(),
        );
        m
    }

    /// A ban was put in force (origin "scan" or "manual").
    pub fn ban_added(&self, origin: &str) {
        self.bans_added.get_or_create(&origin_labels(origin)).inc();
    }

    /// A ban ended (reason "expired" or "unbanned").
    pub fn ban_removed(&self, reason: &str) {
        self.bans_removed
            .get_or_create(&reason_labels(reason))
            .inc();
    }

    /// A response step ran: kind is one of "hosts_deny", "route", "run_cmd", "unroute",
    /// "hosts_deny_remove", "unrun_cmd". Exit status 0 counts as `ok`, a timeout as
    /// `timed_out`, anything else (a non-zero status, a signal, a failed spawn) as `failed`.
    pub fn action(&self, kind: &str, outcome: &Outcome) {
        self.count_action(kind, result_label(outcome));
    }

    /// An action that is not a command (hosts.deny append/remove): ok or failed.
    pub fn action_result(&self, kind: &str, ok: bool) {
        self.count_action(kind, if ok { "ok" } else { "failed" });
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

    fn count_action(&self, kind: &str, result: &str) {
        self.actions
            .get_or_create(&action_labels(kind, result))
            .inc();
    }
}

fn origin_labels(origin: &str) -> OriginLabels {
    OriginLabels {
        origin: origin.to_owned(),
    }
}

fn reason_labels(reason: &str) -> ReasonLabels {
    ReasonLabels {
        reason: reason.to_owned(),
    }
}

fn action_labels(kind: &str, result: &str) -> ActionLabels {
    ActionLabels {
        kind: kind.to_owned(),
        result: result.to_owned(),
    }
}

/// The `result` label of a command's outcome.
fn result_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Exited(0) => "ok",
        Outcome::TimedOut => "timed_out",
        Outcome::Exited(_) | Outcome::Signaled(_) | Outcome::SpawnFailed(_) => "failed",
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
            "Packets the XDP program saw, by verdict reason (drop_*: dropped, pass_*: passed).",
            None,
            MetricType::Counter,
        )?;
        for k in Counter::ALL.iter().filter(|k| k.is_verdict()) {
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
            "Packets the XDP program saw (the sum of all verdict reasons).",
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
        )
    }
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
    log::info!("serving metrics on http://{bound}/metrics");
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
mod tests {
    use std::{
        collections::HashSet,
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    use super::*;

    fn snapshot() -> Snapshot {
        let mut counters = Counters::default();
        counters.0[Counter::DropBanned as usize] = 7;
        counters.0[Counter::PassNotIp as usize] = 5;
        counters.0[Counter::PassProbe as usize] = 3;
        counters.0[Counter::EventSent as usize] = 3;
        counters.0[Counter::EventLost as usize] = 2;
        Snapshot {
            counters,
            bans_active: 4,
            bans_capacity: 65536,
            sources_tracked: 11,
            sources_capacity: 131072,
            ignored_networks: 3,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    fn assert_line(text: &str, line: &str) {
        assert!(
            lines(text).contains(&line),
            "missing line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn render_snapshot_values() {
        let m = Metrics::new();
        let text = m.render(&snapshot());
        for line in [
            "# TYPE portsentry_packets counter",
            r#"portsentry_packets_total{reason="drop_banned"} 7"#,
            r#"portsentry_packets_total{reason="pass_not_ip"} 5"#,
            r#"portsentry_packets_total{reason="pass_probe"} 3"#,
            r#"portsentry_packets_total{reason="pass_listening"} 0"#,
            "# TYPE portsentry_packets_dropped counter",
            "portsentry_packets_dropped_total 7",
            "portsentry_packets_seen_total 15",
            "# TYPE portsentry_kernel_events counter",
            r#"portsentry_kernel_events_total{event="event_sent"} 3"#,
            r#"portsentry_kernel_events_total{event="event_lost"} 2"#,
            r#"portsentry_kernel_events_total{event="track_failed"} 0"#,
            "# HELP portsentry_events_lost Probe events lost because the ring buffer was full (the daemon reads too slowly).",
            "# TYPE portsentry_events_lost counter",
            "portsentry_events_lost_total 2",
            "# TYPE portsentry_bans_active gauge",
            "portsentry_bans_active 4",
            "portsentry_bans_capacity 65536",
            "# TYPE portsentry_sources_tracked gauge",
            "portsentry_sources_tracked 11",
            "portsentry_sources_capacity 131072",
            "portsentry_ignored_networks 3",
            "# HELP portsentry_events_read Probe events the daemon read from the ring buffer.",
            "# TYPE portsentry_events_read counter",
            "portsentry_events_read_total 0",
            r#"portsentry_bans_added_total{origin="scan"} 0"#,
            r#"portsentry_bans_removed_total{reason="unbanned"} 0"#,
            r#"portsentry_actions_total{kind="unrun_cmd",result="timed_out"} 0"#,
        ] {
            assert_line(&text, line);
        }
        assert!(text.ends_with("\n# EOF\n"), "no EOF at the end:\n{text}");
        // Verdict reasons and events do not mix.
        assert!(!text.contains(r#"reason="ban_expired""#), "{text}");
        assert!(!text.contains(r#"event="drop_banned""#), "{text}");
        for k in Counter::ALL {
            let label = if k.is_verdict() { "reason" } else { "event" };
            let needle = format!(r#"{{{label}="{}"}}"#, k.name());
            assert_eq!(text.matches(&needle).count(), 1, "{needle} in:\n{text}");
        }
    }

    /// Every family is declared once, with HELP right before TYPE, and every sample
    /// belongs to the family declared above it.
    #[test]
    fn render_is_well_formed() {
        let text = Metrics::new().render(&snapshot());
        let mut families = HashSet::new();
        let mut current: Option<(String, String)> = None; // (name, type)
        let mut help: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, h) = rest.split_once(' ').expect("HELP has text");
                assert!(!h.is_empty(), "{line}");
                help = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE has a type");
                assert_eq!(help.as_deref(), Some(name), "TYPE without HELP: {line}");
                assert!(name.starts_with("portsentry_"), "{line}");
                assert!(!name.ends_with("_total"), "{line}");
                assert!(families.insert(name.to_owned()), "{name} declared twice");
                current = Some((name.to_owned(), ty.to_owned()));
            } else if line == "# EOF" {
                continue;
            } else {
                let (name, ty) = current.as_ref().expect("a sample before any TYPE");
                let sample = line.split(['{', ' ']).next().unwrap_or_default();
                let expected = match ty.as_str() {
                    "counter" => format!("{name}_total"),
                    _ => name.clone(),
                };
                assert_eq!(sample, expected, "{line}");
            }
        }
        let expected: HashSet<String> = [
            "packets",
            "packets_dropped",
            "packets_seen",
            "kernel_events",
            "events_lost",
            "events_read",
            "bans_active",
            "bans_capacity",
            "bans_refused",
            "reattached",
            "unverified_events",
            "bans_failed",
            "bans_added",
            "bans_removed",
            "actions",
            "sources_tracked",
            "sources_capacity",
            "ignored_networks",
        ]
        .iter()
        .map(|n| format!("portsentry_{n}"))
        .collect();
        assert_eq!(families, expected);
    }

    #[test]
    fn userspace_counters() {
        let m = Metrics::new();
        m.event_read();
        m.event_read();
        m.ban_added("scan");
        m.ban_added("manual");
        m.ban_added("scan");
        m.ban_removed("expired");
        m.action_result("hosts_deny", true);
        m.action_result("hosts_deny_remove", false);
        let text = m.render(&Snapshot::default());
        for line in [
            "portsentry_events_read_total 2",
            r#"portsentry_bans_added_total{origin="scan"} 2"#,
            r#"portsentry_bans_added_total{origin="manual"} 1"#,
            r#"portsentry_bans_removed_total{reason="expired"} 1"#,
            r#"portsentry_bans_removed_total{reason="unbanned"} 0"#,
            r#"portsentry_actions_total{kind="hosts_deny",result="ok"} 1"#,
            r#"portsentry_actions_total{kind="hosts_deny_remove",result="failed"} 1"#,
            r#"portsentry_actions_total{kind="hosts_deny",result="failed"} 0"#,
            "portsentry_packets_seen_total 0",
        ] {
            assert_line(&text, line);
        }
        assert!(
            !text.contains(r#"kind="hosts_deny",result="timed_out""#),
            "{text}"
        );
    }

    #[test]
    fn action_outcomes() {
        assert_eq!(result_label(&Outcome::Exited(0)), "ok");
        assert_eq!(result_label(&Outcome::Exited(1)), "failed");
        assert_eq!(result_label(&Outcome::Exited(-1)), "failed");
        assert_eq!(result_label(&Outcome::Signaled(9)), "failed");
        assert_eq!(result_label(&Outcome::TimedOut), "timed_out");
        assert_eq!(
            result_label(&Outcome::SpawnFailed("no such file".into())),
            "failed"
        );

        let m = Metrics::new();
        m.action("run_cmd", &Outcome::Exited(0));
        m.action("run_cmd", &Outcome::Exited(2));
        m.action("run_cmd", &Outcome::Signaled(15));
        m.action("run_cmd", &Outcome::SpawnFailed("x".into()));
        m.action("route", &Outcome::TimedOut);
        m.action("unroute", &Outcome::Exited(0));
        let text = m.render(&Snapshot::default());
        for line in [
            r#"portsentry_actions_total{kind="run_cmd",result="ok"} 1"#,
            r#"portsentry_actions_total{kind="run_cmd",result="failed"} 3"#,
            r#"portsentry_actions_total{kind="run_cmd",result="timed_out"} 0"#,
            r#"portsentry_actions_total{kind="route",result="timed_out"} 1"#,
            r#"portsentry_actions_total{kind="route",result="ok"} 0"#,
            r#"portsentry_actions_total{kind="unroute",result="ok"} 1"#,
        ] {
            assert_line(&text, line);
        }
    }

    /// One HTTP/1.0 request; returns (status line, headers, body).
    fn get(addr: SocketAddr, method: &str, path: &str) -> (String, Vec<(String, String)>, String) {
        let mut s = TcpStream::connect(addr).expect("connect to the metrics server");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read the response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header/body separator");
        let mut head = head.split("\r\n");
        let status = head.next().unwrap_or_default().to_owned();
        let headers = head
            .filter_map(|h| h.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        (status, headers, body.to_owned())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn serve_scrapes() {
        let metrics = Arc::new(Metrics::new());
        let scrapes = Arc::new(AtomicU64::new(0));
        let seen = scrapes.clone();
        let (bound, _thread) = serve("127.0.0.1:0".parse().unwrap(), metrics.clone(), move || {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            Snapshot {
                bans_active: n,
                ..snapshot()
            }
        })
        .expect("serve on 127.0.0.1:0");
        assert_ne!(bound.port(), 0);
        metrics.ban_added("scan");

        let (status, headers, body) = get(bound, "GET", "/metrics");
        assert!(
            status.starts_with("HTTP/1.") && status.contains(" 200 "),
            "{status}"
        );
        assert_eq!(header(&headers, "content-type"), Some(CONTENT_TYPE));
        let expected = Snapshot {
            bans_active: 1,
            ..snapshot()
        };
        assert_eq!(body, metrics.render(&expected));
        assert_line(&body, r#"portsentry_packets_total{reason="drop_banned"} 7"#);
        assert_line(&body, r#"portsentry_bans_added_total{origin="scan"} 1"#);

        // The snapshot is taken afresh on every scrape; a query string is ignored.
        let (status, _, body) = get(bound, "GET", "/metrics?x=1");
        assert!(status.contains(" 200 "), "{status}");
        assert_line(&body, "portsentry_bans_active 2");

        for (method, path) in [("GET", "/other"), ("GET", "/"), ("POST", "/metrics")] {
            let (status, _, _) = get(bound, method, path);
            assert!(status.contains(" 404 "), "{method} {path}: {status}");
        }
        assert_eq!(scrapes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn serve_survives_a_panicking_snapshot() {
        let (bound, _thread) = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new()),
            || panic!("snapshot failed (on purpose, in a test)"),
        )
        .expect("serve on 127.0.0.1:0");
        for _ in 0..2 {
            let (status, _, _) = get(bound, "GET", "/metrics");
            assert!(status.contains(" 500 "), "{status}");
        }
    }

    #[test]
    fn serve_bind_error_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, Arc::new(Metrics::new()), Snapshot::default)
            .expect_err("the port is taken");
        let msg = format!("{err:#}");
        assert!(msg.contains(&addr.to_string()), "{msg}");
    }
}
