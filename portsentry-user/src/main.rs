//! The `portsentry` binary: a thin `main` over the library's modules.

use std::{process::ExitCode, sync::Arc};

use clap::Parser as _;
use portsentry_user::{
    cli::{Cli, Command, translate_legacy},
    config::effective,
    daemon, ops,
};

fn main() -> ExitCode {
    let cli = Cli::parse_from(translate_legacy(std::env::args_os().collect()));
    match cli.command {
        Command::CheckConfig(args) => match effective::load(&args) {
            Ok(eff) => {
                print!("{}", eff.render());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portsentry: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => report(run(args).map(|()| String::new())),
        Command::Status(args) => report(ops::status(&args)),
        Command::Ban(args) => report(ops::ban(&args).map(line)),
        Command::Unban(args) => report(ops::unban(&args).map(line)),
        Command::Unload(args) => report(ops::unload(&args).map(line)),
    }
}

fn line(s: String) -> String {
    s + "\n"
}

fn report(r: anyhow::Result<String>) -> ExitCode {
    match r {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portsentry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: portsentry_user::cli::RunArgs) -> anyhow::Result<()> {
    let eff = effective::load(&args.config)?;
    eff.require_interfaces()?;
    let state_dir = &eff.config.state_dir;
    let Some(lock) = daemon::lock_state_dir(state_dir)? else {
        let pid = std::fs::read_to_string(state_dir.join("portsentry.pid")).unwrap_or_default();
        if args.daemonize {
            // PortSentry 1.2's init scripts start one process per protocol; ours watches
            // both, so the second start finds it running and has nothing to do.
            eprintln!(
                "portsentry: already running (pid {}); one process watches TCP and UDP",
                pid.trim()
            );
            return Ok(());
        }
        anyhow::bail!(
            "portsentry is already running with state directory {} (pid {}); stop it first",
            state_dir.display(),
            pid.trim()
        );
    };
    if args.daemonize {
        // SAFETY: no threads exist yet (the runtime is built below).
        if unsafe { libc::daemon(0, 0) } != 0 {
            anyhow::bail!("detaching: {}", std::io::Error::last_os_error());
        }
    }
    daemon::write_pid(&lock)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(daemon::run(Arc::new(eff), args, lock))
}
