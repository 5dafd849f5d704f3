//! 3. Memory: the daemon's resident memory per ban (the kernel's is in `per_packet`).

use std::time::{Duration, Instant};

use ipnet::IpNet;
use portsentry_tests::{
    daemon::{Daemon, Workdir},
    netns::TestNet,
};

use crate::filler;

/// The daemon's resident memory with no bans and with `n` bans restored from its state
/// file (bytes per ban = the difference / n).
pub(crate) fn daemon_memory(n: u32) {
    use portsentry_common::{ScanType, maps::BanOrigin};
    use portsentry_user::bans::{Ban, BanStore};
    let rss = |pid: u32| -> (u64, u64) {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    };
    let mut rows = Vec::new();
    for bans in [0, n] {
        let net = TestNet::new(0);
        let wd = Workdir::new();
        let conf = wd.config(&net.server_if, &format!("MAX_BANS=\"{}\"\n", n + 16));
        let mut store = BanStore::new();
        let now = std::time::SystemTime::now();
        for i in 0..bans {
            let a = filler(i);
            store.insert(Ban {
                net: IpNet::from(a),
                origin: BanOrigin::Scan,
                since: now,
                expires: None,
                port: 22,
                proto: Some(portsentry_user::kinds::Protocol::Tcp),
                scan_type: Some(ScanType::TcpSyn),
                mode: Some(portsentry_user::kinds::ModeToken::Atcp),
                name: a.to_string(),
                count: 1,
                escalated: None,
            });
        }
        portsentry_user::bans::state::save(&wd.path("state"), &store).unwrap();
        drop(store);
        let t = Instant::now();
        let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
        let started = t.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let (now_rss, peak) = rss(d.child.id());
        d.stop();
        rows.push((bans, now_rss, peak, started));
    }
    println!("## Daemon memory (VmRSS after start-up; peak = VmHWM)\n");
    println!("| bans restored | RSS | peak | start-up |\n|---:|---:|---:|---:|");
    for (b, r, p, t) in &rows {
        println!(
            "| {b} | {:.1} MiB | {:.1} MiB | {:.1?} |",
            *r as f64 / 1048576.0,
            *p as f64 / 1048576.0,
            t
        );
    }
    let per = (rows[1].1 as f64 - rows[0].1 as f64) / f64::from(n);
    println!(
        "\nDaemon memory per ban: {per:.0} bytes (plus {} bytes in the kernel map, above).\n",
        112
    );
}
