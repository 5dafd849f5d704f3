//! The ban journal (`STATE_DIR/bans.journal`): every change to the bans, appended as
//! it is made, so that bans survive a reboot with their expiry.
//!
//! **Format.** An 8-byte header (`PSBANJ` and the version, `\x00\x02`; a journal of
//! version 1, which had no undo records, is read and rewritten as version 2 at a start),
//! then records:
//!
//! ```text
//! crc32 (u32 LE) | length (u16 LE) | kind (u8) | payload (length bytes)
//! ```
//!
//! The CRC-32 (IEEE, the `crc32fast` crate) covers the length, the kind and the payload.
//! Kinds: [`PUT`] (a ban in force: the network and its fixed-size record, 48 bytes),
//! [`LIFT`] (a ban ended: the network, 18 bytes), [`COUNT`] (how many bans a network not
//! banned now has had: network and count), [`NAME`] (the name a banned host was logged
//! under: network and UTF-8 name), [`UNDO`] (a lifted or replaced ban whose undo steps,
//! UNKILL_*, are due: its record, as a put's; appended with the lift, before it),
//! [`UNDONE`] (those steps have run: network and the ban's since) and [`KILLED`] (the
//! kill commands of a scan ban put with [`super::Rec::KILLS_DUE`] have run: network and
//! since). The undo steps a stop
//! or a crash cut short run at the next start, unless the host is banned again by a ban
//! that ran kill commands (whose own undo steps undo both). A network is its family (4 or 6), its prefix length
//! and 16 address bytes (IPv4 in the first four). Integers are little-endian; times are
//! wall-clock milliseconds since the Unix epoch, so an expiry holds across reboots.
//!
//! **Durability.** Appends go to a buffer; one thread writes the buffer and fsyncs
//! (`fdatasync`) as soon as it holds anything, and the changes made while one fsync runs
//! go together in the next (group commit): a change is on disk one fsync after it was
//! made, a few milliseconds, however many come at once. [`Journal::wait`] returns once a
//! change is on disk: the reply to `portsentry ban` and `unban` and the kill commands of
//! a scan ban wait for it, so a ban acknowledged (answered, or acted on) survives a crash
//! followed by a reboot.
//!
//! **Recovery.** On start the records are replayed in order; the first record that is
//! cut short (a crash during a write) or whose checksum does not match ends the replay:
//! what came before it is kept, the problem is logged with the file and the offset, the
//! damaged file is copied aside (`bans.journal.damaged`, or `.damaged.1` and on when an
//! earlier copy is there) and a clean journal is written from what was recovered. A
//! journal of another format version (after a downgrade) is not damage: the start
//! stops with an error that names the file, which is left as it is. (A header that is
//! not ours at all, a crash's zeros, is damage at byte 0.)
//!
//! **Compaction.** When the file holds more than twice what the bans in force need (plus
//! 1 MiB), a snapshot of the store is written to a new file by a thread of its own, the
//! changes made meanwhile are appended to it, and it replaces the journal (rename, then
//! fsync of the directory). Appends and fsyncs go on during the snapshot's write. Once
//! renamed, the new file is the journal even when the directory's fsync fails: the
//! next write syncs the directory before it counts as on disk.
//!
//! **Migration.** A `bans.json` from an earlier release is read on the first start that
//! finds no journal, written to a new journal, and renamed to `bans.json.migrated`.

mod codec;

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;

use super::{Ban, BanStore, state};
use codec::Rebuild;
pub use codec::{
    COUNT, Damage, HEADER, KILLED, LIFT, NAME, PUT, PUT_SIZE, Record, UNDO, UNDONE, Unreadable,
    encode_count, encode_killed, encode_lift, encode_name, encode_put, encode_put_rec,
    encode_store, encode_undo, encode_undone, replay,
};

pub fn path(state_dir: &Path) -> PathBuf {
    crate::paths::journal_file(state_dir)
}

/// What reading a journal found.
#[derive(Debug)]
pub struct Recovered {
    pub store: BanStore,
    /// Bytes of intact records (header included).
    pub intact: u64,
    pub damage: Option<Damage>,
    /// Written in the first format (version 1).
    pub first_format: bool,
}

/// Reads the journal at `path` (no change to it); `None` when there is none, or when
/// the file is empty (every journal written holds its header: an empty file is one
/// made by hand, and stands for no journal, so an old `bans.json` beside it is
/// migrated). A file whose header this release does not read is an error that says
/// what to do.
pub fn read(path: &Path) -> Result<Option<Recovered>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let size = file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    if size == 0 {
        return Ok(None);
    }
    let mut head = [0u8; HEADER.len()];
    let first_format = std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).is_ok()
        && head == codec::HEADER_V1;
    // Room for as many puts as the file may hold: no copy as the prefix grows.
    let puts = usize::try_from(size).unwrap_or(0) / PUT_SIZE;
    let mut rebuild = Rebuild::with_room_for(puts);
    let (intact, damage) = replay(&mut BufReader::with_capacity(1 << 20, file), |r| {
        rebuild.add(r)
    })
    .map_err(
        |e| match e.get_ref().and_then(|e| e.downcast_ref::<Unreadable>()) {
            Some(u) => anyhow::anyhow!("{} {u}", path.display()),
            None => anyhow::Error::new(e).context(format!("reading {}", path.display())),
        },
    )?;
    Ok(Some(Recovered {
        store: rebuild.finish(),
        intact,
        damage,
        first_format,
    }))
}

/// The bans on record in STATE_DIR, read only (`status`, and the CLI's look before it
/// changes anything): the journal's, or an old `bans.json`'s when no journal exists
/// yet. A damaged journal's intact part.
pub fn load(state_dir: &Path) -> Result<BanStore> {
    match read(&path(state_dir))? {
        Some(r) => Ok(r.store),
        None => state::load_json(state_dir),
    }
}

// ---- the file, the writer thread and compaction -------------------------------------------

/// Appends made and not yet handed to the writer thread.
struct Pending {
    buf: Vec<u8>,
    /// The number of the last change appended.
    seq: u64,
    /// Bumped when a compacted file replaces the journal: a batch taken before belongs
    /// to the old file (and is in the new one already).
    generation: u64,
    /// While a compaction writes its snapshot: the changes made since, for the new file.
    since_snapshot: Option<Vec<u8>>,
    stop: bool,
}

/// What is on disk.
struct Synced {
    /// Changes up to this number are on disk.
    seq: u64,
    /// The last write or fsync error, with the first change it lost; cleared by the
    /// next success.
    error: Option<(u64, String)>,
    /// Tries that failed in a row (0 after a success); [`WAIT_TRIES`] at once for a
    /// failure nothing retries by itself (a compaction's).
    failures: u32,
    /// The last failure is one the writer retries (its count goes on from there).
    retrying: bool,
}

/// [`Journal::wait_async`] (a scan's kill commands wait so) gives up once this many
/// tries to write the change failed in a row (the first and the retries 200 ms apart:
/// about a second): a write that fails once and works at the next try is waited for,
/// not reported as lost.
const WAIT_TRIES: u32 = 5;

/// The longest wait before a compaction that failed is tried again.
const COMPACT_BACKOFF_MAX: Duration = Duration::from_secs(300);

struct Disk {
    file: File,
    /// Bytes of the file that hold whole records.
    len: u64,
    /// A failed write may have left part of a record after `len`, and cutting it back
    /// failed too: nothing is appended until it is cut back.
    torn: bool,
    /// A compacted file was renamed over the journal and the directory's fsync
    /// failed: the rename (and the changes only in the new file) may not survive a
    /// power loss until the next write syncs the directory first.
    dir_unsynced: bool,
}

struct Inner {
    path: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
    synced: Mutex<Synced>,
    done: Condvar,
    disk: Mutex<Disk>,
    compacting: Mutex<bool>,
    /// Compactions that failed in a row, and when the next may start: each failure
    /// doubles the wait, from 1 s to at most [`COMPACT_BACKOFF_MAX`] (a full disk is not
    /// written a whole snapshot every second).
    compact_retry: Mutex<(u32, Option<std::time::Instant>)>,
    /// Successful fsyncs of appended changes (the bench reports bans per fsync).
    fsyncs: std::sync::atomic::AtomicU64,
    /// `disk.len`, readable without the lock the writer holds through each write and
    /// fsync: the once-a-second check for compaction runs with the book held, and a
    /// slow disk must not stall it.
    size: std::sync::atomic::AtomicU64,
    /// The async side of `synced.seq`.
    synced_watch: tokio::sync::watch::Sender<u64>,
    /// Failures a unit test injects into the writes below (none outside tests).
    #[cfg(test)]
    faults: tests::Faults,
}

/// The ban journal: appends, the writer thread, compaction. Cloning shares it.
#[derive(Clone)]
pub struct Journal(Arc<Inner>);

/// What opening the journal did, for the log.
#[derive(Debug, Default)]
pub struct Opened {
    /// Damage found at the end of the journal (its intact part was kept).
    pub damage: Option<(PathBuf, Damage)>,
    /// Where the damaged part of the journal was copied (a name no earlier copy has);
    /// `None` when too many copies are there already.
    pub damaged_copy: Option<PathBuf>,
    /// `bans.json` migrated, and where it went.
    pub migrated: Option<PathBuf>,
    /// Bytes of the journal as found, and how long reading it took.
    pub bytes: u64,
    pub took: Duration,
}

impl Opened {
    /// The lines to log.
    pub fn report(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((file, d)) = &self.damage {
            let kept = match &self.damaged_copy {
                Some(copy) => format!("the damaged part was kept as {}", copy.display()),
                None => format!(
                    "the damaged part was not kept: {DAMAGED_COPIES} copies of earlier damage \
                     are there already (remove the old {}.damaged* files)",
                    file.display()
                ),
            };
            out.push(format!(
                "portsentry: the ban journal {} is damaged ({d}): the bans recorded before \
                 byte {} were recovered, the rest is lost; {kept}",
                file.display(),
                d.offset(),
            ));
        }
        if let Some(to) = &self.migrated {
            out.push(format!(
                "portsentry: the bans of {} were moved to the ban journal; the old file was \
                 kept as {}",
                to.with_extension("").display(),
                to.display()
            ));
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `bytes` to `path` as a new file and fsyncs it; the handle appends (a
/// compacted file's becomes the journal's).
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    // Emptied here: a file left by a crash may be there, and an appending open cannot
    // truncate.
    f.set_len(0)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(f)
}

/// The copies of damaged parts [`keep_aside`] makes at most; past them the damage is
/// only logged.
const DAMAGED_COPIES: u32 = 1000;

/// Copies the damaged part of the journal at `path` (from byte `offset` to its end:
/// what the damage cost, the part not recovered) to `PATH.damaged`, or
/// `PATH.damaged.1`, `.2` and on when that is taken: a copy found later never overwrites
/// an earlier one. `None` when [`DAMAGED_COPIES`] are there already: the start goes on
/// without one. The copy is fsynced; the directory is synced with the clean journal's
/// rename that follows.
///
/// Only the damaged part: a crash during a write leaves a torn last record, and a
/// server that crashes often would otherwise keep a whole journal (tens of MiB at a
/// million bans) for each.
fn keep_aside(path: &Path, offset: u64) -> io::Result<Option<PathBuf>> {
    use std::io::{Seek as _, SeekFrom};
    let mut from = File::open(path)?;
    for n in 0..DAMAGED_COPIES {
        let aside = match n {
            0 => PathBuf::from(format!("{}.damaged", path.display())),
            n => PathBuf::from(format!("{}.damaged.{n}", path.display())),
        };
        let mut to = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        from.seek(SeekFrom::Start(offset))?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        return Ok(Some(aside));
    }
    Ok(None)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens the journal in `state_dir` for appending, recovering its bans: a damaged
    /// tail is set aside (logged by the caller from [`Opened::report`]), an old
    /// `bans.json` migrated. Starts the writer thread.
    pub fn open(state_dir: &Path) -> Result<(Journal, BanStore, Opened)> {
        crate::fsutil::create_dir_all_synced(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let path = path(state_dir);
        let t = Instant::now();
        let mut opened = Opened::default();
        let (store, rewrite) = match read(&path)? {
            Some(r) => {
                opened.bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                // A journal of the first format is rewritten in the current one before
                // anything is appended: a release that reads only the first then refuses
                // it, rather than read its undo records as damage.
                let rewrite = r.damage.is_some() || r.first_format;
                if let Some(d) = r.damage {
                    opened.damaged_copy = keep_aside(&path, d.offset()).with_context(|| {
                        format!("keeping the damaged part of {} aside", path.display())
                    })?;
                    opened.damage = Some((path.clone(), d));
                }
                (r.store, rewrite)
            }
            None => {
                let old = state::json_path(state_dir);
                let store = state::load_json(state_dir)?;
                if old.exists() {
                    opened.migrated = Some(PathBuf::from(format!("{}.migrated", old.display())));
                }
                (store, true)
            }
        };
        opened.took = t.elapsed();
        if rewrite {
            let tmp = path.with_extension("journal.tmp");
            write_new(&tmp, &encode_store(&store))
                .with_context(|| format!("writing {}", tmp.display()))?;
            fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        }
        // Every start: a rename the last process made (a compaction's, cut short between
        // its rename and the directory's fsync, or a start's above) is on disk before a
        // change appended to the file it named is acknowledged.
        sync_dir(state_dir).with_context(|| format!("syncing {}", state_dir.display()))?;
        // The journal is on disk before the old file goes aside.
        if let Some(to) = &opened.migrated {
            fs::rename(state::json_path(state_dir), to)
                .with_context(|| format!("renaming the old state file to {}", to.display()))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        let (tx, _) = tokio::sync::watch::channel(0);
        let inner = Arc::new(Inner {
            path,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                seq: 0,
                generation: 0,
                since_snapshot: None,
                stop: false,
            }),
            wake: Condvar::new(),
            synced: Mutex::new(Synced {
                seq: 0,
                error: None,
                failures: 0,
                retrying: false,
            }),
            done: Condvar::new(),
            disk: Mutex::new(Disk {
                file,
                len,
                torn: false,
                dir_unsynced: false,
            }),
            compacting: Mutex::new(false),
            compact_retry: Mutex::new((0, None)),
            fsyncs: 0.into(),
            size: len.into(),
            synced_watch: tx,
            #[cfg(test)]
            faults: Default::default(),
        });
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("ban-journal".into())
            .spawn(move || writer.write_loop())
            .context("starting the journal's writer thread")?;
        Ok((Journal(inner), store, opened))
    }

    /// Appends one change (the encoder writes it); its number, for [`Journal::wait`].
    fn append(&self, encode: impl Fn(&mut Vec<u8>)) -> u64 {
        let mut p = lock(&self.0.pending);
        encode(&mut p.buf);
        if let Some(s) = p.since_snapshot.as_mut() {
            encode(s);
        }
        p.seq += 1;
        let seq = p.seq;
        drop(p);
        {
            // A failure nothing was retrying (a compaction's) is tried again with this
            // change (the writer syncs the directory first): waits ride that out.
            let mut s = lock(&self.0.synced);
            if s.error.is_some() && !s.retrying {
                s.failures = 0;
                s.retrying = true;
            }
        }
        self.0.wake.notify_one();
        seq
    }

    pub fn put(&self, ban: &Ban) -> u64 {
        self.append(|o| encode_put(o, ban))
    }

    /// The ban of `net` in force, as its record says (with its flags).
    pub fn put_rec(&self, net: &IpNet, rec: &super::Rec) -> u64 {
        self.append(|o| encode_put_rec(o, net, rec))
    }

    /// The kill commands of the ban of `net` made at `since` have run.
    pub fn killed(&self, net: &IpNet, since: std::time::SystemTime) -> u64 {
        self.append(|o| encode_killed(o, net, super::unix_ms(since)))
    }

    pub fn lift(&self, net: &IpNet) -> u64 {
        self.append(|o| encode_lift(o, net))
    }

    /// The lift of `ban`, whose undo steps are due: both records in one append, the
    /// undo's first (a crash that tears them apart leaves the ban in force, with
    /// nothing to undo).
    pub fn lift_to_undo(&self, ban: &Ban) -> u64 {
        self.append(|o| {
            encode_undo(o, ban);
            encode_lift(o, &ban.net);
        })
    }

    /// The undo steps of `ban`, ended and not on record, are due.
    pub fn undo(&self, ban: &Ban) -> u64 {
        self.append(|o| encode_undo(o, ban))
    }

    /// `ban` in force over `old`, whose undo steps are due: both records in one append,
    /// the undo's first (torn apart, the old ban stays in force with nothing to undo).
    pub fn replace(&self, old: &Ban, ban: &Ban) -> u64 {
        self.append(|o| {
            encode_undo(o, old);
            encode_put(o, ban);
        })
    }

    /// The undo steps of `ban` have run.
    pub fn undone(&self, ban: &Ban) -> u64 {
        self.append(|o| encode_undone(o, &ban.net, super::unix_ms(ban.since)))
    }

    pub fn name(&self, net: &IpNet, name: &str) -> u64 {
        self.append(|o| encode_name(o, net, name))
    }

    /// The number of the last change appended.
    pub fn last(&self) -> u64 {
        lock(&self.0.pending).seq
    }

    /// Waits until change `seq` (and every one before it) is on disk; an error as soon
    /// as writing it failed (callers hold locks: no wait through the retries).
    pub fn wait(&self, seq: u64) -> Result<()> {
        self.wait_until(seq, 1)
    }

    /// [`Journal::wait`] through the retries, for a caller that holds no lock others
    /// need (the start and the stop): an error once writing the change failed
    /// [`WAIT_TRIES`] times in a row (about a second).
    pub fn wait_patiently(&self, seq: u64) -> Result<()> {
        self.wait_until(seq, WAIT_TRIES)
    }

    /// Waits until change `seq` is on disk, or writing it failed `tries` times in a row
    /// (a failure nothing retries counts as [`WAIT_TRIES`]).
    fn wait_until(&self, seq: u64, tries: u32) -> Result<()> {
        let mut s = lock(&self.0.synced);
        loop {
            if s.seq >= seq {
                return Ok(());
            }
            if let Some((from, e)) = &s.error
                && *from <= seq
                && s.failures >= tries
            {
                bail!("writing {}: {e}", self.0.path.display());
            }
            s = self.0.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// [`Journal::wait`] for async code, through the retries: an error once writing the
    /// change failed [`WAIT_TRIES`] times in a row.
    pub async fn wait_async(&self, seq: u64) -> Result<()> {
        let mut rx = self.0.synced_watch.subscribe();
        loop {
            {
                let s = lock(&self.0.synced);
                if s.seq >= seq {
                    return Ok(());
                }
                if let Some((from, e)) = &s.error
                    && *from <= seq
                    && s.failures >= WAIT_TRIES
                {
                    bail!("writing {}: {e}", self.0.path.display());
                }
            }
            if rx.changed().await.is_err() {
                bail!("the journal's writer stopped");
            }
        }
    }

    /// How many fsyncs of appended changes were made.
    pub fn fsyncs(&self) -> u64 {
        self.0.fsyncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The journal's size on disk.
    pub fn bytes(&self) -> u64 {
        self.0.size.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the file holds more than twice what `store` needs, plus 1 MiB, and no
    /// compaction runs. What it needs is a record per ban and per count kept, and one
    /// per host's name with the name (else a store with long names would be compacted
    /// again at every housekeeping).
    pub fn wants_compaction(&self, store: &BanStore) -> bool {
        let (names, name_bytes) = store.names_size();
        let need = (store.len() + store.previous_len() + store.undos_len()) * PUT_SIZE
            + names * (codec::FRAME + codec::NET)
            + name_bytes;
        !*lock(&self.0.compacting)
            && lock(&self.0.compact_retry)
                .1
                .is_none_or(|at| std::time::Instant::now() >= at)
            && self.bytes() > 2 * need as u64 + (1 << 20)
    }

    /// Compacts the journal to `store` in the background. The caller holds the book
    /// (no change is appended while the snapshot is encoded). `done` is called with the
    /// outcome from the compaction's thread.
    pub fn compact(&self, store: &BanStore, done: impl FnOnce(Result<u64>) + Send + 'static) {
        {
            let mut c = lock(&self.0.compacting);
            if *c {
                return;
            }
            *c = true;
        }
        let snapshot = encode_store(store);
        lock(&self.0.pending).since_snapshot = Some(Vec::new());
        let inner = self.0.clone();
        let spawned = std::thread::Builder::new()
            .name("ban-compaction".into())
            .spawn(move || {
                let r = inner.compact_with(&snapshot);
                lock(&inner.pending).since_snapshot = None;
                inner.compacted(r.is_ok());
                *lock(&inner.compacting) = false;
                done(r);
            });
        if spawned.is_err() {
            lock(&self.0.pending).since_snapshot = None;
            *lock(&self.0.compacting) = false;
        }
    }

    /// Compacts now, in this thread (tests, the bench).
    pub fn compact_now(&self, store: &BanStore) -> Result<u64> {
        *lock(&self.0.compacting) = true;
        let snapshot = encode_store(store);
        lock(&self.0.pending).since_snapshot = Some(Vec::new());
        let r = self.0.compact_with(&snapshot);
        lock(&self.0.pending).since_snapshot = None;
        *lock(&self.0.compacting) = false;
        r
    }

    /// Stops the writer thread once everything appended is on disk.
    pub fn close(&self) -> Result<()> {
        let last = self.last();
        let r = self.wait(last);
        lock(&self.0.pending).stop = true;
        self.0.wake.notify_one();
        r
    }
}

impl Inner {
    /// Notes a compaction's outcome for the next one's start ([`Inner::compact_retry`]).
    fn compacted(&self, ok: bool) {
        let mut retry = lock(&self.compact_retry);
        *retry = if ok {
            (0, None)
        } else {
            let wait = Duration::from_secs(1)
                .saturating_mul(1 << retry.0.min(16))
                .min(COMPACT_BACKOFF_MAX);
            (
                retry.0.saturating_add(1),
                Some(std::time::Instant::now() + wait),
            )
        };
    }

    fn write_loop(self: Arc<Self>) {
        loop {
            let (batch, seq, generation) = {
                let mut p = lock(&self.pending);
                while p.buf.is_empty() && !p.stop {
                    p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                if p.buf.is_empty() {
                    return;
                }
                (std::mem::take(&mut p.buf), p.seq, p.generation)
            };
            let mut disk = lock(&self.disk);
            if lock(&self.pending).generation != generation {
                // A compacted file replaced the journal meanwhile, with these changes.
                continue;
            }
            // The outcome is marked with the journal still locked, as a compaction
            // marks its own: an error is never left behind by one that came first.
            match self.write_batch(&mut disk, &batch) {
                Ok(()) => {
                    disk.len += batch.len() as u64;
                    self.size
                        .store(disk.len, std::sync::atomic::Ordering::Relaxed);
                    self.fsyncs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.mark_synced(seq, None, false);
                }
                Err(e) => {
                    #[cfg(test)]
                    self.faults.failed_write();
                    // The batch goes back for the next try while the journal is still
                    // locked: a compaction waiting for the lock then finds it pending
                    // and covers it. Put back after a compaction's switch, it would be
                    // written again after the changes that superseded it (a lifted ban
                    // back in force at the next start).
                    {
                        let mut p = lock(&self.pending);
                        let mut again = batch;
                        again.extend_from_slice(&p.buf);
                        p.buf = again;
                    }
                    let first = lock(&self.synced).seq + 1;
                    self.mark_synced(0, Some((first, format!("{e:#}"))), true);
                    drop(disk);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Appends `batch` after the last whole record and fsyncs it. The file is opened
    /// for appending, and a start drops every record after a torn one: after a failed
    /// write the file is cut back to its last whole record before anything else is
    /// appended, and while that fails the writes fail too.
    fn write_batch(&self, disk: &mut Disk, batch: &[u8]) -> Result<()> {
        if disk.torn {
            self.truncate(&disk.file, disk.len)
                .context("cutting a failed write back")?;
            disk.torn = false;
        }
        if disk.dir_unsynced {
            self.sync_dir()?;
            disk.dir_unsynced = false;
        }
        let r = self.write(&mut disk.file, batch);
        if r.is_err() {
            disk.torn = self.truncate(&disk.file, disk.len).is_err();
        }
        Ok(r?)
    }

    /// Appends `bytes` to the journal and fsyncs them.
    fn write(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(part) = self.faults.write() {
            file.write_all(&bytes[..part.min(bytes.len())])?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        file.write_all(bytes)?;
        file.sync_data()
    }

    /// Cuts the journal back to `len` bytes.
    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        #[cfg(test)]
        self.faults.truncate()?;
        file.set_len(len)
    }

    /// Fsyncs the journal's directory (a rename in it).
    fn sync_dir(&self) -> Result<()> {
        let Some(dir) = self.path.parent() else {
            return Ok(());
        };
        let sync = || {
            #[cfg(test)]
            self.faults.sync_dir()?;
            sync_dir(dir)
        };
        sync().with_context(|| format!("syncing {}", dir.display()))
    }

    /// Marks changes up to `seq` on disk, and the error of a failed write (`None`
    /// after a success). The start and the end of a run of failures are logged here:
    /// some changes have no one waiting to report a failure (an expiry's lift, most
    /// CrowdSec bans), and the writer retries every 200 ms, so once a run.
    /// `retried`: the failed changes are tried again by themselves (the writer's).
    fn mark_synced(&self, seq: u64, error: Option<(u64, String)>, retried: bool) {
        let mut s = lock(&self.synced);
        s.seq = s.seq.max(seq);
        let line = match (&s.error, &error) {
            (None, Some((_, e))) => Some((
                log::Level::Warn,
                format!(
                    "writing the ban journal {}: {e}; the changes are kept in memory and \
                     written when it works again (tried every 200 ms)",
                    self.path.display()
                ),
            )),
            (Some(_), None) => Some((
                log::Level::Info,
                format!("the ban journal {} is written again", self.path.display()),
            )),
            _ => None,
        };
        s.failures = match &error {
            Some(_) if retried && s.retrying => s.failures.saturating_add(1),
            Some(_) if retried => 1,
            Some(_) => WAIT_TRIES,
            None => 0,
        };
        s.retrying = error.is_some() && retried;
        s.error = error;
        let now = s.seq;
        drop(s);
        // Logged before the waiters wake: what they do next comes after it in the log.
        if let Some((level, line)) = line {
            log::log!(level, "{line}");
        }
        self.done.notify_all();
        self.synced_watch.send_replace(now);
    }

    /// Writes `snapshot` to a new file, then the changes made since, and puts it in the
    /// journal's place; the new file's size.
    fn compact_with(&self, snapshot: &[u8]) -> Result<u64> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut f =
            write_new(&tmp, snapshot).with_context(|| format!("writing {}", tmp.display()))?;
        let mut disk = lock(&self.disk);
        let mut p = lock(&self.pending);
        let tail = p.since_snapshot.take().unwrap_or_default();
        f.write_all(&tail)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))?;
        // From here the new file is the journal whatever fails next (the old one has
        // no name any more): the writer appends to it through the handle that wrote
        // it, and every change appended so far is in it.
        let len = (snapshot.len() + tail.len()) as u64;
        *disk = Disk {
            file: f,
            len,
            torn: false,
            dir_unsynced: false,
        };
        self.size.store(len, std::sync::atomic::Ordering::Relaxed);
        p.buf.clear();
        p.generation += 1;
        let seq = p.seq;
        drop(p);
        let r = match self.sync_dir() {
            Ok(()) => {
                self.mark_synced(seq, None, false);
                Ok(len)
            }
            Err(e) => {
                // The changes only in the new file are not on disk until the rename
                // is: the next write syncs the directory first.
                disk.dir_unsynced = true;
                let first = lock(&self.synced).seq + 1;
                self.mark_synced(0, Some((first, format!("{e:#}"))), false);
                Err(e)
            }
        };
        drop(disk);
        r
    }
}

#[cfg(test)]
mod tests;
