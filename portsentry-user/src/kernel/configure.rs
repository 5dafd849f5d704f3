//! A configuration, as the kernel holds it: map sizes at load, and the watched ports,
//! runtime settings and ignore list written into the maps (at start and on reload).

use anyhow::Result;
use portsentry_common::maps::{
    KernelBan, PROTOCOL_FAMILY_WORDS, PROTOCOL_WORDS, SETTING_ACK_PORTS_SHIFT,
    SETTING_DROP_EVASIVE, SETTING_KBAN_TCP, SETTING_KBAN_UDP, SETTING_TRW, SETTING_V6_PREFIX_SHIFT,
    SETTING_VERIFY, Settings,
};

use super::{Dataplane, MapSizes};
use crate::{
    config::{BlockMode, effective::Effective, ports::PortSet, services},
    kinds::Protocol,
};

/// Whether the program bans a source of `proto` itself at the probe that reaches the
/// trigger: when the configuration lets the block come first (BLOCK_TCP/BLOCK_UDP = 1,
/// and no KILL_RUN_CMD that KILL_RUN_CMD_FIRST = 1 runs before it) and the protocol is
/// watched. Otherwise the daemon decides.
pub fn kernel_bans(eff: &Effective, proto: Protocol) -> bool {
    eff.block_mode(proto) == BlockMode::Block
        && !(eff.config.kill_run_cmd_first && eff.config.kill_run_cmd.is_some())
        && eff.mode_token(proto).is_some()
}

/// The kernel-side ban's settings (`PS_KBAN`).
pub fn kernel_ban(eff: &Effective) -> KernelBan {
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    KernelBan {
        ban_ns: ns(eff.config.ban_time),
        window_ns: ns(eff.config.scan_window),
        per_sec: u64::from(eff.config.max_bans_per_sec),
        wall_offset_ns: wall_offset_ns(),
        second: 0,
        used: 0,
    }
}

/// Wall clock minus CLOCK_MONOTONIC, in ns (wrapping: the program adds it back). The
/// wall clock is read first: the offset comes out at most the true one, never above
/// what `clock::to_system` (which reads them the other way round) adds back. So a ban
/// the program dates at a second's start (`probe::kernel_ban`) shows in that second,
/// not a few ns into the one before.
pub fn wall_offset_ns() -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    wall.wrapping_sub(crate::clock::monotonic_ns())
}

/// The kernel's runtime settings for a configuration; `secret` keys the challenge
/// cookies.
pub fn kernel_settings(eff: &Effective, secret: u64) -> Settings {
    let rate = eff.config.events_per_sec.clamp(1, 10_000_000);
    let walk = eff.config.detection_walk();
    Settings {
        event_trigger: eff.config.scan_trigger.max(1),
        events_per_sec: rate,
        event_burst: rate,
        flags: [
            (eff.config.verify_sources, SETTING_VERIFY),
            (kernel_bans(eff, Protocol::Tcp), SETTING_KBAN_TCP),
            (kernel_bans(eff, Protocol::Udp), SETTING_KBAN_UDP),
            (eff.config.block_evasive_packets, SETTING_DROP_EVASIVE),
            (walk.is_some(), SETTING_TRW),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(0, |flags, (_, flag)| flags | flag)
            | (eff.config.source_prefix_v6.min(128) << SETTING_V6_PREFIX_SHIFT)
            | (eff.config.ack_scan_ports.min(255) << SETTING_ACK_PORTS_SHIFT),
        cookie_secret: secret,
        trw: walk.unwrap_or_default(),
    }
}

/// The map sizes for a configuration.
pub fn map_sizes(eff: &Effective) -> MapSizes {
    MapSizes {
        bans: eff.config.max_bans,
        sources: eff.config.max_tracked_sources,
        ..MapSizes::default()
    }
}

/// The ports a segment with ACK is looked up on: the watched TCP ports no socket
/// listens on (`listening`), or none when ACK_SCAN_PORTS is 0 or TCP is not watched.
pub fn ack_ports(eff: &Effective, listening: &PortSet) -> PortSet {
    let mut ports = PortSet::new();
    if eff.config.ack_scan_ports == 0 || eff.mode_token(Protocol::Tcp).is_none() {
        return ports;
    }
    for p in eff.policy.tcp.iter().filter(|p| !listening.contains(*p)) {
        ports.insert(p);
    }
    ports
}

/// The IP protocols a datagram of is a probe (`PS_PROTOCOLS`): those nothing here
/// serves, or none when PROTO_SCAN_PROTOCOLS is 0 or TCP is not watched (IP-protocol
/// scans are acted on under the TCP settings).
pub fn watched_protocols(eff: &Effective, served: &services::Served) -> ProtocolWords {
    if eff.config.proto_scan_protocols == 0 || eff.mode_token(Protocol::Tcp).is_none() {
        return [0; PROTOCOL_WORDS as usize];
    }
    protocol_words(served)
}

/// `PS_PROTOCOLS`'s words.
pub type ProtocolWords = [u64; PROTOCOL_WORDS as usize];

/// `PS_PROTOCOLS`'s words for the protocols nothing serves: IPv4's, then IPv6's.
pub fn protocol_words(served: &services::Served) -> ProtocolWords {
    let mut words = [0; PROTOCOL_WORDS as usize];
    let family_bits = PROTOCOL_FAMILY_WORDS as usize * 64;
    for (family, served) in served.iter().enumerate() {
        for (p, _) in served.iter().enumerate().filter(|(_, s)| !**s) {
            let bit = family * family_bits + p;
            words[bit / 64] |= 1 << (bit % 64);
        }
    }
    words
}

/// Brings `PS_ACK_PORTS`, `PS_PROTOCOLS` and `PS_TCP_SOCKETS` up to date with what this
/// host serves (at start, on reload, and every second: a listener that went away is
/// looked up from then on, a raw socket opened for a protocol takes it out, and a
/// listener that came is in the bitmap that a probe's lookup is skipped by).
pub fn refresh_services(dp: &mut Dataplane, eff: &Effective) -> Result<()> {
    write_services(dp, eff, &Services::read(dp.tcp_listens_seen())?)
}

/// What this host serves, read (from /proc and /sys) apart from writing it, so that a
/// caller holding the dataplane's lock does no file I/O under it.
pub struct Services {
    listening: PortSet,
    protocols: services::Served,
    /// The TCP hooks' count of binds and listens, read before the listeners
    /// ([`Dataplane::tcp_listens_seen`]).
    tcp_seen: Option<u64>,
}

impl Services {
    /// Reads what this host serves; `tcp_seen` is the hooks' count read just before.
    pub fn read(tcp_seen: Option<u64>) -> Result<Services> {
        Ok(Services {
            listening: services::tcp_listening()?,
            protocols: services::served_protocols()?,
            tcp_seen,
        })
    }
}

/// Writes `PS_ACK_PORTS`, `PS_PROTOCOLS` and `PS_TCP_SOCKETS` for what `served` says.
pub fn write_services(dp: &mut Dataplane, eff: &Effective, served: &Services) -> Result<()> {
    dp.write_ack_ports(&ack_ports(eff, &served.listening))?;
    if let Some(seen) = served.tcp_seen {
        dp.write_tcp_sockets(&served.listening, seen)?;
    }
    dp.write_protocols(&watched_protocols(eff, &served.protocols))
}

/// Writes ports, settings and the ignore list into the kernel.
pub fn apply(dp: &mut Dataplane, eff: &Effective) -> Result<()> {
    dp.write_ports(&eff.policy.tcp, &eff.policy.udp)?;
    refresh_services(dp, eff)?;
    // Keep the cookie secret across reloads (and adoptions): answers in flight stay valid.
    let secret = match dp.settings().cookie_secret {
        0 => random_secret(),
        s => s,
    };
    dp.set_kernel_ban_settings(kernel_ban(eff))?;
    dp.write_settings(kernel_settings(eff, secret))?;
    dp.replace_ignore(&eff.ignored_nets(), &eff.single_source_nets())?;
    dp.write_local(crate::config::localaddrs::local_destinations(&eff.always_ignored).as_deref())?;
    Ok(())
}

/// A random 64-bit secret from the kernel.
pub(super) fn random_secret() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a valid 8-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n != 8 {
        // Never fails for 8 bytes once the pool is ready; fall back to the clock.
        return crate::clock::monotonic_ns() ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, effective::from_config};

    #[test]
    fn the_block_comes_first_unless_a_command_must_run_before_it() {
        let bans = |first, cmd: Option<&str>| {
            let eff = from_config(Config {
                kill_run_cmd_first: first,
                kill_run_cmd: cmd.map(str::to_string),
                ..Config::default()
            })
            .unwrap();
            kernel_bans(&eff, Protocol::Tcp)
        };
        assert!(bans(false, None));
        assert!(bans(false, Some("/bin/true")));
        assert!(!bans(true, Some("/bin/true")));
        // KILL_RUN_CMD_FIRST without a command has nothing to run first (1.2 reads it
        // only with KILL_RUN_CMD).
        assert!(bans(true, None));
    }
}
