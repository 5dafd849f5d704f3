//! A CrowdSec Local API of the test's own: Debian's crowdsec 1.4.6 as `cargo xtask`
//! unpacked it (`target/unpacked/crowdsec`, never installed), run as `crowdsec -no-cs` (the
//! API alone) with a configuration and a database in a temporary directory, listening on an
//! address of a namespace the test made; `cscli` against it (machines, bouncers,
//! decisions). Stopped by its pid on drop. Nothing system-wide is read or written.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    daemon::{Daemon, Workdir, collect_lines, wait_until},
    netns::{Lan, Netns, tcp_connect},
    scenario::status,
};

/// Where `cargo xtask test` unpacked Debian's crowdsec package.
pub fn unpacked() -> PathBuf {
    unpacked_package("crowdsec", &["usr/bin/crowdsec", "usr/bin/cscli"])
}

/// Where `cargo xtask test` (or `bench`) unpacked Debian's `package`, checked to hold
/// `binaries`.
pub fn unpacked_package(package: &str, binaries: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/unpacked")
        .join(package);
    assert!(
        binaries.iter().all(|b| dir.join(b).is_file()),
        "{} holds no {package}: run with `cargo xtask test` or `cargo xtask bench` (they \
         unpack Debian's {package} package there)",
        dir.display()
    );
    dir
}

/// A running Local API.
pub struct Lapi {
    dir: tempfile::TempDir,
    ns: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Lapi {
    /// Starts a Local API in `ns`, listening on `ip` (an address of `ns`) at a free port;
    /// returns once it says it listens.
    pub fn start(ns: &Netns, ip: IpAddr) -> Lapi {
        let pkg = unpacked();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["etc", "data", "hub", "etc/notifications"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for f in ["profiles.yaml", "simulation.yaml", "acquis.yaml"] {
            std::fs::copy(pkg.join("etc/crowdsec").join(f), d.join("etc").join(f)).unwrap();
        }
        std::fs::write(d.join("hub/.index.json"), "{}").unwrap();
        let port = ns.enter(|| {
            TcpListener::bind(SocketAddr::new(ip, 0))
                .expect("binding a free port")
                .local_addr()
                .unwrap()
                .port()
        });
        let addr = SocketAddr::new(ip, port);
        let dd = d.display();
        let config = format!(
            "common: {{daemonize: false, log_media: stdout, log_level: info, working_dir: .}}\n\
             config_paths:\n  config_dir: {dd}/etc/\n  data_dir: {dd}/data/\n  \
             simulation_path: {dd}/etc/simulation.yaml\n  hub_dir: {dd}/hub/\n  \
             index_path: {dd}/hub/.index.json\n  notification_dir: {dd}/etc/notifications/\n  \
             plugin_dir: {plugins}/\n\
             crowdsec_service: {{acquisition_path: {dd}/etc/acquis.yaml}}\n\
             db_config: {{type: sqlite, db_path: {dd}/data/crowdsec.db}}\n\
             api:\n  client: {{credentials_path: {dd}/etc/local_api_credentials.yaml}}\n  \
             server:\n    listen_uri: \"{addr}\"\n    profiles_path: {dd}/etc/profiles.yaml\n    \
             trusted_ips: [\"127.0.0.1\", \"::1\"]\n\
             prometheus: {{enabled: false}}\n",
            plugins = pkg.join("usr/lib/crowdsec/plugins").display(),
        );
        std::fs::write(d.join("config.yaml"), config).unwrap();
        let mut lapi = Lapi {
            dir,
            ns: ns.name.clone(),
            addr,
            child: None,
            lines: Arc::new(Mutex::new(Vec::new())),
        };
        lapi.run();
        // cscli's own machine, for `cscli decisions`.
        lapi.cscli(&[
            "machines",
            "add",
            "cscli-test",
            "--password",
            "cscli-test-password",
            "--force",
            "-f",
            &lapi.path("etc/local_api_credentials.yaml"),
        ]);
        lapi
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// A file in the server's temporary directory (for `cscli decisions import -i`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the server process and waits until it listens.
    fn run(&mut self) {
        let bin = unpacked().join("usr/bin/crowdsec");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(bin)
            .args(["-c", &self.path("config.yaml"), "-no-cs"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting crowdsec");
        self.lines.lock().unwrap().clear();
        collect_lines(&mut child, &self.lines, None);
        self.child = Some(child);
        let listening = wait_until(Duration::from_secs(30), || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|(_, l)| l.contains("Local API listening"))
        });
        assert!(
            listening,
            "crowdsec did not start listening on {}:\n{}",
            self.addr,
            self.log()
        );
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same address, configuration and database.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// `cscli -c CONFIG ARGS` in the server's namespace; its output. Panics when it fails.
    ///
    /// A `decisions` command that the Local API refused with "database is locked" (its
    /// SQLite file written at that moment by a bouncer's pull or a machine's login) is
    /// tried again, up to five times: adding or deleting a decision twice is harmless
    /// here, and the failed call may have written its decision all the same.
    pub fn cscli(&self, args: &[&str]) -> String {
        let mut tries = 0;
        loop {
            match self.try_cscli(args) {
                Ok(text) => return text,
                Err(text)
                    if args.first() == Some(&"decisions")
                        && text.contains("database is locked")
                        && tries < 5 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
                Err(text) => panic!("cscli {args:?} failed: {text}"),
            }
        }
    }

    /// [`Lapi::cscli`], its output as the error when it fails.
    pub fn try_cscli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(unpacked().join("usr/bin/cscli"))
            .args(["-c", &self.path("config.yaml")])
            .args(args)
            .output()
            .expect("running cscli");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// Runs `sql` on the server's SQLite database (`sqlite3`, waiting up to 10 s while
    /// the server holds it locked). Panics when it fails.
    pub fn sql(&self, sql: &str) {
        let out = Command::new("sqlite3")
            .args([
                "-cmd",
                ".timeout 10000",
                &self.path("data/crowdsec.db"),
                sql,
            ])
            .output()
            .expect("running sqlite3");
        assert!(
            out.status.success(),
            "sqlite3 {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One call of the decision stream with a bouncer's `key` (`startup`: a full answer),
    /// from `ns` (the server's namespace, where it was started); the body.
    pub fn stream(&self, ns: &Netns, key: &str, startup: bool) -> String {
        assert_eq!(ns.name, self.ns, "the server's namespace");
        let answer = ns.enter(|| {
            let mut conn = std::net::TcpStream::connect(self.addr).expect("connecting");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            write!(
                conn,
                "GET /v1/decisions/stream?startup={startup} HTTP/1.0\r\nHost: lapi\r\n\
                 X-Api-Key: {key}\r\n\r\n"
            )
            .unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer)
                .expect("reading the answer");
            answer
        });
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// Registers a bouncer named `name`; its key.
    pub fn add_bouncer(&self, name: &str) -> String {
        let key = format!("{name}-key-{:016x}", fastrand::u64(..));
        self.cscli(&["bouncers", "add", name, "-k", &key]);
        key
    }

    /// Registers a machine named `name` and writes its credentials file (mode 0600) to
    /// `file`, as `cscli machines add -f` does.
    pub fn add_machine(&self, name: &str, file: &Path) {
        let password = format!("{name}-pw-{:016x}", fastrand::u64(..));
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            &password,
            "--force",
            "-f",
            file.to_str().unwrap(),
        ]);
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        text.join("\n")
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server of the fleet: its namespace, interface, address, workdir and daemon.
/// Fields drop in order: the daemon first, the namespace last.
pub struct Server {
    pub daemon: Option<Daemon>,
    _service: Vec<TcpListener>,
    pub wd: Workdir,
    pub v4: IpAddr,
    pub v6: IpAddr,
    pub ns: Netns,
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

impl Server {
    /// Joins the LAN as host `n` (192.0.2.n, 2001:db8::n) with a service on port 80,
    /// registers its bouncer and machine at the Local API and starts its daemon with
    /// `extra` configuration lines.
    pub fn start(lan: &Lan, lapi: &Lapi, name: &str, n: u8, extra: &str) -> Server {
        let mut s = Server::prepare(lan, lapi, name, n, extra);
        s.start_daemon();
        s
    }

    /// [`Server::start`] without starting the daemon ([`Server::start_daemon`] does).
    pub fn prepare(lan: &Lan, lapi: &Lapi, name: &str, n: u8, extra: &str) -> Server {
        let ns = Netns::new(name);
        let (v4, v6) = (ip(&format!("192.0.2.{n}")), ip(&format!("2001:db8::{n:x}")));
        let iface = lan.join(&ns, &[&format!("{v4}/24"), &format!("{v6}/64")]);
        let service = ns.enter(|| {
            vec![
                TcpListener::bind(SocketAddr::new(v4, 80)).unwrap(),
                TcpListener::bind(SocketAddr::new(v6, 80)).unwrap(),
            ]
        });
        let wd = Workdir::new();
        let key = lapi.add_bouncer(&format!("portsentry-{name}"));
        let key_file = wd.path("bouncer.key");
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let credentials = wd.path("crowdsec.yaml");
        lapi.add_machine(&format!("portsentry-{name}"), &credentials);
        wd.config(
            &iface,
            &format!(
                "CROWDSEC_LAPI_URL=\"{}\"\n\
                 CROWDSEC_BOUNCER_KEY_FILE=\"{}\"\n\
                 CROWDSEC_CREDENTIALS_FILE=\"{}\"\n\
                 BAN_TIME=\"1h\"\n\
                 {extra}",
                lapi.url(),
                key_file.display(),
                credentials.display()
            ),
        );
        Server {
            ns,
            v4,
            v6,
            wd,
            daemon: None,
            _service: service,
        }
    }

    /// Starts the daemon; returns once its first answer from the Local API is enforced.
    pub fn start_daemon(&mut self) {
        let daemon = Daemon::start(&self.ns, &["run", "-c", self.wd.conf().to_str().unwrap()]);
        daemon.wait_for(
            "crowdsec: enforcing the decisions of",
            Duration::from_secs(60),
        );
        self.daemon = Some(daemon);
    }

    pub fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.lines().join("\n"))
            .unwrap_or_default()
    }

    /// The origin of the ban of exactly `net` in `status --json`, if banned.
    pub fn ban_origin(&self, net: &str) -> Option<String> {
        status(&self.wd)["bans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["net"] == net)
            .map(|b| b["origin"].as_str().unwrap().to_owned())
    }

    /// Waits (15 s at most) until the ban of `net` is (or is not) in force with origin
    /// crowdsec; panics with the log.
    pub fn wait_crowdsec_ban(&self, net: &str, present: bool) {
        let ok = wait_until(Duration::from_secs(15), || {
            (self.ban_origin(net).as_deref() == Some("crowdsec")) == present
        });
        assert!(
            ok,
            "the crowdsec ban of {net} is {}; status:\n{}\nlog:\n{}",
            if present { "missing" } else { "still there" },
            status(&self.wd),
            self.log()
        );
    }

    /// Whether `src` (an attacker address) can open a connection to this server's port 80.
    pub fn reachable_from(&self, attacker: &Netns, src: IpAddr) -> bool {
        let dst = match src {
            IpAddr::V4(_) => SocketAddr::new(self.v4, 80),
            IpAddr::V6(_) => SocketAddr::new(self.v6, 80),
        };
        attacker.enter(|| tcp_connect(src, dst, Duration::from_millis(800)).is_ok())
    }

    /// The CrowdSec part of `status --json`.
    pub fn link(&self) -> serde_json::Value {
        status(&self.wd)["crowdsec"].clone()
    }
}
