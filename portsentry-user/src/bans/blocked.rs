//! The blocked files (`BLOCKED_FILE.<mode>`, PortSentry's list of the hosts blocked
//! now), kept in step with the bans in force: the lines of new bans appended, every file
//! rewritten when a ban ends.
//!
//! A rewrite is O(bans): about 0.7 s and 94 MB at a million. With that many bans it runs
//! on a thread of its own, from a copy of the records taken with the book held (tens of
//! ms), so that bans and unbans do not wait for it; nothing is appended meanwhile (the
//! rewrite's rename would drop those lines), and the next call appends them.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use ipnet::IpNet;

use super::{Ban, BanStore, Rec};
use crate::{kinds, report::history};

/// From this many bans on, a rewrite runs on a thread of its own (below it, a rewrite
/// takes a few ms: done in place).
pub const REWRITE_APART_FROM: usize = 50_000;

/// A rewrite that took longer than this is followed by the next no sooner than ten
/// times as long after its start.
const SLOW_REWRITE: Duration = Duration::from_millis(100);

pub struct BlockedFiles {
    file: PathBuf,
    /// Modes whose blocked file was written, so it is emptied when its last ban goes.
    modes: BTreeSet<&'static str>,
    /// Bans made since the blocked files were last written: their lines are appended.
    new: Vec<IpNet>,
    /// A ban ended (or the files are new): they are rewritten whole.
    rewrite: bool,
    /// No rewrite before this: one that took `d` (over 100 ms) is followed by the next
    /// no sooner than `10 d` after its start (at most a tenth of the time, however many
    /// bans end).
    not_before: Option<Instant>,
    /// A rewrite running apart: its outcome and how long it took.
    apart: Option<JoinHandle<(Result<()>, Duration)>>,
    /// BLOCKED_FILE moved while a rewrite ran apart: the new files are written once it
    /// is done, with no wait after it.
    moved: bool,
}

impl BlockedFiles {
    /// `BLOCKED_FILE`'s files, to be written whole at the first [`BlockedFiles::write`].
    pub fn new(file: PathBuf) -> BlockedFiles {
        BlockedFiles {
            file,
            modes: BTreeSet::new(),
            new: Vec::new(),
            rewrite: true,
            not_before: None,
            apart: None,
            moved: false,
        }
    }

    /// A ban of `net` was put in force: its line is appended.
    pub fn added(&mut self, net: IpNet) {
        self.new.push(net);
    }

    /// A ban ended: the files are rewritten.
    pub fn ended(&mut self) {
        self.rewrite = true;
    }

    /// BLOCKED_FILE changed (a reload): the next write puts every ban in the new files
    /// (the old ones are left as they are).
    pub fn set_file(&mut self, path: &Path) {
        if self.file != path {
            self.file = path.to_path_buf();
            self.modes.clear();
            self.rewrite = true;
            self.not_before = None;
            self.moved = self.apart.is_some();
        }
    }

    /// Writes what changed since the last write. `finish`: everything is on disk when it
    /// returns (a rewrite running apart waited for, one due done now whatever the last
    /// took: a stop, the CLI); else a large rewrite is started apart, and one due within
    /// ten times the last one's time waits for a later call.
    pub fn write(&mut self, store: &BanStore, finish: bool) -> Result<()> {
        let r = self.write_once(store, finish);
        // A rewrite apart that failed is done again now when finishing (its error is
        // the one returned).
        if finish && self.rewrite {
            return r.and(self.write_once(store, true));
        }
        r
    }

    fn write_once(&mut self, store: &BanStore, finish: bool) -> Result<()> {
        if let Some(job) = self.apart.take_if(|j| finish || j.is_finished()) {
            let (r, took) = job.join().unwrap_or_else(|_| {
                let e = anyhow!("the thread rewriting the blocked files panicked");
                (Err(e), Duration::ZERO)
            });
            // Ten times its time from its start, unless the files moved meanwhile.
            let moved = std::mem::take(&mut self.moved);
            self.not_before = (took > SLOW_REWRITE && !moved).then(|| Instant::now() + took * 9);
            if r.is_err() {
                self.rewrite = true;
                return r;
            }
        }
        if self.apart.is_some() {
            return Ok(());
        }
        if self.rewrite {
            let now = Instant::now();
            if !finish && self.not_before.is_some_and(|t| now < t) {
                return Ok(());
            }
            let copy = self.snapshot(store);
            self.rewrite = false;
            if !finish && store.len() >= REWRITE_APART_FROM {
                let spawned = std::thread::Builder::new()
                    .name("blocked-files".into())
                    .spawn(move || {
                        let t = Instant::now();
                        (copy.write(), t.elapsed())
                    });
                return match spawned {
                    Ok(job) => {
                        self.apart = Some(job);
                        Ok(())
                    }
                    Err(e) => {
                        self.rewrite = true;
                        Err(e).context("starting the rewrite of the blocked files")
                    }
                };
            }
            let r = copy.write();
            let took = now.elapsed();
            self.not_before = (took > SLOW_REWRITE).then(|| now + took * 10);
            self.rewrite = r.is_err();
            return r;
        }
        self.append(store)
    }

    /// Appends the lines of the bans made since the last write.
    fn append(&mut self, store: &BanStore) -> Result<()> {
        if self.new.is_empty() {
            return Ok(());
        }
        let mut by_mode: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
        for net in std::mem::take(&mut self.new) {
            if let Some(b) = store.get(&net) {
                let out = by_mode.entry(kinds::mode_word(b.mode)).or_default();
                line(&b, &store.name_of(&b), out);
            }
        }
        let mut result = Ok(());
        for (mode, content) in &by_mode {
            self.modes.insert(mode);
            let path = history::blocked_path(&self.file, mode);
            if let Err(e) = history::append_blocked(&path, content) {
                result = Err(e).context("writing a blocked file");
                self.rewrite = true;
            }
        }
        result
    }

    /// What a rewrite writes: the records and names in force now, and every mode's file
    /// written so far (emptied when its last ban went). The bans made until now are in
    /// it: none is left to append.
    fn snapshot(&mut self, store: &BanStore) -> Snapshot {
        let records: Vec<(IpNet, Rec)> = store.records().map(|(n, r)| (*n, *r)).collect();
        self.modes.extend(
            records
                .iter()
                .filter_map(|(_, r)| r.mode())
                .map(kinds::mode_word),
        );
        self.new.clear();
        Snapshot {
            file: self.file.clone(),
            modes: self.modes.iter().copied().collect(),
            records,
            names: store
                .names()
                .map(|(n, name)| (*n, Box::<str>::from(name)))
                .collect(),
        }
    }
}

/// The bans a rewrite writes, taken from the store.
struct Snapshot {
    file: PathBuf,
    modes: Vec<&'static str>,
    records: Vec<(IpNet, Rec)>,
    names: HashMap<IpNet, Box<str>>,
}

impl Snapshot {
    /// Rewrites each mode's file atomically, one pass over the records a mode.
    fn write(&self) -> Result<()> {
        let mut result = Ok(());
        for mode in &self.modes {
            let path = history::blocked_path(&self.file, mode);
            let written = history::write_blocked_with(&path, |w| {
                let mut out = Vec::new();
                // The mode read from the record: a ban is made only for its own file.
                for b in self
                    .records
                    .iter()
                    .filter(|(_, r)| r.mode().is_some_and(|m| kinds::mode_word(m) == *mode))
                    .filter_map(|(n, r)| r.ban(*n))
                {
                    out.clear();
                    let name = match self.names.get(&b.net) {
                        Some(n) => Cow::Borrowed(&**n),
                        None => Cow::Owned(b.default_name()),
                    };
                    line(&b, &name, &mut out);
                    w.write_all(&out)?;
                }
                Ok(())
            });
            if let Err(e) = written {
                result = Err(e).context("writing a blocked file");
            }
        }
        result
    }
}

/// `b`'s line, logged under `name` (PortSentry's history format).
fn line(b: &Ban, name: &str, out: &mut Vec<u8>) {
    let line = history::history_line(b.since, name, b.net.addr(), b.port, b.proto);
    // A name with a newline never gets here (sanitized when resolved).
    if !line.contains('\n') {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::SystemTime};

    use super::*;
    use crate::fsutil::lines;

    fn ban(i: u32) -> Ban {
        let now = SystemTime::now();
        Ban::of_decision(
            IpNet::from(std::net::IpAddr::from(Ipv4Addr::from(0x0a00_0000 + i))),
            now,
            now + Duration::from_secs(3600),
        )
    }

    /// A store just large enough for its rewrites to run apart, and its size.
    fn large_store() -> (BanStore, u32) {
        let mut store = BanStore::new();
        let n = REWRITE_APART_FROM as u32;
        for i in 0..n {
            store.insert(ban(i));
        }
        (store, n)
    }

    /// With many bans the rewrite runs apart; a ban made meanwhile is appended after it
    /// (not into the file its rename replaces), once; a finishing write waits for it and
    /// rewrites what ended since.
    #[test]
    fn a_large_rewrite_runs_apart_and_loses_no_line() {
        let dir = crate::fsutil::temp_dir("blocked-apart");
        let (mut store, n) = large_store();
        let mut files = BlockedFiles::new(dir.join("blocked"));
        // Made before the rewrite: written by it, not appended again.
        files.added(ban(0).net);
        files.write(&store, false).unwrap();
        assert!(
            files.apart.is_some(),
            "the rewrite runs on a thread of its own"
        );
        let late = ban(n);
        store.insert(late);
        files.added(late.net);
        files.write(&store, false).unwrap();
        files.write(&store, true).unwrap();
        assert!(files.apart.is_none());
        let path = history::blocked_path(&dir.join("blocked"), kinds::mode_word(None));
        let written = lines(&path);
        assert_eq!(written.len(), n as usize + 1);
        for (b, what) in [
            (late, "the late ban's line, once"),
            (ban(0), "the first's, once"),
        ] {
            let line = format!("/{} ", b.net.addr());
            assert_eq!(
                written.iter().filter(|l| l.contains(&line)).count(),
                1,
                "{what}"
            );
        }
        // A ban ended: rewritten (apart, then waited for).
        let gone = ban(7);
        store.remove(&gone.net);
        files.ended();
        files.not_before = None;
        files.write(&store, false).unwrap();
        files.write(&store, true).unwrap();
        let written = lines(&path);
        assert_eq!(written.len(), n as usize);
        let gone_line = format!("/{} ", gone.net.addr());
        assert!(!written.iter().any(|l| l.contains(&gone_line)));
        // BLOCKED_FILE moved while a rewrite runs apart: the new files get every ban.
        files.ended();
        files.not_before = None;
        files.write(&store, false).unwrap();
        assert!(files.apart.is_some());
        files.set_file(&dir.join("moved"));
        files.write(&store, true).unwrap();
        let moved = history::blocked_path(&dir.join("moved"), kinds::mode_word(None));
        assert_eq!(lines(&moved).len(), n as usize);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A rewrite apart that failed is done again by a finishing write (a stop), which
    /// reports the failure.
    #[test]
    fn a_failed_rewrite_apart_is_done_again_when_finishing() {
        let dir = crate::fsutil::temp_dir("blocked-apart-failed");
        let (store, n) = large_store();
        // The files' directory is a file: the rewrite apart fails.
        std::fs::write(dir.join("sub"), "").unwrap();
        let mut files = BlockedFiles::new(dir.join("sub/blocked"));
        files.write(&store, false).unwrap();
        while !files.apart.as_ref().is_some_and(|j| j.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::remove_file(dir.join("sub")).unwrap();
        assert!(
            files.write(&store, true).is_err(),
            "the failure is reported"
        );
        let path = history::blocked_path(&dir.join("sub/blocked"), kinds::mode_word(None));
        assert_eq!(
            lines(&path).len(),
            n as usize,
            "and the files written all the same"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
