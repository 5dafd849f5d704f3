//! The value types of `portsentry.conf` and their parsers. A parser takes the key (for its
//! message) and the text between the quotes, and returns the value or the message only;
//! [`super::parse`] adds the file and line. The syntax of every type is in
//! `docs/configuration.md` ("Value types").

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use super::{ports::PortSet, text::shorten};
use crate::kinds::{ModeToken, Protocol};

/// `BLOCK_TCP` / `BLOCK_UDP`: what to do with a host that tripped a watched port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BlockMode {
    /// `0`: log the attack, act on nothing.
    ReportOnly,
    /// `1`: ban the host (our XDP ban) and run the kill actions.
    #[default]
    Block,
    /// `2`: run `KILL_RUN_CMD` only; no ban, no `KILL_ROUTE`, no `KILL_HOSTS_DENY`.
    RunCmdOnly,
}

impl BlockMode {
    /// The number PortSentry uses for the mode.
    pub fn as_number(self) -> u8 {
        match self {
            BlockMode::ReportOnly => 0,
            BlockMode::Block => 1,
            BlockMode::RunCmdOnly => 2,
        }
    }
}

impl fmt::Display for BlockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockMode::ReportOnly => "0 (report only)",
            BlockMode::Block => "1 (block)",
            BlockMode::RunCmdOnly => "2 (run KILL_RUN_CMD only)",
        })
    }
}

/// `TCP_MODE` / `UDP_MODE`: how a protocol is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// PortSentry's `atcp`/`audp`: every port below `ADVANCED_PORTS_*` except
    /// `ADVANCED_EXCLUDE_*` (and ports with a listening service).
    #[default]
    Advanced,
    /// PortSentry's `stcp`/`sudp` (and `tcp`/`udp`, which we run as stealth): the ports in
    /// `TCP_PORTS`/`UDP_PORTS` (except ports with a listening service).
    Stealth,
    /// The protocol is not watched.
    Off,
}

impl Mode {
    /// PortSentry's name of the mode for a protocol (`$MODE$`: `atcp`, `stcp`, `audp`,
    /// `sudp`), or `None` for [`Mode::Off`].
    pub fn token(self, proto: Protocol) -> Option<ModeToken> {
        Some(match (self, proto) {
            (Mode::Off, _) => return None,
            (Mode::Advanced, Protocol::Tcp) => ModeToken::Atcp,
            (Mode::Stealth, Protocol::Tcp) => ModeToken::Stcp,
            (Mode::Advanced, Protocol::Udp) => ModeToken::Audp,
            (Mode::Stealth, Protocol::Udp) => ModeToken::Sudp,
        })
    }

    /// Parses a `TCP_MODE` value (`atcp`, `stcp`, `tcp`, `advanced`, `stealth`, `off`).
    pub fn parse_tcp(value: &str) -> Result<Mode, String> {
        Self::parse_for(
            "TCP_MODE",
            value,
            ["atcp", "stcp", "tcp"],
            ["audp", "sudp", "udp"],
        )
    }

    /// Parses a `UDP_MODE` value (`audp`, `sudp`, `udp`, `advanced`, `stealth`, `off`).
    pub fn parse_udp(value: &str) -> Result<Mode, String> {
        Self::parse_for(
            "UDP_MODE",
            value,
            ["audp", "sudp", "udp"],
            ["atcp", "stcp", "tcp"],
        )
    }

    fn parse_for(
        key: &str,
        value: &str,
        [adv, stealth, connect]: [&str; 3],
        other: [&str; 3],
    ) -> Result<Mode, String> {
        let v = value.trim();
        if v == adv || v == "advanced" {
            Ok(Mode::Advanced)
        } else if v == stealth || v == connect || v == "stealth" {
            Ok(Mode::Stealth)
        } else if v == "off" {
            Ok(Mode::Off)
        } else {
            let hint = if other.contains(&v) {
                format!(" ({v} is a mode of the other protocol)")
            } else {
                String::new()
            };
            Err(format!(
                "{key} must be {adv} or advanced, {stealth} or stealth, {connect} (run as \
                 stealth), or off, not \"{value}\"{hint}"
            ))
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Advanced => "advanced",
            Mode::Stealth => "stealth",
            Mode::Off => "off",
        })
    }
}

/// `XDP_MODE` (and `--xdp-mode`): how to attach to an interface. The command line takes the
/// same words as the file: `native`, `skb`, `auto`.
//
// The variants' notes are `//` comments, not doc comments: clap would show doc comments in
// `--help` in place of the one-line list of values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachMode {
    // In the driver (fastest); fails where the driver has no XDP support.
    Native,
    // Generic XDP in the network stack; works on every interface.
    Skb,
    // Native, falling back to generic when the driver refuses.
    #[default]
    Auto,
}

/// `N` or `A-B` items separated by commas; whitespace around items; may be empty.
pub(super) fn port_list(key: &str, value: &str) -> Result<PortSet, String> {
    let mut set = PortSet::new();
    if value.trim().is_empty() {
        return Ok(set);
    }
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!(
                "{key} has an empty item (two commas in a row, or a comma at an end); write \
                 ports or ranges separated by commas, e.g. \"1,11,512-515\""
            ));
        }
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (port(key, a.trim(), item)?, port(key, b.trim(), item)?),
            None => {
                let p = port(key, item, item)?;
                (p, p)
            }
        };
        if a > b {
            return Err(format!(
                "{key} has the range {item}, which runs backwards; write {b}-{a}"
            ));
        }
        for p in a..=b {
            set.insert(p);
        }
    }
    Ok(set)
}

fn port(key: &str, s: &str, item: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{key} has \"{}\", which is not a port or a range of ports; write ports (0-65535) \
             or ranges like 512-515, separated by commas",
            shorten(item)
        ));
    }
    s.parse::<u16>()
        .map_err(|_| format!("{key} has the port {s}, which is out of range; ports are 0 to 65535"))
}

/// A whole number from `min` to `max` (`u32::MAX` meaning no upper bound), digits only.
pub(super) fn number(key: &str, value: &str, min: u32, max: u32) -> Result<u32, String> {
    let v = value.trim();
    let n = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u32>().ok()
    } else {
        None
    };
    match n.filter(|n| (min..=max).contains(n)) {
        Some(n) => Ok(n),
        None if max == u32::MAX => Err(format!(
            "{key} must be a whole number of at least {min}, not \"{value}\""
        )),
        None => Err(format!(
            "{key} must be a whole number from {min} to {max}, not \"{value}\""
        )),
    }
}

/// `ESCALATE_AFTER`: 0 (off) or a count of at least 2 (one banned host is not a crowd:
/// 1 would turn every scan ban into a ban of its whole network).
pub(super) fn escalate_after(key: &str, value: &str) -> Result<u32, String> {
    match number(key, value, 0, u32::MAX)? {
        1 => Err(format!(
            "{key} must be 0 (off) or at least 2, not 1: one banned host would ban its whole \
             network"
        )),
        n => Ok(n),
    }
}

/// `0` or `1`.
pub(super) fn flag(key: &str, value: &str) -> Result<bool, String> {
    match value.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("{key} must be 0 or 1, not \"{value}\"")),
    }
}

pub(super) fn block_mode(key: &str, value: &str) -> Result<BlockMode, String> {
    match value.trim() {
        "0" => Ok(BlockMode::ReportOnly),
        "1" => Ok(BlockMode::Block),
        "2" => Ok(BlockMode::RunCmdOnly),
        _ => Err(format!(
            "{key} must be 0, 1 or 2, not \"{value}\" (0 = report only, 1 = block, 2 = run \
             KILL_RUN_CMD only)"
        )),
    }
}

pub(super) fn xdp_mode(key: &str, value: &str) -> Result<AttachMode, String> {
    match value.trim() {
        "native" => Ok(AttachMode::Native),
        "skb" => Ok(AttachMode::Skb),
        "auto" => Ok(AttachMode::Auto),
        _ => Err(format!(
            "{key} must be native, skb or auto, not \"{value}\""
        )),
    }
}

pub(super) fn absolute_path(key: &str, value: &str) -> Result<PathBuf, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(format!(
            "{key} must be an absolute path (starting with /), not empty"
        ));
    }
    if !v.starts_with('/') {
        return Err(format!(
            "{key} must be an absolute path (starting with /), not \"{value}\""
        ));
    }
    Ok(PathBuf::from(v))
}

/// An absolute path, or empty for none.
pub(super) fn optional_absolute_path(key: &str, value: &str) -> Result<Option<PathBuf>, String> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        absolute_path(key, value).map(Some)
    }
}

/// A command or text: empty means unset; `$TARGET$` required where `needs_target`.
pub(super) fn command(
    key: &str,
    value: &str,
    needs_target: bool,
) -> Result<Option<String>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    if needs_target && !value.contains("$TARGET$") {
        return Err(format!(
            "{key} must contain $TARGET$ (replaced by the attacker's address), e.g. \
             \"/sbin/iptables -I INPUT -s $TARGET$ -j DROP\"; use \"\" or leave {key} out to \
             set none"
        ));
    }
    Ok(Some(value.to_string()))
}

/// The longest duration accepted, in the config file and on the command line: a time
/// that far ahead is still one the system clock and every date format here can hold.
/// Longer bans are what `0` (permanent) is for.
pub const LONGEST: Duration = Duration::from_secs(3_155_760_000);

/// Why a duration was not read.
#[derive(Debug)]
pub enum DurationError {
    Syntax(humantime::DurationError),
    /// Longer than [`LONGEST`].
    TooLong,
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurationError::Syntax(e) => e.fmt(f),
            DurationError::TooLong => f.write_str("longer than 100 years (100y)"),
        }
    }
}

/// The one duration syntax, of the config file and the command line: a bare number of
/// seconds, or humantime syntax (`90s`, `30m`, `12h`, `7d`, `1h 30m`), at most
/// [`LONGEST`]. Whitespace around it is ignored.
pub(crate) fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let v = value.trim();
    let d = if !v.is_empty()
        && v.bytes().all(|b| b.is_ascii_digit())
        && let Ok(secs) = v.parse::<u64>()
    {
        Duration::from_secs(secs)
    } else {
        humantime::parse_duration(v).map_err(DurationError::Syntax)?
    };
    if d > LONGEST {
        return Err(DurationError::TooLong);
    }
    Ok(d)
}

/// A [`parse_duration`] value for `key`; `zero` says what 0 means there.
pub(super) fn duration(key: &str, value: &str, zero: &str) -> Result<Duration, String> {
    parse_duration(value).map_err(|e| match e {
        DurationError::TooLong => {
            format!("{key} must be at most 100 years (100y); {zero}; not \"{value}\"")
        }
        DurationError::Syntax(_) => format!(
            "{key} must be a duration: seconds (\"3600\") or a number with a unit (\"90s\", \
             \"30m\", \"12h\", \"7d\", \"1h 30m\"); {zero}; not \"{value}\""
        ),
    })
}

/// A [`duration`] other than zero.
pub(super) fn nonzero_duration(key: &str, value: &str) -> Result<Duration, String> {
    let d = duration(key, value, "it must not be 0")?;
    if d.is_zero() {
        return Err(format!(
            "{key} must be longer than 0, e.g. \"30s\", not \"{value}\""
        ));
    }
    Ok(d)
}

/// Interface names separated by commas; may be empty.
pub(super) fn interfaces(key: &str, value: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    if value.trim().is_empty() {
        return Ok(out);
    }
    for item in value.split(',') {
        let name = item.trim();
        let bad = |why: &str| {
            Err(format!(
                "{key} has the interface name \"{}\", which {why}; write names such as \
                 \"eth0,eth1\"",
                shorten(name)
            ))
        };
        if name.is_empty() {
            return bad("is empty (two commas in a row, or a comma at an end)");
        }
        if name.len() > 15 {
            return bad("is longer than 15 characters");
        }
        if name == "." || name == ".." {
            return bad("is not allowed");
        }
        if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
            return bad("contains '/', ':' or whitespace");
        }
        if out.iter().any(|o| o == name) {
            return Err(format!("{key} lists the interface {name} twice"));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// `IP:port` or `[IPv6]:port` with a port other than 0, or empty for none.
pub(super) fn socket_address(key: &str, value: &str) -> Result<Option<SocketAddr>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(Some(a)),
        _ => Err(format!(
            "{key} must be an IP address and a port other than 0, such as \"127.0.0.1:9100\" or \
             \"[::1]:9100\" (\"\" = off), not \"{value}\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    #[test]
    fn the_command_line_takes_the_xdp_mode_words_of_the_file() {
        let words: Vec<String> = AttachMode::value_variants()
            .iter()
            .map(|m| m.to_possible_value().unwrap().get_name().to_owned())
            .collect();
        assert_eq!(words, ["native", "skb", "auto"]);
        for w in &words {
            assert_eq!(
                AttachMode::from_str(w, false),
                xdp_mode("XDP_MODE", w),
                "{w}"
            );
        }
        assert!(AttachMode::from_str("drv", false).is_err());
    }

    #[test]
    fn one_duration_syntax() {
        assert_eq!(parse_duration(" 90 ").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "+5", "-5", "soon", "99999999999999999999"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        // Far enough to overflow a date (it panicked the daemon, its ban book locked).
        // 100 years as humantime counts them (365.25 days each).
        assert_eq!(parse_duration("100y").unwrap(), LONGEST);
        assert_eq!(parse_duration("36525d").unwrap(), LONGEST);
        for long in ["36526d", "18446744073709551615", "101y"] {
            assert!(
                matches!(parse_duration(long), Err(DurationError::TooLong)),
                "{long:?}"
            );
        }
    }
}
