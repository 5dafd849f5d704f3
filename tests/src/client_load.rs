//! Real clients and scanners at once, for the false-positive measurement of the scan
//! triggers: a server with two services in the server namespace, clients on many
//! addresses of the attacker namespace, and two scanners (IPv4 and IPv6) among them.
//!
//! What the clients do, all at once:
//! - **keep-alive HTTP**: every client holds a connection to port 80 and sends a request
//!   every 20 ms on it;
//! - **many short connections**: threads open, use and close connections to port 443,
//!   each from the next client address;
//! - **a server restart with connections open**: port 80's service dies without a word
//!   (its host goes silent for a second, as in a reboot: the connections' sockets are
//!   gone, nothing is answered), then the host answers again but the service is still
//!   down for a second (SYNs and the clients' late segments get RSTs), then it listens
//!   again. The clients reconnect as soon as they notice, every 100 ms;
//! - **a closed port once**: every client tries one closed watched port (21, 23, 25, 110
//!   or 143) once, at its own moment of the run.
//!
//! Both services are ports below 1024, so in the default advanced mode they are watched
//! whenever nothing listens on them (during the restart).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Mutex,
        atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::{
    daemon::Workdir,
    netns::{Netns, TestNet, tcp_connect},
    scenario::{ban_nets, counter, start, status},
};

/// The keep-alive service (restarted during the run).
pub const KEEPALIVE_PORT: u16 = 80;
/// The service of the short connections.
pub const SHORT_PORT: u16 = 443;
/// Closed watched ports a client tries once (a typo, an old bookmark, a mail client's
/// default).
const CLOSED_TRIES: [u16; 5] = [21, 23, 25, 110, 143];

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: server\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const RESPONSE_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// The clients' addresses and the scanners', added to a [`TestNet`].
pub struct Population {
    /// IPv4 clients in 198.51.100.0/24, then IPv6 clients, each in a /64 of its own
    /// (`2001:db8:1:N::/64`: a /64 is one site, and a site is one source).
    pub clients: Vec<IpAddr>,
    /// The IPv4 scanner (the attacker's first address) and the IPv6 scanner, in a /64
    /// that is not the server's (`2001:db8:0:ff::/64`).
    pub scanners: [IpAddr; 2],
}

impl Population {
    /// `v4` IPv4 clients and `v6` IPv6 clients (at most 200 and 255).
    pub fn new(net: &mut TestNet, v4: u8, v6: u8) -> Population {
        let hosts: Vec<u8> = (10..10 + v4.min(200)).collect();
        let mut clients = net.add_attacker_v4_network("198.51.100", &hosts);
        for n in 1..=v6 {
            clients.extend(net.add_attacker_v6_network(&format!("2001:db8:1:{n:x}"), [0x10]));
        }
        let scanner6 = net.add_attacker_v6_network("2001:db8:0:ff", [2])[0];
        Population {
            clients,
            scanners: [net.attacker_v4[0], scanner6],
        }
    }
}

/// How long the run lasts, and what the clients do.
pub struct Plan {
    pub secs: f64,
    /// Threads opening short connections as fast as they can.
    pub short_threads: usize,
    /// When the scanners start, as a fraction of the run.
    pub scan_at: f64,
    /// When the keep-alive service dies, as a fraction of the run.
    pub crash_at: f64,
}

/// What happened: the clients' traffic, the clients that were banned, and what each
/// scanner got.
#[derive(Debug)]
pub struct Outcome {
    pub clients: usize,
    /// Short connections completed (connect, request, response, close).
    pub short_connections: u64,
    /// Keep-alive requests answered.
    pub requests: u64,
    /// Connects and requests that failed (the restart, or a ban).
    pub client_failures: u64,
    /// Closed ports tried once (each refused).
    pub closed_tries: u64,
    /// The clients some ban covers at the end.
    pub banned_clients: Vec<IpAddr>,
    /// What each scanner got.
    pub scanners: Vec<Scanner>,
    /// How long the clients ran.
    pub secs: f64,
    /// Bans the program made (`kernel_banned`), when [`measure`] ran it.
    pub kernel_bans: u64,
}

impl Outcome {
    /// Short connections a second over the run.
    pub fn short_rate(&self) -> f64 {
        self.short_connections as f64 / self.secs
    }

    /// Keep-alive requests a second over the run.
    pub fn request_rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

/// What a scanner got before its ban.
#[derive(Debug)]
pub struct Scanner {
    pub addr: IpAddr,
    /// Probes of closed watched ports answered (with an RST) before the ban: the
    /// probes the detector let through.
    pub probes_answered: u64,
    /// Probes of every closed port answered, unwatched ones (1024 and up) included.
    pub closed_answered: u64,
    /// SYN-ACKs it received: the open ports it found (each may be answered twice, nmap
    /// tries again).
    pub syn_acks: u64,
    /// Whether a ban covers it at the end.
    pub banned: bool,
}

/// The keep-alive service's state, driven by the run's timeline.
const UP: u8 = 0;
const DOWN: u8 = 1;
const STOP: u8 = 2;

struct Server {
    /// UP, DOWN (the service is dead) or STOP (the run is over).
    keepalive: AtomicU8,
    /// The listening sockets' descriptors (to wake their `accept` at a crash or the end).
    listeners: Mutex<Vec<i32>>,
    /// Port 80's current listener.
    keepalive_fd: AtomicI32,
    /// Port 80's open connections (clones, to close them at the crash).
    open: Mutex<Vec<TcpStream>>,
}

impl Server {
    fn wake(fd: i32) {
        // SAFETY: shutdown on a descriptor this process holds open; on a listening
        // socket it makes a blocked accept return EINVAL.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }

    /// Port 80's service: listens, serves, and after a crash waits to be started again.
    fn run_keepalive<'s>(&'s self, ns: &Netns, scope: &'s std::thread::Scope<'s, '_>) {
        loop {
            match self.keepalive.load(Ordering::SeqCst) {
                STOP => return,
                DOWN => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                _ => {}
            }
            let l = ns.enter(|| TcpListener::bind(("::", KEEPALIVE_PORT)).unwrap());
            self.keepalive_fd.store(l.as_raw_fd(), Ordering::SeqCst);
            if self.keepalive.load(Ordering::SeqCst) == STOP {
                return;
            }
            for s in l.incoming() {
                let Ok(s) = s else { break };
                self.open.lock().unwrap().push(s.try_clone().unwrap());
                scope.spawn(move || serve_keepalive(s));
            }
            self.keepalive_fd.store(-1, Ordering::SeqCst);
        }
    }

    /// Kills port 80's service as a host that stops answering would: every connection
    /// closed with an RST that the host does not send, and nothing answered for `silent`;
    /// then the host answers (with RSTs) and the service stays down for `down`.
    fn crash(&self, ns: &Netns, silent: Duration, down: Duration) {
        let drop_rule = format!("OUTPUT -p tcp --sport {KEEPALIVE_PORT} -j DROP");
        ns.exec(&format!(
            "iptables -I {drop_rule} && ip6tables -I {drop_rule}"
        ));
        self.keepalive.store(DOWN, Ordering::SeqCst);
        let fd = self.keepalive_fd.load(Ordering::SeqCst);
        if fd >= 0 {
            Server::wake(fd);
        }
        for s in self.open.lock().unwrap().drain(..) {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            // Wakes the connection's thread, which closes its descriptor; ours closes here.
            let _ = s.shutdown(std::net::Shutdown::Read);
        }
        std::thread::sleep(silent);
        ns.exec(&format!(
            "iptables -D {drop_rule} && ip6tables -D {drop_rule}"
        ));
        std::thread::sleep(down);
        self.keepalive.store(UP, Ordering::SeqCst);
    }

    fn stop(&self) {
        self.keepalive.store(STOP, Ordering::SeqCst);
        let fd = self.keepalive_fd.load(Ordering::SeqCst);
        if fd >= 0 {
            Server::wake(fd);
        }
        for fd in self.listeners.lock().unwrap().iter() {
            Server::wake(*fd);
        }
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Reads one request (up to its blank line) into `buf`; false at the end of the stream.
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    let mut chunk = [0u8; 512];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

fn serve_keepalive(mut s: TcpStream) {
    let mut buf = Vec::new();
    while read_request(&mut s, &mut buf) {
        if s.write_all(RESPONSE).is_err() {
            return;
        }
    }
}

fn serve_short(l: &TcpListener) {
    let mut buf = Vec::new();
    for s in l.incoming() {
        let Ok(mut s) = s else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if read_request(&mut s, &mut buf) {
            let _ = s.write_all(RESPONSE_CLOSE);
        }
    }
}

struct Tally {
    short: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    closed: AtomicU64,
}

fn server_addr(net: &TestNet, client: IpAddr, port: u16) -> SocketAddr {
    let dst = if client.is_ipv4() {
        net.server_v4
    } else {
        net.server_v6
    };
    SocketAddr::new(dst, port)
}

/// One keep-alive client: a connection to port 80, a request every 20 ms, a new
/// connection 100 ms after any failure.
fn keepalive_client(net: &TestNet, client: IpAddr, until: Instant, t: &Tally) {
    let dst = server_addr(net, client, KEEPALIVE_PORT);
    let mut answer = vec![0u8; RESPONSE.len()];
    while Instant::now() < until {
        let Ok(mut s) = tcp_connect(client, dst, Duration::from_secs(1)) else {
            t.failures.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        while Instant::now() < until {
            let ok = s.write_all(REQUEST).is_ok() && s.read_exact(&mut answer).is_ok();
            if !ok {
                t.failures.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
                break;
            }
            t.requests.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Short connections to port 443, each from the next of `clients` (starting at `first`).
fn short_client(net: &TestNet, clients: &[IpAddr], first: usize, until: Instant, t: &Tally) {
    let mut answer = Vec::with_capacity(RESPONSE_CLOSE.len());
    let mut i = first;
    while Instant::now() < until {
        let client = clients[i % clients.len()];
        i += 1;
        let done = tcp_connect(
            client,
            server_addr(net, client, SHORT_PORT),
            Duration::from_secs(1),
        )
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(REQUEST)?;
            answer.clear();
            s.read_to_end(&mut answer)
        });
        match done {
            Ok(n) if n == RESPONSE_CLOSE.len() => t.short.fetch_add(1, Ordering::Relaxed),
            _ => t.failures.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Counts what the server sends each scanner: RSTs from the watched ports (below 1024
/// but 113 and 139, advanced mode's defaults), all RSTs, and SYN-ACKs.
pub fn count_answers(server: &Netns, scanners: &[IpAddr]) {
    for s in scanners {
        let tool = if s.is_ipv4() { "iptables" } else { "ip6tables" };
        let rule = format!("{tool} -A OUTPUT -d {s} -p tcp");
        server.exec(&format!(
            "{rule} --tcp-flags RST RST --sport 1:1023 -m multiport ! --sports 113,139 \
               -m comment --comment watched && \
             {rule} --tcp-flags RST RST -m comment --comment closed && \
             {rule} --tcp-flags SYN,ACK SYN,ACK -m comment --comment open"
        ));
    }
}

/// What the server sent `scanner`, by the comment of each rule of [`count_answers`]:
/// RSTs from watched ports, all RSTs, SYN-ACKs.
pub fn answers(server: &Netns, scanner: IpAddr) -> [u64; 3] {
    let tool = if scanner.is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    };
    let out = server.exec(&format!("{tool} -L OUTPUT -v -x -n"));
    let (host, net) = (scanner.to_string(), IpNet::from(scanner).to_string());
    let text = String::from_utf8_lossy(&out.stdout);
    ["watched", "closed", "open"].map(|comment| {
        text.lines()
            .filter(|l| l.contains(&format!("/* {comment} */")))
            .filter(|l| l.split_whitespace().any(|w| w == host || w == net))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    })
}

/// nmap's SYN scan of the top 1000 ports at -T4 from `src` (a normal scan, one retry).
fn scan(net: &TestNet, src: IpAddr) {
    let (six, dst) = if src.is_ipv4() {
        ("", net.server_v4)
    } else {
        ("-6", net.server_v6)
    };
    net.attacker.try_exec(&format!(
        "nmap {six} -n -Pn -sS --top-ports 1000 -T4 --max-retries 1 --host-timeout 60s \
         -e {iface} -S {src} {dst}",
        iface = net.attacker_if
    ));
}

/// Runs the clients and the scanners of `pop` against the server of `net` (whose
/// detector the caller started), following `plan`; reads the bans from `wd`.
pub fn run(net: &TestNet, wd: &Workdir, pop: &Population, plan: &Plan) -> Outcome {
    let server = Server {
        keepalive: AtomicU8::new(UP),
        listeners: Mutex::new(Vec::new()),
        keepalive_fd: AtomicI32::new(-1),
        open: Mutex::new(Vec::new()),
    };
    let tally = Tally {
        short: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        closed: AtomicU64::new(0),
    };
    count_answers(&net.server, &pop.scanners);
    let short = net
        .server
        .enter(|| TcpListener::bind(("::", SHORT_PORT)).unwrap());
    server.listeners.lock().unwrap().push(short.as_raw_fd());
    let secs = Duration::from_secs_f64(plan.secs);
    let start = Instant::now();
    let until = start + secs;
    std::thread::scope(|scope| {
        let srv = &server;
        scope.spawn(|| srv.run_keepalive(&net.server, scope));
        for _ in 0..4 {
            scope.spawn(|| serve_short(&short));
        }
        // Wait for port 80 before the clients start.
        while server.keepalive_fd.load(Ordering::SeqCst) < 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = &tally;
        let clients = &pop.clients;
        let mut workers = Vec::new();
        for c in clients {
            workers.push(
                scope.spawn(move || net.attacker.enter(|| keepalive_client(net, *c, until, t))),
            );
        }
        for k in 0..plan.short_threads {
            let first = k * clients.len() / plan.short_threads.max(1);
            workers.push(scope.spawn(move || {
                net.attacker
                    .enter(|| short_client(net, clients, first, until, t))
            }));
        }
        workers.push(scope.spawn(move || {
            // Each client tries one closed port, at its own moment of the run.
            for (i, c) in clients.iter().enumerate() {
                let at = start + secs.mul_f64((i + 1) as f64 / (clients.len() + 1) as f64);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let port = CLOSED_TRIES[i % CLOSED_TRIES.len()];
                let dst = server_addr(net, *c, port);
                let r = net
                    .attacker
                    .enter(|| tcp_connect(*c, dst, Duration::from_millis(500)));
                assert!(r.is_err(), "port {port} is closed");
                t.closed.fetch_add(1, Ordering::Relaxed);
            }
        }));
        for s in pop.scanners {
            workers.push(scope.spawn(move || {
                std::thread::sleep(secs.mul_f64(plan.scan_at));
                scan(net, s);
            }));
        }
        std::thread::sleep(secs.mul_f64(plan.crash_at));
        server.crash(&net.server, Duration::from_secs(1), Duration::from_secs(1));
        for w in workers {
            w.join().unwrap();
        }
        server.stop();
    });
    // The last events reach the daemon within a second.
    std::thread::sleep(Duration::from_millis(1500));
    let nets: Vec<IpNet> = ban_nets(&status(wd))
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    let covered = |a: &IpAddr| nets.iter().any(|n| n.contains(a));
    Outcome {
        clients: pop.clients.len(),
        short_connections: tally.short.into_inner(),
        requests: tally.requests.into_inner(),
        client_failures: tally.failures.into_inner(),
        closed_tries: tally.closed.into_inner(),
        banned_clients: pop.clients.iter().copied().filter(covered).collect(),
        scanners: pop
            .scanners
            .iter()
            .map(|s| {
                let [probes_answered, closed_answered, syn_acks] = answers(&net.server, *s);
                Scanner {
                    addr: *s,
                    probes_answered,
                    closed_answered,
                    syn_acks,
                    banned: covered(s),
                }
            })
            .collect(),
        secs: plan.secs,
        kernel_bans: 0,
    }
}

/// A fresh pair of namespaces with `v4` and `v6` clients, the daemon started on the test
/// configuration plus `extra` (its keys replacing the defaults), [`run`] with `plan`, and
/// the daemon stopped; the outcome carries the program's ban count.
pub fn measure(extra: &str, v4: u8, v6: u8, plan: &Plan) -> Outcome {
    let mut net = TestNet::new(0);
    let pop = Population::new(&mut net, v4, v6);
    let wd = Workdir::new();
    wd.config(&net.server_if, extra);
    let d = start(&net, &wd);
    let mut o = run(&net, &wd, &pop, plan);
    o.kernel_bans = counter(&status(&wd), "kernel_banned");
    assert!(d.stop().success(), "the daemon stopped with an error");
    o
}
