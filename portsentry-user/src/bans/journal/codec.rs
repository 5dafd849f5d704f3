//! The journal's format: records encoded, replayed, checked, and the store rebuilt
//! from them (the layout is in the [module's documentation](super)).

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use crate::bans::{Ban, BanStore, Rec};

/// The file's first bytes: a name and the format version. Version 2 added [`UNDO`]
/// and [`UNDONE`]: a release that reads version 1 only refuses it, rather than read
/// them as damage and drop the records after them.
pub const HEADER: [u8; 8] = *b"PSBANJ\x00\x02";
/// The first format's header (no [`UNDO`] or [`UNDONE`] records): read, and rewritten in
/// the current format at a start ([`super::Journal::open`]).
pub(super) const HEADER_V1: [u8; 8] = *b"PSBANJ\x00\x01";
/// A ban in force.
pub const PUT: u8 = 1;
/// A ban ended.
pub const LIFT: u8 = 2;
/// The ban count of a network not banned now.
pub const COUNT: u8 = 3;
/// The name a banned host was logged under.
pub const NAME: u8 = 4;
/// A lifted ban whose undo steps (UNKILL_*) have not all run yet: its record, as a
/// put's. Only that: the lift is a record of its own, appended with it.
pub const UNDO: u8 = 5;
/// The undo steps of a ban ([`UNDO`]) have run: its network and since (ms).
pub const UNDONE: u8 = 6;
/// The kill commands of a ban put with [`Rec::KILLS_DUE`] have run: its network and
/// since (ms).
pub const KILLED: u8 = 7;

/// Bytes before a record's payload: CRC, length, kind.
pub(super) const FRAME: usize = 4 + 2 + 1;
pub(super) const NET: usize = 18;
const PUT_PAYLOAD: usize = NET + 32;
/// The bytes one ban takes in the journal.
pub const PUT_SIZE: usize = FRAME + PUT_PAYLOAD;

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

fn encode_rec(out: &mut Vec<u8>, kind: u8, net: &IpNet, r: &Rec) {
    frame(out, kind, |o| {
        put_net(o, net);
        o.extend_from_slice(&r.since_ms.to_le_bytes());
        o.extend_from_slice(&r.expires_ms.to_le_bytes());
        o.extend_from_slice(&r.count.to_le_bytes());
        o.extend_from_slice(&r.escalated.to_le_bytes());
        o.extend_from_slice(&r.port.to_le_bytes());
        o.extend_from_slice(&[r.origin, r.scan_type, r.proto, r.mode, r.flags, 0]);
    });
}

/// Appends the record of `ban` in force.
pub fn encode_put(out: &mut Vec<u8>, ban: &Ban) {
    encode_rec(out, PUT, &ban.net, &Rec::of(ban));
}

/// Appends the record of `rec`, the ban of `net` in force (with its flags).
pub fn encode_put_rec(out: &mut Vec<u8>, net: &IpNet, rec: &Rec) {
    encode_rec(out, PUT, net, rec);
}

/// Appends the record of the kill commands of the ban of `net` made at `since_ms` run.
pub fn encode_killed(out: &mut Vec<u8>, net: &IpNet, since_ms: u64) {
    frame(out, KILLED, |o| {
        put_net(o, net);
        o.extend_from_slice(&since_ms.to_le_bytes());
    });
}

/// Appends the record of `ban`'s undo steps not yet run.
pub fn encode_undo(out: &mut Vec<u8>, ban: &Ban) {
    encode_rec(out, UNDO, &ban.net, &Rec::of(ban));
}

/// Appends the record of the undo steps of the ban of `net` made at `since_ms` run.
pub fn encode_undone(out: &mut Vec<u8>, net: &IpNet, since_ms: u64) {
    frame(out, UNDONE, |o| {
        put_net(o, net);
        o.extend_from_slice(&since_ms.to_le_bytes());
    });
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
        encode_rec(&mut out, PUT, net, r);
    }
    for (net, count) in store.previous() {
        encode_count(&mut out, net, *count);
    }
    for (net, name) in store.names() {
        encode_name(&mut out, net, name);
    }
    for (net, r) in store.undo_records() {
        encode_rec(&mut out, UNDO, net, r);
    }
    out
}

/// A ban journal of a format version this release does not read (a newer release's,
/// read after a downgrade). Not damage: its records may all be sound, so it is not read
/// at all, rather than read as a journal with no bans. [`replay`] returns it inside an
/// `InvalidData` error. (A header that is not ours at all, zeroed by a crash, say, is
/// damage at byte 0.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub version: u16,
}

/// The bytes of the header before the version.
const MAGIC: usize = 6;

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "is a ban journal of format version {}, which this release does not read (it \
             reads version {}; a newer release wrote it?); its bans are not read and the \
             file is left as it is: run a release that reads it, or move it away to start \
             without its bans",
            self.version,
            u16::from_be_bytes([HEADER[MAGIC], HEADER[MAGIC + 1]])
        )
    }
}

impl std::error::Error for Unreadable {}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Put(IpNet, Rec),
    Lift(IpNet),
    Count(IpNet, u32),
    Name(IpNet, Box<str>),
    Undo(IpNet, Rec),
    /// The network and since (ms) of a ban whose undo steps have run.
    Undone(IpNet, u64),
    /// The network and since (ms) of a ban whose kill commands have run.
    Killed(IpNet, u64),
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
        PUT | UNDO if rest.len() == 32 => {
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
                flags: rest[30],
            };
            if !r.is_valid() {
                return Err("a ban record with an invalid field");
            }
            Ok(if kind == PUT {
                Record::Put(net, r)
            } else {
                Record::Undo(net, r)
            })
        }
        LIFT if rest.is_empty() => Ok(Record::Lift(net)),
        COUNT if rest.len() == 4 => Ok(Record::Count(net, u32_at(rest, 0))),
        UNDONE if rest.len() == 8 => Ok(Record::Undone(net, u64_at(rest, 0))),
        KILLED if rest.len() == 8 => Ok(Record::Killed(net, u64_at(rest, 0))),
        NAME => std::str::from_utf8(rest)
            .map(|s| Record::Name(net, s.into()))
            .map_err(|_| "a name that is not UTF-8"),
        PUT | LIFT | COUNT | UNDO | UNDONE | KILLED => Err("a record of the wrong length"),
        _ => Err("an unknown record kind"),
    }
}

/// Reads records from `r` (after the header) into `each`, until the end or the first
/// damaged record; the bytes of intact records read (header included) and the damage,
/// if any. A header this release does not read is an `InvalidData` error holding an
/// [`Unreadable`].
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
    if header[..MAGIC] != HEADER[..MAGIC] {
        return Ok((
            0,
            Some(Damage::Corrupt {
                offset: 0,
                why: "not a portsentry ban journal (header)",
            }),
        ));
    }
    if header != HEADER && header != HEADER_V1 {
        let version = u16::from_be_bytes([header[MAGIC], header[MAGIC + 1]]);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            Unreadable { version },
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
///
/// The puts at the start of the file, each of a network after the one before and
/// before any other record (a compacted journal's), are kept as they are, in the form the store is built from;
/// the records from the first that breaks that order on (the changes appended since)
/// are sorted and merged in. A million bans of a compacted journal are then neither
/// copied nor sorted (a tenth of a second of a start, most of it new memory's page
/// faults).
#[derive(Default)]
pub(super) struct Rebuild {
    /// The puts before any other record, in increasing order of networks; a put's
    /// position in the file is its index here.
    prefix: Vec<(IpNet, Rec)>,
    ops: Vec<(IpNet, u32, Op)>,
    names: Vec<(IpNet, u32, Box<str>)>,
    /// The lifted bans whose undo steps have not run, by network and since: applied in
    /// file order as they come (they take no part in the fold, nor in `seq`).
    undos: BTreeMap<(IpNet, u64), Rec>,
    seq: u32,
    /// Every record goes to `ops` (the tests' reference).
    #[cfg(test)]
    no_prefix: bool,
}

#[derive(Clone, Copy)]
enum Op {
    Put(Rec),
    Lift,
    Count(u32),
    /// The kill commands of the ban made at this since (ms) have run.
    Killed(u64),
}

/// One network's records folded: its ban in force, the count its next ban starts
/// from, and the position of the first put since its last lift (where its name
/// belongs).
#[derive(Default)]
struct Fold {
    cur: Option<Rec>,
    prev: u32,
    put_seq: u32,
}

impl Fold {
    fn apply(&mut self, seq: u32, op: Op) {
        match op {
            Op::Put(r) => {
                // A put over a ban in force (an extended decision, a ban made again)
                // keeps its name, as the daemon does: the name belongs to the puts since
                // the last lift.
                if self.cur.is_none() {
                    self.put_seq = seq;
                }
                // A CrowdSec decision's ban is not counted, as in `BanStore::insert` and
                // `remove`.
                if !r.is_crowdsec() {
                    self.prev = 0;
                }
                self.cur = Some(r);
            }
            Op::Lift => {
                if let Some(r) = self.cur.take()
                    && !r.is_crowdsec()
                {
                    self.prev = self.prev.max(r.count);
                }
            }
            Op::Count(c) => self.prev = self.prev.max(c),
            Op::Killed(since) => {
                if let Some(r) = &mut self.cur
                    && r.since_ms == since
                {
                    r.flags &= !Rec::KILLS_DUE;
                }
            }
        }
    }
}

impl Rebuild {
    /// A rebuild with room for a prefix of `puts` bans (a journal's size over a put's:
    /// the most it may hold).
    pub(super) fn with_room_for(puts: usize) -> Self {
        Rebuild {
            prefix: Vec::with_capacity(puts),
            ..Rebuild::default()
        }
    }

    /// A rebuild that keeps no prefix: every record sorted and merged.
    #[cfg(test)]
    pub(super) fn without_prefix() -> Self {
        Rebuild {
            no_prefix: true,
            ..Rebuild::default()
        }
    }

    pub(super) fn add(&mut self, r: Record) {
        let r = match r {
            Record::Undo(n, rec) => {
                self.undos.insert((n, rec.since_ms), rec);
                return;
            }
            Record::Undone(n, since) => {
                self.undos.remove(&(n, since));
                return;
            }
            r => r,
        };
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        // Until any other record: a put's index in the prefix is then its position.
        let prefix_open = self.ops.is_empty() && self.names.is_empty();
        #[cfg(test)]
        let prefix_open = prefix_open && !self.no_prefix;
        match r {
            Record::Put(n, rec)
                if prefix_open && self.prefix.last().is_none_or(|(last, _)| *last < n) =>
            {
                self.prefix.push((n, rec));
            }
            Record::Put(n, rec) => self.ops.push((n, seq, Op::Put(rec))),
            Record::Lift(n) => self.ops.push((n, seq, Op::Lift)),
            Record::Count(n, c) => self.ops.push((n, seq, Op::Count(c))),
            Record::Killed(n, since) => self.ops.push((n, seq, Op::Killed(since))),
            Record::Name(n, s) => self.names.push((n, seq, s)),
            Record::Undo(..) | Record::Undone(..) => unreachable!("taken above"),
        }
    }

    pub(super) fn finish(mut self) -> BanStore {
        let mut previous = HashMap::new();
        // Where each network's name belongs: the first put since its last lift.
        let mut puts_at: HashMap<IpNet, u32> = HashMap::new();
        let prefix_only = self.ops.is_empty();
        let bans = if prefix_only {
            // The prefix alone: one put of each network, in force as it is.
            std::mem::take(&mut self.prefix)
        } else {
            self.ops.sort_unstable_by_key(|(n, s, _)| (*n, *s));
            let mut bans: Vec<(IpNet, Rec)> =
                Vec::with_capacity(self.prefix.len() + self.ops.len());
            let mut prefix = std::mem::take(&mut self.prefix).into_iter().zip(0u32..);
            let mut next_put = prefix.next();
            let mut i = 0;
            loop {
                let net = match (&next_put, self.ops.get(i)) {
                    (Some(((a, _), _)), Some((b, _, _))) => *a.min(b),
                    (Some(((a, _), _)), None) => *a,
                    (None, Some((b, _, _))) => *b,
                    (None, None) => break,
                };
                let mut f = Fold::default();
                if let Some(((n, r), seq)) = next_put
                    && n == net
                {
                    f.apply(seq, Op::Put(r));
                    next_put = prefix.next();
                }
                while let Some((n, seq, op)) = self.ops.get(i)
                    && *n == net
                {
                    f.apply(*seq, *op);
                    i += 1;
                }
                match f.cur {
                    Some(r) => {
                        // A CrowdSec decision's ban holds no count of its own.
                        let held = if r.is_crowdsec() { 0 } else { r.count };
                        if f.prev > held {
                            previous.insert(net, f.prev);
                        }
                        if !self.names.is_empty() {
                            puts_at.insert(net, f.put_seq);
                        }
                        bans.push((net, r));
                    }
                    None if f.prev > 0 => {
                        previous.insert(net, f.prev);
                    }
                    None => {}
                }
            }
            bans
        };
        drop(self.ops);
        // A name belongs to the ban it followed, and to the puts over it (a ban of the
        // network after a lift has none until its own name record). With the prefix
        // alone, a ban's put is its place in it.
        let put_of = |net: &IpNet| {
            if prefix_only {
                let i = bans.binary_search_by(|(n, _)| n.cmp(net)).ok()?;
                Some(i as u32)
            } else {
                puts_at.get(net).copied()
            }
        };
        let mut names = HashMap::new();
        for (net, seq, name) in std::mem::take(&mut self.names) {
            if put_of(&net).is_some_and(|p| p < seq) {
                names.insert(net, name);
            }
        }
        let mut store = BanStore::from_sorted(bans, previous, names);
        // An undo whose ban is in force, the same ban (its since): its lift was cut
        // off the file's end (appended together, torn apart by a crash). The ban
        // stands, and nothing is undone.
        for ((net, since), rec) in std::mem::take(&mut self.undos) {
            if store.record(&net).is_none_or(|r| r.since_ms != since) {
                store.add_undo_record(net, rec);
            }
        }
        store
    }
}
