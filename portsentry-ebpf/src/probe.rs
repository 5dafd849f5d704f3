//! Probes: which ports are watched, per-source tracking in `PS_SOURCES`, and events to
//! userspace through `PS_EVENTS`, rate-limited per CPU.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_coarse_ns, programs::XdpContext,
};
use portsentry_common::{
    Counter, PROTO_TCP, ScanType,
    maps::{
        EVENT_BUDGET_HITS, EVENT_BURST, EVENT_VERIFIED, SOURCE_VERIFIED, ScanEvent, Settings,
        SourceStats, UDP_PORT_WORD_BASE,
    },
    packet::{Ip, L4},
};

use crate::{PS_EV_BUDGET, PS_EVENTS, PS_PORTS, PS_SOURCES, count, key};

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

/// Which of the 256 bits of `SourceStats::port_filter` a port sets.
#[inline(always)]
fn port_bit(port: u16) -> u32 {
    ((port as u32).wrapping_mul(0x9e37_79b1) >> 24) & 0xff
}

/// Counts a probe against its source and, within bounds, reports it to userspace. A
/// `verified` probe (an answered challenge) marks the source and is always reported.
#[inline(always)]
pub fn record_probe(
    ctx: &XdpContext,
    ip: &Ip,
    l4: &L4,
    kind: ScanType,
    verified: bool,
    settings: &Settings,
) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let trigger = settings.event_trigger.max(1);
    let bit = port_bit(l4.dst_port);
    let word = (bit >> 6) as usize & 3;
    let mask = 1u64 << (bit & 63);
    let mut event = ScanEvent {
        addr: *key(&ip.src),
        ts_ns: now,
        first_ns: now,
        hits: 1,
        distinct_ports: 1,
        port: l4.dst_port,
        scan_type: kind as u8,
        tcp_flags: l4.tcp_flags,
        ifindex: ctx.ingress_ifindex() as u32,
        flags: if verified { EVENT_VERIFIED } else { 0 },
        _pad: 0,
    };
    match PS_SOURCES.get_ptr_mut(key(&ip.src)) {
        Some(stats) => {
            // SAFETY: a value pointer from a successful lookup; concurrent updates from
            // other CPUs may race, which only makes the counts approximate.
            let stats = unsafe { &mut *stats };
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
            event.hits = stats.hits;
            event.first_ns = stats.first_ns;
            event.distinct_ports = stats.distinct_ports;
            // A verified answer is always reported: it takes a real round trip.
            if (verified || wants_event(stats.hits, stats.events, trigger))
                && send_event(&event, now, settings)
            {
                stats.events += 1;
            }
        }
        None => {
            let mut stats = SourceStats {
                first_ns: now,
                last_ns: now,
                hits: 1,
                distinct_ports: 1,
                events: 0,
                last_port: l4.dst_port,
                last_scan_type: kind as u8,
                flags: if verified { SOURCE_VERIFIED } else { 0 },
                port_filter: [0; 4],
            };
            if let Some(w) = stats.port_filter.get_mut(word) {
                *w = mask;
            }
            if (verified || wants_event(1, 0, trigger)) && send_event(&event, now, settings) {
                stats.events = 1;
            }
            // By value, `stats` would be copied once more (36 more instructions).
            #[allow(clippy::needless_borrows_for_generic_args)]
            if PS_SOURCES
                .insert(key(&ip.src), &stats, BPF_NOEXIST as u64)
                .is_err()
            {
                count(Counter::TrackFailed);
            }
        }
    }
}

/// Reports every probe from the trigger on for `EVENT_BURST` events, then only at hit
/// counts that are powers of two: at most `EVENT_BURST + 32` events per source.
#[inline(always)]
fn wants_event(hits: u32, events: u32, trigger: u32) -> bool {
    hits >= trigger && (events < EVENT_BURST || hits & hits.wrapping_sub(1) == 0)
}

/// Sends the event unless the CPU's budget is spent (early hits of unverified sources
/// only); counts what happened to it.
#[inline(always)]
fn send_event(event: &ScanEvent, now: u64, settings: &Settings) -> bool {
    if event.hits < EVENT_BUDGET_HITS && event.flags == 0 && !take_token(now, settings) {
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
