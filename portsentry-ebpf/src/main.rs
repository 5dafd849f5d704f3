//! The portsentry XDP program.
//!
//! Per packet, in this order (each step only when the previous did not decide):
//! 1. parse Ethernet, up to two VLAN tags and the IP header (fail open: what cannot be
//!    parsed is passed and counted, but three VLAN tags with a priority tag among them,
//!    which the kernel strips, or an IPv6 first fragment cut inside its header chain,
//!    are dropped with BLOCK_EVASIVE_PACKETS); every header access goes through
//!    `frame.rs`;
//! 2. ban check (`bans.rs`): the exact hash by the source's key (an IPv6 source's
//!    network address under SOURCE_PREFIX_V6, else the address: its filter word, then
//!    an IPv4 source's tag, the cache and the hash), then the prefix trie
//!    when it holds anything and the range filter lets the address through; an active
//!    ban drops the packet (any protocol, whatever its transport header), an expired one
//!    is ignored. An IPv6 source is checked once its transport header is read (step 3),
//!    before anything acts on that header: the verifier then walks the check once for
//!    all of IPv6's extension chains (see `inspect`);
//! 3. TCP/UDP header; non-first fragments, other protocols and TCP with RST are passed
//!    with no further lookup; an over-long IPv6 header chain is dropped
//!    (BLOCK_EVASIVE_PACKETS);
//! 4. the watched-port bitmap (one inlined array access, `probe.rs`); a segment with
//!    ACK looks at the ACK-class bitmap instead (watched ports no socket listens on);
//!
//! A probe (a packet steps 1 to 4 did not decide) goes on to the probe stage, a program
//! of its own (`stage.rs`, tail-called), for steps 5 to 7. So does, with
//! VERIFY_SOURCES, a pure ACK to a watched port: the stage first checks whether it
//! answers a challenge (`challenge.rs`), and if not treats it as steps 3 and 4 did.
//!
//! 5. a probe sent to a group (a multicast or broadcast frame or address), or to an
//!    address that is not this host's (`PS_LOCAL_FILTER`: forwarded, bridged, or seen
//!    in promiscuous mode), is passed: this host answers none (`stage.rs`); then the
//!    ignore trie (only when it holds
//!    anything): an ignored source is passed; a
//!    source in a network that holds an ignored address is counted by its address
//!    (a datagram of an IP protocol nothing here serves, `PS_PROTOCOLS`, comes here
//!    from step 3 and is then counted with no socket lookup);
//! 6. a socket lookup (`socket.rs`): a port a local socket owns is never a scan target
//!    (under SCAN_DETECTION="trw" a SYN to it, watched or not, is a success of a source
//!    that has a record: `probe::record_success`). A TCP segment without ACK is looked
//!    up only when its port may have a socket (`PS_TCP_SOCKETS`, kept exact by the
//!    hooks in `tcp_binds.rs` and the daemon's look at the listeners);
//! 7. the probe is counted per source and, within bounds, reported to userspace
//!    (`probe.rs`); with VERIFY_SOURCES a SYN is answered with a challenge.
//!
//! A tiny first fragment (a transport header split across fragments) is classified like
//! any probe, then dropped under BLOCK_EVASIVE_PACKETS whatever the steps decided.
//!
//! Every reason a packet is passed unclassified, and why the kernel would not answer
//! it, is listed in docs/detection.md ("What is passed unseen"). `PS_SETTINGS` is read
//! once per program and passed down. Every packet increments exactly one verdict-reason
//! counter.
#![no_std]
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod atomic;
mod bans;
mod challenge;
mod clock;
mod frame;
mod probe;
mod socket;
mod sources;
mod stage;
mod tcp_binds;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, xdp_action},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use portsentry_common::{
    Addr, Counter, PROTO_TCP, ScanType,
    ban_nets::{NetKey, NetLens},
    ban_tags::{BAN_TAG_MIN_SHIFT, BanTags},
    maps::{
        ACK_PORT_WORDS, BAN_CACHE_MIN_SETS, BAN_FILTER_WORDS, BAN_NETS_MAX, BANS_MAX, BanEntry,
        BanSet, EVENTS_BYTES, EventBudget, IGNORE_FILTER_WORDS, IGNORE_MAX, IGNORE_SINGLE,
        KernelBan, LOCAL_FILTER_WORDS, PORT_WORDS, PROTOCOL_WORDS, SETTING_DROP_EVASIVE,
        SETTING_IGNORE, SETTING_IGNORE_WIDE, SETTING_TRW, SETTING_VERIFY, SOURCES_MAX, Settings,
        TCP_SOCKET_WORDS, net_filter_bit, v6_source_prefix,
    },
    packet::{AddrWords, EthHdr, Ip, L4, Packet, parse_ip, parse_l4_into, prefix_words, scan_type},
    scan::tcp_flags::{ACK, RST},
    sources::{SourceSet, source_entries},
};

use crate::{
    bans::is_banned,
    challenge::may_answer_challenge,
    frame::XdpPacket,
    probe::{is_ack_watched, is_first_contact, is_watched},
};

// Userspace finds the maps by these names (`portsentry_common::maps`).
#[map]
static PS_BANS: HashMap<Addr, BanEntry> = HashMap::with_max_entries(BANS_MAX, BPF_F_NO_PREALLOC);
#[map]
static PS_BAN_FILTER: Array<u64> = Array::with_max_entries(BAN_FILTER_WORDS, BPF_F_MMAPABLE);
#[map]
static PS_BAN_CACHE: Array<BanSet> = Array::with_max_entries(BAN_CACHE_MIN_SETS, BPF_F_MMAPABLE);
#[map]
static PS_BAN_TAGS: Array<BanTags> =
    Array::with_max_entries(1 << BAN_TAG_MIN_SHIFT, BPF_F_MMAPABLE);
#[map]
static PS_BAN_NETS: LpmTrie<Addr, BanEntry> = LpmTrie::with_max_entries(BAN_NETS_MAX, 0);
#[map]
static PS_BAN_NET_HASH: HashMap<NetKey, BanEntry> =
    HashMap::with_max_entries(BAN_NETS_MAX, BPF_F_NO_PREALLOC);
#[map]
static PS_BAN_NET_LENS: Array<NetLens> = Array::with_max_entries(1, 0);
#[map]
static PS_IGNORE: LpmTrie<Addr, u32> = LpmTrie::with_max_entries(IGNORE_MAX, 0);
#[map]
static PS_IGN_FILTER: Array<u64> = Array::with_max_entries(IGNORE_FILTER_WORDS, 0);
#[map]
static PS_NET_FILTER: Array<u64> = Array::with_max_entries(IGNORE_FILTER_WORDS, 0);
#[map]
static PS_LOCAL_FILTER: Array<u64> = Array::with_max_entries(LOCAL_FILTER_WORDS, 0);
#[map]
static PS_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);
#[map]
static PS_ACK_PORTS: Array<u64> = Array::with_max_entries(ACK_PORT_WORDS, 0);
#[map]
static PS_PROTOCOLS: Array<u64> = Array::with_max_entries(PROTOCOL_WORDS, 0);
#[map]
static PS_SOURCES: Array<SourceSet> =
    Array::with_max_entries(source_entries(SOURCES_MAX), BPF_F_MMAPABLE);
#[map]
static PS_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
static PS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
#[map]
static PS_SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
#[map]
static PS_KBAN: Array<KernelBan> = Array::with_max_entries(2, 0);
#[map]
static PS_TCP_SOCKETS: Array<u64> = Array::with_max_entries(TCP_SOCKET_WORDS, 0);
#[map]
static PS_TCP_LISTENS: Array<u64> = Array::with_max_entries(2, 0);
#[map]
static PS_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static PS_PROBE: PerCpuArray<stage::Handed> = PerCpuArray::with_max_entries(1, 0);
#[map]
static PS_EV_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);
#[map]
static PS_CLOCK: PerCpuArray<clock::Tick> = PerCpuArray::with_max_entries(1, 0);

// `inline(always)` reaches the function the macro wraps: a program with a BPF-to-BPF
// call may not tail-call without BTF, and the compiler stops inlining a body this large.
#[xdp]
#[inline(always)]
pub fn portsentry(ctx: XdpContext) -> u32 {
    verdict(inspect(&ctx))
}

/// The probe stage (steps 5 to 7), a program of its own that the first tail-calls
/// (`PS_PROGS`), with what it found in `PS_PROBE`: the verifier walks it once, not once
/// for every shape of header the first program parses.
#[xdp]
pub fn ps_probe(ctx: XdpContext) -> u32 {
    verdict(stage::probe(&ctx))
}

/// Counts the verdict reason and returns its action.
#[inline(always)]
fn verdict(reason: Counter) -> u32 {
    // A segment of a connection is not counted (`Counter::is_counted`): the increment
    // was a fifth of its cost.
    if reason == Counter::PassNotProbe {
        return xdp_action::XDP_PASS;
    }
    count(reason);
    match reason {
        Counter::DropBanned | Counter::DropTinyFragment | Counter::DropHeaderChain => {
            xdp_action::XDP_DROP
        }
        Counter::TxChallenge => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

/// The verdict reason for one packet.
#[inline(always)]
fn inspect(ctx: &XdpContext) -> Counter {
    let pkt = XdpPacket(ctx);
    let defaults = Settings::default();
    let ip = match parse_ip(&pkt) {
        Ok(ip) => ip,
        // A priority tag among three VLAN tags (`packet::tag_past_the_walk`) or an IPv6
        // first fragment cut inside its header chain (`packet::cut_chain`): dropped
        // before the ban check, which needs the IP header.
        Err(Counter::PassHeaderChain)
            if settings_or(&defaults).flags & SETTING_DROP_EVASIVE != 0 =>
        {
            return Counter::DropHeaderChain;
        }
        Err(reason) => return reason,
    };
    let settings = settings_or(&defaults);
    // IPv6 sources are counted and banned by network (SOURCE_PREFIX_V6): `key` is the
    // source's network address, or the source itself.
    let prefix = if ip.v6 {
        v6_source_prefix(settings.flags)
    } else {
        None
    };
    let key = match prefix {
        Some(p) => prefix_words(&ip.src, p),
        None => ip.src,
    };
    // The ban check drops a banned source's packet whatever its transport header says.
    // An IPv4 source is checked before that header is read (the banned path is then the
    // shortest); an IPv6 source after it. Once the transport header is read the parser's
    // offsets are dead (the challenge parses the frame again), so the verifier walks
    // what follows once for all the shapes that parse alike (VLAN tags, IPv6 extension
    // chains) instead of once per shape: checked there, the ban check of IPv6's many
    // chains is walked a few times, not once per chain (half the first program's
    // verification, for about 2 ns more on an IPv6 ban; BENCHMARKS.md).
    let early = !ip.v6;
    if early && let Some(drop) = ban_verdict(&key, &ip.src, settings) {
        return drop;
    }
    let mut l4 = L4::of_protocol(ip.proto);
    // Whether the ban check is done.
    let checked = match parse_l4_into(&pkt, &ip, &mut l4) {
        Ok(()) => early,
        Err(reason) => {
            if !early && let Some(drop) = ban_verdict(&key, &ip.src, settings) {
                return drop;
            }
            match reason {
                Counter::PassHeaderChain if settings.flags & SETTING_DROP_EVASIVE != 0 => {
                    return Counter::DropHeaderChain;
                }
                // `l4` holds the protocol as a probe of it.
                Counter::PassOtherProto if is_protocol_probe(&pkt, &ip) => true,
                reason => return reason,
            }
        }
    };
    if !checked && let Some(drop) = ban_verdict(&key, &ip.src, settings) {
        return drop;
    }
    let verdict = inspect_l4(ctx, &ip, &l4, &key, prefix, settings);
    tiny_fragment_rule(&l4, verdict, settings)
}

/// `DropBanned` when an active ban covers the source and its network is not ignored
/// (a ban never drops a packet from the ignore list, loopback or this host; the trie is
/// consulted on the drop path only, so other packets pay nothing for it).
#[inline(always)]
fn ban_verdict(key: &AddrWords, src: &AddrWords, settings: &Settings) -> Option<Counter> {
    if is_banned(key, src, settings) {
        if !is_spared(src, settings) {
            return Some(Counter::DropBanned);
        }
        count(Counter::BanSpared);
    }
    None
}

/// A TCP or UDP header split across fragments has no legitimate use: counted like any
/// probe, then dropped whatever the verdict (one compare for the rest).
#[inline(always)]
fn tiny_fragment_rule(l4: &L4, verdict: Counter, settings: &Settings) -> Counter {
    if l4.tiny != 0
        && settings.flags & SETTING_DROP_EVASIVE != 0
        && !matches!(verdict, Counter::DropBanned | Counter::TxChallenge)
    {
        return Counter::DropTinyFragment;
    }
    verdict
}

/// `PS_SETTINGS`' one entry. A one-entry array always has entry 0; the fallback
/// (everything off, the defaults) only satisfies the verifier.
#[inline(always)]
fn settings_or(defaults: &Settings) -> &Settings {
    match PS_SETTINGS.get(0) {
        Some(s) => s,
        None => defaults,
    }
}

/// Steps 3 (the probe type) and 4 for a TCP or UDP packet, or a probe of an IP
/// protocol, of a source not banned; a probe goes on to the probe stage (`stage.rs`).
#[inline(always)]
fn inspect_l4(
    ctx: &XdpContext,
    ip: &Ip,
    l4: &L4,
    key: &AddrWords,
    prefix: Option<u32>,
    settings: &Settings,
) -> Counter {
    // Whether the probe stage first checks the segment as the answer to a challenge.
    let mut challenge = false;
    // Whether a segment with ACK is looked at further.
    let mut looked_at = true;
    // The common case on a busy server, a segment of a connection (ACK or RST), is
    // decided first and with one bitmap read.
    if l4.proto == PROTO_TCP && l4.tcp_flags & (ACK | RST) != 0 {
        if l4.tcp_flags & RST != 0 {
            // A reset is never answered.
            return Counter::PassNotProbe;
        }
        // With verification on, a pure ACK to a watched port may answer a challenge:
        // the probe stage checks its cookie before anything else. (Checked there, the
        // check is walked by the verifier once, not once for each header shape: it
        // was four fifths of this program's verification.)
        challenge = settings.flags & SETTING_VERIFY != 0 && may_answer_challenge(l4);
        // Only to a watched port no socket listens on is it looked up (`PS_ACK_PORTS`;
        // empty with ACK_SCAN_PORTS="0").
        looked_at = is_ack_watched(l4);
        if !looked_at && !challenge {
            return Counter::PassNotProbe;
        }
    }
    let probe = if looked_at {
        probe_kind(l4, key, settings)
    } else {
        Err(Counter::PassNotProbe)
    };
    match probe {
        Err(reason) if !challenge => reason,
        probe => stage::hand_over(ctx, ip, l4, key, prefix, probe, challenge),
    }
}

/// A probe's type, and whether it is counted (its port watched) or only looked up
/// under SCAN_DETECTION="trw".
#[derive(Clone, Copy)]
pub struct ProbeKind {
    pub kind: ScanType,
    pub watched: bool,
    pub trw_syn: bool,
}

/// Steps 3 (the probe type) and 4 of a packet that is not a segment of a connection, or
/// of an ACK to a port `PS_ACK_PORTS` watches; `Err` with the reason it is passed.
#[inline(always)]
fn probe_kind(l4: &L4, key: &AddrWords, settings: &Settings) -> Result<ProbeKind, Counter> {
    let kind = scan_type(l4)?;
    // SCAN_DETECTION="trw": a new connection (a SYN) to a listener is a success of its
    // source's walk; in the default mode this is the one flag test it costs. A SYN to
    // an unwatched port goes on to the socket lookup only as its source's first
    // contact with the port. (One call site for the socket lookup: a second one made
    // the compiler keep the addresses on the stack on every path, 23 instructions.)
    let trw_syn = settings.flags & SETTING_TRW != 0 && kind == ScanType::TcpSyn;
    let watched = kind.is_ack_class() || kind == ScanType::IpProto || is_watched(l4);
    if !watched && !(trw_syn && is_first_contact(key, l4)) {
        return Err(Counter::PassUnwatched);
    }
    Ok(ProbeKind {
        kind,
        watched,
        trw_syn,
    })
}

/// A datagram of neither TCP nor UDP is a probe when of a protocol nothing here serves
/// (`PS_PROTOCOLS`) and sent to this host alone (the kernel answers such a datagram with
/// an ICMP error, and none to a multicast or broadcast one).
#[inline(always)]
fn is_protocol_probe(pkt: &XdpPacket, ip: &Ip) -> bool {
    // IPv4's words, then IPv6's.
    let word = (u32::from(ip.v6) << 2) | (ip.proto as u32 >> 6);
    let watched = match PS_PROTOCOLS.get(word) {
        Some(word) => word & (1u64 << (ip.proto & 63)) != 0,
        None => false,
    };
    if !watched {
        return false;
    }
    // A group (multicast or broadcast) destination has the low bit of the first
    // destination MAC octet set.
    matches!(pkt.header::<EthHdr>(0), Some(eth) if eth.dst[0] & 1 == 0)
}

/// What a source is counted and banned as: `key` (its network address under
/// SOURCE_PREFIX_V6, else itself), and whether that is a network.
pub struct Source {
    pub key: AddrWords,
    pub prefix: bool,
    /// A ban of `key` in `PS_BANS` would be found: false for an IPv6 address counted on
    /// its own under SOURCE_PREFIX_V6 (its ban lives in the trie: the daemon's to make).
    pub exact_ban: bool,
}

impl Source {
    #[inline(always)]
    fn of(key: AddrWords, prefix: Option<u32>) -> Source {
        Source {
            key,
            prefix: prefix.is_some(),
            exact_ban: true,
        }
    }
}

/// What the source of a probe is counted as, by the ignore trie: `None` when it is
/// ignored; its address alone in a network that holds an ignored address.
#[inline(always)]
fn counted_as(ip: &Ip, key: AddrWords, prefix: Option<u32>, settings: &Settings) -> Option<Source> {
    match ignore_value(&ip.src, settings) {
        Some(IGNORE_SINGLE) => Some(Source {
            key: ip.src,
            prefix: false,
            exact_ban: prefix.is_none(),
        }),
        Some(_) => None,
        None => Some(Source::of(key, prefix)),
    }
}

/// The ignore trie's value for `src` (the ignore list, loopback, this host:
/// `IGNORE_IGNORED`; a network counted by address: `IGNORE_SINGLE`), if any.
#[inline(always)]
fn ignore_value(src: &AddrWords, settings: &Settings) -> Option<u32> {
    if !may_be_ignored(src, settings) {
        return None;
    }
    PS_IGNORE.get(Key::new(128, *key(src))).copied()
}

/// A ban of a source in an ignored network is not enforced (the ignore list, loopback,
/// this host).
#[inline(always)]
fn is_spared(src: &AddrWords, settings: &Settings) -> bool {
    ignore_value(src, settings).is_some_and(|v| v != IGNORE_SINGLE)
}

/// False when the ignore trie holds nothing for `src`: its `PS_IGN_FILTER` bit is clear
/// (the filter has a bit for every /24 or /48 an ignored or counted network touches)
/// and no network too wide for the filter is listed. So a source in no such network,
/// a probe's or a ban's, costs one array read, not a trie lookup.
#[inline(always)]
fn may_be_ignored(src: &AddrWords, settings: &Settings) -> bool {
    if settings.flags & SETTING_IGNORE == 0 {
        return false;
    }
    if settings.flags & SETTING_IGNORE_WIDE != 0 {
        return true;
    }
    let bit = net_filter_bit(src);
    match PS_IGN_FILTER.get(bit >> 6) {
        Some(word) => word & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}

/// Adds one to a per-CPU counter.
#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = PS_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}

/// The map key of an address held as words (same bytes, no copy).
#[inline(always)]
fn key(w: &AddrWords) -> &Addr {
    // SAFETY: [u64; 2] and [u8; 16] have the same size; Addr has alignment 1.
    unsafe { &*(w as *const AddrWords as *const Addr) }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
