//! Steps the end-to-end tests share: start the daemon of a [`Workdir`] in a
//! [`TestNet`]'s server, probe from and reach the server as an attacker address, and read
//! `portsentry status --json`; write a ban journal for a daemon to restore.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use portsentry_common::{ScanType, maps::BanOrigin};
use portsentry_user::{
    bans::{Ban, BanStore, journal},
    kinds::{ModeToken, Protocol},
};

use crate::{
    daemon::{Daemon, Workdir, wait_until},
    netns::{TestNet, tcp_connect},
};

/// The daemon's response slots (`MAX_PARALLEL_JOBS`).
pub const RESPONSE_SLOTS: usize = 16;

/// The config lines of a KILL_ROUTE that writes `route ADDR` to the workdir's file
/// `order`, then holds its response slot for eight seconds (for
/// [`hold_every_response_slot`]).
pub fn slow_route(wd: &Workdir) -> String {
    let order = wd.path("order").display().to_string();
    format!("KILL_ROUTE=\"echo route $TARGET$ >> {order}; sleep 8\"\n")
}

/// Probes from the first [`RESPONSE_SLOTS`] attacker addresses at once, and waits until
/// each one's response runs its [`slow_route`]: every slot is then held for a few
/// seconds, and the next scanner's response waits for one.
pub fn hold_every_response_slot(net: &TestNet, wd: &Workdir, d: &Daemon) {
    std::thread::scope(|s| {
        for ip in &net.attacker_v4[..RESPONSE_SLOTS] {
            s.spawn(move || probe(net, *ip));
        }
    });
    assert!(
        wait_until(Duration::from_secs(10), || wd
            .read("order")
            .lines()
            .filter(|l| l.starts_with("route "))
            .count()
            == RESPONSE_SLOTS),
        "{}",
        d.lines().join("\n")
    );
}

/// A server whose sixteen response slots all run a slow KILL_ROUTE
/// ([`a_response_waiting`]), and the seventeenth scanner, whose response waits for a
/// slot.
pub struct WaitingResponse {
    pub net: TestNet,
    pub wd: Workdir,
    pub d: Daemon,
    /// The seventeenth scanner.
    pub last: IpAddr,
    /// The service on port 80.
    pub svc: std::net::TcpListener,
}

/// A server (MAX_BANS_PER_SEC="0", [`slow_route`], the lines `extra` makes of its
/// workdir, a service on port 80) with every response slot held
/// ([`hold_every_response_slot`]), and a seventeenth scanner that probed once a
/// second ago: the daemon has its event, and its response waits for a slot.
pub fn a_response_waiting(extra: impl FnOnce(&Workdir) -> String) -> WaitingResponse {
    let net = TestNet::new(RESPONSE_SLOTS as u8);
    let wd = Workdir::new();
    let lines = format!("MAX_BANS_PER_SEC=\"0\"\n{}{}", slow_route(&wd), extra(&wd));
    wd.config(&net.server_if, &lines);
    let svc = net
        .server
        .enter(|| std::net::TcpListener::bind("0.0.0.0:80").unwrap());
    let d = start(&net, &wd);
    hold_every_response_slot(&net, &wd, &d);
    let last = net.attacker_v4[RESPONSE_SLOTS];
    probe(&net, last);
    std::thread::sleep(Duration::from_secs(1));
    WaitingResponse {
        net,
        wd,
        d,
        last,
        svc,
    }
}

/// Starts the workdir's daemon in the server namespace.
pub fn start(net: &TestNet, wd: &Workdir) -> Daemon {
    Daemon::start(&net.server, &["run", "-c", wd.conf().to_str().unwrap()])
}

/// A SYN probe from `src` to a closed watched port (refused, or dropped if banned).
pub fn probe(net: &TestNet, src: IpAddr) {
    let dst = SocketAddr::new(net.server_v4, 23);
    let _ = net
        .attacker
        .enter(|| tcp_connect(src, dst, Duration::from_millis(300)));
}

/// Whether `src` can open a connection to the service on port 80.
pub fn reaches(net: &TestNet, src: IpAddr) -> bool {
    let dst = SocketAddr::new(net.server_v4, 80);
    net.attacker
        .enter(|| tcp_connect(src, dst, Duration::from_millis(800)))
        .is_ok()
}

/// `portsentry status --json`.
pub fn status(wd: &Workdir) -> serde_json::Value {
    let (ok, out, err) = wd.cli(&["status", "--json"]);
    assert!(ok, "status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}

/// A counter of a `status --json`, by name (0 when absent).
pub fn counter(st: &serde_json::Value, name: &str) -> u64 {
    st["counters"][name].as_u64().unwrap_or(0)
}

/// The bans in `portsentry status --json`.
pub fn bans(wd: &Workdir) -> Vec<serde_json::Value> {
    status(wd)["bans"].as_array().unwrap().clone()
}

/// The networks of the bans in a status.
pub fn ban_nets(st: &serde_json::Value) -> Vec<String> {
    st["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["net"].as_str().unwrap().to_owned())
        .collect()
}

/// Whether `ip` has a ban of its own now.
pub fn banned(wd: &Workdir, ip: IpAddr) -> bool {
    ban_nets(&status(wd)).contains(&format!("{ip}/32"))
}

/// Whether `ip` has a line in the workdir's history file (it was acted on).
pub fn history_has(wd: &Workdir, ip: IpAddr) -> bool {
    wd.read("portsentry.history")
        .lines()
        .any(|l| l.contains(&format!("/{ip} Port: ")))
}

/// Waits (15 s at most) for `ip`'s history line; panics with the daemon's log.
pub fn wait_banned(wd: &Workdir, d: &Daemon, ip: IpAddr) {
    assert!(
        crate::daemon::wait_until(Duration::from_secs(15), || history_has(wd, ip)),
        "{ip} was not banned; log:\n{}\nhistory:\n{}",
        d.lines().join("\n"),
        wd.read("portsentry.history")
    );
}

/// Runs nmap from `src` in the attacker namespace against `dst` (`scan`: its scan
/// options, `ports`: its `-p`), one try per probe; fails when nmap scanned nothing.
pub fn nmap(net: &TestNet, scan: &str, src: IpAddr, dst: IpAddr, ports: &str) {
    nmap_hosts(net, scan, src, &[dst], ports);
}

/// Like [`nmap`], over several of the server's addresses (a horizontal scan).
pub fn nmap_hosts(net: &TestNet, scan: &str, src: IpAddr, dsts: &[IpAddr], ports: &str) {
    let six = if src.is_ipv6() { "-6" } else { "" };
    let targets: Vec<String> = dsts.iter().map(IpAddr::to_string).collect();
    let out = net.attacker.try_exec(&format!(
        "nmap {six} -n -Pn {scan} -e {iface} -S {src} -p {ports} --max-retries 0 \
         --host-timeout 30s -T4 {targets}",
        iface = net.attacker_if,
        targets = targets.join(" ")
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let up = match dsts.len() {
        1 => "(1 host up)".to_owned(),
        n => format!("({n} hosts up)"),
    };
    // nmap exits 0 even when it scanned nothing ("failed to determine route").
    assert!(
        out.status.success() && stdout.contains(&up),
        "nmap {scan} from {src} did not scan: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `portsentry check-config -c FILE` over a file holding `text`: exit code, stdout,
/// stderr.
pub fn check_config(file: &std::path::Path, text: &str) -> (Option<i32>, String, String) {
    std::fs::write(file, text).unwrap();
    let out = std::process::Command::new(crate::daemon::binary())
        .args(["check-config", "-c"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A permanent scan ban of `net` (a TCP SYN probe to port 22), made at `now`.
pub fn scan_ban(net: IpNet, now: SystemTime) -> Ban {
    Ban {
        net,
        origin: BanOrigin::Scan,
        since: now,
        expires: None,
        port: 22,
        proto: Some(Protocol::Tcp),
        scan_type: Some(ScanType::TcpSyn),
        mode: Some(ModeToken::Atcp),
        count: 1,
        escalated: None,
    }
}

/// Writes the ban journal of `state_dir` with a scan ban of each of `nets`, as a
/// compaction would (one record each).
pub fn write_journal(state_dir: &Path, nets: impl IntoIterator<Item = IpNet>) {
    let now = SystemTime::now();
    let mut store = BanStore::new();
    for net in nets {
        store.insert(scan_ban(net, now));
    }
    std::fs::create_dir_all(state_dir).unwrap();
    std::fs::write(journal::path(state_dir), journal::encode_store(&store)).unwrap();
}

/// A tiny tmpfs of a test's own, mounted on a directory of its workdir; unmounted when
/// dropped. For writes that must meet a full disk.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, "64k") on `dir`, which must exist.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        crate::netns::sh(&format!(
            "mount -t tmpfs -o size={size} tmpfs {}",
            dir.display()
        ));
        Tmpfs(dir.to_path_buf())
    }

    /// Fills what is left of it with the file `filler`; its path.
    pub fn fill(&self) -> std::path::PathBuf {
        let filler = self.0.join("filler");
        crate::netns::sh(&format!(
            "dd if=/dev/zero of={} bs=4k count=4096 2>/dev/null || true",
            filler.display()
        ));
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
