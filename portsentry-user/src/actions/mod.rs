//! What happens to a host that scanned: PortSentry's kill actions, planned and run.
//!
//! [`plan`] turns the configuration into the ordered [`Step`]s for one host, in PortSentry
//! 1.2's order (`DisposeTCP`/`DisposeUDP`), with our XDP ban standing in for the blocking;
//! [`undo_plan`] gives the steps that undo them when a ban ends. [`execute::run_step`]
//! runs a step: `KILL_HOSTS_DENY` through [`crate::fsutil::append_line`], the commands
//! through [`shell::run_shell`], which, unlike 1.2's `system()`, never blocks the packet
//! loop and kills a command that hangs. The XDP ban itself is the ban book's.
//!
//! Token substitution ([`substitute`]) is 1.2's `SubstString`, applied to `$TARGET$`, then
//! `$PORT$`, then `$MODE$`; we format every value ourselves, so nothing an attacker sends
//! reaches a shell.

pub mod execute;
pub mod shell;

use std::net::IpAddr;

use crate::{
    config::{BlockMode, Config},
    kinds::ModeToken,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Our XDP ban (done by the daemon itself, not here).
    XdpBan,
    /// Append this (already substituted) line to the hosts.deny file.
    HostsDeny(String),
    /// Run this (already substituted) KILL_ROUTE (or UNKILL_ROUTE) command with /bin/sh -c.
    Route(String),
    /// Run this (already substituted) KILL_RUN_CMD (or UNKILL_RUN_CMD) command with
    /// /bin/sh -c.
    RunCmd(String),
    /// Remove every line equal to this (already substituted) line from the hosts.deny file
    /// ([`remove_line`]): the undo of [`Step::HostsDeny`].
    HostsDenyRemove(String),
}

/// The values substituted into command templates. We format all of them ourselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// `$TARGET$`, formatted by `Display` (`192.0.2.7`, `2001:db8::7`).
    pub ip: IpAddr,
    /// `$PORT$`, in decimal.
    pub port: u16,
    /// `$MODE$`: `atcp`, `audp`, `stcp` or `sudp`.
    pub mode: ModeToken,
}

/// What kind of step ran, as the `kind` label of `portsentry_actions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    HostsDeny,
    Route,
    RunCmd,
    Unroute,
    HostsDenyRemove,
    UnrunCmd,
}

impl ActionKind {
    pub const ALL: [ActionKind; 6] = [
        ActionKind::HostsDeny,
        ActionKind::Route,
        ActionKind::RunCmd,
        ActionKind::Unroute,
        ActionKind::HostsDenyRemove,
        ActionKind::UnrunCmd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::HostsDeny => "hosts_deny",
            ActionKind::Route => "route",
            ActionKind::RunCmd => "run_cmd",
            ActionKind::Unroute => "unroute",
            ActionKind::HostsDenyRemove => "hosts_deny_remove",
            ActionKind::UnrunCmd => "unrun_cmd",
        }
    }

    /// A shell command (which can time out), rather than a hosts.deny edit.
    pub fn is_command(self) -> bool {
        !matches!(self, ActionKind::HostsDeny | ActionKind::HostsDenyRemove)
    }
}

/// Replaces every `$TARGET$`, `$PORT$` and `$MODE$` in `template` (all occurrences, nothing
/// else).
///
/// As PortSentry 1.2 does, the tokens are replaced one after the other: every `$TARGET$`
/// first, then `$PORT$`, then `$MODE$`. The values hold no `$`, so a replacement can never
/// form a new token; the order only matters for overlapping tokens such as `$PORT$TARGET$`,
/// where 1.2 replaces `$TARGET$`.
pub fn substitute(template: &str, t: &Target) -> String {
    template
        .replace("$TARGET$", &t.ip.to_string())
        .replace("$PORT$", &t.port.to_string())
        .replace("$MODE$", t.mode.as_str())
}

/// The ordered steps for one host, in PortSentry 1.2's order (README.md, "What happens
/// to a scanner"):
///
/// - `BLOCK=0` ([`BlockMode::ReportOnly`]): no steps.
/// - `BLOCK=2` ([`BlockMode::RunCmdOnly`]): `[RunCmd]` if `KILL_RUN_CMD` is set (else none).
/// - `BLOCK=1` ([`BlockMode::Block`]): with `KILL_RUN_CMD_FIRST=0`
///   `[XdpBan, HostsDeny, Route, RunCmd]`; with `KILL_RUN_CMD_FIRST=1`
///   `[RunCmd, XdpBan, HostsDeny, Route]`.
///
/// Each of `HostsDeny`/`Route`/`RunCmd` is there only when its `KILL_*` key is set. The XDP
/// ban is "the blocking": it heads the blocking steps, so with `KILL_RUN_CMD_FIRST=1` a
/// script still reaches the host before it is blocked.
pub fn plan(cfg: &Config, block: BlockMode, t: &Target) -> Vec<Step> {
    let run_cmd = cfg
        .kill_run_cmd
        .as_deref()
        .map(|c| Step::RunCmd(substitute(c, t)));
    match block {
        BlockMode::ReportOnly => Vec::new(),
        BlockMode::RunCmdOnly => run_cmd.into_iter().collect(),
        BlockMode::Block => {
            let mut steps = Vec::with_capacity(4);
            let (before, after) = if cfg.kill_run_cmd_first {
                (run_cmd, None)
            } else {
                (None, run_cmd)
            };
            steps.extend(before);
            steps.push(Step::XdpBan);
            if let Some(line) = &cfg.kill_hosts_deny {
                steps.push(Step::HostsDeny(substitute(line, t)));
            }
            if let Some(cmd) = &cfg.kill_route {
                steps.push(Step::Route(substitute(cmd, t)));
            }
            steps.extend(after);
            steps
        }
    }
}

/// The steps that undo a ban when it ends (expiry or unban), from the extension keys:
/// `Route(UNKILL_ROUTE)` if set, then `HostsDenyRemove(KILL_HOSTS_DENY)` if
/// `UNKILL_HOSTS_DENY` is on and `KILL_HOSTS_DENY` is set, then `RunCmd(UNKILL_RUN_CMD)` if
/// set.
///
/// The blocking is undone in the reverse of [`plan`]'s order (route, then hosts.deny), and
/// the run command comes last, when the host is no longer blocked, whatever
/// `KILL_RUN_CMD_FIRST` says. Lifting the XDP ban is the daemon's and not a step here; the
/// caller only runs this for a host that [`plan`] blocked (`BLOCK=1`).
pub fn undo_plan(cfg: &Config, t: &Target) -> Vec<Step> {
    let mut steps = Vec::with_capacity(3);
    if let Some(cmd) = &cfg.unkill_route {
        steps.push(Step::Route(substitute(cmd, t)));
    }
    if cfg.unkill_hosts_deny
        && let Some(line) = &cfg.kill_hosts_deny
    {
        steps.push(Step::HostsDenyRemove(substitute(line, t)));
    }
    if let Some(cmd) = &cfg.unkill_run_cmd {
        steps.push(Step::RunCmd(substitute(cmd, t)));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{self, Mode},
        fsutil::{append_line, remove_line},
        kinds::Protocol,
    };
    use shell::run_shell;
    use std::{
        net::Ipv4Addr,
        path::{Path, PathBuf},
        time::Duration,
    };

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    fn target() -> Target {
        Target {
            ip: V4,
            port: 1,
            mode: ModeToken::Atcp,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portsentry-actions-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
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
            mode: ModeToken::Sudp,
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
            mode: ModeToken::of(Mode::Stealth, Protocol::Tcp).unwrap(),
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
                            Step::HostsDenyRemove(_) => panic!("undo step in a plan"),
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
            mode: ModeToken::of(cfg.udp_mode, Protocol::Udp).unwrap(),
        };
        assert_eq!(
            plan(&cfg, cfg.block_udp, &udp),
            [Step::RunCmd("/bin/echo audp 2001:db8::7:53".into())]
        );
        let tcp = Target {
            mode: ModeToken::of(cfg.tcp_mode, Protocol::Tcp).unwrap(),
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

    #[test]
    fn undo_steps() {
        let t = target();
        assert_eq!(undo_plan(&Config::default(), &t), []);
        let cfg = Config {
            kill_hosts_deny: Some("ALL: $TARGET$ : DENY".into()),
            unkill_route: Some("/sbin/route del -host $TARGET$ reject".into()),
            unkill_run_cmd: Some("/bin/echo unbanned $TARGET$ $PORT$ $MODE$".into()),
            ..Config::default()
        };
        assert!(cfg.unkill_hosts_deny, "UNKILL_HOSTS_DENY defaults to on");
        assert_eq!(
            undo_plan(&cfg, &t),
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
            undo_plan(&off, &t),
            [
                Step::Route("/sbin/route del -host 192.0.2.7 reject".into()),
                Step::RunCmd("/bin/echo unbanned 192.0.2.7 1 atcp".into()),
            ]
        );
        // UNKILL_HOSTS_DENY without KILL_HOSTS_DENY has nothing to remove.
        let no_deny = Config {
            kill_hosts_deny: None,
            unkill_route: None,
            ..cfg
        };
        assert_eq!(
            undo_plan(&no_deny, &t),
            [Step::RunCmd("/bin/echo unbanned 192.0.2.7 1 atcp".into())]
        );
    }

    /// A tiny executor, as the daemon's: every step leaves a line in `log`.
    async fn execute(steps: &[Step], log: &Path) {
        for step in steps {
            match step {
                Step::XdpBan => append_line(log, "xdp").unwrap(),
                Step::HostsDeny(line) => append_line(log, line).unwrap(),
                Step::HostsDenyRemove(line) => {
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
        let dir = temp_dir("order");
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
        execute(&undo_plan(&cfg, &t), &log).await;
        assert_eq!(
            lines(&log),
            ["before", "after", "unroute 192.0.2.7", "unrun 192.0.2.7"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
