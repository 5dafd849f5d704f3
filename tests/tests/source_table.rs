//! `PS_SOURCES`, the per-source table, across loads: an earlier release's LRU hash
//! pinned under it is replaced by the table with every record carried over (and
//! `status` reads it before that); a MAX_TRACKED_SOURCES changed at a load keeps every
//! record; a forgotten record is gone; the program gives a new source the way of its
//! set seen longest ago (or a free one).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, MapType};
use portsentry_common::{
    Counter,
    maps::{SOURCES, SourceStats},
    sources::source_entries,
};
use portsentry_tests::{
    daemon::Workdir,
    fixture::Fixture,
    frames::{Frame, flags::SYN},
    old_pins::{BPF_MAP_TYPE_LRU_HASH, pin_map},
    probe_asserts::{V4_DST, ip},
    require_kernel,
    testrun::XDP_PASS,
};
use portsentry_user::kernel::{Dataplane, MapSizes, addr, ensure_pin_dir};

/// Ten sources (IPv4 and IPv6) and a record each.
fn records() -> Vec<(IpAddr, SourceStats)> {
    (0..10u32)
        .map(|i| {
            let ip = if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i))
            } else {
                IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i)))
            };
            let stats = SourceStats {
                first_ns: 1_000 + u64::from(i),
                last_ns: 2_000_000 + u64::from(i),
                hits: i + 1,
                distinct_ports: i,
                last_port: 20 + i as u16,
                port_filter: [u64::from(i), 1, 2, 3],
                ..SourceStats::default()
            };
            (ip, stats)
        })
        .collect()
}

fn sizes(sources: u32) -> MapSizes {
    MapSizes {
        sources,
        ..MapSizes::default()
    }
}

fn pinned_table(w: &Workdir) -> (MapType, u32) {
    let info = MapData::from_pin(w.pin_dir.join(SOURCES))
        .unwrap()
        .info()
        .unwrap();
    (info.map_type().unwrap(), info.max_entries())
}

fn assert_all_there(dp: &Dataplane, records: &[(IpAddr, SourceStats)]) {
    for (ip, stats) in records {
        assert_eq!(dp.source(*ip).unwrap(), Some(*stats), "{ip}");
    }
    assert_eq!(dp.count_sources().unwrap(), records.len() as u64);
    let mut all = dp.sources().unwrap();
    all.sort_by_key(|(_, s)| s.hits);
    assert_eq!(all, records);
}

#[test]
fn an_earlier_releases_lru_records_are_carried_into_the_table() {
    require_kernel!();
    let w = Workdir::new();
    ensure_pin_dir(&w.pin_dir).unwrap();
    drop(Dataplane::load(&sizes(1024), Some(w.pin_dir.clone())).unwrap());
    // PS_SOURCES as the earlier release pinned it.
    let pin = w.pin_dir.join(SOURCES);
    std::fs::remove_file(&pin).unwrap();
    let records = records();
    let bytes: Vec<(portsentry_common::Addr, SourceStats)> = records
        .iter()
        .map(|(ip, s)| (addr::to_key(*ip), *s))
        .collect();
    let entries: Vec<(&[u8], &[u8])> = bytes
        .iter()
        .map(|(k, v)| (&k[..], bytemuck::bytes_of(v)))
        .collect();
    pin_map(&pin, BPF_MAP_TYPE_LRU_HASH, (16, 64, 1024), &entries);

    // `status` reads it while the earlier daemon still runs on it.
    let seen = Dataplane::inspect_pinned(&w.pin_dir).expect("status over the earlier pins");
    assert_all_there(&seen, &records);
    drop(seen);

    let dp = Dataplane::load(&sizes(1024), Some(w.pin_dir.clone()))
        .expect("this release loads over the earlier pins");
    assert_eq!(pinned_table(&w), (MapType::Array, source_entries(1024)));
    assert_all_there(&dp, &records);
    drop(dp);
    // A second load adopts the table as it is.
    let dp = Dataplane::load(&sizes(1024), Some(w.pin_dir.clone())).unwrap();
    assert_all_there(&dp, &records);
}

#[test]
fn a_new_max_tracked_sources_keeps_every_record_and_forget_frees_one() {
    require_kernel!();
    let w = Workdir::new();
    ensure_pin_dir(&w.pin_dir).unwrap();
    let records = records();
    let mut dp = Dataplane::load(&sizes(1024), Some(w.pin_dir.clone())).unwrap();
    for (ip, stats) in &records {
        dp.put_source(*ip, stats).unwrap();
    }
    assert_all_there(&dp, &records);
    drop(dp);

    for size in [4096, 2048] {
        let mut dp = Dataplane::load(&sizes(size), Some(w.pin_dir.clone())).unwrap();
        assert_eq!(pinned_table(&w), (MapType::Array, source_entries(size)));
        assert_all_there(&dp, &records);
        if size == 2048 {
            // `status`'s read-only view forgets nothing.
            let mut seen = Dataplane::inspect_pinned(&w.pin_dir).unwrap();
            seen.forget_source(records[0].0).unwrap();
            drop(seen);
            assert_all_there(&dp, &records);
            let (gone, kept) = records.split_at(1);
            dp.forget_source(gone[0].0).unwrap();
            assert_eq!(dp.source(gone[0].0).unwrap(), None);
            assert_all_there(&dp, kept);
        }
    }
}

/// Sources whose records fall into the same set as the first: `n` of them.
fn same_set(dp: &Dataplane, n: usize) -> Vec<IpAddr> {
    let ip = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    let set = dp.source_set(ip(0)).expect("a table of sets");
    let found: Vec<IpAddr> = (0..1u32 << 24)
        .map(ip)
        .filter(|a| dp.source_set(*a) == Some(set))
        .take(n)
        .collect();
    assert_eq!(found.len(), n, "{n} sources of set {set}");
    found
}

#[test]
fn a_new_source_takes_the_way_seen_longest_ago() {
    require_kernel!();
    let mut fx = Fixture::new();
    let s = same_set(&fx.dp, 5);
    let dst = ip(V4_DST);
    // Ages are kept to about two milliseconds of the program's clock, which moves once
    // per kernel tick (4 ms at HZ=250, 10 ms at HZ=100): probes far enough apart.
    let probe = |fx: &mut Fixture, src: IpAddr| {
        std::thread::sleep(std::time::Duration::from_millis(25));
        fx.expect(
            &Frame::tcp(src, dst, 23, SYN).build(),
            XDP_PASS,
            Counter::PassProbe,
        );
    };
    for src in &s[..3] {
        probe(&mut fx, *src);
    }
    // The first seen again: the second is now the oldest.
    probe(&mut fx, s[0]);
    assert_eq!(
        (fx.hits(s[0]), fx.hits(s[1]), fx.hits(s[2])),
        (2, 1, 1),
        "three ways, three sources"
    );
    probe(&mut fx, s[3]);
    assert_eq!(fx.dp.source(s[1]).unwrap(), None, "the oldest gave its way");
    assert_eq!((fx.hits(s[0]), fx.hits(s[2]), fx.hits(s[3])), (2, 1, 1));
    probe(&mut fx, s[4]);
    assert_eq!(fx.dp.source(s[2]).unwrap(), None);
    assert_eq!((fx.hits(s[0]), fx.hits(s[3]), fx.hits(s[4])), (2, 1, 1));
    // A forgotten way is the first taken.
    fx.dp.forget_source(s[0]).unwrap();
    probe(&mut fx, s[1]);
    assert_eq!((fx.hits(s[1]), fx.hits(s[3]), fx.hits(s[4])), (1, 1, 1));
    assert_eq!(fx.dp.count_sources().unwrap(), 3);
}
