//! Test networks: two namespaces made by the test, joined by a veth pair, both ends
//! inside them. Nothing touches the host's own interfaces; everything is removed on drop.
//!
//! Addresses come from the documentation ranges (192.0.2.0/24, 2001:db8::/64) and exist
//! only inside these namespaces.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("running `{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace made by this test (removed on drop).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "ps{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns { name }
    }

    /// Runs a shell command inside the namespace (network namespace only, so bpffs
    /// pins stay visible).
    pub fn exec(&self, cmd: &str) -> Output {
        let out = self.try_exec(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` in {} failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Like `exec` but returns the output whatever the exit status.
    pub fn try_exec(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.name))
            .args(["sh", "-c", cmd])
            .output()
            .expect("running nsenter")
    }

    /// Pings `a` until it answers (5 tries), so that its neighbour entry is resolved
    /// before a test's first packet: no first packet waits on neighbour discovery long
    /// enough to be retransmitted (a retransmitted SYN counts twice). A few tries: on a
    /// loaded machine the first IPv6 neighbour solicitation can go unanswered in time.
    pub fn resolve(&self, a: IpAddr) {
        self.exec(&format!(
            "for i in 1 2 3 4 5; do ping -c1 -W2 {a} >/dev/null && exit 0; sleep 0.2; done; \
             exit 1"
        ));
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        c
    }

    /// Runs `f` with this thread inside the namespace, then moves the thread back.
    /// Sockets made in `f` stay in this namespace; XDP attached in `f` stays attached.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let home = File::open("/proc/thread-self/ns/net").expect("opening own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("opening netns");
        // SAFETY: setns on valid namespace fds; only this thread moves.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let out = f();
        // SAFETY: as above.
        let rc = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns back: {}", std::io::Error::last_os_error());
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A server namespace and an attacker namespace joined by a veth pair.
pub struct TestNet {
    pub server: Netns,
    pub attacker: Netns,
    /// The veth end inside `server` (where XDP is attached).
    pub server_if: String,
    pub attacker_if: String,
    pub server_v4: IpAddr,
    pub server_v6: IpAddr,
    /// Attacker addresses: the first is its primary address; all are usable sources.
    pub attacker_v4: Vec<IpAddr>,
    pub attacker_v6: Vec<IpAddr>,
}

impl TestNet {
    /// Builds the pair; the attacker gets `extra_sources` more IPv4 and IPv6 addresses.
    pub fn new(extra_sources: u8) -> TestNet {
        let server = Netns::new("srv");
        let attacker = Netns::new("atk");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Unique per process too: the names exist only in our namespaces, but two test
        // processes must never race on one while it is being created.
        let pid = std::process::id() % 100_000;
        let server_if = format!("ps{pid}s{n}");
        let attacker_if = format!("ps{pid}a{n}");
        sh(&format!(
            "ip link add {server_if} netns {} type veth peer name {attacker_if} netns {}",
            server.name, attacker.name
        ));
        server.exec(&format!(
            "ip addr add 192.0.2.1/24 dev {server_if} && \
             ip addr add 2001:db8::1/64 dev {server_if} nodad && \
             ip link set {server_if} up"
        ));
        let mut attacker_v4 = Vec::new();
        let mut attacker_v6 = Vec::new();
        for i in 0..=extra_sources {
            let host = 2 + u16::from(i);
            attacker.exec(&format!(
                "ip addr add 192.0.2.{host}/24 dev {attacker_if} && \
                 ip addr add 2001:db8::{host:x}/64 dev {attacker_if} nodad"
            ));
            attacker_v4.push(format!("192.0.2.{host}").parse().unwrap());
            attacker_v6.push(format!("2001:db8::{host:x}").parse().unwrap());
        }
        attacker.exec(&format!("ip link set {attacker_if} up"));
        // Native XDP on veth needs the peer to have XDP too, or GRO enabled, to receive;
        // both ends up is enough for the kernel we run on. Wait for carrier.
        server.exec(&format!(
            "for i in $(seq 50); do ip link show {server_if} | grep -q LOWER_UP && exit 0; sleep 0.1; done; exit 1"
        ));
        // Resolve every neighbour now (see `Netns::resolve`).
        for a in attacker_v4.iter().chain(&attacker_v6) {
            server.resolve(*a);
        }
        TestNet {
            server,
            attacker,
            server_if,
            attacker_if,
            server_v4: "192.0.2.1".parse().unwrap(),
            server_v6: "2001:db8::1".parse().unwrap(),
            attacker_v4,
            attacker_v6,
        }
    }
}

impl TestNet {
    /// Gives the server more addresses, `192.0.2.h` for each `h` of `hosts`, on its veth
    /// end (a server with many addresses, for horizontal scans), and resolves them from
    /// the attacker; returns them. Pick hosts above the attacker's (2 to
    /// 2 + `extra_sources`).
    pub fn add_server_v4(&self, hosts: &[u8]) -> Vec<IpAddr> {
        let added: Vec<IpAddr> = hosts
            .iter()
            .map(|h| format!("192.0.2.{h}").parse().unwrap())
            .collect();
        for a in &added {
            assert!(
                !self.attacker_v4.contains(a),
                "{a} is an attacker address already"
            );
            self.server
                .exec(&format!("ip addr add {a}/24 dev {}", self.server_if));
            self.attacker.resolve(*a);
        }
        added
    }

    /// Gives the attacker addresses `NET.h` for each `h` of `hosts` in another IPv4 /24
    /// (`net` is its first three octets, e.g. `198.51.100`), routed over the veth in both
    /// namespaces, and resolves their neighbour entries; returns them. The server's
    /// address and the existing attacker addresses are unchanged (they stay in
    /// 192.0.2.0/24), so a ban of the new /24 covers no address of the server.
    pub fn add_attacker_v4_network(&mut self, net: &str, hosts: &[u8]) -> Vec<IpAddr> {
        self.server.exec(&format!(
            "ip route replace {net}.0/24 dev {}",
            self.server_if
        ));
        let mut added = Vec::new();
        for h in hosts {
            self.attacker.exec(&format!(
                "ip addr add {net}.{h}/24 dev {}",
                self.attacker_if
            ));
            added.push(format!("{net}.{h}").parse().unwrap());
        }
        for a in &added {
            self.server.resolve(*a);
        }
        self.attacker_v4.extend(added.iter().copied());
        added
    }
}

impl TestNet {
    /// Gives the attacker the addresses `PREFIX::h` (hex) for each `h` of `hosts` in the
    /// /64 `prefix` (e.g. "2001:db8:0:1"), routed from the server over the veth, and
    /// resolves them from the server; returns them. The existing addresses are unchanged.
    pub fn add_attacker_v6_network(
        &self,
        prefix: &str,
        hosts: impl IntoIterator<Item = u16>,
    ) -> Vec<IpAddr> {
        self.server.exec(&format!(
            "ip -6 route replace {prefix}::/64 dev {}",
            self.server_if
        ));
        let mut out = Vec::new();
        for h in hosts {
            let a: IpAddr = format!("{prefix}::{h:x}").parse().unwrap();
            self.attacker.exec(&format!(
                "ip addr add {a}/64 dev {} nodad",
                self.attacker_if
            ));
            out.push(a);
        }
        for a in &out {
            self.server.resolve(*a);
        }
        out
    }
}

/// Namespaces on one Ethernet segment: a hub namespace holding a bridge, and a veth pair
/// from each member to it (the member's end in the member, the other end in the hub). Every
/// interface and address lives in namespaces the test made.
pub struct Lan {
    pub hub: Netns,
    bridge: String,
    tag: String,
    members: AtomicU32,
}

impl Lan {
    pub fn new() -> Lan {
        let hub = Netns::new("hub");
        let tag = format!(
            "{}l{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bridge = format!("ps{tag}br");
        hub.exec(&format!(
            "ip link add {bridge} type bridge && ip link set {bridge} up"
        ));
        Lan {
            hub,
            bridge,
            tag,
            members: AtomicU32::new(0),
        }
    }

    /// Gives the hub itself `addrs` (`ADDR/PREFIX`, IPv4 or IPv6) on the bridge.
    pub fn address_hub(&self, addrs: &[&str]) {
        for a in addrs {
            self.hub
                .exec(&format!("ip addr add {a} dev {} nodad", self.bridge));
        }
    }

    /// Joins `ns` to the segment with `addrs` (`ADDR/PREFIX`); the interface in `ns`.
    pub fn join(&self, ns: &Netns, addrs: &[&str]) -> String {
        let k = self.members.fetch_add(1, Ordering::Relaxed);
        let (inner, outer) = (format!("ps{}m{k}", self.tag), format!("ps{}h{k}", self.tag));
        sh(&format!(
            "ip link add {inner} netns {} type veth peer name {outer} netns {}",
            ns.name, self.hub.name
        ));
        self.hub.exec(&format!(
            "ip link set {outer} master {} && ip link set {outer} up",
            self.bridge
        ));
        for a in addrs {
            ns.exec(&format!("ip addr add {a} dev {inner} nodad"));
        }
        ns.exec(&format!("ip link set {inner} up"));
        ns.exec(&format!(
            "for i in $(seq 50); do ip link show {inner} | grep -q LOWER_UP && exit 0; sleep 0.1; done; exit 1"
        ));
        inner
    }
}

impl Default for Lan {
    fn default() -> Self {
        Lan::new()
    }
}

/// A TCP connection from `src` (an address of the current namespace) to `dst`.
pub fn tcp_connect(
    src: IpAddr,
    dst: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    sock.bind(&std::net::SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&dst.into(), timeout)?;
    Ok(sock.into())
}
