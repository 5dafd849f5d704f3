//! The ban check: does an active ban cover the source? Exact bans go through a blocked
//! Bloom filter (`PS_BAN_FILTER`: three bits of one word), then for an IPv4 source its
//! tag (`PS_BAN_TAGS`: two bytes a ban, 4 MiB at a million), then the set-associative
//! cache (`PS_BAN_CACHE`), then the hash (`PS_BANS`); prefix bans, when there are any and
//! the range filter (`PS_NET_FILTER`) lets the address through, by the hash of the
//! lengths listed for the address's family (`PS_BAN_NET_HASH`, `PS_BAN_NET_LENS`), then
//! the trie (`PS_BAN_NETS`) unless the family's ranges are all in that hash.

use aya_ebpf::maps::lpm_trie::Key;
use portsentry_common::{
    Counter,
    ban_nets::family_of,
    ban_tags::{ban_tag_place, ban_tag_shift_of, v4_of},
    maps::{
        BAN_CACHE_FOREVER, BAN_CACHE_UNIT_SHIFT, SETTING_PREFIX_BANS, SETTING_PREFIX_BANS_WIDE,
        Settings, ban_cache_mask, ban_filter_place, net_filter_bit,
    },
    packet::AddrWords,
};

use crate::{
    PS_BAN_CACHE, PS_BAN_FILTER, PS_BAN_NET_HASH, PS_BAN_NET_LENS, PS_BAN_NETS, PS_BAN_TAGS,
    PS_BANS, PS_NET_FILTER, clock, count, key,
};

/// True when an active ban covers the source: an exact ban of `src` (the source's key:
/// under SOURCE_PREFIX_V6 an IPv6 source's network address), or a prefix ban covering
/// `addr` (the source's own address). Expired bans are counted and ignored.
#[inline(always)]
pub fn is_banned(src: &AddrWords, addr: &AddrWords, settings: &Settings) -> bool {
    if exact_ban(src, settings) {
        return true;
    }
    settings.flags & SETTING_PREFIX_BANS != 0 && may_be_in_range(addr, settings) && range_ban(addr)
}

/// True when an active range ban covers `addr`. The lengths listed for its family are
/// looked up in the hash, longest first: the first active range found decides; an
/// expired one (the daemon lifts it within a second, or at its next start) hides no
/// shorter one. Nothing found there, the trie decides (its longest match), unless the
/// family's ranges are all in the hash.
#[inline(always)]
fn range_ban(addr: &AddrWords) -> bool {
    let family = family_of(addr);
    // Read once, before the lookups: one call site of the clock for the verifier to
    // walk, not one for each place a range is found.
    let now = clock::now();
    let mut trie = true;
    // An expired range was found (counted once for the packet).
    let mut expired = false;
    if let Some(lens) = PS_BAN_NET_LENS.get(0)
        && let (Some(listed), Some(used)) = (lens.lens.get(family), lens.used.get(family))
    {
        for (i, len) in listed.iter().enumerate() {
            if i as u32 >= *used {
                break;
            }
            if let Some(ban) = PS_BAN_NET_HASH.get_ptr(len.key_of(addr)) {
                // SAFETY: a value pointer from a successful lookup.
                if in_force(unsafe { (*ban).expires_ns }, now) {
                    return true;
                }
                expired = true;
            }
        }
        trie = lens.hashed_only & (1 << family) == 0;
    }
    if trie && let Some(ban) = PS_BAN_NETS.get(Key::new(128, *key(addr))) {
        if in_force(ban.expires_ns, now) {
            return true;
        }
        expired = true;
    }
    if expired {
        count(Counter::BanExpired);
    }
    false
}

/// A ban that never expires (0) or expires later than `now`.
#[inline(always)]
fn in_force(expires_ns: u64, now: u64) -> bool {
    expires_ns == 0 || now < expires_ns
}

/// True when an active exact ban of `src` exists: the filter first, then an IPv4
/// source's tag, then the cache (a hit in either needs no hash lookup), then the hash.
#[inline(always)]
fn exact_ban(src: &AddrWords, settings: &Settings) -> bool {
    let place = ban_filter_place(src);
    let maybe = match PS_BAN_FILTER.get(place.word()) {
        Some(word) => word & place.mask == place.mask,
        None => true,
    };
    if !maybe {
        return false;
    }
    // A ban that never ends needs no clock (most bans: BLOCK_* bans last until
    // unbanned).
    let until = match tag_until(src, settings) {
        0 => match PS_BAN_CACHE.get(place.bit & ban_cache_mask(settings.flags)) {
            Some(set) => set.until_of(src),
            None => 0,
        },
        until => until,
    };
    if until == BAN_CACHE_FOREVER {
        return true;
    }
    // One call site of the clock for the cache and the hash: each site costs the
    // verifier a walk of the clock's two ways for every header shape.
    let now = clock::now();
    if now < (until as u64) << BAN_CACHE_UNIT_SHIFT {
        return true;
    }
    // SAFETY: a value pointer from a successful lookup.
    match PS_BANS.get_ptr(key(src)) {
        Some(ban) => ban_active(unsafe { (*ban).expires_ns }, now),
        None => false,
    }
}

/// Until when `src`'s bucket of `PS_BAN_TAGS` is surely banned, if `src` is an IPv4
/// address whose tag the bucket holds; else 0.
#[inline(always)]
fn tag_until(src: &AddrWords, settings: &Settings) -> u32 {
    let Some(v4) = v4_of(src) else {
        return 0;
    };
    let shift = ban_tag_shift_of(settings.flags);
    let place = ban_tag_place(v4, shift);
    match PS_BAN_TAGS.get(place.bucket) {
        Some(bucket) => bucket.until_of(place.tag, shift),
        None => 0,
    }
}

/// False when no range ban covers `addr`'s /24 (IPv4) or /48 (IPv6): its
/// `PS_NET_FILTER` bit is clear, and no range too wide for the filter is banned.
#[inline(always)]
fn may_be_in_range(addr: &AddrWords, settings: &Settings) -> bool {
    if settings.flags & SETTING_PREFIX_BANS_WIDE != 0 {
        return true;
    }
    let bit = net_filter_bit(addr);
    match PS_NET_FILTER.get(bit >> 6) {
        Some(word) => word & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}

/// A ban that never expires (0) or expires later than `now`; an expired one is counted.
#[inline(always)]
fn ban_active(expires_ns: u64, now: u64) -> bool {
    if in_force(expires_ns, now) {
        return true;
    }
    count(Counter::BanExpired);
    false
}
