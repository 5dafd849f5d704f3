//! PortSentry's `portsentry.conf`, parsed into a typed [`Config`], and everything derived from
//! it before the daemon runs: the ignore file, the port policy and the effective settings.
//!
//! The syntax is PortSentry 1.2's: `KEY="value"` lines, `#` comments, blank lines, spaces
//! around `=` allowed. Unlike 1.2, which silently skips anything it does not understand,
//! every problem is an error naming the file and line, and nothing is applied from a file that
//! fails to load: [`parse`] and [`load`] return a whole [`Config`] or a [`ConfigError`].
//!
//! Every key is declared once, with its default, in [`keys::KEYS`]; the keys, their defaults
//! and how they differ from PortSentry are documented in `docs/configuration.md`. The defaults
//! are the ones used when there is no config file at all, and for every key a file leaves out.

pub mod crowdsec;
pub mod debian_defaults;
pub mod detection;
pub mod effective;
pub(crate) mod gateways;
pub mod ignore;
pub mod keys;
pub(crate) mod localaddrs;
pub mod manpage;
pub(crate) mod policy;
pub mod ports;
pub mod services;
mod text;
mod values;

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use keys::KEYS;
use ports::PortSet;
pub use text::{MAX_FILE_BYTES, MAX_LINE_BYTES};
use text::{check_line, check_size, read_text, shorten, text_lines};
pub use values::{AttachMode, BlockMode, Mode};
pub(crate) use values::{DurationError, LONGEST, parse_duration};

/// The path shown in errors about a [`Config`] that did not come from a file.
const NO_FILE: &str = "(built-in defaults)";

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

/// Declares [`Config`] and `Config::blank`, every field at its type's `Default`: the base
/// [`Config::default`] applies the keys' defaults to, so no field is listed twice.
macro_rules! config_struct {
    (
        $(#[$attr:meta])*
        pub struct Config { $($(#[$field_attr:meta])* pub $field:ident: $ty:ty,)* }
    ) => {
        $(#[$attr])*
        pub struct Config { $($(#[$field_attr])* pub $field: $ty,)* }

        impl Config {
            fn blank() -> Self {
                Config { $($field: Default::default(),)* }
            }
        }
    };
}

config_struct! {
    /// The whole configuration: one field per key of [`KEYS`] (whose entry gives its default
    /// and the values it takes), plus where it came from. A key a file leaves out keeps its
    /// default.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Config {
        /// The file this came from; `None` for [`Config::default`].
        pub source: Option<PathBuf>,
        /// The line of every key the file set (keys from [`KEYS`]), for errors found later.
        pub lines: BTreeMap<&'static str, usize>,

        // ---- PortSentry 1.2 ----
        /// `TCP_PORTS`: ports watched in TCP stealth mode; `None` when not set.
        pub tcp_ports: Option<PortSet>,
        /// `UDP_PORTS`: ports watched in UDP stealth mode; `None` when not set.
        pub udp_ports: Option<PortSet>,
        /// `ADVANCED_PORTS_TCP`: TCP advanced mode watches ports 1 to N-1.
        pub advanced_ports_tcp: u32,
        /// `ADVANCED_PORTS_UDP`: UDP advanced mode watches ports 1 to N-1.
        pub advanced_ports_udp: u32,
        /// `ADVANCED_EXCLUDE_TCP`: never watched in TCP advanced mode.
        pub advanced_exclude_tcp: PortSet,
        /// `ADVANCED_EXCLUDE_UDP`: never watched in UDP advanced mode.
        pub advanced_exclude_udp: PortSet,
        /// `IGNORE_FILE`: hosts and networks never acted on.
        pub ignore_file: Option<PathBuf>,
        /// `HISTORY_FILE`.
        pub history_file: PathBuf,
        /// `BLOCKED_FILE`.
        pub blocked_file: PathBuf,
        /// `RESOLVE_HOST`: reverse-resolve attackers for log lines.
        pub resolve_host: bool,
        /// `BLOCK_TCP`.
        pub block_tcp: BlockMode,
        /// `BLOCK_UDP`.
        pub block_udp: BlockMode,
        /// `KILL_ROUTE`: shell command run to block; contains `$TARGET$`.
        pub kill_route: Option<String>,
        /// `KILL_HOSTS_DENY`: line appended to `HOSTS_DENY_FILE`; contains `$TARGET$`.
        pub kill_hosts_deny: Option<String>,
        /// `KILL_RUN_CMD`: shell command run for each host acted on.
        pub kill_run_cmd: Option<String>,
        /// `KILL_RUN_CMD_FIRST`: run `KILL_RUN_CMD` before the blocking.
        pub kill_run_cmd_first: bool,
        /// `SCAN_TRIGGER`: hits tolerated before acting; 0 and 1 both act on the first.
        pub scan_trigger: u32,
        /// `PORT_BANNER`: accepted for compatibility; unused by a packet-level detector.
        pub port_banner: Option<String>,

        // ---- Extensions ----
        /// `TCP_MODE`.
        pub tcp_mode: Mode,
        /// `UDP_MODE`.
        pub udp_mode: Mode,
        /// `INTERFACES`: interface names to attach to; empty when the file names none.
        pub interfaces: Vec<String>,
        /// `XDP_MODE`.
        pub xdp_mode: AttachMode,
        /// `BAN_TIME`: how long a ban lasts; zero means permanent (PortSentry).
        pub ban_time: Duration,
        /// `BAN_TIME_MAX`: cap on repeat bans grown by `REPEAT_BAN_FACTOR`; zero means no cap.
        pub ban_time_max: Duration,
        /// `REPEAT_BAN_FACTOR`: each repeat ban of a host lasts this many times the previous.
        pub repeat_ban_factor: u32,
        /// `UNKILL_ROUTE`: shell command undoing `KILL_ROUTE` on unban; contains `$TARGET$`.
        pub unkill_route: Option<String>,
        /// `UNKILL_HOSTS_DENY`: remove the `KILL_HOSTS_DENY` line on unban.
        pub unkill_hosts_deny: bool,
        /// `UNKILL_RUN_CMD`: shell command run on unban.
        pub unkill_run_cmd: Option<String>,
        /// `HOSTS_DENY_FILE`.
        pub hosts_deny_file: PathBuf,
        /// `KILL_TIMEOUT`: how long a kill/unkill command may run; never zero.
        pub kill_timeout: Duration,
        /// `SCAN_WINDOW`: `SCAN_TRIGGER` hits must fall within this; zero means forever
        /// (PortSentry).
        pub scan_window: Duration,
        /// `SCAN_DETECTION`: SCAN_TRIGGER hits, or the Threshold Random Walk.
        pub scan_detection: detection::Detection,
        /// `TRW_THETA0`: the chance that a client's first contact succeeds.
        pub trw_theta0: detection::Probability,
        /// `TRW_THETA1`: the chance that a scanner's first contact succeeds (below θ0).
        pub trw_theta1: detection::Probability,
        /// `TRW_ALPHA`: the false-positive rate aimed at.
        pub trw_alpha: detection::Probability,
        /// `TRW_BETA`: the detection rate aimed at (above α).
        pub trw_beta: detection::Probability,
        /// `WATCH_EPHEMERAL_UDP`: also watch UDP ports in `ip_local_port_range`.
        pub watch_ephemeral_udp: bool,
        /// `VERIFY_SOURCES`: ban only TCP sources that answer the XDP SYN-ACK challenge
        /// (a completed handshake); forged probes ban no one.
        pub verify_sources: bool,
        /// `BLOCK_EVASIVE_PACKETS`: drop tiny first fragments and over-long IPv6
        /// extension-header chains (shapes with no legitimate use that hide a probe).
        pub block_evasive_packets: bool,
        /// `ACK_SCAN_PORTS`: distinct watched ports a host's segments of no connection
        /// (the ACK class) must reach before it is acted on; 0 means not watched.
        pub ack_scan_ports: u32,
        /// `PROTO_SCAN_PROTOCOLS`: distinct unserved IP protocols a host must send
        /// before it is acted on; 0 means not watched.
        pub proto_scan_protocols: u32,
        /// `STATE_DIR`.
        pub state_dir: PathBuf,
        /// `PIN_DIR`: where the BPF maps and links are pinned.
        pub pin_dir: PathBuf,
        /// `EVENTS_PER_SEC`: kernel event budget per CPU.
        pub events_per_sec: u32,
        /// `MAX_BANS_PER_SEC`: new bans per second; 0 means unlimited.
        pub max_bans_per_sec: u32,
        /// `MAX_TRACKED_SOURCES`: hosts whose hits are counted.
        pub max_tracked_sources: u32,
        /// `MAX_BANS`: hosts banned at once.
        pub max_bans: u32,
        /// `BAN_MIN_PREFIX_V4`: the widest IPv4 ban allowed without `--force` (a prefix
        /// length).
        pub ban_min_prefix_v4: u32,
        /// `BAN_MIN_PREFIX_V6`: the same for IPv6.
        pub ban_min_prefix_v6: u32,
        /// `SOURCE_PREFIX_V6`: IPv6 sources are counted and banned by their network of
        /// this length (128: each address on its own).
        pub source_prefix_v6: u32,
        /// `ESCALATE_AFTER`: this many banned hosts of one network within
        /// `ESCALATE_WINDOW` make a ban of the network; 0 means off, never 1.
        pub escalate_after: u32,
        /// `ESCALATE_WINDOW`: the bans `ESCALATE_AFTER` counts began within this; zero
        /// means every ban in force counts.
        pub escalate_window: Duration,
        /// `ESCALATE_PREFIX_V4`: the IPv4 network escalated to, as a prefix length.
        pub escalate_prefix_v4: u32,
        /// `ESCALATE_PREFIX_V6`: the same for IPv6.
        pub escalate_prefix_v6: u32,
        /// `METRICS_ADDRESS`: where to serve metrics; `None` for off.
        pub metrics_address: Option<SocketAddr>,
        /// `SYSLOG`: log attack alerts to syslog.
        pub syslog: bool,
        /// `CROWDSEC_LAPI_URL`: the CrowdSec Local API; `None` for off.
        pub crowdsec_lapi_url: Option<String>,
        /// `CROWDSEC_ENFORCE`: stream the LAPI's decisions and enforce them (a bouncer).
        pub crowdsec_enforce: bool,
        /// `CROWDSEC_REPORT`: send our scan bans to the LAPI as alerts (a machine).
        pub crowdsec_report: bool,
        /// `CROWDSEC_BOUNCER_KEY`: the bouncer's key, written in the file itself.
        pub crowdsec_bouncer_key: Option<crowdsec::Secret>,
        /// `CROWDSEC_BOUNCER_KEY_FILE`: a private file holding the bouncer's key.
        pub crowdsec_bouncer_key_file: Option<PathBuf>,
        /// `CROWDSEC_MACHINE_ID`: the machine's login.
        pub crowdsec_machine_id: Option<String>,
        /// `CROWDSEC_MACHINE_PASSWORD`: the machine's password.
        pub crowdsec_machine_password: Option<crowdsec::Secret>,
        /// `CROWDSEC_CREDENTIALS_FILE`: the file `cscli machines add -f` writes.
        pub crowdsec_credentials_file: Option<PathBuf>,
        /// `CROWDSEC_ORIGINS`: enforce only decisions of these origins; empty for all.
        pub crowdsec_origins: Vec<String>,
        /// `CROWDSEC_SCENARIOS_EXCLUDE`: decisions whose scenario contains one of these
        /// words are not enforced.
        pub crowdsec_scenarios_exclude: Vec<String>,
        /// `CROWDSEC_KILL_COMMANDS`: run the kill commands (and their undo) for the bans of
        /// addresses that Local API decisions make, as for our own scan bans.
        pub crowdsec_kill_commands: bool,
        /// `CROWDSEC_INTERVAL`: how often the decision stream is polled.
        pub crowdsec_interval: Duration,
    }
}

/// Every key at its default (see [`KEYS`]), with no source and no lines.
impl Default for Config {
    fn default() -> Self {
        let mut config = Config::blank();
        keys::apply_defaults(&mut config);
        config
    }
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
        let Some((name, value)) = split_line(line).map_err(|m| err(n, m))? else {
            continue;
        };
        let key = keys::known_key(name).map_err(|m| err(n, m))?;
        if let Some(first) = config.lines.get(key.name) {
            return Err(err(
                n,
                format!(
                    "{} is set twice, on line {first} and line {n}; keep one of them",
                    key.name
                ),
            ));
        }
        key.set(&mut config, value).map_err(|m| err(n, m))?;
        config.lines.insert(key.name, n);
    }
    // The default source prefix never asks for bans wider than BAN_MIN_PREFIX_V6 allows.
    if !config.lines.contains_key("SOURCE_PREFIX_V6") {
        config.source_prefix_v6 = config.source_prefix_v6.max(config.ban_min_prefix_v6);
    }
    config.validate()?;
    Ok(config)
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
    // `KEY="value"  # was "x"`: the last quote is the comment's, and the value would
    // silently run into the comment. A quote, blanks, then '#' reads as the value's end
    // and a comment; embedded quotes stay allowed elsewhere (`--comment "#ps"` too).
    if value.match_indices('"').any(|(i, _)| {
        let rest = &value[i + 1..];
        rest.starts_with([' ', '\t']) && rest.trim_start().starts_with('#')
    }) {
        return Err(format!(
            "the value of {key} holds a quote, blanks and '#', which read as the value's end \
             and a comment: a comment after the value must not contain a double quote (the \
             value runs to the last quote on the line)"
        ));
    }
    if !after.is_empty() && !after.starts_with('#') {
        return Err(format!(
            "unexpected text after the closing quote of {key}: \"{}\"; only a # comment may \
             follow the value",
            shorten(after)
        ));
    }
    Ok(Some((key, value)))
}

impl Config {
    /// The line `key` was set on, or 0 when the file did not set it.
    pub(crate) fn line_of(&self, key: &str) -> usize {
        self.lines.get(key).copied().unwrap_or(0)
    }

    /// Of `keys`, the one set last in the file (where a conflict between them shows).
    fn set_last<'k>(&self, keys: &[&'k str]) -> &'k str {
        keys.iter()
            .copied()
            .max_by_key(|k| self.line_of(k))
            .expect("at least one key")
    }

    /// An error about `key`, located at the line that set it (or the whole file).
    pub(crate) fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let path = self
            .source
            .clone()
            .unwrap_or_else(|| PathBuf::from(NO_FILE));
        ConfigError::new(path, self.line_of(key), message)
    }

    /// Checks what no single key can check alone. [`parse`] runs it; run it again after
    /// changing fields (command-line overrides, e.g. of the modes). Of several problems,
    /// the one on the earliest line is reported, so that the lines before it are a valid
    /// file on their own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (self.validate_core(), crowdsec::validate(self)) {
            (Err(a), Err(b)) => Err(if (b.line == 0, b.line) < (a.line == 0, a.line) {
                b
            } else {
                a
            }),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// [`Config::validate`] for all keys but CROWDSEC_* (`crowdsec::validate`).
    fn validate_core(&self) -> Result<(), ConfigError> {
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
        if self.source_prefix_v6 < self.ban_min_prefix_v6 {
            return Err(self.error_at(
                self.set_last(&["SOURCE_PREFIX_V6", "BAN_MIN_PREFIX_V6"]),
                format!(
                    "SOURCE_PREFIX_V6 is {}, wider than BAN_MIN_PREFIX_V6 ({}): a scanner would \
                     be banned with a network wider than bans may be; set SOURCE_PREFIX_V6 to \
                     at least {} (64 is an IPv6 host's usual share)",
                    self.source_prefix_v6, self.ban_min_prefix_v6, self.ban_min_prefix_v6
                ),
            ));
        }
        self.validate_walk()?;
        if self.escalate_after > 0 {
            for (key, prefix, min_key, min) in [
                (
                    "ESCALATE_PREFIX_V4",
                    self.escalate_prefix_v4,
                    "BAN_MIN_PREFIX_V4",
                    self.ban_min_prefix_v4,
                ),
                (
                    "ESCALATE_PREFIX_V6",
                    self.escalate_prefix_v6,
                    "BAN_MIN_PREFIX_V6",
                    self.ban_min_prefix_v6,
                ),
            ] {
                if prefix < min {
                    let at = self.set_last(&["ESCALATE_AFTER", key, min_key]);
                    return Err(self.error_at(
                        at,
                        format!(
                            "{key} (/{prefix}) is wider than {min_key} (/{min}), the widest ban \
                             the ban guard allows, so every escalation would be refused; set \
                             {key} to {min} or more, or ESCALATE_AFTER to 0 (off)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The IPv6 network a source address is counted and banned by
    /// (`SOURCE_PREFIX_V6`); an IPv4 source is its own.
    pub fn source_net(&self, ip: std::net::IpAddr) -> ipnet::IpNet {
        match ip {
            std::net::IpAddr::V4(_) => ipnet::IpNet::from(ip),
            std::net::IpAddr::V6(a) => {
                let len = u8::try_from(self.source_prefix_v6.min(128)).expect("at most 128");
                ipnet::IpNet::V6(
                    ipnet::Ipv6Net::new(a, len)
                        .expect("a valid prefix length")
                        .trunc(),
                )
            }
        }
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

#[cfg(test)]
mod tests;
