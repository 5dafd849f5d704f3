//! The kernel-side ban through BPF_PROG_TEST_RUN: the probe that reaches the trigger is
//! dropped and its source banned in the same run, within the kernel's MAX_BANS_PER_SEC,
//! only for the protocols whose configuration lets the block come first, only for
//! verified sources under VERIFY_SOURCES, and not for hits spread past SCAN_WINDOW. The
//! ACK class is banned once it has spread over ACK_SCAN_PORTS distinct ports.

use ipnet::IpNet;
use portsentry_common::{
    Counter, ScanType,
    maps::{
        BanOrigin, EVENT_KERNEL_BANNED, KernelBan, SETTING_ACK_PORTS_SHIFT, SETTING_KBAN_TCP,
        SETTING_KBAN_UDP, SETTING_VERIFY, Settings, SourceStats,
    },
};
use portsentry_tests::{
    fixture::Fixture,
    frames::{Frame, flags::*},
    probe_asserts::{V4_DST, V6_DST, ip, pairs},
    require_kernel,
    testrun::{XDP_DROP, XDP_PASS},
};

fn fixture(trigger: u32, flags: u32, kb: KernelBan) -> Fixture {
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: trigger,
        events_per_sec: 0,
        event_burst: 0,
        flags,
        cookie_secret: 0,
        trw: Default::default(),
    });
    fx.dp.write_kernel_ban(kb).unwrap();
    fx
}

/// The current second of CLOCK_MONOTONIC, read away from its turn: the program's
/// coarse clock is a tick or two behind (so still in the second before during a
/// second's first milliseconds), and the probes that follow must come in the second
/// read here. Sleeps into the next second when needed.
fn mid_second() -> u64 {
    let ns = portsentry_user::clock::monotonic_ns();
    let into = ns % 1_000_000_000;
    if !(50_000_000..=900_000_000).contains(&into) {
        let to = (1_000_000_000 - into + 100_000_000) % 1_000_000_000;
        std::thread::sleep(std::time::Duration::from_nanos(to));
    }
    portsentry_user::clock::monotonic_ns() / 1_000_000_000
}

#[test]
fn the_probe_that_reaches_the_trigger_is_dropped_and_its_source_banned() {
    require_kernel!();
    for trigger in [1u32, 3] {
        let mut fx = fixture(trigger, SETTING_KBAN_TCP, KernelBan::default());
        for (src, dst) in pairs() {
            for port in 1..trigger as u16 {
                fx.expect(
                    &Frame::tcp(src, dst, port, SYN).build(),
                    XDP_PASS,
                    Counter::PassProbe,
                );
            }
            let o = fx.expect(
                &Frame::tcp(src, dst, 40, SYN).build(),
                XDP_DROP,
                Counter::DropBanned,
            );
            assert_eq!(o.delta.get(Counter::KernelBanned), 1);
            let ban = fx.dp.ban(&IpNet::from(src)).unwrap().expect("banned");
            assert_eq!(ban.origin, BanOrigin::Kernel as u8);
            assert_eq!((ban.port, ban.expires_ns), (40, 0));
            let ev = fx.drain_events();
            let last = ev.last().expect("an event");
            assert_ne!(last.flags & EVENT_KERNEL_BANNED, 0, "the ban is reported");
            assert_eq!(last.hits, trigger);
            // Every later packet of the source is dropped, a conversation's too.
            fx.expect(
                &Frame::tcp(src, dst, 443, ACK).build(),
                XDP_DROP,
                Counter::DropBanned,
            );
            fx.expect(
                &Frame::udp(src, dst, 53).build(),
                XDP_DROP,
                Counter::DropBanned,
            );
        }
    }
}

#[test]
fn only_the_protocols_whose_block_comes_first() {
    require_kernel!();
    let mut fx = fixture(1, SETTING_KBAN_UDP, KernelBan::default());
    let (src, dst) = (ip("192.0.2.7"), ip(V4_DST));
    let o = fx.expect(
        &Frame::tcp(src, dst, 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    assert_eq!(o.delta.get(Counter::KernelBanned), 0);
    assert!(fx.dp.ban(&IpNet::from(src)).unwrap().is_none());
    fx.expect(
        &Frame::udp(src, dst, 53).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    // With neither flag nothing is banned in the kernel (the daemon decides).
    let mut fx = fixture(1, 0, KernelBan::default());
    fx.expect(
        &Frame::udp(src, dst, 53).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    assert!(fx.dp.ban(&IpNet::from(src)).unwrap().is_none());
}

#[test]
fn max_bans_per_sec_holds_in_the_kernel_and_length_and_window_apply() {
    require_kernel!();
    let kb = KernelBan {
        per_sec: 2,
        ban_ns: 3_600_000_000_000,
        ..KernelBan::default()
    };
    let mut fx = fixture(1, SETTING_KBAN_TCP, kb);
    // The budget started at the next second (`wall_offset_ns` 0: CLOCK_MONOTONIC's),
    // which the runs below count into whether or not a second starts among them.
    let next = mid_second() + 1;
    fx.dp
        .write_kernel_ban(KernelBan { second: next, ..kb })
        .unwrap();
    let dst = ip(V4_DST);
    let mut banned = 0;
    let mut deferred = 0;
    for i in 0..5u8 {
        let src = ip(&format!("198.51.100.{}", 10 + i));
        let o = fx.run(&Frame::tcp(src, dst, 22, SYN).build());
        banned += o.delta.get(Counter::KernelBanned);
        deferred += o.delta.get(Counter::KernelBanDeferred);
        if o.delta.get(Counter::KernelBanDeferred) == 1 {
            // Left to the daemon: passed, counted, reported without the ban flag.
            assert_eq!(o.retval, XDP_PASS);
            let ev = fx.drain_events();
            assert_eq!(ev.last().unwrap().flags & EVENT_KERNEL_BANNED, 0);
        }
    }
    // Five sources inside one second's budget: two banned.
    let state = fx.dp.kernel_ban().unwrap().unwrap();
    assert_eq!((banned, deferred), (2, 3), "{state:?}");
    assert_eq!(state.second, next, "{state:?}");
    // The budget counts the bans made, not the refused (a spent budget is only read):
    // the daemon takes it as the program's bans of the second.
    assert_eq!(fx.dp.kernel_bans_in(state.second).unwrap(), 2, "{state:?}");
    // A reload writes the settings again: the second's budget stays spent.
    fx.dp.set_kernel_ban_settings(kb).unwrap();
    let o = fx.run(&Frame::tcp(ip("198.51.100.20"), dst, 22, SYN).build());
    assert_eq!(
        (
            o.delta.get(Counter::KernelBanned),
            o.delta.get(Counter::KernelBanDeferred)
        ),
        (0, 1),
        "{:?}",
        fx.dp.kernel_ban().unwrap()
    );
    fx.drain_events();
    let ban = fx
        .dp
        .ban(&IpNet::from(ip("198.51.100.10")))
        .unwrap()
        .unwrap();
    assert!(
        ban.expires_ns > ban.since_ns + 3_599_000_000_000,
        "BAN_TIME applies"
    );

    // Hits spread over more than SCAN_WINDOW are the daemon's to judge.
    let kb = KernelBan {
        window_ns: 1,
        ..KernelBan::default()
    };
    let mut fx = fixture(2, SETTING_KBAN_TCP, kb);
    let src = ip("2001:db8::9");
    fx.expect(
        &Frame::tcp(src, ip(V6_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    fx.expect(
        &Frame::tcp(src, ip(V6_DST), 23, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    assert!(fx.dp.ban(&IpNet::from(src)).unwrap().is_none());
}

/// Each CPU keeps the clock of its last tick (`clock::now`), so one CPU's time may be a
/// tick ahead of another's. The CPU that lags must neither renew the ban budget that
/// the one ahead started for its newer second, nor take a first probe the other timed
/// after its own "now" for one that is older than SCAN_WINDOW.
#[test]
fn a_cpu_whose_clock_lags_keeps_the_budget_and_the_window() {
    require_kernel!();
    let mut fx = fixture(1, SETTING_KBAN_TCP, KernelBan::default());
    // The budget: the next second (`wall_offset_ns` 0: the seconds are
    // CLOCK_MONOTONIC's), already spent by a CPU that is there. (Read after the
    // fixture's load, which takes longer than a second on a busy machine.)
    let ahead = mid_second() + 1;
    fx.dp
        .write_kernel_ban(KernelBan {
            per_sec: 2,
            second: ahead,
            used: 2,
            ..KernelBan::default()
        })
        .unwrap();
    for i in 0..3u8 {
        let src = ip(&format!("198.51.100.{}", 30 + i));
        let o = fx.expect(
            &Frame::tcp(src, ip(V4_DST), 22, SYN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        assert_eq!(o.delta.get(Counter::KernelBanDeferred), 1, "{o:?}");
    }
    let state = fx.dp.kernel_ban().unwrap().unwrap();
    assert_eq!((state.second, state.used), (ahead, 2), "{state:?}");

    // The window: the source's first probe timed after this CPU's "now" (by a minute
    // here, so that no delay before the probe makes it past).
    let kb = KernelBan {
        window_ns: 10_000_000_000,
        ..KernelBan::default()
    };
    let mut fx = fixture(2, SETTING_KBAN_TCP, kb);
    let src = ip("192.0.2.44");
    let first_ns = portsentry_user::clock::monotonic_ns() + 60_000_000_000;
    fx.dp
        .put_source(
            src,
            &SourceStats {
                first_ns,
                last_ns: first_ns,
                hits: 1,
                distinct_ports: 1,
                last_port: 21,
                last_scan_type: ScanType::TcpSyn as u8,
                ..SourceStats::default()
            },
        )
        .unwrap();
    let o = fx.expect(
        &Frame::tcp(src, ip(V4_DST), 22, SYN).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    assert_eq!(o.delta.get(Counter::KernelBanned), 1, "{o:?}");
}

/// The daemon reads the wall clock itself, which the program's coarse clock follows a
/// tick or two behind: at a second's turn the daemon's share of the budget is for the
/// next second. The program counts into that second (and dates its bans there): counted
/// in its own second, the program's last bans of the old second and the daemon's first
/// of the new one would each miss the other's, and a second would show its budget twice.
#[test]
fn the_daemons_new_second_is_the_programs_too() {
    require_kernel!();
    let kb = KernelBan {
        per_sec: 2,
        ..KernelBan::default()
    };
    let mut fx = fixture(1, SETTING_KBAN_TCP, kb);
    // `wall_offset_ns` 0: the seconds are CLOCK_MONOTONIC's. The program's own second
    // has one ban left; the daemon has spent the next second's budget.
    let now = mid_second();
    let ahead = now + 1;
    fx.dp
        .write_kernel_ban(KernelBan {
            second: now,
            used: 1,
            ..kb
        })
        .unwrap();
    fx.dp.share_ban_budget(ahead, 2).unwrap();
    let o = fx.expect(
        &Frame::tcp(ip("198.51.100.60"), ip(V4_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    assert_eq!(o.delta.get(Counter::KernelBanDeferred), 1, "{o:?}");

    // With one of the daemon's left, the program bans, counts the ban in the daemon's
    // second and dates it at that second's start (or later, if the second came).
    fx.dp.share_ban_budget(ahead, 1).unwrap();
    let src = ip("198.51.100.61");
    let o = fx.expect(
        &Frame::tcp(src, ip(V4_DST), 22, SYN).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    assert_eq!(o.delta.get(Counter::KernelBanned), 1, "{o:?}");
    let state = fx.dp.kernel_ban().unwrap().unwrap();
    assert_eq!((state.second, state.used), (ahead, 1), "{state:?}");
    let ban = fx.dp.ban(&IpNet::from(src)).unwrap().unwrap();
    assert!(ban.since_ns >= ahead * 1_000_000_000, "{ban:?}");
    let ev = fx.drain_events();
    let ev = ev.last().unwrap();
    assert_ne!(ev.flags & EVENT_KERNEL_BANNED, 0);
    assert_eq!(ev.ts_ns, ban.since_ns, "the event carries the ban's time");
}

/// A step of the wall clock after the settings were written (NTP setting it at boot, an
/// operator's `date`) moves the daemon's seconds; `follow_wall_clock` moves the
/// program's with them and keeps the rest of `PS_KBAN` as it was.
#[test]
fn the_budget_follows_a_step_of_the_wall_clock() {
    require_kernel!();
    let kb = KernelBan {
        per_sec: 2,
        ban_ns: 7_000_000_000,
        window_ns: 9_000_000_000,
        ..KernelBan::default()
    };
    let mut fx = fixture(1, SETTING_KBAN_TCP, kb);
    // NTP's slewing is not a step: nothing is written.
    assert_eq!(fx.dp.follow_wall_clock(1_000_000).unwrap(), None);
    assert_eq!(fx.dp.kernel_ban().unwrap().unwrap(), kb);
    // A step of an hour forward: the offset follows, the rest is kept.
    let hour = 3_600_000_000_000u64;
    assert_eq!(fx.dp.follow_wall_clock(hour).unwrap(), Some(hour as i64));
    assert_eq!(
        fx.dp.kernel_ban().unwrap().unwrap(),
        KernelBan {
            wall_offset_ns: hour,
            ..kb
        }
    );
    // The daemon has spent the budget of its second (an hour on): the program's
    // second is the same, so its probe is deferred. (With the offset of before, the
    // program would count in a second an hour back and ban.)
    let second = mid_second() + hour / 1_000_000_000;
    fx.dp.share_ban_budget(second, 2).unwrap();
    let o = fx.expect(
        &Frame::tcp(ip("198.51.100.70"), ip(V4_DST), 22, SYN).build(),
        XDP_PASS,
        Counter::PassProbe,
    );
    assert_eq!(o.delta.get(Counter::KernelBanDeferred), 1, "{o:?}");
    // And back: a step backwards is seen too.
    assert_eq!(fx.dp.follow_wall_clock(0).unwrap(), Some(-(hour as i64)));
    assert_eq!(fx.dp.kernel_ban().unwrap().unwrap().wall_offset_ns, 0);
}

#[test]
fn under_verify_sources_only_verified_sources_are_banned() {
    require_kernel!();
    let mut fx = fixture(1, SETTING_KBAN_TCP | SETTING_VERIFY, KernelBan::default());
    let (src, dst) = (ip("192.0.2.7"), ip(V4_DST));
    // An unverified SYN is challenged, never banned (it may be forged).
    let o = fx.run(&Frame::tcp(src, dst, 22, SYN).build());
    assert_eq!(o.delta.get(Counter::KernelBanned), 0);
    assert!(fx.dp.ban(&IpNet::from(src)).unwrap().is_none());
}

/// The answer to a challenge counts as its SYN was counted. From a source whose
/// SOURCE_PREFIX_V6 network holds an ignored address (counted by its own address), it
/// never bans that network: the ban would drop every other host of it (a LAN's
/// link-local /64, this host's own /64). The answer used to be recorded under the
/// network's key, verified, and the program banned the network at once. A source of
/// another network is banned by its network, as before.
#[test]
fn a_verified_answer_from_a_counted_network_never_bans_the_network() {
    require_kernel!();
    use portsentry_common::maps::{EVENT_PREFIX, EVENT_VERIFIED, SETTING_V6_PREFIX_SHIFT};
    use portsentry_tests::probe_asserts::net;
    let flags = SETTING_KBAN_TCP | SETTING_VERIFY | 64 << SETTING_V6_PREFIX_SHIFT;
    let mut fx = fixture(1, flags, KernelBan::default());
    fx.dp
        .replace_ignore(&[net("2001:db8:1:2::9/128")], &[net("2001:db8:1:2::/64")])
        .unwrap();
    // The TCP header's offset in an untagged IPv6 frame.
    let l4 = 14 + 40;
    let dst = ip(V6_DST);
    let answer_from = |fx: &mut Fixture, src| {
        let (o, out) = fx.run_out(&Frame::tcp(src, dst, 22, SYN).build());
        assert_eq!(o.reason(), Counter::TxChallenge, "{src}");
        let cookie = u32::from_be_bytes([out[l4 + 4], out[l4 + 5], out[l4 + 6], out[l4 + 7]]);
        let mut answer = Frame::tcp(src, dst, 22, ACK).build();
        answer[l4 + 8..l4 + 12].copy_from_slice(&cookie.wrapping_add(1).to_be_bytes());
        fx.drain_events();
        let o = fx.run(&answer);
        assert_eq!(o.delta.get(Counter::Verified), 1, "{src}: {o:?}");
        (o, fx.drain_events())
    };
    let (o, ev) = answer_from(&mut fx, ip("2001:db8:1:2::77"));
    assert_eq!(o.delta.get(Counter::KernelBanned), 0, "{o:?}");
    assert!(
        fx.dp.ban(&net("2001:db8:1:2::/64")).unwrap().is_none(),
        "the network of an ignored address is banned"
    );
    let last = ev.last().expect("the verified answer is reported");
    assert_eq!(last.flags & EVENT_VERIFIED, EVENT_VERIFIED);
    assert_eq!(last.flags & EVENT_PREFIX, 0, "reported by its address");
    assert_eq!(fx.hits(ip("2001:db8:1:2::77")), 2, "the SYN and its answer");
    assert_eq!(fx.hits(ip("2001:db8:1:2::")), 0, "never by the network");
    // Another network: banned by its network at the verified answer.
    let (o, _) = answer_from(&mut fx, ip("2001:db8:5:6::77"));
    assert_eq!(o.delta.get(Counter::KernelBanned), 1, "{o:?}");
    assert!(fx.dp.ban(&net("2001:db8:5:6::/64")).unwrap().is_some());
}

/// Segments of no connection (nmap -sA, -sW, -sM) are banned by the program at the one
/// that reaches ACK_SCAN_PORTS distinct ports (here 3), not before; a client's late
/// segments, all to the one port it talked to, never are; with ACK_SCAN_PORTS="0" (no
/// bits in the flags) the program leaves the ACK class to the daemon.
#[test]
fn the_ack_class_is_banned_at_ack_scan_ports_distinct_ports() {
    require_kernel!();
    let flags = SETTING_KBAN_TCP | (3 << SETTING_ACK_PORTS_SHIFT);
    let mut fx = fixture(1, flags, KernelBan::default());
    for (i, (scanner, dst)) in pairs().into_iter().enumerate() {
        for port in [1, 2] {
            fx.expect(
                &Frame::tcp(scanner, dst, port, ACK).build(),
                XDP_PASS,
                Counter::PassProbe,
            );
        }
        assert!(fx.dp.ban(&IpNet::from(scanner)).unwrap().is_none());
        let flags = if i == 0 { ACK } else { FIN | ACK };
        let o = fx.expect(
            &Frame::tcp(scanner, dst, 3, flags).build(),
            XDP_DROP,
            Counter::DropBanned,
        );
        assert_eq!(o.delta.get(Counter::KernelBanned), 1);
        let ban = fx.dp.ban(&IpNet::from(scanner)).unwrap().expect("banned");
        assert_eq!((ban.origin, ban.port), (BanOrigin::Kernel as u8, 3));
        let ev = fx.drain_events();
        assert_ne!(ev.last().unwrap().flags & EVENT_KERNEL_BANNED, 0);
    }
    let (client, dst) = (ip("198.51.100.20"), ip(V4_DST));
    for _ in 0..10 {
        fx.expect(
            &Frame::tcp(client, dst, 5, PSH | ACK).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
    }
    assert!(fx.dp.ban(&IpNet::from(client)).unwrap().is_none());

    let mut fx = fixture(1, SETTING_KBAN_TCP, KernelBan::default());
    let src = ip("198.51.100.21");
    for port in 1..10 {
        fx.expect(
            &Frame::tcp(src, dst, port, ACK).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
    }
    assert!(fx.dp.ban(&IpNet::from(src)).unwrap().is_none());
}

/// A ban the program made counts for the ban filter's bits like the daemon's: lifted
/// before the daemon took it over, it does not take a user from another ban of the
/// same bit (which would clear the bit under that ban); banned again by the daemon, it
/// becomes that bit's user, so lifting the other ban leaves it in force.
#[test]
fn a_kernel_ban_shares_its_filter_bits_safely() {
    use portsentry_common::maps::BanEntry;
    require_kernel!();
    let ((a, _), (k, _)) = portsentry_tests::probe_asserts::sharing_a_filter_bit();
    let dst = ip(V4_DST);
    let syn = |src: std::net::IpAddr| Frame::tcp(src, dst, 40, SYN).build();
    // Not a probe: dropped by the ban check alone.
    let ack = |src: std::net::IpAddr| Frame::tcp(src, dst, 443, ACK).build();
    let daemons = BanEntry {
        since_ns: portsentry_user::clock::monotonic_ns(),
        origin: BanOrigin::Scan as u8,
        ..Default::default()
    };
    let mut fx = fixture(1, SETTING_KBAN_TCP, KernelBan::default());
    fx.dp.insert_ban(&IpNet::from(a), &daemons).unwrap();
    // The program bans `k` at its first probe; the daemon lifts it before taking it
    // over (a reload that ignores it, or the guard refusing it).
    fx.expect(&syn(k), XDP_DROP, Counter::DropBanned);
    let held = fx.dp.ban(&IpNet::from(k)).unwrap().expect("banned");
    assert_eq!(held.origin, BanOrigin::Kernel as u8);
    assert!(fx.dp.remove_ban(&IpNet::from(k)).unwrap());
    fx.expect(&ack(a), XDP_DROP, Counter::DropBanned);

    // The program bans `k` again, and the daemon bans it too (its response to the scan,
    // not a take-over); then `a` is lifted: `k`'s bits stay.
    fx.dp.forget_source(k).unwrap();
    fx.expect(&syn(k), XDP_DROP, Counter::DropBanned);
    fx.dp.insert_ban(&IpNet::from(k), &daemons).unwrap();
    assert!(fx.dp.remove_ban(&IpNet::from(a)).unwrap());
    fx.expect(&ack(k), XDP_DROP, Counter::DropBanned);
    fx.expect(&ack(a), XDP_PASS, Counter::PassNotProbe);
}

/// A ban the program made and an operator lifted before the daemon's response took it
/// over (the response waits for a job slot) is not put back by that response; one not
/// lifted is taken over.
#[test]
fn a_kernel_ban_lifted_before_its_take_over_is_not_put_back() {
    use portsentry_user::{
        bans::{
            BanStore, Cause, ScanCause,
            book::{Book, LiftedMeanwhile},
            guard::Guard,
        },
        config::Config,
        kernel::{Dataplane, MapSizes},
        kinds::ModeToken,
    };
    require_kernel!();
    let mut dp = Dataplane::load(&MapSizes::default(), None).unwrap();
    let (tcp, udp) = portsentry_tests::fixture::default_ports();
    dp.write_ports(&tcp, &udp).unwrap();
    dp.write_settings(Settings {
        event_trigger: 1,
        flags: SETTING_KBAN_TCP,
        ..Default::default()
    })
    .unwrap();
    dp.write_kernel_ban(KernelBan::default()).unwrap();
    let ns = portsentry_tests::netns::Netns::new("lifted");
    let src = ip("198.51.100.21");
    let net = IpNet::from(src);
    let probe = |dp: &Dataplane| {
        let syn = Frame::tcp(src, ip(V4_DST), 40, SYN).build();
        ns.enter(|| portsentry_tests::testrun::run(dp.program_fd().unwrap(), &syn, 1))
            .unwrap()
            .retval
    };
    assert_eq!(probe(&dp), XDP_DROP, "banned by the program");
    let config = Config::default();
    let mut book = Book::new(
        Some(dp),
        BanStore::default(),
        None,
        &config,
        Guard::limits(&config),
    );
    let cause = Cause::Scan(ScanCause {
        port: 40,
        scan_type: ScanType::TcpSyn,
        mode: ModeToken::Atcp,
    });
    let ban = book.new_ban(&config, net, cause, None, std::time::SystemTime::now());
    // The operator's unban comes first.
    book.lift(&net).unwrap();
    let e = book.adopt(ban, false).expect_err("lifted meanwhile");
    assert!(e.downcast_ref::<LiftedMeanwhile>().is_some(), "{e:#}");
    assert!(book.store.get(&net).is_none());
    let dp = book.dp.as_mut().unwrap();
    assert_eq!(dp.ban(&net).unwrap(), None, "not put back");
    // Banned again by the program, and not lifted: taken over.
    dp.forget_source(src).unwrap();
    assert_eq!(probe(book.dp.as_ref().unwrap()), XDP_DROP);
    book.adopt(ban, false).unwrap();
    assert!(book.store.get(&net).is_some());
    let held = book.dp.as_ref().unwrap().ban(&net).unwrap().unwrap();
    assert_eq!(held.origin, BanOrigin::Scan as u8);
}

/// The daemon writing many bans' filter bits (a CrowdSec list arriving) while the program
/// bans sources of its own at the trigger (a scan): no bit the program set is written
/// over, so every source it banned stays dropped. (Read, changed and written back whole,
/// a word lost the bits the program set in it in between.)
#[test]
fn the_daemons_filter_writes_keep_the_bits_of_the_programs_bans() {
    use std::{
        net::{IpAddr, Ipv4Addr},
        os::fd::AsFd as _,
    };

    use portsentry_common::maps::BanEntry;
    use portsentry_tests::testrun;
    require_kernel!();
    let mut fx = fixture(1, SETTING_KBAN_TCP, KernelBan::default());
    let dst = ip(V4_DST);
    let v4 = |n: u32| IpAddr::V4(Ipv4Addr::from(n));
    // 10.0.0.0 up: the program's; 172.16.0.0 up: the daemon's.
    let scanners: Vec<IpAddr> = (0..100_000).map(|i| v4(0x0a00_0000 + i)).collect();
    let daemons = BanEntry {
        since_ns: portsentry_user::clock::monotonic_ns(),
        origin: BanOrigin::Scan as u8,
        ..Default::default()
    };
    let program = fx.dp.program_fd().unwrap().try_clone_to_owned().unwrap();
    let (ns, dp) = (&fx.ns, &mut fx.dp);
    let mut written = 0u32;
    std::thread::scope(|s| {
        let scans = s.spawn(|| {
            ns.enter(|| {
                for src in &scanners {
                    let syn = Frame::tcp(*src, dst, 40, SYN).build();
                    let r = testrun::run(program.as_fd(), &syn, 1).unwrap();
                    assert_eq!(r.retval, XDP_DROP, "{src} banned at its first probe");
                }
            })
        });
        // Batches of 10,000 for as long as the program bans (at most 600,000).
        while !scans.is_finished() && written < 600_000 {
            let batch = (written..written + 10_000)
                .map(|i| (IpNet::from(v4(0xac10_0000 + i)), daemons))
                .collect();
            dp.insert_bans(batch).unwrap();
            written += 10_000;
        }
        scans.join().unwrap();
    });
    assert!(
        written >= 20_000,
        "the daemon wrote while the program banned"
    );
    let lost: Vec<IpAddr> = scanners
        .iter()
        .copied()
        .filter(|src| fx.run(&Frame::tcp(*src, dst, 443, ACK).build()).retval != XDP_DROP)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of the {} sources the program banned pass (their filter bits lost), e.g. {:?}",
        lost.len(),
        scanners.len(),
        &lost[..lost.len().min(5)]
    );
}
