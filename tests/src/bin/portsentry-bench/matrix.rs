//! 8. Scanners against PortSentry 1.2: one row per scan (nmap's scan types, fragmenting
//!    options, IPv6, slow timing, decoys, a horizontal scan over five of the server's
//!    addresses, masscan at 10,000 packets a second), each run once against portsentry
//!    (the test configuration: default advanced mode, SCAN_TRIGGER=0) and once against
//!    PortSentry 1.2 (`-atcp` and `-audp`, two processes as Debian's init script starts
//!    them, iptables KILL_ROUTE), in a fresh pair of namespaces each. For each: the
//!    attackalert types logged, whether the attacker is blocked afterwards (a ping from
//!    it goes unanswered), which addresses were banned, and how many packets the server
//!    sent the attacker during the scan (counted by iptables on the attacker's side:
//!    what the attacker gets).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use portsentry_tests::{
    bench::{Portsentry12, portsentry12},
    daemon::{Daemon, Workdir},
    netns::{Netns, TestNet},
    scenario::status,
};

/// The server's addresses (192.0.2.h) the horizontal scan walks besides its own
/// 192.0.2.1.
const MORE_SERVER_HOSTS: [u8; 4] = [101, 102, 103, 104];

/// Forged sources of the decoy scan (nobody owns them).
const DECOYS: [&str; 2] = ["192.0.2.200", "192.0.2.201"];

/// nmap's common part: SRC, DST and IFACE are filled in. One try per probe.
const NMAP: &str = "nmap -n -Pn -e IFACE -S SRC --max-retries 0 --host-timeout 50s -T4";

/// Where the attacker scans from.
#[derive(Clone, Copy, PartialEq)]
enum Attacker {
    /// 192.0.2.2, on the server's /24.
    V4,
    /// 2001:db8::2, on the server's own /64: counted and banned one address at a time,
    /// and such a ban is the daemon's to make (see docs/configuration.md, "IPv6 sources
    /// by network").
    V6OnLink,
    /// 2001:db8:1::2, another /64 routed over the veth: counted and banned by its /64.
    V6Routed,
}

impl Attacker {
    fn addr(self) -> &'static str {
        match self {
            Attacker::V4 => "192.0.2.2",
            Attacker::V6OnLink => "2001:db8::2",
            Attacker::V6Routed => "2001:db8:1::2",
        }
    }

    /// The names its alerts and history lines can carry: its address, and for a source
    /// counted by /64, the network's address.
    fn names(self) -> Vec<String> {
        match self {
            Attacker::V6Routed => vec![self.addr().to_owned(), "2001:db8:1::".to_owned()],
            _ => vec![self.addr().to_owned()],
        }
    }

    fn v6(self) -> bool {
        self != Attacker::V4
    }
}

/// (row, the scanner's arguments after `NMAP` or the whole masscan line, source).
const SCANS: [(&str, &str, Attacker); 21] = [
    ("nmap -sS", "-sS -p 1-100 DST", Attacker::V4),
    ("nmap -sS -f", "-sS -f -p 1-100 DST", Attacker::V4),
    ("nmap -sS --mtu 8", "-sS --mtu 8 -p 1-100 DST", Attacker::V4),
    (
        "nmap -sS --mtu 16",
        "-sS --mtu 16 -p 1-100 DST",
        Attacker::V4,
    ),
    (
        "nmap -sS --mtu 24",
        "-sS --mtu 24 -p 1-100 DST",
        Attacker::V4,
    ),
    (
        "nmap -6 -sS (from the server's /64)",
        "-6 -sS -p 1-100 DST",
        Attacker::V6OnLink,
    ),
    (
        "nmap -6 -sS (from another /64)",
        "-6 -sS -p 1-100 DST",
        Attacker::V6Routed,
    ),
    (
        "nmap -6 -sS -f",
        "-6 -sS -f -p 1-100 DST",
        Attacker::V6OnLink,
    ),
    ("nmap -sF", "-sF -p 1-100 DST", Attacker::V4),
    ("nmap -sN", "-sN -p 1-100 DST", Attacker::V4),
    ("nmap -sX", "-sX -p 1-100 DST", Attacker::V4),
    ("nmap -sA", "-sA -p 1-100 DST", Attacker::V4),
    ("nmap -sW", "-sW -p 1-100 DST", Attacker::V4),
    ("nmap -sM", "-sM -p 1-100 DST", Attacker::V4),
    ("nmap -sO (all 256 protocols)", "-sO DST", Attacker::V4),
    ("nmap -sY", "-sY -p 1-100 DST", Attacker::V4),
    ("nmap -sU", "-sU -p 1-100 DST", Attacker::V4),
    (
        "nmap -sS --scan-delay 1s (5 ports)",
        "-sS --scan-delay 1s -p 20-24 DST",
        Attacker::V4,
    ),
    (
        "nmap -sS -D (2 decoys)",
        "-sS -D DECOYS -p 1-100 DST",
        Attacker::V4,
    ),
    (
        "nmap -sS -p 23 over 5 server addresses",
        "-sS -p 23 TARGETS",
        Attacker::V4,
    ),
    (
        "masscan -p1-1000 --rate 10000",
        "masscan DST -p1-1000 --rate 10000 -e IFACE --source-ip SRC --router-mac MAC --wait 2",
        Attacker::V4,
    ),
];

/// What one detector made of one scan.
struct Outcome {
    /// The attackalert scan types logged for the attacker (or its decoys), in order.
    types: Vec<String>,
    /// A ping from the attacker went unanswered afterwards.
    blocked: bool,
    /// Addresses with a line in the history file.
    banned: Vec<String>,
    /// Packets the server sent the attacker during the scan.
    answers: u64,
    /// For portsentry when it logged no alert or the attacker got answers: its non-zero
    /// counters.
    counters: Option<String>,
}

/// A row's result: what a detector made of the scan, or what the scanner said when it
/// refused to run.
type Run = Result<Outcome, String>;

fn cells(run: &Run, names: &[String]) -> String {
    match run {
        Ok(o) => o.cells(names),
        Err(why) => format!("not run: nmap says \"{why}\" | - | -"),
    }
}

impl Outcome {
    fn cells(&self, names: &[String]) -> String {
        let alert = if self.types.is_empty() {
            "**no alert**".to_owned()
        } else {
            self.types.join(", ")
        };
        let mut blocked = if self.blocked { "yes" } else { "**no**" }.to_owned();
        let others: Vec<&str> = self
            .banned
            .iter()
            .map(String::as_str)
            .filter(|b| !names.iter().any(|n| n == b))
            .collect();
        if !others.is_empty() {
            blocked += &format!(" (also banned: {})", others.join(", "));
        }
        format!("{alert} | {blocked} | {}", self.answers)
    }
}

/// The scan types of the attackalert lines (`attackalert: TYPE from host: NAME/IP to ...`)
/// whose source is one of `sources`, each once.
fn alert_types(lines: &[String], sources: &[String]) -> Vec<String> {
    let mut types: Vec<String> = Vec::new();
    for l in lines {
        let Some(rest) = l.split("attackalert: ").nth(1) else {
            continue;
        };
        let Some((kind, host)) = rest.split_once(" from host: ") else {
            continue;
        };
        let ip = host.split(' ').next().unwrap_or("").rsplit('/').next();
        let kind = kind.trim();
        if ip.is_some_and(|ip| sources.iter().any(|s| s == ip)) && !types.iter().any(|t| t == kind)
        {
            types.push(kind.to_owned());
        }
    }
    types
}

/// The addresses of a PortSentry history file (`... Host: NAME/IP Port: ...`).
fn history_addresses(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in text.lines() {
        let ip = l
            .split("Host: ")
            .nth(1)
            .and_then(|h| h.split(" Port:").next())
            .and_then(|h| h.rsplit('/').next());
        if let Some(ip) = ip
            && !out.iter().any(|o| o == ip)
        {
            out.push(ip.to_owned());
        }
    }
    out
}

/// Counts what reaches the attacker over its veth (IPv6 neighbour discovery excepted).
fn count_answers(attacker: &Netns, iface: &str) {
    attacker.exec(&format!(
        "iptables -A INPUT -i {iface} && \
         ip6tables -A INPUT -i {iface} -p ipv6-icmp --icmpv6-type neighbour-solicitation \
         -j ACCEPT && \
         ip6tables -A INPUT -i {iface} -p ipv6-icmp --icmpv6-type neighbour-advertisement \
         -j ACCEPT && \
         ip6tables -A INPUT -i {iface}"
    ));
}

/// The packets of the last rule of INPUT, IPv4 and IPv6.
fn answers(attacker: &Netns) -> u64 {
    ["iptables", "ip6tables"]
        .iter()
        .map(|t| {
            let out = attacker.exec(&format!("{t} -L INPUT -v -x -n"));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// The network of one row: the server gets its extra addresses for the horizontal scan;
/// from another /64, the attacker's first IPv6 address is one of 2001:db8:1::/64.
fn network(from: Attacker) -> TestNet {
    let mut net = TestNet::new(0);
    net.add_server_v4(&MORE_SERVER_HOSTS);
    if from == Attacker::V6Routed {
        net.attacker_v6[0] = net.add_attacker_v6_network("2001:db8:1", [2])[0];
    }
    net
}

/// Runs one scan from the attacker's first address: the answers, or what the scanner
/// said when it did not scan.
fn scan(net: &TestNet, args: &str, v6: bool) -> Result<u64, String> {
    let (src, dst) = if v6 {
        (net.attacker_v6[0], net.server_v6)
    } else {
        (net.attacker_v4[0], net.server_v4)
    };
    let targets = std::iter::once(net.server_v4.to_string())
        .chain(MORE_SERVER_HOSTS.iter().map(|h| format!("192.0.2.{h}")))
        .collect::<Vec<_>>()
        .join(" ");
    let line = if args.starts_with("masscan") {
        args.to_owned()
    } else {
        format!("{NMAP} {args}")
    };
    let line = line
        .replace("IFACE", &net.attacker_if)
        .replace("SRC", &src.to_string())
        .replace("DST", &dst.to_string())
        .replace("MAC", &crate::answered::server_mac(net))
        .replace("DECOYS", &DECOYS.join(","))
        .replace("TARGETS", &targets);
    count_answers(&net.attacker, &net.attacker_if);
    let out = net.attacker.try_exec(&format!("{line} 2>&1"));
    let text = String::from_utf8_lossy(&out.stdout);
    let scanned = text.contains("host up") || text.contains("hosts up") || text.contains("rate:");
    if !(out.status.success() && scanned) {
        // nmap 7.93 refuses some combinations (-6 with -f): say so in the row.
        return Err(text
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with("Starting"))
            .unwrap_or("no output")
            .trim()
            .to_owned());
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(answers(&net.attacker))
}

/// Whether a ping from the attacker's first address goes unanswered.
fn blocked(net: &TestNet, v6: bool) -> bool {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (net.attacker_v6[0], net.server_v6)
    } else {
        (net.attacker_v4[0], net.server_v4)
    };
    !net.attacker
        .try_exec(&format!("ping -c 2 -i 0.3 -W 1 -I {src} {dst}"))
        .status
        .success()
}

/// Every source the row's scan sends from: the attacker (by its names) and the decoys.
fn sources(from: Attacker) -> Vec<String> {
    from.names()
        .into_iter()
        .chain(DECOYS.iter().map(|d| d.to_string()))
        .collect()
}

fn ours(args: &str, from: Attacker) -> Run {
    let v6 = from.v6();
    let net = network(from);
    let wd = Workdir::new();
    let conf = wd.config(&net.server_if, "");
    let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
    let answers = scan(&net, args, v6)?;
    // The daemon acts off the packet path: give it a moment to log and write history.
    std::thread::sleep(Duration::from_millis(1500));
    let blocked = blocked(&net, v6);
    let types = alert_types(&d.lines(), &sources(from));
    // Why, where it missed or answered: the program's counters.
    let counters = (types.is_empty() || answers > 0).then(|| {
        let st = status(&wd);
        st["counters"]
            .as_object()
            .map(|c| {
                c.iter()
                    .filter(|(_, v)| v.as_u64().is_some_and(|n| n > 0))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    });
    Ok(Outcome {
        types,
        blocked,
        banned: history_addresses(&wd.read("portsentry.history")),
        answers,
        counters,
    })
}

fn theirs(bin: &std::path::Path, args: &str, from: Attacker) -> Run {
    let v6 = from.v6();
    let net = network(from);
    let tcp = Portsentry12::start_mode(bin, &net.server, 23, "-atcp");
    let udp = Portsentry12::start_mode(bin, &net.server, 23, "-audp");
    let answers = scan(&net, args, v6)?;
    std::thread::sleep(Duration::from_millis(1500));
    let blocked = blocked(&net, v6);
    let lines = [tcp.syslog(), udp.syslog()].concat();
    let history = [&tcp, &udp]
        .iter()
        .map(|p| {
            std::fs::read_to_string(p.dir.path().join("portsentry.history")).unwrap_or_default()
        })
        .collect::<String>();
    Ok(Outcome {
        types: alert_types(&lines, &sources(from)),
        blocked,
        banned: history_addresses(&history),
        answers,
        counters: None,
    })
}

pub(crate) fn matrix() {
    let cache =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cache/portsentry12");
    let old = portsentry12(&cache);
    if old.is_none() {
        eprintln!("bench: PortSentry 1.2 unavailable; its columns stay empty");
    }
    println!(
        "## Scanners against PortSentry 1.2\n\n\
         portsentry: the test configuration (advanced mode, SCAN_TRIGGER=0, BLOCK_TCP and \
         BLOCK_UDP 1). PortSentry 1.2: `-atcp` and `-audp` (two processes, advanced mode, \
         ports below 1024), SCAN_TRIGGER=0, KILL_ROUTE iptables. Attacker 192.0.2.2 \
         (IPv6: 2001:db8::2 on the server's /64, or 2001:db8:1::2); blocked: a ping from it afterwards goes unanswered; answers: \
         packets the server sent the attacker during the scan (iptables on the attacker's \
         side).\n"
    );
    println!(
        "| scan | portsentry: alert types | blocked | answers | PortSentry 1.2: alert types | \
         blocked | answers |\n|---|---|---|---:|---|---|---:|"
    );
    let mut notes = Vec::new();
    for (row, args, from) in SCANS {
        let names = from.names();
        let a = ours(args, from);
        let b = old
            .as_deref()
            .map(|bin| cells(&theirs(bin, args, from), &names))
            .unwrap_or_else(|| "- | - | -".to_owned());
        println!("| {row} | {} | {b} |", cells(&a, &names));
        if let Ok(Outcome {
            counters: Some(c), ..
        }) = a
        {
            notes.push(format!("- {row}: portsentry's counters: {c}"));
        }
    }
    println!();
    for n in notes {
        println!("{n}");
    }
    println!();
}
