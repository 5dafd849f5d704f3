//! The command line: its arguments (here) and one file per subcommand, which [`execute`]
//! dispatches to. PortSentry 1.2's mode flags (`-atcp -audp -stcp -sudp -tcp -udp`) are
//! single-dash words that no argument parser reads as such, so [`translate_legacy`]
//! rewrites them into the modern options before clap sees the arguments.

mod bans;
mod check_config;
pub mod generate_docs;
mod run;
mod status;
mod unload;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

pub use crate::config::effective::ConfigArgs;
use crate::{
    config::{self, Config},
    paths,
};

/// The exit status of a command whose configuration (the file, its ignore list, the
/// modes file, the command line) cannot be used: sysexits' EX_CONFIG. The systemd unit
/// does not restart the daemon on it (RestartPreventExitStatus): a restart would read
/// the same files.
pub const EXIT_CONFIG: u8 = 78;

/// Runs a subcommand: its output on stdout and exit status 0, or `portsentry: <error>`
/// on stderr and exit status [`EXIT_CONFIG`] or 1 ([`failure`]).
pub fn execute(command: Command) -> ExitCode {
    let result = match command {
        Command::CheckConfig(args) => check_config::run(&args),
        Command::Run(args) => run::run(args).map(|()| String::new()),
        Command::Status(args) => return written(|out| status::status(&args, out)),
        Command::Ban(args) => bans::ban(&args).map(line),
        Command::Unban(args) => bans::unban(&args).map(line),
        Command::Unload(args) => unload::unload(&args).map(line),
        Command::GenerateDocs(args) => generate_docs::run(&args),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => failure(&e),
    }
}

/// Prints `portsentry: <error>` on stderr; the exit status: [`EXIT_CONFIG`] when the
/// configuration cannot be used, else 1.
fn failure(e: &anyhow::Error) -> ExitCode {
    eprintln!("portsentry: {e:#}");
    if e.chain().any(|c| c.is::<config::ConfigError>()) {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

fn line(s: String) -> String {
    s + "\n"
}

/// Runs a subcommand that writes its output as it goes (buffered, onto stdout): exit
/// status 0, or `portsentry: <error>` on stderr ([`failure`]). A reader that stops reading
/// (`portsentry status | head`) ends it quietly.
fn written(run: impl FnOnce(&mut dyn std::io::Write) -> Result<()>) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = run(&mut out).and_then(|()| out.flush().map_err(Into::into));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
                    || c.downcast_ref::<serde_json::Error>()
                        .and_then(|e| e.io_error_kind())
                        == Some(std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => failure(&e),
    }
}

/// The configuration for an operator command (the file named, else the default one,
/// else the built-in defaults).
fn config(file: &FileArgs) -> Result<Config> {
    let mut c = match &file.config {
        Some(p) => config::load(p)?,
        None if Path::new(paths::DEFAULT_CONFIG).exists() => {
            config::load(Path::new(paths::DEFAULT_CONFIG))?
        }
        None => Config::default(),
    };
    // The modes the daemon runs with beside the system's file (PortSentry 1.2's
    // /etc/default/portsentry), for the tokens `status` and the bans show.
    config::debian_defaults::apply(&mut c, None)?;
    Ok(c)
}

/// portsentry: a line-rate port-scan detector and blocker (XDP), compatible with
/// PortSentry's configuration.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load the XDP program, attach it, and detect and block scans (foreground). Exit
    /// status 78 (EX_CONFIG) when the configuration cannot be used, 1 on other errors.
    Run(RunArgs),
    /// Check the configuration and print the effective settings: watched ports,
    /// ignore list and the actions in order. Exit status 0, or 78 (EX_CONFIG) with the
    /// error.
    CheckConfig(ConfigArgs),
    /// Show the daemon, the interfaces, the kernel counters, tracked sources and every
    /// ban (reason, port, scan type, since, expiry). Works while the daemon is stopped.
    Status(StatusArgs),
    /// Ban an address or network now (through the daemon when it runs).
    Ban(BanArgs),
    /// Lift a ban (through the daemon when it runs, which also runs the UNKILL_*
    /// commands).
    Unban(UnbanArgs),
    /// Detach the program from every interface and remove its pinned maps (the
    /// daemon must be stopped; the bans stay on record in STATE_DIR/bans.journal).
    Unload(FileArgs),
    /// Write the man pages and shell completions into a folder (for packaging).
    #[command(hide = true)]
    GenerateDocs(generate_docs::GenerateDocsArgs),
}

/// Just the configuration file (for STATE_DIR and PIN_DIR).
#[derive(Args, Debug, Clone, Default)]
pub struct FileArgs {
    /// The configuration file [default: /etc/portsentry/portsentry.conf if it exists].
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct StatusArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// How many tracked sources to list (the most active first).
    #[arg(long, default_value_t = 10)]
    pub sources: usize,
}

#[derive(Args, Debug, Clone)]
pub struct BanArgs {
    /// An address (a host) or ADDR/PREFIX (a network).
    #[arg(value_name = "ADDR[/PREFIX]")]
    pub target: String,
    /// How long, e.g. `1h`, `30m`, `7d` or seconds; `0` = permanent [default: BAN_TIME].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub time: Option<std::time::Duration>,
    /// Ban a network wider than BAN_MIN_PREFIX_V4/_V6 allows, or the address of your own
    /// SSH session. The ignore list, loopback and this host's addresses are never banned.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub file: FileArgs,
}

#[derive(Args, Debug, Clone)]
pub struct UnbanArgs {
    /// The address or ADDR/PREFIX whose ban to lift (exactly as banned).
    #[arg(value_name = "ADDR[/PREFIX]", required_unless_present = "all")]
    pub target: Option<String>,
    /// Lift every ban.
    #[arg(long, conflicts_with = "target")]
    pub all: bool,
    #[command(flatten)]
    pub file: FileArgs,
}

/// A ban's time: whole seconds, as the daemon takes it (`500ms` would be 0 there,
/// permanent).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = config::parse_duration(s).map_err(|e| match e {
        config::DurationError::TooLong => format!("{e}; 0 = permanent"),
        config::DurationError::Syntax(_) => format!("{e} (write e.g. 3600, 90s, 30m, 12h, 7d)"),
    })?;
    if d.subsec_nanos() != 0 {
        return Err("a ban lasts whole seconds (write e.g. 3600, 90s, 30m, 12h, 7d)".into());
    }
    Ok(d)
}

/// An address or network: `192.0.2.7`, `192.0.2.0/24`, `2001:db8::/48`; an
/// IPv4-mapped one (`::ffff:192.0.2.7`) as the IPv4 address it stands for.
pub fn parse_target(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    let net = match s.parse::<std::net::IpAddr>() {
        Ok(ip) => ipnet::IpNet::from(ip),
        Err(_) => s
            .parse::<ipnet::IpNet>()
            .map_err(|_| format!("`{s}` is not an address or ADDR/PREFIX"))?,
    };
    Ok(crate::kernel::addr::canonical_net(net))
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Detach into the background like PortSentry 1.2 (implied by its legacy mode flags).
    #[arg(long)]
    pub daemonize: bool,
    /// Do not copy log lines to stderr (they still go to syslog when SYSLOG=1).
    #[arg(long)]
    pub quiet: bool,
}

/// Rewrites PortSentry 1.2's flags: `-atcp` → `--tcp-mode=atcp`, `-stcp` and `-tcp` →
/// `--tcp-mode=stcp` (we have no connect mode: `-tcp` is documented as stealth), and the
/// same for UDP. When legacy flags are given without a subcommand, `run --daemonize` is
/// implied, as PortSentry 1.2 detaches by itself.
pub fn translate_legacy(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut legacy = Vec::new();
    let mut has_command = false;
    for (i, a) in args.into_iter().enumerate() {
        let mapped = match a.to_str() {
            Some("-atcp") => Some("--tcp-mode=atcp"),
            Some("-stcp") | Some("-tcp") => Some("--tcp-mode=stcp"),
            Some("-audp") => Some("--udp-mode=audp"),
            Some("-sudp") | Some("-udp") => Some("--udp-mode=sudp"),
            _ => None,
        };
        match mapped {
            Some(m) if i > 0 => legacy.push(OsString::from(m)),
            _ => {
                if i > 0 && matches!(a.to_str(), Some("run") | Some("check-config")) {
                    has_command = true;
                }
                out.push(a);
            }
        }
    }
    if legacy.is_empty() {
        return out;
    }
    if !has_command {
        out.insert(1.min(out.len()), OsString::from("run"));
        out.insert(2.min(out.len()), OsString::from("--daemonize"));
    }
    out.extend(legacy);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    fn t(args: &[&str]) -> Vec<String> {
        translate_legacy(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn targets_are_read_as_the_kernel_keys_them() {
        let t = |s| parse_target(s).map(|n| n.to_string());
        assert_eq!(t(" 192.0.2.7 "), Ok("192.0.2.7/32".into()));
        assert_eq!(t("192.0.2.7/24"), Ok("192.0.2.0/24".into()));
        assert_eq!(t("2001:db8::7/48"), Ok("2001:db8::/48".into()));
        // IPv4-mapped: one network with its IPv4 form, not a second record.
        assert_eq!(t("::ffff:192.0.2.7"), Ok("192.0.2.7/32".into()));
        assert_eq!(t("::ffff:192.0.2.0/120"), Ok("192.0.2.0/24".into()));
        assert!(t("192.0.2").is_err());
    }

    #[test]
    fn a_ban_time_is_whole_seconds() {
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert_eq!(parse_duration("0"), Ok(std::time::Duration::ZERO));
        for fraction in ["30ms", "1s 500ms", "100us"] {
            let err = parse_duration(fraction).unwrap_err();
            assert!(err.contains("whole seconds"), "{fraction}: {err}");
        }
    }

    #[test]
    fn legacy_flags() {
        assert_eq!(
            t(&["portsentry", "-atcp"]),
            ["portsentry", "run", "--daemonize", "--tcp-mode=atcp"]
        );
        assert_eq!(
            t(&["portsentry", "-tcp", "-udp"]),
            [
                "portsentry",
                "run",
                "--daemonize",
                "--tcp-mode=stcp",
                "--udp-mode=sudp"
            ]
        );
        assert_eq!(
            t(&["portsentry", "run", "-i", "eth0", "-sudp"]),
            ["portsentry", "run", "-i", "eth0", "--udp-mode=sudp"]
        );
        assert_eq!(
            t(&["portsentry", "check-config", "-audp"]),
            ["portsentry", "check-config", "--udp-mode=audp"]
        );
        assert_eq!(
            t(&["portsentry", "run", "-i", "eth0"]),
            ["portsentry", "run", "-i", "eth0"]
        );
    }

    #[test]
    fn legacy_flags_parse() {
        let cli = Cli::try_parse_from(translate_legacy(
            ["portsentry", "-stcp", "-audp"]
                .iter()
                .map(OsString::from)
                .collect(),
        ))
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("run expected")
        };
        assert!(r.daemonize);
        assert_eq!(r.config.tcp_mode, Some(Mode::Stealth));
        assert_eq!(r.config.udp_mode, Some(Mode::Advanced));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
