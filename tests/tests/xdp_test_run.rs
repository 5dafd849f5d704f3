//! The XDP program through BPF_PROG_TEST_RUN with hand-built frames.

use std::net::IpAddr;

use portsentry_common::{Counter, ScanType};
use portsentry_tests::{
    fixture::Fixture,
    frames::{Frame, flags::*},
    require_kernel,
    testrun::{XDP_DROP, XDP_PASS},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn syn_probe_is_counted_and_reported() {
    require_kernel!();
    let mut fx = Fixture::new();
    let src = ip("192.0.2.7");
    let frame = Frame::tcp(src, ip("192.0.2.1"), 22, SYN).build();
    let o = fx.expect(&frame, XDP_PASS, Counter::PassProbe);
    assert_eq!(o.delta.get(Counter::EventSent), 1);
    let s = fx.dp.source(src).unwrap().expect("source tracked");
    assert_eq!((s.hits, s.distinct_ports, s.last_port), (1, 1, 22));
    assert_eq!(s.last_scan_type, ScanType::TcpSyn as u8);
    let ev = fx.drain_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].port, 22);
    assert_eq!(ev[0].scan_type, ScanType::TcpSyn as u8);
    assert_eq!(portsentry_user::addr::from_key(&ev[0].addr), src);
}
