//! The effective settings: the configuration file (or the built-in defaults) with the
//! command line's overrides, the port policy, the ignore list and the interfaces, all
//! checked before anything is applied. `check-config` prints them.

use std::{fmt::Write as _, net::IpAddr, path::Path};

use anyhow::{Result, bail};
use ipnet::IpNet;

use super::{
    AttachMode, BlockMode, Config, Mode,
    ignore::IgnoreList,
    localaddrs,
    policy::{self, PortPolicy},
};
use crate::{
    actions::{self, Step, Target},
    cli::ConfigArgs,
    kinds::{ModeToken, Protocol},
    paths::DEFAULT_CONFIG,
};

/// Everything the daemon runs with.
#[derive(Clone, Debug)]
pub struct Effective {
    pub config: Config,
    pub policy: PortPolicy,
    /// The IGNORE_FILE's entries.
    pub ignore_file: IgnoreList,
    /// Loopback and this host's addresses (refreshed while running).
    pub always_ignored: Vec<IpNet>,
    pub interfaces: Vec<String>,
    pub xdp_mode: AttachMode,
    /// What an operator should know (also the port policy's warnings).
    pub warnings: Vec<String>,
}

/// Loads the config named by `args` (or the default one, or the built-in defaults),
/// applies the command line, and validates. Nothing is applied anywhere.
pub fn load(args: &ConfigArgs) -> Result<Effective> {
    let mut config = match &args.config {
        Some(path) => super::load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => super::load(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    };
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
    config.validate()?;
    from_config(config)
}

/// The effective settings of an already validated config.
pub fn from_config(config: Config) -> Result<Effective> {
    let mut warnings = Vec::new();
    // A missing ignore file is not fatal (PortSentry 1.2 carries on too; Debian makes
    // the file at install time); a malformed one is.
    let ignore_file = match &config.ignore_file {
        Some(path) if !path.exists() => {
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
    let always_ignored = localaddrs::always_ignored()?;
    Ok(Effective {
        interfaces: config.interfaces.clone(),
        xdp_mode: config.xdp_mode,
        config,
        policy,
        ignore_file,
        always_ignored,
        warnings,
    })
}

impl Effective {
    /// Fails unless there is an interface to attach to.
    pub fn require_interfaces(&self) -> Result<()> {
        if self.interfaces.is_empty() {
            bail!(
                "no interface to watch: give one with -i IFACE (repeatable) or set \
                 INTERFACES=\"eth0\" in the configuration file"
            );
        }
        Ok(())
    }

    /// The networks the kernel's ignore list gets: the file's plus the always-ignored.
    pub fn ignored_nets(&self) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = self.ignore_file.nets().to_vec();
        v.extend(self.always_ignored.iter().copied());
        v.sort();
        v.dedup();
        v
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
        ModeToken::of(mode, proto)
    }

    /// `BLOCK_TCP` or `BLOCK_UDP`.
    pub fn block_mode(&self, proto: Protocol) -> BlockMode {
        match proto {
            Protocol::Tcp => self.config.block_tcp,
            Protocol::Udp => self.config.block_udp,
        }
    }

    /// The `check-config` report.
    pub fn render(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let source = c.source.as_ref().map_or(
            "built-in defaults (no configuration file)".to_owned(),
            |p| p.display().to_string(),
        );
        let _ = writeln!(s, "configuration: {source}");
        let ifaces = if self.interfaces.is_empty() {
            "none (give -i IFACE to run)".to_owned()
        } else {
            self.interfaces.join(", ")
        };
        let _ = writeln!(s, "interfaces:    {ifaces} (XDP mode {:?})", self.xdp_mode);
        for (proto, mode, ports) in [
            ("TCP", c.tcp_mode, &self.policy.tcp),
            ("UDP", c.udp_mode, &self.policy.udp),
        ] {
            let mode = match mode {
                Mode::Advanced => "advanced",
                Mode::Stealth => "stealth",
                Mode::Off => "off",
            };
            let _ = writeln!(
                s,
                "{proto} mode:      {mode}; {} watched ports: {ports}",
                ports.len()
            );
        }
        let _ = writeln!(
            s,
            "               (a port where a local socket is open is never a target, checked per packet)"
        );
        if let Some(r) = &self.policy.ephemeral {
            let _ = writeln!(s, "ephemeral:     {}-{}", r.start(), r.end());
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning:       {w}");
        }
        let _ = writeln!(
            s,
            "trigger:       SCAN_TRIGGER={} (acts on hit {}){}",
            c.scan_trigger,
            c.scan_trigger.max(1),
            if c.scan_window.is_zero() {
                String::new()
            } else {
                format!(
                    " within SCAN_WINDOW={}",
                    humantime::format_duration(c.scan_window)
                )
            }
        );
        let ban_time = if c.ban_time.is_zero() {
            "permanent".to_owned()
        } else {
            humantime::format_duration(c.ban_time).to_string()
        };
        let _ = writeln!(s, "ban time:      {ban_time}");
        let _ = writeln!(s, "ignore list:");
        match &c.ignore_file {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "  from {}: {} entries",
                    p.display(),
                    self.ignore_file.len()
                );
            }
            None => {
                let _ = writeln!(s, "  no IGNORE_FILE");
            }
        }
        for n in self.ignore_file.nets() {
            let _ = writeln!(s, "    {n}");
        }
        let _ = writeln!(s, "  always (loopback and this host's addresses):");
        for n in &self.always_ignored {
            let _ = writeln!(s, "    {n}");
        }
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let block = self.block_mode(proto);
            let _ = writeln!(
                s,
                "actions on a {proto} scan (BLOCK_{proto}={}):",
                block.as_number()
            );
            let Some(mode) = self.mode_token(proto) else {
                let _ = writeln!(s, "  none: {proto} is not watched");
                continue;
            };
            let target = Target {
                ip: "192.0.2.1".parse().expect("valid"),
                port: 1,
                mode,
            };
            let steps = actions::plan(c, block, &target);
            let _ = writeln!(
                s,
                "  1. log the attack alert (syslog{})",
                if c.syslog { "" } else { " off" }
            );
            let mut n = 2;
            for step in &steps {
                let line = match step {
                    Step::XdpBan => "drop the host's packets in XDP (the blocking)".to_owned(),
                    Step::HostsDeny(_) => format!(
                        "append KILL_HOSTS_DENY \"{}\" to {}",
                        c.kill_hosts_deny.as_deref().unwrap_or_default(),
                        c.hosts_deny_file.display()
                    ),
                    Step::Route(_) => format!(
                        "run KILL_ROUTE: {}",
                        c.kill_route.as_deref().unwrap_or_default()
                    ),
                    Step::RunCmd(_) => format!(
                        "run KILL_RUN_CMD: {}",
                        c.kill_run_cmd.as_deref().unwrap_or_default()
                    ),
                    other => format!("{other:?}"),
                };
                let _ = writeln!(s, "  {n}. {line}");
                n += 1;
            }
            if block == BlockMode::ReportOnly {
                let _ = writeln!(s, "  {n}. nothing more: report only");
                n += 1;
            }
            if block == BlockMode::Block {
                let _ = writeln!(
                    s,
                    "  {n}. record it in {} and {}.{mode}",
                    c.history_file.display(),
                    c.blocked_file.display()
                );
            } else {
                let _ = writeln!(s, "  {n}. record it in {}", c.history_file.display());
            }
        }
        s
    }
}
