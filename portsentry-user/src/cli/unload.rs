//! `portsentry unload`: detach the program from every interface and remove the pins
//! (the daemon must be stopped; the bans stay on record in the ban journal).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use super::{FileArgs, config};
use portsentry_common::maps::BanOrigin;

use crate::{
    kernel::{self, Dataplane},
    paths, pidfile,
};

/// `portsentry unload`.
pub fn unload(file: &FileArgs) -> Result<String> {
    let c = config(file)?;
    if let Some(pid) = pidfile::running_pid(&c.state_dir) {
        bail!("the daemon is running (pid {pid}); stop it first (it keeps the program attached)");
    }
    let mut untaken = Ok(0);
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(&c.pin_dir) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        let is_link = |p: &Path| {
            p.file_name()
                .is_some_and(|n| paths::link_interface(&n.to_string_lossy()).is_some())
        };
        // Links first: the program leaves the interfaces before its maps go.
        paths.sort_by_key(|p| !is_link(p));
        let mut counted = false;
        for p in paths {
            if !counted && !is_link(&p) {
                // Detached: the program makes no more bans to count.
                untaken = untaken_bans(&c.pin_dir);
                counted = true;
            }
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        fs::remove_dir(&c.pin_dir).with_context(|| format!("removing {}", c.pin_dir.display()))?;
    }
    let _ = fs::remove_file(paths::control_socket(&c.state_dir));
    if removed.is_empty() {
        return Ok(format!(
            "nothing to unload: {} holds no pins",
            c.pin_dir.display()
        ));
    }
    let links = removed
        .iter()
        .filter(|n| paths::link_interface(n).is_some())
        .count();
    let programs = removed
        .iter()
        .filter(|n| paths::is_program_pin(n) || paths::is_hook_pin(n))
        .count();
    let mut out = format!(
        "unloaded: detached from {links} interface{}, removed {} pinned maps from {} (bans \
         stay on record in {})",
        if links == 1 { "" } else { "s" },
        removed.len() - links - programs,
        c.pin_dir.display(),
        crate::bans::journal::path(&c.state_dir).display()
    );
    match untaken {
        Ok(0) => {}
        Ok(n) => out.push_str(&format!(
            "\nportsentry: {n} ban{} the program made itself while no daemon ran {} not on \
             record and went with the maps (a start before the unload takes such bans over)",
            if n == 1 { "" } else { "s" },
            if n == 1 { "was" } else { "were" }
        )),
        Err(e) => out.push_str(&format!(
            "\nportsentry: warning: the bans the program made itself while no daemon ran \
             could not be counted ({e:#}); any went with the maps"
        )),
    }
    Ok(out)
}

/// The bans in the pinned maps that the program made itself at a scan's trigger and no
/// daemon took over yet ([`BanOrigin::Kernel`]): on record nowhere else.
fn untaken_bans(pin_dir: &Path) -> Result<usize> {
    if !kernel::is_pinned(pin_dir) {
        return Ok(0);
    }
    let bans = Dataplane::inspect_pinned(pin_dir)?.bans()?;
    // A timed one that ran out is no longer in force (the program lets it pass).
    let now = crate::clock::monotonic_ns();
    Ok(bans
        .iter()
        .filter(|(_, e)| {
            e.origin == BanOrigin::Kernel as u8 && (e.expires_ns == 0 || e.expires_ns > now)
        })
        .count())
}
