// The Debian packages xtask installs, as (package, a binary that shows it is there).
//
// Kept in a file of their own, with no `use` and no inner doc comment, so that
// `tests/tests/installed_programs.rs` can `include!` it and check every external program
// the tests, the bench and the demo run against these lists.

/// Debian packages the tests (and the demo) use, with a binary that shows each is there.
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("nmap", "nmap"),
    ("hping3", "hping3"),
    ("iproute2", "ip"),
    ("util-linux", "nsenter"),
    ("procps", "ps"),
    ("iputils-ping", "ping"),
    // What a scanner gets: masscan next to nmap.
    ("masscan", "masscan"),
    // tests/tests/false_positives.rs: a host gone silent (a DROP rule in the server's
    // namespace) and what each scanner was answered (counting rules), IPv4 and IPv6.
    ("iptables", "iptables"),
    // tests/tests/deb_package.rs: a throwaway Debian root for the package, and the checks
    // of what it installs. (promtool comes from Debian's prometheus package unpacked, not
    // installed: installing it would start a Prometheus server on the test machine.)
    ("debootstrap", "debootstrap"),
    ("lintian", "lintian"),
    ("man-db", "man"),
    ("systemd", "systemd-analyze"),
    // The unpacked crowdsec and cscli (UNPACKED_PACKAGES) link it; `dpkg-deb -x` installs
    // no dependency.
    ("libsqlite3-0", "libsqlite3.so.0"),
    // tests/tests/crowdsec.rs: a trigger in the test Local API's own database.
    ("sqlite3", "sqlite3"),
];

/// What `cargo xtask deb` (and `cargo xtask test`, which builds the package for its test)
/// needs besides the base system.
pub const DEB_PACKAGES: &[(&str, &str)] = &[
    // dpkg-shlibdeps: the package's Depends on the C library.
    ("dpkg-dev", "dpkg-shlibdeps"),
    // strip, as dh_strip does.
    ("binutils", "strip"),
];

/// What `cargo xtask bench` compares against, besides the test packages.
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("xdp-tools", "xdp-filter"),
    ("netsniff-ng", "trafgen"),
    ("iptables", "iptables"),
    ("ipset", "ipset"),
    ("nftables", "nft"),
    // `--baseline-rev` checks another commit out (a clone has git already; a source
    // tarball may not).
    ("git", "git"),
];

/// Debian packages unpacked (`apt-get download` + `dpkg-deb -x`) under `target/unpacked/<package>/`
/// rather than installed, with the binaries the tests and the bench run from there: installing
/// them would run their maintainer scripts (crowdsec's registers a machine in the system-wide
/// database and tries to start a service). Tests start these themselves, in a temporary
/// directory on a loopback port.
pub const UNPACKED_PACKAGES: &[(&str, &[&str])] = &[
    // tests/tests/crowdsec.rs: a CrowdSec Local API (`crowdsec -no-cs`) and `cscli`.
    ("crowdsec", &["usr/bin/crowdsec", "usr/bin/cscli"]),
    // The bench: CrowdSec's own firewall bouncer (nftables mode) on the same list, side by
    // side with ours; run in a namespace of the bench's (its postinst would register it
    // with a system-wide crowdsec and start a service).
    (
        "crowdsec-firewall-bouncer",
        &["usr/bin/crowdsec-firewall-bouncer"],
    ),
];
