//! `portsentry generate-docs --out DIR` (hidden from --help): the man pages and the shell
//! completions, written from the clap definitions and the key table, for packaging
//! (`cargo xtask deb`). The binary writes them itself so that xtask needs neither this
//! crate nor its dependencies (aya, tokio).
//!
//! Layout under DIR: `man/portsentry.8` and one `man/portsentry-<command>.8` per
//! subcommand (clap_mangen), `man/portsentry.conf.5` (from [`crate::config::KEYS`]), and
//! `completions/portsentry.bash`, `completions/_portsentry` (zsh),
//! `completions/portsentry.fish` (clap_complete).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;
use crate::config::manpage;

#[derive(Args, Debug, Clone)]
pub struct GenerateDocsArgs {
    /// The folder to write `man/` and `completions/` into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// The command as the pages and completions describe it: the binary's name, no hidden
/// subcommand (clap_complete would offer them), and no `help` subcommand (not a page of
/// its own). The top level has no arguments of its own but --help and --version.
fn command() -> clap::Command {
    let cli = Cli::command();
    let mut cmd = clap::Command::new("portsentry")
        .bin_name("portsentry")
        .version(env!("CARGO_PKG_VERSION"))
        // NAME already says "portsentry \-": the about without the name in front.
        .about(
            "a line-rate port-scan detector and blocker (XDP), compatible with \
             PortSentry's configuration",
        )
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        .disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Every file written, relative to `out`.
pub fn generate(out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let cmd = command();
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for page in pages {
        let page = clap_mangen::Man::new(page)
            .section("8")
            .source(format!("portsentry {version}"))
            .manual("System Administration");
        let mut text = Vec::new();
        page.render(&mut text)?;
        let name = page.get_filename();
        write(&man.join(&name), &text)?;
        written.push(Path::new("man").join(name));
    }
    write(
        &man.join(manpage::FILE_NAME),
        manpage::render(version).as_bytes(),
    )?;
    written.push(Path::new("man").join(manpage::FILE_NAME));
    for (shell, name) in [
        (Shell::Bash, "portsentry.bash"),
        (Shell::Zsh, "_portsentry"),
        (Shell::Fish, "portsentry.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command(), "portsentry", &mut text);
        write(&completions.join(name), &text)?;
        written.push(Path::new("completions").join(name));
    }
    Ok(written)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// `portsentry generate-docs`.
pub fn run(args: &GenerateDocsArgs) -> Result<String> {
    let written = generate(&args.out)?;
    Ok(written
        .iter()
        .map(|p| format!("{}\n", args.out.join(p).display()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions_cover_every_command_but_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for sub in ["run", "check-config", "status", "ban", "unban", "unload"] {
            assert!(
                names.contains(&format!("portsentry-{sub}.8")),
                "no page for {sub}: {names:?}"
            );
        }
        assert!(names.contains(&"portsentry.8".to_owned()));
        assert!(names.contains(&"portsentry.conf.5".to_owned()));
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let main = fs::read_to_string(dir.path().join("man/portsentry.8")).unwrap();
        assert!(
            main.starts_with(".ie") || main.contains(".TH portsentry 8"),
            "{main}"
        );
        assert!(main.contains("portsentry\\-check\\-config(8)"), "{main}");
        assert!(
            !main.contains("generate"),
            "the hidden command is on the page"
        );
        let bash = fs::read_to_string(dir.path().join("completions/portsentry.bash")).unwrap();
        assert!(bash.contains("check-config") && bash.contains("--config"));
        for name in ["portsentry.bash", "_portsentry", "portsentry.fish"] {
            let text = fs::read_to_string(dir.path().join("completions").join(name)).unwrap();
            assert!(text.contains("check-config"), "{name}");
            assert!(
                !text.contains("generate"),
                "{name} offers the hidden command"
            );
        }
    }
}
