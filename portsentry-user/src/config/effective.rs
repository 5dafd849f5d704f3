//! The effective settings: the configuration file (or the built-in defaults) with the
//! command line's overrides, the port policy, the ignore list and the interfaces, all
//! checked before anything is applied. `check-config` prints them.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Result;
use clap::Args;
use ipnet::IpNet;
use portsentry_common::maps::IGNORE_MAX;

use super::{
    AttachMode, BlockMode, Config, ConfigError, Mode,
    ignore::IgnoreList,
    localaddrs,
    policy::{self, PortPolicy},
};
use crate::{
    kinds::{ModeToken, Protocol},
    paths::DEFAULT_CONFIG,
};

/// Where the settings come from.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// The PortSentry configuration file [default: /etc/portsentry/portsentry.conf if
    /// it exists, else built-in defaults: advanced TCP and UDP modes, blocking on].
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to attach to (repeatable); overrides INTERFACES.
    #[arg(short, long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// XDP attach mode; overrides XDP_MODE.
    #[arg(long, value_enum, value_name = "MODE")]
    pub xdp_mode: Option<AttachMode>,
    /// TCP mode (`atcp`/`advanced`, `stcp`/`tcp`/`stealth`, `off`); overrides TCP_MODE.
    #[arg(long, value_name = "MODE", value_parser = parse_tcp_mode)]
    pub tcp_mode: Option<Mode>,
    /// UDP mode (`audp`/`advanced`, `sudp`/`udp`/`stealth`, `off`); overrides UDP_MODE.
    #[arg(long, value_name = "MODE", value_parser = parse_udp_mode)]
    pub udp_mode: Option<Mode>,
    /// PortSentry 1.2's start-up file on Debian: when it exists, its TCP_MODE and
    /// UDP_MODE set the modes (an empty or unset one: off), over those of the
    /// configuration file; --tcp-mode and --udp-mode still win [default:
    /// /etc/default/portsentry with /etc/portsentry/portsentry.conf, none with another
    /// file].
    #[arg(long, value_name = "FILE")]
    pub modes_file: Option<PathBuf>,
}

fn parse_tcp_mode(s: &str) -> Result<Mode, String> {
    Mode::parse_tcp(s)
}

fn parse_udp_mode(s: &str) -> Result<Mode, String> {
    Mode::parse_udp(s)
}

/// Everything the daemon runs with.
#[derive(Clone, Debug)]
pub struct Effective {
    pub config: Config,
    pub policy: PortPolicy,
    /// The IGNORE_FILE's entries.
    pub ignore_file: IgnoreList,
    /// Loopback, this host's addresses and the gateways of its routes (refreshed while
    /// running).
    pub always_ignored: Vec<localaddrs::Always>,
    pub interfaces: Vec<String>,
    pub xdp_mode: AttachMode,
    /// What an operator should know (also the port policy's warnings).
    pub warnings: Vec<String>,
    /// IGNORE_FILE is set and was not there when the list was read (a warning at a start,
    /// a reload refused).
    pub ignore_file_missing: bool,
    /// The CrowdSec Local API to share bans with (its secrets read); `None`: off.
    pub crowdsec: Option<super::crowdsec::Settings>,
    /// The start-up file the modes came from (`--modes-file`), when it exists.
    pub modes_file: Option<PathBuf>,
}

/// Where [`load_with`] takes the gateways of this host's routes from.
#[derive(Clone, Copy, Debug)]
pub enum Gateways<'a> {
    /// The kernel's routes, read now.
    Read,
    /// Those of an [`Effective::always_ignored`] in force (the daemon's reload: its
    /// route watch keeps them current, and a failed read must not drop them).
    Keep(&'a [localaddrs::Always]),
}

/// Loads the config named by `args` (or the default one, or the built-in defaults),
/// applies the command line, and validates. Nothing is applied anywhere.
pub fn load(args: &ConfigArgs) -> Result<Effective> {
    load_with(args, Gateways::Read)
}

/// [`load`], with the gateways from `gateways`.
pub fn load_with(args: &ConfigArgs, gateways: Gateways<'_>) -> Result<Effective> {
    let mut config = match &args.config {
        Some(path) => super::load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => super::load(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    };
    let mut modes_file = super::debian_defaults::apply(&mut config, args.modes_file.as_deref())?;
    if args.tcp_mode.is_some() && args.udp_mode.is_some() {
        // Both given on the command line: nothing of the file is in force.
        modes_file = None;
    }
    if let Some(m) = args.tcp_mode {
        config.tcp_mode = m;
    }
    if let Some(m) = args.udp_mode {
        config.udp_mode = m;
    }
    if let Some(m) = args.xdp_mode {
        config.xdp_mode = m;
    }
    if !args.interfaces.is_empty() {
        config.interfaces = args.interfaces.clone();
    }
    if let Some(path) = &modes_file {
        stealth_modes_have_ports(&config, path, args)?;
    }
    config.validate()?;
    let mut eff = build(config, gateways)?;
    if let Some(path) = &modes_file {
        let conf = &eff.config;
        for (key, given) in [
            ("TCP_MODE", args.tcp_mode.is_some()),
            ("UDP_MODE", args.udp_mode.is_some()),
        ] {
            let line = conf.line_of(key);
            if line != 0 && !given {
                eff.warnings.push(format!(
                    "{key} of {} (line {line}) does not apply: the modes come from {} \
                     (PortSentry 1.2's start-up file); remove that file to use {key}",
                    conf.source.as_deref().map_or_else(
                        || "the configuration".to_owned(),
                        |p| p.display().to_string()
                    ),
                    path.display()
                ));
            }
        }
    }
    eff.modes_file = modes_file;
    // At a start, a reload and check-config; not for the guard of the CLI's ban and
    // unban, which must work while the pinned maps enforce bans whatever the list.
    eff.check_kernel_ignore_size()?;
    Ok(eff)
}

/// A stealth mode the start-up file `path` sets needs the configuration's port list:
/// the error names the file the mode came from (validation would name the
/// configuration's TCP_MODE line, which is not in force).
fn stealth_modes_have_ports(config: &Config, path: &Path, args: &ConfigArgs) -> Result<()> {
    for (mode_key, given, mode, ports_key, ports) in [
        (
            "TCP_MODE",
            args.tcp_mode.is_some(),
            config.tcp_mode,
            "TCP_PORTS",
            &config.tcp_ports,
        ),
        (
            "UDP_MODE",
            args.udp_mode.is_some(),
            config.udp_mode,
            "UDP_PORTS",
            &config.udp_ports,
        ),
    ] {
        if !given && mode == Mode::Stealth && ports.is_none() {
            return Err(super::ConfigError::new(
                path,
                0,
                format!(
                    "its {mode_key} is a stealth mode, which watches the ports {ports_key} \
                     lists, but {} does not set {ports_key}; set it there (e.g. \
                     {ports_key}=\"1,11,15\"), or choose an advanced mode here",
                    config.source.as_deref().map_or_else(
                        || "the configuration".to_owned(),
                        |p| p.display().to_string()
                    )
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// The effective settings of an already validated config.
pub fn from_config(config: Config) -> Result<Effective> {
    build(config, Gateways::Read)
}

fn build(config: Config, gateways: Gateways<'_>) -> Result<Effective> {
    let mut warnings = Vec::new();
    // A missing ignore file is not fatal (PortSentry 1.2 carries on too; Debian makes
    // the file at install time); a malformed one is.
    let ignore_file_missing = config.ignore_file.as_ref().is_some_and(|p| !p.exists());
    let ignore_file = match &config.ignore_file {
        Some(path) if ignore_file_missing => {
            warnings.push(format!(
                "IGNORE_FILE {} does not exist: only loopback and this host's addresses are \
                 ignored",
                path.display()
            ));
            IgnoreList::new()
        }
        Some(path) => IgnoreList::load(path)?,
        None => IgnoreList::new(),
    };
    let policy = policy::build(
        &config,
        policy::read_ephemeral_range(Path::new(policy::LOCAL_PORT_RANGE)),
    );
    warnings.extend(policy.warnings.iter().cloned());
    warnings.extend(super::crowdsec::warnings(&config));
    let crowdsec = super::crowdsec::settings(&config)?;
    let always_ignored = match gateways {
        Gateways::Read => localaddrs::always_ignored(&mut warnings)?,
        Gateways::Keep(before) => localaddrs::always_ignored_keeping_gateways(before)?,
    };
    Ok(Effective {
        interfaces: config.interfaces.clone(),
        xdp_mode: config.xdp_mode,
        config,
        policy,
        ignore_file,
        always_ignored,
        warnings,
        ignore_file_missing,
        crowdsec,
        modes_file: None,
    })
}

impl Effective {
    /// Fails unless there is an interface to attach to.
    pub fn require_interfaces(&self) -> Result<()> {
        if self.interfaces.is_empty() {
            return Err(self
                .config
                .error_at(
                    "INTERFACES",
                    "no interface to watch: give one with -i IFACE (repeatable) or set \
                     INTERFACES=\"eth0\" in the configuration file",
                )
                .into());
        }
        Ok(())
    }

    /// The networks the kernel's ignore list gets: the file's plus the always-ignored.
    pub fn ignored_nets(&self) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = self.ignore_file.nets().to_vec();
        v.extend(localaddrs::nets(&self.always_ignored));
        v.sort();
        v.dedup();
        v
    }

    /// The `SOURCE_PREFIX_V6` networks that hold an ignored address or one of this
    /// host's (and lie inside no ignored network): their sources are counted and banned
    /// one address at a time, so that no prefix ban covers what must stay reachable.
    pub fn single_source_nets(&self) -> Vec<IpNet> {
        single_source_nets(&self.ignored_nets(), self.config.source_prefix_v6)
    }

    /// The kernel's ignore list holds the file's networks, loopback, this host's
    /// addresses and the `SOURCE_PREFIX_V6` networks counted by address: at most
    /// `IGNORE_MAX` entries.
    pub fn check_kernel_ignore_size(&self) -> Result<()> {
        let entries = self.ignored_nets().len() + self.single_source_nets().len();
        if entries > IGNORE_MAX as usize {
            let message = format!(
                "its {} networks take {entries} entries of the kernel's ignore list with \
                 loopback, this host's addresses, its gateways and the SOURCE_PREFIX_V6 \
                 networks counted by address (one for each IPv6 entry narrower than \
                 SOURCE_PREFIX_V6); the kernel holds at most {IGNORE_MAX}: list fewer, wider \
                 networks",
                self.ignore_file.len()
            );
            return Err(match &self.config.ignore_file {
                Some(file) => ConfigError::new(file, 0, message),
                None => self.config.error_at("IGNORE_FILE", message),
            }
            .into());
        }
        Ok(())
    }

    pub fn is_ignored(&self, ip: IpAddr) -> bool {
        self.ignore_file.contains(ip) || localaddrs::covered(&self.always_ignored, ip)
    }

    /// PortSentry's `$MODE$` token for a protocol, `None` when it is off.
    pub fn mode_token(&self, proto: Protocol) -> Option<ModeToken> {
        let mode = match proto {
            Protocol::Tcp => self.config.tcp_mode,
            Protocol::Udp => self.config.udp_mode,
        };
        mode.token(proto)
    }

    /// `BLOCK_TCP` or `BLOCK_UDP`.
    pub fn block_mode(&self, proto: Protocol) -> BlockMode {
        match proto {
            Protocol::Tcp => self.config.block_tcp,
            Protocol::Udp => self.config.block_udp,
        }
    }
}

/// The networks of `len` bits (SOURCE_PREFIX_V6) that hold a narrower entry of
/// `ignored` and lie inside no entry of it (IPv4 and IPv4-mapped entries have none).
fn single_source_nets(ignored: &[IpNet], len: u32) -> Vec<IpNet> {
    let Ok(len @ 0..128) = u8::try_from(len) else {
        return Vec::new();
    };
    let mut v: Vec<IpNet> = ignored
        .iter()
        .filter_map(|n| match n {
            IpNet::V6(n)
                if n.prefix_len() > len
                    && n.network().to_ipv4_mapped().is_none()
                    && !n.network().is_loopback() =>
            {
                Some(IpNet::V6(
                    ipnet::Ipv6Net::new(n.network(), len)
                        .expect("a shorter prefix")
                        .trunc(),
                ))
            }
            _ => None,
        })
        .filter(|s| !ignored.iter().any(|i| i.contains(s)))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod single_source_tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    /// An ignore file within its own limit whose IPv6 hosts each bring a network counted
    /// by address: more than the kernel's list holds, an error at load (check-config, a
    /// start, a reload), not a failure writing the map.
    #[test]
    fn the_kernel_entries_the_list_takes_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portsentry.ignore");
        let hosts: String = (0..9_000u32)
            .map(|i| format!("2001:db8:{:x}::1\n", i))
            .collect();
        std::fs::write(&file, hosts).unwrap();
        let config = |source_prefix_v6| Config {
            ignore_file: Some(file.clone()),
            source_prefix_v6,
            ..Config::default()
        };
        let e = format!(
            "{:#}",
            from_config(config(64))
                .unwrap()
                .check_kernel_ignore_size()
                .unwrap_err()
        );
        assert!(
            e.starts_with(&format!("{}: its 9000 networks take ", file.display()))
                && e.contains("the kernel holds at most 16384"),
            "{e}"
        );
        // Counted by the /128 (no network counted by address): they fit.
        let eff = from_config(config(128)).unwrap();
        eff.check_kernel_ignore_size().unwrap();
        assert!(!eff.ignore_file_missing);
        std::fs::remove_file(&file).unwrap();
        assert!(from_config(config(128)).unwrap().ignore_file_missing);
    }

    /// The start-up file sets a stealth mode the configuration has no ports for: the
    /// error names the start-up file, where the mode is set.
    #[test]
    fn a_stealth_mode_from_the_start_up_file_needs_the_configurations_ports() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("portsentry.conf");
        let modes = dir.path().join("portsentry.default");
        std::fs::write(&conf, "TCP_MODE=\"atcp\"\nUDP_PORTS=\"1\"\n").unwrap();
        std::fs::write(&modes, "TCP_MODE=\"tcp\"\nUDP_MODE=\"udp\"\n").unwrap();
        let args = |tcp_mode| ConfigArgs {
            config: Some(conf.clone()),
            modes_file: Some(modes.clone()),
            tcp_mode,
            ..ConfigArgs::default()
        };
        let e = format!("{:#}", load(&args(None)).unwrap_err());
        assert_eq!(
            e,
            format!(
                "{}: its TCP_MODE is a stealth mode, which watches the ports TCP_PORTS lists, \
                 but {} does not set TCP_PORTS; set it there (e.g. TCP_PORTS=\"1,11,15\"), \
                 or choose an advanced mode here",
                modes.display(),
                conf.display()
            )
        );
        // The command line's mode is in force instead: no error.
        load(&args(Some(Mode::Advanced))).unwrap();
    }

    #[test]
    fn networks_holding_an_ignored_address_are_counted_per_address() {
        let ignored = nets(&[
            "2001:db8:0:1::99/128",
            "2001:db8:0:1::1/128",
            "2001:db8:5::/48",
            "2001:db8:5:0:1::7/128",
            "2001:db8:9::/96",
            "192.0.2.1/32",
            "::ffff:198.51.100.7/128",
        ]);
        assert_eq!(
            single_source_nets(&ignored, 64),
            nets(&["2001:db8:0:1::/64", "2001:db8:9::/64"]),
            "one /64 for two addresses; none inside an ignored /48; none for IPv4"
        );
        assert!(single_source_nets(&ignored, 128).is_empty());
        assert_eq!(
            single_source_nets(&ignored, 48),
            nets(&["2001:db8::/48", "2001:db8:9::/48"])
        );
    }
}
