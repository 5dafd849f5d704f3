//! Steps the end-to-end tests share: start the daemon of a [`Workdir`] in a
//! [`TestNet`]'s server, probe from and reach the server as an attacker address, and read
//! `portsentry status --json`.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::{
    daemon::{Daemon, Workdir},
    netns::{TestNet, tcp_connect},
};

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
