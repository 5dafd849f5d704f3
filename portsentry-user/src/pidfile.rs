//! One daemon per state directory: an exclusive lock on the pid file, which holds the
//! daemon's pid. The daemon takes it before it starts; the CLI takes it to change the
//! bans directly when no daemon runs, and reads it to tell whether one does.

use std::{fs, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result};

use crate::paths;

/// One daemon per state directory: an exclusive lock on `portsentry.pid`, which holds
/// our pid. Returns the open file (the lock lives as long as it does, across fork).
/// `Ok(None)`: another process holds it.
pub fn lock(dir: &Path) -> Result<Option<fs::File>> {
    crate::fsutil::create_dir_all_synced(dir)
        .with_context(|| format!("creating the state directory {}", dir.display()))?;
    let path = paths::pid_file(dir);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a valid descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(file))
}

/// Writes our pid into the lock file (after any fork).
pub fn write_pid(file: &fs::File) -> Result<()> {
    use std::io::Write as _;
    file.set_len(0)?;
    (&*file).write_all(format!("{}\n", std::process::id()).as_bytes())?;
    Ok(())
}

/// The pid in the lock file, when a process holds the lock (the daemon is running).
pub fn running_pid(state_dir: &Path) -> Option<u32> {
    match lock(state_dir) {
        Ok(None) => fs::read_to_string(paths::pid_file(state_dir))
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        _ => None,
    }
}
