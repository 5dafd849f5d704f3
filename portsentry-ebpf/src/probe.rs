//! Probes: which ports are watched, per-source tracking (`sources.rs`), and events to
//! userspace through `PS_EVENTS`, rate-limited per CPU.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use portsentry_common::{
    Counter, PROTO_TCP, ScanType,
    maps::{
        BanEntry, BanOrigin, EVENT_BUDGET_HITS, EVENT_BURST, EVENT_KERNEL_BANNED, EVENT_PREFIX,
        EVENT_VERIFIED, KBAN_DAEMON, KBAN_PROGRAM, SETTING_KBAN_TCP, SETTING_KBAN_UDP, SETTING_TRW,
        SETTING_VERIFY, SOURCE_PREFIX, SOURCE_VERIFIED, ScanEvent, Settings, SourceStats,
        UDP_PORT_WORD_BASE, ban_cache_mask, ban_filter_place, cache_until, source_event_bit,
    },
    packet::{AddrWords, L4},
    sources::seen_stamp,
};

use crate::{
    PS_ACK_PORTS, PS_BAN_CACHE, PS_BAN_FILTER, PS_BANS, PS_EV_BUDGET, PS_EVENTS, PS_KBAN, PS_PORTS,
    Source, atomic, clock, count, key, sources,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// True when the destination port is watched (one bit of `PS_PORTS`, TCP words first).
#[inline(always)]
pub fn is_watched(l4: &L4) -> bool {
    let base = if l4.proto == PROTO_TCP {
        0
    } else {
        UDP_PORT_WORD_BASE
    };
    match PS_PORTS.get(base + (l4.dst_port as u32 >> 6)) {
        Some(word) => word & (1u64 << (l4.dst_port & 63)) != 0,
        None => false,
    }
}

/// True when a segment with ACK to this TCP port is looked up (`PS_ACK_PORTS`).
#[inline(always)]
pub fn is_ack_watched(l4: &L4) -> bool {
    match PS_ACK_PORTS.get(l4.dst_port as u32 >> 6) {
        Some(word) => word & (1u64 << (l4.dst_port & 63)) != 0,
        None => false,
    }
}

/// Which of the 256 bits of `SourceStats::port_filter` a port sets: its word and mask.
#[inline(always)]
fn port_mask(port: u16) -> (usize, u64) {
    let bit = ((port as u32).wrapping_mul(0x9e37_79b1) >> 24) & 0xff;
    ((bit >> 6) as usize & 3, 1u64 << (bit & 63))
}

/// Counts a probe against its source and, within bounds, reports it to userspace. A
/// `verified` probe (an answered challenge) marks the source and is always reported.
/// The source reaches the trigger at SCAN_TRIGGER hits or, under SCAN_DETECTION="trw"
/// (a type that [`ScanType::walks`]), when its walk reaches the scanner bound.
/// True when the program banned the source at this probe ([`kernel_ban`]): the caller
/// drops it.
#[inline(always)]
pub fn record_probe(
    ctx: &XdpContext,
    src: &Source,
    l4: &L4,
    kind: ScanType,
    verified: bool,
    settings: &Settings,
) -> bool {
    let now = clock::now();
    let trigger = settings.event_trigger.max(1);
    let walk = settings.flags & SETTING_TRW != 0 && kind.walks();
    let (word, mask) = port_mask(l4.dst_port);
    let proto_bit = source_event_bit(kind);
    // The event is built only when one is sent: most probes send none, and building it
    // on every probe cost a few ns.
    let seen = |first_ns: u64, hits: u32, distinct_ports: u32, successes: u32, ban: Option<u64>| {
        ScanEvent {
            addr: *key(&src.key),
            // A ban's event carries the ban's time (`kernel_ban`).
            ts_ns: ban.unwrap_or(now),
            first_ns,
            hits,
            distinct_ports,
            port: l4.dst_port,
            scan_type: kind as u8,
            tcp_flags: l4.tcp_flags,
            ifindex: ctx.ingress_ifindex() as u32,
            flags: if verified { EVENT_VERIFIED } else { 0 }
                | if src.prefix { EVENT_PREFIX } else { 0 }
                | if ban.is_some() {
                    EVENT_KERNEL_BANNED
                } else {
                    0
                },
            successes,
        }
    };
    let stamp = seen_stamp(now);
    let set = sources::set_of(&src.key);
    match set.and_then(|set| sources::record_in(set, &src.key, stamp)) {
        Some(stats) => {
            // SAFETY: a way of a set from a successful lookup; concurrent updates from
            // other CPUs may race, which only makes the counts approximate.
            let stats = unsafe { &mut *stats.as_ptr() };
            stats.hits = stats.hits.saturating_add(1);
            stats.last_ns = now;
            stats.last_port = l4.dst_port;
            stats.last_scan_type = kind as u8;
            if let Some(w) = stats.port_filter.get_mut(word)
                && *w & mask == 0
            {
                *w |= mask;
                stats.distinct_ports += 1;
            }
            if verified {
                stats.flags |= SOURCE_VERIFIED;
            }
            let reached = if walk {
                settings
                    .trw
                    .is_scanner(stats.distinct_ports, stats.successes as u32)
            } else {
                stats.hits >= trigger
            };
            let ban = if reached && src.exact_ban {
                kernel_ban(
                    &src.key,
                    l4,
                    kind,
                    stats.distinct_ports,
                    stats.flags & SOURCE_VERIFIED != 0,
                    stats.first_ns,
                    now,
                    settings,
                )
            } else {
                None
            };
            let banned = ban.is_some();
            // A verified answer and a ban are always reported, and so is the first
            // probe of a protocol past the trigger.
            let first_of_proto = reached && stats.flags & proto_bit == 0;
            if (banned
                || verified
                || first_of_proto
                || wants_event(reached, stats.hits, stats.events))
                && send_event(
                    &seen(
                        stats.first_ns,
                        stats.hits,
                        stats.distinct_ports,
                        stats.successes as u32,
                        ban,
                    ),
                    now,
                    settings,
                )
            {
                stats.events = stats.events.saturating_add(1);
                // Written once a protocol: a write of the flags could undo another CPU's
                // SOURCE_VERIFIED, set at the same moment.
                if first_of_proto {
                    stats.flags |= proto_bit;
                }
            }
            banned
        }
        None => {
            let mut stats = SourceStats {
                first_ns: now,
                last_ns: now,
                hits: 1,
                distinct_ports: 1,
                events: 0,
                successes: 0,
                last_port: l4.dst_port,
                last_scan_type: kind as u8,
                flags: if verified { SOURCE_VERIFIED } else { 0 }
                    | if src.prefix { SOURCE_PREFIX } else { 0 },
                port_filter: [0; 4],
            };
            if let Some(w) = stats.port_filter.get_mut(word) {
                *w = mask;
            }
            let reached = if walk {
                settings.trw.is_scanner(1, 0)
            } else {
                trigger <= 1
            };
            let ban = if reached && src.exact_ban {
                kernel_ban(&src.key, l4, kind, 1, verified, now, now, settings)
            } else {
                None
            };
            let banned = ban.is_some();
            if (banned || verified || wants_event(reached, 1, 0))
                && send_event(&seen(now, 1, 1, 0, ban), now, settings)
            {
                stats.events = 1;
                if reached {
                    stats.flags |= proto_bit;
                }
            }
            match set {
                Some(set) => sources::put_new(set, &src.key, stamp, &stats),
                None => count(Counter::TrackFailed),
            }
            banned
        }
    }
}

/// The kernel-side ban: when the configuration lets the block come first (the
/// protocol's `SETTING_KBAN_*`), a source that reached the trigger is banned here, at
/// this probe, within `PS_KBAN`'s MAX_BANS_PER_SEC budget. Never for IP protocols; the
/// ACK class once its `distinct_ports` reach ACK_SCAN_PORTS ([`Settings::ban_spread`]).
/// Under VERIFY_SOURCES only a verified source; hits spread over more than SCAN_WINDOW
/// are left to the daemon. The ban goes in as `PS_BANS` entry of origin `Kernel` (filter
/// bits first, cache after, as userspace orders them); the daemon then responds to it as
/// to its own. Returns the ban's time: `now`, or the start of the budget's second when
/// the ban was counted in a second this CPU's clock has not reached yet.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // inlined: the probe's values, as the caller holds them
fn kernel_ban(
    src: &AddrWords,
    l4: &L4,
    kind: ScanType,
    distinct_ports: u32,
    verified: bool,
    first_ns: u64,
    now: u64,
    settings: &Settings,
) -> Option<u64> {
    let flag = if l4.proto == PROTO_TCP {
        SETTING_KBAN_TCP
    } else {
        SETTING_KBAN_UDP
    };
    // An IP protocol is left to the daemon (it acts only over several protocols); a
    // segment of no connection waits for ACK_SCAN_PORTS distinct ports.
    if settings.flags & flag == 0
        || (settings.flags & SETTING_VERIFY != 0 && !verified)
        || !kind.kernel_bannable()
        || distinct_ports < settings.ban_spread(kind)
    {
        return None;
    }
    let kb = PS_KBAN.get_ptr_mut(KBAN_PROGRAM)?;
    // SAFETY: a value pointer of the array; the budget fields are only touched as below,
    // the rest only read.
    let (ban_ns, window_ns, per_sec, offset) = unsafe {
        (
            (*kb).ban_ns,
            (*kb).window_ns,
            (*kb).per_sec,
            (*kb).wall_offset_ns,
        )
    };
    // Saturating: `first_ns` may be another CPU's time, up to a tick ahead of this
    // CPU's (`clock::now`).
    if window_ns != 0 && now.saturating_sub(first_ns) > window_ns {
        return None;
    }
    let mut at = now;
    if per_sec != 0 {
        let mut second = now.wrapping_add(offset) / NS_PER_SEC;
        // The daemon reads the wall clock itself, which this CPU's clock follows a tick
        // or two behind (`clock::now`): a second the daemon has begun is this probe's
        // too. Counted in its own, older second, at each turn the program's last bans
        // of the old second and the daemon's first of the new one would each miss the
        // other's: a second's budget twice over, by the bans' dates.
        let (daemon_second, daemon_used) = match PS_KBAN.get(KBAN_DAEMON) {
            Some(d) => (d.second, d.used),
            None => (0, 0),
        };
        if daemon_second == second + 1 {
            second = daemon_second;
        }
        // SAFETY: aligned u64 fields of the map value, shared by every CPU. A new second
        // resets the count with plain (single-instruction) stores: two CPUs that both
        // see the new second both reset it, which costs at most a ban or two of slack.
        // Forward only: a CPU whose clock lags another's by a tick (`clock::now`) counts
        // into the newer second; resetting it back would give a fresh budget at every
        // turn between the two CPUs. (The daemon's writes start it afresh, at 0.) A
        // second more than one ahead is not a lagging CPU's (a reload racing a probe
        // after the wall clock was stepped back): it is reset, not kept until reached.
        unsafe {
            if second > (*kb).second || (*kb).second > second + 1 {
                (*kb).second = second;
                (*kb).used = 0;
            } else {
                second = (*kb).second;
            }
        }
        // The daemon's bans of this second share the budget.
        let daemon = if daemon_second == second {
            daemon_used
        } else {
            0
        };
        // SAFETY: as above.
        unsafe {
            // A spent budget is seen by a read: under a flood every CPU's probes come
            // here, and an add by each would pass the line from CPU to CPU.
            if core::ptr::read_volatile(&raw const (*kb).used) + daemon >= per_sec {
                count(Counter::KernelBanDeferred);
                return None;
            }
            atomic::add(&raw mut (*kb).used, 1);
            // Read after the add: concurrent bans may each see the other's, which can
            // refuse one too many but never lets one too many through.
            if core::ptr::read_volatile(&raw const (*kb).used) + daemon > per_sec {
                count(Counter::KernelBanDeferred);
                return None;
            }
        }
        // Counted in a second this CPU's clock has not reached: dated at its start, so
        // that no second shows more bans than its budget.
        let start = second.wrapping_mul(NS_PER_SEC).wrapping_sub(offset);
        if start > now && start - now <= NS_PER_SEC {
            at = start;
        }
    }
    let entry = BanEntry {
        expires_ns: if ban_ns == 0 { 0 } else { at + ban_ns },
        since_ns: at,
        port: l4.dst_port,
        scan_type: kind as u8,
        origin: BanOrigin::Kernel as u8,
        count: 0,
    };
    let place = ban_filter_place(src);
    if let Some(word) = PS_BAN_FILTER.get_ptr_mut(place.word()) {
        // SAFETY: an aligned u64 of the array, shared by every CPU.
        unsafe { atomic::or(word, place.mask) };
    }
    // Never over an existing ban (an operator's, or one being lifted), never when full.
    // By reference: by value, the entry would be copied once more (36 more
    // instructions, measured when `record_probe` inserted its record the same way).
    #[allow(clippy::needless_borrows_for_generic_args)]
    if PS_BANS
        .insert(key(src), &entry, BPF_NOEXIST as u64)
        .is_err()
    {
        return None;
    }
    let until = cache_until(entry.expires_ns);
    if until != 0
        && let Some(set) = PS_BAN_CACHE.get_ptr_mut(place.bit & ban_cache_mask(settings.flags))
    {
        // SAFETY: a value pointer of the array. The address first, the way's mark last,
        // then the address read back: of two CPUs putting bans into one free way at
        // once, one whose address was overwritten frees the way again (the hash holds
        // both bans). While the other CPU's words land, the way may hold a mix of two
        // IPv6 addresses for a few nanoseconds (two IPv4 addresses differ in one word
        // only); after it, only an address the hash holds.
        unsafe {
            if let Some(way) = (*set).free_way()
                && let (Some(addr), Some(mark)) =
                    ((*set).addrs.get_mut(way), (*set).until.get_mut(way))
            {
                core::ptr::write_volatile(&mut addr[0], src[0]);
                core::ptr::write_volatile(&mut addr[1], src[1]);
                core::ptr::write_volatile(mark, until);
                if core::ptr::read_volatile(&addr[0]) != src[0]
                    || core::ptr::read_volatile(&addr[1]) != src[1]
                {
                    core::ptr::write_volatile(mark, 0);
                }
            }
        }
    }
    count(Counter::KernelBanned);
    Some(at)
}

/// Reports every probe from the trigger (`reached`) on for `EVENT_BURST` events, then
/// only at hit counts that are powers of two: at most `EVENT_BURST + 32` events per
/// source (and the first of each protocol's probes past the trigger, `SOURCE_EVENT_*`).
#[inline(always)]
fn wants_event(reached: bool, hits: u32, events: u16) -> bool {
    reached && ((events as u32) < EVENT_BURST || hits & hits.wrapping_sub(1) == 0)
}

/// SCAN_DETECTION="trw": true when the source has a record and has not yet contacted
/// this port (a SYN to it may be a success). A source with no record pays this one
/// look at its set: the walk starts at its first failure.
#[inline(always)]
pub fn is_first_contact(src: &AddrWords, l4: &L4) -> bool {
    let Some(stats) = sources::record(src) else {
        return false;
    };
    let (word, mask) = port_mask(l4.dst_port);
    // SAFETY: a value pointer from a successful lookup, read once (racing CPUs:
    // approximate).
    let filter = unsafe { (*stats.as_ptr()).port_filter };
    matches!(filter.get(word), Some(w) if *w & mask == 0)
}

/// SCAN_DETECTION="trw": a TCP SYN of a source with a record reached a listener: if it
/// is the source's first contact with the port, a success of its walk, unless that
/// would take the walk under the benign bound
/// ([`portsentry_common::trw::Walk::takes_success`]). The port is marked even when the
/// success is not counted (at the bound), so that it counts once.
#[inline(always)]
pub fn record_success(src: &AddrWords, l4: &L4, settings: &Settings) {
    // Marked seen: a success keeps the record as a probe does.
    let stamp = seen_stamp(clock::now());
    let Some(stats) = sources::set_of(src).and_then(|set| sources::record_in(set, src, stamp))
    else {
        return;
    };
    // SAFETY: a value pointer from a successful lookup (racing CPUs: approximate).
    let stats = unsafe { &mut *stats.as_ptr() };
    let (word, mask) = port_mask(l4.dst_port);
    let Some(w) = stats.port_filter.get_mut(word) else {
        return;
    };
    if *w & mask != 0 {
        return;
    }
    *w |= mask;
    if settings
        .trw
        .takes_success(stats.distinct_ports, stats.successes as u32)
    {
        stats.successes = stats.successes.saturating_add(1);
    }
}

/// Sends the event unless the CPU's budget is spent (early hits of unverified sources
/// only); counts what happened to it.
#[inline(always)]
fn send_event(event: &ScanEvent, now: u64, settings: &Settings) -> bool {
    if event.hits < EVENT_BUDGET_HITS
        && event.flags & (EVENT_VERIFIED | EVENT_KERNEL_BANNED) == 0
        && !take_token(now, settings)
    {
        count(Counter::EventThrottled);
        return false;
    }
    match PS_EVENTS.output::<ScanEvent>(event, 0) {
        Ok(()) => {
            count(Counter::EventSent);
            true
        }
        Err(_) => {
            count(Counter::EventLost);
            false
        }
    }
}

/// Per-CPU token bucket: `events_per_sec` tokens a second, at most `event_burst` saved.
#[inline(always)]
fn take_token(now: u64, settings: &Settings) -> bool {
    let rate = settings.events_per_sec as u64;
    if rate == 0 {
        return true;
    }
    let Some(budget) = PS_EV_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot.
    let budget = unsafe { &mut *budget };
    let cap = (settings.event_burst as u64).max(1) * NS_PER_SEC;
    // Clamped so that elapsed * rate cannot overflow (userspace keeps rate below 1e7).
    let elapsed = now.wrapping_sub(budget.last_ns).min(100 * NS_PER_SEC);
    budget.last_ns = now;
    let tokens = (budget.tokens_ns + elapsed * rate).min(cap);
    if tokens >= NS_PER_SEC {
        budget.tokens_ns = tokens - NS_PER_SEC;
        true
    } else {
        budget.tokens_ns = tokens;
        false
    }
}
