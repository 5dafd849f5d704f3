//! Every key of `portsentry.conf`, declared once in [`KEYS`]: its name, whether PortSentry 1.2
//! has it, its default as config-file text, a one-line description, and the setter that parses
//! a value into its [`Config`] field. Parsing, the defaults, the known-key check and its
//! suggestions all come from this table. `docs/configuration.md` describes every key at
//! length.

use super::crowdsec::{lapi_url, machine_id, secret, words};
use super::detection::{detection, probability};
use super::{
    Config,
    text::shorten,
    values::{
        Mode, absolute_path, block_mode, command, duration, escalate_after, flag, interfaces,
        nonzero_duration, number, optional_absolute_path, port_list, socket_address, xdp_mode,
    },
};

/// Where a key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// A PortSentry 1.2 key, with 1.2's meaning.
    PortSentry,
    /// Our extension; PortSentry has no such key.
    Extension,
}

/// Parses `value` for the key named `key` into its field; the error is the message only.
pub(super) type Setter = fn(&mut Config, &str, &str) -> Result<(), String>;

/// One configuration key.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub name: &'static str,
    pub section: Section,
    /// The value a file that leaves the key out gets, as it would be written between the
    /// quotes; `None` for a key that is not set unless a file sets it.
    pub default: Option<&'static str>,
    /// What the key does, in one line.
    pub doc: &'static str,
    pub(super) setter: Setter,
}

impl Key {
    /// Parses `value` into this key's field of `config`; the error is the message only.
    pub(super) fn set(&self, config: &mut Config, value: &str) -> Result<(), String> {
        (self.setter)(config, self.name, value)
    }
}

/// `key!(Section, "NAME", "default" or unset, "doc", |config, key, value| field = parsed)`.
macro_rules! key {
    ($section:ident, $name:literal, unset, $doc:literal, |$c:ident, $k:ident, $v:ident| $set:expr) => {
        key!(@ $section, $name, None, $doc, |$c, $k, $v| $set)
    };
    ($section:ident, $name:literal, $default:literal, $doc:literal, |$c:ident, $k:ident, $v:ident| $set:expr) => {
        key!(@ $section, $name, Some($default), $doc, |$c, $k, $v| $set)
    };
    (@ $section:ident, $name:literal, $default:expr, $doc:literal, |$c:ident, $k:ident, $v:ident| $set:expr) => {
        Key {
            name: $name,
            section: Section::$section,
            default: $default,
            doc: $doc,
            setter: |$c, $k, $v| {
                $set;
                Ok(())
            },
        }
    };
}

/// Every key a config file may set: PortSentry 1.2's, then our extensions (the order of the
/// list of known keys in an error).
#[rustfmt::skip]
pub static KEYS: &[Key] = &[
    key!(PortSentry, "TCP_PORTS", unset,
        "TCP ports watched in the TCP stealth mode (required when TCP_MODE is stealth)",
        |c, k, v| c.tcp_ports = Some(port_list(k, v)?)),
    key!(PortSentry, "UDP_PORTS", unset,
        "UDP ports watched in the UDP stealth mode (required when UDP_MODE is stealth)",
        |c, k, v| c.udp_ports = Some(port_list(k, v)?)),
    key!(PortSentry, "ADVANCED_PORTS_TCP", "1024",
        "TCP advanced mode watches every port from 1 to N-1 (N from 0 to 65536)",
        |c, k, v| c.advanced_ports_tcp = number(k, v, 0, 65536)?),
    key!(PortSentry, "ADVANCED_PORTS_UDP", "1024",
        "UDP advanced mode watches every port from 1 to N-1 (N from 0 to 65536)",
        |c, k, v| c.advanced_ports_udp = number(k, v, 0, 65536)?),
    key!(PortSentry, "ADVANCED_EXCLUDE_TCP", "113,139",
        "TCP ports never watched in advanced mode (default: ident, NetBIOS session)",
        |c, k, v| c.advanced_exclude_tcp = port_list(k, v)?),
    key!(PortSentry, "ADVANCED_EXCLUDE_UDP", "520,138,137,67",
        "UDP ports never watched in advanced mode (default: RIP, NetBIOS, bootp/DHCP)",
        |c, k, v| c.advanced_exclude_udp = port_list(k, v)?),
    key!(PortSentry, "IGNORE_FILE", "",
        "file of hosts and networks never acted on; \"\" for none",
        |c, k, v| c.ignore_file = optional_absolute_path(k, v)?),
    key!(PortSentry, "HISTORY_FILE", "/var/lib/portsentry/portsentry.history",
        "append-only record of every host acted on",
        |c, k, v| c.history_file = absolute_path(k, v)?),
    key!(PortSentry, "BLOCKED_FILE", "/var/lib/portsentry/portsentry.blocked",
        "the hosts blocked now (written as BLOCKED_FILE.<mode>)",
        |c, k, v| c.blocked_file = absolute_path(k, v)?),
    key!(PortSentry, "RESOLVE_HOST", "0",
        "1 = reverse-resolve the attacker's name for log lines",
        |c, k, v| c.resolve_host = flag(k, v)?),
    key!(PortSentry, "BLOCK_TCP", "1",
        "a host caught by TCP: 0 report only, 1 ban and run the kill actions, 2 KILL_RUN_CMD only",
        |c, k, v| c.block_tcp = block_mode(k, v)?),
    key!(PortSentry, "BLOCK_UDP", "1",
        "a host caught by UDP: 0 report only, 1 ban and run the kill actions, 2 KILL_RUN_CMD only",
        |c, k, v| c.block_udp = block_mode(k, v)?),
    key!(PortSentry, "KILL_ROUTE", "",
        "shell command run when a host is banned; must contain $TARGET$",
        |c, k, v| c.kill_route = command(k, v, true)?),
    key!(PortSentry, "KILL_HOSTS_DENY", "",
        "line appended to HOSTS_DENY_FILE when a host is banned; must contain $TARGET$",
        |c, k, v| c.kill_hosts_deny = command(k, v, true)?),
    key!(PortSentry, "KILL_RUN_CMD", "",
        "shell command run for each host acted on",
        |c, k, v| c.kill_run_cmd = command(k, v, false)?),
    key!(PortSentry, "KILL_RUN_CMD_FIRST", "0",
        "1 = run KILL_RUN_CMD before KILL_HOSTS_DENY and KILL_ROUTE, 0 = after",
        |c, k, v| c.kill_run_cmd_first = flag(k, v)?),
    key!(PortSentry, "SCAN_TRIGGER", "0",
        "hits tolerated from one host before acting; 0 and 1 both act on the first hit",
        |c, k, v| c.scan_trigger = number(k, v, 0, u32::MAX)?),
    key!(PortSentry, "PORT_BANNER", "",
        "accepted for compatibility; a packet-level detector never sends it",
        |c, k, v| c.port_banner = command(k, v, false)?),
    key!(Extension, "TCP_MODE", "advanced",
        "how TCP is watched: atcp or advanced; stcp, tcp or stealth; off",
        |c, _k, v| c.tcp_mode = Mode::parse_tcp(v)?),
    key!(Extension, "UDP_MODE", "advanced",
        "how UDP is watched: audp or advanced; sudp, udp or stealth; off",
        |c, _k, v| c.udp_mode = Mode::parse_udp(v)?),
    key!(Extension, "INTERFACES", "",
        "comma-separated network interfaces to attach to",
        |c, k, v| c.interfaces = interfaces(k, v)?),
    key!(Extension, "XDP_MODE", "auto",
        "how to attach: native (in the driver), skb (generic) or auto (native, else skb)",
        |c, k, v| c.xdp_mode = xdp_mode(k, v)?),
    key!(Extension, "BAN_TIME", "0",
        "how long a ban lasts; 0 = permanent, as PortSentry",
        |c, k, v| c.ban_time = duration(k, v, "0 = permanent")?),
    key!(Extension, "BAN_TIME_MAX", "0",
        "the longest a repeat ban may grow to; 0 = no cap",
        |c, k, v| c.ban_time_max = duration(k, v, "0 = no cap")?),
    key!(Extension, "REPEAT_BAN_FACTOR", "1",
        "each repeat ban of a host lasts this many times the previous one (1 to 100)",
        |c, k, v| c.repeat_ban_factor = number(k, v, 1, 100)?),
    key!(Extension, "UNKILL_ROUTE", "",
        "shell command run when a ban ends, to undo KILL_ROUTE; must contain $TARGET$",
        |c, k, v| c.unkill_route = command(k, v, true)?),
    key!(Extension, "UNKILL_HOSTS_DENY", "1",
        "1 = remove the KILL_HOSTS_DENY line when the ban ends",
        |c, k, v| c.unkill_hosts_deny = flag(k, v)?),
    key!(Extension, "UNKILL_RUN_CMD", "",
        "shell command run when a ban ends",
        |c, k, v| c.unkill_run_cmd = command(k, v, false)?),
    key!(Extension, "HOSTS_DENY_FILE", "/etc/hosts.deny",
        "the file KILL_HOSTS_DENY appends to",
        |c, k, v| c.hosts_deny_file = absolute_path(k, v)?),
    key!(Extension, "KILL_TIMEOUT", "30s",
        "how long a kill or unkill command may run before it is killed; not 0",
        |c, k, v| c.kill_timeout = nonzero_duration(k, v)?),
    key!(Extension, "SCAN_WINDOW", "0",
        "the SCAN_TRIGGER hits must fall within this time; 0 = forever, as PortSentry",
        |c, k, v| c.scan_window = duration(k, v, "0 = no window")?),
    key!(Extension, "SCAN_DETECTION", "trigger",
        "how a host becomes a scanner: trigger (SCAN_TRIGGER hits, as PortSentry) or trw (the Threshold Random Walk: failed first contacts against connections to listeners)",
        |c, k, v| c.scan_detection = detection(k, v)?),
    key!(Extension, "TRW_THETA0", "0.8",
        "trw: the chance that a client's first contact with a port succeeds (above TRW_THETA1, below 1)",
        |c, k, v| c.trw_theta0 = probability(k, v)?),
    key!(Extension, "TRW_THETA1", "0.2",
        "trw: the chance that a scanner's first contact with a port succeeds (above 0)",
        |c, k, v| c.trw_theta1 = probability(k, v)?),
    key!(Extension, "TRW_ALPHA", "0.01",
        "trw: the false-positive rate aimed at (above 0, below TRW_BETA)",
        |c, k, v| c.trw_alpha = probability(k, v)?),
    key!(Extension, "TRW_BETA", "0.99",
        "trw: the detection rate aimed at (below 1)",
        |c, k, v| c.trw_beta = probability(k, v)?),
    key!(Extension, "WATCH_EPHEMERAL_UDP", "0",
        "1 = also watch UDP ports in the kernel's ip_local_port_range",
        |c, k, v| c.watch_ephemeral_udp = flag(k, v)?),
    key!(Extension, "VERIFY_SOURCES", "0",
        "1 = ban only TCP sources that complete the XDP SYN-ACK challenge",
        |c, k, v| c.verify_sources = flag(k, v)?),
    key!(Extension, "BLOCK_EVASIVE_PACKETS", "1",
        "1 = drop packets shaped to hide a probe (a TCP or UDP header split across fragments, an IPv6 extension-header chain of more than 8); 0 = count them and let them pass",
        |c, k, v| c.block_evasive_packets = flag(k, v)?),
    key!(Extension, "ACK_SCAN_PORTS", "3",
        "a host whose segments with ACK reach this many distinct watched ports that no socket listens on (nmap -sA, -sW, -sM) is acted on like a scanner (1-64); 0 = ACK scans not watched",
        |c, k, v| c.ack_scan_ports = number(k, v, 0, 64)?),
    key!(Extension, "PROTO_SCAN_PROTOCOLS", "3",
        "a host that sends this many distinct IP protocols nothing here serves (nmap -sO, SCTP without an SCTP stack) is acted on like a TCP scanner (1-64); 0 = such datagrams are not watched",
        |c, k, v| c.proto_scan_protocols = number(k, v, 0, 64)?),
    key!(Extension, "STATE_DIR", "/var/lib/portsentry",
        "where the daemon keeps its state files",
        |c, k, v| c.state_dir = absolute_path(k, v)?),
    key!(Extension, "PIN_DIR", "/sys/fs/bpf/portsentry",
        "where the BPF maps and links are pinned in bpffs",
        |c, k, v| c.pin_dir = absolute_path(k, v)?),
    key!(Extension, "EVENTS_PER_SEC", "20000",
        "scan events a second each CPU may report to the daemon (1 to 10000000)",
        |c, k, v| c.events_per_sec = number(k, v, 1, 10_000_000)?),
    key!(Extension, "MAX_BANS_PER_SEC", "100",
        "new scan bans per second; 0 = unlimited",
        |c, k, v| c.max_bans_per_sec = number(k, v, 0, u32::MAX)?),
    key!(Extension, "MAX_TRACKED_SOURCES", "65536",
        "how many hosts' hits are counted at once (at least 1024); a change takes effect at the next start",
        |c, k, v| c.max_tracked_sources = number(k, v, 1024, u32::MAX)?),
    key!(Extension, "MAX_BANS", "1048576",
        "how many hosts may be banned at once (at least 16); a change takes effect at the next start, every ban kept",
        |c, k, v| c.max_bans = number(k, v, 16, u32::MAX)?),
    key!(Extension, "BAN_MIN_PREFIX_V4", "8",
        "the widest IPv4 ban allowed, as a prefix length; wider ones need `portsentry ban --force`",
        |c, k, v| c.ban_min_prefix_v4 = number(k, v, 0, 32)?),
    key!(Extension, "BAN_MIN_PREFIX_V6", "32",
        "the widest IPv6 ban allowed, as a prefix length; wider ones need `portsentry ban --force`",
        |c, k, v| c.ban_min_prefix_v6 = number(k, v, 0, 128)?),
    key!(Extension, "SOURCE_PREFIX_V6", "64",
        "IPv6 sources are counted and banned by their network of this prefix length (any IPv6 host has a /64 to pick addresses from); 128 = each address on its own",
        |c, k, v| c.source_prefix_v6 = number(k, v, 1, 128)?),
    key!(Extension, "ESCALATE_AFTER", "0",
        "this many banned hosts of one network within ESCALATE_WINDOW make one ban of the network; 0 = off",
        |c, k, v| c.escalate_after = escalate_after(k, v)?),
    key!(Extension, "ESCALATE_WINDOW", "10m",
        "the bans ESCALATE_AFTER counts began within this time; 0 = every ban in force counts",
        |c, k, v| c.escalate_window = duration(k, v, "0 = every ban in force counts")?),
    key!(Extension, "ESCALATE_PREFIX_V4", "24",
        "the IPv4 network an escalation bans, as a prefix length (0-31)",
        |c, k, v| c.escalate_prefix_v4 = number(k, v, 0, 31)?),
    key!(Extension, "ESCALATE_PREFIX_V6", "48",
        "the IPv6 network an escalation bans, as a prefix length (0-127)",
        |c, k, v| c.escalate_prefix_v6 = number(k, v, 0, 127)?),
    key!(Extension, "METRICS_ADDRESS", "",
        "IP:port to serve metrics on; \"\" = off",
        |c, k, v| c.metrics_address = socket_address(k, v)?),
    key!(Extension, "SYSLOG", "1",
        "1 = log attack alerts to syslog",
        |c, k, v| c.syslog = flag(k, v)?),
    key!(Extension, "CROWDSEC_LAPI_URL", "",
        "the CrowdSec Local API to share bans with, e.g. http://10.0.0.5:8080; \"\" = off",
        |c, k, v| c.crowdsec_lapi_url = lapi_url(k, v)?),
    key!(Extension, "CROWDSEC_ENFORCE", "1",
        "1 = stream the Local API's decisions and ban their addresses and ranges (a bouncer)",
        |c, k, v| c.crowdsec_enforce = flag(k, v)?),
    key!(Extension, "CROWDSEC_REPORT", "1",
        "1 = send each scan ban to the Local API as an alert with its decision (a machine)",
        |c, k, v| c.crowdsec_report = flag(k, v)?),
    key!(Extension, "CROWDSEC_BOUNCER_KEY", "",
        "the key `cscli bouncers add NAME` printed (keep the file private; CROWDSEC_BOUNCER_KEY_FILE is better)",
        |c, k, v| c.crowdsec_bouncer_key = secret(k, v)?),
    key!(Extension, "CROWDSEC_BOUNCER_KEY_FILE", "",
        "a file holding the bouncer key; refused when group or others may read it",
        |c, k, v| c.crowdsec_bouncer_key_file = optional_absolute_path(k, v)?),
    key!(Extension, "CROWDSEC_MACHINE_ID", "",
        "the machine name `cscli machines add NAME` registered",
        |c, k, v| c.crowdsec_machine_id = machine_id(k, v)?),
    key!(Extension, "CROWDSEC_MACHINE_PASSWORD", "",
        "that machine's password (keep the file private; CROWDSEC_CREDENTIALS_FILE is better)",
        |c, k, v| c.crowdsec_machine_password = secret(k, v)?),
    key!(Extension, "CROWDSEC_CREDENTIALS_FILE", "",
        "the file `cscli machines add NAME -f FILE` wrote (login and password); refused when group or others may read it",
        |c, k, v| c.crowdsec_credentials_file = optional_absolute_path(k, v)?),
    key!(Extension, "CROWDSEC_ORIGINS", "",
        "enforce only decisions of these origins (comma-separated, e.g. cscli,crowdsec,portsentry,CAPI,lists); \"\" = all",
        |c, k, v| c.crowdsec_origins = words(k, v)?),
    key!(Extension, "CROWDSEC_SCENARIOS_EXCLUDE", "",
        "decisions whose scenario contains one of these comma-separated words are not enforced",
        |c, k, v| c.crowdsec_scenarios_exclude = words(k, v)?),
    key!(Extension, "CROWDSEC_KILL_COMMANDS", "0",
        "1 = also run KILL_* (and UNKILL_* when it ends) for the ban of each address a Local API decision bans",
        |c, k, v| c.crowdsec_kill_commands = flag(k, v)?),
    key!(Extension, "CROWDSEC_INTERVAL", "500ms",
        "how often the Local API's decision stream is asked for what changed; not 0",
        |c, k, v| c.crowdsec_interval = nonzero_duration(k, v)?),
];

/// Sets every key that has a default to it.
pub(super) fn apply_defaults(config: &mut Config) {
    for key in KEYS {
        if let Some(text) = key.default {
            key.set(config, text)
                .unwrap_or_else(|e| panic!("the default of {}: {e}", key.name));
        }
    }
}

/// The known key named `name`, or an error with the known keys or a suggestion.
pub(super) fn known_key(name: &str) -> Result<&'static Key, String> {
    if let Some(k) = KEYS.iter().find(|k| k.name == name) {
        return Ok(k);
    }
    let upper = name.to_ascii_uppercase();
    let suggestion = suggest(&upper)
        .map(|k| format!("; did you mean {k}?"))
        .unwrap_or_default();
    if !name
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "key \"{}\" may only contain A-Z, 0-9 and _ (keys are upper case){suggestion}",
            shorten(name)
        ));
    }
    if suggestion.is_empty() {
        let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        Err(format!(
            "unknown key {name}; the known keys are {}",
            names.join(", ")
        ))
    } else {
        Err(format!("unknown key {name}{suggestion}"))
    }
}

/// The known key closest to `name`, if it is close enough to be a typo.
fn suggest(name: &str) -> Option<&'static str> {
    let (best, distance) = KEYS
        .iter()
        .map(|k| (k.name, edit_distance(name, k.name)))
        .min_by_key(|(_, d)| *d)?;
    let limit = if name.len() >= 10 { 3 } else { 2 };
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

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, path::Path, time::Duration};

    use super::*;
    use crate::config::{
        AttachMode, BlockMode,
        tests::{ok, ports},
    };

    #[test]
    fn names_are_unique_keys_in_order() {
        let mut seen = HashSet::new();
        for k in KEYS {
            assert!(seen.insert(k.name), "{} is declared twice", k.name);
            assert!(
                !k.name.is_empty()
                    && k.name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "{} is not a valid key name",
                k.name
            );
        }
        assert_eq!(seen.len(), 68);
        // PortSentry 1.2's keys come first (the order of the known keys in an error).
        let first_extension = KEYS
            .iter()
            .position(|k| k.section == Section::Extension)
            .unwrap();
        assert_eq!(first_extension, 18);
        assert!(
            KEYS[first_extension..]
                .iter()
                .all(|k| k.section == Section::Extension)
        );
    }

    #[test]
    fn every_key_has_a_doc_line() {
        for k in KEYS {
            assert!(!k.doc.trim().is_empty(), "{} has no doc line", k.name);
            assert!(!k.doc.contains('\n'), "{}: the doc is one line", k.name);
            assert!(!k.doc.ends_with('.'), "{}: the doc is a phrase", k.name);
        }
    }

    #[test]
    fn every_default_parses_to_the_default() {
        let defaults = Config::default();
        for k in KEYS {
            let Some(text) = k.default else {
                continue;
            };
            let c = ok(&format!("{}=\"{text}\"", k.name));
            assert_eq!(c.line_of(k.name), 1);
            assert_eq!(
                Config {
                    source: None,
                    lines: Default::default(),
                    ..c
                },
                defaults,
                "{}=\"{text}\" is not the default",
                k.name
            );
        }
        // The keys without a default are the port lists, which are not set until a file
        // sets them (an empty list is set).
        let unset: Vec<&str> = KEYS
            .iter()
            .filter(|k| k.default.is_none())
            .map(|k| k.name)
            .collect();
        assert_eq!(unset, ["TCP_PORTS", "UDP_PORTS"]);
        assert_eq!((defaults.tcp_ports, defaults.udp_ports), (None, None));
    }

    #[test]
    fn the_table_matches_the_docs() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let docs = std::fs::read_to_string(&path).unwrap();
        let (portsentry, extensions) = docs.split_once("\n## Extensions\n").unwrap();
        for k in KEYS {
            let section = match k.section {
                Section::PortSentry => portsentry,
                Section::Extension => extensions,
            };
            let row = format!("| `{}` |", k.name);
            let line = section
                .lines()
                .find(|l| l.starts_with(&row))
                .unwrap_or_else(|| {
                    panic!("{} is not in its section of {}", k.name, path.display())
                });
            let default = line
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .unwrap()
                .trim();
            match k.default {
                Some("") | None => assert!(!default.starts_with('`'), "{}: {default}", k.name),
                Some(text) => assert!(
                    default.starts_with(&format!("`{text}`")),
                    "{}: the docs say {default}, the table {text}",
                    k.name
                ),
            }
        }
        let rows = docs.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, KEYS.len(), "the docs list a key the table has not");
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
        assert_eq!(c.escalate_after, 0, "escalation is off");
        assert_eq!(c.escalate_window, Duration::from_secs(600));
        assert_eq!((c.escalate_prefix_v4, c.escalate_prefix_v6), (24, 48));
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
}
