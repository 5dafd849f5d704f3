//! The small closed sets the daemon talks about, as types: the protocol of a probe,
//! PortSentry's mode word (`$MODE$`, the blocked-file suffix), where a ban came from and
//! why it ended. Each has exactly one spelling, used by the log lines, the files, the
//! state file and the metric labels alike.

use std::fmt;

use portsentry_common::{PROTO_TCP, PROTO_UDP, ScanType, maps::BanOrigin};

/// A watched protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number (6, 17).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    /// The protocol of an IP protocol number; `None` for any other.
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// The protocol a scan type probes.
    pub fn of(scan_type: ScanType) -> Protocol {
        if scan_type.is_tcp() {
            Protocol::Tcp
        } else {
            Protocol::Udp
        }
    }

    /// `TCP` or `UDP`, as PortSentry writes it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// PortSentry's mode word: what `$MODE$` becomes in a kill command and the suffix of the
/// blocked file (`BLOCKED_FILE.atcp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModeToken {
    Atcp,
    Stcp,
    Audp,
    Sudp,
}

impl ModeToken {
    pub const ALL: [ModeToken; 4] = [
        ModeToken::Atcp,
        ModeToken::Stcp,
        ModeToken::Audp,
        ModeToken::Sudp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModeToken::Atcp => "atcp",
            ModeToken::Stcp => "stcp",
            ModeToken::Audp => "audp",
            ModeToken::Sudp => "sudp",
        }
    }

    /// The token spelled `s`; `None` for anything else (`manual` included).
    pub fn parse(s: &str) -> Option<ModeToken> {
        ModeToken::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn protocol(self) -> Protocol {
        match self {
            ModeToken::Atcp | ModeToken::Stcp => Protocol::Tcp,
            ModeToken::Audp | ModeToken::Sudp => Protocol::Udp,
        }
    }
}

impl fmt::Display for ModeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The word for a ban that no scan caused (an operator's): where PortSentry's files and
/// our state file would hold a mode token.
pub const MANUAL: &str = "manual";

/// The mode word of a ban: its token, or [`MANUAL`].
pub fn mode_word(mode: Option<ModeToken>) -> &'static str {
    mode.map_or(MANUAL, ModeToken::as_str)
}

/// The word for a ban of a network put in force when enough of its hosts were banned
/// (`status`, the state file); the kernel holds it as a scan ban.
pub const ESCALATION: &str = "escalation";

/// The label and state-file word of a ban's origin.
pub fn origin_name(o: BanOrigin) -> &'static str {
    match o {
        BanOrigin::Scan => "scan",
        BanOrigin::Manual => "manual",
        // A ban the kernel made and the daemon has not responded to (never in the
        // daemon's records: it responds, and the ban becomes a scan ban).
        BanOrigin::Kernel => "kernel",
        BanOrigin::CrowdSec => "crowdsec",
    }
}

/// The origins a ban the daemon keeps may have (never [`BanOrigin::Kernel`]).
pub const RECORDED_ORIGINS: [BanOrigin; 3] =
    [BanOrigin::Scan, BanOrigin::Manual, BanOrigin::CrowdSec];

/// The origin named `name` ([`origin_name`]'s inverse).
pub fn origin_from_name(name: &str) -> Option<BanOrigin> {
    RECORDED_ORIGINS
        .into_iter()
        .find(|o| origin_name(*o) == name)
}

/// Why a ban ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanEnd {
    /// Its time ran out.
    Expired,
    /// The operator lifted it.
    Unbanned,
    /// The ban guard lifted it: it lay inside a protected network (the ignore list
    /// grew, this host got the address, or it came from before the guard).
    Protected,
    /// The ban of its network replaced it (an escalation).
    Escalated,
    /// Its CrowdSec decision was deleted at the Local API (or is no longer listed there).
    Withdrawn,
}

impl BanEnd {
    pub const ALL: [BanEnd; 5] = [
        BanEnd::Expired,
        BanEnd::Unbanned,
        BanEnd::Protected,
        BanEnd::Escalated,
        BanEnd::Withdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BanEnd::Expired => "expired",
            BanEnd::Unbanned => "unbanned",
            BanEnd::Protected => "protected",
            BanEnd::Escalated => "escalated",
            BanEnd::Withdrawn => "withdrawn",
        }
    }
}

/// What kind of step ran, as the `kind` label of `portsentry_actions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    HostsDeny,
    Route,
    RunCmd,
    Unroute,
    HostsDenyRemove,
    UnrunCmd,
}

impl ActionKind {
    pub const ALL: [ActionKind; 6] = [
        ActionKind::HostsDeny,
        ActionKind::Route,
        ActionKind::RunCmd,
        ActionKind::Unroute,
        ActionKind::HostsDenyRemove,
        ActionKind::UnrunCmd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::HostsDeny => "hosts_deny",
            ActionKind::Route => "route",
            ActionKind::RunCmd => "run_cmd",
            ActionKind::Unroute => "unroute",
            ActionKind::HostsDenyRemove => "hosts_deny_remove",
            ActionKind::UnrunCmd => "unrun_cmd",
        }
    }

    /// A shell command (which can time out), rather than a hosts.deny edit.
    pub fn is_command(self) -> bool {
        !matches!(self, ActionKind::HostsDeny | ActionKind::HostsDenyRemove)
    }
}

/// How a step ended, as the `result` label of `portsentry_actions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionResult {
    Ok,
    Failed,
    /// A command ran past KILL_TIMEOUT and was killed.
    TimedOut,
}

impl ActionResult {
    pub const ALL: [ActionResult; 3] = [
        ActionResult::Ok,
        ActionResult::Failed,
        ActionResult::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionResult::Ok => "ok",
            ActionResult::Failed => "failed",
            ActionResult::TimedOut => "timed_out",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for t in ModeToken::ALL {
            assert_eq!(ModeToken::parse(t.as_str()), Some(t));
        }
        assert_eq!(ModeToken::parse(MANUAL), None);
        assert_eq!(mode_word(None), "manual");
        assert_eq!(mode_word(Some(ModeToken::Sudp)), "sudp");
        for o in RECORDED_ORIGINS {
            assert_eq!(origin_from_name(origin_name(o)), Some(o));
        }
        for p in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(Protocol::from_number(p.number()), Some(p));
        }
        assert_eq!(Protocol::from_number(0), None);
        assert_eq!(ModeToken::Audp.protocol(), Protocol::Udp);
    }
}
