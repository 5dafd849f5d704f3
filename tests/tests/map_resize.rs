//! Bans restored in bulk and maps resized, end to end: a journal of thousands of bans
//! restored after a reboot (batched map writes, and the per-element path the kernel
//! falls back to) puts every one in the kernel's map and the program drops the banned
//! scanner; a MAX_BANS / MAX_TRACKED_SOURCES changed in the configuration resizes the
//! pinned maps at the next start with every ban carried over, in the same pinned link;
//! a MAX_BANS below the bans in force, or with no room beyond them, is refused at its
//! line. A restart of the same
//! build keeps the program it pinned (no second verification) unless a map it uses was
//! replaced or another build pinned it.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, TcpListener},
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData};
use ipnet::IpNet;
use portsentry_common::{
    Addr,
    ban_tags::{BanTags, ban_tag_place, ban_tag_shift_of},
    maps::{BanEntry, Settings},
    sources::source_entries,
};
use portsentry_tests::{
    bpf_link::pinned_link,
    daemon::{Daemon, Workdir, binary, wait_until},
    netns::TestNet,
    require_kernel,
    scenario::{self, reaches, start},
};
use portsentry_user::kernel::addr;

/// Bans on record in the bulk tests (a hash map's batch spans several chunks).
const MANY: u32 = 40_000;

fn filler(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x6440_0000u32 + i))
}

/// Writes a journal holding a scan ban of each of `ips`.
fn write_journal(wd: &Workdir, ips: impl Iterator<Item = IpAddr>) {
    scenario::write_journal(&wd.path("state"), ips.map(IpNet::from));
}

/// The pinned `PS_BANS`, read one key at a time with aya (not through the daemon's
/// batched reads): its keys and its size.
fn pinned_bans(wd: &Workdir) -> (HashSet<Addr>, u32) {
    let data = MapData::from_pin(wd.pin_dir.join("PS_BANS")).expect("PS_BANS pinned");
    let size = data.info().unwrap().max_entries();
    let map: HashMap<MapData, Addr, BanEntry> =
        HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    (map.keys().map(Result::unwrap).collect(), size)
}

fn pinned_size(wd: &Workdir, name: &str) -> u32 {
    MapData::from_pin(wd.pin_dir.join(name))
        .unwrap_or_else(|e| panic!("{name} pinned: {e}"))
        .info()
        .unwrap()
        .max_entries()
}

/// True when the pinned `PS_BAN_TAGS` holds the IPv4 `ip`'s tag in the bucket the pinned
/// settings send the program to.
fn tagged_in_pins(wd: &Workdir, ip: Ipv4Addr) -> bool {
    let open = |name: &str| Map::Array(MapData::from_pin(wd.pin_dir.join(name)).unwrap());
    let tags: Array<MapData, BanTags> = Array::try_from(open("PS_BAN_TAGS")).unwrap();
    let settings: Array<MapData, Settings> = Array::try_from(open("PS_SETTINGS")).unwrap();
    let shift = ban_tag_shift_of(settings.get(&0, 0).unwrap().flags);
    let place = ban_tag_place(u32::from_ne_bytes(ip.octets()), shift);
    tags.get(&place.bucket, 0)
        .unwrap()
        .until_of(place.tag, shift)
        != 0
}

fn assert_all_in_kernel(wd: &Workdir, ips: &[IpAddr]) {
    let (keys, _) = pinned_bans(wd);
    let missing: Vec<&IpAddr> = ips
        .iter()
        .filter(|ip| !keys.contains(&addr::to_key(**ip)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} bans not in PS_BANS, e.g. {:?}",
        missing.len(),
        ips.len(),
        &missing[..missing.len().min(5)]
    );
}

/// A reboot's restore of `MANY` bans (plus the scanner's) with `env` for the daemon:
/// every ban is in the kernel's map and the scanner is dropped.
fn restore_after_reboot(env: &[(&str, &str)]) {
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let conf = wd.config(&net.server_if, &format!("MAX_BANS=\"{}\"\n", MANY + 64));
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let scanner = net.attacker_v4[0];
    let bystander = net.attacker_v4[1];
    let mut ips: Vec<IpAddr> = (0..MANY).map(filler).collect();
    ips.push(scanner);
    write_journal(&wd, ips.iter().copied());
    assert!(!wd.pin_dir.exists(), "no pins: a reboot");
    let d = Daemon::start_env(&net.server, &["run", "-c", conf.to_str().unwrap()], env);
    assert!(d.has_line(&format!("{} bans in force", ips.len())));
    let one_at_a_time = d.has_line("one element at a time");
    assert_eq!(
        one_at_a_time,
        !env.is_empty(),
        "the path taken is the one asked for:\n{}",
        d.lines().join("\n")
    );
    assert_all_in_kernel(&wd, &ips);
    assert!(!reaches(&net, scanner), "the banned scanner got through");
    assert!(reaches(&net, bystander), "an unbanned host was dropped");
    assert!(d.stop().success());
    let (ok, out, err) = wd.cli(&["unload"]);
    assert!(ok, "unload: {out}{err}");
}

#[test]
fn thousands_of_bans_restored_in_batches_are_all_in_the_kernel() {
    require_kernel!();
    restore_after_reboot(&[]);
}

#[test]
fn thousands_of_bans_restored_one_at_a_time_are_all_in_the_kernel() {
    require_kernel!();
    restore_after_reboot(&[("PORTSENTRY_NO_MAP_BATCH", "1")]);
}

#[test]
fn a_bigger_max_bans_at_restart_keeps_every_ban_in_the_same_link() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let scanner = net.attacker_v4[0];
    let IpAddr::V4(scanner_v4) = scanner else {
        unreachable!("an IPv4 attacker")
    };
    let bystander = net.attacker_v4[1];
    let mut ips: Vec<IpAddr> = (0..40).map(filler).collect();
    ips.push(scanner);
    write_journal(&wd, ips.iter().copied());
    wd.config(
        &net.server_if,
        "MAX_BANS=\"64\"\nMAX_TRACKED_SOURCES=\"1024\"\n",
    );
    let d = start(&net, &wd);
    assert_eq!(pinned_size(&wd, "PS_BANS"), 64);
    assert_eq!(pinned_size(&wd, "PS_SOURCES"), source_entries(1024));
    assert_eq!(pinned_size(&wd, "PS_BAN_CACHE"), 1 << 17);
    assert_eq!(pinned_size(&wd, "PS_BAN_TAGS"), 1 << 16);
    assert!(tagged_in_pins(&wd, scanner_v4));
    assert!(!reaches(&net, scanner));
    let link_pin = wd.pin_dir.join(format!("link-{}", net.server_if));
    let before = pinned_link(&link_pin);
    assert!(d.stop().success());

    // Bigger maps at the next start: no unload.
    wd.config(
        &net.server_if,
        "MAX_BANS=\"1048576\"\nMAX_TRACKED_SOURCES=\"2048\"\n",
    );
    let d = start(&net, &wd);
    assert!(
        d.has_line("PS_BANS resized from 64 to 1048576 entries"),
        "{}",
        d.lines().join("\n")
    );
    assert!(
        d.has_line("PS_SOURCES resized from 1026 to 2049 sources tracked"),
        "{}",
        d.lines().join("\n")
    );
    // The ban cache grows with MAX_BANS, filled from the bans.
    assert!(
        d.has_line("PS_BAN_CACHE resized from 131072 to 524288 sets"),
        "{}",
        d.lines().join("\n")
    );
    assert_eq!(pinned_size(&wd, "PS_BANS"), 1 << 20);
    assert_eq!(pinned_size(&wd, "PS_BAN_CACHE"), 1 << 19);
    // The tags, refilled at the load, in the buckets the new settings give.
    assert!(tagged_in_pins(&wd, scanner_v4));
    assert_eq!(pinned_size(&wd, "PS_SOURCES"), source_entries(2048));
    assert_all_in_kernel(&wd, &ips);
    assert!(!reaches(&net, scanner), "the scanner's ban was dropped");
    assert!(reaches(&net, bystander));
    let after = pinned_link(&link_pin);
    assert_eq!(
        after.id, before.id,
        "the program was replaced in the same link"
    );
    assert_ne!(
        after.program_id, before.program_id,
        "the new program is in it"
    );
    let replaced: Vec<String> = std::fs::read_dir(&wd.pin_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("_replaced_"))
        .collect();
    assert!(
        replaced.is_empty(),
        "the old maps' pins released: {replaced:?}"
    );
    assert!(d.stop().success());

    // Below the bans in force: refused at the line that sets it, nothing changed.
    let conf = wd.config(&net.server_if, "MAX_BANS=\"16\"\n");
    let line = max_bans_line(&conf);
    let err = refused_start(&net, &conf);
    assert!(
        err.contains(&format!("{}:{line}:", conf.display()))
            && err.contains("MAX_BANS")
            && err.contains(&ips.len().to_string()),
        "{err}"
    );
    assert_eq!(pinned_size(&wd, "PS_BANS"), 1 << 20);
    assert_eq!(
        pinned_size(&wd, "PS_BAN_CACHE"),
        1 << 19,
        "nothing half-applied"
    );
    assert_all_in_kernel(&wd, &ips);
    assert!(!reaches(&net, scanner), "the ban stays in force");

    // Exactly the bans in force: refused too, for the map would refuse every ban after
    // (and those the start itself adds); the size it names keeps room.
    let conf = wd.config(&net.server_if, &format!("MAX_BANS=\"{}\"\n", ips.len()));
    let err = refused_start(&net, &conf);
    let needed: u32 = err
        .split("raise MAX_BANS to at least ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size named: {err}"));
    assert!(needed > ips.len() as u32, "{err}");
    assert_eq!(pinned_size(&wd, "PS_BANS"), 1 << 20, "nothing half-applied");
    // That size: every ban carried over, and a new one fits.
    wd.config(&net.server_if, &format!("MAX_BANS=\"{needed}\"\n"));
    let d = start(&net, &wd);
    assert_eq!(pinned_size(&wd, "PS_BANS"), needed);
    assert_all_in_kernel(&wd, &ips);
    assert!(!reaches(&net, scanner), "the ban stays in force");
    let (ok, out, err) = wd.cli(&["ban", &bystander.to_string()]);
    assert!(ok, "a ban after the shrink: {out}{err}");
    assert!(!reaches(&net, bystander));
    assert!(d.stop().success());
    let (ok, out, err) = wd.cli(&["unload"]);
    assert!(ok, "unload: {out}{err}");
}

/// More bans on record than MAX_BANS holds, restored after a reboot (no pins): the start
/// stops at the line of MAX_BANS, saying the map is full; with a MAX_BANS that holds them
/// every ban is restored (the journal kept them all).
#[test]
fn more_bans_on_record_than_max_bans_stop_the_start_at_its_line() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let ips: Vec<IpAddr> = (0..40).map(filler).collect();
    write_journal(&wd, ips.iter().copied());
    let conf = wd.config(&net.server_if, "MAX_BANS=\"16\"\n");
    let line = max_bans_line(&conf);
    let err = refused_start(&net, &conf);
    assert!(
        err.contains(&format!(
            "{}:{line}: MAX_BANS is 16 and PS_BANS is full",
            conf.display()
        )) && err.contains("raise MAX_BANS"),
        "{err}"
    );
    wd.config(&net.server_if, "MAX_BANS=\"64\"\n");
    let d = start(&net, &wd);
    assert_all_in_kernel(&wd, &ips);
    assert!(d.stop().success());
    let (ok, out, err) = wd.cli(&["unload"]);
    assert!(ok, "unload: {out}{err}");
}

/// The line of `conf` that sets MAX_BANS.
fn max_bans_line(conf: &std::path::Path) -> usize {
    std::fs::read_to_string(conf)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("MAX_BANS="))
        .unwrap()
        + 1
}

/// `portsentry run -c CONF` in the server's namespace, expected to refuse to start: its
/// standard error. A daemon that starts instead is stopped and fails the test.
fn refused_start(net: &TestNet, conf: &std::path::Path) -> String {
    use std::io::{Read as _, Seek as _};
    // Into a file, not a pipe no one reads until the exit (a full pipe would stall it).
    let mut stderr = tempfile::tempfile().unwrap();
    let mut child = net
        .server
        .command(binary().to_str().unwrap())
        .args(["run", "-c", conf.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    stderr.rewind().unwrap();
    stderr.read_to_string(&mut err).unwrap();
    assert!(
        exited && !status.success(),
        "the start was not refused:\n{err}"
    );
    err
}

/// The program pins in the pin directory (`prog-BUILD`).
fn program_pins(wd: &Workdir) -> Vec<String> {
    let mut pins: Vec<String> = std::fs::read_dir(&wd.pin_dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("prog-"))
                .collect()
        })
        .unwrap_or_default();
    pins.sort();
    pins
}

const KEPT: &str = "is kept (not verified again)";

#[test]
fn a_restart_of_the_same_build_keeps_its_verified_program() {
    require_kernel!();
    let net = TestNet::new(1);
    let wd = Workdir::new();
    let _svc = net
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").unwrap());
    let scanner = net.attacker_v4[0];
    let bystander = net.attacker_v4[1];
    write_journal(&wd, [scanner].into_iter());
    wd.config(&net.server_if, "");
    let link_pin = wd.pin_dir.join(format!("link-{}", net.server_if));

    // A first start loads, verifies and pins the program.
    let d = start(&net, &wd);
    assert!(!d.has_line(KEPT), "{}", d.lines().join("\n"));
    let pins = program_pins(&wd);
    assert_eq!(pins.len(), 1, "one program pin: {pins:?}");
    let first = pinned_link(&link_pin);
    assert!(d.stop().success());

    // The same build again: the pinned program, in the same link.
    let d = start(&net, &wd);
    assert!(d.has_line(KEPT), "{}", d.lines().join("\n"));
    let kept = pinned_link(&link_pin);
    assert_eq!(kept.id, first.id, "the same link");
    assert_eq!(kept.program_id, first.program_id, "the same program");
    assert!(!reaches(&net, scanner), "the ban holds");
    assert!(reaches(&net, bystander), "an unbanned host was dropped");
    assert!(d.stop().success());

    // A map the program uses replaced behind its back (here: its pin removed, so the
    // next start creates it): the pinned program would use the old one, so the program
    // is loaded again and its pin replaced.
    std::fs::remove_file(wd.pin_dir.join("PS_COUNTERS")).unwrap();
    let d = start(&net, &wd);
    assert!(!d.has_line(KEPT), "{}", d.lines().join("\n"));
    let reloaded = pinned_link(&link_pin);
    assert_eq!(reloaded.id, first.id, "the same link");
    assert_ne!(reloaded.program_id, first.program_id, "a new program");
    assert_eq!(program_pins(&wd), pins, "one pin, of this build");
    assert!(!reaches(&net, scanner), "the ban holds");
    assert!(d.stop().success());

    // Another build's pin (an upgrade): loaded again, the old pin replaced.
    std::fs::rename(
        wd.pin_dir.join(&pins[0]),
        wd.pin_dir.join("prog-0000000000000001"),
    )
    .unwrap();
    let d = start(&net, &wd);
    assert!(!d.has_line(KEPT), "{}", d.lines().join("\n"));
    assert_ne!(pinned_link(&link_pin).program_id, reloaded.program_id);
    assert_eq!(program_pins(&wd), pins, "the other build's pin removed");
    assert!(!reaches(&net, scanner), "the ban holds");
    assert!(d.stop().success());

    // Something else pinned under this build's name (here a map): loaded again, and the
    // pin replaced by the program.
    std::fs::remove_file(wd.pin_dir.join(&pins[0])).unwrap();
    MapData::from_pin(wd.pin_dir.join("PS_COUNTERS"))
        .unwrap()
        .pin(wd.pin_dir.join(&pins[0]))
        .unwrap();
    let d = start(&net, &wd);
    assert!(!d.has_line(KEPT), "{}", d.lines().join("\n"));
    assert!(!reaches(&net, scanner), "the ban holds");
    assert!(d.stop().success());
    let d = start(&net, &wd);
    assert!(d.has_line(KEPT), "the pin is a program again");
    assert!(d.stop().success());

    let (ok, out, err) = wd.cli(&["unload"]);
    assert!(ok, "unload: {out}{err}");
    let maps = format!("removed {} pinned maps", portsentry_common::maps::ALL.len());
    assert!(out.contains(&maps), "{out}");
    assert!(!wd.pin_dir.exists(), "unload leaves nothing pinned");
}
