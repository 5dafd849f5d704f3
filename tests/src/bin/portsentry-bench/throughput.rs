//! Drop throughput: a banned source's UDP flood (trafgen) against portsentry, iptables,
//! ipset and nftables, with the machine's CPU time per dropped packet.

use ipnet::IpNet;
use portsentry_common::maps::BanEntry;
use portsentry_tests::netns::{Netns, TestNet};
use portsentry_user::kernel::{Dataplane, MapSizes};

use crate::filler;

/// Busy CPU time of the whole machine so far (user, system, irq and softirq), in
/// clock ticks.
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    v.iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum()
}

/// A server-side filter to compare: how to install it, and how many packets it dropped.
enum Filter {
    Portsentry,
    Iptables(u32),
    Ipset(u32),
    Nft(u32),
}

impl Filter {
    fn name(&self) -> String {
        match self {
            Filter::Portsentry => "portsentry (XDP, native)".to_owned(),
            Filter::Iptables(n) => format!("iptables-legacy, {n} DROP rules (PortSentry style)"),
            Filter::Ipset(n) => format!("ipset hash:ip ({n} entries) + 1 iptables rule"),
            Filter::Nft(n) => format!("nftables set ({n} elements)"),
        }
    }
}

/// Addresses for the other rules of a chain or set (never sending).
fn others(n: u32) -> impl Iterator<Item = String> {
    (1..n).map(|i| filler(i).to_string())
}

/// Floods a banned source's UDP packets across a veth pair for `secs` seconds with
/// trafgen and measures what the filter dropped and the machine's CPU per drop.
fn flood(filter: &Filter, secs: u64) -> Option<(f64, f64)> {
    let net = TestNet::new(0);
    let attacker = net.attacker_v4[0];
    let wd = tempfile::tempdir().unwrap();
    let mac = |ns: &Netns, ifname: &str| -> String {
        let out = ns.exec(&format!("ip -j link show {ifname}"));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    };
    let cfg = wd.path().join("flood.cfg");
    std::fs::write(
        &cfg,
        format!(
            "{{ eth(da={}, sa={}), ipv4(saddr={attacker}, daddr={}, ttl=64), udp(sport=4000, dport=9), fill(0x41, 18) }}\n",
            mac(&net.server, &net.server_if),
            mac(&net.attacker, &net.attacker_if),
            net.server_v4
        ),
    )
    .unwrap();
    let mut dp = None;
    match filter {
        Filter::Portsentry => {
            let mut d = Dataplane::load(&MapSizes::default(), None).expect("load");
            for a in std::iter::once(attacker).chain((1..10_000).map(filler)) {
                d.insert_ban(&IpNet::from(a), &BanEntry::default()).unwrap();
            }
            net.server
                .enter(|| d.attach(&net.server_if, portsentry_user::config::AttachMode::Native))
                .expect("attach");
            dp = Some(d);
        }
        Filter::Iptables(n) => {
            let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
            for o in others(*n) {
                rules += &format!("-A INPUT -s {o}/32 -j DROP\n");
            }
            rules += &format!("-A INPUT -s {attacker}/32 -j DROP\nCOMMIT\n");
            std::fs::write(wd.path().join("rules"), rules).unwrap();
            net.server.exec(&format!(
                "iptables-legacy-restore < {}",
                wd.path().join("rules").display()
            ));
        }
        Filter::Ipset(n) => {
            let mut set = String::from("create bans hash:ip maxelem 2000000\n");
            for o in std::iter::once(attacker.to_string()).chain(others(*n)) {
                set += &format!("add bans {o}\n");
            }
            std::fs::write(wd.path().join("set"), set).unwrap();
            net.server.exec(&format!(
                "ipset restore < {} && iptables-legacy -A INPUT -m set --match-set bans src -j DROP",
                wd.path().join("set").display()
            ));
        }
        Filter::Nft(n) => {
            let elems: Vec<String> = std::iter::once(attacker.to_string())
                .chain(others(*n))
                .collect();
            let rules = format!(
                "table inet ps {{\n set bans {{ type ipv4_addr; elements = {{ {} }} }}\n                  chain input {{ type filter hook input priority 0;\n ip saddr @bans counter drop\n }}\n}}\n",
                elems.join(", ")
            );
            std::fs::write(wd.path().join("nft"), rules).unwrap();
            net.server
                .exec(&format!("nft -f {}", wd.path().join("nft").display()));
        }
    }
    let before = dp.as_ref().map(|d| d.counters().unwrap());
    let t0 = busy_ticks();
    let out = net.attacker.try_exec(&format!(
        "timeout {secs} trafgen --dev {} --conf {} --cpus 1 -q",
        net.attacker_if,
        cfg.display()
    ));
    let t1 = busy_ticks();
    let sent: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .find_map(|l| {
            l.trim()
                .strip_suffix(" packets outgoing")
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0);
    let dropped: u64 = match filter {
        Filter::Portsentry => {
            let d = dp
                .as_ref()
                .unwrap()
                .counters()
                .unwrap()
                .since(&before.unwrap());
            d.get(portsentry_common::Counter::DropBanned)
        }
        Filter::Iptables(_) | Filter::Ipset(_) => {
            let out = net.server.exec("iptables-legacy -L INPUT -v -x -n");
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .filter(|l| l.contains("DROP"))
                .filter(|l| l.contains(&attacker.to_string()) || l.contains("match-set"))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        }
        Filter::Nft(_) => {
            let out = net.server.exec("nft list chain inet ps input");
            let text = String::from_utf8_lossy(&out.stdout);
            text.split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        }
    };
    if sent == 0 || dropped == 0 {
        eprintln!(
            "bench: {}: sent {sent}, dropped {dropped}; skipping",
            filter.name()
        );
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_ns = (t1 - t0) as f64 / hz * 1e9;
    Some((dropped as f64 / secs as f64, cpu_ns / dropped as f64))
}

pub(crate) fn throughput(secs: u64) {
    let filters = [
        Filter::Portsentry,
        Filter::Iptables(1),
        Filter::Iptables(1_000),
        Filter::Iptables(10_000),
        Filter::Ipset(10_000),
        Filter::Nft(10_000),
    ];
    let mut rows = Vec::new();
    for f in &filters {
        if let Some(r) = flood(f, secs) {
            rows.push((f.name(), r));
        }
    }
    println!(
        "## Drop throughput: a banned source's UDP flood (trafgen, one sender CPU, {secs} s) \
         across a veth pair; CPU is the whole machine's busy time (sender included) per \
         packet the filter dropped\n"
    );
    println!(
        "| filter | dropped/s | CPU ns per drop | drops/s vs portsentry |\n|---|---:|---:|---:|"
    );
    let base = rows.first().map(|r| r.1.0).unwrap_or(1.0);
    for (name, (rate, cpu)) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2}x |",
            rate,
            cpu,
            rate / base
        );
    }
    println!();
}
