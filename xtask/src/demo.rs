//! `cargo xtask demo`: portsentry catching a port scan, in a few seconds.
//!
//! Two network namespaces of the demo's own (a server and an attacker) are joined by a
//! veth pair; nothing of the host's own interfaces or namespaces is touched. The daemon
//! watches the server's end, nmap scans from the attacker, the attacker gets banned, and
//! everything is removed again at the end, also when a step fails or on Ctrl-C.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain;

const SRV_NS: &str = "psdemo-srv";
const ATK_NS: &str = "psdemo-atk";
/// The veth ends, made directly inside the namespaces (never in the host's).
const SRV_IF: &str = "veth-srv";
const ATK_IF: &str = "veth-atk";
const SRV_IP: &str = "192.0.2.1";
const ATK_IP: &str = "192.0.2.66";
const PIN_DIR: &str = "/sys/fs/bpf/portsentry-demo";
/// Runs for the banned host (through /bin/sh: the quotes keep the parentheses literal).
const KILL_RUN_CMD: &str =
    "echo 'portsentry demo: would notify about $TARGET$ ($MODE$, port $PORT$)'";

pub fn run(root: &Path) -> Result<()> {
    if !toolchain::is_root() {
        bail!("the demo creates network namespaces and loads XDP: run it as root");
    }
    crate::build(root)?;
    toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
    toolchain::ensure_bpffs()?;
    catch_ctrl_c();

    let dir = std::env::temp_dir().join(format!("portsentry-demo-{}", std::process::id()));
    let mut demo = Demo {
        bin: root.join("target/release/portsentry"),
        conf: dir.join("portsentry.conf"),
        dir,
        daemon: None,
        reader: None,
        log: Arc::default(),
        cleaned: false,
    };
    let shown = demo.show();
    println!("\n== cleaning up");
    let failures = demo.clean_up();
    shown?;
    if !failures.is_empty() {
        bail!("cleaning up failed:\n{}", failures.join("\n"));
    }
    println!(
        "\ndemo done: portsentry caught nmap's SYN scan from {ATK_IP}, banned it in XDP \
         (its packets are dropped before the kernel's network stack), ran KILL_RUN_CMD and \
         wrote the history line; the namespaces, pins and files are gone again."
    );
    Ok(())
}

/// Everything the demo made; dropping it removes all of it.
struct Demo {
    bin: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    daemon: Option<Child>,
    reader: Option<JoinHandle<()>>,
    /// The daemon's stderr lines so far.
    log: Arc<Mutex<Vec<String>>>,
    cleaned: bool,
}

impl Demo {
    fn show(&mut self) -> Result<()> {
        let bin = self
            .bin
            .to_str()
            .context("non-UTF-8 target path")?
            .to_owned();
        let conf = self
            .conf
            .to_str()
            .context("non-UTF-8 temp path")?
            .to_owned();
        self.write_config()?;
        // Pins left by an earlier demo that was killed before it could clean up.
        let out = exec(&[&bin, "unload", "-c", &conf])?;
        if !out.starts_with("nothing to unload") {
            println!("removed the pins of an earlier demo: {}", out.trim());
        }

        println!(
            "== making namespaces {SRV_NS} (server, {SRV_IP}) and {ATK_NS} (attacker, {ATK_IP})"
        );
        for ns in [SRV_NS, ATK_NS] {
            if delete_netns(ns)? {
                println!("deleted the namespace {ns} left by an earlier demo");
            }
            exec(&["ip", "netns", "add", ns])?;
            exec(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        exec(&[
            "ip", "link", "add", SRV_IF, "netns", SRV_NS, "type", "veth", "peer", "name", ATK_IF,
            "netns", ATK_NS,
        ])?;
        for (ns, iface, ip) in [(SRV_NS, SRV_IF, SRV_IP), (ATK_NS, ATK_IF, ATK_IP)] {
            exec(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                iface,
            ])?;
            exec(&["ip", "-n", ns, "link", "set", iface, "up"])?;
        }
        wait_until(Duration::from_secs(5), || {
            exec(&["ip", "-n", SRV_NS, "link", "show", SRV_IF])
                .is_ok_and(|o| o.contains("LOWER_UP"))
        })
        .with_context(|| format!("{SRV_IF} in {SRV_NS} has no carrier after 5 s"))?;
        // Resolves the neighbours, so that nmap's first probe is not held up by ARP.
        in_ns(SRV_NS, &["ping", "-c", "1", "-W", "2", ATK_IP])?;

        println!("\n== starting portsentry on {SRV_IF} in {SRV_NS} (config {conf})");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{SRV_NS}"))
            .args([&bin, "run", "-c", &conf])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C reaches only us, and we stop it in order.
            .process_group(0)
            .spawn()
            .context("starting nsenter ... portsentry run")?;
        let stderr = child.stderr.take().expect("piped stderr");
        self.daemon = Some(child);
        let log = self.log.clone();
        self.reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                println!("[portsentry] {line}");
                log.lock().unwrap().push(line);
            }
        }));
        self.wait_for_log("portsentry: active", Duration::from_secs(20))?;

        in_ns(ATK_NS, &["ping", "-c", "1", "-W", "2", SRV_IP])
            .context("before the scan, the attacker cannot ping the server")?;
        println!("\nbefore the scan: the attacker pings the server and gets an answer");

        println!(
            "\n== the attacker SYN-scans ports 1-100 of the server with nmap\n\
             portsentry watches TCP ports 1-1023 but 113 and 139 (advanced mode; nothing \
             listens there)\nand acts on the first probe: it bans {ATK_IP} in XDP and runs \
             KILL_RUN_CMD. The ban is decided in\nuserspace, so nmap's first probes may still \
             get through (those ports show as 'closed');\nthe probes after the ban get no \
             answer ('filtered')."
        );
        let out = in_ns(
            ATK_NS,
            &[
                "nmap",
                "-n",
                "-Pn",
                "-sS",
                "-p",
                "1-100",
                "--max-retries",
                "0",
                "--host-timeout",
                "20s",
                "-T4",
                SRV_IP,
            ],
        )?;
        for line in out.lines() {
            println!("[nmap] {line}");
        }
        if !out.contains("(1 host up)") {
            bail!("nmap did not scan {SRV_IP} (no \"(1 host up)\" in its output above)");
        }

        let alert = format!("attackalert: Host {ATK_IP} has been blocked via XDP drop");
        self.wait_for_log(&alert, Duration::from_secs(10))?;

        println!("\n== the attacker is cut off now");
        let ping = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ATK_NS}"))
            .args(["ping", "-c", "2", "-W", "1", SRV_IP])
            .output()
            .context("running ping in the attacker's namespace")?;
        check_interrupted()?;
        match ping.status.code() {
            // ping's status for "no reply".
            Some(1) => println!("attacker's packets are dropped: ping got no answer"),
            Some(0) => bail!(
                "the attacker still gets answers from the server after the ban:\n{}",
                String::from_utf8_lossy(&ping.stdout)
            ),
            _ => bail!(
                "ping in {ATK_NS} failed ({}): {}",
                ping.status,
                String::from_utf8_lossy(&ping.stderr).trim()
            ),
        }

        println!("\n== portsentry status -c {conf}");
        print!("{}", exec(&[&bin, "status", "-c", &conf])?);
        let history = self.dir.join("portsentry.history");
        println!("\n== the history file ({})", history.display());
        print!(
            "{}",
            fs::read_to_string(&history)
                .with_context(|| format!("reading {}", history.display()))?
        );
        Ok(())
    }

    fn write_config(&self) -> Result<()> {
        let _ = fs::remove_dir_all(&self.dir);
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = |name: &str| self.dir.join(name).display().to_string();
        fs::write(path("portsentry.ignore"), "")?;
        let text = format!(
            "# written by `cargo xtask demo`\n\
             INTERFACES=\"{SRV_IF}\"\n\
             XDP_MODE=\"native\"\n\
             STATE_DIR=\"{state}\"\n\
             HISTORY_FILE=\"{history}\"\n\
             BLOCKED_FILE=\"{blocked}\"\n\
             HOSTS_DENY_FILE=\"{deny}\"\n\
             IGNORE_FILE=\"{ignore}\"\n\
             PIN_DIR=\"{PIN_DIR}\"\n\
             BLOCK_TCP=\"1\"\n\
             BLOCK_UDP=\"1\"\n\
             SYSLOG=\"0\"\n\
             KILL_RUN_CMD=\"{KILL_RUN_CMD}\"\n",
            state = path("state"),
            history = path("portsentry.history"),
            blocked = path("portsentry.blocked"),
            deny = path("hosts.deny"),
            ignore = path("portsentry.ignore"),
        );
        fs::write(&self.conf, text).with_context(|| format!("writing {}", self.conf.display()))
    }

    /// Waits for a daemon log line containing `needle`.
    fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return Ok(());
            }
            check_interrupted()?;
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten()
            {
                self.join_reader();
                bail!("portsentry exited ({status}) before logging {needle:?}; its log is above");
            }
            if start.elapsed() > timeout {
                bail!(
                    "portsentry logged no line with {needle:?} within {timeout:?}; its log is above"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Stops the daemon, unloads, deletes the namespaces and the temp folder; returns
    /// what failed. Each step runs whatever the others did.
    fn clean_up(&mut self) -> Vec<String> {
        self.cleaned = true;
        let mut failures = Vec::new();
        if let Some(mut child) = self.daemon.take() {
            if let Err(e) = stop(&mut child) {
                failures.push(format!("{e:#}"));
            }
            self.join_reader();
        }
        if self.conf.exists() {
            match output(&[
                &self.bin.to_string_lossy(),
                "unload",
                "-c",
                &self.conf.to_string_lossy(),
            ]) {
                Ok(out) => println!("{}", out.trim()),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        for ns in [SRV_NS, ATK_NS] {
            match delete_netns(ns) {
                Ok(true) => println!("deleted namespace {ns}"),
                Ok(false) => {}
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => println!("removed {}", self.dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failures.push(format!("removing {}: {e}", self.dir.display())),
        }
        failures
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.cleaned {
            for f in self.clean_up() {
                eprintln!("demo: cleaning up: {f}");
            }
        }
    }
}

/// SIGTERM, then waits (the daemon waits for its kill commands; ours are instant).
fn stop(child: &mut Child) -> Result<()> {
    if child.try_wait()?.is_none() {
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { kill(pid, SIGTERM) };
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("portsentry exited with {status}");
            }
            println!("portsentry stopped (the XDP program stays attached until unloaded)");
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("portsentry did not stop within 30 s of SIGTERM: killed it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deletes a namespace of the demo's if it exists; returns whether it did.
fn delete_netns(ns: &str) -> Result<bool> {
    if !Path::new("/run/netns").join(ns).exists() {
        return Ok(false);
    }
    output(&["ip", "netns", "del", ns])?;
    Ok(true)
}

/// Runs `args` in a namespace (network only, so bpffs and /tmp are the host's).
fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let net = format!("--net=/run/netns/{ns}");
    let mut all = vec!["nsenter", &net];
    all.extend_from_slice(args);
    exec(&all)
}

/// Runs a step's command (not after Ctrl-C); returns its stdout.
fn exec(args: &[&str]) -> Result<String> {
    check_interrupted()?;
    let out = output(args)?;
    check_interrupted()?;
    Ok(out)
}

/// Runs a command; returns its stdout, or an error naming it with its stderr.
fn output(args: &[&str]) -> Result<String> {
    let shown = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{shown}`"))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        bail!("`{shown}` failed ({}): {text}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !f() {
        check_interrupted()?;
        if start.elapsed() > timeout {
            bail!("timed out");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

// Ctrl-C: a flag the steps check, so that the guard cleans up instead of the process
// dying on the spot (std already links libc; xtask has no libc crate).
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn kill(pid: i32, sig: i32) -> i32;
}

extern "C" fn on_sigint(_: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_ctrl_c() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe { signal(SIGINT, on_sigint) };
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}
