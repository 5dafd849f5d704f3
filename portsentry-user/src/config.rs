//! PortSentry's `portsentry.conf`, parsed into a typed [`Config`].
//!
//! The syntax is PortSentry 1.2's: `KEY="value"` lines, `#` comments, blank lines, spaces
//! around `=` allowed. Unlike 1.2, which silently skips anything it does not understand,
//! every problem is an error naming the file and line, and nothing is applied from a file that
//! fails to load: [`parse`] and [`load`] return a whole [`Config`] or a [`ConfigError`].
//!
//! Every key, its default and how it differs from PortSentry is documented in
//! `docs/configuration.md`; the defaults below are the ones used when there is no config file
//! at all, and for every key a file leaves out.

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{kernel::AttachMode, ports::PortSet};

/// Largest config (or ignore) file we read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest line, in bytes, without its line ending.
pub const MAX_LINE_BYTES: usize = 4096;

/// Default `HISTORY_FILE`.
pub const DEFAULT_HISTORY_FILE: &str = "/var/lib/portsentry/portsentry.history";
/// Default `BLOCKED_FILE`.
pub const DEFAULT_BLOCKED_FILE: &str = "/var/lib/portsentry/portsentry.blocked";
/// Default `HOSTS_DENY_FILE`.
pub const DEFAULT_HOSTS_DENY_FILE: &str = "/etc/hosts.deny";
/// Default `STATE_DIR`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/portsentry";
/// Default `PIN_DIR`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portsentry";
/// Default `ADVANCED_EXCLUDE_TCP` (Debian's: ident and NetBIOS session).
pub const DEFAULT_ADVANCED_EXCLUDE_TCP: &[u16] = &[113, 139];
/// Default `ADVANCED_EXCLUDE_UDP` (Debian's: RIP, NetBIOS, bootp/DHCP broadcasts).
pub const DEFAULT_ADVANCED_EXCLUDE_UDP: &[u16] = &[520, 138, 137, 67];

/// The path shown in errors about a [`Config`] that did not come from a file.
const NO_FILE: &str = "(built-in defaults)";

/// Every key a config file may set: PortSentry 1.2's, then our extensions.
pub const KEYS: &[&str] = &[
    // PortSentry 1.2
    "TCP_PORTS",
    "UDP_PORTS",
    "ADVANCED_PORTS_TCP",
    "ADVANCED_PORTS_UDP",
    "ADVANCED_EXCLUDE_TCP",
    "ADVANCED_EXCLUDE_UDP",
    "IGNORE_FILE",
    "HISTORY_FILE",
    "BLOCKED_FILE",
    "RESOLVE_HOST",
    "BLOCK_TCP",
    "BLOCK_UDP",
    "KILL_ROUTE",
    "KILL_HOSTS_DENY",
    "KILL_RUN_CMD",
    "KILL_RUN_CMD_FIRST",
    "SCAN_TRIGGER",
    "PORT_BANNER",
    // Extensions
    "TCP_MODE",
    "UDP_MODE",
    "INTERFACES",
    "XDP_MODE",
    "BAN_TIME",
    "BAN_TIME_MAX",
    "REPEAT_BAN_FACTOR",
    "UNKILL_ROUTE",
    "UNKILL_HOSTS_DENY",
    "UNKILL_RUN_CMD",
    "HOSTS_DENY_FILE",
    "KILL_TIMEOUT",
    "SCAN_WINDOW",
    "WATCH_EPHEMERAL_UDP",
    "VERIFY_SOURCES",
    "STATE_DIR",
    "PIN_DIR",
    "EVENTS_PER_SEC",
    "MAX_BANS_PER_SEC",
    "MAX_TRACKED_SOURCES",
    "MAX_BANS",
    "METRICS_ADDRESS",
    "SYSLOG",
];

/// A config (or ignore) file that cannot be used, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; 0 means the file as a whole.
    pub line: usize,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            line,
            message: message.into(),
        }
    }
}

/// `path:line: message`, or `path: message` when the error is about the whole file (line 0).
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

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
    /// PortSentry's name of the mode for TCP (`$MODE$`), or `None` for [`Mode::Off`].
    pub fn tcp_token(self) -> Option<&'static str> {
        match self {
            Mode::Advanced => Some("atcp"),
            Mode::Stealth => Some("stcp"),
            Mode::Off => None,
        }
    }

    /// PortSentry's name of the mode for UDP (`$MODE$`), or `None` for [`Mode::Off`].
    pub fn udp_token(self) -> Option<&'static str> {
        match self {
            Mode::Advanced => Some("audp"),
            Mode::Stealth => Some("sudp"),
            Mode::Off => None,
        }
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

/// The whole configuration. Every field has the default documented on it; a key a file leaves
/// out keeps its default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file this came from; `None` for [`Config::default`].
    pub source: Option<PathBuf>,
    /// The line of every key the file set (keys from [`KEYS`]), for errors found later.
    pub lines: BTreeMap<&'static str, usize>,

    // ---- PortSentry 1.2 ----
    /// `TCP_PORTS`: ports watched in TCP stealth mode. Default: not set (required when
    /// `TCP_MODE` is stealth).
    pub tcp_ports: Option<PortSet>,
    /// `UDP_PORTS`: ports watched in UDP stealth mode. Default: not set (required when
    /// `UDP_MODE` is stealth).
    pub udp_ports: Option<PortSet>,
    /// `ADVANCED_PORTS_TCP`: TCP advanced mode watches ports 1 to N-1. 0..=65536, default 1024.
    pub advanced_ports_tcp: u32,
    /// `ADVANCED_PORTS_UDP`: UDP advanced mode watches ports 1 to N-1. 0..=65536, default 1024.
    pub advanced_ports_udp: u32,
    /// `ADVANCED_EXCLUDE_TCP`: never watched in TCP advanced mode. Default `113,139`.
    pub advanced_exclude_tcp: PortSet,
    /// `ADVANCED_EXCLUDE_UDP`: never watched in UDP advanced mode. Default `520,138,137,67`.
    pub advanced_exclude_udp: PortSet,
    /// `IGNORE_FILE`: hosts and networks never acted on. Default: none.
    pub ignore_file: Option<PathBuf>,
    /// `HISTORY_FILE`. Default [`DEFAULT_HISTORY_FILE`].
    pub history_file: PathBuf,
    /// `BLOCKED_FILE`. Default [`DEFAULT_BLOCKED_FILE`].
    pub blocked_file: PathBuf,
    /// `RESOLVE_HOST`: reverse-resolve attackers for log lines. Default off.
    pub resolve_host: bool,
    /// `BLOCK_TCP`. Default [`BlockMode::Block`].
    pub block_tcp: BlockMode,
    /// `BLOCK_UDP`. Default [`BlockMode::Block`].
    pub block_udp: BlockMode,
    /// `KILL_ROUTE`: shell command run to block; contains `$TARGET$`. Default: none.
    pub kill_route: Option<String>,
    /// `KILL_HOSTS_DENY`: line appended to `HOSTS_DENY_FILE`; contains `$TARGET$`.
    /// Default: none.
    pub kill_hosts_deny: Option<String>,
    /// `KILL_RUN_CMD`: shell command run for each host acted on. Default: none.
    pub kill_run_cmd: Option<String>,
    /// `KILL_RUN_CMD_FIRST`: run `KILL_RUN_CMD` before the blocking. Default off.
    pub kill_run_cmd_first: bool,
    /// `SCAN_TRIGGER`: hits tolerated before acting; 0 and 1 both act on the first. Default 0.
    pub scan_trigger: u32,
    /// `PORT_BANNER`: accepted for compatibility; unused by a packet-level detector.
    pub port_banner: Option<String>,

    // ---- Extensions ----
    /// `TCP_MODE`. Default [`Mode::Advanced`].
    pub tcp_mode: Mode,
    /// `UDP_MODE`. Default [`Mode::Advanced`].
    pub udp_mode: Mode,
    /// `INTERFACES`: interface names to attach to. Default: empty (none named in the file).
    pub interfaces: Vec<String>,
    /// `XDP_MODE`: `native`, `skb` or `auto`. Default auto.
    pub xdp_mode: AttachMode,
    /// `BAN_TIME`: how long a ban lasts; zero means permanent (PortSentry). Default zero.
    pub ban_time: Duration,
    /// `BAN_TIME_MAX`: cap on repeat bans grown by `REPEAT_BAN_FACTOR`; zero means no cap.
    /// Default zero.
    pub ban_time_max: Duration,
    /// `REPEAT_BAN_FACTOR`: each repeat ban of a host lasts this many times the previous.
    /// 1..=100, default 1.
    pub repeat_ban_factor: u32,
    /// `UNKILL_ROUTE`: shell command undoing `KILL_ROUTE` on unban; contains `$TARGET$`.
    /// Default: none.
    pub unkill_route: Option<String>,
    /// `UNKILL_HOSTS_DENY`: remove the `KILL_HOSTS_DENY` line on unban. Default on.
    pub unkill_hosts_deny: bool,
    /// `UNKILL_RUN_CMD`: shell command run on unban. Default: none.
    pub unkill_run_cmd: Option<String>,
    /// `HOSTS_DENY_FILE`. Default [`DEFAULT_HOSTS_DENY_FILE`].
    pub hosts_deny_file: PathBuf,
    /// `KILL_TIMEOUT`: how long a kill/unkill command may run. Non-zero, default 30 s.
    pub kill_timeout: Duration,
    /// `SCAN_WINDOW`: `SCAN_TRIGGER` hits must fall within this; zero means forever
    /// (PortSentry). Default zero.
    pub scan_window: Duration,
    /// `WATCH_EPHEMERAL_UDP`: also watch UDP ports in `ip_local_port_range`. Default off.
    pub watch_ephemeral_udp: bool,
    /// `VERIFY_SOURCES`: ban only TCP sources that answer the XDP SYN-ACK challenge
    /// (a completed handshake); forged probes ban no one. Default off.
    pub verify_sources: bool,
    /// `STATE_DIR`. Default [`DEFAULT_STATE_DIR`].
    pub state_dir: PathBuf,
    /// `PIN_DIR`: where the BPF maps and links are pinned. Default [`DEFAULT_PIN_DIR`].
    pub pin_dir: PathBuf,
    /// `EVENTS_PER_SEC`: kernel event budget per CPU. 1..=10000000, default 20000.
    pub events_per_sec: u32,
    /// `MAX_BANS_PER_SEC`: new bans per second; 0 means unlimited. Default 100.
    pub max_bans_per_sec: u32,
    /// `MAX_TRACKED_SOURCES`: hosts whose hits are counted. At least 1024, default 65536.
    pub max_tracked_sources: u32,
    /// `MAX_BANS`: hosts banned at once. At least 16, default 1048576.
    pub max_bans: u32,
    /// `METRICS_ADDRESS`: where to serve metrics. Default: none (off).
    pub metrics_address: Option<SocketAddr>,
    /// `SYSLOG`: log attack alerts to syslog. Default on.
    pub syslog: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            lines: BTreeMap::new(),
            tcp_ports: None,
            udp_ports: None,
            advanced_ports_tcp: 1024,
            advanced_ports_udp: 1024,
            advanced_exclude_tcp: port_set(DEFAULT_ADVANCED_EXCLUDE_TCP),
            advanced_exclude_udp: port_set(DEFAULT_ADVANCED_EXCLUDE_UDP),
            ignore_file: None,
            history_file: PathBuf::from(DEFAULT_HISTORY_FILE),
            blocked_file: PathBuf::from(DEFAULT_BLOCKED_FILE),
            resolve_host: false,
            block_tcp: BlockMode::Block,
            block_udp: BlockMode::Block,
            kill_route: None,
            kill_hosts_deny: None,
            kill_run_cmd: None,
            kill_run_cmd_first: false,
            scan_trigger: 0,
            port_banner: None,
            tcp_mode: Mode::Advanced,
            udp_mode: Mode::Advanced,
            interfaces: Vec::new(),
            xdp_mode: AttachMode::Auto,
            ban_time: Duration::ZERO,
            ban_time_max: Duration::ZERO,
            repeat_ban_factor: 1,
            unkill_route: None,
            unkill_hosts_deny: true,
            unkill_run_cmd: None,
            hosts_deny_file: PathBuf::from(DEFAULT_HOSTS_DENY_FILE),
            kill_timeout: Duration::from_secs(30),
            scan_window: Duration::ZERO,
            watch_ephemeral_udp: false,
            verify_sources: false,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            events_per_sec: 20_000,
            max_bans_per_sec: 100,
            max_tracked_sources: 65_536,
            max_bans: 1 << 20,
            metrics_address: None,
            syslog: true,
        }
    }
}

fn port_set(ports: &[u16]) -> PortSet {
    let mut s = PortSet::new();
    for p in ports {
        s.insert(*p);
    }
    s
}

/// Reads and parses a config file. Reads bytes, so a binary or non-UTF-8 file is reported
/// with its line rather than failing obscurely.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_text(path)?;
    parse(&text, path)
}

/// Parses the text of a config file; `path` is used for [`Config::source`] and in errors.
/// Runs [`Config::validate`] on the result.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let err = |line: usize, message: String| ConfigError::new(path, line, message);
    check_size(text.len(), path)?;
    let mut config = Config {
        source: Some(path.to_path_buf()),
        ..Config::default()
    };
    for (n, line) in text_lines(text) {
        check_line(line, n, path)?;
        let Some((key, value)) = split_line(line).map_err(|m| err(n, m))? else {
            continue;
        };
        let key = known_key(key).map_err(|m| err(n, m))?;
        if let Some(first) = config.lines.get(key) {
            return Err(err(
                n,
                format!("{key} is set twice, on line {first} and line {n}; keep one of them"),
            ));
        }
        config.set(key, value).map_err(|m| err(n, m))?;
        config.lines.insert(key, n);
    }
    config.validate()?;
    Ok(config)
}

impl Config {
    /// The line `key` was set on, or 0 when the file did not set it.
    pub fn line_of(&self, key: &str) -> usize {
        self.lines.get(key).copied().unwrap_or(0)
    }

    /// An error about `key`, located at the line that set it (or the whole file).
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let path = self
            .source
            .clone()
            .unwrap_or_else(|| PathBuf::from(NO_FILE));
        ConfigError::new(path, self.line_of(key), message)
    }

    /// Checks what no single key can check alone. [`parse`] runs it; run it again after
    /// changing fields (command-line overrides, e.g. of the modes).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (mode_key, mode, ports_key, ports, proto) in [
            (
                "TCP_MODE",
                self.tcp_mode,
                "TCP_PORTS",
                &self.tcp_ports,
                "TCP",
            ),
            (
                "UDP_MODE",
                self.udp_mode,
                "UDP_PORTS",
                &self.udp_ports,
                "UDP",
            ),
        ] {
            if mode == Mode::Stealth && ports.is_none() {
                return Err(self.error_at(
                    mode_key,
                    format!(
                        "{proto} is watched in stealth mode ({mode_key}) but {ports_key} is not \
                         set; set {ports_key} to the ports to watch, e.g. {ports_key}=\"1,11,15\", \
                         or use advanced mode"
                    ),
                ));
            }
        }
        for (key, block, proto) in [
            ("BLOCK_TCP", self.block_tcp, "TCP"),
            ("BLOCK_UDP", self.block_udp, "UDP"),
        ] {
            if block == BlockMode::RunCmdOnly && self.kill_run_cmd.is_none() {
                return Err(self.error_at(
                    key,
                    format!(
                        "{key} is 2 (run KILL_RUN_CMD only) but KILL_RUN_CMD is not set, so {proto} \
                         scans would be acted on by nothing; set KILL_RUN_CMD, or set {key} to 0 \
                         (report only) or 1 (block)"
                    ),
                ));
            }
        }
        if !self.ban_time.is_zero()
            && !self.ban_time_max.is_zero()
            && self.ban_time_max < self.ban_time
        {
            let key = if self.lines.contains_key("BAN_TIME_MAX") {
                "BAN_TIME_MAX"
            } else {
                "BAN_TIME"
            };
            return Err(self.error_at(
                key,
                format!(
                    "BAN_TIME_MAX ({}) is shorter than BAN_TIME ({}); it must be at least \
                     BAN_TIME, or 0 for no cap",
                    humantime::format_duration(self.ban_time_max),
                    humantime::format_duration(self.ban_time)
                ),
            ));
        }
        Ok(())
    }

    /// The ports the TCP mode watches, before ports with a listening service are taken out.
    pub fn tcp_watched_ports(&self) -> PortSet {
        watched(
            self.tcp_mode,
            self.tcp_ports.as_ref(),
            self.advanced_ports_tcp,
            &self.advanced_exclude_tcp,
        )
    }

    /// The ports the UDP mode watches, before ports with a listening service (and, unless
    /// `WATCH_EPHEMERAL_UDP`, the ephemeral range) are taken out.
    pub fn udp_watched_ports(&self) -> PortSet {
        watched(
            self.udp_mode,
            self.udp_ports.as_ref(),
            self.advanced_ports_udp,
            &self.advanced_exclude_udp,
        )
    }

    /// Parses `value` for `key` into its field. The error is the message only.
    fn set(&mut self, key: &'static str, value: &str) -> Result<(), String> {
        match key {
            "TCP_PORTS" => self.tcp_ports = Some(port_list(key, value)?),
            "UDP_PORTS" => self.udp_ports = Some(port_list(key, value)?),
            "ADVANCED_PORTS_TCP" => self.advanced_ports_tcp = number(key, value, 0, 65536)?,
            "ADVANCED_PORTS_UDP" => self.advanced_ports_udp = number(key, value, 0, 65536)?,
            "ADVANCED_EXCLUDE_TCP" => self.advanced_exclude_tcp = port_list(key, value)?,
            "ADVANCED_EXCLUDE_UDP" => self.advanced_exclude_udp = port_list(key, value)?,
            "IGNORE_FILE" => {
                self.ignore_file = if value.trim().is_empty() {
                    None
                } else {
                    Some(absolute_path(key, value)?)
                }
            }
            "HISTORY_FILE" => self.history_file = absolute_path(key, value)?,
            "BLOCKED_FILE" => self.blocked_file = absolute_path(key, value)?,
            "RESOLVE_HOST" => self.resolve_host = flag(key, value)?,
            "BLOCK_TCP" => self.block_tcp = block_mode(key, value)?,
            "BLOCK_UDP" => self.block_udp = block_mode(key, value)?,
            "KILL_ROUTE" => self.kill_route = command(key, value, true)?,
            "KILL_HOSTS_DENY" => self.kill_hosts_deny = command(key, value, true)?,
            "KILL_RUN_CMD" => self.kill_run_cmd = command(key, value, false)?,
            "KILL_RUN_CMD_FIRST" => self.kill_run_cmd_first = flag(key, value)?,
            "SCAN_TRIGGER" => self.scan_trigger = number(key, value, 0, u32::MAX)?,
            "PORT_BANNER" => self.port_banner = command(key, value, false)?,
            "TCP_MODE" => self.tcp_mode = Mode::parse_tcp(value)?,
            "UDP_MODE" => self.udp_mode = Mode::parse_udp(value)?,
            "INTERFACES" => self.interfaces = interfaces(key, value)?,
            "XDP_MODE" => self.xdp_mode = xdp_mode(key, value)?,
            "BAN_TIME" => self.ban_time = duration(key, value, "0 = permanent")?,
            "BAN_TIME_MAX" => self.ban_time_max = duration(key, value, "0 = no cap")?,
            "REPEAT_BAN_FACTOR" => self.repeat_ban_factor = number(key, value, 1, 100)?,
            "UNKILL_ROUTE" => self.unkill_route = command(key, value, true)?,
            "UNKILL_HOSTS_DENY" => self.unkill_hosts_deny = flag(key, value)?,
            "UNKILL_RUN_CMD" => self.unkill_run_cmd = command(key, value, false)?,
            "HOSTS_DENY_FILE" => self.hosts_deny_file = absolute_path(key, value)?,
            "KILL_TIMEOUT" => {
                let d = duration(key, value, "it must not be 0")?;
                if d.is_zero() {
                    return Err(format!(
                        "KILL_TIMEOUT must be longer than 0, e.g. \"30s\", not \"{value}\""
                    ));
                }
                self.kill_timeout = d;
            }
            "SCAN_WINDOW" => self.scan_window = duration(key, value, "0 = no window")?,
            "WATCH_EPHEMERAL_UDP" => self.watch_ephemeral_udp = flag(key, value)?,
            "VERIFY_SOURCES" => self.verify_sources = flag(key, value)?,
            "STATE_DIR" => self.state_dir = absolute_path(key, value)?,
            "PIN_DIR" => self.pin_dir = absolute_path(key, value)?,
            "EVENTS_PER_SEC" => self.events_per_sec = number(key, value, 1, 10_000_000)?,
            "MAX_BANS_PER_SEC" => self.max_bans_per_sec = number(key, value, 0, u32::MAX)?,
            "MAX_TRACKED_SOURCES" => self.max_tracked_sources = number(key, value, 1024, u32::MAX)?,
            "MAX_BANS" => self.max_bans = number(key, value, 16, u32::MAX)?,
            "METRICS_ADDRESS" => self.metrics_address = socket_address(key, value)?,
            "SYSLOG" => self.syslog = flag(key, value)?,
            _ => unreachable!("{key} is in KEYS but has no parser"),
        }
        Ok(())
    }
}

fn watched(mode: Mode, ports: Option<&PortSet>, advanced: u32, exclude: &PortSet) -> PortSet {
    match mode {
        Mode::Off => PortSet::new(),
        Mode::Stealth => ports.cloned().unwrap_or_default(),
        Mode::Advanced => {
            let mut s = PortSet::new();
            for p in 1..advanced.min(65536) {
                let p = p as u16;
                if !exclude.contains(p) {
                    s.insert(p);
                }
            }
            s
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading and lines (shared with the ignore file)

/// Reads a text file of at most [`MAX_FILE_BYTES`], reporting a NUL byte, an over-long line or
/// invalid UTF-8 with the line it is on.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    let err = |line: usize, message: String| ConfigError::new(path, line, message);
    let file = File::open(path).map_err(|e| err(0, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(0, format!("cannot read: {e}")))?;
    check_size(bytes.len(), path)?;
    // A leading byte-order mark is not part of line 1 (parsing skips it too).
    let body = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        if line.len() > MAX_LINE_BYTES + 1 {
            return Err(err(n, too_long(line.len())));
        }
        if line.contains(&0) {
            return Err(err(n, nul_byte()));
        }
        if let Err(e) = std::str::from_utf8(line) {
            let at = e.valid_up_to();
            return Err(err(
                n,
                format!(
                    "is not valid UTF-8 text (byte 0x{:02x} at column {}); the file must be \
                     UTF-8 or plain ASCII text",
                    line[at],
                    at + 1
                ),
            ));
        }
    }
    String::from_utf8(bytes).map_err(|_| err(0, "is not valid UTF-8 text".to_string()))
}

pub(crate) fn check_size(len: usize, path: &Path) -> Result<(), ConfigError> {
    if len as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::new(
            path,
            0,
            format!("is larger than {MAX_FILE_BYTES} bytes (1 MiB); is this the right file?"),
        ));
    }
    Ok(())
}

/// The numbered lines of `text` (1-based), without line endings (`\n` or `\r\n`) and without
/// a leading byte-order mark.
pub(crate) fn text_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

/// Rejects lines over [`MAX_LINE_BYTES`], NUL bytes and other control characters (tab is fine).
pub(crate) fn check_line(line: &str, n: usize, path: &Path) -> Result<(), ConfigError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ConfigError::new(path, n, too_long(line.len())));
    }
    for c in line.chars() {
        if c == '\0' {
            return Err(ConfigError::new(path, n, nul_byte()));
        }
        if c.is_control() && c != '\t' {
            return Err(ConfigError::new(
                path,
                n,
                format!(
                    "contains the control character U+{:04X}; the file must be plain text",
                    u32::from(c)
                ),
            ));
        }
    }
    Ok(())
}

fn too_long(len: usize) -> String {
    format!("line is {len} bytes long; lines may be at most {MAX_LINE_BYTES} bytes")
}

fn nul_byte() -> String {
    "contains a NUL byte; the file must be plain text (is this a binary file?)".to_string()
}

/// Splits a config line into key and value: `Ok(None)` for a blank or comment line.
fn split_line(line: &str) -> Result<Option<(&str, &str)>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let Some((key, rest)) = trimmed.split_once('=') else {
        return Err(format!(
            "expected KEY=\"value\", found no '=' in \"{}\"",
            shorten(trimmed)
        ));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err("expected KEY=\"value\", found no key before '='".to_string());
    }
    let rest = rest.trim_start();
    let Some(quoted) = rest.strip_prefix('"') else {
        return Err(if rest.is_empty() {
            format!("{key} has no value; write {key}=\"value\" (or {key}=\"\" for an empty one)")
        } else {
            format!(
                "the value of {key} must be in double quotes: {key}=\"{}\" (PortSentry 1.2 \
                 silently ignored such lines)",
                shorten(rest)
            )
        });
    };
    let Some(close) = quoted.rfind('"') else {
        return Err(format!(
            "the value of {key} has no closing quote; write {key}=\"value\""
        ));
    };
    let (value, after) = (&quoted[..close], quoted[close + 1..].trim_start());
    if !after.is_empty() && !after.starts_with('#') {
        return Err(format!(
            "unexpected text after the closing quote of {key}: \"{}\"; only a # comment may \
             follow the value",
            shorten(after)
        ));
    }
    Ok(Some((key, value)))
}

fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The `&'static` name of a known key, or an error with the known keys or a suggestion.
fn known_key(key: &str) -> Result<&'static str, String> {
    if let Some(k) = KEYS.iter().find(|k| **k == key) {
        return Ok(k);
    }
    let upper = key.to_ascii_uppercase();
    let suggestion = suggest(&upper)
        .map(|k| format!("; did you mean {k}?"))
        .unwrap_or_default();
    if !key
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "key \"{}\" may only contain A-Z, 0-9 and _ (keys are upper case){suggestion}",
            shorten(key)
        ));
    }
    if suggestion.is_empty() {
        Err(format!(
            "unknown key {key}; the known keys are {}",
            KEYS.join(", ")
        ))
    } else {
        Err(format!("unknown key {key}{suggestion}"))
    }
}

/// The known key closest to `key`, if it is close enough to be a typo.
fn suggest(key: &str) -> Option<&'static str> {
    let (best, distance) = KEYS
        .iter()
        .map(|k| (*k, edit_distance(key, k)))
        .min_by_key(|(_, d)| *d)?;
    let limit = if key.len() >= 10 { 3 } else { 2 };
    (distance <= limit).then_some(best)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Values

/// `N` or `A-B` items separated by commas; whitespace around items; may be empty.
fn port_list(key: &str, value: &str) -> Result<PortSet, String> {
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

fn number(key: &str, value: &str, min: u32, max: u32) -> Result<u32, String> {
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

fn flag(key: &str, value: &str) -> Result<bool, String> {
    match value.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("{key} must be 0 or 1, not \"{value}\"")),
    }
}

fn block_mode(key: &str, value: &str) -> Result<BlockMode, String> {
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

fn xdp_mode(key: &str, value: &str) -> Result<AttachMode, String> {
    match value.trim() {
        "native" => Ok(AttachMode::Native),
        "skb" => Ok(AttachMode::Skb),
        "auto" => Ok(AttachMode::Auto),
        _ => Err(format!(
            "{key} must be native, skb or auto, not \"{value}\""
        )),
    }
}

fn absolute_path(key: &str, value: &str) -> Result<PathBuf, String> {
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

/// A command or text: empty means unset; `$TARGET$` required where `needs_target`.
fn command(key: &str, value: &str, needs_target: bool) -> Result<Option<String>, String> {
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

/// A bare number of seconds, or humantime syntax (`90s`, `30m`, `12h`, `7d`, `1h 30m`).
fn duration(key: &str, value: &str, zero: &str) -> Result<Duration, String> {
    let v = value.trim();
    let parsed = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>().ok().map(Duration::from_secs)
    } else if v.is_empty() {
        None
    } else {
        humantime::parse_duration(v).ok()
    };
    parsed.ok_or_else(|| {
        format!(
            "{key} must be a duration: seconds (\"3600\") or a number with a unit (\"90s\", \
             \"30m\", \"12h\", \"7d\", \"1h 30m\"); {zero}; not \"{value}\""
        )
    })
}

fn interfaces(key: &str, value: &str) -> Result<Vec<String>, String> {
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

fn socket_address(key: &str, value: &str) -> Result<Option<SocketAddr>, String> {
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
    use super::*;

    const PATH: &str = "/etc/portsentry/portsentry.conf";

    fn ok(text: &str) -> Config {
        parse(text, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Asserts that `text` fails on `line` with a message containing `fragment`.
    #[track_caller]
    fn bad(text: &str, line: usize, fragment: &str) -> ConfigError {
        let e = parse(text, Path::new(PATH)).expect_err("the config should not load");
        assert_eq!(e.path, Path::new(PATH), "{e}");
        assert_eq!(e.line, line, "{e}");
        assert!(
            e.message.contains(fragment),
            "message {:?} lacks {fragment:?}",
            e.message
        );
        e
    }

    fn ports(list: &[u16]) -> PortSet {
        port_set(list)
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.source, None);
        assert!(c.lines.is_empty());
        assert_eq!(c.tcp_ports, None);
        assert_eq!(c.udp_ports, None);
        assert_eq!((c.advanced_ports_tcp, c.advanced_ports_udp), (1024, 1024));
        assert_eq!(c.advanced_exclude_tcp, ports(&[113, 139]));
        assert_eq!(c.advanced_exclude_udp, ports(&[67, 137, 138, 520]));
        assert_eq!(c.ignore_file, None);
        assert_eq!(
            c.history_file,
            Path::new("/var/lib/portsentry/portsentry.history")
        );
        assert_eq!(
            c.blocked_file,
            Path::new("/var/lib/portsentry/portsentry.blocked")
        );
        assert!(!c.resolve_host);
        assert_eq!(
            (c.block_tcp, c.block_udp),
            (BlockMode::Block, BlockMode::Block)
        );
        assert_eq!(
            (&c.kill_route, &c.kill_hosts_deny, &c.kill_run_cmd),
            (&None, &None, &None)
        );
        assert!(!c.kill_run_cmd_first);
        assert_eq!(c.scan_trigger, 0);
        assert_eq!(c.port_banner, None);
        assert_eq!((c.tcp_mode, c.udp_mode), (Mode::Advanced, Mode::Advanced));
        assert!(c.interfaces.is_empty());
        assert_eq!(c.xdp_mode, AttachMode::Auto);
        assert_eq!(
            (c.ban_time, c.ban_time_max),
            (Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(c.repeat_ban_factor, 1);
        assert_eq!((&c.unkill_route, &c.unkill_run_cmd), (&None, &None));
        assert!(c.unkill_hosts_deny);
        assert_eq!(c.hosts_deny_file, Path::new("/etc/hosts.deny"));
        assert_eq!(c.kill_timeout, Duration::from_secs(30));
        assert_eq!(c.scan_window, Duration::ZERO);
        assert!(!c.watch_ephemeral_udp);
        assert_eq!(c.state_dir, Path::new("/var/lib/portsentry"));
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/portsentry"));
        assert_eq!(c.events_per_sec, 20_000);
        assert_eq!(c.max_bans_per_sec, 100);
        assert_eq!(c.max_tracked_sources, 65_536);
        assert_eq!(c.max_bans, 1_048_576);
        assert_eq!(c.metrics_address, None);
        assert!(c.syslog);
        c.validate().unwrap();
        // Advanced mode by default: 1..=1023 less the excluded ports.
        let tcp = c.tcp_watched_ports();
        assert_eq!(tcp.len(), 1023 - 2);
        assert!(tcp.contains(1) && tcp.contains(1023) && !tcp.contains(0));
        assert!(!tcp.contains(1024) && !tcp.contains(113) && !tcp.contains(139));
        let udp = c.udp_watched_ports();
        assert_eq!(udp.len(), 1023 - 4);
        assert!(!udp.contains(67) && !udp.contains(520) && udp.contains(53));
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = ok("");
        assert_eq!(c.source.as_deref(), Some(Path::new(PATH)));
        assert_eq!(Config { source: None, ..c }, Config::default());
        ok("\n\n   \n# comment\n   # indented comment\n\t\n");
    }

    #[test]
    fn debian_stock_file() {
        let c = ok(include_str!("../testdata/debian/portsentry.conf"));
        let tcp = c.tcp_ports.as_ref().unwrap();
        assert!(tcp.contains(1) && tcp.contains(31337) && tcp.contains(54320));
        assert!(!tcp.contains(80) && !tcp.contains(0));
        assert_eq!(tcp.len(), 26);
        let udp = c.udp_ports.as_ref().unwrap();
        assert!(udp.contains(7) && udp.contains(37444) && udp.contains(54321));
        assert_eq!(udp.len(), 21);
        assert_eq!((c.advanced_ports_tcp, c.advanced_ports_udp), (1024, 1024));
        assert_eq!(c.advanced_exclude_tcp, ports(&[113, 139]));
        assert_eq!(c.advanced_exclude_udp, ports(&[520, 138, 137, 67]));
        assert_eq!(
            c.ignore_file.as_deref(),
            Some(Path::new("/etc/portsentry/portsentry.ignore"))
        );
        assert_eq!(
            c.history_file,
            Path::new("/var/lib/portsentry/portsentry.history")
        );
        assert_eq!(
            c.blocked_file,
            Path::new("/var/lib/portsentry/portsentry.blocked")
        );
        assert!(!c.resolve_host);
        assert_eq!(c.block_tcp, BlockMode::ReportOnly);
        assert_eq!(c.block_udp, BlockMode::ReportOnly);
        assert_eq!(
            c.kill_route.as_deref(),
            Some("/sbin/route add -host $TARGET$ reject")
        );
        assert_eq!(c.kill_hosts_deny.as_deref(), Some("ALL: $TARGET$ : DENY"));
        assert_eq!(c.kill_run_cmd, None);
        assert!(!c.kill_run_cmd_first);
        assert_eq!(c.scan_trigger, 0);
        assert_eq!(c.port_banner, None);
        // Keys the file leaves out keep their defaults.
        assert_eq!(c.tcp_mode, Mode::Advanced);
        assert_eq!(c.kill_timeout, Duration::from_secs(30));
        // Lines are recorded.
        assert_eq!(c.line_of("TCP_PORTS"), 38);
        assert_eq!(c.line_of("RESOLVE_HOST"), 99);
        assert_eq!(c.line_of("SCAN_TRIGGER"), 289);
        assert_eq!(c.line_of("KILL_RUN_CMD"), 0);
        assert_eq!(c.lines.len(), 15);
    }

    #[test]
    fn debian_stock_file_loads_from_disk() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/debian/portsentry.conf");
        let c = load(&path).unwrap();
        assert_eq!(c.source.as_deref(), Some(path.as_path()));
        assert_eq!(c.block_tcp, BlockMode::ReportOnly);
    }

    #[test]
    fn every_key() {
        let text = r#"
TCP_PORTS="1, 11 ,512-515, 20-20,0,65535"
UDP_PORTS=""
ADVANCED_PORTS_TCP="65536"
ADVANCED_PORTS_UDP="0"
ADVANCED_EXCLUDE_TCP="113"
ADVANCED_EXCLUDE_UDP=""
IGNORE_FILE="/etc/portsentry/portsentry.ignore"
HISTORY_FILE="/srv/h"
BLOCKED_FILE="/srv/b"
RESOLVE_HOST="1"
BLOCK_TCP="2"
BLOCK_UDP="1"
KILL_ROUTE="/sbin/iptables -I INPUT -s $TARGET$ -j DROP"
KILL_HOSTS_DENY="ALL: $TARGET$"
KILL_RUN_CMD="/usr/local/bin/page $TARGET$ $PORT$ $MODE$"
KILL_RUN_CMD_FIRST="1"
SCAN_TRIGGER="3"
PORT_BANNER="** GO AWAY **"
TCP_MODE="stcp"
UDP_MODE="off"
INTERFACES="eth0, wlan0,br-lan"
XDP_MODE="skb"
BAN_TIME="1h 30m"
BAN_TIME_MAX="7d"
REPEAT_BAN_FACTOR="4"
UNKILL_ROUTE="/sbin/iptables -D INPUT -s $TARGET$ -j DROP"
UNKILL_HOSTS_DENY="0"
UNKILL_RUN_CMD="logger unbanned $TARGET$"
HOSTS_DENY_FILE="/etc/hosts.deny.local"
KILL_TIMEOUT="5"
SCAN_WINDOW="10m"
WATCH_EPHEMERAL_UDP="1"
VERIFY_SOURCES="1"
STATE_DIR="/run/ps"
PIN_DIR="/sys/fs/bpf/ps2"
EVENTS_PER_SEC="10000000"
MAX_BANS_PER_SEC="0"
MAX_TRACKED_SOURCES="1024"
MAX_BANS="16"
METRICS_ADDRESS="[::1]:9100"
SYSLOG="0"
"#;
        let c = ok(text);
        assert_eq!(c.lines.len(), KEYS.len(), "the test sets every key");
        let mut tcp = PortSet::from_range(512..=515);
        for p in [0, 1, 11, 20, 65535] {
            tcp.insert(p);
        }
        assert_eq!(c.tcp_ports, Some(tcp.clone()));
        assert_eq!(c.udp_ports, Some(PortSet::new()));
        assert_eq!((c.advanced_ports_tcp, c.advanced_ports_udp), (65536, 0));
        assert_eq!(c.advanced_exclude_tcp, ports(&[113]));
        assert!(c.advanced_exclude_udp.is_empty());
        assert_eq!(
            c.ignore_file.as_deref(),
            Some(Path::new("/etc/portsentry/portsentry.ignore"))
        );
        assert_eq!(c.history_file, Path::new("/srv/h"));
        assert_eq!(c.blocked_file, Path::new("/srv/b"));
        assert!(c.resolve_host);
        assert_eq!(c.block_tcp, BlockMode::RunCmdOnly);
        assert_eq!(c.block_udp, BlockMode::Block);
        assert_eq!(
            c.kill_route.as_deref(),
            Some("/sbin/iptables -I INPUT -s $TARGET$ -j DROP")
        );
        assert_eq!(c.kill_hosts_deny.as_deref(), Some("ALL: $TARGET$"));
        assert_eq!(
            c.kill_run_cmd.as_deref(),
            Some("/usr/local/bin/page $TARGET$ $PORT$ $MODE$")
        );
        assert!(c.kill_run_cmd_first);
        assert_eq!(c.scan_trigger, 3);
        assert_eq!(c.port_banner.as_deref(), Some("** GO AWAY **"));
        assert_eq!((c.tcp_mode, c.udp_mode), (Mode::Stealth, Mode::Off));
        assert_eq!(c.interfaces, ["eth0", "wlan0", "br-lan"]);
        assert_eq!(c.xdp_mode, AttachMode::Skb);
        assert_eq!(c.ban_time, Duration::from_secs(5400));
        assert_eq!(c.ban_time_max, Duration::from_secs(7 * 86400));
        assert_eq!(c.repeat_ban_factor, 4);
        assert_eq!(
            c.unkill_route.as_deref(),
            Some("/sbin/iptables -D INPUT -s $TARGET$ -j DROP")
        );
        assert!(!c.unkill_hosts_deny);
        assert_eq!(
            c.unkill_run_cmd.as_deref(),
            Some("logger unbanned $TARGET$")
        );
        assert_eq!(c.hosts_deny_file, Path::new("/etc/hosts.deny.local"));
        assert_eq!(c.kill_timeout, Duration::from_secs(5));
        assert_eq!(c.scan_window, Duration::from_secs(600));
        assert!(c.watch_ephemeral_udp);
        assert!(c.verify_sources);
        assert_eq!(c.state_dir, Path::new("/run/ps"));
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/ps2"));
        assert_eq!(c.events_per_sec, 10_000_000);
        assert_eq!(c.max_bans_per_sec, 0);
        assert_eq!(c.max_tracked_sources, 1024);
        assert_eq!(c.max_bans, 16);
        assert_eq!(c.metrics_address, Some("[::1]:9100".parse().unwrap()));
        assert!(!c.syslog);
        assert_eq!(c.line_of("TCP_PORTS"), 2);
        assert_eq!(c.line_of("SYSLOG"), 42);
        // Stealth TCP watches exactly TCP_PORTS; UDP is off.
        assert_eq!(c.tcp_watched_ports(), tcp);
        assert!(c.udp_watched_ports().is_empty());
    }

    #[test]
    fn modes() {
        for (v, m) in [
            ("atcp", Mode::Advanced),
            ("advanced", Mode::Advanced),
            ("stcp", Mode::Stealth),
            ("tcp", Mode::Stealth),
            ("stealth", Mode::Stealth),
            ("off", Mode::Off),
        ] {
            let c = ok(&format!("TCP_PORTS=\"1\"\nTCP_MODE=\"{v}\""));
            assert_eq!(c.tcp_mode, m, "{v}");
        }
        for (v, m) in [
            ("audp", Mode::Advanced),
            ("advanced", Mode::Advanced),
            ("sudp", Mode::Stealth),
            ("udp", Mode::Stealth),
            ("stealth", Mode::Stealth),
            ("off", Mode::Off),
        ] {
            let c = ok(&format!("UDP_PORTS=\"1\"\nUDP_MODE=\"{v}\""));
            assert_eq!(c.udp_mode, m, "{v}");
        }
        bad(
            "TCP_MODE=\"audp\"",
            1,
            "audp is a mode of the other protocol",
        );
        bad(
            "UDP_MODE=\"stcp\"",
            1,
            "stcp is a mode of the other protocol",
        );
        bad("TCP_MODE=\"fast\"", 1, "TCP_MODE must be atcp or advanced");
        bad("UDP_MODE=\"ATCP\"", 1, "not \"ATCP\"");
        assert_eq!(Mode::Advanced.tcp_token(), Some("atcp"));
        assert_eq!(Mode::Stealth.udp_token(), Some("sudp"));
        assert_eq!(Mode::Off.tcp_token(), None);
    }

    #[test]
    fn syntax() {
        // Spaces around '=', tabs, a comment after the closing quote, CRLF, a BOM.
        let c = ok("\u{feff}RESOLVE_HOST = \"1\"\r\n\tSCAN_TRIGGER\t=\t\"2\"  # two hits\r\n");
        assert!(c.resolve_host);
        assert_eq!(c.scan_trigger, 2);
        assert_eq!(c.line_of("SCAN_TRIGGER"), 2);
        let c = ok("SCAN_TRIGGER=\"2\"#no space");
        assert_eq!(c.scan_trigger, 2);
        // Embedded quotes survive: the value runs to the last quote on the line.
        let c = ok(
            r#"KILL_RUN_CMD="/bin/echo "attack from $TARGET$" | /usr/bin/mail -s "portsentry" root""#,
        );
        assert_eq!(
            c.kill_run_cmd.as_deref(),
            Some(r#"/bin/echo "attack from $TARGET$" | /usr/bin/mail -s "portsentry" root"#)
        );
        // The commented-out Debian iptables+LOG example, uncommented.
        let c = ok(
            r#"KILL_ROUTE="/sbin/iptables -I INPUT -s $TARGET$ -j DROP && /sbin/iptables -I INPUT -s $TARGET$ -m limit --limit 3/minute --limit-burst 5 -j LOG --log-level DEBUG --log-prefix 'Portsentry: dropping: '""#,
        );
        assert!(c.kill_route.unwrap().ends_with("'Portsentry: dropping: '"));
        // Empty command values mean unset.
        let c = ok(
            "KILL_ROUTE=\"\"\nKILL_HOSTS_DENY=\"  \"\nKILL_RUN_CMD=\"\"\nIGNORE_FILE=\"\"\nMETRICS_ADDRESS=\"\"",
        );
        assert_eq!(
            (c.kill_route, c.kill_hosts_deny, c.kill_run_cmd),
            (None, None, None)
        );
        assert_eq!((c.ignore_file, c.metrics_address), (None, None));
        // A value may contain '=' and '#'.
        let c = ok("PORT_BANNER=\"a=b # c\"");
        assert_eq!(c.port_banner.as_deref(), Some("a=b # c"));
        // Numbers may have spaces inside the quotes.
        assert_eq!(ok("SCAN_TRIGGER=\" 4 \"").scan_trigger, 4);
    }

    #[test]
    fn syntax_errors() {
        bad(
            "\n\nTCP_PORTS=1,2,3",
            3,
            "must be in double quotes: TCP_PORTS=\"1,2,3",
        );
        bad("RESOLVE_HOST=", 1, "RESOLVE_HOST has no value");
        bad("RESOLVE_HOST=\"1", 1, "has no closing quote");
        bad(
            "RESOLVE_HOST=\"1\" junk",
            1,
            "unexpected text after the closing quote",
        );
        bad("RESOLVE_HOST \"1\"", 1, "found no '='");
        bad("RESOLVE_HOST", 1, "expected KEY=\"value\"");
        bad("=\"1\"", 1, "no key before '='");
        bad(
            "\n# ok\nTCP-PORTS=\"1\"",
            3,
            "may only contain A-Z, 0-9 and _",
        );
        bad("RESOLVE HOST=\"1\"", 1, "may only contain A-Z, 0-9 and _");
        let e = bad("tcp_ports=\"1\"", 1, "keys are upper case");
        assert!(e.message.contains("did you mean TCP_PORTS?"), "{e}");
    }

    #[test]
    fn unknown_keys() {
        let e = bad(
            "RESOLVE_HOST=\"0\"\nFOO=\"1\"",
            2,
            "unknown key FOO; the known keys are ",
        );
        assert!(e.message.contains("TCP_PORTS, UDP_PORTS"), "{e}");
        assert!(e.message.contains("SYSLOG"), "{e}");
        bad(
            "TCP_PORT=\"1\"",
            1,
            "unknown key TCP_PORT; did you mean TCP_PORTS?",
        );
        bad("BLOCKTCP=\"1\"", 1, "did you mean BLOCK_TCP?");
        bad(
            "ADVANCED_PORT_TCP=\"1\"",
            1,
            "did you mean ADVANCED_PORTS_TCP?",
        );
        bad(
            "KILL_RUN_CMD_FRIST=\"1\"",
            1,
            "did you mean KILL_RUN_CMD_FIRST?",
        );
        // PortSentry 2.0 names are not accepted.
        bad("LOG_FLAGS=\"1\"", 1, "unknown key LOG_FLAGS");
    }

    #[test]
    fn duplicate_key() {
        let e = bad(
            "SCAN_TRIGGER=\"0\"\n\n# again\nSCAN_TRIGGER=\"1\"",
            4,
            "SCAN_TRIGGER is set twice, on line 1 and line 4",
        );
        assert_eq!(
            e.to_string(),
            "/etc/portsentry/portsentry.conf:4: SCAN_TRIGGER is set twice, on line 1 and \
             line 4; keep one of them"
        );
    }

    #[test]
    fn port_lists() {
        bad(
            "\nTCP_PORTS=\"1,70000\"",
            2,
            "the port 70000, which is out of range; ports are 0 to 65535",
        );
        bad(
            "TCP_PORTS=\"5-3\"",
            1,
            "the range 5-3, which runs backwards; write 3-5",
        );
        bad("UDP_PORTS=\"1,,2\"", 1, "UDP_PORTS has an empty item");
        bad("UDP_PORTS=\"1,2,\"", 1, "empty item");
        bad("TCP_PORTS=\"1 2\"", 1, "\"1 2\", which is not a port");
        bad("TCP_PORTS=\"-5\"", 1, "\"-5\", which is not a port");
        bad("TCP_PORTS=\"1-2-3\"", 1, "\"1-2-3\", which is not a port");
        bad("TCP_PORTS=\"http\"", 1, "\"http\", which is not a port");
        bad(
            "ADVANCED_EXCLUDE_TCP=\"+5\"",
            1,
            "ADVANCED_EXCLUDE_TCP has \"+5\"",
        );
        bad(
            "ADVANCED_EXCLUDE_UDP=\"99999999999999999999\"",
            1,
            "out of range",
        );
        // Duplicates and overlaps merge.
        let c = ok("TCP_PORTS=\"1,1,1-3,2 - 4\"");
        assert_eq!(c.tcp_ports, Some(PortSet::from_range(1..=4)));
    }

    #[test]
    fn numbers() {
        bad(
            "ADVANCED_PORTS_TCP=\"65537\"",
            1,
            "ADVANCED_PORTS_TCP must be a whole number from 0 to 65536, not \"65537\"",
        );
        bad("ADVANCED_PORTS_UDP=\"-1\"", 1, "from 0 to 65536");
        bad(
            "SCAN_TRIGGER=\"x\"",
            1,
            "SCAN_TRIGGER must be a whole number of at least 0, not \"x\"",
        );
        bad(
            "SCAN_TRIGGER=\"4294967296\"",
            1,
            "SCAN_TRIGGER must be a whole number",
        );
        bad("SCAN_TRIGGER=\"\"", 1, "not \"\"");
        bad("SCAN_TRIGGER=\"1.5\"", 1, "whole number");
        bad("REPEAT_BAN_FACTOR=\"0\"", 1, "from 1 to 100");
        bad("REPEAT_BAN_FACTOR=\"101\"", 1, "from 1 to 100");
        bad("EVENTS_PER_SEC=\"0\"", 1, "from 1 to 10000000");
        bad("EVENTS_PER_SEC=\"10000001\"", 1, "from 1 to 10000000");
        bad("MAX_TRACKED_SOURCES=\"1023\"", 1, "at least 1024");
        bad("MAX_BANS=\"15\"", 1, "at least 16");
        bad(
            "MAX_BANS_PER_SEC=\"many\"",
            1,
            "MAX_BANS_PER_SEC must be a whole number",
        );
        assert_eq!(ok("SCAN_TRIGGER=\"4294967295\"").scan_trigger, u32::MAX);
        // Advanced port counts.
        let c =
            ok("ADVANCED_PORTS_TCP=\"1\"\nADVANCED_PORTS_UDP=\"65536\"\nADVANCED_EXCLUDE_UDP=\"\"");
        assert!(c.tcp_watched_ports().is_empty());
        assert_eq!(c.udp_watched_ports(), PortSet::from_range(1..=65535));
    }

    #[test]
    fn flags_and_choices() {
        bad(
            "BLOCK_TCP=\"3\"",
            1,
            "BLOCK_TCP must be 0, 1 or 2, not \"3\"",
        );
        bad("BLOCK_UDP=\"yes\"", 1, "BLOCK_UDP must be 0, 1 or 2");
        bad(
            "RESOLVE_HOST=\"2\"",
            1,
            "RESOLVE_HOST must be 0 or 1, not \"2\"",
        );
        bad(
            "KILL_RUN_CMD_FIRST=\"true\"",
            1,
            "KILL_RUN_CMD_FIRST must be 0 or 1",
        );
        bad(
            "UNKILL_HOSTS_DENY=\"\"",
            1,
            "UNKILL_HOSTS_DENY must be 0 or 1",
        );
        bad("WATCH_EPHEMERAL_UDP=\"on\"", 1, "must be 0 or 1");
        bad("SYSLOG=\"no\"", 1, "SYSLOG must be 0 or 1");
        bad(
            "XDP_MODE=\"drv\"",
            1,
            "XDP_MODE must be native, skb or auto, not \"drv\"",
        );
        assert_eq!(ok("XDP_MODE=\"native\"").xdp_mode, AttachMode::Native);
        assert_eq!(ok("XDP_MODE=\"auto\"").xdp_mode, AttachMode::Auto);
        assert_eq!(ok("BLOCK_UDP=\"0\"").block_udp, BlockMode::ReportOnly);
    }

    #[test]
    fn durations() {
        assert_eq!(ok("BAN_TIME=\"0\"").ban_time, Duration::ZERO);
        assert_eq!(ok("BAN_TIME=\"3600\"").ban_time, Duration::from_secs(3600));
        assert_eq!(ok("BAN_TIME=\"90s\"").ban_time, Duration::from_secs(90));
        assert_eq!(ok("BAN_TIME=\"30m\"").ban_time, Duration::from_secs(1800));
        assert_eq!(ok("BAN_TIME=\"12h\"").ban_time, Duration::from_secs(43200));
        assert_eq!(
            ok("SCAN_WINDOW=\"7d\"").scan_window,
            Duration::from_secs(604800)
        );
        assert_eq!(ok("BAN_TIME_MAX=\"0s\"").ban_time_max, Duration::ZERO);
        bad("BAN_TIME=\"soon\"", 1, "BAN_TIME must be a duration");
        bad("BAN_TIME=\"-5\"", 1, "0 = permanent; not \"-5\"");
        bad("BAN_TIME=\"\"", 1, "BAN_TIME must be a duration");
        bad("BAN_TIME=\"5 parsecs\"", 1, "must be a duration");
        bad("SCAN_WINDOW=\"1x\"", 1, "0 = no window");
        bad(
            "KILL_TIMEOUT=\"0\"",
            1,
            "KILL_TIMEOUT must be longer than 0",
        );
        bad(
            "KILL_TIMEOUT=\"0s\"",
            1,
            "KILL_TIMEOUT must be longer than 0",
        );
        bad("KILL_TIMEOUT=\"ten\"", 1, "KILL_TIMEOUT must be a duration");
        // BAN_TIME_MAX below BAN_TIME, named at the BAN_TIME_MAX line.
        bad(
            "BAN_TIME_MAX=\"1h\"\nBAN_TIME=\"2h\"",
            1,
            "BAN_TIME_MAX (1h) is shorter than BAN_TIME (2h)",
        );
        ok("BAN_TIME_MAX=\"1h\"\nBAN_TIME=\"0\"");
    }

    #[test]
    fn paths() {
        bad(
            "\nHISTORY_FILE=\"portsentry.history\"",
            2,
            "HISTORY_FILE must be an absolute path (starting with /), not \"portsentry.history\"",
        );
        bad(
            "BLOCKED_FILE=\"./b\"",
            1,
            "BLOCKED_FILE must be an absolute path",
        );
        bad(
            "IGNORE_FILE=\"portsentry.ignore\"",
            1,
            "IGNORE_FILE must be an absolute path",
        );
        bad(
            "HOSTS_DENY_FILE=\"hosts.deny\"",
            1,
            "HOSTS_DENY_FILE must be an absolute path",
        );
        bad(
            "STATE_DIR=\"~/ps\"",
            1,
            "STATE_DIR must be an absolute path",
        );
        bad(
            "PIN_DIR=\"\"",
            1,
            "PIN_DIR must be an absolute path (starting with /), not empty",
        );
    }

    #[test]
    fn commands() {
        bad(
            "KILL_ROUTE=\"/sbin/route add -host reject\"",
            1,
            "KILL_ROUTE must contain $TARGET$",
        );
        bad(
            "KILL_HOSTS_DENY=\"ALL: $TARGETS\"",
            1,
            "KILL_HOSTS_DENY must contain $TARGET$",
        );
        bad(
            "UNKILL_ROUTE=\"/sbin/route del\"",
            1,
            "UNKILL_ROUTE must contain $TARGET$",
        );
        // Tokens are optional in the run commands.
        assert_eq!(
            ok("KILL_RUN_CMD=\"/bin/true\"").kill_run_cmd.as_deref(),
            Some("/bin/true")
        );
        assert_eq!(
            ok("UNKILL_RUN_CMD=\"/bin/true\"").unkill_run_cmd.as_deref(),
            Some("/bin/true")
        );
    }

    #[test]
    fn interfaces_and_metrics() {
        assert_eq!(ok("INTERFACES=\"\"").interfaces, Vec::<String>::new());
        assert_eq!(ok("INTERFACES=\"enp0s31f6\"").interfaces, ["enp0s31f6"]);
        bad("INTERFACES=\"eth0,\"", 1, "is empty");
        bad(
            "INTERFACES=\"averyveryverylongname\"",
            1,
            "longer than 15 characters",
        );
        bad(
            "INTERFACES=\"eth0/1\"",
            1,
            "contains '/', ':' or whitespace",
        );
        bad("INTERFACES=\"eth0 eth1\"", 1, "\"eth0 eth1\"");
        bad("INTERFACES=\"eth0:1\"", 1, "':'");
        bad("INTERFACES=\"..\"", 1, "is not allowed");
        bad(
            "INTERFACES=\"eth0,eth0\"",
            1,
            "lists the interface eth0 twice",
        );
        assert_eq!(
            ok("METRICS_ADDRESS=\"127.0.0.1:9100\"").metrics_address,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            ok("METRICS_ADDRESS=\"0.0.0.0:9100\"").metrics_address,
            Some("0.0.0.0:9100".parse().unwrap())
        );
        bad(
            "METRICS_ADDRESS=\"localhost:9100\"",
            1,
            "METRICS_ADDRESS must be an IP address and a port",
        );
        bad(
            "METRICS_ADDRESS=\"127.0.0.1\"",
            1,
            "such as \"127.0.0.1:9100\"",
        );
        bad("METRICS_ADDRESS=\"127.0.0.1:0\"", 1, "other than 0");
        bad("METRICS_ADDRESS=\"::1:9100\"", 1, "[::1]:9100");
    }

    #[test]
    fn stealth_needs_ports() {
        bad(
            "# x\nTCP_MODE=\"stcp\"",
            2,
            "TCP_MODE) but TCP_PORTS is not set",
        );
        bad(
            "UDP_MODE=\"udp\"\n",
            1,
            "UDP_MODE) but UDP_PORTS is not set",
        );
        // An empty list is set.
        ok("TCP_MODE=\"stcp\"\nTCP_PORTS=\"\"");
        // Re-validation after a command-line override.
        let mut c = ok("UDP_PORTS=\"1\"");
        c.udp_mode = Mode::Stealth;
        c.validate().unwrap();
        c.tcp_mode = Mode::Stealth;
        let e = c.validate().unwrap_err();
        assert_eq!((e.path.as_path(), e.line), (Path::new(PATH), 0));
        assert!(e.message.contains("TCP_PORTS is not set"), "{e}");
        assert_eq!(
            e.to_string(),
            format!("{PATH}: {}", e.message),
            "line 0 is the whole file"
        );
        let d = Config {
            udp_mode: Mode::Stealth,
            ..Config::default()
        };
        let e = d.validate().unwrap_err();
        assert_eq!(e.path, Path::new(NO_FILE));
    }

    #[test]
    fn run_cmd_only_needs_a_command() {
        bad(
            "\nBLOCK_UDP=\"2\"",
            2,
            "BLOCK_UDP is 2 (run KILL_RUN_CMD only) but KILL_RUN_CMD is not set",
        );
        ok("BLOCK_UDP=\"2\"\nKILL_RUN_CMD=\"/bin/true\"");
    }

    #[test]
    fn junk() {
        bad("SCAN_TRIGGER=\"0\"\nA\0B=\"1\"", 2, "NUL byte");
        bad("\n\n\x07\x01\x02", 3, "control character U+0007");
        let long = format!("PORT_BANNER=\"{}\"", "x".repeat(5000));
        bad(
            &format!("# ok\n{long}"),
            2,
            "lines may be at most 4096 bytes",
        );
        // Exactly 4096 bytes is fine.
        let fits = format!("PORT_BANNER=\"{}\"", "x".repeat(4096 - 14));
        assert_eq!(fits.len(), 4096);
        ok(&fits);
        let huge = "# padding padding padding\n".repeat(50_000);
        bad(&huge, 0, "larger than 1048576 bytes");
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portsentry-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn load_errors() {
        let path = temp_file("latin1.conf", b"# ok\nPORT_BANNER=\"caf\xe9\"\n");
        let e = load(&path).unwrap_err();
        assert_eq!((e.path.as_path(), e.line), (path.as_path(), 2));
        assert!(e.message.contains("not valid UTF-8"), "{e}");
        assert!(e.message.contains("byte 0xe9 at column 17"), "{e}");

        let mut junk = b"SCAN_TRIGGER=\"0\"\n".to_vec();
        junk.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0xff, 0xfe]);
        let path = temp_file("binary.conf", &junk);
        let e = load(&path).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("NUL byte"), "{e}");

        let path = temp_file(
            "long.conf",
            format!("\n\n{}", "#".repeat(10_000)).as_bytes(),
        );
        let e = load(&path).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("at most 4096 bytes"), "{e}");

        let path = temp_file("huge.conf", &vec![b'\n'; (MAX_FILE_BYTES + 1) as usize]);
        let e = load(&path).unwrap_err();
        assert_eq!(e.line, 0, "{e}");
        assert!(e.message.contains("1 MiB"), "{e}");

        let missing = Path::new("/nonexistent/portsentry.conf");
        let e = load(missing).unwrap_err();
        assert_eq!((e.path.as_path(), e.line), (missing, 0));
        assert!(e.message.starts_with("cannot open"), "{e}");

        let e = load(&std::env::temp_dir()).unwrap_err();
        assert_eq!(e.line, 0, "{e}");
        assert!(e.message.starts_with("cannot read"), "{e}");

        let path = temp_file("good.conf", b"TCP_MODE = \"stcp\"\r\nTCP_PORTS=\"1\"\r\n");
        assert_eq!(load(&path).unwrap().tcp_mode, Mode::Stealth);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
