//! The ban journal (`STATE_DIR/bans.journal`): every change to the bans, appended as
//! it is made, so that bans survive a reboot with their expiry.
//!
//! **Format.** An 8-byte header (`PSBANJ` and the version, `\x00\x01`), then records:
//!
//! ```text
//! crc32 (u32 LE) | length (u16 LE) | kind (u8) | payload (length bytes)
//! ```
//!
//! The CRC-32 (IEEE, the `crc32fast` crate) covers the length, the kind and the payload.
//! Kinds: [`PUT`] (a ban in force: the network and its fixed-size record, 48 bytes),
//! [`LIFT`] (a ban ended: the network, 18 bytes), [`COUNT`] (how many bans a network not
//! banned now has had: network and count), [`NAME`] (the name a banned host was logged
//! under: network and UTF-8 name). A network is its family (4 or 6), its prefix length
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
//! damaged file is kept aside (`bans.journal.damaged`) and a clean journal is written
//! from what was recovered.
//!
//! **Compaction.** When the file holds more than twice what the bans in force need (plus
//! 1 MiB), a snapshot of the store is written to a new file by a thread of its own, the
//! changes made meanwhile are appended to it, and it replaces the journal (rename, then
//! fsync of the directory). Appends and fsyncs go on during the snapshot's write.
//!
//! **Migration.** A `bans.json` from an earlier release is read on the first start that
//! finds no journal, written to a new journal, and renamed to `bans.json.migrated`.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;

use super::{Ban, BanStore, Rec, state};

/// The file's first bytes: a name and the format version.
pub const HEADER: [u8; 8] = *b"PSBANJ\x00\x01";
/// A ban in force.
pub const PUT: u8 = 1;
/// A ban ended.
pub const LIFT: u8 = 2;
/// The ban count of a network not banned now.
pub const COUNT: u8 = 3;
/// The name a banned host was logged under.
pub const NAME: u8 = 4;

/// Bytes before a record's payload: CRC, length, kind.
const FRAME: usize = 4 + 2 + 1;
const NET: usize = 18;
const PUT_PAYLOAD: usize = NET + 32;
/// The bytes one ban takes in the journal.
pub const PUT_SIZE: usize = FRAME + PUT_PAYLOAD;

pub fn path(state_dir: &Path) -> PathBuf {
    crate::paths::journal_file(state_dir)
}

// ---- the codec -------------------------------------------------------------------------

fn put_net(out: &mut Vec<u8>, net: &IpNet) {
    let mut addr = [0u8; 16];
    let family = match net.addr() {
        IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            addr = a.octets();
            6
        }
    };
    out.push(family);
    out.push(net.prefix_len());
    out.extend_from_slice(&addr);
}

fn get_net(b: &[u8]) -> Option<IpNet> {
    let addr: [u8; 16] = b.get(2..NET)?.try_into().ok()?;
    let net = match b[0] {
        4 => IpNet::new(
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
            b[1],
        ),
        6 => IpNet::new(IpAddr::V6(Ipv6Addr::from(addr)), b[1]),
        _ => return None,
    };
    net.ok()
}

fn frame(out: &mut Vec<u8>, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    payload(out);
    let len = u16::try_from(out.len() - start - FRAME).expect("a record's payload fits u16");
    out[start + 4..start + 6].copy_from_slice(&len.to_le_bytes());
    out[start + 6] = kind;
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn encode_rec(out: &mut Vec<u8>, net: &IpNet, r: &Rec) {
    frame(out, PUT, |o| {
        put_net(o, net);
        o.extend_from_slice(&r.since_ms.to_le_bytes());
        o.extend_from_slice(&r.expires_ms.to_le_bytes());
        o.extend_from_slice(&r.count.to_le_bytes());
        o.extend_from_slice(&r.escalated.to_le_bytes());
        o.extend_from_slice(&r.port.to_le_bytes());
        o.extend_from_slice(&[r.origin, r.scan_type, r.proto, r.mode]);
        o.extend_from_slice(&[0; 2]);
    });
}

/// Appends the record of `ban` in force.
pub fn encode_put(out: &mut Vec<u8>, ban: &Ban) {
    encode_rec(out, &ban.net, &Rec::of(ban));
}

/// Appends the record of the ban of `net` ended.
pub fn encode_lift(out: &mut Vec<u8>, net: &IpNet) {
    frame(out, LIFT, |o| put_net(o, net));
}

/// Appends the record of `net`'s ban count.
pub fn encode_count(out: &mut Vec<u8>, net: &IpNet, count: u32) {
    frame(out, COUNT, |o| {
        put_net(o, net);
        o.extend_from_slice(&count.to_le_bytes());
    });
}

/// Appends the record of the name `net` was logged under (cut to 255 bytes, at a
/// character boundary).
pub fn encode_name(out: &mut Vec<u8>, net: &IpNet, name: &str) {
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    frame(out, NAME, |o| {
        put_net(o, net);
        o.extend_from_slice(&name.as_bytes()[..end]);
    });
}

/// The whole store as records, after the header (a compacted journal).
pub fn encode_store(store: &BanStore) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER.len() + store.len() * PUT_SIZE);
    out.extend_from_slice(&HEADER);
    for (net, r) in store.records() {
        encode_rec(&mut out, net, r);
    }
    for (net, count) in store.previous() {
        encode_count(&mut out, net, *count);
    }
    for (net, name) in store.names() {
        encode_name(&mut out, net, name);
    }
    out
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Put(IpNet, Rec),
    Lift(IpNet),
    Count(IpNet, u32),
    Name(IpNet, Box<str>),
}

/// Why a replay stopped before the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The file ends inside a record (a crash during a write).
    Truncated { offset: u64 },
    /// A record's checksum does not match, or it does not decode.
    Corrupt { offset: u64, why: &'static str },
}

impl Damage {
    pub fn offset(&self) -> u64 {
        match self {
            Damage::Truncated { offset } | Damage::Corrupt { offset, .. } => *offset,
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Truncated { offset } => write!(f, "cut short at byte {offset}"),
            Damage::Corrupt { offset, why } => write!(f, "{why} at byte {offset}"),
        }
    }
}

fn decode_payload(kind: u8, p: &[u8]) -> Result<Record, &'static str> {
    let net = get_net(p).ok_or("an invalid network")?;
    let rest = &p[NET..];
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
    match kind {
        PUT if rest.len() == 32 => {
            let r = Rec {
                since_ms: u64_at(rest, 0),
                expires_ms: u64_at(rest, 8),
                count: u32_at(rest, 16),
                escalated: u32_at(rest, 20),
                port: u16::from_le_bytes([rest[24], rest[25]]),
                origin: rest[26],
                scan_type: rest[27],
                proto: rest[28],
                mode: rest[29],
            };
            if r.ban(net).is_none() {
                return Err("a ban record with an invalid field");
            }
            Ok(Record::Put(net, r))
        }
        LIFT if rest.is_empty() => Ok(Record::Lift(net)),
        COUNT if rest.len() == 4 => Ok(Record::Count(net, u32_at(rest, 0))),
        NAME => std::str::from_utf8(rest)
            .map(|s| Record::Name(net, s.into()))
            .map_err(|_| "a name that is not UTF-8"),
        PUT | LIFT | COUNT => Err("a record of the wrong length"),
        _ => Err("an unknown record kind"),
    }
}

/// Reads records from `r` (after the header) into `each`, until the end or the first
/// damaged record; the bytes of intact records read (header included) and the damage,
/// if any.
pub fn replay(
    r: &mut impl Read,
    mut each: impl FnMut(Record),
) -> io::Result<(u64, Option<Damage>)> {
    let mut header = [0u8; HEADER.len()];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        // An empty file: created, nothing written yet.
        return Ok((0, None));
    }
    if got < HEADER.len() {
        return Ok((0, Some(Damage::Truncated { offset: 0 })));
    }
    if header != HEADER {
        return Ok((
            0,
            Some(Damage::Corrupt {
                offset: 0,
                why: "not a portsentry ban journal (header)",
            }),
        ));
    }
    let mut offset = HEADER.len() as u64;
    let mut buf = vec![0u8; FRAME + usize::from(u16::MAX)];
    loop {
        let got = read_full(r, &mut buf[..FRAME])?;
        if got == 0 {
            return Ok((offset, None));
        }
        if got < FRAME {
            return Ok((offset, Some(Damage::Truncated { offset })));
        }
        let crc = u32::from_le_bytes(buf[0..4].try_into().expect("4"));
        let len = usize::from(u16::from_le_bytes([buf[4], buf[5]]));
        let kind = buf[6];
        let got = read_full(r, &mut buf[FRAME..FRAME + len])?;
        if got < len {
            return Ok((offset, Some(Damage::Truncated { offset })));
        }
        if crc32fast::hash(&buf[4..FRAME + len]) != crc {
            return Ok((
                offset,
                Some(Damage::Corrupt {
                    offset,
                    why: "a checksum mismatch",
                }),
            ));
        }
        match decode_payload(kind, &buf[FRAME..FRAME + len]) {
            Ok(rec) => each(rec),
            Err(why) => return Ok((offset, Some(Damage::Corrupt { offset, why }))),
        }
        offset += (FRAME + len) as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Builds the store from records in journal order: the last word on each network wins
/// (sorted by network, then by position, so the tree is built in one pass).
#[derive(Default)]
struct Rebuild {
    ops: Vec<(IpNet, u32, Op)>,
    names: Vec<(IpNet, u32, Box<str>)>,
    seq: u32,
}

#[derive(Clone, Copy)]
enum Op {
    Put(Rec),
    Lift,
    Count(u32),
}

impl Rebuild {
    fn add(&mut self, r: Record) {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        match r {
            Record::Put(n, rec) => self.ops.push((n, seq, Op::Put(rec))),
            Record::Lift(n) => self.ops.push((n, seq, Op::Lift)),
            Record::Count(n, c) => self.ops.push((n, seq, Op::Count(c))),
            Record::Name(n, s) => self.names.push((n, seq, s)),
        }
    }

    fn finish(mut self) -> BanStore {
        self.ops.sort_unstable_by_key(|(n, s, _)| (*n, *s));
        let mut bans: Vec<(IpNet, Rec)> = Vec::with_capacity(self.ops.len());
        let mut previous = HashMap::new();
        let mut puts_at: HashMap<IpNet, u32> = HashMap::new();
        let mut i = 0;
        while i < self.ops.len() {
            let net = self.ops[i].0;
            let (mut cur, mut prev, mut put_seq) = (None::<Rec>, 0u32, 0u32);
            while i < self.ops.len() && self.ops[i].0 == net {
                match self.ops[i].2 {
                    Op::Put(r) => {
                        cur = Some(r);
                        prev = 0;
                        put_seq = self.ops[i].1;
                    }
                    Op::Lift => {
                        if let Some(r) = cur.take() {
                            prev = prev.max(r.count);
                        }
                    }
                    Op::Count(c) => prev = prev.max(c),
                }
                i += 1;
            }
            match cur {
                Some(r) => {
                    if prev > r.count {
                        previous.insert(net, prev);
                    }
                    if !self.names.is_empty() {
                        puts_at.insert(net, put_seq);
                    }
                    bans.push((net, r));
                }
                None if prev > 0 => {
                    previous.insert(net, prev);
                }
                None => {}
            }
        }
        drop(self.ops);
        // A name belongs to the ban it followed (a later ban of the network has none
        // until its own name record).
        let mut names = HashMap::new();
        for (net, seq, name) in self.names {
            if puts_at.get(&net).is_some_and(|p| *p < seq) {
                names.insert(net, name);
            }
        }
        BanStore::from_sorted(bans, previous, names)
    }
}

/// What reading a journal found.
#[derive(Debug)]
pub struct Recovered {
    pub store: BanStore,
    /// Bytes of intact records (header included).
    pub intact: u64,
    pub damage: Option<Damage>,
}

/// Reads the journal at `path` (no change to it); `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Recovered>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut rebuild = Rebuild::default();
    let (intact, damage) = replay(&mut BufReader::with_capacity(1 << 20, file), |r| {
        rebuild.add(r)
    })
    .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(Recovered {
        store: rebuild.finish(),
        intact,
        damage,
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
}

struct Disk {
    file: File,
    /// Bytes of the file that hold whole records.
    len: u64,
}

struct Inner {
    path: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
    synced: Mutex<Synced>,
    done: Condvar,
    disk: Mutex<Disk>,
    compacting: Mutex<bool>,
    /// Successful fsyncs of appended changes (the bench reports bans per fsync).
    fsyncs: std::sync::atomic::AtomicU64,
    /// The async side of `synced.seq`.
    synced_watch: tokio::sync::watch::Sender<u64>,
}

/// The ban journal: appends, the writer thread, compaction. Cloning shares it.
#[derive(Clone)]
pub struct Journal(Arc<Inner>);

/// What opening the journal did, for the log.
#[derive(Debug, Default)]
pub struct Opened {
    /// Damage found at the end of the journal (its intact part was kept).
    pub damage: Option<(PathBuf, Damage)>,
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
            out.push(format!(
                "portsentry: the ban journal {} is damaged ({d}): the bans recorded before \
                 byte {} were recovered, the rest is lost; the damaged file was kept as \
                 {}.damaged",
                file.display(),
                d.offset(),
                file.display()
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

/// Writes `bytes` to `path` as a new file and fsyncs it.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(f)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens the journal in `state_dir` for appending, recovering its bans: a damaged
    /// tail is set aside (logged by the caller from [`Opened::report`]), an old
    /// `bans.json` migrated. Starts the writer thread.
    pub fn open(state_dir: &Path) -> Result<(Journal, BanStore, Opened)> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let path = path(state_dir);
        let t = Instant::now();
        let mut opened = Opened::default();
        let (store, rewrite) = match read(&path)? {
            Some(r) => {
                opened.bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                let rewrite = r.damage.is_some() || r.intact == 0;
                if let Some(d) = r.damage {
                    let aside = PathBuf::from(format!("{}.damaged", path.display()));
                    fs::copy(&path, &aside)
                        .with_context(|| format!("keeping {} aside", path.display()))?;
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
            sync_dir(state_dir).with_context(|| format!("syncing {}", state_dir.display()))?;
        }
        // The journal is on disk before the old file goes aside.
        if let Some(to) = &opened.migrated {
            fs::rename(state::json_path(state_dir), to)
                .with_context(|| format!("renaming the old state file to {}", to.display()))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
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
            }),
            done: Condvar::new(),
            disk: Mutex::new(Disk { file, len }),
            compacting: Mutex::new(false),
            fsyncs: 0.into(),
            synced_watch: tx,
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
        self.0.wake.notify_one();
        seq
    }

    pub fn put(&self, ban: &Ban) -> u64 {
        self.append(|o| encode_put(o, ban))
    }

    pub fn lift(&self, net: &IpNet) -> u64 {
        self.append(|o| encode_lift(o, net))
    }

    pub fn name(&self, net: &IpNet, name: &str) -> u64 {
        self.append(|o| encode_name(o, net, name))
    }

    /// The number of the last change appended.
    pub fn last(&self) -> u64 {
        lock(&self.0.pending).seq
    }

    /// Waits until change `seq` (and every one before it) is on disk; an error when
    /// writing it failed.
    pub fn wait(&self, seq: u64) -> Result<()> {
        let mut s = lock(&self.0.synced);
        loop {
            if s.seq >= seq {
                return Ok(());
            }
            if let Some((from, e)) = &s.error
                && *from <= seq
            {
                bail!("writing {}: {e}", self.0.path.display());
            }
            s = self.0.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// [`Journal::wait`] for async code.
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
        lock(&self.0.disk).len
    }

    /// Whether the file holds more than twice what `store` needs, plus 1 MiB, and no
    /// compaction runs.
    pub fn wants_compaction(&self, store: &BanStore) -> bool {
        let need = (store.len() + store.previous_len()) * PUT_SIZE;
        self.bytes() > 2 * need as u64 + (1 << 20) && !*lock(&self.0.compacting)
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
            let good = disk.len;
            let r = disk
                .file
                .write_all(&batch)
                .and_then(|()| disk.file.sync_data());
            match r {
                Ok(()) => {
                    disk.len += batch.len() as u64;
                    self.fsyncs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(disk);
                    self.mark_synced(seq, None);
                }
                Err(e) => {
                    // Never append after a record that may be cut short: back to the
                    // last whole record, the batch kept for the next try.
                    let _ = disk.file.set_len(good);
                    drop(disk);
                    {
                        let mut p = lock(&self.pending);
                        let mut again = batch;
                        again.extend_from_slice(&p.buf);
                        p.buf = again;
                    }
                    let first = lock(&self.synced).seq + 1;
                    self.mark_synced(0, Some((first, e.to_string())));
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn mark_synced(&self, seq: u64, error: Option<(u64, String)>) {
        let mut s = lock(&self.synced);
        s.seq = s.seq.max(seq);
        s.error = error;
        let now = s.seq;
        drop(s);
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
        if let Some(dir) = self.path.parent() {
            sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        let len = (snapshot.len() + tail.len()) as u64;
        *disk = Disk { file, len };
        // Every change appended so far is in the new file.
        p.buf.clear();
        p.generation += 1;
        let seq = p.seq;
        drop(p);
        drop(disk);
        self.mark_synced(seq, None);
        Ok(len)
    }
}

#[cfg(test)]
mod tests;
