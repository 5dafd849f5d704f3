//! Runs the real `portsentry` binary inside a test namespace and reads its log lines.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use std::fs;

use crate::netns::Netns;

/// `target/release/portsentry`, built by `cargo xtask build` (which `cargo xtask test`
/// runs first) next to the test and bench binaries.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let mut dir = exe.parent().expect("target/<profile>/[deps/]<binary>");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let bin = dir.join("portsentry");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test` (it builds the binary)",
        bin.display()
    );
    bin
}

/// A running daemon. Killed (SIGKILL) on drop if still running.
pub struct Daemon {
    pub child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Daemon {
    /// Starts `portsentry ARGS` in `ns` and waits until it reports itself active.
    pub fn start(ns: &Netns, args: &[&str]) -> Daemon {
        Daemon::start_env(ns, args, &[])
    }

    /// Like [`Daemon::start`], with `env` set for the daemon.
    pub fn start_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = ns.command(binary().to_str().expect("utf-8 path"));
        cmd.args(args).envs(env.iter().copied());
        Daemon::spawn(cmd)
    }

    /// Like [`Daemon::start`], with `hosts` bind-mounted over /etc/hosts in a mount
    /// namespace of the daemon's own (for reverse-lookup tests).
    pub fn start_with_hosts(ns: &Netns, hosts: &std::path::Path, args: &[&str]) -> Daemon {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/hosts && exec nsenter --net=/run/netns/{} \"$0\" \"$@\"",
                hosts.display(),
                ns.name
            ))
            .arg(binary())
            .args(args);
        Daemon::spawn(cmd)
    }

    fn spawn(mut cmd: std::process::Command) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting portsentry");
        let lines = Arc::new(Mutex::new(Vec::new()));
        collect_lines(&mut child, &lines, Some("portsentry"));
        let d = Daemon { child, lines };
        d.wait_for("portsentry: active", Duration::from_secs(20));
        d
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// When the first line containing `needle` was read, if it has been.
    pub fn line_time(&self, needle: &str) -> Option<Instant> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }

    /// Waits for a log line containing `needle`; panics with the log on timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                start.elapsed() < timeout,
                "no log line with {needle:?} within {timeout:?}; log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn has_line(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGKILL (no clean-up at all), then waits for it to be gone.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "portsentry did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines a child writes to stderr and stdout (piped), each with when it was read,
/// appended to `lines` by a thread per pipe; echoed to the test's stderr as `[tag] line`
/// when `echo` names a tag.
pub fn collect_lines(
    child: &mut Child,
    lines: &Arc<Mutex<Vec<(Instant, String)>>>,
    echo: Option<&'static str>,
) {
    for pipe in [
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let at = Instant::now();
                if let Some(tag) = echo {
                    eprintln!("[{tag}] {line}");
                }
                lines.lock().unwrap().push((at, line));
            }
        });
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A temporary folder with a daemon configuration whose files all live in it.
///
/// The daemon pins its program, maps and links under a bpffs folder of the test's own
/// (`pin_dir`), removed with the workdir, so tests never share kernel state.
pub struct Workdir {
    _dir: tempfile::TempDir,
    root: PathBuf,
    pub pin_dir: PathBuf,
}

static PIN_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Workdir {
    pub fn new() -> Workdir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/ps-test-{}-{}",
            std::process::id(),
            PIN_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Workdir {
            _dir: dir,
            root,
            pin_dir,
        }
    }

    /// The configuration file written by [`Workdir::config`].
    pub fn conf(&self) -> PathBuf {
        self.path("portsentry.conf")
    }

    /// Runs `portsentry ARGS -c CONF` (a CLI command, not the daemon) in the root
    /// namespace; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_env(args, &[])
    }

    /// Like [`Workdir::cli`], with `env` set for the command (SSH_CLIENT, ...); SSH's
    /// variables are removed first. (The command still finds the SSH session of the
    /// process running the tests, if any, as it does under sudo: the tests ban
    /// documentation addresses, which that session's never is.)
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let out = std::process::Command::new(binary())
            .env_remove("SSH_CLIENT")
            .env_remove("SSH_CONNECTION")
            .envs(env.iter().copied())
            .args(args)
            .arg("-c")
            .arg(self.conf())
            .output()
            .expect("running portsentry");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// A configuration for `iface` with commands that record their order; `extra` lines
    /// are appended, replacing the defaults of the keys they set.
    /// An empty ignore file is written unless the test wrote one first.
    pub fn config(&self, iface: &str, extra: &str) -> PathBuf {
        let ignore = self.path("portsentry.ignore");
        if !ignore.exists() {
            fs::write(&ignore, "").unwrap();
        }
        let order = self.path("order").display().to_string();
        let text = format!(
            "# written by the test\n\
             INTERFACES=\"{iface}\"\n\
             XDP_MODE=\"native\"\n\
             STATE_DIR=\"{state}\"\n\
             HISTORY_FILE=\"{history}\"\n\
             BLOCKED_FILE=\"{blocked}\"\n\
             HOSTS_DENY_FILE=\"{deny}\"\n\
             IGNORE_FILE=\"{ignore}\"\n\
             BLOCK_TCP=\"1\"\n\
             BLOCK_UDP=\"1\"\n\
             KILL_ROUTE=\"echo route $TARGET$ $PORT$ $MODE$ >> {order}\"\n\
             KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n\
             KILL_RUN_CMD=\"echo run $TARGET$ $PORT$ $MODE$ >> {order}\"\n\
             SCAN_TRIGGER=\"0\"\n\
             SYSLOG=\"0\"\n\
             PIN_DIR=\"{pins}\"\n\
             {extra}",
            pins = self.pin_dir.display(),
            state = self.path("state").display(),
            history = self.path("portsentry.history").display(),
            blocked = self.path("portsentry.blocked").display(),
            deny = self.path("hosts.deny").display(),
            ignore = self.path("portsentry.ignore").display(),
        );
        // A key in `extra` replaces the default line for it (duplicates are errors).
        let overridden: Vec<&str> = extra
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        let base_len = text.len() - extra.len();
        let text: String = text[..base_len]
            .lines()
            .filter(|l| {
                !l.split_once('=')
                    .is_some_and(|(k, _)| overridden.contains(&k.trim()))
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + extra;
        let path = self.path("portsentry.conf");
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        // Unpin links (detaching the program) and maps.
        if let Ok(entries) = fs::read_dir(&self.pin_dir) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(&self.pin_dir);
    }
}

impl Default for Workdir {
    fn default() -> Self {
        Workdir::new()
    }
}
