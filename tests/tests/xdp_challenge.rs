//! Source verification (VERIFY_SOURCES) in the XDP program, through BPF_PROG_TEST_RUN: a
//! SYN probe is answered with a SYN-ACK cookie, and only the right answer verifies the
//! source.

use std::net::IpAddr;

use portsentry_common::{Counter, ScanType, maps::Settings, packet};
use portsentry_tests::{
    fixture::Fixture,
    frames::{Frame, flags::*, tcp_checksum_ok, with_tcp_checksum},
    probe_asserts::{ip, pairs},
    require_kernel,
    testrun::XDP_PASS,
};
use portsentry_user::clock::monotonic_ns;

#[test]
fn verification_challenges_syns_and_verifies_answers() {
    require_kernel!();
    use portsentry_common::maps::{EVENT_VERIFIED, SETTING_VERIFY, SOURCE_VERIFIED};
    let secret = 0x5eed_1234_abcd_9876;
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: 1,
        events_per_sec: 0,
        event_burst: 0,
        flags: SETTING_VERIFY,
        cookie_secret: secret,
        trw: Default::default(),
    });
    for (src, dst) in pairs() {
        // A SYN probe is answered with a SYN-ACK challenge (XDP_TX) and counted.
        let (syn, bounds) = Frame::tcp(src, dst, 22, SYN)
            .vlans(&[0x8100])
            .build_with_boundaries();
        let l4 = *bounds.last().unwrap();
        let syn = with_tcp_checksum(syn, src, dst, l4);
        let (o, out) = fx.run_out(&syn);
        assert_eq!(o.retval, portsentry_tests::testrun::XDP_TX, "{o:?}");
        assert_eq!(o.reason(), Counter::TxChallenge);
        assert_eq!(fx.hits(src), 1);
        let ev = fx.drain_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].flags & EVENT_VERIFIED, 0, "a SYN proves nothing");
        // The answer: MACs, addresses and ports swapped, SYN|ACK, ack = seq + 1, a
        // valid checksum, and the cookie as sequence number.
        assert_eq!(out.len(), syn.len());
        assert_eq!(out[0..6], syn[6..12]);
        assert_eq!(out[6..12], syn[0..6]);
        let back = packet::classify(out.as_slice()).map(|p| p.ip);
        let ip_out = match back {
            Ok(ip) => ip,
            Err(_) => packet::parse_ip(out.as_slice()).unwrap(),
        };
        assert_eq!(
            packet::addr_bytes(&ip_out.src),
            portsentry_user::kernel::addr::to_key(dst)
        );
        assert_eq!(
            packet::addr_bytes(&ip_out.dst),
            portsentry_user::kernel::addr::to_key(src)
        );
        let t = &out[l4..];
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 22, "source port");
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 40000, "destination port");
        assert_eq!(t[13], SYN | ACK);
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
        assert_eq!(ack, 0x0102_0304 + 1);
        assert!(
            tcp_checksum_ok(&out, dst, src, l4),
            "TCP checksum of the challenge"
        );
        let ip_in = packet::parse_ip(syn.as_slice()).unwrap();
        let slot = portsentry_common::maps::cookie_slot(monotonic_ns());
        let want =
            |slot| portsentry_common::maps::cookie(&ip_in.src, &ip_in.dst, 40000, 22, secret, slot);
        assert!(
            seq == want(slot) || seq == want(slot - 1),
            "the cookie is the sequence number"
        );

        // A wrong answer proves nothing and is ordinary traffic.
        let mut bad = Frame::tcp(src, dst, 22, ACK).vlans(&[0x8100]).build();
        bad[l4 + 8..l4 + 12].copy_from_slice(&(seq.wrapping_add(2)).to_be_bytes());
        let o = fx.expect(&bad, XDP_PASS, Counter::PassNotProbe);
        assert_eq!(o.delta.get(Counter::Verified), 0);
        assert!(fx.drain_events().is_empty());

        // The right answer (an ACK acknowledging the cookie) verifies the source.
        let mut good = bad.clone();
        good[l4 + 8..l4 + 12].copy_from_slice(&(seq.wrapping_add(1)).to_be_bytes());
        let o = fx.expect(&good, XDP_PASS, Counter::PassProbe);
        assert_eq!(o.delta.get(Counter::Verified), 1);
        let ev = fx.drain_events();
        assert_eq!(ev.len(), 1, "a verified answer is always reported");
        assert_eq!(ev[0].flags & EVENT_VERIFIED, EVENT_VERIFIED);
        let s = fx.dp.source(src).unwrap().unwrap();
        assert_eq!(s.flags & SOURCE_VERIFIED, SOURCE_VERIFIED);
        // Another source's ACK with the same numbers is not an answer (the cookie
        // covers the addresses).
        let other: IpAddr = if src.is_ipv4() {
            ip("192.0.2.99")
        } else {
            ip("2001:db8::99")
        };
        let mut forged = Frame::tcp(other, dst, 22, ACK).vlans(&[0x8100]).build();
        forged[l4 + 8..l4 + 12].copy_from_slice(&(seq.wrapping_add(1)).to_be_bytes());
        fx.expect(&forged, XDP_PASS, Counter::PassNotProbe);
        // Non-SYN probes are counted as usual, not challenged.
        fx.expect(
            &Frame::tcp(src, dst, 23, FIN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        fx.drain_events();

        // To a port the ACK class watches (23: watched, no service), a pure ACK that
        // answers no challenge is an ACK-class probe, counted as one; a FIN+ACK, which
        // answers none, is Maimon's probe.
        for (flags, kind) in [(ACK, ScanType::TcpAck), (FIN | ACK, ScanType::TcpMaimon)] {
            let before = fx.hits(src);
            let mut probe = Frame::tcp(src, dst, 23, flags).vlans(&[0x8100]).build();
            probe[l4 + 8..l4 + 12].copy_from_slice(&(seq.wrapping_add(1)).to_be_bytes());
            let o = fx.expect(&probe, XDP_PASS, Counter::PassProbe);
            assert_eq!(o.delta.get(Counter::Verified), 0, "{kind:?}");
            assert_eq!(fx.hits(src), before + 1, "{kind:?} counted");
            let ev = fx.drain_events();
            assert_eq!(ev.len(), 1, "{kind:?}");
            assert_eq!(ev[0].scan_type, kind as u8);
            assert_eq!(ev[0].flags & EVENT_VERIFIED, 0);
        }
        // And the right answer to a challenge sent from there verifies the source
        // rather than counting an ACK-class probe.
        let syn23 = with_tcp_checksum(
            Frame::tcp(src, dst, 23, SYN).vlans(&[0x8100]).build(),
            src,
            dst,
            l4,
        );
        let (o, out) = fx.run_out(&syn23);
        assert_eq!(o.reason(), Counter::TxChallenge);
        fx.drain_events();
        let cookie23 = u32::from_be_bytes([out[l4 + 4], out[l4 + 5], out[l4 + 6], out[l4 + 7]]);
        let mut answer = Frame::tcp(src, dst, 23, ACK).vlans(&[0x8100]).build();
        answer[l4 + 8..l4 + 12].copy_from_slice(&(cookie23.wrapping_add(1)).to_be_bytes());
        let o = fx.expect(&answer, XDP_PASS, Counter::PassProbe);
        assert_eq!(o.delta.get(Counter::Verified), 1);
        let ev = fx.drain_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(
            ev[0].scan_type,
            ScanType::TcpSyn as u8,
            "reported as the SYN"
        );
        assert_eq!(ev[0].flags & EVENT_VERIFIED, EVENT_VERIFIED);
    }
}
