//! Installs what building and testing need, idempotently: the nightly toolchain with
//! rust-src, bpf-linker built against that nightly's own LLVM (under
//! `target/bpf-linker/<nightly commit>/`), the Debian packages the tests use, and bpffs.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// bpf-linker release built from crates.io.
const BPF_LINKER_VERSION: &str = "0.13.0";

// The package lists live in `packages.rs`, which the tests read too.
pub use crate::packages::{BENCH_PACKAGES, DEB_PACKAGES, TEST_PACKAGES, UNPACKED_PACKAGES};

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Makes sure nightly, rust-src and bpf-linker are there; returns the folder that holds
/// the `bpf-linker` binary.
pub fn ensure(root: &Path) -> Result<PathBuf> {
    let version = match output(Command::new("rustc").args(["+nightly", "-vV"])) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("xtask: installing the nightly toolchain");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            output(Command::new("rustc").args(["+nightly", "-vV"]))?
        }
    };
    let field = |name: &str| {
        version
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let commit = field("commit-hash:").context("`rustc +nightly -vV` printed no commit-hash")?;
    let llvm = field("LLVM version:").context("`rustc +nightly -vV` printed no LLVM version")?;
    let llvm_major = llvm.split('.').next().unwrap_or_default().to_owned();

    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let prefix = root
        .join("target/bpf-linker")
        .join(&commit[..commit.len().min(12)]);
    let bin = prefix.join("bin");
    let linker = bin.join("bpf-linker");
    if Command::new(&linker)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(bin);
    }

    let libllvm = std::fs::read_dir(sysroot.join("lib"))
        .context("reading the nightly sysroot")?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{llvm_major}")))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.{llvm_major}* in {}/lib: this nightly ships no LLVM to build \
                 bpf-linker against",
                sysroot.display()
            )
        })?;
    std::fs::create_dir_all(prefix.join("lib"))?;
    // `libLLVM.so` for the build; the library's own name for the binary's rpath lookup.
    let own_name = libllvm.file_name().expect("a file name").to_owned();
    for name in [std::ffi::OsString::from("libLLVM.so"), own_name] {
        let link = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} of the nightly \
         (about a minute, once)"
    );
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .arg("--root")
        .arg(&prefix)
        .arg("--locked"))
    .context("building bpf-linker")?;
    Ok(bin)
}

/// Installs the Debian packages that are not installed (as root, with apt-get). Asked of
/// dpkg, not of PATH: a root shell without /usr/sbin in its PATH would install hping3 and
/// iptables again on every run, and a library has no binary to look for.
pub fn ensure_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .map(|(pkg, _)| *pkg)
        .filter(|pkg| !installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {}: install them (as root: apt-get install {})",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    // An install cut short (Ctrl-C, a session's end) leaves dpkg's journal behind, and
    // apt-get refuses every install until it is replayed; with none, this does nothing.
    run(Command::new("dpkg")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["--configure", "-a"]))?;
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

/// Whether dpkg has `package` installed.
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

/// Unpacks the packages of [`UNPACKED_PACKAGES`] under `target/unpacked/<package>/` (their
/// files only: no maintainer script runs, nothing is installed). Idempotent: a package whose
/// binaries are all there is left alone. Nothing cut short is taken for done: a `.deb` is
/// moved in once downloaded whole, a package's directory once unpacked whole, and a `.deb`
/// that does not unpack is fetched again.
pub fn ensure_unpacked(root: &Path) -> Result<()> {
    for (package, binaries) in UNPACKED_PACKAGES {
        let dir = root.join("target/unpacked").join(package);
        if binaries.iter().all(|b| dir.join(b).is_file()) {
            continue;
        }
        let download = root.join("target/unpacked/download");
        std::fs::create_dir_all(&download)
            .with_context(|| format!("creating {}", download.display()))?;
        eprintln!("xtask: unpacking Debian's {package} into {}", dir.display());
        let deb = match find_deb(&download, package)? {
            Some(deb) => deb,
            None => download_deb(&download, package)?,
        };
        let unpacking = dir.with_extension("partial");
        let unpack = |deb: &Path| {
            let _ = std::fs::remove_dir_all(&unpacking);
            run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacking))
        };
        if unpack(&deb).is_err() {
            eprintln!(
                "xtask: {} does not unpack: fetching it again",
                deb.display()
            );
            std::fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
            unpack(&download_deb(&download, package)?)?;
        }
        for b in *binaries {
            if !unpacking.join(b).is_file() {
                bail!("{} holds no {b}", deb.display());
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&unpacking, &dir)
            .with_context(|| format!("renaming {} to {}", unpacking.display(), dir.display()))?;
    }
    Ok(())
}

/// Downloads `package`'s `.deb` into `dir` (`apt-get download` writes the file in place as
/// it arrives: it writes into a directory of its own, and the file is moved once whole).
fn download_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    let fetching = dir.join(format!(".{package}.partial"));
    let _ = std::fs::remove_dir_all(&fetching);
    std::fs::create_dir_all(&fetching)
        .with_context(|| format!("creating {}", fetching.display()))?;
    // The index may be missing on a fresh machine.
    let fetch = || {
        run(Command::new("apt-get")
            .current_dir(&fetching)
            .args(["download", "-q", package]))
    };
    if fetch().is_err() {
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        fetch()?;
    }
    let got = find_deb(&fetching, package)?
        .with_context(|| format!("apt-get download {package} wrote no .deb"))?;
    let deb = dir.join(got.file_name().expect("a file's name"));
    std::fs::rename(&got, &deb)
        .with_context(|| format!("renaming {} to {}", got.display(), deb.display()))?;
    let _ = std::fs::remove_dir(&fetching);
    Ok(deb)
}

/// The downloaded `.deb` of `package` in `dir`, if there is one.
fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted (as root).
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    if !is_root() {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
