//! Unit tests of the plan, its order for every combination of keys, and the steps run
//! for real.

use super::*;
use crate::{
    config::{self, Mode},
    fsutil::{append_line, lines, remove_line},
    kinds::Protocol,
};
use shell::run_shell;
use std::{net::Ipv4Addr, path::Path, time::Duration};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn target() -> Target {
    Target {
        ip: V4,
        port: 1,
        mode: ModeToken::Atcp.as_str(),
    }
}

#[test]
fn substitute_tokens() {
    let t = target();
    assert_eq!(
        substitute("/sbin/route add -host $TARGET$ reject", &t),
        "/sbin/route add -host 192.0.2.7 reject"
    );
    assert_eq!(
        substitute("x $TARGET$ $PORT$ $MODE$ y", &t),
        "x 192.0.2.7 1 atcp y"
    );
    // Every occurrence, adjacent ones too.
    assert_eq!(
        substitute("$TARGET$$TARGET$ $PORT$/$PORT$ $MODE$$MODE$", &t),
        "192.0.2.7192.0.2.7 1/1 atcpatcp"
    );
    // Nothing else: unclosed, lower case, other names and a lone $ stay.
    assert_eq!(
        substitute("$TARGET $target$ $HOST$ $ $$ $PORT", &t),
        "$TARGET $target$ $HOST$ $ $$ $PORT"
    );
    assert_eq!(substitute("", &t), "");
    assert_eq!(substitute("no tokens", &t), "no tokens");
    // Overlapping tokens: $TARGET$ first, as PortSentry 1.2's SubstString order.
    assert_eq!(substitute("$PORT$TARGET$", &t), "$PORT192.0.2.7");
    assert_eq!(substitute("$TARGET$PORT$", &t), "192.0.2.7PORT$");
    // Shell metacharacters in the template are the administrator's; values are ours.
    assert_eq!(
        substitute("echo \"$TARGET$\" | logger -t $MODE$", &t),
        "echo \"192.0.2.7\" | logger -t atcp"
    );
    let t6 = Target {
        ip: "2001:db8:0:0:0:0:0:7".parse().unwrap(),
        port: 65535,
        mode: ModeToken::Sudp.as_str(),
    };
    assert_eq!(
        substitute(
            "ip6tables -I INPUT -s $TARGET$ -j DROP # $PORT$ $MODE$",
            &t6
        ),
        "ip6tables -I INPUT -s 2001:db8::7 -j DROP # 65535 sudp"
    );
    let t0 = Target {
        ip: "::".parse().unwrap(),
        port: 0,
        mode: Mode::Stealth.token(Protocol::Tcp).unwrap().as_str(),
    };
    assert_eq!(substitute("$TARGET$ $PORT$ $MODE$", &t0), ":: 0 stcp");
}

/// The config for one combination; `keys` bit 0 = KILL_HOSTS_DENY, 1 = KILL_ROUTE,
/// 2 = KILL_RUN_CMD.
fn combo(first: bool, keys: u8, deny: &str, route: &str, run: &str) -> Config {
    Config {
        kill_run_cmd_first: first,
        kill_hosts_deny: (keys & 1 != 0).then(|| deny.to_owned()),
        kill_route: (keys & 2 != 0).then(|| route.to_owned()),
        kill_run_cmd: (keys & 4 != 0).then(|| run.to_owned()),
        ..Config::default()
    }
}

/// The expected order, written as README.md ("What happens to a scanner") states it: 1.2's order with the XDP
/// ban taking KILL_ROUTE's place at the head of the blocking steps.
fn expected_order(block: BlockMode, first: bool, keys: u8) -> Vec<&'static str> {
    let set = |name: &str| match name {
        "hostsdeny" => keys & 1 != 0,
        "route" => keys & 2 != 0,
        "runcmd" => keys & 4 != 0,
        _ => true,
    };
    let order: &[&'static str] = match (block, first) {
        (BlockMode::ReportOnly, _) => &[],
        (BlockMode::RunCmdOnly, _) => &["runcmd"],
        (BlockMode::Block, false) => &["xdp", "hostsdeny", "route", "runcmd"],
        (BlockMode::Block, true) => &["runcmd", "xdp", "hostsdeny", "route"],
    };
    order.iter().copied().filter(|n| set(n)).collect()
}

const BLOCKS: [BlockMode; 3] = [
    BlockMode::ReportOnly,
    BlockMode::Block,
    BlockMode::RunCmdOnly,
];

#[test]
fn plan_every_combination() {
    let t = target();
    let mut seen = 0;
    for block in BLOCKS {
        for first in [false, true] {
            for keys in 0..8u8 {
                let cfg = combo(
                    first,
                    keys,
                    "ALL: $TARGET$ : DENY",
                    "/sbin/route add -host $TARGET$ reject",
                    "/usr/local/bin/alert $TARGET$ $PORT$ $MODE$",
                );
                let steps = plan(&cfg, block, &t);
                let names: Vec<&str> = steps
                    .iter()
                    .map(|s| match s {
                        Step::XdpBan => "xdp",
                        Step::HostsDeny(l) => {
                            assert_eq!(l, "ALL: 192.0.2.7 : DENY");
                            "hostsdeny"
                        }
                        Step::Route(c) => {
                            assert_eq!(c, "/sbin/route add -host 192.0.2.7 reject");
                            "route"
                        }
                        Step::RunCmd(c) => {
                            assert_eq!(c, "/usr/local/bin/alert 192.0.2.7 1 atcp");
                            "runcmd"
                        }
                        Step::HostsDenyRemove(_) | Step::EarlierHostsDenyRemove { .. } => {
                            panic!("undo step in a plan")
                        }
                    })
                    .collect();
                assert_eq!(
                    names,
                    expected_order(block, first, keys),
                    "BLOCK={} KILL_RUN_CMD_FIRST={} keys={keys:03b}",
                    block.as_number(),
                    first as u8
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 48);

    // Spot checks written out in full.
    let full = combo(false, 7, "ALL: $TARGET$", "r $TARGET$", "c $PORT$");
    assert_eq!(
        plan(&full, BlockMode::Block, &t),
        [
            Step::XdpBan,
            Step::HostsDeny("ALL: 192.0.2.7".into()),
            Step::Route("r 192.0.2.7".into()),
            Step::RunCmd("c 1".into()),
        ]
    );
    let first = Config {
        kill_run_cmd_first: true,
        ..full.clone()
    };
    assert_eq!(
        plan(&first, BlockMode::Block, &t),
        [
            Step::RunCmd("c 1".into()),
            Step::XdpBan,
            Step::HostsDeny("ALL: 192.0.2.7".into()),
            Step::Route("r 192.0.2.7".into()),
        ]
    );
    assert_eq!(
        plan(&full, BlockMode::RunCmdOnly, &t),
        [Step::RunCmd("c 1".into())]
    );
    assert_eq!(plan(&full, BlockMode::ReportOnly, &t), []);
    // With nothing configured, BLOCK=1 is the XDP ban alone.
    assert_eq!(
        plan(&Config::default(), BlockMode::Block, &t),
        [Step::XdpBan]
    );
}

#[test]
fn plan_from_a_parsed_config() {
    let text = "BLOCK_TCP=\"1\"\nBLOCK_UDP=\"2\"\nKILL_RUN_CMD_FIRST=\"1\"\n\
                KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n\
                KILL_ROUTE=\"/sbin/iptables -I INPUT -s $TARGET$ -j DROP\"\n\
                KILL_RUN_CMD=\"/bin/echo $MODE$ $TARGET$:$PORT$\"\n";
    let cfg = config::parse(text, Path::new("/t/portsentry.conf")).unwrap();
    let udp = Target {
        ip: "2001:db8::7".parse().unwrap(),
        port: 53,
        mode: cfg.udp_mode.token(Protocol::Udp).unwrap().as_str(),
    };
    assert_eq!(
        plan(&cfg, cfg.block_udp, &udp),
        [Step::RunCmd("/bin/echo audp 2001:db8::7:53".into())]
    );
    let tcp = Target {
        mode: cfg.tcp_mode.token(Protocol::Tcp).unwrap().as_str(),
        ..target()
    };
    assert_eq!(
        plan(&cfg, cfg.block_tcp, &tcp),
        [
            Step::RunCmd("/bin/echo atcp 192.0.2.7:1".into()),
            Step::XdpBan,
            Step::HostsDeny("ALL: 192.0.2.7 : DENY".into()),
            Step::Route("/sbin/iptables -I INPUT -s 192.0.2.7 -j DROP".into()),
        ]
    );
}

/// tcp_wrappers reads an IPv6 address in a pattern only in brackets: the hosts.deny line
/// has them (the other commands the bare address), and its undo also removes the line a
/// release before wrote without them.
#[test]
fn an_ipv6_host_in_hosts_deny() {
    let t = Target {
        ip: "2001:db8::7".parse().unwrap(),
        port: 22,
        mode: ModeToken::Stcp.as_str(),
    };
    let cfg = Config {
        kill_hosts_deny: Some("ALL: $TARGET$ : DENY".into()),
        kill_route: Some("ip6tables -I INPUT -s $TARGET$ -j DROP".into()),
        ..Config::default()
    };
    assert_eq!(
        plan(&cfg, BlockMode::Block, &t),
        [
            Step::XdpBan,
            Step::HostsDeny("ALL: [2001:db8::7] : DENY".into()),
            Step::Route("ip6tables -I INPUT -s 2001:db8::7 -j DROP".into()),
        ]
    );
    assert_eq!(
        undo_plan(&cfg, &[], &t),
        [
            Step::HostsDenyRemove("ALL: [2001:db8::7] : DENY".into()),
            Step::EarlierHostsDenyRemove {
                file: cfg.hosts_deny_file.clone(),
                line: "ALL: 2001:db8::7 : DENY".into()
            },
        ]
    );
    // An IPv4 host's line is as before, and removed once.
    let t4 = target();
    assert_eq!(
        undo_plan(&cfg, &[], &t4),
        [Step::HostsDenyRemove("ALL: 192.0.2.7 : DENY".into())]
    );
}

#[test]
fn undo_steps() {
    let t = target();
    assert_eq!(undo_plan(&Config::default(), &[], &t), []);
    let cfg = Config {
        kill_hosts_deny: Some("ALL: $TARGET$ : DENY".into()),
        unkill_route: Some("/sbin/route del -host $TARGET$ reject".into()),
        unkill_run_cmd: Some("/bin/echo unbanned $TARGET$ $PORT$ $MODE$".into()),
        ..Config::default()
    };
    assert!(cfg.unkill_hosts_deny, "UNKILL_HOSTS_DENY defaults to on");
    assert_eq!(
        undo_plan(&cfg, &[], &t),
        [
            Step::Route("/sbin/route del -host 192.0.2.7 reject".into()),
            Step::HostsDenyRemove("ALL: 192.0.2.7 : DENY".into()),
            Step::RunCmd("/bin/echo unbanned 192.0.2.7 1 atcp".into()),
        ]
    );
    let off = Config {
        unkill_hosts_deny: false,
        ..cfg.clone()
    };
    assert_eq!(
        undo_plan(&off, &[], &t),
        [
            Step::Route("/sbin/route del -host 192.0.2.7 reject".into()),
            Step::RunCmd("/bin/echo unbanned 192.0.2.7 1 atcp".into()),
        ]
    );
    // UNKILL_HOSTS_DENY without KILL_HOSTS_DENY has nothing to remove.
    let no_deny = Config {
        kill_hosts_deny: None,
        unkill_route: None,
        ..cfg.clone()
    };
    assert_eq!(
        undo_plan(&no_deny, &[], &t),
        [Step::RunCmd("/bin/echo unbanned 192.0.2.7 1 atcp".into())]
    );
    // The lines of earlier templates, newest first, each once, not the one in force's.
    let earlier = |file: &str, template: &str| deny_templates::Template {
        file: file.into(),
        template: Some(template.into()),
        since_ms: 0,
        until_ms: None,
    };
    let earlier = [
        earlier("/etc/hosts.deny", "sshd: $TARGET$"),
        earlier("/etc/hosts.deny", "ALL: $TARGET$ : DENY"),
        earlier("/etc/old.deny", "ALL: $TARGET$ : DENY"),
        earlier("/etc/hosts.deny", "ALL: $TARGET$ : DENY # $MODE$"),
    ];
    let deny = Config {
        unkill_route: None,
        unkill_run_cmd: None,
        ..cfg.clone()
    };
    let removal = |file: &str, line: &str| Step::EarlierHostsDenyRemove {
        file: file.into(),
        line: line.into(),
    };
    assert_eq!(
        undo_plan(&deny, &earlier, &t),
        [
            Step::HostsDenyRemove("ALL: 192.0.2.7 : DENY".into()),
            removal("/etc/hosts.deny", "ALL: 192.0.2.7 : DENY # atcp"),
            removal("/etc/old.deny", "ALL: 192.0.2.7 : DENY"),
            removal("/etc/hosts.deny", "sshd: 192.0.2.7"),
        ]
    );
    // With KILL_HOSTS_DENY gone from the configuration, the earlier lines still go.
    let gone = Config {
        kill_hosts_deny: None,
        ..deny.clone()
    };
    assert_eq!(undo_plan(&gone, &earlier, &t).len(), 4);
    let off = Config {
        unkill_hosts_deny: false,
        ..deny
    };
    assert_eq!(undo_plan(&off, &earlier, &t), []);
}

/// A tiny executor, as the daemon's: every step leaves a line in `log`.
async fn execute(steps: &[Step], log: &Path) {
    for step in steps {
        match step {
            Step::XdpBan => append_line(log, "xdp").unwrap(),
            Step::HostsDeny(line) => append_line(log, line).unwrap(),
            Step::HostsDenyRemove(line) | Step::EarlierHostsDenyRemove { line, .. } => {
                remove_line(log, line).unwrap();
            }
            Step::Route(cmd) | Step::RunCmd(cmd) => {
                let (outcome, output) = run_shell(cmd, Duration::from_secs(10)).await;
                assert!(outcome.ok(), "{cmd}: {outcome}: {output}");
            }
        }
    }
}

/// Real commands, run in the planned order, write their words to a file: the file's
/// lines are in the configured order for every combination.
#[tokio::test]
async fn planned_steps_run_in_order() {
    let dir = crate::fsutil::temp_dir("actions-order");
    let log = dir.join("log");
    let quoted = format!("'{}'", log.display());
    let t = target();
    for block in BLOCKS {
        for first in [false, true] {
            for keys in 0..8u8 {
                let _ = std::fs::remove_file(&log);
                let cfg = combo(
                    first,
                    keys,
                    "hostsdeny $TARGET$",
                    &format!("echo route $TARGET$ >> {quoted}"),
                    &format!("echo runcmd $TARGET$ $PORT$ $MODE$ >> {quoted}"),
                );
                execute(&plan(&cfg, block, &t), &log).await;
                let expected: Vec<String> = expected_order(block, first, keys)
                    .into_iter()
                    .map(|name| match name {
                        "xdp" => "xdp".to_owned(),
                        "hostsdeny" => "hostsdeny 192.0.2.7".to_owned(),
                        "route" => "route 192.0.2.7".to_owned(),
                        "runcmd" => "runcmd 192.0.2.7 1 atcp".to_owned(),
                        _ => unreachable!(),
                    })
                    .collect();
                assert_eq!(
                    lines(&log),
                    expected,
                    "BLOCK={} KILL_RUN_CMD_FIRST={} keys={keys:03b}",
                    block.as_number(),
                    first as u8
                );
            }
        }
    }
    // And the undo of a full ban, on the same file.
    let cfg = Config {
        kill_hosts_deny: Some("hostsdeny $TARGET$".into()),
        unkill_route: Some(format!("echo unroute $TARGET$ >> {quoted}")),
        unkill_run_cmd: Some(format!("echo unrun $TARGET$ >> {quoted}")),
        ..Config::default()
    };
    std::fs::write(&log, "before\nhostsdeny 192.0.2.7\nafter\n").unwrap();
    execute(&undo_plan(&cfg, &[], &t), &log).await;
    assert_eq!(
        lines(&log),
        ["before", "after", "unroute 192.0.2.7", "unrun 192.0.2.7"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A response that stopped short has its ban's undo steps undo what it ran alone: each
/// undo step by the kind of kill step it undoes.
#[test]
fn the_undo_steps_of_a_response_cut_short_are_those_of_the_steps_that_ran() {
    let t = Target::scan(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 23, ModeToken::Atcp);
    let cfg = Config {
        kill_route: Some("route $TARGET$".into()),
        kill_hosts_deny: Some("ALL: $TARGET$".into()),
        kill_run_cmd: Some("run $TARGET$".into()),
        unkill_route: Some("unroute $TARGET$".into()),
        unkill_run_cmd: Some("unrun $TARGET$".into()),
        ..Config::default()
    };
    let undo = undo_plan(&cfg, &[], &t);
    let kept = |ran: Ran| -> Vec<Step> { undo.iter().filter(|s| ran.undoes(s)).cloned().collect() };
    assert!(kept(Ran::default()).is_empty(), "none ran");
    let mut ran = Ran::default();
    for step in plan(&cfg, BlockMode::Block, &t) {
        if matches!(step, Step::RunCmd(_)) {
            break;
        }
        ran.add(&step);
    }
    let left = kept(ran);
    assert!(
        left.iter()
            .any(|s| matches!(s, Step::Route(c) if c == "unroute 192.0.2.7"))
            && left.iter().any(|s| matches!(s, Step::HostsDenyRemove(_)))
            && !left.iter().any(|s| matches!(s, Step::RunCmd(_))),
        "the route and the line ran, not the command: {left:?}"
    );
    let mut all = Ran::default();
    for step in plan(&cfg, BlockMode::Block, &t) {
        all.add(&step);
    }
    assert_eq!(kept(all), undo, "all ran");
}
