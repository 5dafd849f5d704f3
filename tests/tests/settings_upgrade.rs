//! Upgrading over pins of the release whose `PS_SETTINGS` value was 24 bytes (before the
//! Threshold Random Walk's steps): the load replaces the pinned map by one of this
//! release's shape, its bytes carried over (cookie secret, flags, the IPv6 source
//! prefix), the walk off.

use aya::maps::MapData;
use portsentry_common::maps::{
    SETTING_V6_PREFIX_SHIFT, SETTING_VERIFY, SETTINGS, Settings, v6_source_prefix,
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
