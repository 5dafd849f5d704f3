//! The Debian package (`cargo xtask deb`; `cargo xtask test` builds it and names it in
//! PORTSENTRY_DEB), installed into a throwaway Debian root, never into this machine's own
//! system: a minbase root of this host's Debian release made by debootstrap (once; kept as
//! a tarball under target/deb-test/) and unpacked afresh into a temporary folder, where
//! dpkg runs through chroot. In it, Debian's portsentry 1.2 package goes in first, the
//! admin edits its files, and ours is installed over it; the admin enables and disables
//! the unit around upgrades; then it is removed, installed again and removed with a
//! configuration the unload refuses, then purged.
//!
//! A policy-rc.d forbids starting services in the root (1.2's init script would otherwise
//! start PortSentry 1.2 on this machine's network), and systemd does not run in it, so
//! nothing is attached or started: the maintainer scripts' service handling is seen through
//! the files they leave (the enablement link) and the notes they print.
//!
//! Also checked: the unit passes `systemd-analyze verify`, `man -l` renders the pages
//! without a warning, the bash completion loads, `promtool check rules` (from Debian's
//! prometheus package, unpacked) accepts the alert rules, and lintian finds no error.
//!
//! Root only (chroot, dpkg as root); under CI=true a missing privilege or package fails.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use portsentry_tests::require_kernel;

fn cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/deb-test")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`; panics with its output when it fails.
fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        text(&out)
    );
    out
}

/// This host's Debian release and the mirror its apt uses.
fn release() -> (String, String) {
    let os = fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .expect("VERSION_CODENAME in /etc/os-release")
        .trim_matches('"')
        .to_owned();
    let mut sources = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            sources.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    let mirror = sources
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let uri = l
                .strip_prefix("URIs:")
                .map(|u| u.split_whitespace().next().unwrap_or_default())
                .or_else(|| {
                    l.strip_prefix("deb ")
                        .and_then(|r| r.split_whitespace().find(|w| w.starts_with("http")))
                })?;
            (uri.ends_with("/debian") || uri.ends_with("/debian/")).then(|| uri.to_owned())
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned());
    (codename, mirror)
}

/// A minbase root with what Debian's portsentry 1.2 depends on, as a tarball made once.
fn base_tarball() -> PathBuf {
    let (codename, mirror) = release();
    let tar = cache().join(format!("{codename}-minbase.tar"));
    if tar.exists() {
        return tar;
    }
    let dir = cache().join(format!("{codename}-minbase.tmp"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    eprintln!(
        "debootstrap {codename} from {mirror} (once; cached as {})",
        tar.display()
    );
    ok(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            // portsentry 1.2's Depends (libfile-temp-perl is perl's), and
            // systemd for `systemd-analyze --root` (its targets) and deb-systemd-helper.
            "--include=net-tools,procps,perl,systemd",
            &codename,
        ])
        .arg(&dir)
        .arg(&mirror));
    let part = tar.with_extension("tar.part");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&part)
        .arg("."));
    fs::rename(&part, &tar).unwrap();
    let _ = fs::remove_dir_all(&dir);
    tar
}

/// `apt-get download NAME` into the cache (once); the .deb.
fn download(name: &str) -> PathBuf {
    let dir = cache().join("debs").join(name);
    let find = |dir: &Path| {
        fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|x| x == "deb")
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}_")))
            })
    };
    if let Some(deb) = find(&dir) {
        return deb;
    }
    // Downloaded aside and renamed into place: a download cut short (the run killed)
    // is never taken for the package.
    let partial = cache().join("debs").join(format!(".{name}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).unwrap();
    let fetch = || {
        Command::new("apt-get")
            .args(["download", name])
            .current_dir(&partial)
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // An index older than the archive (a point release since) names a file gone.
    if !fetch() {
        ok(Command::new("apt-get").args(["update", "-q"]));
        ok(Command::new("apt-get")
            .args(["download", name])
            .current_dir(&partial));
    }
    let got = find(&partial).unwrap_or_else(|| panic!("apt-get download {name} left no .deb"));
    fs::create_dir_all(&dir).unwrap();
    let deb = dir.join(got.file_name().unwrap());
    fs::rename(&got, &deb).unwrap();
    let _ = fs::remove_dir_all(&partial);
    deb
}

/// A throwaway Debian root.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let tar = base_tarball();
        let dir = tempfile::Builder::new()
            .prefix("root-")
            .tempdir_in(cache())
            .unwrap();
        ok(Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .arg("-xf")
            .arg(&tar));
        let root = Root { dir };
        // No service starts in here (invoke-rc.d asks this first).
        let policy = root.path("/usr/sbin/policy-rc.d");
        fs::write(&policy, "#!/bin/sh\nexit 101\n").unwrap();
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o755)).unwrap();
        root
    }

    /// A path inside the root.
    fn path(&self, abs: &str) -> PathBuf {
        self.dir.path().join(abs.trim_start_matches('/'))
    }

    fn sh(&self, script: &str) -> Command {
        let mut c = Command::new("chroot");
        c.arg(self.dir.path())
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C");
        c
    }

    /// Runs `script` in the root; panics when it fails.
    fn run(&self, script: &str) -> String {
        text(&ok(&mut self.sh(script)))
    }

    /// Copies `deb` into the root's /tmp; its path there.
    fn put(&self, deb: &Path) -> String {
        let name = deb.file_name().unwrap().to_string_lossy().into_owned();
        fs::copy(deb, self.path("/tmp").join(&name)).unwrap();
        format!("/tmp/{name}")
    }

    fn read(&self, abs: &str) -> String {
        fs::read_to_string(self.path(abs)).unwrap_or_else(|e| panic!("{abs}: {e}"))
    }
}

/// promtool from Debian's prometheus package, unpacked under the cache.
fn promtool() -> PathBuf {
    let bin = cache().join("prometheus/usr/bin/promtool");
    if !bin.exists() {
        // Unpacked aside and renamed into place, as the download is.
        let (dir, partial) = (
            cache().join("prometheus"),
            cache().join("prometheus.partial"),
        );
        let _ = fs::remove_dir_all(&partial);
        ok(Command::new("dpkg-deb")
            .arg("-x")
            .arg(download("prometheus"))
            .arg(&partial));
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&partial, &dir).unwrap();
    }
    bin
}

fn our_deb() -> Option<PathBuf> {
    match std::env::var_os("PORTSENTRY_DEB") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PORTSENTRY_DEB is not set: run this test with `cargo xtask test`")
        }
        None => {
            eprintln!(
                "skipping: PORTSENTRY_DEB is not set (`cargo xtask test` builds the package)"
            );
            None
        }
    }
}

const CONF: &str = "/etc/portsentry/portsentry.conf";
const IGNORE: &str = "/etc/portsentry/portsentry.ignore";
const STATIC: &str = "/etc/portsentry/portsentry.ignore.static";
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/portsentry.service";

#[test]
fn replaces_debians_portsentry_and_keeps_the_admins_files() {
    require_kernel!();
    let Some(deb) = our_deb() else { return };
    let version = text(&ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Version")))
    .trim()
    .to_owned();
    let root = Root::new();

    // Debian's PortSentry 1.2, as a server has it: installed, its ignore file built by its
    // init script, and both of its files edited by the admin.
    let old = root.put(&download("portsentry"));
    root.run(&format!("dpkg -i {old}"));
    // Its runlevel links (its postinst's update-rc.d) and debconf questions.
    let rc_links = || -> Vec<String> {
        (0..=6)
            .map(|l| format!("/etc/rc{l}.d"))
            .chain(["/etc/rcS.d".to_owned()])
            .filter_map(|d| fs::read_dir(root.path(&d)).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("portsentry"))
            .collect()
    };
    assert!(!rc_links().is_empty(), "1.2 made no runlevel links");
    let questions = || {
        fs::read_to_string(root.path("/var/cache/debconf/config.dat"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Name: portsentry/"))
            .count()
    };
    assert!(questions() > 0, "1.2 registered no debconf question");
    root.run("/usr/lib/portsentry/portsentry-build-ignore-file");
    assert!(root.read(IGNORE).contains("This file was generated by"));
    let stock = root.read(CONF);
    assert!(
        stock.contains("\nSCAN_TRIGGER=\"0\"\n"),
        "Debian's stock file changed?"
    );
    let admins = stock.replace("\nSCAN_TRIGGER=\"0\"\n", "\nSCAN_TRIGGER=\"2\"\n")
        + "# changed by the admin\n";
    fs::write(root.path(CONF), &admins).unwrap();
    // (An address our default ignore file does not name, even in a comment.)
    let static_list = root.read(STATIC) + "198.51.100.0/24\n";
    fs::write(root.path(STATIC), &static_list).unwrap();

    // Ours over it. The admin changed files the package changes too, so dpkg would ask;
    // unattended, --force-confold keeps the admin's (the package's go to *.dpkg-dist).
    let new = root.put(&deb);
    let install = root.run(&format!("dpkg --force-confdef --force-confold -i {new}"));
    eprintln!("{install}");
    assert_eq!(
        root.run("dpkg-query -W -f '${Version}' portsentry"),
        version,
        "not upgraded"
    );
    assert_eq!(
        root.read(CONF),
        admins,
        "the admin's portsentry.conf was not kept"
    );
    assert!(
        root.read(&format!("{CONF}.dpkg-dist"))
            .contains("#INTERFACES=\"eth0\"")
    );
    let ignore = root.read(IGNORE);
    assert!(
        ignore.lines().any(|l| l.trim() == "198.51.100.0/24"),
        "the admin's ignore entries were lost:\n{ignore}"
    );
    assert!(
        !ignore.contains("This file was generated by"),
        "1.2's generated ignore file is still in place"
    );
    // 1.2's other conffiles: the unchanged init script and ppp hooks are gone, the changed
    // static list is kept aside.
    for gone in [
        "/etc/init.d/portsentry",
        "/etc/ppp/ip-up.d/portsentry",
        STATIC,
    ] {
        assert!(!root.path(gone).exists(), "{gone} is still there");
    }
    assert_eq!(root.read(&format!("{STATIC}.dpkg-bak")), static_list);
    assert_eq!(
        rc_links(),
        Vec::<String>::new(),
        "1.2's runlevel links are left"
    );
    // No INTERFACES: not enabled, not started, and the admin is told.
    assert!(
        install.contains("portsentry: not started: no INTERFACES"),
        "{install}"
    );
    assert!(
        !root.path(ENABLED).exists(),
        "enabled before an interface is set"
    );

    // Our binary accepts the admin's file as installed, ignore list included.
    let check = root.run(&format!("/usr/sbin/portsentry check-config -c {CONF}"));
    assert!(check.contains("SCAN_TRIGGER=2"), "{check}");
    assert!(check.contains("198.51.100.0/24"), "{check}");
    // The modes 1.2 ran (its postinst's TCP_MODE="tcp", UDP_MODE="udp" in
    // /etc/default/portsentry, which its init script read) are the ones the unit runs:
    // the unit's own arguments, given to check-config.
    assert!(
        root.read("/etc/default/portsentry")
            .contains("TCP_MODE=\"tcp\"")
    );
    let unit = root.read("/lib/systemd/system/portsentry.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit's ExecStart");
    let check = root.run(&exec.replacen(" run ", " check-config ", 1));
    assert!(
        check.contains("modes from:    /etc/default/portsentry"),
        "{check}"
    );
    assert!(check.contains("TCP mode:      stealth"), "{check}");
    assert!(check.contains("UDP mode:      stealth"), "{check}");
    // Beside the system's configuration file the file applies unasked (check-config,
    // status, ban and unban agree with the daemon).
    let check = root.run(&format!("/usr/sbin/portsentry check-config -c {CONF}"));
    assert!(check.contains("TCP mode:      stealth"), "{check}");

    // The unit is recorded as not enabled. The admin names an interface, enables the
    // unit by hand as the note said, then disables it: an upgrade (the same package
    // again) keeps it disabled. The record removed first, as a release before this one
    // left it: it kept no record of a unit it did not enable, deb-systemd-helper's
    // was-enabled is true for a unit with none, and the upgrade enabled it again.
    let record = "/var/lib/systemd/deb-systemd-helper-enabled/portsentry.service.dsh-also";
    assert!(root.path(record).exists(), "no record of the unit");
    fs::remove_file(root.path(record)).unwrap();
    fs::write(root.path(CONF), admins.clone() + "INTERFACES=\"lo\"\n").unwrap();
    fs::write(root.path("/var/lib/portsentry/bans.json"), "{}\n").unwrap();
    root.run("systemctl enable portsentry.service");
    assert!(fs::symlink_metadata(root.path(ENABLED)).is_ok());
    root.run("systemctl disable portsentry.service");
    let upgrade = root.run(&format!("dpkg --force-confdef --force-confold -i {new}"));
    assert!(
        fs::symlink_metadata(root.path(ENABLED)).is_err(),
        "enabled again by an upgrade:\n{upgrade}"
    );
    // Enabled again: an upgrade keeps it enabled, keeps the state directory, and prints
    // no note.
    root.run("systemctl enable portsentry.service");
    let upgrade = root.run(&format!("dpkg --force-confdef --force-confold -i {new}"));
    assert!(!upgrade.contains("not started"), "{upgrade}");
    assert!(
        fs::symlink_metadata(root.path(ENABLED)).is_ok(),
        "not enabled after an upgrade:\n{upgrade}"
    );
    assert!(
        root.path("/var/lib/portsentry/bans.json").exists(),
        "state lost on upgrade"
    );

    // The unit, the pages, the completion, the alert rules, as installed.
    let unit = root.path("/lib/systemd/system/portsentry.service");
    assert!(
        fs::read_to_string(&unit)
            .unwrap()
            .contains("ExecStart=/usr/sbin/portsentry run")
    );
    // --man=no: verify would look the Documentation= pages up with this machine's man, not
    // the root's; they are rendered from the root below.
    let verify = ok(Command::new("systemd-analyze")
        .arg(format!("--root={}", root.dir.path().display()))
        .args([
            "verify",
            "--man=no",
            "/lib/systemd/system/portsentry.service",
        ]));
    assert!(
        verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    for page in [
        "/usr/share/man/man8/portsentry.8.gz",
        "/usr/share/man/man8/portsentry-check-config.8.gz",
        "/usr/share/man/man5/portsentry.conf.5.gz",
    ] {
        let out = ok(Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(root.path(page))
            .env("MANWIDTH", "80"));
        assert!(out.stderr.is_empty(), "man -l {page}: {}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("portsentry") && shown.len() > 500,
            "{page}:\n{shown}"
        );
    }
    let complete = root.run(
        "bash -c '. /usr/share/bash-completion/completions/portsentry && complete -p portsentry'",
    );
    assert!(complete.contains("-F _portsentry portsentry"), "{complete}");
    let rules = root.path("/usr/share/portsentry/prometheus/portsentry.rules.yml");
    let promtool = promtool();
    ok(Command::new(&promtool).args(["check", "rules"]).arg(&rules));
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus");
    assert_eq!(
        fs::read(&rules).unwrap(),
        fs::read(packaging.join("portsentry.rules.yml")).unwrap()
    );
    ok(Command::new(&promtool)
        .args(["test", "rules", "portsentry.rules.test.yml"])
        .current_dir(&packaging));

    // Remove: the program is unloaded (nothing pinned in here), the conffiles and the state
    // stay. Purge: they go.
    let remove = root.run("dpkg -r portsentry");
    assert!(
        remove.contains("nothing to unload"),
        "prerm did not unload:\n{remove}"
    );
    assert!(!root.path("/usr/sbin/portsentry").exists());
    assert_eq!(root.read(CONF), admins.clone() + "INTERFACES=\"lo\"\n");
    // Installed again (from the config-files state), then removed with a configuration
    // the unload refuses (a key set twice): it unloads with the defaults, since the
    // binary goes with the package. (Only a directory in here: the root has no bpffs.)
    root.run(&format!("dpkg --force-confdef --force-confold -i {new}"));
    let broken = admins.clone() + "INTERFACES=\"lo\"\nSCAN_TRIGGER=\"3\"\n";
    fs::write(root.path(CONF), &broken).unwrap();
    fs::create_dir_all(root.path("/sys/fs/bpf/portsentry")).unwrap();
    fs::write(root.path("/sys/fs/bpf/portsentry/PS_BANS"), "").unwrap();
    let remove = root.run("dpkg -r portsentry");
    assert!(
        remove.contains("unloaded with the default PIN_DIR") && remove.contains("unloaded:"),
        "{remove}"
    );
    assert!(!root.path("/sys/fs/bpf/portsentry").exists(), "{remove}");
    assert_eq!(root.read(CONF), broken);
    assert!(root.path(IGNORE).exists());
    assert!(root.path("/var/lib/portsentry/bans.json").exists());
    root.run("dpkg -P portsentry");
    assert_eq!(
        questions(),
        0,
        "1.2's debconf questions are left after purge"
    );
    for gone in [
        CONF,
        IGNORE,
        "/etc/portsentry",
        "/var/lib/portsentry",
        ENABLED,
    ] {
        assert!(
            fs::symlink_metadata(root.path(gone)).is_err(),
            "{gone} is left after purge"
        );
    }
}

#[test]
fn lintian_finds_no_error() {
    require_kernel!();
    let Some(deb) = our_deb() else { return };
    let out = Command::new("lintian")
        .args([
            "--fail-on",
            "error",
            "--display-info",
            "--no-tag-display-limit",
        ])
        .arg(&deb)
        .output()
        .expect("running lintian");
    // The warnings stay listed in the test's output.
    eprintln!("lintian:\n{}", text(&out));
    assert!(
        out.status.success(),
        "lintian found errors:\n{}",
        text(&out)
    );
}
