//! The probe stage, the program's second half (`ps_probe`): the first program hands a
//! probe over through `PS_PROBE` (per CPU: the tail call runs on the same CPU, for the
//! same packet) and tail-calls it through `PS_PROGS`. Split so that the verifier walks
//! these steps once, not once for each shape of header the first program parses: every
//! instruction here cost the first program about a thousand verified instructions.
//!
//! Steps 5 to 7 of `main.rs`: the ignore trie, the socket lookup, the count and the
//! challenge; and, first, the check of a segment that may answer a challenge (the
//! first program walked with it was five times as long to verify).

use aya_ebpf::programs::XdpContext;
use portsentry_common::{
    Counter, ScanType,
    maps::{PROBE_STAGE, SETTING_LOCAL_DST, SETTING_VERIFY, Settings, local_filter_bit},
    packet::{AddrWords, Ip, L4, from_nowhere, sent_to_group},
};

use crate::{
    PS_LOCAL_FILTER, PS_PROBE, PS_PROGS, ProbeKind, Source,
    challenge::{answers_challenge, send_challenge},
    counted_as,
    frame::XdpPacket,
    probe::{record_probe, record_success},
    settings_or,
    socket::{has_local_socket, may_have_socket},
    tiny_fragment_rule,
};

/// What the first program found, handed to the probe stage.
#[derive(Clone, Copy)]
pub struct Handed {
    ip: Ip,
    l4: L4,
    key: AddrWords,
    /// SOURCE_PREFIX_V6's length when `key` is a network, [`NO_PREFIX`] when not.
    prefix: u32,
    /// `ScanType as u8` of a probe; 0 for a segment that came for the challenge alone,
    /// and is no probe (`Counter::PassNotProbe`) unless it answers one.
    kind: u8,
    watched: bool,
    trw_syn: bool,
    /// Checked first as the answer to a challenge (VERIFY_SOURCES).
    challenge: bool,
}

// `PS_PROBE`'s value. Its pin is kept across upgrades (a program loaded again writes its
// own layout into it, for its own stage): a new size needs the map replaced at load
// (`resize::grown_values` in the daemon), or the new program is refused on the old pin.
const _: () = assert!(core::mem::size_of::<Handed>() == 88);

const NO_PREFIX: u32 = u32::MAX;

/// Hands a probe, or a segment that may answer a challenge (`challenge`), over to the
/// probe stage and tail-calls it; returns only when the stage is missing
/// (`Counter::PassUnprobed`), or with the reason a packet that is neither is passed.
#[inline(always)]
pub fn hand_over(
    ctx: &XdpContext,
    ip: &Ip,
    l4: &L4,
    key: &AddrWords,
    prefix: Option<u32>,
    probe: Result<ProbeKind, Counter>,
    challenge: bool,
) -> Counter {
    let Some(slot) = PS_PROBE.get_ptr_mut(0) else {
        return Counter::PassUnprobed;
    };
    let (kind, watched, trw_syn) = match probe {
        Ok(p) => (p.kind as u8, p.watched, p.trw_syn),
        // A segment with a challenge to check is a probe or not looked at (a pure ACK is
        // an ACK-class probe where that class is watched).
        Err(Counter::PassNotProbe) => (0, false, false),
        Err(reason) => return reason,
    };
    // SAFETY: this CPU's slot; the stage that reads it runs next, on this CPU.
    unsafe {
        *slot = Handed {
            ip: *ip,
            l4: *l4,
            key: *key,
            prefix: prefix.unwrap_or(NO_PREFIX),
            kind,
            watched,
            trw_syn,
            challenge,
        };
        PS_PROGS.tail_call(ctx, PROBE_STAGE);
    }
    Counter::PassUnprobed
}

/// The probe stage's verdict for the packet handed over.
#[inline(always)]
pub fn probe(ctx: &XdpContext) -> Counter {
    // Read in place: this CPU's slot, written by the first program for this packet.
    let Some(h) = PS_PROBE.get(0) else {
        return Counter::PassUnprobed;
    };
    let prefix = (h.prefix != NO_PREFIX).then_some(h.prefix);
    let defaults = Settings::default();
    let settings = settings_or(&defaults);
    // The type comes from the map, a number the verifier does not know: it walks the
    // steps once for all types.
    let verdict = if h.challenge && answers_challenge(ctx, &h.ip, &h.l4, &h.key, prefix, settings) {
        Counter::PassProbe
    } else {
        match ScanType::from_u8(h.kind) {
            Some(kind) => probe_l4(ctx, h, kind, prefix, settings),
            None => Counter::PassNotProbe,
        }
    };
    tiny_fragment_rule(&h.l4, verdict, settings)
}

/// False when the destination is not one of this host's addresses: its
/// `PS_LOCAL_FILTER` bit is clear, with the filter in force (`SETTING_LOCAL_DST`).
#[inline(always)]
fn sent_to_this_host(ip: &Ip, settings: &Settings) -> bool {
    if settings.flags & SETTING_LOCAL_DST == 0 {
        return true;
    }
    let bit = local_filter_bit(&ip.dst);
    match PS_LOCAL_FILTER.get(bit >> 6) {
        Some(word) => word & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}

/// Steps 5 to 7.
#[inline(always)]
fn probe_l4(
    ctx: &XdpContext,
    h: &Handed,
    kind: ScanType,
    prefix: Option<u32>,
    settings: &Settings,
) -> Counter {
    let (ip, l4, key, watched, trw_syn) = (&h.ip, &h.l4, &h.key, h.watched, h.trw_syn);
    // Sent to a group (a multicast or broadcast frame or address), or to another host
    // (this one routing it, a bridge or a promiscuous interface passing it on): never
    // answered here, so no probe. A router's DHCP offer to 255.255.255.255:68 would
    // otherwise ban it, and so would a client's SYN routed through this host. Nor is
    // a packet from an IPv6 source no answer reaches (`from_nowhere`).
    if sent_to_group(&XdpPacket(ctx), ip) || !sent_to_this_host(ip, settings) || from_nowhere(ip) {
        return Counter::PassNotProbe;
    }
    let src = if watched {
        let Some(src) = counted_as(ip, *key, prefix, settings) else {
            return Counter::PassIgnored;
        };
        src
    } else {
        Source::of(*key, prefix)
    };
    // An IP protocol's datagram came here only if nothing serves it.
    if kind != ScanType::IpProto && may_have_socket(l4) && has_local_socket(ctx, ip, l4) {
        if trw_syn {
            record_success(&src.key, l4, settings);
        }
        return if watched {
            Counter::PassListening
        } else {
            Counter::PassUnwatched
        };
    }
    if !watched {
        return Counter::PassUnwatched;
    }
    if record_probe(ctx, &src, l4, kind, false, settings) {
        // Banned at this probe: it is dropped like every later packet of the source.
        return Counter::DropBanned;
    }
    if settings.flags & SETTING_VERIFY != 0
        && kind == ScanType::TcpSyn
        && l4.tiny == 0
        && send_challenge(ctx, l4, settings)
    {
        return Counter::TxChallenge;
    }
    Counter::PassProbe
}
