//! Unit tests of the metrics: rendering, the userspace counters, the endpoint.
use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use super::*;
use crate::actions::shell::Outcome;

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
        crowdsec: None,
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
        // The one verdict not counted is left out.
        let times = usize::from(k.is_counted());
        assert_eq!(text.matches(&needle).count(), times, "{needle} in:\n{text}");
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
        "crowdsec_decisions",
        "crowdsec_reports",
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
    m.ban_added(BanOrigin::Scan);
    m.ban_added(BanOrigin::Manual);
    m.ban_added(BanOrigin::Scan);
    m.ban_removed(BanEnd::Expired);
    m.action(ActionKind::HostsDeny, ActionResult::Ok);
    m.action(ActionKind::HostsDenyRemove, ActionResult::Failed);
    let text = m.render(&Snapshot::default());
    for line in [
        "portsentry_events_read_total 2",
        r#"portsentry_bans_added_total{origin="scan"} 2"#,
        r#"portsentry_bans_added_total{origin="manual"} 1"#,
        r#"portsentry_bans_added_total{origin="crowdsec"} 0"#,
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
    let label = |o: Outcome| o.result().as_str();
    assert_eq!(label(Outcome::Exited(0)), "ok");
    assert_eq!(label(Outcome::Exited(1)), "failed");
    assert_eq!(label(Outcome::Exited(-1)), "failed");
    assert_eq!(label(Outcome::Signaled(9)), "failed");
    assert_eq!(label(Outcome::TimedOut), "timed_out");
    assert_eq!(label(Outcome::SpawnFailed("no such file".into())), "failed");

    let m = Metrics::new();
    m.action(ActionKind::RunCmd, Outcome::Exited(0).result());
    m.action(ActionKind::RunCmd, Outcome::Exited(2).result());
    m.action(ActionKind::RunCmd, Outcome::Signaled(15).result());
    m.action(
        ActionKind::RunCmd,
        Outcome::SpawnFailed("x".into()).result(),
    );
    m.action(ActionKind::Route, Outcome::TimedOut.result());
    m.action(ActionKind::Unroute, Outcome::Exited(0).result());
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
    metrics.ban_added(BanOrigin::Scan);

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
    let err =
        serve(addr, Arc::new(Metrics::new()), Snapshot::default).expect_err("the port is taken");
    let msg = format!("{err:#}");
    assert!(msg.contains(&addr.to_string()), "{msg}");
}

/// The Prometheus alert rules the Debian package installs name only metrics this
/// daemon exports, and their unit tests feed series with real names and label values:
/// `promtool test rules` alone would pass rules written against metrics that do not exist.
#[test]
fn alert_rules_use_exported_metrics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus");
    let rules = std::fs::read_to_string(dir.join("portsentry.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("portsentry.rules.test.yml")).unwrap();
    let text = Metrics::new().render(&snapshot());
    let samples: HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let names = |s: &str| -> Vec<String> {
        let mut out = Vec::new();
        for (at, _) in s.match_indices("portsentry_") {
            let name: String = s[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
        out
    };
    let expr_names: Vec<String> = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .flat_map(names)
        .collect();
    assert!(expr_names.len() >= 6, "{expr_names:?}");
    for name in &expr_names {
        assert!(
            samples.contains(name.as_str()),
            "{name} is not exported:\n{text}"
        );
    }
    // Every input series of the rule tests is one the daemon renders (its labels but
    // `instance`, which Prometheus adds).
    let mut series = 0;
    for line in tests.lines() {
        let Some(s) = line.trim().strip_prefix("- series: '") else {
            continue;
        };
        let s = s.trim_end_matches('\'');
        let (name, labels) = s.split_once('{').unwrap();
        let labels: Vec<&str> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.starts_with("instance="))
            .collect();
        assert!(
            text.lines()
                .any(|l| l.split(['{', ' ']).next() == Some(name)
                    && labels.iter().all(|lab| l.contains(lab))),
            "the test series {s} matches nothing the daemon renders:\n{text}"
        );
        series += 1;
    }
    assert!(series >= 10, "only {series} series found");
}

#[test]
fn crowdsec_link() {
    use crate::crowdsec::{
        decisions::Outcome,
        link::{Connection, Enforced, LinkStatus, Side},
    };
    let m = Metrics::new();
    m.crowdsec_decision(Outcome::Applied, 3);
    m.crowdsec_report("overflow", 2);
    let text = m.render(&Snapshot {
        crowdsec: Some(LinkStatus {
            enforce: Some(Side {
                state: Connection::Connected,
                ..Side::default()
            }),
            report: Some(Side::default()),
            enforced: Enforced {
                ip_v4: 5,
                range_v6: 1,
                ..Enforced::default()
            },
            queued: 7,
            ..LinkStatus::default()
        }),
        ..snapshot()
    });
    for line in [
        r#"portsentry_crowdsec_decisions_total{result="applied"} 3"#,
        r#"portsentry_crowdsec_decisions_total{result="protected"} 0"#,
        r#"portsentry_crowdsec_reports_total{result="overflow"} 2"#,
        r#"portsentry_crowdsec_connected{side="enforce"} 1"#,
        r#"portsentry_crowdsec_connected{side="report"} 0"#,
        r#"portsentry_crowdsec_bans{scope="ip",family="ipv4"} 5"#,
        r#"portsentry_crowdsec_bans{scope="range",family="ipv6"} 1"#,
        "portsentry_crowdsec_reports_queued 7",
    ] {
        assert_line(&text, line);
    }
}
