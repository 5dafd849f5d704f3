//! Bans in the XDP program through BPF_PROG_TEST_RUN: exact and prefix bans drop every
//! protocol, expiry is checked by the kernel, and neither the IPv4 bans' tags
//! (`PS_BAN_TAGS`) nor the `PS_BAN_CACHE` in front of the hash serve a stale answer; the
//! range filter in front of the trie follows the ranges, and so does the hash of
//! lengths beside it.

use std::net::IpAddr;

use ipnet::IpNet;
use portsentry_common::{
    Counter,
    maps::{BanEntry, SETTING_DROP_EVASIVE, Settings},
    packet,
};
use portsentry_tests::{
    fixture::Fixture,
    frames::{Ext, Frame, Transport, flags::*},
    probe_asserts::{V4_DST, V6_DST, ip, net, pairs},
    require_kernel,
    testrun::{XDP_DROP, XDP_PASS},
};
use portsentry_user::clock::monotonic_ns;

#[test]
fn exact_bans_drop_every_protocol() {
    require_kernel!();
    let mut fx = Fixture::new();
    for (src, dst) in pairs() {
        let entry = BanEntry {
            since_ns: monotonic_ns(),
            ..Default::default()
        };
        fx.dp.insert_ban(&IpNet::from(src), &entry).unwrap();
        let frames = [
            Frame::tcp(src, dst, 22, SYN).build(),
            Frame::tcp(src, dst, 8080, ACK).build(),
            Frame::udp(src, dst, 53).build(),
            Frame::new(src, dst, Transport::Other(1)).build(),
            Frame::tcp(src, dst, 22, SYN).vlans(&[0x8100]).build(),
            // Banned sources' later fragments are dropped too.
            fragment(src, dst, 8, false).build(),
            // Whatever the transport header says: cut short, or behind a chain longer
            // than the parser walks.
            Frame::tcp(src, dst, 22, SYN).l4_keep(6).build(),
            // A tiny first fragment (an IPv6 source's ban is checked after the transport
            // header is read, and before the tiny-fragment rule acts on it).
            fragment(src, dst, 0, true).l4_keep(10).build(),
            match src {
                IpAddr::V4(_) => Frame::tcp(src, dst, 22, SYN).ipv4_options(&[1; 40]).build(),
                IpAddr::V6(_) => long_chain(src, dst),
            },
        ];
        for f in &frames {
            let o = fx.expect(f, XDP_DROP, Counter::DropBanned);
            assert_eq!(o.delta.get(Counter::EventSent), 0);
        }
        assert_eq!(fx.hits(src), 0, "a banned source's probes are not counted");
        // Another source is untouched.
        let other: IpAddr = match src {
            IpAddr::V4(_) => ip("192.0.2.8"),
            IpAddr::V6(_) => ip("2001:db8::8"),
        };
        fx.expect(
            &Frame::tcp(other, dst, 22, SYN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
        // Unbanning lets it through again.
        assert!(fx.dp.remove_ban(&IpNet::from(src)).unwrap());
        fx.expect(&frames[0], XDP_PASS, Counter::PassProbe);
    }
}

/// With BLOCK_EVASIVE_PACKETS a banned source's evasive shapes are still dropped as
/// banned, not as evasive (an IPv6 source's ban is checked after its transport header is
/// read, before anything acts on it); a spared ban (an ignored source) is counted once
/// whatever the shape.
#[test]
fn a_banned_sources_evasive_shapes_are_dropped_as_banned() {
    require_kernel!();
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: 1,
        flags: SETTING_DROP_EVASIVE,
        ..Settings::default()
    });
    for (src, dst) in pairs() {
        fx.dp
            .insert_ban(&IpNet::from(src), &BanEntry::default())
            .unwrap();
        let mut frames = vec![fragment(src, dst, 0, true).l4_keep(8).build()];
        if src.is_ipv6() {
            frames.push(long_chain(src, dst));
        }
        for f in &frames {
            fx.expect(f, XDP_DROP, Counter::DropBanned);
        }
        // Not banned, the same shapes are dropped as evasive.
        assert!(fx.dp.remove_ban(&IpNet::from(src)).unwrap());
        fx.expect(&frames[0], XDP_DROP, Counter::DropTinyFragment);
        if let Some(chain) = frames.get(1) {
            fx.expect(chain, XDP_DROP, Counter::DropHeaderChain);
        }
    }
    // Spared: an ignored source's ban is counted once, on the parsed path and on a
    // shape the parser passes (a later fragment).
    let spared: Vec<IpNet> = pairs().iter().map(|(s, _)| IpNet::from(*s)).collect();
    fx.dp.replace_ignore(&spared, &[]).unwrap();
    for (src, dst) in pairs() {
        fx.dp
            .insert_ban(&IpNet::from(src), &BanEntry::default())
            .unwrap();
        for (f, reason) in [
            (Frame::tcp(src, dst, 22, SYN).build(), Counter::PassIgnored),
            (fragment(src, dst, 8, false).build(), Counter::PassFragment),
        ] {
            let o = fx.expect(&f, XDP_PASS, reason);
            assert_eq!(o.delta.get(Counter::BanSpared), 1, "{src}: {reason:?}");
        }
    }
}

/// A SYN to port 22 as a fragment at `offset`, of either family.
fn fragment(src: IpAddr, dst: IpAddr, offset: u16, more: bool) -> Frame {
    let f = Frame::tcp(src, dst, 22, SYN);
    match src {
        IpAddr::V4(_) => f.ipv4_fragment(offset, more),
        IpAddr::V6(_) => f.ext(Ext::Fragment { offset, more }),
    }
}

/// An IPv6 SYN behind a chain of ten headers, longer than the parser walks.
fn long_chain(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    (0..10)
        .fold(Frame::tcp(src, dst, 22, SYN), |f, _| {
            f.ext(Ext::DestOpts(1))
        })
        .build()
}

#[test]
fn ban_expiry_is_checked_by_the_kernel() {
    require_kernel!();
    let mut fx = Fixture::new();
    let now = monotonic_ns();
    for (src, dst) in pairs() {
        let f = Frame::tcp(src, dst, 22, SYN).build();
        // Expired a second ago: passed (and the probe counted), the expiry counted.
        let expired = BanEntry {
            expires_ns: now - 1_000_000_000,
            since_ns: now - 2_000_000_000,
            ..Default::default()
        };
        fx.dp.insert_ban(&IpNet::from(src), &expired).unwrap();
        let o = fx.expect(&f, XDP_PASS, Counter::PassProbe);
        assert_eq!(o.delta.get(Counter::BanExpired), 1);
        // Expiring in an hour: dropped.
        let live = BanEntry {
            expires_ns: now + 3_600_000_000_000,
            ..expired
        };
        fx.dp.insert_ban(&IpNet::from(src), &live).unwrap();
        let o = fx.expect(&f, XDP_DROP, Counter::DropBanned);
        assert_eq!(o.delta.get(Counter::BanExpired), 0);
        // Permanent (0): dropped.
        fx.dp
            .insert_ban(&IpNet::from(src), &BanEntry::default())
            .unwrap();
        fx.expect(&f, XDP_DROP, Counter::DropBanned);
    }
    // A short ban stops applying on its own, with no daemon involved.
    let src = ip("192.0.2.9");
    let f = Frame::tcp(src, ip(V4_DST), 22, SYN).build();
    // Two seconds: a loaded machine may pause the test between the insert and the run.
    let short = BanEntry {
        expires_ns: monotonic_ns() + 2_000_000_000,
        ..Default::default()
    };
    fx.dp.insert_ban(&IpNet::from(src), &short).unwrap();
    fx.expect(&f, XDP_DROP, Counter::DropBanned);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    fx.expect(&f, XDP_PASS, Counter::PassProbe);
}

#[test]
fn prefix_bans() {
    require_kernel!();
    let mut fx = Fixture::new();
    let dst4 = ip(V4_DST);
    let dst6 = ip(V6_DST);
    fx.dp
        .insert_ban(&net("198.51.100.0/24"), &BanEntry::default())
        .unwrap();
    fx.dp
        .insert_ban(&net("2001:db8:bad::/48"), &BanEntry::default())
        .unwrap();
    for src in ["198.51.100.1", "198.51.100.254"] {
        let f = Frame::udp(ip(src), dst4, 2000).build();
        fx.expect(&f, XDP_DROP, Counter::DropBanned);
    }
    for src in ["2001:db8:bad::1", "2001:db8:bad:ffff::9"] {
        let f = Frame::tcp(ip(src), dst6, 443, ACK).build();
        fx.expect(&f, XDP_DROP, Counter::DropBanned);
    }
    // Just outside the prefixes.
    fx.expect(
        &Frame::udp(ip("198.51.101.1"), dst4, 2000).build(),
        XDP_PASS,
        Counter::PassUnwatched,
    );
    fx.expect(
        &Frame::tcp(ip("2001:db8:bae::1"), dst6, 443, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    // An IPv4 /0 covers every IPv4 source and no IPv6 one.
    fx.dp
        .insert_ban(&net("0.0.0.0/0"), &BanEntry::default())
        .unwrap();
    fx.expect(
        &Frame::udp(ip("203.0.113.5"), dst4, 2000).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    fx.expect(
        &Frame::udp(ip("2001:db8::5"), dst6, 2000).build(),
        XDP_PASS,
        Counter::PassUnwatched,
    );
    // An expired prefix ban does not apply.
    fx.dp.remove_ban(&net("0.0.0.0/0")).unwrap();
    let expired = BanEntry {
        expires_ns: monotonic_ns() - 1_000_000_000,
        ..Default::default()
    };
    fx.dp.insert_ban(&net("203.0.113.0/24"), &expired).unwrap();
    let o = fx.expect(
        &Frame::udp(ip("203.0.113.5"), dst4, 2000).build(),
        XDP_PASS,
        Counter::PassUnwatched,
    );
    assert_eq!(o.delta.get(Counter::BanExpired), 1);
    // Removing the last prefix ban turns the trie lookup off again.
    for n in ["198.51.100.0/24", "2001:db8:bad::/48", "203.0.113.0/24"] {
        assert!(fx.dp.remove_ban(&net(n)).unwrap(), "{n}");
    }
    assert_eq!(
        fx.dp.settings().flags & portsentry_common::maps::SETTING_PREFIX_BANS,
        0
    );
    fx.expect(
        &Frame::udp(ip("198.51.100.1"), dst4, 2000).build(),
        XDP_PASS,
        Counter::PassUnwatched,
    );
    assert_eq!(fx.dp.bans().unwrap().len(), 0);
}

/// Four bans in one `PS_BAN_CACHE` set: three are served by the cache (with their hash
/// entries gone, they still drop: the program found them in the set, one the smallest
/// cache lacks, by the size the daemon wrote), the fourth by the hash; lifting any
/// leaves the others in force.
#[test]
fn ban_cache_sets() {
    require_kernel!();
    use portsentry_common::maps::{BAN_CACHE_MIN_SETS, ban_cache_set, ban_cache_sets};
    let words = |ip: IpAddr| -> packet::AddrWords {
        bytemuck::cast(portsentry_user::kernel::addr::to_key(ip))
    };
    let sets = ban_cache_sets(portsentry_user::kernel::MapSizes::default().bans);
    assert!(
        sets > BAN_CACHE_MIN_SETS,
        "the default MAX_BANS grows the cache"
    );
    let v4 = |n: u32| IpAddr::from((0xc633_6400u32 + n).to_be_bytes());
    let a = (1..)
        .map(v4)
        .find(|c| ban_cache_set(&words(*c), sets) >= BAN_CACHE_MIN_SETS)
        .unwrap();
    let set = ban_cache_set(&words(a), sets);
    let same: Vec<IpAddr> = std::iter::once(a)
        .chain(
            (2..=u32::MAX)
                .map(v4)
                .filter(|c| *c != a && ban_cache_set(&words(*c), sets) == set)
                .take(3),
        )
        .collect();
    let dst = ip(V4_DST);
    let mut fx = Fixture::new();
    // The IPv4 bans' tags, in front of the cache, would take all four.
    fx.dp.stop_ban_tags().unwrap();
    assert_eq!(fx.dp.ban_cache_sets(), Some(sets));
    for src in &same {
        fx.dp
            .insert_ban(&IpNet::from(*src), &BanEntry::default())
            .unwrap();
    }
    let cached: Vec<bool> = same.iter().map(|s| fx.dp.ban_cached(*s).unwrap()).collect();
    assert_eq!(cached, [true, true, true, false], "a set holds three");
    for src in &same {
        fx.expect(
            &Frame::tcp(*src, dst, 443, ACK).build(),
            XDP_DROP,
            Counter::DropBanned,
        );
    }
    // Lift a cached one: the others are still found, the fourth in the hash.
    let b = same[3];
    assert!(fx.dp.remove_ban(&IpNet::from(same[1])).unwrap());
    assert!(!fx.dp.ban_cached(same[1]).unwrap());
    fx.expect(
        &Frame::tcp(same[1], dst, 443, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    for src in [a, same[2], b] {
        fx.expect(
            &Frame::tcp(src, dst, 443, ACK).build(),
            XDP_DROP,
            Counter::DropBanned,
        );
    }
    // A later ban takes the freed way.
    fx.dp
        .insert_ban(&IpNet::from(b), &BanEntry::default())
        .unwrap();
    assert!(fx.dp.ban_cached(b).unwrap());
    // Out of the hash alone: what the cache holds still drops.
    let mut probe = Fixture::new();
    probe.dp.stop_ban_tags().unwrap();
    for src in &same {
        probe
            .dp
            .insert_ban(&IpNet::from(*src), &BanEntry::default())
            .unwrap();
        probe.dp.remove_hashed_ban_only(*src).unwrap();
    }
    for (src, cached) in same.iter().zip(cached) {
        let (retval, reason) = if cached {
            (XDP_DROP, Counter::DropBanned)
        } else {
            (XDP_PASS, Counter::PassNotProbe)
        };
        probe.expect(&Frame::tcp(*src, dst, 443, ACK).build(), retval, reason);
    }
    drop(probe);
    // A cached ban that expired does not hide a prefix ban over the same source.
    let expired = BanEntry {
        expires_ns: monotonic_ns() - 1_000_000_000,
        ..Default::default()
    };
    fx.dp.insert_ban(&IpNet::from(a), &expired).unwrap();
    let o = fx.expect(
        &Frame::tcp(a, dst, 443, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    assert_eq!(o.delta.get(Counter::BanExpired), 1);
    fx.dp
        .insert_ban(&net("198.51.100.0/24"), &BanEntry::default())
        .unwrap();
    fx.expect(
        &Frame::tcp(a, dst, 443, ACK).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    // A later ban of the same address with a new expiry replaces the cached one.
    fx.dp.remove_ban(&net("198.51.100.0/24")).unwrap();
    fx.dp
        .insert_ban(&IpNet::from(a), &BanEntry::default())
        .unwrap();
    fx.expect(
        &Frame::tcp(a, dst, 443, ACK).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
}

/// Bans restored in bulk (through a mapping of the array) land where the program reads
/// them: with the tags, every IPv4 ban is tagged and none cached; without them (as for
/// IPv6 bans), every ban is cached. Either way each is dropped from there alone once its
/// hash entry is gone; a few more, one at a time (through the map's calls), too.
#[test]
fn bulk_bans_fill_the_tags_or_the_cache() {
    require_kernel!();
    let v4 = |n: u32| IpAddr::from((0x0a40_0000u32 + n).to_be_bytes());
    for tags in [true, false] {
        let bulk: Vec<(IpNet, BanEntry)> = (0..1000)
            .map(|n| (IpNet::from(v4(n)), BanEntry::default()))
            .collect();
        let mut fx = Fixture::new();
        if !tags {
            fx.dp.stop_ban_tags().unwrap();
        }
        fx.dp.insert_bans(bulk).unwrap();
        for n in 1000..1010 {
            fx.dp
                .insert_ban(&IpNet::from(v4(n)), &BanEntry::default())
                .unwrap();
        }
        let held = |fx: &Fixture| {
            if tags {
                assert_eq!(fx.dp.ban_cache_held().unwrap(), 0, "tagged, not cached");
                fx.dp.ban_tags_held().unwrap().unwrap()
            } else {
                fx.dp.ban_cache_held().unwrap()
            }
        };
        let holds = |fx: &Fixture, ip: IpAddr| {
            if tags {
                fx.dp.ban_tagged(ip).unwrap()
            } else {
                fx.dp.ban_cached(ip).unwrap()
            }
        };
        assert_eq!(held(&fx), 1010, "tags: {tags}");
        let dst = ip(V4_DST);
        for n in [0, 499, 999, 1005] {
            assert!(holds(&fx, v4(n)), "{} (tags: {tags})", v4(n));
            fx.dp.remove_hashed_ban_only(v4(n)).unwrap();
            fx.expect(
                &Frame::tcp(v4(n), dst, 443, ACK).build(),
                XDP_DROP,
                Counter::DropBanned,
            );
        }
        // Lifted properly, a ban leaves the tags (the cache).
        assert!(fx.dp.remove_ban(&IpNet::from(v4(7))).unwrap());
        assert!(!holds(&fx, v4(7)));
        assert_eq!(held(&fx), 1009);
    }
}

/// The IPv4 bans' tags (`PS_BAN_TAGS`): a tagged ban is not cached, and is dropped by its
/// tag alone; lifting a ban takes its tag out; a full bucket's next ban is cached; a bucket's bans are dropped by their tags
/// only until the soonest of their ends, and the hash decides after it; when that ban
/// goes, the bucket's end moves to the next; IPv6 bans are not tagged.
#[test]
fn ban_tags() {
    require_kernel!();
    use portsentry_common::ban_tags::{BAN_TAG_SLOTS, ban_tag_buckets, ban_tag_place};
    let sizes = portsentry_user::kernel::MapSizes::default();
    let v4 = |n: u32| IpAddr::from((0xcb00_7100u32 + n).to_be_bytes());
    let dst = ip(V4_DST);
    let mut fx = Fixture::new();
    let same: Vec<IpAddr> = (0..4).map(v4).collect();
    for src in &same {
        fx.dp
            .insert_ban(&IpNet::from(*src), &BanEntry::default())
            .unwrap();
        assert!(fx.dp.ban_tagged(*src).unwrap(), "{src}");
        assert!(!fx.dp.ban_cached(*src).unwrap(), "tagged, not cached");
    }
    fx.dp.remove_hashed_ban_only(same[3]).unwrap();
    fx.expect(
        &Frame::tcp(same[3], dst, 443, ACK).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    // Lifted, a ban's tag goes with it.
    assert!(fx.dp.remove_ban(&IpNet::from(same[0])).unwrap());
    assert!(!fx.dp.ban_tagged(same[0]).unwrap());
    fx.expect(
        &Frame::tcp(same[0], dst, 443, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    // Two bans of one bucket: one that never ends, one that ended a second ago.
    let shift = ban_tag_buckets(sizes.bans).trailing_zeros();
    let bucket = |ip: IpAddr| match ip {
        IpAddr::V4(a) => ban_tag_place(u32::from_ne_bytes(a.octets()), shift).bucket,
        IpAddr::V6(_) => unreachable!(),
    };
    let lasting = v4(100_000);
    let ended = (100_001..)
        .map(v4)
        .find(|c| bucket(*c) == bucket(lasting))
        .unwrap();
    let past = BanEntry {
        expires_ns: monotonic_ns() - 1_000_000_000,
        ..Default::default()
    };
    fx.dp
        .insert_ban(&IpNet::from(lasting), &BanEntry::default())
        .unwrap();
    fx.dp.insert_ban(&IpNet::from(ended), &past).unwrap();
    assert!(fx.dp.ban_tagged(lasting).unwrap() && fx.dp.ban_tagged(ended).unwrap());
    let o = fx.expect(
        &Frame::tcp(ended, dst, 443, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    assert_eq!(o.delta.get(Counter::BanExpired), 1, "the hash decided");
    // Past the bucket's end, the lasting ban is the hash's to find: gone from it, its
    // packets pass, though its tag is there.
    fx.dp.remove_hashed_ban_only(lasting).unwrap();
    assert!(fx.dp.ban_tagged(lasting).unwrap());
    fx.expect(
        &Frame::tcp(lasting, dst, 443, ACK).build(),
        XDP_PASS,
        Counter::PassNotProbe,
    );
    // The ended ban lifted, the bucket's end is the lasting ban's (never): its tag
    // alone drops again.
    assert!(fx.dp.remove_ban(&IpNet::from(ended)).unwrap());
    assert!(!fx.dp.ban_tagged(ended).unwrap());
    fx.expect(
        &Frame::tcp(lasting, dst, 443, ACK).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    // A bucket holds 29: the 30th ban of one goes to the cache.
    let full: Vec<IpAddr> = (200_000..)
        .map(v4)
        .filter(|c| bucket(*c) == bucket(v4(200_000)))
        .take(BAN_TAG_SLOTS + 1)
        .collect();
    for src in &full {
        fx.dp
            .insert_ban(&IpNet::from(*src), &BanEntry::default())
            .unwrap();
    }
    let tagged = full.iter().filter(|s| fx.dp.ban_tagged(**s).unwrap());
    assert_eq!(tagged.count(), BAN_TAG_SLOTS);
    let last = full[BAN_TAG_SLOTS];
    assert!(!fx.dp.ban_tagged(last).unwrap());
    assert!(fx.dp.ban_cached(last).unwrap());
    fx.expect(
        &Frame::tcp(last, dst, 443, ACK).build(),
        XDP_DROP,
        Counter::DropBanned,
    );
    // An IPv6 ban has no tag.
    let held = fx.dp.ban_tags_held().unwrap();
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    fx.dp
        .insert_ban(&IpNet::from(v6), &BanEntry::default())
        .unwrap();
    assert!(!fx.dp.ban_tagged(v6).unwrap());
    assert_eq!(fx.dp.ban_tags_held().unwrap(), held);
}

/// Two bans whose `PS_BAN_FILTER` words share a bit (a ban sets three bits of one word):
/// lifting one leaves the bit set for the other, whether it came in alone or in bulk,
/// and lifting both leaves no bit set.
#[test]
fn a_filter_bit_two_bans_share_stays_until_both_are_lifted() {
    require_kernel!();
    let ((a, pa), (b, pb)) = portsentry_tests::probe_asserts::sharing_a_filter_bit();
    let bits = |m: u64| u64::from(m.count_ones());
    let syn = |src: IpAddr| Frame::tcp(src, ip(V4_DST), 22, SYN).build();
    let entry = BanEntry {
        since_ns: monotonic_ns(),
        ..Default::default()
    };
    let mut fx = Fixture::new();
    assert_eq!(fx.dp.ban_filter_bits().unwrap(), 0);
    fx.dp.insert_ban(&IpNet::from(a), &entry).unwrap();
    fx.dp.insert_bans(vec![(IpNet::from(b), entry)]).unwrap();
    assert_eq!(fx.dp.ban_filter_bits().unwrap(), bits(pa.mask | pb.mask));
    fx.expect(&syn(a), XDP_DROP, Counter::DropBanned);
    fx.expect(&syn(b), XDP_DROP, Counter::DropBanned);
    assert!(fx.dp.remove_ban(&IpNet::from(a)).unwrap());
    assert_eq!(fx.dp.ban_filter_bits().unwrap(), bits(pb.mask));
    fx.expect(&syn(a), XDP_PASS, Counter::PassProbe);
    fx.expect(&syn(b), XDP_DROP, Counter::DropBanned);
    // The other way round: the bulk ban lifted first.
    fx.dp.insert_ban(&IpNet::from(a), &entry).unwrap();
    assert!(fx.dp.remove_ban(&IpNet::from(b)).unwrap());
    assert_eq!(fx.dp.ban_filter_bits().unwrap(), bits(pa.mask));
    fx.expect(&syn(a), XDP_DROP, Counter::DropBanned);
    assert!(fx.dp.remove_ban(&IpNet::from(a)).unwrap());
    assert_eq!(fx.dp.ban_filter_bits().unwrap(), 0);
    fx.expect(&syn(b), XDP_PASS, Counter::PassProbe);
}

/// A pin directory of this test process's own under bpffs, emptied.
fn fresh_pins(tag: &str) -> std::path::PathBuf {
    let pins =
        std::path::PathBuf::from(format!("/sys/fs/bpf/ps-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pins);
    pins
}

/// A UDP datagram from `src` to this host's address of its family.
fn udp(src: &str) -> Vec<u8> {
    let dst = if src.contains(':') { V6_DST } else { V4_DST };
    Frame::udp(ip(src), ip(dst), 2000).build()
}

/// The verdict of `dp`'s program (no fixture: a program of its own sizes or pins) on
/// [`udp`] from `src`, run in `ns`.
fn udp_verdict(
    ns: &portsentry_tests::netns::Netns,
    dp: &portsentry_user::kernel::Dataplane,
    src: &str,
) -> u32 {
    ns.enter(|| portsentry_tests::testrun::run(dp.program_fd().unwrap(), &udp(src), 1))
        .unwrap()
        .retval
}

/// The range filter in front of the trie (`PS_NET_FILTER`) follows the ranges: a bit two
/// ranges share stays set until both are gone, a range wider than the filter lists turns
/// the filter off while it lasts, and pins of a release without the filter get it filled
/// at load, before the program reads it.
#[test]
fn range_filter_follows_the_ranges() {
    use portsentry_common::maps::SETTING_PREFIX_BANS_WIDE;
    require_kernel!();
    let mut fx = Fixture::new();
    // 198.51.100.0/24 lies inside 198.51.0.0/16: its filter bit has two users. The
    // IPv6 /32 sets 65,536 bits (the batched path).
    for n in [
        "198.51.100.0/24",
        "198.51.0.0/16",
        "2001:db8:bad::/48",
        "2001:db9::/32",
    ] {
        fx.dp.insert_ban(&net(n), &BanEntry::default()).unwrap();
    }
    for src in [
        "198.51.100.9",
        "198.51.7.1",
        "2001:db8:bad:1::1",
        "2001:db9:ffff::1",
    ] {
        fx.expect(&udp(src), XDP_DROP, Counter::DropBanned);
    }
    assert!(fx.dp.remove_ban(&net("198.51.0.0/16")).unwrap());
    assert!(fx.dp.remove_ban(&net("2001:db9::/32")).unwrap());
    fx.expect(&udp("198.51.100.9"), XDP_DROP, Counter::DropBanned);
    fx.expect(&udp("2001:db8:bad:1::1"), XDP_DROP, Counter::DropBanned);
    fx.expect(&udp("198.51.7.1"), XDP_PASS, Counter::PassUnwatched);
    fx.expect(&udp("2001:db9:ffff::1"), XDP_PASS, Counter::PassUnwatched);
    // Wider than /8: no filter bits, the flag instead, for as long as it lasts.
    fx.dp
        .insert_ban(&net("10.0.0.0/7"), &BanEntry::default())
        .unwrap();
    assert_ne!(fx.dp.settings().flags & SETTING_PREFIX_BANS_WIDE, 0);
    fx.expect(&udp("11.1.2.3"), XDP_DROP, Counter::DropBanned);
    assert!(fx.dp.remove_ban(&net("10.0.0.0/7")).unwrap());
    assert_eq!(fx.dp.settings().flags & SETTING_PREFIX_BANS_WIDE, 0);
    fx.expect(&udp("11.1.2.3"), XDP_PASS, Counter::PassUnwatched);
    fx.expect(&udp("198.51.100.9"), XDP_DROP, Counter::DropBanned);

    // Pins from a release without the filter: the trie holds a range, the filter pin is
    // missing. The next load creates the filter and fills it from the trie.
    let pins = fresh_pins("netfilter");
    let sizes = portsentry_user::kernel::MapSizes::default();
    {
        let mut dp = portsentry_user::kernel::Dataplane::load(&sizes, Some(pins.clone())).unwrap();
        dp.insert_ban(&net("203.0.113.0/24"), &BanEntry::default())
            .unwrap();
    }
    std::fs::remove_file(pins.join(portsentry_common::maps::NET_FILTER)).unwrap();
    let dp = portsentry_user::kernel::Dataplane::load(&sizes, Some(pins.clone())).unwrap();
    let ns = portsentry_tests::netns::Netns::new("nf");
    let frame = udp("203.0.113.5");
    let r = ns.enter(|| portsentry_tests::testrun::run(dp.program_fd().unwrap(), &frame, 1));
    drop(dp);
    let _ = std::fs::remove_dir_all(&pins);
    assert_eq!(
        r.unwrap().retval,
        XDP_DROP,
        "the range ban survived the upgrade"
    );
}

/// Range bans by length (`PS_BAN_NET_HASH`): the first four lengths of a family are
/// listed and found in the hash, a fifth in the trie, which the program then looks at
/// for that family only; an expired range passes; the lengths leave with their last
/// range; a load with pins kept (and pins of a release without the hash) lists the
/// ranges in the trie again.
#[test]
fn range_bans_by_length() {
    use portsentry_common::ban_nets::{FAMILY_V4, FAMILY_V6};
    require_kernel!();
    let mut fx = Fixture::new();
    let ranges = [
        ("198.51.100.0/24", "198.51.100.7"),
        ("172.16.0.0/16", "172.16.200.1"),
        ("192.0.2.16/28", "192.0.2.20"),
        ("100.64.0.0/20", "100.64.15.255"),
        ("2001:db8:bad::/48", "2001:db8:bad:7::1"),
        ("2001:db8:1:2::/64", "2001:db8:1:2::99"),
    ];
    for (n, _) in ranges {
        fx.dp.insert_ban(&net(n), &BanEntry::default()).unwrap();
    }
    let lens = fx
        .dp
        .net_lengths()
        .unwrap()
        .expect("the object has the hash");
    assert_eq!(lens.used, [4, 2]);
    let listed: Vec<u32> = lens.lens[FAMILY_V4].iter().map(|l| l.len).collect();
    assert_eq!(listed, vec![124, 120, 116, 112], "longest first");
    assert_eq!(lens.hashed_only, 1 << FAMILY_V4 | 1 << FAMILY_V6);
    // Found in the hash alone (neither family looks at the trie).
    for (n, host) in ranges {
        fx.expect(&udp(host), XDP_DROP, Counter::DropBanned);
        let outside = if n.contains(':') {
            "2001:db8:2::1"
        } else {
            "198.18.0.1"
        };
        fx.expect(&udp(outside), XDP_PASS, Counter::PassUnwatched);
    }
    // A fifth IPv4 length: in the trie, and IPv4 looks there again; IPv6 does not.
    fx.dp
        .insert_ban(&net("10.0.0.0/9"), &BanEntry::default())
        .unwrap();
    let lens = fx.dp.net_lengths().unwrap().unwrap();
    assert_eq!(lens.used, [4, 2]);
    assert_eq!(lens.hashed_only, 1 << FAMILY_V6);
    fx.expect(&udp("10.100.0.1"), XDP_DROP, Counter::DropBanned);
    fx.expect(&udp("198.51.100.7"), XDP_DROP, Counter::DropBanned);
    // An expired range of a listed length is passed, and counted.
    let expired = BanEntry {
        expires_ns: monotonic_ns() - 1_000_000_000,
        ..Default::default()
    };
    fx.dp.insert_ban(&net("203.0.113.0/24"), &expired).unwrap();
    let o = fx.expect(&udp("203.0.113.5"), XDP_PASS, Counter::PassUnwatched);
    assert_eq!(o.delta.get(Counter::BanExpired), 1);
    // Written again with a future end: in force.
    let later = BanEntry {
        expires_ns: monotonic_ns() + 3_600_000_000_000,
        ..Default::default()
    };
    fx.dp.insert_ban(&net("203.0.113.0/24"), &later).unwrap();
    fx.expect(&udp("203.0.113.5"), XDP_DROP, Counter::DropBanned);
    assert!(fx.dp.remove_ban(&net("203.0.113.0/24")).unwrap());
    fx.expect(&udp("203.0.113.5"), XDP_PASS, Counter::PassUnwatched);
    // The /28 lifted: its length leaves the list, the /9 stays in the trie.
    assert!(fx.dp.remove_ban(&net("192.0.2.16/28")).unwrap());
    fx.expect(&udp("192.0.2.20"), XDP_PASS, Counter::PassUnwatched);
    let lens = fx.dp.net_lengths().unwrap().unwrap();
    assert_eq!(lens.used, [3, 2]);
    fx.expect(&udp("10.100.0.1"), XDP_DROP, Counter::DropBanned);
    // A second /9 does not take the free slot: the first /9 is in the trie alone.
    fx.dp
        .insert_ban(&net("10.128.0.0/9"), &BanEntry::default())
        .unwrap();
    assert_eq!(fx.dp.net_lengths().unwrap().unwrap().used, [3, 2]);
    fx.expect(&udp("10.100.0.1"), XDP_DROP, Counter::DropBanned);
    fx.expect(&udp("10.200.0.1"), XDP_DROP, Counter::DropBanned);
    assert!(fx.dp.remove_ban(&net("10.128.0.0/9")).unwrap());
    assert!(fx.dp.remove_ban(&net("10.0.0.0/9")).unwrap());
    assert_eq!(
        fx.dp.net_lengths().unwrap().unwrap().hashed_only,
        1 << FAMILY_V4 | 1 << FAMILY_V6
    );
    fx.expect(&udp("10.100.0.1"), XDP_PASS, Counter::PassUnwatched);
    for (n, host) in ranges {
        if n != "192.0.2.16/28" {
            assert!(fx.dp.remove_ban(&net(n)).unwrap(), "{n}");
        }
        fx.expect(&udp(host), XDP_PASS, Counter::PassUnwatched);
    }
    assert_eq!(fx.dp.net_lengths().unwrap().unwrap().used, [0, 0]);

    // Pins kept, and pins of a release without the hash: the load lists the ranges of
    // the trie again, the most used lengths first.
    let pins = fresh_pins("nethash");
    let sizes = portsentry_user::kernel::MapSizes::default();
    {
        let mut dp = portsentry_user::kernel::Dataplane::load(&sizes, Some(pins.clone())).unwrap();
        // Five IPv4 lengths, the /8 the least used.
        for n in [
            "10.0.0.0/8",
            "198.51.100.0/24",
            "198.51.101.0/24",
            "172.16.0.0/16",
            "172.17.0.0/16",
            "192.0.2.16/28",
            "192.0.2.32/28",
            "100.64.0.0/20",
            "100.65.0.0/20",
        ] {
            dp.insert_ban(&net(n), &BanEntry::default()).unwrap();
        }
    }
    let check = |dp: &portsentry_user::kernel::Dataplane, what: &str| {
        let lens = dp.net_lengths().unwrap().unwrap();
        let listed: Vec<u32> = lens.lens[FAMILY_V4].iter().map(|l| l.len).collect();
        let ns = portsentry_tests::netns::Netns::new("nh");
        let verdicts: Vec<u32> = ["10.1.1.1", "198.51.101.9", "192.0.2.33", "198.18.0.1"]
            .iter()
            .map(|src| udp_verdict(&ns, dp, src))
            .collect();
        (
            listed,
            lens.hashed_only & 1 << FAMILY_V4,
            verdicts,
            what.to_string(),
        )
    };
    let dp = portsentry_user::kernel::Dataplane::load(&sizes, Some(pins.clone())).unwrap();
    let kept = check(&dp, "pins kept");
    drop(dp);
    for name in [
        portsentry_common::maps::BAN_NET_HASH,
        portsentry_common::maps::BAN_NET_LENS,
    ] {
        std::fs::remove_file(pins.join(name)).unwrap();
    }
    let dp = portsentry_user::kernel::Dataplane::load(&sizes, Some(pins.clone())).unwrap();
    let upgraded = check(&dp, "pins without the hash");
    drop(dp);
    // A trie of another size: the hash is replaced with it, and its lengths entry too.
    let bigger = portsentry_user::kernel::MapSizes {
        ban_nets: sizes.ban_nets * 2,
        ..sizes.clone()
    };
    let dp = portsentry_user::kernel::Dataplane::load(&bigger, Some(pins.clone())).unwrap();
    let resized = check(&dp, "resized");
    let log = dp.resized_maps();
    drop(dp);
    let _ = std::fs::remove_dir_all(&pins);
    for name in [
        portsentry_common::maps::BAN_NETS,
        portsentry_common::maps::BAN_NET_HASH,
        portsentry_common::maps::BAN_NET_LENS,
    ] {
        assert!(
            log.iter().any(|l| l.starts_with(&format!("{name} "))),
            "{name}: {log:?}"
        );
    }
    for got in [kept, upgraded, resized] {
        assert_eq!(
            got,
            (
                vec![124, 120, 116, 112],
                0,
                vec![XDP_DROP, XDP_DROP, XDP_DROP, XDP_PASS],
                got.3.clone()
            )
        );
    }
}

/// A batch of ranges the hash of lengths cannot take whole is refused whole: the ranges
/// written to the hash before the error leave it again (the program would otherwise drop
/// their hosts with no ban on record, none that `unban` could lift), their lengths are
/// unlisted, and the ranges in force stay in force.
#[test]
fn a_range_batch_the_hash_refuses_leaves_nothing_behind() {
    use portsentry_common::ban_nets::FAMILY_V4;
    require_kernel!();
    let sizes = portsentry_user::kernel::MapSizes {
        ban_nets: 4,
        ..Default::default()
    };
    let mut dp = portsentry_user::kernel::Dataplane::load(&sizes, None).unwrap();
    for n in ["198.51.100.0/24", "198.51.101.0/24", "198.51.102.0/24"] {
        dp.insert_ban(&net(n), &BanEntry::default()).unwrap();
    }
    // Two new ranges, room for one: a /24 (listed) and a /20 (listed by it).
    let err = dp
        .insert_bans(vec![
            (net("203.0.113.0/24"), BanEntry::default()),
            (net("100.64.0.0/20"), BanEntry::default()),
            (net("100.65.0.0/20"), BanEntry::default()),
        ])
        .expect_err("a fourth range fits, a fifth does not");
    assert!(
        format!("{err:#}").contains(portsentry_common::maps::BAN_NET_HASH),
        "{err:#}"
    );
    let ns = portsentry_tests::netns::Netns::new("nhfull");
    let verdict = |dp: &portsentry_user::kernel::Dataplane, src: &str| udp_verdict(&ns, dp, src);
    for (n, host) in [
        ("203.0.113.0/24", "203.0.113.9"),
        ("100.64.0.0/20", "100.64.1.1"),
        ("100.65.0.0/20", "100.65.1.1"),
    ] {
        assert_eq!(dp.ban(&net(n)).unwrap(), None, "{n}");
        assert_eq!(verdict(&dp, host), XDP_PASS, "{host}: no ban on record");
    }
    assert_eq!(verdict(&dp, "198.51.101.7"), XDP_DROP);
    let lens = dp.net_lengths().unwrap().unwrap();
    assert_eq!(lens.used[FAMILY_V4], 1, "the /20 unlisted: {lens:?}");
    // The room left takes one range, which is then in force.
    dp.insert_ban(&net("100.64.0.0/20"), &BanEntry::default())
        .unwrap();
    assert_eq!(verdict(&dp, "100.64.1.1"), XDP_DROP);
    assert_eq!(verdict(&dp, "203.0.113.9"), XDP_PASS);
    assert_eq!(dp.net_lengths().unwrap().unwrap().used[FAMILY_V4], 2);
}

/// A batch the trie refuses part way leaves the hash of lengths as the trie has it: a
/// new range refused leaves the hash, and a range the trie holds keeps its value there
/// (the hash decides first: a new end the trie refused would otherwise be in force).
#[test]
fn a_range_batch_the_trie_refuses_keeps_the_hash_as_the_trie() {
    require_kernel!();
    let sizes = portsentry_user::kernel::MapSizes {
        ban_nets: 5,
        ..Default::default()
    };
    let mut dp = portsentry_user::kernel::Dataplane::load(&sizes, None).unwrap();
    let hour = BanEntry {
        expires_ns: monotonic_ns() + 3_600_000_000_000,
        ..Default::default()
    };
    dp.insert_ban(&net("198.51.100.0/24"), &hour).unwrap();
    // Four listed lengths, then a fifth in the trie alone: the trie is full, the hash
    // has room for one.
    for n in [
        "172.16.0.0/16",
        "100.64.0.0/20",
        "192.0.2.16/28",
        "10.0.0.0/9",
    ] {
        dp.insert_ban(&net(n), &BanEntry::default()).unwrap();
    }
    let expired = BanEntry {
        expires_ns: monotonic_ns() - 1_000_000_000,
        ..Default::default()
    };
    dp.insert_bans(vec![
        (net("203.0.113.0/24"), BanEntry::default()),
        (net("198.51.100.0/24"), expired),
    ])
    .expect_err("the trie is full");
    assert_eq!(dp.ban(&net("198.51.100.0/24")).unwrap(), Some(hour));
    assert_eq!(dp.ban(&net("203.0.113.0/24")).unwrap(), None);
    let ns = portsentry_tests::netns::Netns::new("nhtrie");
    let verdict = |src: &str| udp_verdict(&ns, &dp, src);
    assert_eq!(
        verdict("198.51.100.7"),
        XDP_DROP,
        "the hour's ban stays in force"
    );
    assert_eq!(verdict("203.0.113.9"), XDP_PASS, "the refused range is not");
    assert_eq!(verdict("10.1.2.3"), XDP_DROP);
}

/// A SOURCE_PREFIX_V6 change whose bans the other map cannot all take is refused whole:
/// the bans copied before the error leave that map again, so that none stays in force
/// out of reach of an unban (which looks in the map of the prefix in force).
#[test]
fn a_prefix_change_the_trie_cannot_take_is_taken_back() {
    use portsentry_common::maps::{SETTING_V6_PREFIX_SHIFT, Settings};
    require_kernel!();
    let sizes = portsentry_user::kernel::MapSizes {
        ban_nets: 2,
        ..Default::default()
    };
    let mut dp = portsentry_user::kernel::Dataplane::load(&sizes, None).unwrap();
    let by_64 = Settings {
        event_trigger: 1,
        flags: 64 << SETTING_V6_PREFIX_SHIFT,
        ..Default::default()
    };
    dp.write_settings(by_64).unwrap();
    let nets = ["2001:db8:1::/64", "2001:db8:2::/64", "2001:db8:3::/64"];
    for n in nets {
        dp.insert_ban(&net(n), &BanEntry::default()).unwrap();
    }
    let err = dp
        .write_settings(Settings { flags: 0, ..by_64 })
        .expect_err("the trie holds two");
    assert!(format!("{err:#}").contains("SOURCE_PREFIX_V6"), "{err:#}");
    assert_eq!(
        dp.v6_source_prefix(),
        Some(64),
        "the prefix in force is unchanged"
    );
    let ns = portsentry_tests::netns::Netns::new("v6back");
    let verdict = |dp: &portsentry_user::kernel::Dataplane, src: &str| udp_verdict(&ns, dp, src);
    for host in ["2001:db8:1::99", "2001:db8:2::99", "2001:db8:3::99"] {
        assert_eq!(verdict(&dp, host), XDP_DROP, "{host}");
    }
    // Each lifted by an unban: nothing is left in force.
    for (n, host) in nets
        .iter()
        .zip(["2001:db8:1::99", "2001:db8:2::99", "2001:db8:3::99"])
    {
        assert!(dp.remove_ban(&net(n)).unwrap(), "{n}");
        assert_eq!(verdict(&dp, host), XDP_PASS, "{host}");
    }
}

/// An expired range inside an active one (a CrowdSec /24 whose decision ended, not yet
/// lifted: the daemon lifts it within a second, or at its next start when it is
/// stopped) hides nothing: the outer range still drops its hosts. (The first range
/// found in the hash of lengths decided, expired or not.)
#[test]
fn an_expired_range_inside_an_active_one_hides_nothing() {
    require_kernel!();
    let mut dp = portsentry_user::kernel::Dataplane::load(&Default::default(), None).unwrap();
    let ns = portsentry_tests::netns::Netns::new("expired");
    let verdict = |dp: &portsentry_user::kernel::Dataplane, src: &str| udp_verdict(&ns, dp, src);
    let ended = BanEntry {
        expires_ns: 1,
        ..Default::default()
    };
    for (outer, inner, host) in [
        ("10.30.0.0/16", "10.30.1.0/24", "10.30.1.9"),
        ("2001:db8:8::/48", "2001:db8:8:1::/64", "2001:db8:8:1::9"),
    ] {
        dp.insert_ban(&net(inner), &ended).unwrap();
        assert_eq!(verdict(&dp, host), XDP_PASS, "{inner} has ended");
        dp.insert_ban(&net(outer), &BanEntry::default()).unwrap();
        assert_eq!(verdict(&dp, host), XDP_DROP, "{host} in {outer}");
    }
}

/// A range banned inside a banned range (a CrowdSec /24 inside the operator's /16):
/// lifting it leaves the outer range in force over it. (A lookup in the trie answered
/// for the inner range with the outer one, so the inner one was taken for known: its
/// filter bit went uncounted, and its lift cleared the bit the outer range needs.)
#[test]
fn lifting_a_range_inside_another_keeps_the_outer_one() {
    require_kernel!();
    let mut dp = portsentry_user::kernel::Dataplane::load(&Default::default(), None).unwrap();
    let ns = portsentry_tests::netns::Netns::new("nested");
    let verdict = |dp: &portsentry_user::kernel::Dataplane, src: &str| udp_verdict(&ns, dp, src);
    for (outer, inner, host) in [
        ("10.20.0.0/16", "10.20.1.0/24", "10.20.1.9"),
        ("2001:db8:7::/48", "2001:db8:7:1::/64", "2001:db8:7:1::9"),
    ] {
        dp.insert_ban(&net(outer), &BanEntry::default()).unwrap();
        dp.insert_ban(&net(inner), &BanEntry::default()).unwrap();
        assert!(dp.ban(&net(inner)).unwrap().is_some());
        assert!(dp.remove_ban(&net(inner)).unwrap(), "{inner}");
        assert!(dp.ban(&net(inner)).unwrap().is_none(), "{inner} is gone");
        assert!(dp.ban(&net(outer)).unwrap().is_some(), "{outer} stays");
        assert_eq!(verdict(&dp, host), XDP_DROP, "{host} in {outer}");
    }
}

/// An address's networks banned under each prefix (its /48, /64 and the address itself)
/// share one key of the exact map: at each change of SOURCE_PREFIX_V6 one of them comes
/// into the exact map where another leaves it, and every one stays in force. (The one
/// coming in was removed with the one going out; and a range moved into the trie inside
/// another was taken for one the trie held, which left the filter bit uncounted.)
#[test]
fn bans_that_trade_places_in_the_exact_map_stay() {
    use portsentry_common::maps::{SETTING_V6_PREFIX_SHIFT, Settings};
    require_kernel!();
    let mut dp = portsentry_user::kernel::Dataplane::load(&Default::default(), None).unwrap();
    let by = |prefix: u32| Settings {
        event_trigger: 1,
        flags: prefix << SETTING_V6_PREFIX_SHIFT,
        ..Default::default()
    };
    dp.write_settings(by(64)).unwrap();
    for n in ["2001:db8:5::/48", "2001:db8:5::/64", "2001:db8:5::/128"] {
        dp.insert_ban(&net(n), &BanEntry::default()).unwrap();
    }
    let ns = portsentry_tests::netns::Netns::new("v6trade");
    let verdict = |dp: &portsentry_user::kernel::Dataplane, src: &str| udp_verdict(&ns, dp, src);
    for prefix in [48, 128, 64, 48, 64, 128, 48] {
        dp.write_settings(by(prefix)).unwrap();
        for host in ["2001:db8:5::", "2001:db8:5::10", "2001:db8:5:1::10"] {
            assert_eq!(
                verdict(&dp, host),
                XDP_DROP,
                "{host}, SOURCE_PREFIX_V6={prefix}"
            );
        }
        assert_eq!(verdict(&dp, "2001:db8:6::10"), XDP_PASS);
        let mut bans: Vec<String> = dp
            .bans()
            .unwrap()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        bans.sort();
        assert_eq!(
            bans,
            ["2001:db8:5::/128", "2001:db8:5::/48", "2001:db8:5::/64"]
        );
    }
    // Each lifted on its own, from the map of the prefix in force.
    assert!(dp.remove_ban(&net("2001:db8:5::/48")).unwrap());
    assert_eq!(verdict(&dp, "2001:db8:5:1::10"), XDP_PASS, "the /48 lifted");
    assert_eq!(verdict(&dp, "2001:db8:5::10"), XDP_DROP, "the /64 stays");
}

/// The bans carried over after a resize are those the old program made after the
/// copy: not those the daemon moved since (a SOURCE_PREFIX_V6 changed at the same
/// start: an address's ban must not come back as its network's) or lifted since.
#[test]
fn a_resize_carries_over_the_late_bans_alone() {
    use portsentry_common::maps::{SETTING_V6_PREFIX_SHIFT, Settings};
    require_kernel!();
    let pins = fresh_pins("late");
    let sizes = portsentry_user::kernel::MapSizes::default();
    let mut old = portsentry_user::kernel::Dataplane::load(&sizes, Some(pins.clone())).unwrap();
    let single = Settings {
        event_trigger: 1,
        ..Default::default()
    };
    old.write_settings(single).unwrap();
    for n in ["2001:db8::5/128", "198.51.100.1/32", "198.51.100.2/32"] {
        old.insert_ban(&net(n), &BanEntry::default()).unwrap();
    }
    let bigger = portsentry_user::kernel::MapSizes {
        bans: sizes.bans * 2,
        ..sizes.clone()
    };
    let mut new = portsentry_user::kernel::Dataplane::load(&bigger, Some(pins.clone())).unwrap();
    // After the copy: the old program's map gets a ban (as the program would make one),
    // and the daemon lifts one and moves the IPv6 address's ban to the trie.
    let late = BanEntry {
        since_ns: monotonic_ns(),
        ..Default::default()
    };
    old.insert_ban(&net("198.51.100.77/32"), &late).unwrap();
    assert!(new.remove_ban(&net("198.51.100.2/32")).unwrap());
    new.write_settings(Settings {
        flags: 64 << SETTING_V6_PREFIX_SHIFT,
        ..single
    })
    .unwrap();
    assert_eq!(new.carry_over_late_bans().unwrap(), 1);
    drop(old);
    let ns = portsentry_tests::netns::Netns::new("late");
    let verdict = |src: &str| udp_verdict(&ns, &new, src);
    assert_eq!(verdict("198.51.100.77"), XDP_DROP, "the late ban");
    assert_eq!(verdict("198.51.100.1"), XDP_DROP);
    assert_eq!(verdict("198.51.100.2"), XDP_PASS, "lifted after the copy");
    assert_eq!(verdict("2001:db8::5"), XDP_DROP);
    assert_eq!(
        verdict("2001:db8::6"),
        XDP_PASS,
        "the address's ban, not its /64's"
    );
    drop(new);
    let _ = std::fs::remove_dir_all(&pins);
}

/// A start that pinned resized ban maps and stopped before its attach (killed, or
/// failing after the pins) leaves the old program running on the old maps: the next
/// start finds the old `PS_BANS` by the pin it keeps until then, and carries over the
/// bans the program made in it since the copy, and no other. The CLI changes no ban
/// meanwhile. And a map refused for its size leaves every pin as it was, also those of
/// the maps before it.
#[test]
fn an_interrupted_resize_loses_no_ban_the_old_program_made() {
    use aya::maps::MapData;
    use portsentry_common::maps::BanOrigin;
    use portsentry_tests::netns::TestNet;
    use portsentry_user::{
        config::AttachMode,
        kernel::{Dataplane, MapSizes},
    };
    require_kernel!();
    let pinned_id = |pins: &std::path::Path, name: &str| {
        MapData::from_pin(pins.join(name))
            .unwrap()
            .info()
            .unwrap()
            .id()
    };
    let replaced_pins = |pins: &std::path::Path| {
        std::fs::read_dir(pins)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("_replaced_"))
            .count()
    };
    let program_ban = |since_ns: u64| BanEntry {
        since_ns,
        origin: BanOrigin::Kernel as u8,
        ..Default::default()
    };
    let tnet = TestNet::new(0);
    let pins = fresh_pins("orphan");
    let sizes = MapSizes::default();
    let mut old = Dataplane::load(&sizes, Some(pins.clone())).unwrap();
    for n in ["198.51.100.1/32", "203.0.113.0/24", "2001:db8:1::/48"] {
        old.insert_ban(&net(n), &BanEntry::default()).unwrap();
    }
    // The program's own ban, made before the copy.
    let before = program_ban(monotonic_ns() - 5_000_000_000);
    old.insert_ban(&net("198.51.100.2/32"), &before).unwrap();
    tnet.server
        .enter(|| old.attach(&tnet.server_if, AttachMode::Skb))
        .unwrap();
    // PS_BANS would be replaced first, then PS_BAN_NETS is too small for its ranges.
    let refused = MapSizes {
        bans: sizes.bans * 2,
        ban_nets: 1,
        ..sizes.clone()
    };
    let bans_id = pinned_id(&pins, "PS_BANS");
    let err = Dataplane::load(&refused, Some(pins.clone()))
        .err()
        .expect("too small");
    assert!(
        format!("{err:#}").contains("PS_BAN_NETS holds 2"),
        "{err:#}"
    );
    assert_eq!(pinned_id(&pins, "PS_BANS"), bans_id, "no pin replaced");
    assert_eq!(replaced_pins(&pins), 0);
    // The interrupted start: the ban maps replaced and pinned, and no attach.
    let bigger = MapSizes {
        bans: sizes.bans * 2,
        ban_nets: sizes.ban_nets * 2,
        ..sizes.clone()
    };
    drop(Dataplane::load(&bigger, Some(pins.clone())).unwrap());
    assert_ne!(pinned_id(&pins, "PS_BANS"), bans_id);
    assert_eq!(replaced_pins(&pins), 1, "the old PS_BANS keeps a pin");
    // Meanwhile the old program bans (as at a trigger), in its own map...
    old.insert_ban(&net("198.51.100.77/32"), &program_ban(monotonic_ns()))
        .unwrap();
    // The CLI's bans and unbans would not reach the old program: refused until a start
    // carries its map over.
    let err = Dataplane::open_pinned(&pins).err().expect("refused");
    assert!(
        format!("{err:#}").contains("PS_BANS_replaced_")
            && format!("{err:#}").contains("portsentry run"),
        "{err:#}"
    );
    // Two bans leave the pinned map (as the start that stopped may have moved or
    // lifted bans): the old map's copies of them are not late.
    {
        let data = MapData::from_pin(pins.join("PS_BANS")).unwrap();
        let mut bans: aya::maps::HashMap<MapData, portsentry_common::Addr, BanEntry> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
        for n in ["198.51.100.1/32", "198.51.100.2/32"] {
            let key = portsentry_user::kernel::addr::net_key(&net(n)).1;
            bans.remove(&key).unwrap();
        }
    }
    let ns = portsentry_tests::netns::Netns::new("orphan");
    assert_eq!(udp_verdict(&ns, &old, "198.51.100.77"), XDP_DROP);
    drop(old);
    // The next start, with the same sizes: nothing to resize, one map to carry from.
    let mut again = Dataplane::load(&bigger, Some(pins.clone())).unwrap();
    let lines = again.resized_maps();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("stopped before its attach"), "{lines:?}");
    assert_eq!(
        again.carry_over_late_bans().unwrap(),
        1,
        "before the attach"
    );
    tnet.server
        .enter(|| again.attach(&tnet.server_if, AttachMode::Skb))
        .unwrap();
    assert_eq!(again.carry_over_late_bans().unwrap(), 0, "carried once");
    again.release_replaced_maps();
    assert_eq!(replaced_pins(&pins), 0, "released");
    drop(Dataplane::open_pinned(&pins).expect("the CLI may change bans again"));
    let verdict = |src: &str| udp_verdict(&ns, &again, src);
    for banned in ["198.51.100.77", "203.0.113.9", "2001:db8:1::9"] {
        assert_eq!(verdict(banned), XDP_DROP, "{banned}");
    }
    for passed in ["198.51.100.1", "198.51.100.2", "192.0.2.1"] {
        assert_eq!(verdict(passed), XDP_PASS, "{passed}: not carried back");
    }
    drop(again);
    let _ = std::fs::remove_dir_all(&pins);
}

/// `PS_BANS` is read by two threads, each half of its buckets, the lower half's last
/// batch running past the middle: every ban is read back exactly once.
#[test]
fn a_big_ban_map_reads_back_every_ban_once() {
    require_kernel!();
    const N: u32 = 150_000;
    let sizes = portsentry_user::kernel::MapSizes {
        bans: 200_000,
        ..Default::default()
    };
    let mut dp = portsentry_user::kernel::Dataplane::load(&sizes, None).unwrap();
    let entry = BanEntry {
        since_ns: monotonic_ns(),
        ..Default::default()
    };
    let put: Vec<(IpNet, BanEntry)> = (0..N)
        .map(|i| {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7));
            (IpNet::from(ip), entry)
        })
        .collect();
    dp.insert_bans(put.clone()).unwrap();
    let read = dp.bans().unwrap();
    let nets: std::collections::HashSet<IpNet> = read.iter().map(|(n, _)| *n).collect();
    assert_eq!(nets.len(), N as usize, "distinct bans read back");
    assert_eq!(read.len(), N as usize, "bans read twice");
    assert!(put.iter().all(|(n, _)| nets.contains(n)), "a ban missing");
}

/// More bans than `PS_BANS` holds, written by several threads at once: the write fails
/// and says which map is full, and the map holds only bans that were put: at most its
/// size, and a few more when writers meet at its last free entry (`MAP_WRITERS_MAX`).
#[test]
fn a_ban_map_too_small_for_a_big_write_says_so() {
    require_kernel!();
    const N: u32 = 150_000;
    let sizes = portsentry_user::kernel::MapSizes {
        bans: 100_000,
        ..Default::default()
    };
    let mut dp = portsentry_user::kernel::Dataplane::load(&sizes, None).unwrap();
    let put: Vec<(IpNet, BanEntry)> = (0..N)
        .map(|i| {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i * 3));
            (IpNet::from(ip), BanEntry::default())
        })
        .collect();
    let err = format!("{:#}", dp.insert_bans(put.clone()).unwrap_err());
    assert!(
        err.contains(": PS_BANS is full (MAX_BANS bans at once)"),
        "{err}"
    );
    // It names the ban it stopped at, one of those put (all in 11.0.0.0/8).
    assert!(err.contains("writing the ban of 11."), "{err}");
    let read = dp.bans().unwrap();
    let slack = portsentry_user::kernel::MAP_WRITERS_MAX - 1;
    assert!(
        !read.is_empty() && read.len() <= 100_000 + slack,
        "{} bans",
        read.len()
    );
    let put: std::collections::HashSet<IpNet> = put.iter().map(|(n, _)| *n).collect();
    assert!(read.iter().all(|(n, _)| put.contains(n)), "a ban never put");
}

/// Bans written before the program runs (a start after a reboot: the maps new, the
/// program being verified) have the filter, the tags and the cache written while other
/// threads write the hash. They come out as a bulk ban under a running program makes
/// them, and once verified the program drops each banned source.
#[test]
fn bans_written_before_the_program_runs_are_indexed_alike() {
    require_kernel!();
    use portsentry_user::kernel::{Dataplane, MapSizes};
    let now = monotonic_ns();
    let timed = BanEntry {
        since_ns: now,
        expires_ns: now + 3_600_000_000_000,
        ..Default::default()
    };
    let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0c00_0000 + i * 7));
    let v6 = |i: u32| {
        IpAddr::from(std::net::Ipv6Addr::from(
            0x2001_0db8_u128 << 96 | u128::from(i) << 64,
        ))
    };
    let bulk: Vec<(IpNet, BanEntry)> = (0..100_000)
        .map(|i| (IpNet::from(v4(i)), BanEntry::default()))
        .chain((100_000..120_000).map(|i| (IpNet::from(v4(i)), timed)))
        .chain((0..20_000).map(|i| (IpNet::from(v6(i)), timed)))
        .collect();
    let mut fresh = Dataplane::load_verifying(&MapSizes::default(), None).unwrap();
    fresh.insert_bans(bulk.clone()).unwrap();
    fresh.wait_verified().unwrap();
    let mut running = Dataplane::load(&MapSizes::default(), None).unwrap();
    running.insert_bans(bulk.clone()).unwrap();
    assert_eq!(fresh.bans().unwrap().len(), bulk.len());
    assert_eq!(
        fresh.ban_filter_bits().unwrap(),
        running.ban_filter_bits().unwrap(),
        "filter bits"
    );
    assert_eq!(
        fresh.ban_tags_held().unwrap(),
        running.ban_tags_held().unwrap(),
        "tags"
    );
    assert!(fresh.ban_tags_held().unwrap().unwrap() > 100_000, "tagged");
    assert_eq!(
        fresh.ban_cache_held().unwrap(),
        running.ban_cache_held().unwrap(),
        "cached"
    );
    let mut fx = Fixture::around(fresh, Settings::default());
    for i in [0, 777, 99_999, 100_000, 119_999] {
        assert!(fx.dp.ban_tagged(v4(i)).unwrap(), "{} tagged", v4(i));
        fx.expect(&udp(&v4(i).to_string()), XDP_DROP, Counter::DropBanned);
    }
    for i in [0, 19_999] {
        fx.expect(&udp(&v6(i).to_string()), XDP_DROP, Counter::DropBanned);
    }
    fx.expect(
        &udp(&v4(120_000).to_string()),
        XDP_PASS,
        Counter::PassUnwatched,
    );
}

/// A write before the program runs that the hash refuses (the map full) leaves the
/// filter, the tags and the cache with exactly the bans the hash took.
#[test]
fn a_refused_write_before_the_program_runs_leaves_only_the_hashs_bans_indexed() {
    require_kernel!();
    use portsentry_user::kernel::{Dataplane, MapSizes};
    let sizes = MapSizes {
        bans: 100_000,
        ..Default::default()
    };
    // IPv4 bans (tags) and IPv6 ones (the cache), interleaved: the hash refuses some of
    // each.
    let put: Vec<(IpNet, BanEntry)> = (0..75_000u32)
        .flat_map(|i| {
            let v4 = IpAddr::from(std::net::Ipv4Addr::from(0x0d00_0000 + i * 3));
            let v6 = IpAddr::from(std::net::Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | u128::from(i) << 64,
            ));
            [v4, v6].map(|ip| (IpNet::from(ip), BanEntry::default()))
        })
        .collect();
    let mut fresh = Dataplane::load_verifying(&sizes, None).unwrap();
    let err = format!("{:#}", fresh.insert_bans(put.clone()).unwrap_err());
    assert!(
        err.contains(": PS_BANS is full (MAX_BANS bans at once)"),
        "{err}"
    );
    let held = fresh.bans().unwrap();
    assert!(
        held.iter().any(|(n, _)| n.addr().is_ipv6()),
        "{} held",
        held.len()
    );
    assert!(held.len() < put.len());
    let mut only = Dataplane::load(&sizes, None).unwrap();
    only.insert_bans(held.clone()).unwrap();
    assert_eq!(
        fresh.ban_filter_bits().unwrap(),
        only.ban_filter_bits().unwrap(),
        "filter bits"
    );
    assert_eq!(
        fresh.ban_tags_held().unwrap(),
        only.ban_tags_held().unwrap(),
        "tags"
    );
    assert_eq!(
        fresh.ban_cache_held().unwrap(),
        only.ban_cache_held().unwrap(),
        "cached"
    );
    fresh.wait_verified().unwrap();
}

/// Bans written again with new entries (their deadlines moved with a step of the wall
/// clock, a decision extended: `refresh_bans`) take the new deadline in the program and
/// count no filter bit or wide range a second time: once lifted, their bits are clear and
/// the wide flag is off (counted twice, the bits stayed set and every packet went on to
/// the trie until the next load). A ban the maps lack is put as new.
#[test]
fn bans_written_again_are_counted_once() {
    use portsentry_common::maps::SETTING_PREFIX_BANS_WIDE;
    require_kernel!();
    let mut fx = Fixture::new();
    let (host, wide, absent) = (
        net("198.51.100.9/32"),
        net("10.0.0.0/7"),
        net("203.0.113.5/32"),
    );
    let past = BanEntry {
        since_ns: monotonic_ns(),
        expires_ns: 1,
        ..Default::default()
    };
    fx.dp.insert_ban(&host, &past).unwrap();
    fx.dp.insert_ban(&wide, &past).unwrap();
    fx.expect(&udp("198.51.100.9"), XDP_PASS, Counter::PassUnwatched);
    fx.expect(&udp("11.1.2.3"), XDP_PASS, Counter::PassUnwatched);
    let later = BanEntry {
        expires_ns: monotonic_ns() + 3_600_000_000_000,
        ..past
    };
    fx.dp
        .refresh_bans(vec![(host, later), (wide, later), (absent, later)])
        .unwrap();
    for src in ["198.51.100.9", "11.1.2.3", "203.0.113.5"] {
        fx.expect(&udp(src), XDP_DROP, Counter::DropBanned);
    }
    for n in [host, wide, absent] {
        assert!(fx.dp.remove_ban(&n).unwrap(), "{n}");
    }
    assert_eq!(fx.dp.ban_filter_bits().unwrap(), 0, "filter bits left set");
    assert_eq!(
        fx.dp.settings().flags & SETTING_PREFIX_BANS_WIDE,
        0,
        "the wide flag left on"
    );
}
