//! The portsentry XDP program.
//!
//! Per packet, in this order (each step only when the previous did not decide):
//! 1. parse Ethernet, up to two VLAN tags and the IP header (fail open: what cannot be
//!    parsed is passed and counted);
//! 2. ban check: exact-address hash, then the prefix trie when it holds anything; an
//!    active ban drops the packet (any protocol), an expired one is ignored;
//! 3. TCP/UDP header; non-first fragments, other protocols and TCP with ACK or RST are
//!    passed with no further lookup;
//! 4. the watched-port bitmap (one inlined array access);
//! 5. the ignore trie (only when it holds anything);
//! 6. a socket lookup: a port a local socket owns is never a scan target;
//! 7. the probe is counted per source and, within bounds, reported to userspace.
//!
//! Every packet increments exactly one verdict-reason counter.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, bpf_sock_tuple, xdp_action},
    helpers::generated::{
        bpf_ktime_get_coarse_ns, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use bytemuck::Pod;
use portsentry_common::{
    Addr, Counter, PROTO_TCP, ScanType,
    maps::{
        BAN_CACHE_SLOTS, BAN_FILTER_WORDS, BAN_NETS_MAX, BANS_MAX, BanEntry, BanSlot,
        EVENT_BUDGET_HITS, EVENT_BURST, EVENT_VERIFIED, EVENTS_BYTES, EventBudget, IGNORE_MAX,
        PORT_WORDS, SETTING_IGNORE, SETTING_PREFIX_BANS, SETTING_VERIFY, SOURCE_VERIFIED,
        SOURCES_MAX, ScanEvent, Settings, SourceStats, UDP_PORT_WORD_BASE, ban_filter_bit, cookie,
        cookie_slot,
    },
    packet::{
        AddrWords, EthHdr, Ip, Ipv4Hdr, Ipv6Hdr, L4, Packet, TcpHdr, parse_ip, parse_l4, scan_type,
    },
    scan::tcp_flags,
};

#[map]
static PS_BANS: HashMap<Addr, BanEntry> = HashMap::with_max_entries(BANS_MAX, BPF_F_NO_PREALLOC);
#[map]
static PS_BAN_FILTER: Array<u64> = Array::with_max_entries(BAN_FILTER_WORDS, 0);
#[map]
static PS_BAN_CACHE: Array<BanSlot> = Array::with_max_entries(BAN_CACHE_SLOTS, 0);
#[map]
static PS_BAN_NETS: LpmTrie<Addr, BanEntry> = LpmTrie::with_max_entries(BAN_NETS_MAX, 0);
#[map]
static PS_IGNORE: LpmTrie<Addr, u32> = LpmTrie::with_max_entries(IGNORE_MAX, 0);
#[map]
static PS_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);
#[map]
static PS_SOURCES: LruHashMap<Addr, SourceStats> = LruHashMap::with_max_entries(SOURCES_MAX, 0);
#[map]
static PS_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
static PS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
#[map]
static PS_SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
#[map]
static PS_EV_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_F_CURRENT_NETNS`: look sockets up in the netns of the receiving device.
const CURRENT_NETNS: u64 = -1i64 as u64;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Bounds-checked reads of packet memory.
struct XdpPacket {
    start: usize,
    end: usize,
}

impl Packet for XdpPacket {
    #[inline(always)]
    fn header<T: Pod>(&self, off: usize) -> Option<T> {
        let p = self.start + off;
        if p + core::mem::size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the header lies inside the packet, checked just above. It may be
        // misaligned: the kernel permits misaligned packet reads, and typed loads are
        // one instruction each where `read_unaligned` would be one per byte on BPF.
        Some(unsafe { *(p as *const T) })
    }
}

/// The map key of an address held as words (same bytes, no copy).
#[inline(always)]
fn key(w: &AddrWords) -> &Addr {
    // SAFETY: [u64; 2] and [u8; 16] have the same size; Addr has alignment 1.
    unsafe { &*(w as *const AddrWords as *const Addr) }
}

#[xdp]
pub fn portsentry(ctx: XdpContext) -> u32 {
    let reason = inspect(&ctx);
    count(reason);
    match reason {
        Counter::DropBanned => xdp_action::XDP_DROP,
        Counter::TxChallenge => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn inspect(ctx: &XdpContext) -> Counter {
    let pkt = XdpPacket {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let ip = match parse_ip(&pkt) {
        Ok(ip) => ip,
        Err(reason) => return reason,
    };
    let flags = match PS_SETTINGS.get(0) {
        Some(s) => s.flags,
        None => 0,
    };
    if is_banned(&ip.src, flags) {
        return Counter::DropBanned;
    }
    let l4 = match parse_l4(&pkt, &ip) {
        Ok(l4) => l4,
        Err(reason) => return reason,
    };
    let kind = match scan_type(&l4) {
        Ok(kind) => kind,
        Err(reason) => {
            // With verification on, an ACK may answer a challenge (checked by cookie
            // before anything else: ordinary traffic fails it at once).
            if flags & SETTING_VERIFY != 0 && answers_challenge(ctx, &ip, &l4) {
                return Counter::PassProbe;
            }
            return reason;
        }
    };
    if !is_watched(&l4) {
        return Counter::PassUnwatched;
    }
    if flags & SETTING_IGNORE != 0 && PS_IGNORE.get(Key::new(128, *key(&ip.src))).is_some() {
        return Counter::PassIgnored;
    }
    if has_local_socket(ctx, &ip, &l4) {
        return Counter::PassListening;
    }
    record_probe(ctx, &ip, &l4, kind, false);
    if flags & SETTING_VERIFY != 0 && kind == ScanType::TcpSyn && send_challenge(ctx, &ip, &l4) {
        return Counter::TxChallenge;
    }
    Counter::PassProbe
}

/// The cookie for this packet's 4-tuple in time slot `slot`.
#[inline(always)]
fn packet_cookie(ip: &Ip, l4: &L4, secret: u64, slot: u64) -> u32 {
    cookie(&ip.src, &ip.dst, l4.src_port, l4.dst_port, secret, slot)
}

/// A pure ACK to a watched port whose acknowledgment number is our cookie + 1: the
/// source received our SYN-ACK, so its address is its own. Recorded as a verified probe.
#[inline(always)]
fn answers_challenge(ctx: &XdpContext, ip: &Ip, l4: &L4) -> bool {
    let f = l4.tcp_flags & tcp_flags::CLASSIFIED;
    if l4.proto != PROTO_TCP
        || f & tcp_flags::ACK == 0
        || f & (tcp_flags::SYN | tcp_flags::RST | tcp_flags::FIN) != 0
    {
        return false;
    }
    let Some(settings) = PS_SETTINGS.get(0) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let slot = cookie_slot(unsafe { bpf_ktime_get_coarse_ns() });
    let want = l4.ack_seq.wrapping_sub(1);
    if want != packet_cookie(ip, l4, settings.cookie_secret, slot)
        && want != packet_cookie(ip, l4, settings.cookie_secret, slot.wrapping_sub(1))
    {
        return false;
    }
    if !is_watched(l4) {
        return false;
    }
    count(Counter::Verified);
    // Reported as what it answers: the SYN probe.
    let mut syn = *l4;
    syn.tcp_flags = tcp_flags::SYN;
    record_probe(ctx, ip, &syn, ScanType::TcpSyn, true);
    true
}

/// A writable pointer to the `T` at `off` in the packet, bounds-checked.
#[inline(always)]
fn ptr_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let p = ctx.data() + off;
    if p + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(p as *mut T)
}

/// Folds a one's-complement sum to 16 bits.
#[inline(always)]
fn csum_fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The one's-complement sum of an address held as words (raw, memory order): the IPv4
/// part only for an IPv4-mapped address.
#[inline(always)]
fn addr_sum(w: &AddrWords, v6: bool) -> u64 {
    if v6 {
        (w[0] & 0xffff_ffff) + (w[0] >> 32) + (w[1] & 0xffff_ffff) + (w[1] >> 32)
    } else {
        w[1] >> 32
    }
}

#[inline(always)]
fn send_challenge(ctx: &XdpContext, ip: &Ip, l4: &L4) -> bool {
    let Some(settings) = PS_SETTINGS.get(0) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let slot = cookie_slot(unsafe { bpf_ktime_get_coarse_ns() });
    let cookie = packet_cookie(ip, l4, settings.cookie_secret, slot);
    let (Some(eth), Some(tcp)) = (ptr_mut::<EthHdr>(ctx, 0), ptr_mut::<TcpHdr>(ctx, ip.l4_off))
    else {
        return false;
    };
    // Only a SYN without payload (the TCP header is the whole segment) is answered.
    // SAFETY: bounds-checked.
    let hlen = ((unsafe { (*tcp).doff } >> 4) as usize) * 4;
    let segment = if ip.v6 {
        let Some(h) = ptr_mut::<Ipv6Hdr>(ctx, ip.l3_off) else {
            return false;
        };
        // SAFETY: bounds-checked.
        (u16::from_be(unsafe { (*h).payload_len }) as usize)
            .wrapping_sub(ip.l4_off - ip.l3_off - 40)
    } else {
        let Some(h) = ptr_mut::<Ipv4Hdr>(ctx, ip.l3_off) else {
            return false;
        };
        // SAFETY: bounds-checked.
        (u16::from_be(unsafe { (*h).tot_len }) as usize).wrapping_sub(ip.l4_off - ip.l3_off)
    };
    if !(20..=60).contains(&hlen) || segment != hlen {
        return false;
    }
    // SAFETY: both pointers were bounds-checked just above; the program owns the buffer.
    unsafe {
        let e = *eth;
        (*eth).dst = e.src;
        (*eth).src = e.dst;
    }
    if ip.v6 {
        let Some(h) = ptr_mut::<Ipv6Hdr>(ctx, ip.l3_off) else {
            return false;
        };
        // SAFETY: bounds-checked.
        unsafe {
            let src = (*h).src;
            (*h).src = (*h).dst;
            (*h).dst = src;
        }
    } else {
        let Some(h) = ptr_mut::<Ipv4Hdr>(ctx, ip.l3_off) else {
            return false;
        };
        // SAFETY: bounds-checked.
        unsafe {
            let src = (*h).src;
            (*h).src = (*h).dst;
            (*h).dst = src;
        }
    }
    // SAFETY: bounds-checked above.
    unsafe {
        let t = *tcp;
        (*tcp).sport = t.dport;
        (*tcp).dport = t.sport;
        (*tcp).seq = cookie.to_be();
        (*tcp).ack_seq = (l4.seq.wrapping_add(1)).to_be();
        (*tcp).flags = tcp_flags::SYN | tcp_flags::ACK;
        (*tcp).check = 0;
    }
    // The checksum is computed afresh, not adjusted: a SYN from a local stack may carry
    // only a partial checksum (offloaded), which an adjustment would keep wrong. Sums
    // are over raw (memory-order) words, which one's-complement arithmetic allows.
    let mut acc = addr_sum(&ip.src, ip.v6)
        + addr_sum(&ip.dst, ip.v6)
        + (PROTO_TCP as u16).to_be() as u64
        + (hlen as u16).to_be() as u64;
    for i in 0..15usize {
        if i * 4 >= hlen {
            break;
        }
        let Some(w) = ptr_mut::<u32>(ctx, ip.l4_off + i * 4) else {
            return false;
        };
        // SAFETY: bounds-checked.
        acc += unsafe { *w } as u64;
    }
    // SAFETY: bounds-checked above.
    unsafe { (*tcp).check = !csum_fold(acc) };
    true
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = PS_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn is_banned(src: &AddrWords, flags: u32) -> bool {
    let bit = ban_filter_bit(src);
    let maybe = match PS_BAN_FILTER.get(bit >> 6) {
        Some(word) => word & (1u64 << (bit & 63)) != 0,
        None => true,
    };
    if maybe {
        // The cache first: a hit needs no hash lookup.
        let cached = match PS_BAN_CACHE.get(bit & (BAN_CACHE_SLOTS - 1)) {
            Some(slot) if slot.used != 0 && slot.addr[0] == src[0] && slot.addr[1] == src[1] => {
                Some(slot.expires_ns)
            }
            _ => None,
        };
        match cached {
            Some(expires_ns) => {
                if ban_active(expires_ns) {
                    return true;
                }
            }
            None => {
                if let Some(ban) = PS_BANS.get_ptr(key(src)) {
                    // SAFETY: a value pointer from a successful lookup.
                    if ban_active(unsafe { (*ban).expires_ns }) {
                        return true;
                    }
                }
            }
        }
    }
    if flags & SETTING_PREFIX_BANS != 0 {
        if let Some(ban) = PS_BAN_NETS.get(Key::new(128, *key(src))) {
            return ban_active(ban.expires_ns);
        }
    }
    false
}

#[inline(always)]
fn ban_active(expires_ns: u64) -> bool {
    // SAFETY: helper without arguments.
    if expires_ns == 0 || unsafe { bpf_ktime_get_coarse_ns() } < expires_ns {
        return true;
    }
    count(Counter::BanExpired);
    false
}

#[inline(always)]
fn is_watched(l4: &L4) -> bool {
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

/// True when a socket on this host (listening, connected, or a TCP request or
/// time-wait socket) matches the packet's 4-tuple in the receiving device's netns.
#[inline(always)]
fn has_local_socket(ctx: &XdpContext, ip: &Ip, l4: &L4) -> bool {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if ip.v6 {
        // SAFETY: writing plain integers into the union's ipv6 member.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            t.saddr = core::mem::transmute::<AddrWords, [u32; 4]>(ip.src);
            t.daddr = core::mem::transmute::<AddrWords, [u32; 4]>(ip.dst);
            t.sport = l4.src_port.to_be();
            t.dport = l4.dst_port.to_be();
        }
        core::mem::size_of::<[u32; 8]>() + 4
    } else {
        let s = ip.src[1].to_ne_bytes();
        let d = ip.dst[1].to_ne_bytes();
        // SAFETY: writing plain integers into the union's ipv4 member.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = u32::from_ne_bytes([s[4], s[5], s[6], s[7]]);
            t.daddr = u32::from_ne_bytes([d[4], d[5], d[6], d[7]]);
            t.sport = l4.src_port.to_be();
            t.dport = l4.dst_port.to_be();
        }
        12
    };
    // SAFETY: ctx is the program's context, tuple lives on the stack for the call.
    let sk = unsafe {
        if l4.proto == PROTO_TCP {
            bpf_skc_lookup_tcp(ctx.ctx.cast(), &mut tuple, size as u32, CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(ctx.ctx.cast(), &mut tuple, size as u32, CURRENT_NETNS, 0).cast()
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: releasing the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    true
}

/// Which of the 256 bits of `SourceStats::port_filter` a port sets.
#[inline(always)]
fn port_bit(port: u16) -> u32 {
    ((port as u32).wrapping_mul(0x9e37_79b1) >> 24) & 0xff
}

#[inline(always)]
fn record_probe(ctx: &XdpContext, ip: &Ip, l4: &L4, kind: ScanType, verified: bool) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let (trigger, settings) = match PS_SETTINGS.get(0) {
        Some(s) => (
            if s.event_trigger == 0 {
                1
            } else {
                s.event_trigger
            },
            *s,
        ),
        None => (1, Settings::default()),
    };
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
            if let Some(w) = stats.port_filter.get_mut(word) {
                if *w & mask == 0 {
                    *w |= mask;
                    stats.distinct_ports += 1;
                }
            }
            if verified {
                stats.flags |= SOURCE_VERIFIED;
            }
            event.hits = stats.hits;
            event.first_ns = stats.first_ns;
            event.distinct_ports = stats.distinct_ports;
            // A verified answer is always reported: it takes a real round trip.
            if (verified || wants_event(stats.hits, stats.events, trigger))
                && send_event(&event, now, &settings)
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
            if (verified || wants_event(1, 0, trigger)) && send_event(&event, now, &settings) {
                stats.events = 1;
            }
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

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
