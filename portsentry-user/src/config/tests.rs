use super::*;
use crate::kinds::{ModeToken, Protocol};

pub(super) const PATH: &str = "/etc/portsentry/portsentry.conf";

pub(super) fn ok(text: &str) -> Config {
    parse(text, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that `text` fails on `line` with a message containing `fragment`.
#[track_caller]
pub(super) fn bad(text: &str, line: usize, fragment: &str) -> ConfigError {
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

/// The set of `list`'s ports.
pub(super) fn ports(list: &[u16]) -> PortSet {
    let mut s = PortSet::new();
    for p in list {
        s.insert(*p);
    }
    s
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
    let c = ok(include_str!("../../testdata/debian/portsentry.conf"));
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
SCAN_DETECTION="trw"
TRW_THETA0="0.9"
TRW_THETA1="0.25"
TRW_ALPHA="0.005"
TRW_BETA="0.95"
WATCH_EPHEMERAL_UDP="1"
VERIFY_SOURCES="1"
BLOCK_EVASIVE_PACKETS="0"
ACK_SCAN_PORTS="7"
PROTO_SCAN_PROTOCOLS="0"
STATE_DIR="/run/ps"
PIN_DIR="/sys/fs/bpf/ps2"
EVENTS_PER_SEC="10000000"
MAX_BANS_PER_SEC="0"
MAX_TRACKED_SOURCES="1024"
MAX_BANS="16"
BAN_MIN_PREFIX_V4="0"
BAN_MIN_PREFIX_V6="40"
SOURCE_PREFIX_V6="128"
ESCALATE_AFTER="5"
ESCALATE_WINDOW="1h"
ESCALATE_PREFIX_V4="16"
ESCALATE_PREFIX_V6="40"
METRICS_ADDRESS="[::1]:9100"
SYSLOG="0"
CROWDSEC_LAPI_URL="https://lapi.example:8443/"
CROWDSEC_ENFORCE="1"
CROWDSEC_REPORT="1"
CROWDSEC_BOUNCER_KEY="k3y"
CROWDSEC_BOUNCER_KEY_FILE="/etc/portsentry/bouncer.key"
CROWDSEC_MACHINE_ID="host-a"
CROWDSEC_MACHINE_PASSWORD="pw"
CROWDSEC_CREDENTIALS_FILE="/etc/portsentry/crowdsec.yaml"
CROWDSEC_ORIGINS="cscli,portsentry"
CROWDSEC_SCENARIOS_EXCLUDE="http"
CROWDSEC_INTERVAL="2s"
CROWDSEC_KILL_COMMANDS="1"
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
    assert_eq!(c.scan_detection, super::detection::Detection::Trw);
    assert_eq!(
        [c.trw_theta0, c.trw_theta1, c.trw_alpha, c.trw_beta].map(|p| p.to_string()),
        ["0.9", "0.25", "0.005", "0.95"]
    );
    assert!(c.watch_ephemeral_udp);
    assert!(c.verify_sources);
    assert!(!c.block_evasive_packets);
    assert_eq!(c.ack_scan_ports, 7);
    assert_eq!(c.proto_scan_protocols, 0);
    assert_eq!(c.state_dir, Path::new("/run/ps"));
    assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/ps2"));
    assert_eq!(c.events_per_sec, 10_000_000);
    assert_eq!(c.max_bans_per_sec, 0);
    assert_eq!(c.max_tracked_sources, 1024);
    assert_eq!(c.max_bans, 16);
    assert_eq!((c.ban_min_prefix_v4, c.ban_min_prefix_v6), (0, 40));
    assert_eq!(c.source_prefix_v6, 128);
    assert_eq!(c.escalate_after, 5);
    assert_eq!(c.escalate_window, Duration::from_secs(3600));
    assert_eq!((c.escalate_prefix_v4, c.escalate_prefix_v6), (16, 40));
    assert_eq!(c.metrics_address, Some("[::1]:9100".parse().unwrap()));
    assert!(!c.syslog);
    assert_eq!(c.line_of("TCP_PORTS"), 2);
    assert_eq!(c.line_of("SYSLOG"), 57);
    assert_eq!(
        c.crowdsec_lapi_url.as_deref(),
        Some("https://lapi.example:8443")
    );
    assert!(c.crowdsec_enforce && c.crowdsec_report);
    assert_eq!(
        c.crowdsec_bouncer_key,
        Some(super::crowdsec::Secret::new("k3y"))
    );
    assert_eq!(
        c.crowdsec_bouncer_key_file.as_deref(),
        Some(Path::new("/etc/portsentry/bouncer.key"))
    );
    assert_eq!(c.crowdsec_machine_id.as_deref(), Some("host-a"));
    assert_eq!(
        c.crowdsec_machine_password,
        Some(super::crowdsec::Secret::new("pw"))
    );
    assert_eq!(
        c.crowdsec_credentials_file.as_deref(),
        Some(Path::new("/etc/portsentry/crowdsec.yaml"))
    );
    assert_eq!(c.crowdsec_origins, ["cscli", "portsentry"]);
    assert_eq!(c.crowdsec_scenarios_exclude, ["http"]);
    assert_eq!(c.crowdsec_interval, Duration::from_secs(2));
    assert!(c.crowdsec_kill_commands);
    assert_eq!(
        super::crowdsec::warnings(&c).len(),
        2,
        "both secrets given twice"
    );
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
    assert_eq!(Mode::Advanced.token(Protocol::Tcp), Some(ModeToken::Atcp));
    assert_eq!(Mode::Stealth.token(Protocol::Udp), Some(ModeToken::Sudp));
    assert_eq!(Mode::Off.token(Protocol::Tcp), None);
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
    // An embedded quoted argument may start with '#'.
    let c = ok(
        r##"KILL_ROUTE="iptables -I INPUT -s $TARGET$ -j DROP -m comment --comment "#portsentry"""##,
    );
    assert!(c.kill_route.unwrap().ends_with("\"#portsentry\""));
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
    // A comment holding a quote after the value: it would run into the value.
    bad(
        "\nKILL_ROUTE=\"/sbin/iptables -I INPUT -s $TARGET$ -j DROP\"  # was \"route add\"",
        2,
        "a quote, blanks and '#'",
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
    let c = ok("ADVANCED_PORTS_TCP=\"1\"\nADVANCED_PORTS_UDP=\"65536\"\nADVANCED_EXCLUDE_UDP=\"\"");
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
fn escalation() {
    let c = ok("ESCALATE_AFTER=\"3\"\nESCALATE_WINDOW=\"90s\"");
    assert_eq!(
        (c.escalate_after, c.escalate_window),
        (3, Duration::from_secs(90))
    );
    assert_eq!(ok("ESCALATE_WINDOW=\"0\"").escalate_window, Duration::ZERO);
    bad(
        "ESCALATE_AFTER=\"1\"",
        1,
        "ESCALATE_AFTER must be 0 (off) or at least 2, not 1",
    );
    bad(
        "ESCALATE_AFTER=\"-2\"",
        1,
        "ESCALATE_AFTER must be a whole number of at least 0",
    );
    bad(
        "ESCALATE_WINDOW=\"soon\"",
        1,
        "0 = every ban in force counts",
    );
    bad(
        "ESCALATE_PREFIX_V4=\"32\"",
        1,
        "ESCALATE_PREFIX_V4 must be a whole number from 0 to 31",
    );
    bad(
        "ESCALATE_PREFIX_V6=\"128\"",
        1,
        "ESCALATE_PREFIX_V6 must be a whole number from 0 to 127",
    );
    // Wider than the guard allows: named at the prefix's line, or at the guard's limit
    // when the file set only that.
    bad(
        "ESCALATE_AFTER=\"4\"\nESCALATE_PREFIX_V4=\"7\"",
        2,
        "ESCALATE_PREFIX_V4 (/7) is wider than BAN_MIN_PREFIX_V4 (/8), the widest ban the \
         ban guard allows",
    );
    bad(
        "ESCALATE_AFTER=\"4\"\nBAN_MIN_PREFIX_V6=\"56\"",
        2,
        "ESCALATE_PREFIX_V6 (/48) is wider than BAN_MIN_PREFIX_V6 (/56)",
    );
    // Off, the prefixes are not checked against the guard: a narrower guard alone loads.
    let c = ok("BAN_MIN_PREFIX_V4=\"28\"\nBAN_MIN_PREFIX_V6=\"64\"");
    assert_eq!(c.escalate_after, 0);
    ok("ESCALATE_AFTER=\"2\"\nESCALATE_PREFIX_V4=\"8\"\nESCALATE_PREFIX_V6=\"32\"");
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
    let dir = std::env::temp_dir().join(format!("portsentry-config-test-{}", std::process::id()));
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

#[test]
fn source_prefix_v6() {
    let parse = |text: &str| super::parse(text, Path::new("/etc/p.conf"));
    assert_eq!(parse("").unwrap().source_prefix_v6, 64);
    // Not set: the default /64 gives way to a longer BAN_MIN_PREFIX_V6.
    let c = parse("BAN_MIN_PREFIX_V6=\"96\"\n").unwrap();
    assert_eq!(c.source_prefix_v6, 96);
    assert_eq!(
        parse("SOURCE_PREFIX_V6=\"56\"\n").unwrap().source_prefix_v6,
        56
    );
    let e = parse("BAN_MIN_PREFIX_V6=\"48\"\nSOURCE_PREFIX_V6=\"40\"\n").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/etc/p.conf:2:") && msg.contains("SOURCE_PREFIX_V6 is 40"),
        "{msg}"
    );
    assert!(parse("SOURCE_PREFIX_V6=\"0\"\n").is_err());
    assert!(parse("SOURCE_PREFIX_V6=\"129\"\n").is_err());
}

/// A secret given in the configuration file is pointed out when group or others may read
/// the file (the key and credentials files are refused then); not once it is private.
#[test]
fn a_secret_in_a_readable_configuration_file_is_pointed_out() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portsentry.conf");
    std::fs::write(
        &path,
        "TCP_PORTS=\"1\"\nUDP_PORTS=\"1\"\n\
         CROWDSEC_LAPI_URL=\"http://127.0.0.1:8080\"\nCROWDSEC_REPORT=\"0\"\n\
         CROWDSEC_BOUNCER_KEY=\"k3y\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = super::load(&path).unwrap();
    let warnings = super::crowdsec::warnings(&c);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("CROWDSEC_BOUNCER_KEY (line 5)")
            && warnings[0].contains("mode 0644")
            && warnings[0].contains(&path.display().to_string()),
        "{}",
        warnings[0]
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(super::crowdsec::warnings(&c).is_empty());
}
