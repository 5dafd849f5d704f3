use std::{
    sync::mpsc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use portsentry_common::{ScanType, maps::BanOrigin};

use super::{
    codec::{FRAME, NET},
    *,
};
use crate::{
    bans::Rec,
    kinds::{ModeToken, Protocol},
};

/// I/O failures a test injects into a journal's writer and compaction
/// (`Inner::faults`): the seam through which a full disk or a failing directory fsync
/// is made to happen on demand.
#[derive(Default)]
pub(super) struct Faults(Mutex<Plan>);

#[derive(Default)]
pub(super) struct Plan {
    /// This many of the coming writes fail (ENOSPC), each once `partial` bytes of its
    /// batch reached the file.
    writes: u32,
    partial: usize,
    /// This many of the coming truncations fail (EIO).
    truncates: u32,
    /// This many of the coming directory fsyncs fail (EIO).
    dir_syncs: u32,
    /// Runs once, after a write failed and before its batch is put back for the next
    /// try.
    after_failed_write: Option<Box<dyn FnOnce() + Send>>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl Faults {
    fn plan(&self, f: impl FnOnce(&mut Plan)) {
        f(&mut lock(&self.0));
    }

    /// `Some(bytes written first)` when this write is to fail.
    pub(super) fn write(&self) -> Option<usize> {
        let mut p = lock(&self.0);
        (p.writes > 0).then(|| {
            p.writes -= 1;
            p.partial
        })
    }

    pub(super) fn truncate(&self) -> io::Result<()> {
        let mut p = lock(&self.0);
        if p.truncates > 0 {
            p.truncates -= 1;
            return Err(eio());
        }
        Ok(())
    }

    pub(super) fn sync_dir(&self) -> io::Result<()> {
        let mut p = lock(&self.0);
        if p.dir_syncs > 0 {
            p.dir_syncs -= 1;
            return Err(eio());
        }
        Ok(())
    }

    pub(super) fn failed_write(&self) {
        let hook = lock(&self.0).after_failed_write.take();
        if let Some(hook) = hook {
            hook();
        }
    }
}

fn ban(net: &str, count: u32) -> Ban {
    Ban {
        net: net.parse().unwrap(),
        origin: BanOrigin::Scan,
        since: UNIX_EPOCH + Duration::from_millis(1_795_625_334_123),
        expires: Some(UNIX_EPOCH + Duration::from_millis(1_900_000_000_456)),
        port: 22,
        proto: Some(Protocol::Tcp),
        scan_type: Some(ScanType::TcpSyn),
        mode: Some(ModeToken::Stcp),
        count,
        escalated: None,
    }
}

fn manual(net: &str) -> Ban {
    Ban {
        origin: BanOrigin::Manual,
        expires: None,
        port: 0,
        proto: None,
        scan_type: None,
        mode: None,
        ..ban(net, 1)
    }
}

/// A journal's bytes: three bans, one lifted, a name, an escalation.
fn sample() -> Vec<u8> {
    let mut out = HEADER.to_vec();
    encode_put(&mut out, &ban("192.0.2.7/32", 1));
    encode_put(&mut out, &manual("2001:db8::/64"));
    encode_name(
        &mut out,
        &"192.0.2.7/32".parse().unwrap(),
        "scanner.example",
    );
    encode_put(&mut out, &ban("198.51.100.9/32", 3));
    encode_lift(&mut out, &"198.51.100.9/32".parse().unwrap());
    encode_put(
        &mut out,
        &Ban {
            escalated: Some(5),
            ..ban("203.0.113.0/24", 1)
        },
    );
    out
}

fn replay_all(bytes: &[u8]) -> (Vec<Record>, u64, Option<Damage>) {
    let mut recs = Vec::new();
    let (intact, damage) = replay(&mut &bytes[..], |r| recs.push(r)).unwrap();
    (recs, intact, damage)
}

fn rebuild(bytes: &[u8]) -> BanStore {
    let mut r = Rebuild::default();
    replay(&mut &bytes[..], |rec| r.add(rec)).unwrap();
    r.finish()
}

fn nets(s: &BanStore) -> Vec<String> {
    s.iter().map(|b| b.net.to_string()).collect()
}

#[test]
fn records_round_trip() {
    let bytes = sample();
    let (recs, intact, damage) = replay_all(&bytes);
    assert_eq!(damage, None);
    assert_eq!(intact, bytes.len() as u64);
    assert_eq!(recs.len(), 6);
    assert_eq!(
        bytes.len(),
        HEADER.len() + 4 * PUT_SIZE + (FRAME + NET) + (FRAME + NET + 15)
    );
    let Record::Put(net, rec) = &recs[0] else {
        panic!("{:?}", recs[0]);
    };
    assert_eq!(rec.ban(*net).unwrap(), ban("192.0.2.7/32", 1));
    let s = rebuild(&bytes);
    assert_eq!(
        nets(&s),
        ["192.0.2.7/32", "203.0.113.0/24", "2001:db8::/64"]
    );
    assert_eq!(
        s.get(&"2001:db8::/64".parse().unwrap()).unwrap(),
        manual("2001:db8::/64")
    );
    let esc = s.get(&"203.0.113.0/24".parse().unwrap()).unwrap();
    assert_eq!(esc.escalated, Some(5));
    let host = s.get(&"192.0.2.7/32".parse().unwrap()).unwrap();
    assert_eq!(s.name_of(&host), "scanner.example");
    assert_eq!(s.name_of(&esc), "203.0.113.0/24");
    // The lifted ban's count is kept for the next ban's duration.
    assert_eq!(s.times_banned(&"198.51.100.9/32".parse().unwrap()), 3);
    // A compacted journal of the store holds the same.
    let again = rebuild(&encode_store(&s));
    assert_eq!(
        again.iter().collect::<Vec<_>>(),
        s.iter().collect::<Vec<_>>()
    );
    assert_eq!(again.times_banned(&"198.51.100.9/32".parse().unwrap()), 3);
    assert_eq!(again.name_of(&host), "scanner.example");
}

#[test]
fn the_last_word_on_a_network_wins() {
    let mut out = HEADER.to_vec();
    let n: IpNet = "192.0.2.7/32".parse().unwrap();
    encode_put(&mut out, &ban("192.0.2.7/32", 1));
    encode_name(&mut out, &n, "old.example");
    encode_lift(&mut out, &n);
    encode_put(&mut out, &ban("192.0.2.7/32", 2));
    let s = rebuild(&out);
    let b = s.get(&n).unwrap();
    assert_eq!(b.count, 2);
    assert_eq!(
        s.name_of(&b),
        "192.0.2.7",
        "the old ban's name went with it"
    );
    encode_lift(&mut out, &n);
    let s = rebuild(&out);
    assert!(s.is_empty());
    assert_eq!(s.times_banned(&n), 2);
}

/// The undo steps of a lifted ban stay due across a restart until their UNDONE
/// record: a compaction carries them, a later ban of the network is not lifted by
/// them, and a lift torn off the file's end leaves the ban in force with nothing due.
#[test]
fn undo_steps_due_outlive_a_restart_until_they_ran() {
    let n: IpNet = "192.0.2.7/32".parse().unwrap();
    let old = ban("192.0.2.7/32", 1);
    let mut out = HEADER.to_vec();
    encode_put(&mut out, &old);
    encode_undo(&mut out, &old);
    let torn = out.len();
    encode_lift(&mut out, &n);
    let s = rebuild(&out);
    assert_eq!(s.get(&n), None);
    assert_eq!(s.undos(), [old]);
    // The lift cut off (appended with the undo, after it): the ban stands.
    let s = rebuild(&out[..torn]);
    assert_eq!(s.get(&n), Some(old));
    assert!(s.undos().is_empty(), "{:?}", s.undos());
    // The host banned again before the steps ran.
    let new = Ban {
        since: old.since + Duration::from_secs(60),
        ..ban("192.0.2.7/32", 2)
    };
    encode_put(&mut out, &new);
    let s = rebuild(&out);
    assert_eq!((s.get(&n), s.undos()), (Some(new), vec![old]));
    let compacted = encode_store(&s);
    let again = rebuild(&compacted);
    assert_eq!((again.get(&n), again.undos()), (Some(new), vec![old]));
    // A replaced ban's steps (no lift): due, and the ban that replaced it stays.
    let mut replaced = compacted.clone();
    encode_undo(&mut replaced, &new);
    let s = rebuild(&replaced);
    assert_eq!(
        s.get(&n),
        Some(new),
        "the same since: a torn lift, nothing due"
    );
    // Done: nothing due, after a compaction too.
    encode_undone(&mut out, &n, crate::bans::unix_ms(old.since));
    let s = rebuild(&out);
    assert_eq!((s.get(&n), s.undos()), (Some(new), vec![]));
    assert!(rebuild(&encode_store(&s)).undos().is_empty());
    // The records round trip.
    let (recs, _, damage) = replay_all(&out);
    assert_eq!(damage, None);
    assert!(recs.contains(&Record::Undone(n, crate::bans::unix_ms(old.since))));
    assert!(recs.contains(&Record::Undo(n, Rec::of(&old))));
}

/// A scan ban put with its kill commands due keeps them due across a restart and a
/// compaction until its KILLED record (of its own since: an earlier ban's does not
/// count).
#[test]
fn kill_commands_due_outlive_a_restart_until_they_ran() {
    let n: IpNet = "192.0.2.7/32".parse().unwrap();
    let b = ban("192.0.2.7/32", 1);
    let due = Rec {
        flags: Rec::KILLS_DUE,
        ..Rec::of(&b)
    };
    let mut out = HEADER.to_vec();
    encode_put_rec(&mut out, &n, &due);
    let mut s = rebuild(&out);
    assert_eq!(s.record(&n), Some(&due));
    assert_eq!(s.take_kills_due(), [b]);
    assert!(s.take_kills_due().is_empty(), "taken once");
    let mut again = rebuild(&encode_store(&rebuild(&out)));
    assert_eq!(again.take_kills_due(), [b], "a compaction keeps it");
    encode_killed(&mut out, &n, crate::bans::unix_ms(b.since) - 1);
    assert_eq!(rebuild(&out).take_kills_due(), [b], "another ban's");
    encode_killed(&mut out, &n, crate::bans::unix_ms(b.since));
    let mut s = rebuild(&out);
    assert!(s.take_kills_due().is_empty());
    assert_eq!(s.get(&n), Some(b));
    assert!(rebuild(&encode_store(&s)).take_kills_due().is_empty());
    // A flag this release does not know is damage.
    let mut odd = HEADER.to_vec();
    encode_put_rec(&mut odd, &n, &Rec { flags: 2, ..due });
    assert!(matches!(replay_all(&odd).2, Some(Damage::Corrupt { .. })));
}

/// A ban put again over itself (an extended decision, an operator's ban of a host
/// banned already) keeps the name recorded after the first put, as the daemon does.
#[test]
fn a_put_over_a_ban_keeps_its_name() {
    let mut out = HEADER.to_vec();
    let n: IpNet = "192.0.2.7/32".parse().unwrap();
    encode_put(&mut out, &ban("192.0.2.7/32", 1));
    encode_name(&mut out, &n, "scanner.example");
    encode_put(&mut out, &ban("192.0.2.7/32", 1));
    let s = rebuild(&out);
    assert_eq!(s.name_of(&s.get(&n).unwrap()), "scanner.example");
}

/// Cut at every byte: the replay keeps exactly the records wholly before the cut and
/// says where the damage starts.
#[test]
fn a_truncated_journal_keeps_its_intact_prefix() {
    let bytes = sample();
    let (all, _, _) = replay_all(&bytes);
    let mut ends = vec![HEADER.len()];
    {
        let mut at = HEADER.len();
        while at < bytes.len() {
            let len = usize::from(u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]));
            at += FRAME + len;
            ends.push(at);
        }
    }
    for cut in 0..bytes.len() {
        let (recs, intact, damage) = replay_all(&bytes[..cut]);
        let whole = ends.iter().filter(|e| **e <= cut).count();
        let kept = whole.saturating_sub(1);
        assert_eq!(recs, all[..kept], "cut at {cut}");
        if cut == 0 {
            assert_eq!(damage, None, "an empty file is a new journal");
        } else if ends.contains(&cut) {
            assert_eq!(damage, None, "cut at {cut}, a record boundary");
            assert_eq!(intact, cut as u64);
        } else {
            let at = ends
                .iter()
                .rev()
                .find(|e| **e <= cut)
                .map_or(0, |e| *e as u64);
            let at = if cut < HEADER.len() { 0 } else { at };
            assert_eq!(
                damage,
                Some(Damage::Truncated { offset: at }),
                "cut at {cut}"
            );
            assert_eq!(intact, at);
        }
    }
}

/// Flip every bit after the header, one at a time: the damaged record and everything
/// after it are dropped, everything before it kept, and the offset is the record's.
#[test]
fn a_bit_flip_is_caught_by_the_checksum() {
    let bytes = sample();
    let (all, _, _) = replay_all(&bytes);
    let mut starts = Vec::new();
    let mut at = HEADER.len();
    while at < bytes.len() {
        starts.push(at);
        let len = usize::from(u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]));
        at += FRAME + len;
    }
    for byte in HEADER.len()..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[byte] ^= 1 << bit;
            let (recs, intact, damage) = replay_all(&bad);
            let i = starts.iter().rposition(|s| *s <= byte).unwrap();
            assert_eq!(recs, all[..i], "byte {byte} bit {bit}");
            assert_eq!(intact, starts[i] as u64, "byte {byte} bit {bit}");
            let d = damage.unwrap_or_else(|| panic!("byte {byte} bit {bit}: not detected"));
            assert_eq!(d.offset(), starts[i] as u64);
        }
    }
    // A header that is not ours (a crash's zeros, say) is damage at byte 0; one of
    // another version is not damage (below).
    let mut bad = bytes.clone();
    bad[0] = b'X';
    let (recs, intact, damage) = replay_all(&bad);
    assert!(recs.is_empty());
    assert_eq!(intact, 0);
    assert_eq!(damage.map(|d| d.offset()), Some(0));
    let mut newer = bytes.clone();
    newer[HEADER.len() - 1] ^= 1;
    let e = replay(&mut &newer[..], |_| {}).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

#[test]
fn a_record_with_a_valid_checksum_but_bad_fields_is_corrupt() {
    let mut out = HEADER.to_vec();
    encode_put(&mut out, &ban("192.0.2.7/32", 1));
    let good = out.len();
    // Origin 9 does not exist: re-frame the payload with a matching CRC.
    let mut rec = Vec::new();
    encode_put(&mut rec, &ban("192.0.2.8/32", 1));
    let payload_origin = FRAME + NET + 26;
    rec[payload_origin] = 9;
    let crc = crc32fast::hash(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&rec);
    let (recs, intact, damage) = replay_all(&out);
    assert_eq!(recs.len(), 1);
    assert_eq!(intact, good as u64);
    assert_eq!(
        damage,
        Some(Damage::Corrupt {
            offset: good as u64,
            why: "a ban record with an invalid field"
        })
    );
}

#[test]
fn open_recovers_sets_a_damaged_tail_aside_and_appends_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path());
    let mut bytes = sample();
    let intact = bytes.len();
    encode_put(&mut bytes, &ban("192.0.2.99/32", 1));
    bytes.truncate(bytes.len() - 3);
    fs::write(&p, &bytes).unwrap();
    let (j, store, opened) = Journal::open(dir.path()).unwrap();
    assert_eq!(store.len(), 3);
    let (file, damage) = opened.damage.clone().unwrap();
    assert_eq!(file, p);
    assert_eq!(
        damage,
        Damage::Truncated {
            offset: intact as u64
        }
    );
    let report = opened.report().join("\n");
    assert!(
        report.contains(&p.display().to_string()) && report.contains(&format!("byte {intact}")),
        "{report}"
    );
    let copy = dir.path().join("bans.journal.damaged");
    assert_eq!(opened.damaged_copy.as_deref(), Some(copy.as_path()));
    assert_eq!(
        fs::read(&copy).unwrap(),
        &bytes[intact..],
        "the damaged part"
    );
    // Appends after recovery land after intact records, and read back.
    let seq = j.put(&ban("192.0.2.100/32", 1));
    j.wait(seq).unwrap();
    j.close().unwrap();
    let r = read(&p).unwrap().unwrap();
    assert_eq!(r.damage, None);
    assert_eq!(r.store.len(), 4);
    assert!(r.store.contains(&"192.0.2.100/32".parse().unwrap()));
    // Opening a sound journal changes nothing.
    let before = fs::read(&p).unwrap();
    let (j, store, opened) = Journal::open(dir.path()).unwrap();
    j.close().unwrap();
    assert!(opened.report().is_empty());
    assert_eq!(store.len(), 4);
    assert_eq!(fs::read(&p).unwrap(), before);
}

#[test]
fn an_old_state_file_is_migrated_once_and_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = BanStore::new();
    old.insert(ban("192.0.2.7/32", 2));
    old.set_name(&"192.0.2.7/32".parse().unwrap(), "scanner.example");
    old.insert(manual("198.51.100.0/24"));
    old.set_previous("203.0.113.5/32".parse().unwrap(), 4);
    let json = state::to_json(&old);
    fs::write(state::json_path(dir.path()), &json).unwrap();
    assert_eq!(
        load(dir.path()).unwrap().len(),
        2,
        "read only: the old file"
    );
    let (j, store, opened) = Journal::open(dir.path()).unwrap();
    j.close().unwrap();
    assert_eq!(
        store.iter().collect::<Vec<_>>(),
        old.iter().collect::<Vec<_>>()
    );
    let migrated = dir.path().join("bans.json.migrated");
    assert_eq!(opened.migrated.as_deref(), Some(migrated.as_path()));
    assert!(
        opened.report()[0].contains("bans.json.migrated"),
        "{:?}",
        opened.report()
    );
    assert!(!state::json_path(dir.path()).exists());
    assert_eq!(fs::read_to_string(&migrated).unwrap(), json);
    let back = load(dir.path()).unwrap();
    assert_eq!(back.times_banned(&"203.0.113.5/32".parse().unwrap()), 4);
    let b = back.get(&"192.0.2.7/32".parse().unwrap()).unwrap();
    assert_eq!(back.name_of(&b), "scanner.example");
    // The next start finds the journal, and migrates nothing.
    let (j, store, opened) = Journal::open(dir.path()).unwrap();
    j.close().unwrap();
    assert!(opened.migrated.is_none());
    assert_eq!(store.len(), 2);
}

/// An empty journal (made by hand: every journal written holds its header) stands
/// for none: an old state file beside it is migrated, and read by `status` before.
#[test]
fn an_empty_journal_does_not_hide_an_old_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = BanStore::new();
    old.insert(ban("192.0.2.7/32", 2));
    fs::write(state::json_path(dir.path()), state::to_json(&old)).unwrap();
    fs::write(path(dir.path()), "").unwrap();
    assert_eq!(load(dir.path()).unwrap().len(), 1);
    let (j, store, opened) = Journal::open(dir.path()).unwrap();
    j.close().unwrap();
    assert_eq!(store.len(), 1);
    assert!(opened.migrated.is_some());
    assert_eq!(read(&path(dir.path())).unwrap().unwrap().store.len(), 1);
    // With no old file, an empty journal is a fresh one.
    let dir = tempfile::tempdir().unwrap();
    fs::write(path(dir.path()), "").unwrap();
    let (j, store, _) = Journal::open(dir.path()).unwrap();
    j.close().unwrap();
    assert_eq!(store.len(), 0);
    assert_eq!(fs::read(path(dir.path())).unwrap(), HEADER);
}

#[test]
fn a_broken_old_state_file_is_an_error_and_stays() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(state::json_path(dir.path()), "garbage").unwrap();
    let e = Journal::open(dir.path()).err().unwrap();
    assert!(format!("{e:#}").contains("bans.json"), "{e:#}");
    assert!(state::json_path(dir.path()).exists());
    assert!(!path(dir.path()).exists());
}

/// Changes made while a compaction writes its snapshot end up in the new file, in
/// order; the file shrinks to what the bans need.
#[test]
fn compaction_keeps_changes_made_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (j, mut store, _) = Journal::open(dir.path()).unwrap();
    for round in 0..20u32 {
        for i in 0..200u32 {
            let b = ban(&format!("10.{round}.{}.{}/32", i / 250, i % 250), round + 1);
            store.insert(b);
            j.put(&b);
        }
        for i in 0..150u32 {
            let n: IpNet = format!("10.{round}.{}.{}/32", i / 250, i % 250)
                .parse()
                .unwrap();
            store.remove(&n);
            j.lift(&n);
        }
    }
    j.wait(j.last()).unwrap();
    let big = j.bytes();
    assert_eq!(store.len(), 20 * 50);
    let (tx, rx) = std::sync::mpsc::channel();
    j.compact(&store, move |r| {
        tx.send(r.map_err(|e| e.to_string())).unwrap()
    });
    // Changes while it runs.
    let late = ban("192.0.2.1/32", 1);
    store.insert(late);
    j.put(&late);
    let gone: IpNet = "10.0.0.199/32".parse().unwrap();
    store.remove(&gone);
    j.lift(&gone);
    rx.recv().unwrap().unwrap();
    j.wait(j.last()).unwrap();
    // The two changes made meanwhile are in the new file whether they came before the
    // switch (its tail) or after (appended to it).
    let small = j.bytes();
    // The snapshot (1000 bans, the counts of the 3000 lifted) and the two changes
    // made meanwhile, nothing else.
    assert_eq!(
        small,
        (HEADER.len() + 1000 * PUT_SIZE + 3000 * (FRAME + NET + 4) + PUT_SIZE + FRAME + NET) as u64
    );
    assert!(small < big / 2, "{small} of {big}");
    let seq = j.put(&ban("192.0.2.2/32", 1));
    store.insert(ban("192.0.2.2/32", 1));
    j.wait(seq).unwrap();
    j.close().unwrap();
    let r = read(&path(dir.path())).unwrap().unwrap();
    assert_eq!(r.damage, None);
    assert_eq!(
        r.store.iter().collect::<Vec<_>>(),
        store.iter().collect::<Vec<_>>()
    );
    assert_eq!(r.store.times_banned(&gone), 1);
}

/// Many threads appending and waiting at once: every change waited for is on disk, and
/// they share fsyncs (group commit).
#[test]
fn waiters_share_fsyncs_and_see_their_change_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _, _) = Journal::open(dir.path()).unwrap();
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for th in 0..8u32 {
            let j = j.clone();
            s.spawn(move || {
                for i in 0..100u32 {
                    let seq = j.put(&ban(&format!("10.{th}.{}.{}/32", i / 250, i % 250), 1));
                    j.wait(seq).unwrap();
                }
            });
        }
    });
    let took = t.elapsed();
    j.close().unwrap();
    let r = read(&path(dir.path())).unwrap().unwrap();
    assert_eq!(r.store.len(), 800);
    assert!(took < Duration::from_secs(30), "{took:?}");
    let _ = SystemTime::now();
}

/// A write that fails and works at a retry is waited for by `wait_async` (a scan's kill
/// commands): it returns once the change is on disk, not an error at the first failure
/// (the commands would run with a warning that the ban may be lost); one that keeps
/// failing is reported; so is a compaction's failure, which nothing retries by itself.
#[test]
fn a_wait_rides_out_a_write_that_fails_once() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (j, _, _) = Journal::open(dir.path()).unwrap();
    j.0.faults.plan(|p| p.writes = 2);
    let seq = j.put(&ban("192.0.2.7/32", 1));
    rt.block_on(j.wait_async(seq)).unwrap();
    j.0.faults.plan(|p| p.writes = WAIT_TRIES + 2);
    let later = j.put(&ban("192.0.2.8/32", 1));
    let e = rt.block_on(j.wait_async(later)).unwrap_err();
    assert!(format!("{e:#}").contains("No space left"), "{e:#}");
    settle(&j, later);

    // A compaction whose directory fsync fails after its rename: the writer has nothing
    // to retry until the next change, and a wait must not hang on it.
    let mut store = BanStore::new();
    store.insert(ban("192.0.2.7/32", 1));
    store.insert(ban("192.0.2.8/32", 1));
    j.0.faults.plan(|p| p.writes = 1);
    let third = j.put(&ban("192.0.2.9/32", 1));
    store.insert(ban("192.0.2.9/32", 1));
    j.0.faults.plan(|p| p.dir_syncs = 1);
    assert!(j.compact_now(&store).is_err());
    let waited = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), j.wait_async(third)).await
    });
    assert!(waited.is_ok(), "the wait hung");
    // The next change syncs the directory first; its write failing twice is ridden
    // out as any (the compaction's failure does not count against it).
    j.0.faults.plan(|p| p.writes = 2);
    let fourth = j.put(&ban("192.0.2.10/32", 1));
    rt.block_on(j.wait_async(fourth)).unwrap();
    j.close().unwrap();
    let r = read(&path(dir.path())).unwrap().unwrap();
    assert_eq!(r.store.len(), 4);
}

/// The blocking waits: `wait` (its callers hold locks) reports the first failure;
/// `wait_patiently` (the start and the stop) rides it out as `wait_async` does, and
/// reports a write that keeps failing.
#[test]
fn a_patient_wait_rides_out_a_write_that_fails_once() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _, _) = Journal::open(dir.path()).unwrap();
    j.0.faults.plan(|p| p.writes = 2);
    let seq = j.put(&ban("192.0.2.7/32", 1));
    let e = j.wait(seq).unwrap_err();
    assert!(format!("{e:#}").contains("No space left"), "{e:#}");
    j.wait_patiently(seq).unwrap();
    j.0.faults.plan(|p| p.writes = WAIT_TRIES + 2);
    let later = j.put(&ban("192.0.2.8/32", 1));
    let e = j.wait_patiently(later).unwrap_err();
    assert!(format!("{e:#}").contains("No space left"), "{e:#}");
    settle(&j, later);
    j.close().unwrap();
    let r = read(&path(dir.path())).unwrap().unwrap();
    assert_eq!(r.store.len(), 2);
}

/// Waits until change `seq` is on disk through failed tries: while writes keep failing
/// a wait fails, and the writer tries again every 200 ms.
fn settle(j: &Journal, seq: u64) {
    let t = Instant::now();
    while let Err(e) = j.wait(seq) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never written: {e:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A write that fails part-way leaves part of a record at the end of the file, and the
/// file is opened for appending: while cutting it back fails, nothing may be appended
/// after it (the next start would drop everything from the torn record on).
#[test]
fn a_torn_write_is_cut_back_before_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _, _) = Journal::open(dir.path()).unwrap();
    j.0.faults.plan(|p| {
        p.writes = 1;
        p.partial = 10;
        p.truncates = 2;
    });
    let seq = j.put(&ban("192.0.2.7/32", 1));
    settle(&j, seq);
    j.close().unwrap();
    let r = read(&path(dir.path())).unwrap().unwrap();
    assert_eq!(r.damage, None, "appended after a torn record");
    assert!(r.store.contains(&"192.0.2.7/32".parse().unwrap()));
}

/// A write fails, and a compaction runs before the writer puts the batch back: the
/// compacted file holds the batch's change and the later ones (here a ban and its
/// lift), so the batch written again after it would bring the lifted ban back.
#[test]
fn a_failed_batch_is_not_written_again_after_a_compaction_covered_it() {
    let dir = tempfile::tempdir().unwrap();
    let (j, mut store, _) = Journal::open(dir.path()).unwrap();
    let x = ban("192.0.2.7/32", 1);
    let (go, went) = mpsc::channel();
    let (done, finished) = mpsc::channel::<()>();
    j.0.faults.plan(|p| {
        p.writes = 1;
        p.after_failed_write = Some(Box::new(move || {
            go.send(()).unwrap();
            // The compaction runs now if the writer lets it.
            let _ = finished.recv_timeout(Duration::from_millis(500));
        }));
    });
    store.insert(x);
    j.put(&x);
    went.recv().unwrap();
    store.remove(&x.net);
    let lifted = j.lift(&x.net);
    j.compact_now(&store).unwrap();
    let _ = done.send(());
    j.wait(lifted).unwrap();
    // A change made after all this waits for its own write, not for an old error.
    let later = j.put(&ban("192.0.2.8/32", 1));
    let waited = j.wait(later);
    settle(&j, later);
    j.close().unwrap();
    let r = read(&path(dir.path())).unwrap().unwrap();
    assert_eq!(r.damage, None);
    assert!(
        !r.store.contains(&x.net),
        "the lifted ban came back: {:?}",
        nets(&r.store)
    );
    assert_eq!(r.store.len(), 1);
    waited.unwrap();
}

/// The directory's fsync fails after the compacted file was renamed over the journal:
/// the journal is the new file from then on, and later changes must go to it, not to
/// the old file that no name leads to any more.
#[test]
fn a_compaction_that_fails_after_its_rename_leaves_the_writer_on_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let (j, mut store, _) = Journal::open(dir.path()).unwrap();
    for i in 0..10u32 {
        let b = ban(&format!("10.0.0.{i}/32"), 1);
        store.insert(b);
        j.put(&b);
    }
    j.wait(j.last()).unwrap();
    j.0.faults.plan(|p| p.dir_syncs = 1);
    let e = j.compact_now(&store).unwrap_err();
    assert!(
        format!("{e:#}").contains(&dir.path().display().to_string()),
        "{e:#}"
    );
    let late = ban("192.0.2.99/32", 1);
    store.insert(late);
    let seq = j.put(&late);
    settle(&j, seq);
    j.close().unwrap();
    let r = read(&path(dir.path())).unwrap().unwrap();
    assert_eq!(r.damage, None);
    assert_eq!(
        nets(&r.store),
        nets(&store),
        "the change made after the compaction is lost"
    );
}

/// The lines logged through `log` in this process (the writer thread's).
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        lock(&LOGGED).push(record.args().to_string());
    }

    fn flush(&self) {}
}

/// Starts capturing log lines; the lines so far that name `file`.
fn logged(file: &Path) -> Vec<String> {
    static CAPTURE: Capture = Capture;
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in unit tests");
        log::set_max_level(log::LevelFilter::Info);
    });
    let file = file.display().to_string();
    lock(&LOGGED)
        .iter()
        .filter(|l| l.contains(&file))
        .cloned()
        .collect()
}

/// Writes that fail are reported even when nobody waits for them (an expiry's lift, a
/// CrowdSec ban): one line when they start failing, naming the file and the error, and
/// one when they work again.
#[test]
fn failed_writes_are_logged_once_and_so_is_their_end() {
    let dir = tempfile::tempdir().unwrap();
    let file = path(dir.path());
    assert!(logged(&file).is_empty());
    let (j, _, _) = Journal::open(dir.path()).unwrap();
    j.0.faults.plan(|p| p.writes = 3);
    let seq = j.lift(&"192.0.2.7/32".parse().unwrap());
    settle(&j, seq);
    j.close().unwrap();
    let lines = logged(&file);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("No space left on device"), "{lines:#?}");
    assert!(lines[1].contains("written again"), "{lines:#?}");
}

/// A journal of the first format (version 1: no undo records) is read as it is, and
/// rewritten in the current format by the first start (before anything is appended),
/// with the same bans.
#[test]
fn a_first_format_journal_is_read_and_rewritten_at_a_start() {
    let mut v1 = sample();
    v1[..HEADER.len()].copy_from_slice(&codec::HEADER_V1);
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path());
    fs::write(&p, &v1).unwrap();
    let read = load(dir.path()).unwrap();
    assert_eq!(nets(&read), nets(&rebuild(&sample())));
    assert_eq!(fs::read(&p).unwrap(), v1, "a read changes nothing");
    let (j, store, opened) = Journal::open(dir.path()).unwrap();
    j.close().unwrap();
    assert!(opened.damage.is_none());
    assert_eq!(nets(&store), nets(&read));
    let now = fs::read(&p).unwrap();
    assert_eq!(
        now[..HEADER.len()],
        HEADER,
        "rewritten in the current format"
    );
    assert_eq!(nets(&load(dir.path()).unwrap()), nets(&read));
}

/// A header of another format version (a newer release's, after a downgrade) is not
/// damage: the start stops with an error that names the file and says what to do, and
/// the file is left as it is. A file whose header is not ours at all (a crash's zeros)
/// is damage: the start goes on with no bans, the file kept aside.
#[test]
fn a_header_this_release_does_not_read_stops_the_start_and_changes_nothing() {
    let mut newer = sample();
    newer[HEADER.len() - 1] = 3;
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path());
    fs::write(&p, &newer).unwrap();
    let e = format!("{:#}", Journal::open(dir.path()).err().unwrap());
    assert!(e.contains(&p.display().to_string()), "{e}");
    assert!(
        e.contains("format version 3") && e.contains("move it away"),
        "{e}"
    );
    assert_eq!(fs::read(&p).unwrap(), newer);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "a copy made");
    assert!(load(dir.path()).is_err());

    let zeros = vec![0u8; sample().len()];
    fs::write(&p, &zeros).unwrap();
    let (j, store, opened) = Journal::open(dir.path()).unwrap();
    j.close().unwrap();
    assert!(store.is_empty());
    assert_eq!(opened.damage.map(|(_, d)| d.offset()), Some(0));
    let copy = opened.damaged_copy.unwrap();
    assert_eq!(fs::read(copy).unwrap(), zeros);
}

/// Past a thousand copies of damaged parts, a damaged journal is still recovered and
/// the start goes on; the log says that its damaged part was not kept.
#[test]
fn a_thousand_damaged_copies_do_not_stop_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path());
    for n in 0..DAMAGED_COPIES {
        let name = match n {
            0 => "bans.journal.damaged".to_owned(),
            n => format!("bans.journal.damaged.{n}"),
        };
        fs::write(dir.path().join(name), b"x").unwrap();
    }
    let mut bytes = sample();
    bytes.extend_from_slice(&[7; 5]);
    fs::write(&p, &bytes).unwrap();
    let (j, store, opened) = Journal::open(dir.path()).unwrap();
    j.close().unwrap();
    assert_eq!(store.len(), 3);
    assert_eq!(opened.damaged_copy, None);
    let report = opened.report().join("\n");
    assert!(
        report.contains("is damaged") && report.contains("was not kept: 1000 copies"),
        "{report}"
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        DAMAGED_COPIES as usize + 1,
        "no copy made"
    );
}

/// Each damaged journal found is kept: a later one never overwrites an earlier copy.
#[test]
fn damaged_copies_do_not_overwrite_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path());
    let mut copies = Vec::new();
    for round in 0..3u8 {
        let mut bytes = sample();
        bytes.extend_from_slice(&[round; 5]);
        fs::write(&p, &bytes).unwrap();
        let (j, store, opened) = Journal::open(dir.path()).unwrap();
        j.close().unwrap();
        assert_eq!(store.len(), 3);
        let copy = opened.damaged_copy.clone().unwrap();
        assert!(
            opened.report()[0].contains(&copy.display().to_string()),
            "{:?}",
            opened.report()
        );
        copies.push((copy, bytes[sample().len()..].to_vec()));
    }
    assert_eq!(copies[0].0, dir.path().join("bans.journal.damaged"));
    for (copy, bytes) in &copies {
        assert!(
            fs::read(copy).unwrap() == *bytes,
            "{} holds another journal",
            copy.display()
        );
    }
}

/// A store whose hosts' names take more room than their bans is not compacted again and
/// again: the trigger counts the names (it counted a record per ban, and housekeeping
/// compacted such a journal every second); and once most bans are lifted, it is.
#[test]
fn a_journal_of_long_names_is_not_compacted_again_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (j, mut store, _) = Journal::open(dir.path()).unwrap();
    let name = "h".repeat(200);
    for i in 0..20_000u32 {
        let b = ban(
            &format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255),
            1,
        );
        store.insert(b);
        j.put(&b);
        store.set_name(&b.net, &name);
        j.name(&b.net, &name);
    }
    j.wait(j.last()).unwrap();
    // The file is what the store needs: nothing to compact.
    assert!(!j.wants_compaction(&store), "{} bytes", j.bytes());
    j.compact_now(&store).unwrap();
    assert!(
        !j.wants_compaction(&store),
        "compacted to {} bytes, and wanted again",
        j.bytes()
    );
    // Most bans lifted (their names with them): the file is compacted again, not once
    // it holds twice the old snapshot.
    for i in 1_000..20_000u32 {
        let n: IpNet = format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255)
            .parse()
            .unwrap();
        store.remove(&n);
        j.lift(&n);
    }
    j.wait(j.last()).unwrap();
    assert_eq!(store.names_size(), (1_000, 200_000));
    assert!(j.wants_compaction(&store), "{} bytes", j.bytes());
    j.close().unwrap();
    let r = read(&path(dir.path())).unwrap().unwrap();
    assert_eq!(
        r.store.names_size(),
        (1_000, 200_000),
        "counted at recovery"
    );
}

/// A compaction that fails (here its new file cannot be made) is not tried again at the
/// next second's check, but after a wait that doubles with each failure: a full disk is
/// not written a whole snapshot every second.
#[test]
fn a_failed_compaction_waits_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _, _) = Journal::open(dir.path()).unwrap();
    let store = BanStore::new();
    let b = ban("192.0.2.7/32", 1);
    while j.bytes() <= (1 << 20) + 4096 {
        for _ in 0..1000 {
            j.put(&b);
        }
        j.wait(j.last()).unwrap();
    }
    assert!(j.wants_compaction(&store));
    let blocker = path(dir.path()).with_extension("journal.tmp");
    fs::create_dir(&blocker).unwrap();
    let (tx, rx) = mpsc::channel();
    j.compact(&store, move |r| tx.send(r.is_ok()).unwrap());
    assert!(!rx.recv().unwrap(), "the compaction failed");
    assert!(!j.wants_compaction(&store), "not tried again at once");
    fs::remove_dir(&blocker).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(j.wants_compaction(&store), "tried again after a second");
    j.compact_now(&store).unwrap();
    j.close().unwrap();
}

/// The replay counts bans as the store does: a CrowdSec decision's ban is not counted,
/// and the count a network had before it stays, through a restart as through a
/// compaction.
#[test]
fn a_crowdsec_ban_is_not_counted_after_a_restart_either() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _, _) = Journal::open(dir.path()).unwrap();
    let host: IpNet = "192.0.2.7/32".parse().unwrap();
    let only: IpNet = "198.51.100.9/32".parse().unwrap();
    let decision = |net: IpNet| {
        Ban::of_decision(
            net,
            UNIX_EPOCH + Duration::from_secs(1_795_625_334),
            UNIX_EPOCH + Duration::from_secs(1_900_000_000),
        )
    };
    let mut store = BanStore::new();
    // A count of 1: a decision's record holds 1 too, and must not hide it.
    for b in [ban("192.0.2.7/32", 1), decision(host), decision(only)] {
        store.insert(b);
        j.put(&b);
        store.remove(&b.net);
        j.lift(&b.net);
    }
    // A decision in force over the host's count.
    store.insert(decision(host));
    j.put(&decision(host));
    j.wait(j.last()).unwrap();
    let check = |s: &BanStore, when: &str| {
        assert_eq!(s.times_banned(&host), 1, "{when}");
        assert_eq!(s.times_banned(&only), 0, "{when}");
        assert_eq!(s.previous_len(), 1, "{when}");
    };
    check(&store, "in memory");
    let r = read(&path(dir.path())).unwrap().unwrap();
    check(&r.store, "replayed");
    j.compact_now(&store).unwrap();
    j.close().unwrap();
    let r = read(&path(dir.path())).unwrap().unwrap();
    check(&r.store, "compacted");
}

/// The store rebuilt from a journal whose first records are puts in the order of their
/// networks (a compacted journal, then the changes appended since) is the store the
/// general replay builds, whatever follows: puts again, lifts, counts, names, CrowdSec
/// decisions.
mod rebuild_with_a_prefix {
    use proptest::prelude::*;

    use super::*;

    const NETS: [&str; 6] = [
        "192.0.2.7/32",
        "192.0.2.9/32",
        "198.51.100.0/24",
        "203.0.113.5/32",
        "2001:db8::/64",
        "2001:db8:1::/64",
    ];

    #[derive(Clone, Debug)]
    enum Step {
        Put(usize, u32, bool),
        Lift(usize),
        Count(usize, u32),
        Name(usize, u8),
        /// A lift whose undo steps are due (of a ban made `c` minutes later), and
        /// those steps run.
        LiftToUndo(usize, u32),
        Undone(usize, u32),
        /// A scan ban put with its kill commands due, and those commands run.
        PutKillsDue(usize, u32),
        Killed(usize, u32),
    }

    fn dated(i: usize, c: u32) -> Ban {
        let b = ban(NETS[i], c);
        Ban {
            since: b.since + Duration::from_secs(60 * u64::from(c)),
            ..b
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        let net = 0..NETS.len();
        prop_oneof![
            (net.clone(), 1..5u32, any::<bool>()).prop_map(|(n, c, d)| Step::Put(n, c, d)),
            net.clone().prop_map(Step::Lift),
            (net.clone(), 1..7u32).prop_map(|(n, c)| Step::Count(n, c)),
            (net.clone(), 0..3u8).prop_map(|(n, k)| Step::Name(n, k)),
            (net.clone(), 1..3u32).prop_map(|(n, c)| Step::LiftToUndo(n, c)),
            (net.clone(), 1..3u32).prop_map(|(n, c)| Step::Undone(n, c)),
            (net.clone(), 1..3u32).prop_map(|(n, c)| Step::PutKillsDue(n, c)),
            (net, 1..3u32).prop_map(|(n, c)| Step::Killed(n, c)),
        ]
    }

    fn net(i: usize) -> IpNet {
        NETS[i].parse().unwrap()
    }

    fn encode(out: &mut Vec<u8>, s: &Step) {
        match *s {
            Step::Put(i, _, true) => encode_put(
                out,
                &Ban::of_decision(
                    net(i),
                    UNIX_EPOCH + Duration::from_secs(1_795_625_334),
                    UNIX_EPOCH + Duration::from_secs(1_900_000_000),
                ),
            ),
            Step::Put(i, count, false) => encode_put(out, &ban(NETS[i], count)),
            Step::Lift(i) => encode_lift(out, &net(i)),
            Step::Count(i, c) => encode_count(out, &net(i), c),
            Step::Name(i, k) => encode_name(out, &net(i), &format!("host{k}.example")),
            Step::LiftToUndo(i, c) => {
                encode_undo(out, &dated(i, c));
                encode_lift(out, &net(i));
            }
            Step::Undone(i, c) => {
                encode_undone(out, &net(i), crate::bans::unix_ms(dated(i, c).since));
            }
            Step::PutKillsDue(i, c) => {
                let rec = Rec {
                    flags: Rec::KILLS_DUE,
                    ..Rec::of(&dated(i, c))
                };
                encode_put_rec(out, &net(i), &rec);
            }
            Step::Killed(i, c) => {
                encode_killed(out, &net(i), crate::bans::unix_ms(dated(i, c).since));
            }
        }
    }

    fn rebuilt(bytes: &[u8], no_prefix: bool) -> BanStore {
        let mut r = if no_prefix {
            Rebuild::without_prefix()
        } else {
            Rebuild::default()
        };
        replay(&mut &bytes[..], |rec| r.add(rec)).unwrap();
        r.finish()
    }

    proptest! {
        #[test]
        fn is_the_general_replays_store(
            first in proptest::sample::subsequence((0..NETS.len()).collect::<Vec<_>>(), 0..=NETS.len()),
            counts in proptest::collection::vec(1..5u32, NETS.len()),
            rest in proptest::collection::vec(step(), 0..24),
        ) {
            let mut bytes = HEADER.to_vec();
            for i in first {
                encode_put(&mut bytes, &ban(NETS[i], counts[i]));
            }
            for s in &rest {
                encode(&mut bytes, s);
            }
            let (with, without) = (rebuilt(&bytes, false), rebuilt(&bytes, true));
            prop_assert_eq!(nets(&with), nets(&without));
            for i in 0..NETS.len() {
                let n = net(i);
                prop_assert_eq!(with.get(&n), without.get(&n), "{}", n);
                prop_assert_eq!(with.times_banned(&n), without.times_banned(&n), "{}", n);
                if let Some(b) = with.get(&n) {
                    prop_assert_eq!(with.name_of(&b), without.name_of(&b), "{}", n);
                }
            }
            prop_assert_eq!(with.previous_len(), without.previous_len());
            prop_assert_eq!(with.undos(), without.undos());
            for i in 0..NETS.len() {
                let n = net(i);
                prop_assert_eq!(with.record(&n), without.record(&n), "{}", n);
            }
            let compacted = rebuilt(&encode_store(&with), false);
            prop_assert_eq!(nets(&compacted), nets(&with));
            prop_assert_eq!(compacted.undos(), with.undos());
        }
    }
}
