//! Scan events from the XDP program to userspace, through BPF_PROG_TEST_RUN: bounded per
//! source, throttled by the event budget, and lost events counted and sent again.

use std::net::IpAddr;

use portsentry_common::{
    Counter, ScanType,
    maps::{EVENT_BURST, Settings},
};
use portsentry_tests::{
    fixture::Fixture,
    frames::{Frame, flags::*},
    probe_asserts::{V4_DST, V4_SRC, ip},
    require_kernel,
    testrun::XDP_PASS,
};

#[test]
fn events_are_bounded_per_source() {
    require_kernel!();
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: 3,
        ..Default::default()
    });
    let (src, dst) = (ip(V4_SRC), ip(V4_DST));
    let mut sent = Vec::new();
    for i in 1..=1000u32 {
        let port = 200 + (i % 800) as u16;
        let o = fx.expect(
            &Frame::tcp(src, dst, port, SYN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        if o.delta.get(Counter::EventSent) == 1 {
            sent.push(i);
        }
    }
    // Nothing before the trigger, every probe for EVENT_BURST events, then powers of two.
    let mut want: Vec<u32> = (3..3 + EVENT_BURST).collect();
    want.extend([16, 32, 64, 128, 256, 512]);
    assert_eq!(sent, want);
    let events = fx.drain_events();
    assert_eq!(events.iter().map(|e| e.hits).collect::<Vec<_>>(), want);
    let s = fx.dp.source(src).unwrap().unwrap();
    assert_eq!(s.hits, 1000);
    assert_eq!(u32::from(s.events), want.len() as u32);
    // The port filter estimates distinct ports: 800 distinct ports saturate it near 256.
    assert!(
        s.distinct_ports > 200 && s.distinct_ports <= 256,
        "{}",
        s.distinct_ports
    );
}

/// A source past the trigger whose UDP probes spent the burst is reported again at its
/// first TCP probe (one event, whatever the hit count), and at no other: the daemon acts
/// on each protocol's scan, as PortSentry keeps a blocked file a protocol.
#[test]
fn the_first_probe_of_another_protocol_is_reported() {
    require_kernel!();
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: 3,
        ..Default::default()
    });
    let (src, dst) = (ip(V4_SRC), ip(V4_DST));
    let mut sent = Vec::new();
    let mut probe = |i: u32, frame: Frame| {
        let o = fx.expect(&frame.build(), XDP_PASS, Counter::PassProbe);
        if o.delta.get(Counter::EventSent) == 1 {
            sent.push(i);
        }
    };
    for i in 1..=100u32 {
        probe(i, Frame::udp(src, dst, 200 + i as u16));
    }
    for i in 101..=110u32 {
        probe(i, Frame::tcp(src, dst, 200 + i as u16, SYN));
    }
    for i in 111..=120u32 {
        probe(i, Frame::udp(src, dst, 200 + i as u16));
    }
    let mut want: Vec<u32> = (3..3 + EVENT_BURST).collect();
    want.extend([16, 32, 64, 101]);
    assert_eq!(sent, want);
    let events = fx.drain_events();
    assert_eq!(
        events.last().map(|e| e.scan_type),
        Some(ScanType::TcpSyn as u8)
    );
}

#[test]
fn event_budget_throttles_floods_and_counts_them() {
    require_kernel!();
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: 1,
        events_per_sec: 1,
        event_burst: 5,
        flags: 0,
        cookie_secret: 0,
        trw: Default::default(),
    });
    let dst = ip(V4_DST);
    let mut sent = 0;
    let mut throttled = 0;
    for i in 0..200u32 {
        let src = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
        let o = fx.expect(
            &Frame::udp(src, dst, 161).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        sent += o.delta.get(Counter::EventSent);
        throttled += o.delta.get(Counter::EventThrottled);
        assert_eq!(fx.hits(src), 1, "every probe is still counted");
    }
    // The bucket starts empty and refills at one per second: a handful at most.
    assert!(sent <= 7, "sent {sent}");
    assert_eq!(sent + throttled, 200);
    assert_eq!(fx.drain_events().len() as u64, sent);
    // A source that keeps probing is reported even with the budget spent: from its
    // third hit on its events bypass the budget (still bounded per source).
    let persistent = ip("192.0.2.50");
    let mut got = Vec::new();
    for hit in 1..=6u16 {
        let f = Frame::udp(persistent, dst, 160 + hit).build();
        let o = fx.expect(&f, XDP_PASS, Counter::PassProbe);
        if o.delta.get(Counter::EventSent) == 1 {
            got.push(hit);
        }
    }
    assert!(got.ends_with(&[3, 4, 5, 6]), "events at hits {got:?}");
}

#[test]
fn lost_events_are_counted_and_retried() {
    require_kernel!();
    let mut fx = Fixture::new();
    let dst = ip(V4_DST);
    // Fill the ring buffer without reading it.
    let mut lost = 0;
    let mut i = 0u32;
    while lost == 0 {
        let src = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
        let o = fx.expect(
            &Frame::udp(src, dst, 161).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        lost += o.delta.get(Counter::EventLost);
        i += 1;
        assert!(i < 200_000, "the ring buffer never filled");
    }
    // The source whose event was lost gets one on its next probe once there is room.
    let last = IpAddr::from([198, 18, ((i - 1) >> 8) as u8, (i - 1) as u8]);
    assert_eq!(fx.dp.source(last).unwrap().unwrap().events, 0);
    let drained = fx.drain_events();
    assert_eq!(drained.len() as u32, i - 1);
    let o = fx.expect(
        &Frame::udp(last, dst, 162).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    assert_eq!(o.delta.get(Counter::EventSent), 1);
    assert_eq!(fx.dp.source(last).unwrap().unwrap().events, 1);
}
