//! `cargo xtask deb`: `target/debian/portsentry_<version>_<arch>.deb`, laid out here and
//! packed with `dpkg-deb --root-owner-group` (no fakeroot, no debian/ source tree).
//!
//! What goes where:
//! - `/usr/sbin/portsentry` (stripped), `/lib/systemd/system/portsentry.service` (the unit
//!   of `packaging/`, with the packaged binary's path);
//! - conffiles `/etc/portsentry/portsentry.conf` (Debian's stock PortSentry 1.2 file plus a
//!   commented INTERFACES line) and `/etc/portsentry/portsentry.ignore`;
//! - `/var/lib/portsentry` (STATE_DIR);
//! - the man pages and the bash, zsh and fish completions, written by the binary itself
//!   (`portsentry generate-docs`), README.md and docs/configuration.md, and the Prometheus
//!   alert rules (`/usr/share/portsentry/prometheus/`);
//! - the maintainer scripts of `packaging/debian/`.
//!
//! The package is named portsentry, like Debian's PortSentry 1.2 package, so installing it
//! on a host that has that one is an upgrade of the same package: dpkg carries the admin's
//! conffiles over (same names), and no Replaces or Conflicts is needed (nor allowed: a
//! package cannot conflict with itself). The version must therefore sort above Debian's
//! (1.2-14+b1), or apt would "upgrade" back to 1.2; [`build`] refuses one that does not.

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The maintainer named in the package, unless DEBFULLNAME and DEBEMAIL say otherwise
/// (Debian's usual variables).
const MAINTAINER: &str =
    "portsentry maintainers <maintainers@users.noreply.r-seed-8832c3e9.example>";

/// Every version of Debian's own portsentry package sorts below this.
const ABOVE_DEBIAN: &str = "2~";

/// Where the unit goes: /lib, not /usr/lib, on Debian 12 (its packages may not move files
/// between the aliased directories yet).
const UNIT_DIR: &str = "lib/systemd/system";

/// Builds the package; returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    crate::build(root)?;
    let version = format!("{}-1", crate_version(root)?);
    let status = Command::new("dpkg")
        .args(["--compare-versions", &version, "ge", ABOVE_DEBIAN])
        .status()
        .context("running dpkg --compare-versions")?;
    if !status.success() {
        bail!(
            "package version {version} sorts below {ABOVE_DEBIAN}: apt would replace it with \
             Debian's portsentry 1.2; raise portsentry-user's version"
        );
    }
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"))?;
    let out_dir = root.join("target/debian");
    let stage = out_dir.join(format!("portsentry_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let pkg = root.join("packaging");

    // The binary, stripped as dh_strip does.
    let bin = stage.join("usr/sbin/portsentry");
    install(&root.join("target/release/portsentry"), &bin, 0o755)?;
    run(Command::new("strip")
        .args([
            "--strip-unneeded",
            "--remove-section=.comment",
            "--remove-section=.note",
        ])
        .arg(&bin))?;

    // Man pages and completions, from the binary.
    let generated = out_dir.join("generated");
    if generated.exists() {
        fs::remove_dir_all(&generated)?;
    }
    run(Command::new(&bin)
        .args(["generate-docs", "--out"])
        .arg(&generated))?;
    for entry in fs::read_dir(generated.join("man"))? {
        let page = entry?.path();
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        let section = name.rsplit('.').next().unwrap_or_default().to_owned();
        let dest = stage.join(format!("usr/share/man/man{section}/{name}"));
        install(&page, &dest, 0o644)?;
        gzip(&dest)?;
    }
    for (from, to) in [
        (
            "portsentry.bash",
            "usr/share/bash-completion/completions/portsentry",
        ),
        (
            "_portsentry",
            "usr/share/zsh/vendor-completions/_portsentry",
        ),
        (
            "portsentry.fish",
            "usr/share/fish/vendor_completions.d/portsentry.fish",
        ),
    ] {
        install(
            &generated.join("completions").join(from),
            &stage.join(to),
            0o644,
        )?;
    }

    // The unit, with the packaged binary's path.
    let unit = fs::read_to_string(pkg.join("portsentry.service"))?;
    write(
        &stage.join(UNIT_DIR).join("portsentry.service"),
        &packaged_unit(&unit)?,
        0o644,
    )?;

    // Conffiles and the state directory.
    let stock = fs::read_to_string(root.join("portsentry-user/testdata/debian/portsentry.conf"))?;
    write(
        &stage.join("etc/portsentry/portsentry.conf"),
        &packaged_conf(&stock),
        0o644,
    )?;
    install(
        &pkg.join("debian/portsentry.ignore"),
        &stage.join("etc/portsentry/portsentry.ignore"),
        0o644,
    )?;
    mkdir(&stage.join("var/lib/portsentry"))?;

    // Documentation and the alert rules.
    let doc = stage.join("usr/share/doc/portsentry");
    for (from, name) in [
        (root.join("README.md"), "README.md"),
        (root.join("docs/configuration.md"), "configuration.md"),
    ] {
        install(&from, &doc.join(name), 0o644)?;
        gzip(&doc.join(name))?;
    }
    install(&pkg.join("debian/copyright"), &doc.join("copyright"), 0o644)?;
    let maintainer = maintainer();
    write(
        &doc.join("changelog.Debian"),
        &changelog(&version, &maintainer),
        0o644,
    )?;
    gzip(&doc.join("changelog.Debian"))?;
    install(
        &pkg.join("prometheus/portsentry.rules.yml"),
        &stage.join("usr/share/portsentry/prometheus/portsentry.rules.yml"),
        0o644,
    )?;

    // DEBIAN/: maintainer scripts, conffiles, md5sums, control.
    let debian = stage.join("DEBIAN");
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        install(
            &pkg.join("debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    write(
        &debian.join("conffiles"),
        "/etc/portsentry/portsentry.conf\n/etc/portsentry/portsentry.ignore\n",
        0o644,
    )?;
    let mut files = Vec::new();
    walk(&stage, &mut files)?;
    let mut md5sums = String::new();
    let mut size_kib = 0u64;
    for f in &files {
        let rel = f.strip_prefix(&stage)?.to_string_lossy().into_owned();
        if rel.starts_with("DEBIAN/") {
            continue;
        }
        size_kib += fs::symlink_metadata(f)?.len().div_ceil(1024);
        if !rel.starts_with("etc/") {
            let sum = stdout(Command::new("md5sum").arg(f))?;
            let sum = sum.split_whitespace().next().unwrap_or_default();
            let _ = writeln!(md5sums, "{sum}  {rel}");
        }
    }
    write(&debian.join("md5sums"), &md5sums, 0o644)?;
    let depends = shlibs_depends(&out_dir, &bin)?;
    write(
        &debian.join("control"),
        &control(&version, &arch, &maintainer, &depends, size_kib),
        0o644,
    )?;

    let deb = out_dir.join(format!("portsentry_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// portsentry-user's `version = "..."`.
fn crate_version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("portsentry-user/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix("version")?.trim_start().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_owned())
        })
        .context("no version in portsentry-user/Cargo.toml")
}

/// The unit of `packaging/` with the packaged binary's path and a header for the package.
fn packaged_unit(unit: &str) -> Result<String> {
    const MANUAL: &str = "/usr/local/sbin/portsentry";
    if !unit.contains(MANUAL) {
        bail!("packaging/portsentry.service no longer runs {MANUAL}: update xtask/src/deb.rs");
    }
    // The leading comment tells how to install the file by hand; the package did.
    let body = unit
        .split_once("\n\n")
        .map(|(head, body)| if head.starts_with('#') { body } else { unit })
        .unwrap_or(unit);
    Ok(format!(
        "# portsentry's unit, from its Debian package. The configuration,\n\
         # /etc/portsentry/portsentry.conf, must name the interfaces to watch (INTERFACES).\n\n{}",
        body.replace(MANUAL, "/usr/sbin/portsentry")
    ))
}

/// Debian's stock portsentry.conf with the INTERFACES setting, commented, at the end.
fn packaged_conf(stock: &str) -> String {
    let mut conf = stock.trim_end().to_owned();
    conf.push_str(
        "\n\n\
         #######################################\n\
         # portsentry (XDP) extension settings #\n\
         #######################################\n\
         #\n\
         # The network interfaces to watch, comma-separated. The service does not start\n\
         # until this names at least one: uncomment it, then\n\
         #   portsentry check-config && systemctl enable --now portsentry\n\
         # Every other extension key: portsentry.conf(5).\n\
         #\n\
         #INTERFACES=\"eth0\"\n",
    );
    conf
}

fn maintainer() -> String {
    match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        (Ok(name), Ok(email)) if !name.is_empty() && !email.is_empty() => {
            format!("{name} <{email}>")
        }
        _ => MAINTAINER.to_owned(),
    }
}

fn changelog(version: &str, maintainer: &str) -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    format!(
        "portsentry ({version}) unstable; urgency=medium\n\n  \
         * Built by `cargo xtask deb` from the portsentry source tree.\n\n \
         -- {maintainer}  {}\n",
        rfc2822(secs)
    )
}

/// `Tue, 02 Dec 2025 11:52:00 +0000` for `secs` after the epoch (UTC).
fn rfc2822(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The shared-library dependencies of `bin`, from dpkg-shlibdeps (which needs a
/// debian/control to read: a minimal one in a folder of its own).
fn shlibs_depends(out_dir: &Path, bin: &Path) -> Result<String> {
    let dir = out_dir.join("shlibdeps");
    write(
        &dir.join("debian/control"),
        "Source: portsentry\n\nPackage: portsentry\nArchitecture: any\n",
        0o644,
    )?;
    let out = stdout(
        Command::new("dpkg-shlibdeps")
            .current_dir(&dir)
            .arg("-O")
            .arg(format!("-e{}", bin.display())),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

fn control(version: &str, arch: &str, maintainer: &str, depends: &str, size_kib: u64) -> String {
    format!(
        "Package: portsentry\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {size_kib}\n\
         Depends: {depends}\n\
         Recommends: net-tools\n\
         Suggests: prometheus\n\
         Section: net\n\
         Priority: optional\n\
         Description: port-scan detector and blocker in XDP, compatible with PortSentry\n \
         portsentry watches TCP and UDP ports for scans with an XDP program attached to\n \
         the network interfaces, and bans the scanners there, in the kernel, before\n \
         their packets reach the network stack. It reads PortSentry 1.2's configuration\n \
         (/etc/portsentry/portsentry.conf and the ignore file) and runs its KILL_ROUTE,\n \
         KILL_HOSTS_DENY and KILL_RUN_CMD actions.\n \
         .\n \
         This package takes the place of Debian's portsentry 1.2 package and keeps its\n \
         configuration. Bans can expire, survive restarts and upgrades, and are listed,\n \
         added and lifted with the portsentry command; Prometheus metrics and alert\n \
         rules are included.\n"
    )
}

fn stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    stdout(cmd).map(|_| ())
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_bytes(to, &bytes, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    write_bytes(to, text.as_bytes(), mode)
}

fn write_bytes(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n`, as Debian compresses man pages and documentation.
fn gzip(path: &Path) -> Result<()> {
    run(Command::new("gzip").args(["-9nf"]).arg(path))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc2822() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(1_764_676_320), "Tue, 02 Dec 2025 11:52:00 +0000");
        assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn the_unit_runs_the_packaged_binary() {
        let unit = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/portsentry.service"),
        )
        .unwrap();
        let packaged = packaged_unit(&unit).unwrap();
        assert!(packaged.contains("ExecStart=/usr/sbin/portsentry run"));
        assert!(!packaged.contains("/usr/local"));
        assert!(packaged.contains("[Unit]") && packaged.contains("[Install]"));
    }

    #[test]
    fn the_conffile_is_debians_with_interfaces_commented() {
        let stock = "# stock\nSCAN_TRIGGER=\"0\"\n";
        let conf = packaged_conf(stock);
        assert!(conf.starts_with(stock));
        assert!(conf.contains("\n#INTERFACES=\"eth0\"\n"));
        assert!(!conf.lines().any(|l| l.starts_with("INTERFACES")));
    }
}
