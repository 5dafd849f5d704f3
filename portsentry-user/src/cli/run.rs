//! `portsentry run`: take the state directory's lock, detach like PortSentry 1.2 when
//! asked, and run the daemon on a tokio runtime.

use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::RunArgs;
use crate::{config::effective, daemon, paths, pidfile};

/// `portsentry run` (and PortSentry 1.2's legacy invocations).
pub fn run(mut args: RunArgs) -> Result<()> {
    // A reload asked for while the daemon starts is served once it runs.
    daemon::hold_signals(&[libc::SIGHUP]);
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
    let lock = match lock_when_free(state_dir)? {
        Ok(lock) => lock,
        Err(Held::Unanswered) if !args.daemonize => anyhow::bail!(
            "{} is locked by a process that does not answer on {} (a daemon still \
             starting, or a `portsentry ban` or `unban` changing the bans); try again",
            paths::pid_file(state_dir).display(),
            paths::control_socket(state_dir).display()
        ),
        Err(_) => return already_running(state_dir, args.daemonize),
    };
    // From here the start changes the kernel: a stop asked for meanwhile waits until it
    // has started (nothing is left half-done), then stops it.
    daemon::hold_signals(&[libc::SIGTERM, libc::SIGINT]);
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

/// A start that finds a daemon holding the state directory.
fn already_running(state_dir: &std::path::Path, daemonize: bool) -> Result<()> {
    let pid = std::fs::read_to_string(paths::pid_file(state_dir)).unwrap_or_default();
    if daemonize {
        // PortSentry 1.2's init scripts start one process per protocol; ours watches
        // both, so the second start finds it running (or starting) and has nothing to do.
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
    )
}

/// Who holds the state directory's lock, when a start cannot take it.
enum Held {
    /// A daemon: it answers on the control socket.
    Daemon,
    /// A process that did not answer within [`LOCK_WAIT`].
    Unanswered,
}

/// The state directory's lock. A `portsentry ban` or `unban` run while no daemon ran
/// holds it for as long as it changes the bans: while no daemon answers on the control
/// socket, the lock is tried again for [`LOCK_WAIT`] before the start gives up.
fn lock_when_free(state_dir: &std::path::Path) -> Result<Result<std::fs::File, Held>> {
    let began = std::time::Instant::now();
    loop {
        if let Some(lock) = pidfile::lock(state_dir)? {
            return Ok(Ok(lock));
        }
        if std::os::unix::net::UnixStream::connect(paths::control_socket(state_dir)).is_ok() {
            return Ok(Err(Held::Daemon));
        }
        if began.elapsed() >= LOCK_WAIT {
            return Ok(Err(Held::Unanswered));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// How long a start waits for a command that holds the state lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
