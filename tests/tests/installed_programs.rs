//! Every external program the tests, the bench and xtask (the demo and the package
//! included) run is there on a bare Debian machine after `cargo xtask test | bench | demo |
//! deb`: it comes from a package
//! in xtask's lists (`xtask/src/packages.rs`) that the command installs, or from the base
//! system, or is the Rust toolchain or one of the project's own binaries.
//!
//! Pure (no root, no kernel): `portsentry_tests::program_scan` reads the sources of
//! `tests/` and `xtask/` and finds the programs (see there for how).

use std::path::Path;

use portsentry_tests::program_scan::{self, Found};

include!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../xtask/src/packages.rs"
));

/// Programs of every Debian system: from Essential packages or packages of Priority
/// required (what debootstrap installs in even its minbase variant).
const BASE: &[(&str, &str)] = &[
    ("sh", "dash: Essential"),
    ("dd", "coreutils: Essential"),
    ("id", "coreutils: Essential"),
    ("seq", "coreutils: Essential"),
    ("sleep", "coreutils: Essential"),
    ("timeout", "coreutils: Essential"),
    ("true", "coreutils: Essential"),
    ("grep", "grep: Essential"),
    ("unshare", "util-linux: Essential"),
    (
        "nsenter",
        "util-linux: Essential (also listed as a test package)",
    ),
    ("mount", "mount: Priority required"),
    ("umount", "mount: Priority required"),
    ("dpkg", "dpkg: Essential"),
    ("dpkg-deb", "dpkg: Essential"),
    ("dpkg-query", "dpkg: Essential"),
    ("md5sum", "coreutils: Essential"),
    ("cat", "coreutils: Essential"),
    ("mkdir", "coreutils: Essential"),
    ("chroot", "coreutils: Essential"),
    ("tar", "tar: Essential"),
    ("gzip", "gzip: Essential"),
    ("apt-get", "apt: Priority required"),
];

/// Built into the shell (dash), whatever is installed.
const SHELL_BUILTINS: &[&str] = &["echo", "exit", "exec", "command", "kill"];

/// The toolchain `cargo xtask` itself runs in, and what xtask builds.
const TOOLCHAIN: &[&str] = &["cargo", "rustc", "rustup", "bpf-linker", "portsentry"];

/// Run but deliberately not installed, each with the reason.
const NOT_INSTALLED: &[(&str, &str)] = &[(
    "sudo",
    "only `cargo xtask run` as a non-root user runs it, to become root; installing it would \
     need root already",
)];

/// Programs whose package is not named by their own binary in the lists.
const PROVIDED_BY: &[(&str, &str)] = &[
    ("pgrep", "procps"),
    ("pkill", "procps"),
    ("iptables-legacy", "iptables"),
    ("ip6tables", "iptables"),
    ("iptables-legacy-restore", "iptables"),
];

/// Who runs a source file, which decides the packages installed before it runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Runner {
    /// `cargo xtask test`: TEST_PACKAGES.
    Test,
    /// `cargo xtask bench`: TEST_PACKAGES and BENCH_PACKAGES.
    Bench,
    /// `cargo xtask demo`: TEST_PACKAGES.
    Demo,
    /// `cargo xtask deb` (also run by `cargo xtask test`): DEB_PACKAGES.
    Deb,
    /// xtask itself, before it installs anything.
    Xtask,
}

impl Runner {
    fn of(rel: &str) -> Runner {
        if rel == "xtask/src/demo.rs" {
            Runner::Demo
        } else if rel == "xtask/src/deb.rs" {
            Runner::Deb
        } else if rel == "xtask/src/baseline.rs" {
            // `cargo xtask bench -- --baseline-rev`, after the bench's packages.
            Runner::Bench
        } else if rel.starts_with("xtask/") {
            Runner::Xtask
        } else if rel == "tests/src/bench.rs" || rel.starts_with("tests/src/bin/") {
            Runner::Bench
        } else {
            Runner::Test
        }
    }

    fn packages(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Runner::Test | Runner::Demo => TEST_PACKAGES.to_vec(),
            Runner::Bench => [TEST_PACKAGES, BENCH_PACKAGES].concat(),
            Runner::Deb => DEB_PACKAGES.to_vec(),
            Runner::Xtask => Vec::new(),
        }
    }

    fn lists(self) -> &'static str {
        match self {
            Runner::Test | Runner::Demo => "TEST_PACKAGES",
            Runner::Bench => "TEST_PACKAGES or BENCH_PACKAGES",
            Runner::Deb => "DEB_PACKAGES",
            Runner::Xtask => "(none: xtask runs it before installing anything)",
        }
    }
}

/// A program found in the sources, and who runs it.
#[derive(Debug)]
struct Use {
    program: String,
    file: String,
    line: usize,
    runner: Runner,
}

impl From<Found> for Use {
    fn from(f: Found) -> Use {
        Use {
            runner: Runner::of(&f.file),
            program: f.program,
            file: f.file,
            line: f.line,
        }
    }
}

/// Every program the tests, the bench and xtask run. (Not portsentry-user/src: the daemon
/// itself runs only /bin/sh, with the commands the tests configure, which are scanned
/// here; its unit tests' sample configs never run.)
fn scan() -> Vec<Use> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    program_scan::scan(root, &["tests/src", "tests/tests", "xtask/src"])
        .into_iter()
        .map(Use::from)
        .collect()
}

/// The programs of a source text, as if it were the file `rel`.
fn uses_in(rel: &str, src: &str) -> Vec<Use> {
    program_scan::programs_in(rel, src)
        .into_iter()
        .map(Use::from)
        .collect()
}

/// Why `u` is there on a fresh machine, or the complaint naming its file and line.
fn check(u: &Use) -> Result<String, String> {
    let p = u.program.as_str();
    let packages = u.runner.packages();
    let package = PROVIDED_BY
        .iter()
        .find(|(bin, _)| *bin == p)
        .map(|(_, pkg)| *pkg)
        .or_else(|| {
            packages
                .iter()
                .find(|(_, bin)| *bin == p)
                .map(|(pkg, _)| *pkg)
        });
    if let Some(pkg) = package
        && packages.iter().any(|(name, _)| *name == pkg)
    {
        return Ok(format!("package {pkg}"));
    }
    if let Some((_, why)) = BASE.iter().find(|(b, _)| *b == p) {
        return Ok(format!("base system ({why})"));
    }
    if SHELL_BUILTINS.contains(&p) {
        return Ok("shell builtin".into());
    }
    if TOOLCHAIN.contains(&p) {
        return Ok("toolchain or project binary".into());
    }
    if u.runner == Runner::Xtask
        && let Some((_, why)) = NOT_INSTALLED.iter().find(|(b, _)| *b == p)
    {
        return Ok(format!("not installed: {why}"));
    }
    Err(format!(
        "{}:{}: `{p}` ({:?}) is not installed on a bare Debian machine: no package in {} \
         provides it (xtask/src/packages.rs) and it is not in BASE",
        u.file,
        u.line,
        u.runner,
        u.runner.lists()
    ))
}

#[test]
fn every_program_run_is_installed() {
    let uses = scan();
    for u in &uses {
        eprintln!(
            "{}:{}: {} ({:?}): {}",
            u.file,
            u.line,
            u.program,
            u.runner,
            check(u).unwrap_or_else(|e| e)
        );
    }
    // The scanner finds what is known to be there.
    for (program, runner) in [
        ("nmap", Runner::Test),
        ("hping3", Runner::Test),
        ("timeout", Runner::Test),
        ("ip", Runner::Test),
        ("nsenter", Runner::Test),
        ("ping", Runner::Test),
        ("pgrep", Runner::Test),
        ("mount", Runner::Test),
        ("unshare", Runner::Test),
        ("seq", Runner::Test),
        ("echo", Runner::Test),
        ("sleep", Runner::Test),
        ("trafgen", Runner::Bench),
        ("xdp-filter", Runner::Bench),
        ("iptables-legacy", Runner::Bench),
        ("ipset", Runner::Bench),
        ("nft", Runner::Bench),
        ("iptables", Runner::Bench),
        ("nmap", Runner::Demo),
        ("ping", Runner::Demo),
        ("ip", Runner::Demo),
        ("nsenter", Runner::Demo),
        ("rustup", Runner::Xtask),
        ("apt-get", Runner::Xtask),
        ("strip", Runner::Deb),
        ("dpkg-shlibdeps", Runner::Deb),
        ("debootstrap", Runner::Test),
        ("lintian", Runner::Test),
        ("chroot", Runner::Test),
    ] {
        assert!(
            uses.iter()
                .any(|u| u.program == program && u.runner == runner),
            "the scan found no {program} run by {runner:?}: is the scanner broken?"
        );
    }
    assert!(uses.len() >= 60, "only {} uses found", uses.len());
    let complaints: Vec<String> = uses.iter().filter_map(|u| check(u).err()).collect();
    assert!(complaints.is_empty(), "\n{}", complaints.join("\n"));
}

#[test]
fn the_lists_hold_together() {
    let all = [TEST_PACKAGES, BENCH_PACKAGES, DEB_PACKAGES].concat();
    // A package is either installed or unpacked (its maintainer scripts never run), not both.
    for (package, binaries) in UNPACKED_PACKAGES {
        assert!(
            !all.iter().any(|(p, _)| p == package),
            "{package} is both installed and unpacked"
        );
        assert!(!binaries.is_empty(), "{package}: no binary listed");
    }
    for (program, package) in PROVIDED_BY {
        assert!(
            all.iter().any(|(p, _)| p == package),
            "{program}: {package} is in no list"
        );
    }
    // Nothing is allowed for nothing: every BASE and PROVIDED_BY entry is used.
    let uses = scan();
    for program in BASE
        .iter()
        .map(|b| b.0)
        .chain(PROVIDED_BY.iter().map(|p| p.0))
    {
        assert!(
            uses.iter().any(|u| u.program == program),
            "{program} is listed but nothing runs it"
        );
    }
}

#[test]
fn an_unlisted_program_is_named_with_its_file_and_line() {
    let src = "fn f(ns: &Netns) {\n    let _ = std::process::Command::new(\"bpftool\")\n        \
               .arg(\"-j\")\n        .output();\n    ns.exec(&format!(\"ip link set {} up && \
               tc qdisc show\", 1));\n}\n";
    let uses = uses_in("tests/tests/example.rs", src);
    let complaints: Vec<String> = uses.iter().filter_map(|u| check(u).err()).collect();
    assert_eq!(complaints.len(), 2, "{complaints:?}");
    assert!(
        complaints[0].starts_with("tests/tests/example.rs:2: `bpftool`"),
        "{}",
        complaints[0]
    );
    assert!(
        complaints[1].starts_with("tests/tests/example.rs:5: `tc`"),
        "{}",
        complaints[1]
    );
    // The same program is fine where its package is installed: trafgen in the bench only.
    let src = "fn f() { Command::new(\"trafgen\"); }";
    assert!(check(&uses_in("tests/src/bin/b.rs", src)[0]).is_ok());
    assert!(check(&uses_in("tests/tests/t.rs", src)[0]).is_err());
}
