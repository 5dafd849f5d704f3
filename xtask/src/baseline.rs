//! `cargo xtask bench -- --baseline-rev REV`: the XDP program of another commit, built
//! beside this one so that the bench measures both in one run. Runs after the bench's
//! packages (git among them) are installed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The XDP object of git revision `rev`, built in a worktree under `target/baseline/`
/// (once per commit), for the bench's before-and-after table.
fn build(root: &Path, rev: &str) -> Result<PathBuf> {
    let out = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .output()
        .context("running git rev-parse")?;
    if !out.status.success() {
        bail!("--baseline-rev {rev}: not a commit of this repository");
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dir = root.join("target/baseline").join(&commit[..12]);
    if !dir.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = Command::new("git")
            .current_dir(root)
            .args(["worktree", "prune"])
            .status();
        let status = Command::new("git")
            .current_dir(root)
            .args(["worktree", "add", "--detach"])
            .arg(&dir)
            .arg(&commit)
            .status()
            .context("running git worktree add")?;
        if !status.success() {
            bail!("checking out {rev} into {} failed", dir.display());
        }
    }
    eprintln!(
        "xtask: building the baseline XDP program of {rev} ({})",
        &commit[..12]
    );
    crate::build_ebpf_in(root, &dir)
}

/// Replaces `--baseline-rev REV` in the bench's arguments by `--baseline OBJECT`.
pub(crate) fn resolve(root: &Path, args: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--baseline-rev" {
            let rev = it.next().context("--baseline-rev takes a git revision")?;
            out.push("--baseline".to_owned());
            out.push(build(root, rev)?.display().to_string());
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}
