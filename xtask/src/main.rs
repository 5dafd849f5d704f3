//! `cargo xtask build | run | test | setup | demo | bench | deb` — everything a user or CI
//! needs, from a fresh machine, with nothing installed by hand.

mod baseline;
mod deb;
mod demo;
mod packages;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "portsentry's build, run and test commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the project needs (nightly rust-src, bpf-linker, test packages,
    /// bpffs). Idempotent; `build`, `run` and `test` call the parts they need.
    Setup {
        /// Also install the Debian packages the tests use (nmap, hping3, ...).
        #[arg(long)]
        packages: bool,
    },
    /// Build the XDP program and the `portsentry` binary (release).
    Build,
    /// Build, then run `portsentry` with the given arguments (as root).
    Run {
        /// Arguments for portsentry, e.g. `run -i eth0`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then measure (per-packet cost through BPF_PROG_TEST_RUN; needs root).
    Bench {
        /// Extra arguments for portsentry-bench (e.g. `--rounds 15`); `--baseline-rev REV`
        /// also measures the XDP program of git revision REV next to this one.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then show portsentry catching an nmap scan between two network namespaces
    /// of its own, then clean up (as root; a few seconds after the build).
    Demo,
    /// Build the Debian package: target/debian/portsentry_<version>_<arch>.deb (install it
    /// with `sudo apt install ./target/debian/portsentry_*.deb`).
    Deb,
    /// Build, then run the whole test suite (kernel tests serially; needs root).
    ///
    /// `cargo xtask test --test hardening interface_down` runs one test of one file.
    Test {
        /// Extra arguments: `--test FILE`, `--lib` and `-p PACKAGE` select what cargo
        /// builds and runs; anything else (a test name filter, `--nocapture`) goes to the
        /// tests, as does everything after a `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::Setup { packages } => {
            toolchain::ensure(&root)?;
            if packages {
                toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
                toolchain::ensure_unpacked(&root)?;
            }
            toolchain::ensure_bpffs()?;
        }
        Cmd::Build => {
            build(&root)?;
        }
        Cmd::Run { args } => {
            build(&root)?;
            toolchain::ensure_bpffs()?;
            let bin = root.join("target/release/portsentry");
            run_as_root(&bin, &args)?;
        }
        Cmd::Test { args } => test(&root, &args)?,
        Cmd::Demo => demo::run(&root)?,
        Cmd::Deb => {
            toolchain::ensure_packages(toolchain::DEB_PACKAGES)?;
            deb::build(&root)?;
        }
        Cmd::Bench { args } => {
            let object = build(&root)?;
            toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
            toolchain::ensure_packages(toolchain::BENCH_PACKAGES)?;
            toolchain::ensure_unpacked(&root)?;
            toolchain::ensure_bpffs()?;
            let args = baseline::resolve(&root, &args)?;
            let mut a = vec![
                "run",
                "--release",
                "--quiet",
                "--package",
                "portsentry-tests",
            ];
            a.extend(["--bin", "portsentry-bench", "--"]);
            a.extend(args.iter().map(String::as_str));
            cargo(&root, &a, &object)?;
        }
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds the eBPF object and returns its path.
fn build_ebpf(root: &Path) -> Result<PathBuf> {
    build_ebpf_in(root, root)
}

/// Builds the eBPF object of the workspace at `src` with `root`'s toolchain.
pub(crate) fn build_ebpf_in(root: &Path, src: &Path) -> Result<PathBuf> {
    let linker_bin = toolchain::ensure(root)?;
    let path = format!(
        "{}:{}",
        linker_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let status = Command::new("cargo")
        .current_dir(src)
        .env("PATH", path)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .args([
            "+nightly",
            "build",
            "--package",
            "portsentry-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .status()
        .context("running cargo +nightly for the XDP program")?;
    if !status.success() {
        bail!("building the XDP program failed");
    }
    Ok(src.join("target/bpfel-unknown-none/release/portsentry"))
}

fn build(root: &Path) -> Result<PathBuf> {
    let object = build_ebpf(root)?;
    cargo(
        root,
        &["build", "--release", "--package", "portsentry-user"],
        &object,
    )?;
    Ok(object)
}

fn cargo(root: &Path, args: &[&str], object: &Path) -> Result<()> {
    cargo_with(root, args, object, &[])
}

fn cargo_with(root: &Path, args: &[&str], object: &Path, env: &[(&str, &Path)]) -> Result<()> {
    let status = Command::new("cargo")
        .current_dir(root)
        .env("PORTSENTRY_EBPF_OBJECT", object)
        .envs(env.iter().copied())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let is_root = toolchain::is_root();
    if is_root {
        toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
        toolchain::ensure_unpacked(root)?;
        toolchain::ensure_bpffs()?;
    } else {
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("CI=true: the test suite must run as root (kernel tests may not be skipped)");
        }
        eprintln!("not root: kernel tests will be skipped (run as root for the full suite)");
    }
    let object = build(root)?;
    let (for_cargo, for_tests) = split_test_args(extra);
    // tests/tests/deb_package.rs installs the package: build it (as root, where the test
    // runs; it fails without the package under CI=true, skips elsewhere when not root).
    let deb = if is_root && selects_test(&for_cargo, "deb_package") {
        toolchain::ensure_packages(toolchain::DEB_PACKAGES)?;
        Some(deb::build(root)?)
    } else {
        None
    };
    // The workspace's default members (all but the eBPF crate, which builds for BPF
    // only): `-p PACKAGE` then picks among them (beside `--workspace`, cargo drops it).
    let mut args: Vec<&str> = vec!["test", "--release", "--no-fail-fast"];
    args.extend(for_cargo.iter().map(String::as_str));
    args.push("--");
    // Kernel tests share kernel state (interfaces, pins, counters): run serially.
    args.push("--test-threads=1");
    args.extend(for_tests.iter().map(String::as_str));
    match deb {
        Some(deb) => cargo_with(root, &args, &object, &[("PORTSENTRY_DEB", deb.as_path())]),
        None => cargo(root, &args, &object),
    }
}

/// Whether cargo's arguments run the integration test `name`: no target selection at all
/// (the whole suite), `--test name`, `--tests`, or the tests' package alone (`-p
/// portsentry-tests`).
fn selects_test(for_cargo: &[String], name: &str) -> bool {
    let selecting = ["--test", "--lib", "--tests", "--doc", "-p", "--package"];
    if !for_cargo.iter().any(|a| {
        selecting.contains(&a.as_str()) || a.starts_with("--test=") || a.starts_with("--package=")
    }) {
        return true;
    }
    for_cargo
        .windows(2)
        .any(|w| w[0] == "--test" && w[1] == name)
        || for_cargo.iter().any(|a| a == &format!("--test={name}"))
        || for_cargo.iter().any(|a| a == "--tests")
        || tests_package_alone(for_cargo)
}

/// `-p portsentry-tests` (or `--package`) with no other target selection.
fn tests_package_alone(for_cargo: &[String]) -> bool {
    let package = for_cargo
        .windows(2)
        .any(|w| matches!(w[0].as_str(), "-p" | "--package") && w[1] == "portsentry-tests")
        || for_cargo.iter().any(|a| a == "--package=portsentry-tests");
    let targets = [
        "--test",
        "--lib",
        "--doc",
        "--bin",
        "--bins",
        "--example",
        "--bench",
    ];
    package
        && !for_cargo.iter().any(|a| {
            targets.contains(&a.as_str())
                || a.starts_with("--test=")
                || a.starts_with("--bin=")
                || a.starts_with("--bench=")
        })
}

/// Splits `cargo xtask test`'s arguments between cargo and the tests: target selection
/// (`--test NAME`, `--lib`, `-p NAME`, ...) is cargo's, the rest (name filters,
/// `--nocapture`) the tests', as is everything after a `--`.
fn split_test_args(extra: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut cargo, mut tests) = (Vec::new(), Vec::new());
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => {
                tests.extend(it.by_ref().cloned());
            }
            "--test" | "-p" | "--package" => {
                cargo.push(a.clone());
                cargo.extend(it.next().cloned());
            }
            "--lib" | "--tests" | "--doc" => cargo.push(a.clone()),
            _ if a.starts_with("--test=") || a.starts_with("--package=") => cargo.push(a.clone()),
            _ => tests.push(a.clone()),
        }
    }
    (cargo, tests)
}

fn run_as_root(bin: &Path, args: &[String]) -> Result<()> {
    let mut cmd = if toolchain::is_root() {
        Command::new(bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg(bin);
        c
    };
    let status = cmd
        .args(args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("portsentry exited with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{selects_test, split_test_args};

    #[test]
    fn the_package_is_built_when_its_test_runs() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(selects_test(&v(&[]), "deb_package"));
        assert!(selects_test(&v(&["--test", "deb_package"]), "deb_package"));
        assert!(selects_test(&v(&["--test=deb_package"]), "deb_package"));
        assert!(!selects_test(&v(&["--test", "xdp_bans"]), "deb_package"));
        assert!(!selects_test(
            &v(&["--lib", "-p", "portsentry-user"]),
            "deb_package"
        ));
        assert!(selects_test(&v(&["-p", "portsentry-tests"]), "deb_package"));
        assert!(selects_test(
            &v(&["--package=portsentry-tests"]),
            "deb_package"
        ));
        assert!(!selects_test(
            &v(&["-p", "portsentry-tests", "--test", "xdp_bans"]),
            "deb_package"
        ));
        assert!(!selects_test(&v(&["-p", "portsentry-user"]), "deb_package"));
    }

    fn split(args: &[&str]) -> (Vec<String>, Vec<String>) {
        split_test_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn test_arguments_reach_cargo_and_the_tests() {
        assert_eq!(
            split(&["--test", "hardening", "--", "interface_down"]),
            (
                vec!["--test".into(), "hardening".into()],
                vec!["interface_down".into()]
            )
        );
        assert_eq!(
            split(&["--test", "hardening", "interface_down"]),
            (
                vec!["--test".into(), "hardening".into()],
                vec!["interface_down".into()]
            )
        );
        assert_eq!(split(&["ban_cache"]), (vec![], vec!["ban_cache".into()]));
        assert_eq!(
            split(&["--test=xdp_bans", "--nocapture"]),
            (vec!["--test=xdp_bans".into()], vec!["--nocapture".into()])
        );
        assert_eq!(
            split(&["--lib", "-p", "portsentry-user"]),
            (
                vec!["--lib".into(), "-p".into(), "portsentry-user".into()],
                vec![]
            )
        );
    }
}
