//! Map names and the layout of every key and value. Names are at most 15 bytes (the
//! kernel's object name limit) and are used verbatim by both sides.

use core::mem::size_of;

use bytemuck::{Pod, Zeroable};

use crate::Addr;

/// Exact-address bans. `HashMap<Addr, BanEntry>`.
pub const BANS: &str = "PS_BANS";
/// A blocked Bloom filter over the exact bans: `Array<u64>` of [`BAN_FILTER_WORDS`]
/// words; an address whose word lacks one of its bits ([`ban_filter_place`]) is not in
/// `PS_BANS`, so the common case (not banned) costs one inlined array read instead of a
/// hash lookup. Userspace sets a ban's bits before it inserts the ban and clears each
/// when no ban left uses it.
pub const BAN_FILTER: &str = "PS_BAN_FILTER";
/// A set-associative cache of exact bans: `Array<BanSet>` ([`BanSet`]) of
/// [`ban_cache_sets`] sets for MAX_BANS, made with `BPF_F_MMAPABLE` (so that each set
/// is one cache line), indexed by the low bits of [`ban_filter_bit`]. A banned source
/// found in its set is dropped with two inlined array reads and no hash lookup; a ban
/// whose set is full is only in `PS_BANS` (and found there). It holds the exact bans
/// `PS_BAN_TAGS` does not (IPv6, a full bucket's, the program's own until the daemon
/// takes them over).
pub const BAN_CACHE: &str = "PS_BAN_CACHE";
/// The IPv4 exact bans in two bytes each: `Array<BanTags>`
/// ([`crate::ban_tags::BanTags`]) of [`crate::ban_tags::ban_tag_buckets`] buckets for
/// MAX_BANS, made with `BPF_F_MMAPABLE`. Looked at after the filter and before the
/// cache: a tag found is a ban (4 MiB at a million bans, where the cache is 32).
pub const BAN_TAGS: &str = "PS_BAN_TAGS";
/// Prefix bans. `LpmTrie<Addr, BanEntry>` (key: prefix length in bits over the 128-bit
/// form, IPv4 prefixes + 96).
pub const BAN_NETS: &str = "PS_BAN_NETS";
/// The range bans of the lengths `PS_BAN_NET_LENS` lists, also in a hash:
/// `HashMap<NetKey, BanEntry>` ([`crate::ban_nets`]), sized as `PS_BAN_NETS`.
pub const BAN_NET_HASH: &str = "PS_BAN_NET_HASH";
/// Which lengths `PS_BAN_NET_HASH` holds: `Array<NetLens>` of one entry
/// ([`crate::ban_nets::NetLens`]).
pub const BAN_NET_LENS: &str = "PS_BAN_NET_LENS";
/// Ignored networks. `LpmTrie<Addr, u32>` (value unused, 1).
pub const IGNORE: &str = "PS_IGNORE";
/// A one-hash filter in front of `PS_IGNORE`: `Array<u64>` of [`IGNORE_FILTER_WORDS`]
/// words, one bit per IPv4 /24 or IPv6 /48 that a network of the trie (ignored, or
/// counted by address) touches ([`net_filter_bit`]). A banned source whose bit is clear
/// is in no ignored network and is dropped without a trie lookup; a probe's source is
/// counted without one. Networks too wide to list
/// (shorter than /8 for IPv4, /32 for IPv6, or covering the IPv4-mapped range) set
/// [`SETTING_IGNORE_WIDE`] instead, and every banned packet then looks at the trie.
pub const IGNORE_FILTER: &str = "PS_IGN_FILTER";
/// The same kind of filter in front of `PS_BAN_NETS`: `Array<u64>` of
/// [`IGNORE_FILTER_WORDS`] words, one bit per IPv4 /24 or IPv6 /48 that a range ban
/// touches ([`net_filter_bit`]). A source whose bit is clear is in no banned range, and
/// the trie is not looked at; so a packet does not pay a lookup in a trie of 100,000
/// ranges. A range too wide to list sets [`SETTING_PREFIX_BANS_WIDE`] instead, and every
/// packet then looks at the trie (as every packet did before the filter).
pub const NET_FILTER: &str = "PS_NET_FILTER";
/// This host's own addresses, as a one-hash filter: `Array<u64>` of
/// [`LOCAL_FILTER_WORDS`] words, one bit per address of this host's interfaces
/// ([`local_filter_bit`]). With [`SETTING_LOCAL_DST`] a probe whose destination's bit is
/// clear is for another host (forwarded by this one as a router, bridged to a virtual
/// machine, or seen by an interface in promiscuous mode): this host answers none of
/// them, so it is not counted.
pub const LOCAL_FILTER: &str = "PS_LOCAL_FILTER";
/// Watched-port bitmap. `Array<u64>` with [`PORT_WORDS`] entries: TCP in words
/// `0..1024`, UDP in `1024..2048`; port `p` is bit `p % 64` of word `p / 64` of its half.
pub const PORTS: &str = "PS_PORTS";
/// The ACK-class bitmap: `Array<u64>` of [`ACK_PORT_WORDS`] words, TCP ports laid out as
/// in `PS_PORTS`. A port's bit is set when it is watched and no socket of this host
/// listens on it (the daemon refreshes it): a segment with ACK to such a port is looked
/// up, and counted as a probe when it belongs to no socket. Empty when ACK_SCAN_PORTS is
/// 0.
pub const ACK_PORTS: &str = "PS_ACK_PORTS";
/// IP protocols nothing on this host serves: `Array<u64>` of [`PROTOCOL_WORDS`] words, one
/// bit per protocol number, IPv4's [`PROTOCOL_FAMILY_WORDS`] words first, then IPv6's (the
/// kernel's handlers are of one family: an IPv4 datagram of an IPv6 extension header's
/// number, or an IPv6 one of ICMP's, is answered). A unicast datagram of such a protocol
/// (the kernel answers it with an ICMP error) is a probe of type `IpProto`. The daemon
/// writes every protocol but the family's own (IPv4: ICMP, IGMP, TCP, UDP, UDP-Lite;
/// IPv6: TCP, UDP, ICMPv6, UDP-Lite, the extension headers and No Next Header), those a
/// loaded module handles and those a raw socket is open for; empty when
/// PROTO_SCAN_PROTOCOLS is 0.
pub const PROTOCOLS: &str = "PS_PROTOCOLS";
/// Per-source probe tracking: `Array<SourceSet>`, a set-associative table
/// ([`crate::sources`]).
pub const SOURCES: &str = "PS_SOURCES";
/// Probe events. Ring buffer of [`ScanEvent`] records.
pub const EVENTS: &str = "PS_EVENTS";
/// Counters. `PerCpuArray<u64>` indexed by [`crate::Counter`].
pub const COUNTERS: &str = "PS_COUNTERS";
/// Runtime settings. `Array<Settings>` with one entry.
pub const SETTINGS: &str = "PS_SETTINGS";
/// Per-CPU event budget (token bucket). `PerCpuArray<EventBudget>` with one entry.
pub const EVENT_BUDGET: &str = "PS_EV_BUDGET";
/// The kernel-side ban's settings and its MAX_BANS_PER_SEC budget. `Array<KernelBan>`
/// with two entries, shared by every CPU: [`KBAN_PROGRAM`], the settings and the bans the
/// program made this second; [`KBAN_DAEMON`], the bans the daemon made this second
/// (only `second` and `used`): one budget for both.
pub const KBAN: &str = "PS_KBAN";
pub const KBAN_PROGRAM: u32 = 0;
pub const KBAN_DAEMON: u32 = 1;
/// Which TCP ports may have a socket of this host, so that a probe of a port with none
/// skips the socket lookup (the most costly step of a probe): `Array<u64>` of
/// [`TCP_SOCKET_WORDS`] words, ports laid out as in `PS_PORTS`. Words `0..1024` are the
/// daemon's: the ports with a listening socket at its last look, and the ports of every
/// TCP socket when the hooks were attached. Words [`TCP_BOUND_WORD_BASE`]`..` are the
/// hooks' (`ps_tcp_bind4`, `ps_tcp_bind6`, `ps_tcp_listen`): every port a bind of a
/// stream socket asked for, and every listener's, since the map was made, never
/// cleared. The program trusts the bitmap only while `PS_TCP_LISTENS` says that no bind
/// or listen happened since the daemon's last look.
pub const TCP_SOCKETS: &str = "PS_TCP_SOCKETS";
/// Binds and listens seen by the hooks, against the daemon's last look at the
/// listeners: `Array<u64>` of two entries. [`TCP_LISTENS_SEEN`] is counted up by the
/// hooks at each bind of a stream socket (before the kernel takes the port) and each
/// TCP listen (once the listener is in place); [`TCP_LISTENS_MARK`] is written by the
/// daemon after each look at the listeners: the count it read before the look, plus
/// one (0: no look yet). The program skips the socket lookup only when the mark is the
/// count plus one.
/// The program's stages: `ProgramArray` with one entry, [`PROBE_STAGE`], the probe
/// stage (`ps_probe`), which the first program tail-calls with a probe. Userspace puts
/// it there before it attaches the first.
pub const PROGS: &str = "PS_PROGS";
pub const PROBE_STAGE: u32 = 0;
/// What the first program hands the probe stage: `PerCpuArray` with one entry (its
/// layout is the program's own business).
pub const PROBE: &str = "PS_PROBE";
/// The coarse clock as each CPU last read it, so that it is read once per tick:
/// `PerCpuArray` with one entry (its layout is the program's own business).
pub const CLOCK: &str = "PS_CLOCK";
pub const TCP_LISTENS: &str = "PS_TCP_LISTENS";
pub const TCP_LISTENS_SEEN: u32 = 0;
pub const TCP_LISTENS_MARK: u32 = 1;
/// Words in `PS_TCP_SOCKETS`: the daemon's 1024, then the hooks' 1024.
pub const TCP_SOCKET_WORDS: u32 = 2048;
pub const TCP_BOUND_WORD_BASE: u32 = 1024;

/// Every map name, for pinning and clean-up.
pub const ALL: [&str; 25] = [
    BANS,
    BAN_FILTER,
    BAN_CACHE,
    BAN_TAGS,
    BAN_NETS,
    BAN_NET_HASH,
    BAN_NET_LENS,
    IGNORE,
    IGNORE_FILTER,
    NET_FILTER,
    LOCAL_FILTER,
    PORTS,
    ACK_PORTS,
    PROTOCOLS,
    SOURCES,
    EVENTS,
    COUNTERS,
    SETTINGS,
    EVENT_BUDGET,
    KBAN,
    TCP_SOCKETS,
    TCP_LISTENS,
    PROGS,
    PROBE,
    CLOCK,
];

/// Default sizes (the daemon may override them at load time).
pub const BANS_MAX: u32 = 1 << 20;
pub const BAN_NETS_MAX: u32 = 1 << 16;
pub const IGNORE_MAX: u32 = 1 << 14;
pub const SOURCES_MAX: u32 = 1 << 20;
pub const EVENTS_BYTES: u32 = 1 << 20;
/// log2 of the bits in `PS_BAN_FILTER` (2^24 bits, 2 MiB: about 0.8% false positives,
/// each costing a cache set and a hash lookup, with a million bans: [`ban_filter_place`]).
pub const BAN_FILTER_BITS: u32 = 24;
pub const BAN_FILTER_WORDS: u32 = 1 << (BAN_FILTER_BITS - 6);

/// Bans per `PS_BAN_CACHE` set: three addresses and how long each ban lasts fit one
/// cache line.
pub const BAN_CACHE_WAYS: usize = 3;
/// Fewest and most sets in `PS_BAN_CACHE` (8 and 256 MiB).
pub const BAN_CACHE_MIN_SETS: u32 = 1 << 17;
pub const BAN_CACHE_MAX_SETS: u32 = 1 << 22;

/// The sets of `PS_BAN_CACHE` for MAX_BANS `bans`: a power of two, room for one and a
/// half times as many bans (with a million IPv6 bans, about nine in ten are in the
/// cache; the rest are found in the hash), within [`BAN_CACHE_MIN_SETS`] and
/// [`BAN_CACHE_MAX_SETS`].
pub const fn ban_cache_sets(bans: u32) -> u32 {
    let sets = (bans as u64).next_power_of_two() / 2;
    if sets < BAN_CACHE_MIN_SETS as u64 {
        BAN_CACHE_MIN_SETS
    } else if sets > BAN_CACHE_MAX_SETS as u64 {
        BAN_CACHE_MAX_SETS
    } else {
        sets as u32
    }
}

/// The `PS_BAN_CACHE` set of an address in a cache of `sets` sets (a power of two).
#[inline(always)]
pub const fn ban_cache_set(addr: &crate::packet::AddrWords, sets: u32) -> u32 {
    ban_filter_bit(addr) & (sets - 1)
}

/// `Settings::flags` bits 9 to 13: log2 of `PS_BAN_CACHE`'s sets, which the daemon
/// writes from the map it loaded ([`ban_cache_mask`]). 0 (not written yet): every
/// source is looked for in set 0, and found in the hash.
pub const SETTING_BAN_CACHE_SHIFT: u32 = 9;

/// The mask that gives an address's set from its [`ban_filter_bit`], by `flags`.
#[inline(always)]
pub const fn ban_cache_mask(flags: u32) -> u32 {
    ((1u64 << ((flags >> SETTING_BAN_CACHE_SHIFT) & 31)) - 1) as u32
}

/// `flags` with `sets` (a power of two) as `PS_BAN_CACHE`'s sets.
pub const fn with_ban_cache_sets(flags: u32, sets: u32) -> u32 {
    (flags & !(31 << SETTING_BAN_CACHE_SHIFT)) | (sets.trailing_zeros() << SETTING_BAN_CACHE_SHIFT)
}

/// [`BanSet::until`] of a ban that never expires.
pub const BAN_CACHE_FOREVER: u32 = u32::MAX;
/// The unit of [`BanSet::until`]: 2^30 ns, about a second.
pub const BAN_CACHE_UNIT_SHIFT: u32 = 30;

/// A value of `PS_BAN_CACHE`: up to [`BAN_CACHE_WAYS`] bans of sources of one set.
/// Host byte order except `addrs` (memory order words).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BanSet {
    pub addrs: [crate::packet::AddrWords; BAN_CACHE_WAYS],
    /// Until when each way's ban is surely active ([`cache_until`]); 0: the way is free
    /// (an all-zero address is a real source: `::`).
    pub until: [u32; BAN_CACHE_WAYS],
    pub _pad: u32,
}
const _: () = assert!(size_of::<BanSet>() == 64);

/// A ban's [`BanSet::until`] for its `expires_ns` (0: never): whole units of 2^30 ns,
/// rounded down, so that the cache never says a ban lasts longer than it does (in its
/// last second the hash is asked). 0 when the ban ends within the first unit after
/// boot: not cached.
#[inline(always)]
pub const fn cache_until(expires_ns: u64) -> u32 {
    if expires_ns == 0 {
        return BAN_CACHE_FOREVER;
    }
    let units = expires_ns >> BAN_CACHE_UNIT_SHIFT;
    if units >= BAN_CACHE_FOREVER as u64 {
        BAN_CACHE_FOREVER - 1
    } else {
        units as u32
    }
}

impl BanSet {
    /// The way holding a ban of `addr`, if any.
    #[inline(always)]
    pub fn find(&self, addr: &crate::packet::AddrWords) -> Option<usize> {
        // Written out: a loop costs the verifier more than three compares.
        if self.until[0] != 0 && self.addrs[0][0] == addr[0] && self.addrs[0][1] == addr[1] {
            Some(0)
        } else if self.until[1] != 0 && self.addrs[1][0] == addr[0] && self.addrs[1][1] == addr[1] {
            Some(1)
        } else if self.until[2] != 0 && self.addrs[2][0] == addr[0] && self.addrs[2][1] == addr[1] {
            Some(2)
        } else {
            None
        }
    }

    /// [`BanSet::until`] of `addr`'s ban: 0 when the set holds none.
    #[inline(always)]
    pub fn until_of(&self, addr: &crate::packet::AddrWords) -> u32 {
        match self.find(addr) {
            Some(way) => self.until.get(way).copied().unwrap_or(0),
            None => 0,
        }
    }

    /// True when the set holds a ban of `addr` surely active at `now_ns`.
    #[inline(always)]
    pub fn holds_active(&self, addr: &crate::packet::AddrWords, now_ns: u64) -> bool {
        match self.until_of(addr) {
            0 => false,
            BAN_CACHE_FOREVER => true,
            until => now_ns < (until as u64) << BAN_CACHE_UNIT_SHIFT,
        }
    }

    /// A free way, if any.
    #[inline(always)]
    pub fn free_way(&self) -> Option<usize> {
        if self.until[0] == 0 {
            Some(0)
        } else if self.until[1] == 0 {
            Some(1)
        } else if self.until[2] == 0 {
            Some(2)
        } else {
            None
        }
    }

    /// Puts a ban of `addr` ending at `expires_ns` in its way, or a free one; a ban the
    /// cache cannot hold ([`cache_until`] 0) takes `addr`'s way back. False when nothing
    /// changed (also when the set is full).
    pub fn place(&mut self, addr: &crate::packet::AddrWords, expires_ns: u64) -> bool {
        let until = cache_until(expires_ns);
        let Some(way) = self.find(addr).or_else(|| self.free_way()) else {
            return false;
        };
        if until == 0 {
            return self.remove(addr);
        }
        if self.until[way] == until && self.addrs[way] == *addr {
            return false;
        }
        self.addrs[way] = *addr;
        self.until[way] = until;
        true
    }

    /// Frees the way of `addr`; false when it had none.
    pub fn remove(&mut self, addr: &crate::packet::AddrWords) -> bool {
        match self.find(addr) {
            Some(way) => {
                self.until[way] = 0;
                self.addrs[way] = [0; 2];
                true
            }
            None => false,
        }
    }
}

/// Where an exact ban sits in `PS_BAN_FILTER`: one word, and [`BAN_FILTER_HASHES`] bits
/// of it (a blocked Bloom filter: one memory read, fewer false positives than one bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanFilterPlace {
    /// The address's first bit in the filter: its word is `bit >> 6`, and its low bits
    /// give its `PS_BAN_CACHE` set ([`ban_cache_set`]).
    pub bit: u32,
    /// The bits of that word the ban sets (`1 << (bit & 63)` among them; two of them
    /// may be one). An address whose word lacks any of them is not banned exactly.
    pub mask: u64,
}

/// Bits a ban sets in its `PS_BAN_FILTER` word. A program of an earlier release looks
/// at the first alone, which every filter of this one also sets.
pub const BAN_FILTER_HASHES: u32 = 3;

impl BanFilterPlace {
    /// The word of `PS_BAN_FILTER` that holds the bits.
    #[inline(always)]
    pub const fn word(&self) -> u32 {
        self.bit >> 6
    }

    /// The bits as positions in the whole filter (each once), for counting their users.
    pub fn bits(&self) -> impl Iterator<Item = u32> {
        let (base, mut mask) = (self.word() << 6, self.mask);
        core::iter::from_fn(move || {
            let b = mask.trailing_zeros();
            mask &= mask.wrapping_sub(1);
            (b < 64).then_some(base | b)
        })
    }
}

/// An address's place in `PS_BAN_FILTER`: a multiplicative hash of its two words gives
/// the word and the first bit, a second multiplication the other two bits. With a
/// million bans, about 0.8% of other addresses find all three bits set (6.2% found
/// their one bit before, 13.9% for addresses as regular as consecutive ones); each such
/// false positive costs a packet a cache set and a hash lookup.
#[inline(always)]
pub const fn ban_filter_place(addr: &crate::packet::AddrWords) -> BanFilterPlace {
    let x = addr[0] ^ addr[1] ^ (addr[1] >> 29);
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let bit = (h >> (64 - BAN_FILTER_BITS)) as u32;
    let g = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    BanFilterPlace {
        bit,
        mask: 1 << (bit & 63) | 1 << (g >> 58) | 1 << ((g >> 52) & 63),
    }
}

/// The first `PS_BAN_FILTER` bit of an address ([`BanFilterPlace::bit`]).
#[inline(always)]
pub const fn ban_filter_bit(addr: &crate::packet::AddrWords) -> u32 {
    ban_filter_place(addr).bit
}

/// log2 of the bits in `PS_IGN_FILTER` and `PS_NET_FILTER` (2^20 bits, 128 KiB each).
pub const IGNORE_FILTER_BITS: u32 = 20;
pub const IGNORE_FILTER_WORDS: u32 = 1 << (IGNORE_FILTER_BITS - 6);

/// log2 of the bits in `PS_LOCAL_FILTER` (2^16 bits, 8 KiB: with a hundred addresses,
/// about one other host's address in 650 shares a bit with one of them, and is counted).
pub const LOCAL_FILTER_BITS: u32 = 16;
pub const LOCAL_FILTER_WORDS: u32 = 1 << (LOCAL_FILTER_BITS - 6);

/// The `PS_LOCAL_FILTER` bit of an address, as the packet holds it (IPv4 mapped).
#[inline(always)]
pub const fn local_filter_bit(addr: &crate::packet::AddrWords) -> u32 {
    (fmix64(addr[0].rotate_left(29) ^ addr[1]) >> (64 - LOCAL_FILTER_BITS)) as u32
}

/// The IPv4-mapped prefix `::ffff:0:0/96` as the low word of [`crate::packet::AddrWords`]
/// holds it (bytes 8 to 11 of the address, in memory order).
const V4_MAPPED_WORD_LOW: u64 = 0xffff_0000;

/// The `PS_IGN_FILTER` and `PS_NET_FILTER` bit of an address: a hash of its /24 (IPv4,
/// held mapped) or /48 (IPv6). Both sides compute it from the address as the packet
/// holds it.
#[inline(always)]
pub const fn net_filter_bit(addr: &crate::packet::AddrWords) -> u32 {
    let v4 = addr[0] == 0 && addr[1] & 0xffff_ffff == V4_MAPPED_WORD_LOW;
    let x = if v4 {
        // Bytes 12-14 (the /24) sit in bits 32-55 of the second word.
        ((addr[1] >> 32) & 0x00ff_ffff) | 1 << 62
    } else {
        // Bytes 0-5 (the /48) sit in bits 0-47 of the first word.
        addr[0] & 0x0000_ffff_ffff_ffff
    };
    // Neighbouring networks land far apart (a bare multiplication keeps the structure
    // of consecutive /24s).
    (fmix64(x) >> (64 - IGNORE_FILTER_BITS)) as u32
}

/// MurmurHash3's 64-bit finalizer: every input bit moves about half the output bits.
#[inline(always)]
pub const fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Words in the watched-port bitmap: 1024 per protocol.
pub const PORT_WORDS: u32 = 2048;
/// First bitmap word of the UDP half.
pub const UDP_PORT_WORD_BASE: u32 = 1024;
/// Words in `PS_ACK_PORTS` (TCP only).
pub const ACK_PORT_WORDS: u32 = 1024;
/// Words of one family in `PS_PROTOCOLS` (256 protocols).
pub const PROTOCOL_FAMILY_WORDS: u32 = 4;
/// Words in `PS_PROTOCOLS`: IPv4's, then IPv6's.
pub const PROTOCOL_WORDS: u32 = 2 * PROTOCOL_FAMILY_WORDS;

/// Value of `PS_BANS` and `PS_BAN_NETS`. Only `expires_ns` is read by the kernel; the rest
/// describes the ban for `status` and survives daemon restarts with the pinned map.
///
/// Host byte order for every field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BanEntry {
    /// CLOCK_MONOTONIC nanoseconds after which the ban no longer applies; 0 = permanent.
    pub expires_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds when the ban was made.
    pub since_ns: u64,
    /// Destination port of the probe that caused the ban (0 for a manual ban).
    pub port: u16,
    /// `ScanType as u8` of that probe, 0 for a manual ban.
    pub scan_type: u8,
    /// [`BanOrigin`] as u8.
    pub origin: u8,
    /// How many times this source has been banned (repeat offenders).
    pub count: u32,
}
const _: () = assert!(size_of::<BanEntry>() == 24);

/// Why a ban exists.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanOrigin {
    /// Made by the daemon after a scan.
    Scan = 1,
    /// Made by an operator (`portsentry ban`).
    Manual = 2,
    /// Made by the XDP program itself, at the probe that reached the trigger; the daemon
    /// has not responded to it yet (its response rewrites the entry as [`BanOrigin::Scan`]).
    Kernel = 3,
    /// A decision of a CrowdSec Local API the daemon streams (a fleet's or a list's
    /// ban); the kernel holds it like any other ban.
    CrowdSec = 4,
}

/// What one source has done (a way of a `PS_SOURCES` set). Host byte order; timestamps are
/// CLOCK_MONOTONIC nanoseconds. Updated without locks, so counts are approximate under
/// concurrent packets from the same source on several CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SourceStats {
    pub first_ns: u64,
    pub last_ns: u64,
    /// Probes counted.
    pub hits: u32,
    /// Distinct destination ports, estimated with `port_filter` (exact while small,
    /// an undercount once ports collide in the 256-bit filter; saturates at 256): the
    /// failed first contacts of the Threshold Random Walk.
    pub distinct_ports: u32,
    /// Events delivered to userspace for this source (at most `EVENT_BURST + 34`: the
    /// burst, the powers of two, and the first of each protocol).
    pub events: u16,
    /// SCAN_DETECTION="trw": first contacts of this source that reached a listener (a
    /// TCP SYN to a port with a socket), each port once with `port_filter`, held so
    /// that the walk never goes under its benign bound ([`crate::trw::Walk`]). Once
    /// the high half of a `u32 events`: a map pinned by an earlier release reads the
    /// same (its events stayed far below 65536) with no successes.
    pub successes: u16,
    pub last_port: u16,
    /// `ScanType as u8` of the last probe.
    pub last_scan_type: u8,
    /// `SOURCE_*` bits.
    pub flags: u8,
    /// 256-bit filter of the destination ports seen.
    pub port_filter: [u64; 4],
}
const _: () = assert!(size_of::<SourceStats>() == 64);

/// A probe event from the ring buffer. Host byte order except `addr` (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ScanEvent {
    pub addr: Addr,
    /// CLOCK_MONOTONIC nanoseconds of the probe.
    pub ts_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds of the source's first counted probe.
    pub first_ns: u64,
    /// The source's probe count including this probe.
    pub hits: u32,
    pub distinct_ports: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// `ScanType as u8`.
    pub scan_type: u8,
    /// Raw TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Interface index the probe arrived on.
    pub ifindex: u32,
    /// `EVENT_*` bits.
    pub flags: u32,
    /// `SourceStats::successes` (0 unless SCAN_DETECTION="trw").
    pub successes: u32,
}
const _: () = assert!(size_of::<ScanEvent>() == 56);

/// The one entry of `PS_KBAN`: how the program bans a source itself, and the budget it
/// takes that ban from. Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KernelBan {
    /// How long a ban the program makes lasts (BAN_TIME; 0 = permanent). The daemon
    /// gives repeat offenders their longer ban when it responds.
    pub ban_ns: u64,
    /// SCAN_WINDOW (0 = none): hits spread over longer are the daemon's to judge.
    pub window_ns: u64,
    /// MAX_BANS_PER_SEC (0 = unlimited): bans the program may make per second; a source
    /// over it is left to the daemon's waiting queue.
    pub per_sec: u64,
    /// Wall clock minus CLOCK_MONOTONIC, so that the budget's seconds are the wall
    /// clock's (the daemon's, and those of the bans' `since` times).
    pub wall_offset_ns: u64,
    /// The second (Unix time) `used` counts.
    pub second: u64,
    /// Bans made in `second` (by the program in the first entry, by the daemon in the
    /// second).
    pub used: u64,
}
const _: () = assert!(size_of::<KernelBan>() == 48);

/// `ScanEvent::flags`: the source answered the SYN-ACK challenge (an ACK carrying the
/// cookie): its address is real, not forged.
pub const EVENT_VERIFIED: u32 = 1;
/// `ScanEvent::flags`: the program banned the source at this probe (the kernel-side ban:
/// the probe and every later packet are dropped; the daemon responds to the ban).
pub const EVENT_KERNEL_BANNED: u32 = 2;
/// `ScanEvent::flags`: `addr` is the source's network (`SOURCE_PREFIX_V6`), not one
/// address: the program counts and bans IPv6 sources by prefix.
pub const EVENT_PREFIX: u32 = 4;
/// `SourceStats::flags`: the source has answered the challenge.
pub const SOURCE_VERIFIED: u8 = 1;
/// `SourceStats::flags`: the source's key is its network (`SOURCE_PREFIX_V6`).
pub const SOURCE_PREFIX: u8 = 2;
/// `SourceStats::flags`: an event of a TCP probe (any type but UDP) was sent for the
/// source. The first probe of each protocol past the trigger is reported whatever
/// `EVENT_BURST` left: the daemon acts on each protocol's scan, as PortSentry does (a
/// host only reported for its UDP scan is banned for its TCP one).
pub const SOURCE_EVENT_TCP: u8 = 4;
/// `SourceStats::flags`: an event of a UDP probe was sent for the source.
pub const SOURCE_EVENT_UDP: u8 = 8;

/// The `SOURCE_EVENT_*` bit of a probe of `scan_type`.
#[inline(always)]
pub const fn source_event_bit(scan_type: crate::ScanType) -> u8 {
    if scan_type.is_tcp() {
        SOURCE_EVENT_TCP
    } else {
        SOURCE_EVENT_UDP
    }
}

/// The one entry of `PS_SETTINGS`. Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Settings {
    /// Hits from one source before its probes are reported (SCAN_TRIGGER, at least 1).
    pub event_trigger: u32,
    /// Events each CPU may send per second (token bucket refill rate); 0 = unlimited.
    pub events_per_sec: u32,
    /// Bucket size: the burst a CPU may send at once.
    pub event_burst: u32,
    /// `SETTING_*` bits.
    pub flags: u32,
    /// Secret for the challenge cookies (random per daemon start).
    pub cookie_secret: u64,
    /// The Threshold Random Walk's steps and bounds (read under [`SETTING_TRW`]). Added
    /// after the release whose value was 24 bytes: a pinned map of that shape is
    /// replaced at the next load, its 24 bytes carried over.
    pub trw: crate::trw::Walk,
}
const _: () = assert!(size_of::<Settings>() == 40);

/// `Settings::flags`: `PS_BAN_NETS` holds at least one entry, so look it up.
pub const SETTING_PREFIX_BANS: u32 = 1 << 0;
/// `Settings::flags`: `PS_IGNORE` holds at least one entry, so look it up.
pub const SETTING_IGNORE: u32 = 1 << 1;
/// `Settings::flags`: source verification (VERIFY_SOURCES): SYN probes are answered
/// with a SYN-ACK carrying a cookie, and only a source whose ACK returns it is verified.
pub const SETTING_VERIFY: u32 = 1 << 2;
/// `Settings::flags`: `PS_IGNORE` holds a network too wide for `PS_IGN_FILTER`: a
/// banned packet always looks at the trie.
pub const SETTING_IGNORE_WIDE: u32 = 1 << 3;
/// `Settings::flags`: the program bans a TCP source itself at the probe that reaches the
/// trigger (BLOCK_TCP=1 and KILL_RUN_CMD_FIRST=0), within `PS_KBAN`'s budget.
pub const SETTING_KBAN_TCP: u32 = 1 << 4;
/// `Settings::flags`: the same for UDP (BLOCK_UDP=1 and KILL_RUN_CMD_FIRST=0).
pub const SETTING_KBAN_UDP: u32 = 1 << 5;

/// `Settings::flags`: BLOCK_EVASIVE_PACKETS: shapes with no legitimate use that would
/// hide a probe are dropped (a tiny first fragment, an IPv6 extension-header chain longer
/// than the program walks); without it they are passed (a tiny fragment counted first).
pub const SETTING_DROP_EVASIVE: u32 = 1 << 6;
/// `Settings::flags`: `PS_BAN_NETS` holds a range too wide for `PS_NET_FILTER` (shorter
/// than /8 for IPv4, /32 for IPv6): every packet looks at the trie.
pub const SETTING_PREFIX_BANS_WIDE: u32 = 1 << 7;

/// `Settings::flags`: SCAN_DETECTION="trw": a SYN, FIN, NULL, XMAS or UDP probe reaches
/// the trigger when the source's Threshold Random Walk does (`Settings::trw`), and a SYN
/// to a listener from a source with a record counts as its success.
pub const SETTING_TRW: u32 = 1 << 8;

/// `Settings::flags`: `PS_LOCAL_FILTER` holds every address this host answers on, so
/// a probe to an address whose bit is clear is another host's and not counted. Clear
/// (the settings of a release without it, before the daemon has read the routes, or
/// when a local route covers more than one address: `ip route add local
/// 192.0.2.0/24 dev lo`): every destination is taken as this host's.
pub const SETTING_LOCAL_DST: u32 = 1 << 14;

/// `Settings::flags` bits 16 to 23: ACK_SCAN_PORTS (at most 255) for the program's own
/// ban of the ACK class ([`Settings::ban_spread`]). 0 (ACK_SCAN_PORTS="0", or the
/// settings of a release without it): the program never bans the ACK class.
pub const SETTING_ACK_PORTS_SHIFT: u32 = 16;

impl Settings {
    /// The distinct ports a source must have probed before the program bans it at a
    /// probe of `kind`: ACK_SCAN_PORTS for the ACK class (`u32::MAX`, never, when 0), 1
    /// for the other types (their first probe may do).
    #[inline(always)]
    pub fn ban_spread(&self, kind: crate::ScanType) -> u32 {
        if !kind.is_ack_class() {
            return 1;
        }
        match (self.flags >> SETTING_ACK_PORTS_SHIFT) & 0xff {
            0 => u32::MAX,
            n => n,
        }
    }
}

/// `Settings::flags` bits 24 to 31: the prefix length an IPv6 source is counted and
/// banned by (SOURCE_PREFIX_V6): its key in `PS_SOURCES` and `PS_BANS` is that network's
/// address. 0 (the settings of a release without it) and 128: each address on its own.
pub const SETTING_V6_PREFIX_SHIFT: u32 = 24;

/// The IPv6 prefix length in `flags`, or `None` when sources are single addresses.
#[inline(always)]
pub const fn v6_source_prefix(flags: u32) -> Option<u32> {
    match flags >> SETTING_V6_PREFIX_SHIFT {
        0 | 128.. => None,
        p => Some(p),
    }
}

/// `PS_IGNORE` value of an ignored network.
pub const IGNORE_IGNORED: u32 = 1;
/// `PS_IGNORE` value of a `SOURCE_PREFIX_V6` network that holds an ignored address or
/// one of this host's: not ignored, but its sources are counted and banned one address
/// at a time, so that no prefix ban covers what must stay reachable.
pub const IGNORE_SINGLE: u32 = 2;

/// The challenge cookie of a connection attempt: a keyed hash of its addresses and
/// ports and a time slot of about 69 s (a cookie is accepted in its slot and the next).
#[inline(always)]
pub const fn cookie(
    src: &crate::packet::AddrWords,
    dst: &crate::packet::AddrWords,
    sport: u16,
    dport: u16,
    secret: u64,
    slot: u64,
) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut x = secret ^ slot.wrapping_mul(K);
    let words = [
        src[0],
        src[1],
        dst[0],
        dst[1],
        ((sport as u64) << 16) | dport as u64,
    ];
    let mut i = 0;
    while i < words.len() {
        x = (x ^ words[i]).wrapping_mul(K);
        x ^= x >> 29;
        i += 1;
    }
    (x >> 32) as u32
}

/// The cookie time slot of a CLOCK_MONOTONIC time.
#[inline(always)]
pub const fn cookie_slot(now_ns: u64) -> u64 {
    now_ns >> 36
}

/// Probes after the trigger for which every one is reported; after that only the
/// probes whose hit count is a power of two are. This bounds the events per source to
/// `EVENT_BURST + 32`, and two more: the first probe of each protocol past the trigger
/// (`SOURCE_EVENT_TCP`, `SOURCE_EVENT_UDP`).
pub const EVENT_BURST: u32 = 8;

/// Events of a source with fewer hits than this spend the per-CPU event budget; a
/// source that has probed this often has shown persistence (a spoofed flood seldom
/// repeats a source address), and its events, still bounded per source, bypass the
/// budget, so a real scanner is reported even while a flood spends the budget.
pub const EVENT_BUDGET_HITS: u32 = 3;

/// The one entry of `PS_EV_BUDGET`, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EventBudget {
    /// Tokens left, times 1e9 (so refills need no division).
    pub tokens_ns: u64,
    /// CLOCK_MONOTONIC of the last refill.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<EventBudget>() == 16);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all are repr(C) with no padding and no invalid bit patterns (bytemuck::Pod).
    unsafe impl aya::Pod for BanEntry {}
    unsafe impl aya::Pod for SourceStats {}
    unsafe impl aya::Pod for crate::sources::SourceSet {}
    unsafe impl aya::Pod for ScanEvent {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for BanSet {}
    unsafe impl aya::Pod for crate::ban_tags::BanTags {}
    unsafe impl aya::Pod for crate::ban_nets::NetKey {}
    unsafe impl aya::Pod for crate::ban_nets::NetLens {}
    unsafe impl aya::Pod for KernelBan {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;
    use crate::packet::AddrWords;

    /// An IPv4 address as the program keys it (mapped, memory-order words).
    fn v4(a: u32) -> AddrWords {
        [0, 0xffff_0000 | u64::from(a.swap_bytes()) << 32]
    }

    /// The share of `queries` a filter of `bans` lets through (in thousandths).
    fn false_positives(bans: impl Iterator<Item = u32>, queries: &[u32]) -> usize {
        let mut words = vec![0u64; BAN_FILTER_WORDS as usize];
        for a in bans {
            let p = ban_filter_place(&v4(a));
            words[p.word() as usize] |= p.mask;
        }
        let hits = queries
            .iter()
            .filter(|a| {
                let p = ban_filter_place(&v4(**a));
                words[p.word() as usize] & p.mask == p.mask
            })
            .count();
        hits * 1000 / queries.len()
    }

    #[test]
    fn a_place_holds_its_first_bit_and_at_most_three() {
        for i in 0..10_000u32 {
            let p = ban_filter_place(&v4(0x0a00_0000 + i * 7919));
            assert_eq!(p.bit, ban_filter_bit(&v4(0x0a00_0000 + i * 7919)));
            assert!(p.word() < BAN_FILTER_WORDS);
            assert_ne!(p.mask & 1 << (p.bit & 63), 0, "an earlier release's bit");
            assert!((1..=BAN_FILTER_HASHES).contains(&p.mask.count_ones()));
            let bits: Vec<u32> = p.bits().collect();
            assert_eq!(bits.len() as u32, p.mask.count_ones());
            assert!(bits.iter().all(|b| b >> 6 == p.word()));
            assert!(bits.contains(&p.bit));
        }
    }

    /// A million bans let about 1% of other sources through the filter, for addresses
    /// as regular as consecutive ones (one bit per ban let 13.9% through) as for random
    /// ones (6.2%).
    #[test]
    fn a_million_bans_let_few_others_through() {
        let n = 1u32 << 20;
        let others: Vec<u32> = (0..n / 4).map(|i| 0x1400_0000 + i).collect();
        let consecutive = false_positives((0..n).map(|i| 0x0100_0000 + i), &others);
        assert!(consecutive <= 16, "{consecutive}/1000");
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32
        };
        let bans: Vec<u32> = (0..n).map(|_| next()).collect();
        let others: Vec<u32> = (0..n / 4).map(|_| next()).collect();
        let random = false_positives(bans.into_iter(), &others);
        assert!(random <= 11, "{random}/1000");
    }
}
