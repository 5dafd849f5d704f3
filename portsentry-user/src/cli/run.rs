//! `portsentry run`: take the state directory's lock, detach like PortSentry 1.2 when
//! asked, and run the daemon on a tokio runtime.

use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::RunArgs;
use crate::{config::effective, daemon, paths, pidfile};

/// `portsentry run` (and PortSentry 1.2's legacy invocations).
pub fn run(mut args: RunArgs) -> Result<()> {
    // A reload asked for while the daemon starts is served once it runs; a stop, once
    // it has started (nothing is left half-done).
    daemon::hold_signals();
    // A reload reads the files again, after `--daemonize` moved to `/`: named from the
    // directory the command ran in, as the start read them.
    for path in [&mut args.config.config, &mut args.config.modes_file]
        .into_iter()
        .flatten()
    {
        *path =
            std::path::absolute(&*path).with_context(|| format!("resolving {}", path.display()))?;
    }
    let eff = effective::load(&args.config)?;
    eff.require_interfaces()?;
    let state_dir = &eff.config.state_dir;
    let Some(lock) = pidfile::lock(state_dir)? else {
        let pid = std::fs::read_to_string(paths::pid_file(state_dir)).unwrap_or_default();
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
    let stderr = !args.quiet && !args.daemonize;
    if args.daemonize {
        // SAFETY: no threads exist yet (the runtime is built below).
        if unsafe { libc::daemon(0, 0) } != 0 {
            anyhow::bail!("detaching: {}", std::io::Error::last_os_error());
        }
    }
    pidfile::write_pid(&lock)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(daemon::run(Arc::new(eff), args.config, stderr, lock))
}
