//! Per-CPU counters kept by the XDP program in the `PS_COUNTERS` per-CPU array.
//!
//! Every packet has exactly one *verdict reason* ([`Counter::is_verdict`]: the first
//! group below, and the later ones appended at the end so that a pinned map of an
//! earlier release keeps its slots), and increments its counter, so the hot path pays
//! for one increment only; the verdict totals are their sums. One verdict is not
//! counted ([`Counter::is_counted`]): a segment of a connection, the commonest packet on
//! a busy server, costs no counter at all. The remaining counters record events that
//! happen on top of a verdict.

/// Index into `PS_COUNTERS`. Values are `u64` packet or event counts, one slot per CPU.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    // --- verdict reasons: exactly one per packet ---
    /// XDP_DROP: the source is banned (exact address or prefix).
    DropBanned = 0,
    /// XDP_PASS: not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = 1,
    /// XDP_PASS: a header was truncated or invalid (fail open).
    PassMalformed = 2,
    /// XDP_PASS: a non-first IP fragment (no ports to look at).
    PassFragment = 3,
    /// XDP_PASS: IP, but neither TCP nor UDP.
    PassOtherProto = 4,
    /// XDP_PASS: TCP with ACK or RST set, part of a conversation, or a segment or datagram
    /// sent to a group or to another host (never answered here, so no probe). Not counted (its slot
    /// stays 0): the increment cost every such segment 2-3 ns, a fifth of the benign
    /// path; a packet that moved no verdict counter had this verdict.
    PassNotProbe = 5,
    /// XDP_PASS: TCP or UDP to a port that is not watched.
    PassUnwatched = 6,
    /// XDP_PASS: the source is in the ignore list.
    PassIgnored = 7,
    /// XDP_PASS: a socket on this host owns the destination port.
    PassListening = 8,
    /// XDP_PASS: a probe, counted against its source.
    PassProbe = 9,
    /// XDP_TX: a SYN probe answered with a SYN-ACK challenge (source verification on).
    TxChallenge = 10,
    // --- events on top of a verdict ---
    /// A packet whose source had a ban that has expired (not yet removed by the daemon).
    BanExpired = 11,
    /// Probe events written to the ring buffer.
    EventSent = 12,
    /// Probe events lost because the ring buffer was full.
    EventLost = 13,
    /// Probe events not sent because the per-CPU event budget was spent.
    EventThrottled = 14,
    /// Probes that could not be recorded in `PS_SOURCES` (its header not written yet:
    /// the daemon writes it when it loads the program).
    TrackFailed = 15,
    /// Sources that answered the challenge: an ACK carrying the cookie (passed).
    Verified = 16,
    /// Packets from a banned source that were not dropped because the source is in the
    /// ignore list, loopback or this host (a ban never cuts those off).
    BanSpared = 17,
    /// Bans the program made itself at the probe that reached the trigger.
    KernelBanned = 18,
    /// Sources at the trigger the program left to the daemon because this second's
    /// MAX_BANS_PER_SEC was spent (the daemon bans them in the next seconds).
    KernelBanDeferred = 19,
    // --- verdict reasons added later ---
    /// XDP_DROP: the first fragment of a TCP or UDP datagram too short to carry the
    /// whole transport header (RFC 1858's tiny fragment), with BLOCK_EVASIVE_PACKETS.
    DropTinyFragment = 20,
    /// XDP_DROP: an IPv6 extension-header chain longer than the program walks
    /// (`MAX_IPV6_EXT_HEADERS`) or that an IPv6 first fragment does not hold whole, or
    /// three VLAN tags with a priority tag (VLAN ID 0) among them, with
    /// BLOCK_EVASIVE_PACKETS.
    DropHeaderChain = 21,
    /// XDP_PASS: such a chain or tag with BLOCK_EVASIVE_PACKETS="0" (fail open, unseen).
    PassHeaderChain = 22,
    /// XDP_PASS: a probe passed unexamined because the probe stage was missing from
    /// `PS_PROGS` (the program's second half; never once the daemon has loaded it).
    PassUnprobed = 23,
}

impl Counter {
    /// Number of slots in `PS_COUNTERS`.
    pub const COUNT: u32 = 24;

    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::DropBanned,
        Counter::PassNotIp,
        Counter::PassMalformed,
        Counter::PassFragment,
        Counter::PassOtherProto,
        Counter::PassNotProbe,
        Counter::PassUnwatched,
        Counter::PassIgnored,
        Counter::PassListening,
        Counter::PassProbe,
        Counter::TxChallenge,
        Counter::BanExpired,
        Counter::EventSent,
        Counter::EventLost,
        Counter::EventThrottled,
        Counter::TrackFailed,
        Counter::Verified,
        Counter::BanSpared,
        Counter::KernelBanned,
        Counter::KernelBanDeferred,
        Counter::DropTinyFragment,
        Counter::DropHeaderChain,
        Counter::PassHeaderChain,
        Counter::PassUnprobed,
    ];

    /// Stable snake_case name, used in status output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::DropBanned => "drop_banned",
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassFragment => "pass_fragment",
            Counter::PassOtherProto => "pass_other_proto",
            Counter::PassNotProbe => "pass_not_probe",
            Counter::PassUnwatched => "pass_unwatched",
            Counter::PassIgnored => "pass_ignored",
            Counter::PassListening => "pass_listening",
            Counter::PassProbe => "pass_probe",
            Counter::TxChallenge => "tx_challenge",
            Counter::BanExpired => "ban_expired",
            Counter::EventSent => "event_sent",
            Counter::EventLost => "event_lost",
            Counter::EventThrottled => "event_throttled",
            Counter::TrackFailed => "track_failed",
            Counter::Verified => "verified",
            Counter::BanSpared => "ban_spared",
            Counter::KernelBanned => "kernel_banned",
            Counter::KernelBanDeferred => "kernel_ban_deferred",
            Counter::DropTinyFragment => "drop_tiny_fragment",
            Counter::DropHeaderChain => "drop_header_chain",
            Counter::PassHeaderChain => "pass_header_chain",
            Counter::PassUnprobed => "pass_unprobed",
        }
    }

    /// True for the counters that are a packet's verdict reason.
    pub const fn is_verdict(self) -> bool {
        (self as u32) <= Counter::TxChallenge as u32
            || (self as u32) >= Counter::DropTinyFragment as u32
    }

    /// False for the one verdict the program does not count ([`Counter::PassNotProbe`]):
    /// status and metrics leave it out rather than show a count that stays 0.
    pub const fn is_counted(self) -> bool {
        !matches!(self, Counter::PassNotProbe)
    }

    /// True for the verdict reasons whose verdict is XDP_DROP.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Counter::DropBanned | Counter::DropTinyFragment | Counter::DropHeaderChain
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_indexed_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
    }
}
