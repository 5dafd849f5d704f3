//! 5. What a scanner gets: the probes the server answered (a SYN-ACK or a RST, counted by
//!    iptables rules on the server's output) before the scanner was cut off, and whether
//!    it found the service the server runs on an unwatched port (8080), for nmap's
//!    default scan at -T4 and -T5 and masscan at 100k packets a second over every port;
//!    portsentry with the ban decided in the kernel, portsentry with the daemon deciding
//!    (KILL_RUN_CMD_FIRST=1), and PortSentry 1.2 (-atcp, iptables KILL_ROUTE).

use std::{net::TcpListener, path::PathBuf, time::Duration};

use portsentry_tests::{
    bench::{Portsentry12, portsentry12},
    client_load::{answers, count_answers},
    daemon::{Daemon, Workdir},
    netns::TestNet,
};

/// A scanner, its command line (SRC, DST, IFACE and MAC filled in) and how many scans
/// are run (masscan's random port order makes one scan's figure a lottery: the first
/// watched port comes after about 64 others on average).
const SCANNERS: [(&str, &str, usize); 3] = [
    (
        "nmap -sS --top-ports 1000 -T4",
        "nmap -n -Pn -sS --top-ports 1000 -T4 -e IFACE -S SRC DST",
        1,
    ),
    (
        "nmap -sS --top-ports 1000 -T5",
        "nmap -n -Pn -sS --top-ports 1000 -T5 -e IFACE -S SRC DST",
        1,
    ),
    (
        "masscan -p1-65535 --rate 100000",
        "masscan DST -p1-65535 --rate 100000 -e IFACE --source-ip SRC --router-mac MAC \
         --wait 2",
        7,
    ),
];

/// One cell: the answers of each scan, and whether any scan found the service.
struct Cell {
    answers: Vec<u64>,
    found: usize,
}

impl Cell {
    fn text(&self) -> String {
        let mut a = self.answers.clone();
        a.sort_unstable();
        let found = if self.found > 0 {
            format!(" (found 8080 {}/{})", self.found, a.len())
        } else {
            String::new()
        };
        if a.len() == 1 {
            format!("{}{found}", a[0])
        } else {
            format!("median {}, max {}{found}", a[a.len() / 2], a[a.len() - 1])
        }
    }
}

/// Runs `runs` scans with a fresh network and detector (`start`) each.
fn cell<T>(cmd: &str, runs: usize, start: impl Fn(&TestNet) -> T) -> Cell {
    let mut c = Cell {
        answers: Vec::new(),
        found: 0,
    };
    for _ in 0..runs {
        let net = TestNet::new(0);
        let _svc = net
            .server
            .enter(|| TcpListener::bind("0.0.0.0:8080").unwrap());
        let detector = start(&net);
        let (n, found) = scan(&net, cmd);
        drop(detector);
        c.answers.push(n);
        c.found += usize::from(found);
    }
    c
}

/// The MAC address of the server's veth end (masscan's `--router-mac`: it sends frames
/// itself).
pub(crate) fn server_mac(net: &TestNet) -> String {
    let link = net
        .server
        .exec(&format!("ip -o link show {}", net.server_if));
    String::from_utf8_lossy(&link.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// Runs one scanner from the attacker's first address: (answers, service found open).
fn scan(net: &TestNet, cmd: &str) -> (u64, bool) {
    let mac = server_mac(net);
    let scanner = net.attacker_v4[0];
    let src = scanner.to_string();
    count_answers(&net.server, &[scanner]);
    let line = cmd
        .replace("IFACE", &net.attacker_if)
        .replace("SRC", &src)
        .replace("DST", &net.server_v4.to_string())
        .replace("MAC", &mac);
    let out = net.attacker.try_exec(&format!("{line} 2>&1"));
    let text = String::from_utf8_lossy(&out.stdout);
    let found = text.contains("8080/tcp open") || text.contains("open port 8080/tcp");
    std::thread::sleep(Duration::from_millis(500));
    // Every RST and SYN-ACK the server sent it.
    let [_, closed, open] = answers(&net.server, scanner);
    (closed + open, found)
}

pub(crate) fn answered() {
    let mut rows: Vec<(String, Vec<Cell>)> = Vec::new();
    for (name, extra) in [
        ("portsentry, ban decided in the kernel", ""),
        (
            "portsentry, ban decided by the daemon (KILL_RUN_CMD_FIRST=1)",
            "KILL_RUN_CMD_FIRST=\"1\"\n",
        ),
    ] {
        let cells = SCANNERS
            .iter()
            .map(|(_, cmd, runs)| {
                cell(cmd, *runs, |net| {
                    let wd = Workdir::new();
                    let conf = wd.config(&net.server_if, extra);
                    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
                    (wd, d)
                })
            })
            .collect();
        rows.push((name.to_owned(), cells));
    }
    let cache =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cache/portsentry12");
    match portsentry12(&cache) {
        Some(bin) => {
            let cells = SCANNERS
                .iter()
                .map(|(_, cmd, runs)| {
                    cell(cmd, *runs, |net| {
                        Portsentry12::start_mode(&bin, &net.server, 23, "-atcp")
                    })
                })
                .collect();
            rows.push((
                "PortSentry 1.2 -atcp (iptables KILL_ROUTE)".to_owned(),
                cells,
            ));
        }
        None => eprintln!("bench: PortSentry 1.2 unavailable; skipping it"),
    }
    println!(
        "## What a scanner gets: probes answered before the ban (and whether it found the \
         service on 8080)\n"
    );
    let mut header = "| detector |".to_owned();
    let mut rule = "|---|".to_owned();
    for (scanner, _, runs) in SCANNERS {
        let scanner = if runs > 1 {
            format!("{scanner} ({runs} scans)")
        } else {
            scanner.to_owned()
        };
        header += &format!(" {scanner} |");
        rule += "---:|";
    }
    println!("{header}\n{rule}");
    for (name, cells) in rows {
        let mut line = format!("| {name} |");
        for c in cells {
            line += &format!(" {} |", c.text());
        }
        println!("{line}");
    }
    println!();
}
