//! `portsentry check-config`: load the configuration as `run` would and print the
//! effective settings (watched ports, ignore list, the actions in order).

use std::fmt::Write as _;

use anyhow::Result;

use super::ConfigArgs;
use crate::{
    actions::{self, Step, Target},
    bans::escalate,
    config::{
        BlockMode, Mode,
        effective::{self, Effective},
        localaddrs::Kind,
    },
    kinds::Protocol,
};

/// The `check-config` report, or the error that names the file and line.
pub fn run(args: &ConfigArgs) -> Result<String> {
    Ok(render(&effective::load(args)?))
}

/// The CrowdSec lines: the Local API, each side and where its secret comes from (never the
/// secret itself).
fn crowdsec(eff: &Effective, s: &mut String) {
    let c = &eff.config;
    let Some(cs) = &eff.crowdsec else {
        let _ = writeln!(s, "crowdsec:      off (CROWDSEC_LAPI_URL=\"\")");
        return;
    };
    let _ = writeln!(s, "crowdsec:      Local API {}", cs.url);
    let secret_from = |file: &Option<std::path::PathBuf>, key: &str| match file {
        Some(p) => format!("{key} {}", p.display()),
        None => format!("{key} (set, not shown)"),
    };
    let _ = match &cs.bouncer_key {
        Some(_) => writeln!(
            s,
            "  enforce:     its Ip and Range ban decisions (IPv4, IPv6), polled every {}; key \
             from {}; origins: {}; scenarios excluded: {}; kill commands: {}",
            humantime::format_duration(cs.interval),
            secret_from(
                &c.crowdsec_bouncer_key_file,
                if c.crowdsec_bouncer_key_file.is_some() {
                    "CROWDSEC_BOUNCER_KEY_FILE"
                } else {
                    "CROWDSEC_BOUNCER_KEY"
                }
            ),
            if cs.origins.is_empty() {
                "all".to_owned()
            } else {
                cs.origins.join(",")
            },
            if cs.scenarios_exclude.is_empty() {
                "none".to_owned()
            } else {
                cs.scenarios_exclude.join(",")
            },
            if cs.kill_commands {
                "run for each address banned (CROWDSEC_KILL_COMMANDS=1)"
            } else {
                "not run (CROWDSEC_KILL_COMMANDS=0)"
            }
        ),
        None => writeln!(s, "  enforce:     off (CROWDSEC_ENFORCE=0)"),
    };
    let _ = match &cs.machine {
        Some((login, _)) => writeln!(
            s,
            "  report:      each scan ban as an alert, machine {login}, password from {}",
            secret_from(
                &c.crowdsec_credentials_file,
                if c.crowdsec_credentials_file.is_some() {
                    "CROWDSEC_CREDENTIALS_FILE"
                } else {
                    "CROWDSEC_MACHINE_PASSWORD"
                }
            )
        ),
        None => writeln!(s, "  report:      off (CROWDSEC_REPORT=0)"),
    };
}

/// The `check-config` report of the effective settings.
fn render(eff: &Effective) -> String {
    let c = &eff.config;
    let mut s = String::new();
    let source = c.source.as_ref().map_or(
        "built-in defaults (no configuration file)".to_owned(),
        |p| p.display().to_string(),
    );
    let _ = writeln!(s, "configuration: {source}");
    let ifaces = if eff.interfaces.is_empty() {
        "none (give -i IFACE to run)".to_owned()
    } else {
        eff.interfaces.join(", ")
    };
    let _ = writeln!(s, "interfaces:    {ifaces} (XDP mode {:?})", eff.xdp_mode);
    if let Some(path) = &eff.modes_file {
        let _ = writeln!(
            s,
            "modes from:    {} (PortSentry 1.2's start-up file)",
            path.display()
        );
    }
    for (proto, mode, ports) in [
        ("TCP", c.tcp_mode, &eff.policy.tcp),
        ("UDP", c.udp_mode, &eff.policy.udp),
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
    if let Some(r) = &eff.policy.ephemeral {
        let _ = writeln!(s, "ephemeral:     {}-{}", r.start(), r.end());
    }
    for w in &eff.warnings {
        let _ = writeln!(s, "warning:       {w}");
    }
    let window = if c.scan_window.is_zero() {
        String::new()
    } else {
        format!(
            " within SCAN_WINDOW={}",
            humantime::format_duration(c.scan_window)
        )
    };
    let _ = match c.detection_walk() {
        None => writeln!(
            s,
            "trigger:       SCAN_TRIGGER={} (acts on hit {}){window}",
            c.scan_trigger,
            c.scan_trigger.max(1),
        ),
        Some(w) => writeln!(
            s,
            "trigger:       Threshold Random Walk (SCAN_DETECTION=trw, TRW_THETA0={}, \
             TRW_THETA1={}, TRW_ALPHA={}, TRW_BETA={}): acts at {} failed first contacts in \
             a row{window}; new connections to listeners count against it, down to the \
             benign bound (SCAN_TRIGGER not used; the ACK class and IP protocols keep theirs)",
            c.trw_theta0,
            c.trw_theta1,
            c.trw_alpha,
            c.trw_beta,
            w.failures_to_decide(),
        ),
    };
    let ban_time = if c.ban_time.is_zero() {
        "permanent".to_owned()
    } else {
        humantime::format_duration(c.ban_time).to_string()
    };
    let _ = writeln!(s, "ban time:      {ban_time}");
    if c.source_prefix_v6 >= 128 {
        let _ = writeln!(
            s,
            "sources:       each address on its own (SOURCE_PREFIX_V6=128)"
        );
    } else {
        let _ = writeln!(
            s,
            "sources:       IPv4 by address; IPv6 by /{} network (SOURCE_PREFIX_V6)",
            c.source_prefix_v6
        );
        let singles = eff.single_source_nets();
        if !singles.is_empty() {
            let list: Vec<String> = singles.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                s,
                "               by address in {} (they hold an ignored address or this host's)",
                list.join(", ")
            );
        }
    }
    let _ = match escalate::Settings::new(c) {
        None => writeln!(s, "escalation:    off (ESCALATE_AFTER=0)"),
        Some(e) => writeln!(
            s,
            "escalation:    {} banned hosts of one IPv4 /{} or IPv6 /{}{} make one ban of the \
             network (XDP only, if the ban guard allows it)",
            e.after,
            e.prefix_v4,
            e.prefix_v6,
            e.describe_window()
        ),
    };
    let _ = writeln!(
        s,
        "evasive shapes: {} (BLOCK_EVASIVE_PACKETS): tiny first fragments, IPv6 header chains \
         of more than 8",
        if c.block_evasive_packets {
            "dropped"
        } else {
            "counted and passed"
        }
    );
    let _ = match c.ack_scan_ports {
        0 => writeln!(s, "ACK class:     not watched (ACK_SCAN_PORTS=0)"),
        n => writeln!(
            s,
            "ACK class:     segments of no connection (nmap -sA, -sW, -sM) acted on at {n} \
             distinct ports (ACK_SCAN_PORTS)"
        ),
    };
    let _ = match c.proto_scan_protocols {
        0 => writeln!(s, "IP protocols:  not watched (PROTO_SCAN_PROTOCOLS=0)"),
        n => writeln!(
            s,
            "IP protocols:  datagrams of protocols nothing here serves (nmap -sO) acted on at \
             {n} distinct protocols (PROTO_SCAN_PROTOCOLS), under the TCP settings"
        ),
    };
    crowdsec(eff, &mut s);
    let _ = writeln!(s, "ignore list:");
    match &c.ignore_file {
        Some(p) => {
            let _ = writeln!(
                s,
                "  from {}: {} entries",
                p.display(),
                eff.ignore_file.len()
            );
        }
        None => {
            let _ = writeln!(s, "  no IGNORE_FILE");
        }
    }
    for n in eff.ignore_file.nets() {
        let _ = writeln!(s, "    {n}");
    }
    let _ = writeln!(
        s,
        "  always (loopback, this host's addresses and the gateways of its routes):"
    );
    // Each network once (one listed for two reasons is there twice, sorted together).
    for same in eff.always_ignored.chunk_by(|a, b| a.net == b.net) {
        let gateway = same.iter().any(|a| a.kind == Kind::Gateway);
        let _ = writeln!(
            s,
            "    {}{}",
            same[0].net,
            if gateway { " (gateway)" } else { "" }
        );
    }
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let block = eff.block_mode(proto);
        let _ = writeln!(
            s,
            "actions on a {proto} scan (BLOCK_{proto}={}):",
            block.as_number()
        );
        let Some(mode) = eff.mode_token(proto) else {
            let _ = writeln!(s, "  none: {proto} is not watched");
            continue;
        };
        let target = Target::scan("192.0.2.1".parse().expect("valid"), 1, mode);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    fn report(config: Config) -> String {
        render(&effective::from_config(config).unwrap())
    }

    #[test]
    fn escalation_is_shown() {
        let off = report(Config::default());
        assert!(
            off.contains("escalation:    off (ESCALATE_AFTER=0)\n"),
            "{off}"
        );
        let on = report(Config {
            escalate_after: 5,
            escalate_window: Duration::from_secs(90),
            escalate_prefix_v6: 56,
            ..Config::default()
        });
        assert!(
            on.contains(
                "escalation:    5 banned hosts of one IPv4 /24 or IPv6 /56 within 1m 30s make \
                 one ban of the network (XDP only, if the ban guard allows it)\n"
            ),
            "{on}"
        );
    }

    #[test]
    fn the_detection_mode_is_shown() {
        let trigger = report(Config::default());
        assert!(
            trigger.contains("trigger:       SCAN_TRIGGER=0 (acts on hit 1)\n"),
            "{trigger}"
        );
        let trw = report(Config {
            scan_detection: crate::config::detection::Detection::Trw,
            ..Config::default()
        });
        assert!(
            trw.contains(
                "trigger:       Threshold Random Walk (SCAN_DETECTION=trw, TRW_THETA0=0.8, \
                 TRW_THETA1=0.2, TRW_ALPHA=0.01, TRW_BETA=0.99): acts at 4 failed first \
                 contacts in a row;"
            ),
            "{trw}"
        );
    }
}
