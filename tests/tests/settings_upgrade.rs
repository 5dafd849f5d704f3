//! Upgrading over pins of earlier releases:
//! - `PS_SETTINGS` of 24 bytes (before the Threshold Random Walk's steps): the load
//!   replaces the pinned map by one of this release's shape, its bytes carried over
//!   (cookie secret, flags, the IPv6 source prefix), the walk off;
//! - `PS_BAN_FILTER` made without `BPF_F_MMAPABLE` (before the daemon set its bits
//!   atomically): replaced by one made with it, its words carried over, every ban kept;
//! - `PS_PROTOCOLS` of 4 words (before IPv6's words came after IPv4's): replaced by one
//!   of this release's size, which the daemon then writes.

use aya::maps::MapData;
use portsentry_common::maps::{
    PROTOCOL_WORDS, PROTOCOLS, SETTING_V6_PREFIX_SHIFT, SETTING_VERIFY, SETTINGS, Settings,
    v6_source_prefix,
};
use portsentry_tests::{
    daemon::Workdir,
    old_pins::{BPF_MAP_TYPE_ARRAY, pin_map},
    require_kernel,
};
use portsentry_user::kernel::{Dataplane, MapSizes, ensure_pin_dir};

/// The value size of `PS_SETTINGS` before this release.
const OLD_VALUE_SIZE: u32 = 24;

/// Pins an array `PS_SETTINGS` of the earlier shape holding `old`'s first 24 bytes.
fn pin_old_settings(path: &std::path::Path, old: &Settings) {
    let bytes = &bytemuck::bytes_of(old)[..OLD_VALUE_SIZE as usize];
    pin_map(
        path,
        BPF_MAP_TYPE_ARRAY,
        (4, OLD_VALUE_SIZE, 1),
        &[(&0u32.to_ne_bytes(), bytes)],
    );
}

#[test]
fn settings_pinned_by_the_earlier_release_are_carried_over() {
    require_kernel!();
    let w = Workdir::new();
    ensure_pin_dir(&w.pin_dir).unwrap();
    // Every map pinned, then PS_SETTINGS as the earlier release pinned it.
    drop(Dataplane::load(&MapSizes::default(), Some(w.pin_dir.clone())).unwrap());
    let old = Settings {
        event_trigger: 5,
        events_per_sec: 1000,
        event_burst: 1000,
        flags: SETTING_VERIFY | 56 << SETTING_V6_PREFIX_SHIFT,
        cookie_secret: 0x0123_4567_89ab_cdef,
        trw: Default::default(),
    };
    let pin = w.pin_dir.join(SETTINGS);
    std::fs::remove_file(&pin).unwrap();
    pin_old_settings(&pin, &old);
    // `status` reads them while the earlier daemon still runs on them.
    let seen = Dataplane::inspect_pinned(&w.pin_dir).expect("status over the earlier pins");
    assert_eq!(seen.settings(), old);
    drop(seen);
    let dp = Dataplane::load(&MapSizes::default(), Some(w.pin_dir.clone()))
        .expect("this release loads over the earlier pins");
    // Every field carried over, the walk off; the daemon adds the ban cache's size.
    let sets = dp.ban_cache_sets().expect("this release's cache");
    let want = Settings {
        flags: portsentry_common::maps::with_ban_cache_sets(old.flags, sets),
        ..old
    };
    assert_eq!(dp.settings(), want);
    assert_eq!(v6_source_prefix(dp.settings().flags), Some(56));
    let info = MapData::from_pin(&pin).unwrap().info().unwrap();
    assert_eq!(
        info.value_size() as usize,
        size_of::<Settings>(),
        "the pin is this release's map"
    );
    drop(dp);
    // A second load adopts it as it is.
    let dp = Dataplane::load(&MapSizes::default(), Some(w.pin_dir.clone())).unwrap();
    assert_eq!(dp.settings(), want);
}

/// `PS_PROTOCOLS` pinned by the earlier release (4 words, one set of protocols for both
/// families): the load replaces it by this release's (IPv4's words, then IPv6's), so
/// that IPv6's are not read past the end of the old map (a miss: never a probe).
#[test]
fn protocols_pinned_by_the_earlier_release_are_replaced() {
    require_kernel!();
    let w = Workdir::new();
    ensure_pin_dir(&w.pin_dir).unwrap();
    drop(Dataplane::load(&MapSizes::default(), Some(w.pin_dir.clone())).unwrap());
    let pin = w.pin_dir.join(PROTOCOLS);
    std::fs::remove_file(&pin).unwrap();
    let word = u64::MAX.to_ne_bytes();
    let keys: Vec<[u8; 4]> = (0..4u32).map(u32::to_ne_bytes).collect();
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &word[..])).collect();
    pin_map(&pin, BPF_MAP_TYPE_ARRAY, (4, 8, 4), &entries);
    let mut dp = Dataplane::load(&MapSizes::default(), Some(w.pin_dir.clone()))
        .expect("this release loads over the earlier pins");
    let info = MapData::from_pin(&pin).unwrap().info().unwrap();
    assert_eq!(
        info.max_entries(),
        PROTOCOL_WORDS,
        "the pin is this release's map"
    );
    dp.write_protocols(&[u64::MAX; PROTOCOL_WORDS as usize])
        .expect("every word written");
    drop(dp);
    // A second load adopts it as it is.
    drop(Dataplane::load(&MapSizes::default(), Some(w.pin_dir.clone())).unwrap());
    let info = MapData::from_pin(&pin).unwrap().info().unwrap();
    assert_eq!(info.max_entries(), PROTOCOL_WORDS);
}

/// A filter pinned by the earlier release (an array without `BPF_F_MMAPABLE`): `status`
/// reads it as it is; the load replaces it by this release's, the bans stay dropped and
/// new ones go in.
#[test]
fn a_ban_filter_pinned_by_the_earlier_release_is_replaced_keeping_every_ban() {
    use std::{net::IpAddr, os::fd::AsFd as _};

    use aya::maps::{Array, Map};
    use ipnet::IpNet;
    use portsentry_common::maps::{BAN_FILTER, BAN_FILTER_WORDS, BanEntry, BanOrigin};
    use portsentry_tests::{
        fixture::default_ports,
        frames::{Frame, flags::ACK},
        netns::Netns,
        probe_asserts::{V4_DST, ip},
        testrun::{self, XDP_DROP, XDP_PASS},
    };
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    require_kernel!();
    let w = Workdir::new();
    ensure_pin_dir(&w.pin_dir).unwrap();
    let entry = BanEntry {
        since_ns: portsentry_user::clock::monotonic_ns(),
        origin: BanOrigin::Scan as u8,
        ..Default::default()
    };
    let (kept, added): (IpAddr, IpAddr) = (ip("198.51.100.7"), ip("198.51.100.8"));
    let mut dp = Dataplane::load(&MapSizes::default(), Some(w.pin_dir.clone())).unwrap();
    dp.insert_ban(&IpNet::from(kept), &entry).unwrap();
    drop(dp);
    // The same words, in a map as the earlier release made it.
    let pin = w.pin_dir.join(BAN_FILTER);
    let words: Vec<(u32, u64)> = {
        let a: Array<_, u64> =
            Array::try_from(Map::Array(MapData::from_pin(&pin).unwrap())).unwrap();
        (0..BAN_FILTER_WORDS)
            .map(|i| (i, a.get(&i, 0).unwrap()))
            .filter(|(_, v)| *v != 0)
            .collect()
    };
    assert!(!words.is_empty());
    std::fs::remove_file(&pin).unwrap();
    let entries: Vec<([u8; 4], [u8; 8])> = words
        .iter()
        .map(|(i, v)| (i.to_ne_bytes(), v.to_ne_bytes()))
        .collect();
    let refs: Vec<(&[u8], &[u8])> = entries.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    pin_map(&pin, BPF_MAP_TYPE_ARRAY, (4, 8, BAN_FILTER_WORDS), &refs);
    let bits = |dp: &Dataplane| dp.ban_filter_bits().unwrap();
    let set: u64 = words.iter().map(|(_, v)| u64::from(v.count_ones())).sum();
    assert_eq!(
        bits(&Dataplane::inspect_pinned(&w.pin_dir).unwrap()),
        set,
        "status reads it"
    );

    // The earlier map, as the old program still attached holds it until the attach.
    let old_filter = MapData::from_pin(&pin).unwrap();
    let mut dp = Dataplane::load(&MapSizes::default(), Some(w.pin_dir.clone()))
        .expect("this release loads over the earlier filter");
    let info = MapData::from_pin(&pin).unwrap().info().unwrap();
    assert_ne!(
        info.map_flags() & BPF_F_MMAPABLE,
        0,
        "the pin is this release's map"
    );
    assert!(
        dp.resized_maps().iter().any(|l| l.starts_with(BAN_FILTER)),
        "{:?}",
        dp.resized_maps()
    );
    dp.insert_ban(&IpNet::from(added), &entry).unwrap();
    let (tcp, udp) = default_ports();
    dp.write_ports(&tcp, &udp).unwrap();
    let ns = Netns::new("upgrade");
    let fd = dp.program_fd().unwrap().try_clone_to_owned().unwrap();
    let verdict = |src: IpAddr| {
        let ack = Frame::tcp(src, ip(V4_DST), 443, ACK).build();
        ns.enter(|| testrun::run(fd.as_fd(), &ack, 1))
            .unwrap()
            .retval
    };
    assert_eq!(verdict(kept), XDP_DROP, "the ban from before");
    assert_eq!(verdict(added), XDP_DROP, "a ban made after");
    assert_eq!(verdict(ip("198.51.100.9")), XDP_PASS);

    // A ban the old program made after the load read the bans, before the attach: its
    // entry in the shared PS_BANS, its bits in the old filter only. The carry-over after
    // the attach moves its bits.
    let late = ip("198.51.100.10");
    let key = portsentry_user::kernel::addr::to_key(late);
    let mut bans: aya::maps::HashMap<_, portsentry_common::Addr, BanEntry> =
        aya::maps::HashMap::try_from(Map::HashMap(
            MapData::from_pin(w.pin_dir.join(portsentry_common::maps::BANS)).unwrap(),
        ))
        .unwrap();
    bans.insert(key, entry, 0).unwrap();
    let place = portsentry_common::maps::ban_filter_place(&bytemuck::cast(key));
    let mut old: Array<_, u64> = Array::try_from(Map::Array(old_filter)).unwrap();
    let word = old.get(&place.word(), 0).unwrap();
    old.set(place.word(), word | place.mask, 0).unwrap();
    assert_eq!(
        verdict(late),
        XDP_PASS,
        "its bits are in the old filter only"
    );
    dp.carry_over_late_bans().unwrap();
    assert_eq!(verdict(late), XDP_DROP, "its bits carried over");
}
