//! What happens to a host that scanned: PortSentry's kill actions, planned and run.
//!
//! [`plan`] turns the configuration into the ordered [`Step`]s for one host, in PortSentry
//! 1.2's order (`DisposeTCP`/`DisposeUDP`), with our XDP ban standing in for the blocking;
//! [`undo_plan`] gives the steps that undo them when a ban ends. The daemon executes the
//! steps: the XDP ban itself, `KILL_HOSTS_DENY` through [`append_line`], the commands
//! through [`run_shell`], which, unlike 1.2's `system()`, never blocks the packet loop and
//! kills a command that hangs.
//!
//! Token substitution ([`substitute`]) is 1.2's `SubstString`, applied to `$TARGET$`, then
//! `$PORT$`, then `$MODE$`; we format every value ourselves, so nothing an attacker sends
//! reaches a shell.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    net::IpAddr,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::AsyncReadExt as _,
    net::unix::pipe,
    process::{Child, Command},
    time::Instant,
};

use crate::config::{BlockMode, Config};

/// How much of a command's output [`run_shell`] keeps for the log.
pub const MAX_CAPTURE: usize = 4096;

/// After the shell exits, how long [`run_shell`] still waits for the end of its output
/// (output of the shell's own commands is already in the pipe by then; this is for a
/// background child that still holds the pipe).
const DRAIN_GRACE: Duration = Duration::from_millis(100);

/// What a response step is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Our XDP ban (done by the daemon itself, not here).
    XdpBan,
    /// Append this (already substituted) line to the hosts.deny file.
    HostsDeny(String),
    /// Run this (already substituted) KILL_ROUTE (or UNKILL_ROUTE) command with /bin/sh -c.
    Route(String),
    /// Run this (already substituted) KILL_RUN_CMD (or UNKILL_RUN_CMD) command with
    /// /bin/sh -c.
    RunCmd(String),
    /// Remove every line equal to this (already substituted) line from the hosts.deny file
    /// ([`remove_line`]): the undo of [`Step::HostsDeny`].
    HostsDenyRemove(String),
}

/// The values substituted into command templates. We format all of them ourselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// `$TARGET$`, formatted by `Display` (`192.0.2.7`, `2001:db8::7`).
    pub ip: IpAddr,
    /// `$PORT$`, in decimal.
    pub port: u16,
    /// `$MODE$`: `atcp`, `audp`, `stcp` or `sudp` ([`crate::config::Mode::tcp_token`]).
    pub mode: &'static str,
}

/// Replaces every `$TARGET$`, `$PORT$` and `$MODE$` in `template` (all occurrences, nothing
/// else).
///
/// As PortSentry 1.2 does, the tokens are replaced one after the other: every `$TARGET$`
/// first, then `$PORT$`, then `$MODE$`. The values hold no `$`, so a replacement can never
/// form a new token; the order only matters for overlapping tokens such as `$PORT$TARGET$`,
/// where 1.2 replaces `$TARGET$`.
pub fn substitute(template: &str, t: &Target) -> String {
    template
        .replace("$TARGET$", &t.ip.to_string())
        .replace("$PORT$", &t.port.to_string())
        .replace("$MODE$", t.mode)
}

/// The ordered steps for one host, per PORTSENTRY.md:
///
/// - `BLOCK=0` ([`BlockMode::ReportOnly`]): no steps.
/// - `BLOCK=2` ([`BlockMode::RunCmdOnly`]): `[RunCmd]` if `KILL_RUN_CMD` is set (else none).
/// - `BLOCK=1` ([`BlockMode::Block`]): with `KILL_RUN_CMD_FIRST=0`
///   `[XdpBan, HostsDeny, Route, RunCmd]`; with `KILL_RUN_CMD_FIRST=1`
///   `[RunCmd, XdpBan, HostsDeny, Route]`.
///
/// Each of `HostsDeny`/`Route`/`RunCmd` is there only when its `KILL_*` key is set. The XDP
/// ban is "the blocking": it heads the blocking steps, so with `KILL_RUN_CMD_FIRST=1` a
/// script still reaches the host before it is blocked.
pub fn plan(cfg: &Config, block: BlockMode, t: &Target) -> Vec<Step> {
    let run_cmd = cfg
        .kill_run_cmd
        .as_deref()
        .map(|c| Step::RunCmd(substitute(c, t)));
    match block {
        BlockMode::ReportOnly => Vec::new(),
        BlockMode::RunCmdOnly => run_cmd.into_iter().collect(),
        BlockMode::Block => {
            let mut steps = Vec::with_capacity(4);
            let (before, after) = if cfg.kill_run_cmd_first {
                (run_cmd, None)
            } else {
                (None, run_cmd)
            };
            steps.extend(before);
            steps.push(Step::XdpBan);
            if let Some(line) = &cfg.kill_hosts_deny {
                steps.push(Step::HostsDeny(substitute(line, t)));
            }
            if let Some(cmd) = &cfg.kill_route {
                steps.push(Step::Route(substitute(cmd, t)));
            }
            steps.extend(after);
            steps
        }
    }
}

/// The steps that undo a ban when it ends (expiry or unban), from the extension keys:
/// `Route(UNKILL_ROUTE)` if set, then `HostsDenyRemove(KILL_HOSTS_DENY)` if
/// `UNKILL_HOSTS_DENY` is on and `KILL_HOSTS_DENY` is set, then `RunCmd(UNKILL_RUN_CMD)` if
/// set.
///
/// The blocking is undone in the reverse of [`plan`]'s order (route, then hosts.deny), and
/// the run command comes last, when the host is no longer blocked, whatever
/// `KILL_RUN_CMD_FIRST` says. Lifting the XDP ban is the daemon's and not a step here; the
/// caller only runs this for a host that [`plan`] blocked (`BLOCK=1`).
pub fn undo_plan(cfg: &Config, t: &Target) -> Vec<Step> {
    let mut steps = Vec::with_capacity(3);
    if let Some(cmd) = &cfg.unkill_route {
        steps.push(Step::Route(substitute(cmd, t)));
    }
    if cfg.unkill_hosts_deny
        && let Some(line) = &cfg.kill_hosts_deny
    {
        steps.push(Step::HostsDenyRemove(substitute(line, t)));
    }
    if let Some(cmd) = &cfg.unkill_run_cmd {
        steps.push(Step::RunCmd(substitute(cmd, t)));
    }
    steps
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The shell exited with this status.
    Exited(i32),
    /// The shell was killed by this signal (not by us).
    Signaled(i32),
    /// It ran past its timeout; its whole process group was killed.
    TimedOut,
    /// It could not be started (the error's text).
    SpawnFailed(String),
}

impl Outcome {
    /// Exited with status 0.
    pub fn ok(&self) -> bool {
        *self == Outcome::Exited(0)
    }

    fn from_status(status: ExitStatus) -> Outcome {
        use std::os::unix::process::ExitStatusExt as _;
        match (status.code(), status.signal()) {
            (Some(code), _) => Outcome::Exited(code),
            (None, Some(sig)) => Outcome::Signaled(sig),
            // Neither exited nor signaled: stopped/continued, which wait() does not report.
            (None, None) => Outcome::Exited(status.into_raw()),
        }
    }
}

/// For logs: `exited with status 0`, `killed by signal 9`, `timed out (killed)`,
/// `could not be started: ...`.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited with status {code}"),
            Outcome::Signaled(sig) => write!(f, "killed by signal {sig}"),
            Outcome::TimedOut => f.write_str("timed out (killed)"),
            Outcome::SpawnFailed(e) => write!(f, "could not be started: {e}"),
        }
    }
}

/// Runs `/bin/sh -c cmd` with stdin from /dev/null, stdout and stderr captured together
/// (the first [`MAX_CAPTURE`] bytes are kept for the log; the rest is read and dropped), in
/// its own process group, with the daemon's environment and cwd `/`.
///
/// Returns when the shell has exited and its output has ended, or at `timeout`. At the
/// timeout the whole process group is killed (SIGKILL) and the shell reaped, and the result
/// is [`Outcome::TimedOut`]. A background child the shell leaves running (`cmd &`, as
/// PortSentry 1.2 setups often do to keep `system()` from blocking) is left alone once the
/// shell has exited: we wait a moment for the end of the output, then return the shell's
/// status, and a detached task keeps reading (and dropping) whatever it still writes, so it
/// never dies of SIGPIPE.
///
/// Never blocks the caller's runtime (tokio::process). Must be called within a tokio
/// runtime with IO and time enabled. If the returned future is dropped before it finishes,
/// the process group is killed.
pub async fn run_shell(cmd: &str, timeout: Duration) -> (Outcome, String) {
    let deadline = Instant::now() + timeout;
    let (rx, mut child) = match spawn_shell(cmd) {
        Ok(spawned) => spawned,
        Err(e) => return (Outcome::SpawnFailed(e.to_string()), String::new()),
    };
    // Declared after `child`, so dropped before it: the group is killed while the shell is
    // not yet reaped, so its pid (the group id) cannot have been reused.
    let mut group = GroupKiller(child.id().and_then(|p| libc::pid_t::try_from(p).ok()));
    let mut out = Capture::new(rx);

    let waited = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            () = out.read_some(), if !out.eof => {}
            () = tokio::time::sleep_until(deadline) => break None,
        }
    };
    let outcome = match waited {
        Some(Ok(status)) => {
            // Reaped: the group id is no longer ours to signal.
            group.0 = None;
            Outcome::from_status(status)
        }
        Some(Err(e)) => {
            group.kill();
            let _ = child.wait().await;
            Outcome::SpawnFailed(format!("waiting for the shell failed: {e}"))
        }
        None => {
            group.kill();
            // SIGKILL cannot be caught: the shell ends at once.
            let _ = child.wait().await;
            Outcome::TimedOut
        }
    };
    group.0 = None;
    let grace = std::cmp::min(Instant::now() + DRAIN_GRACE, deadline.max(Instant::now()));
    let _ = tokio::time::timeout_at(grace, out.read_to_eof()).await;
    let text = out.text();
    out.detach();
    (outcome, text)
}

/// Starts the shell; returns the read end of its output pipe. The write ends are closed
/// here once the child has them, so the pipe ends when the child's side does.
fn spawn_shell(cmd: &str) -> io::Result<(pipe::Receiver, Child)> {
    // Both ends are O_CLOEXEC: no other child inherits them.
    let (tx, rx) = pipe::pipe()?;
    let stdout = tx.into_blocking_fd()?;
    let stderr = stdout.try_clone()?;
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .current_dir("/")
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn()?;
    // `command` holds our copies of the write end until it is dropped.
    drop(command);
    Ok((rx, child))
}

/// Kills a process group (SIGKILL) when told to, or when dropped while still armed.
struct GroupKiller(Option<libc::pid_t>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: plain syscall; the group's leader is our unreaped child.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The captured start of a command's output.
struct Capture {
    rx: Option<pipe::Receiver>,
    buf: Vec<u8>,
    eof: bool,
}

impl Capture {
    fn new(rx: pipe::Receiver) -> Capture {
        Capture {
            rx: Some(rx),
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Reads one chunk; keeps what fits under [`MAX_CAPTURE`]. Cancel safe.
    async fn read_some(&mut self) {
        let Some(rx) = self.rx.as_mut() else {
            self.eof = true;
            return;
        };
        let mut chunk = [0u8; 8192];
        match rx.read(&mut chunk).await {
            Ok(0) | Err(_) => self.eof = true,
            Ok(n) => {
                let room = MAX_CAPTURE.saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }

    async fn read_to_eof(&mut self) {
        while !self.eof {
            self.read_some().await;
        }
    }

    /// The captured bytes as text (lossy UTF-8), at most [`MAX_CAPTURE`] bytes.
    fn text(&self) -> String {
        let mut bytes = self.buf.as_slice();
        // A multi-byte character cut at the limit is dropped, not shown as U+FFFD.
        if self.buf.len() >= MAX_CAPTURE
            && let Err(e) = std::str::from_utf8(bytes)
            && e.error_len().is_none()
        {
            bytes = &bytes[..e.valid_up_to()];
        }
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        if text.len() > MAX_CAPTURE {
            let mut end = MAX_CAPTURE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }

    /// Hands the pipe, if it is still open, to a task that reads it to the end.
    fn detach(mut self) {
        if self.eof {
            return;
        }
        if let Some(mut rx) = self.rx.take() {
            tokio::spawn(async move {
                let mut sink = [0u8; 8192];
                while let Ok(n) = rx.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    }
}

/// `path: error`, keeping the error's kind; a symlink refused by `O_NOFOLLOW` says so.
fn path_error(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return io::Error::new(
            e.kind(),
            format!(
                "{}: is a symbolic link; refusing to follow it ({e})",
                path.display()
            ),
        );
    }
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Opens `path` without following a symlink there (`O_NOFOLLOW`; `O_NONBLOCK` so a FIFO
/// cannot hang us) and checks that it is a regular file.
fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    Ok(file)
}

/// Appends `line` + "\n" to `path` (created 0644, less the umask, if missing), opened with
/// `O_APPEND|O_NOFOLLOW|O_CLOEXEC` (a symlink at `path` is an error, never followed), in
/// one write, then fsync'd. A line containing a newline is refused (it would add more than
/// one line). Errors name the path.
pub fn append_line(path: &Path, line: &str) -> io::Result<()> {
    if line.contains('\n') {
        return Err(path_error(
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to append a line that contains a newline",
            ),
        ));
    }
    let append = || -> io::Result<()> {
        // std opens with O_CLOEXEC.
        let mut file = open_regular(
            path,
            OpenOptions::new().append(true).create(true).mode(0o644),
        )?;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        file.write_all(&bytes)?;
        file.sync_all()
    };
    append().map_err(|e| path_error(path, e))
}

/// Removes every line exactly equal to `line` (without its `\n`) from `path`: reads it,
/// writes the rest to a temp file in the same directory (`O_NOFOLLOW`, same mode and, where
/// permitted, owner), fsyncs it and renames it over `path`. A symlink at `path` is an error.
/// Returns whether any line was removed; a missing file has nothing to remove (`false`),
/// and an unchanged file is not rewritten.
///
/// Not safe against a concurrent writer of the same file (a line appended between the read
/// and the rename is lost): the daemon serialises its own hosts.deny edits.
pub fn remove_line(path: &Path, line: &str) -> io::Result<bool> {
    let remove = || -> io::Result<bool> {
        let mut file = match open_regular(path, OpenOptions::new().read(true)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let mut content = Vec::new();
        file.read_to_end(&mut content)?;
        drop(file);
        let mut kept = Vec::with_capacity(content.len());
        let mut removed = false;
        for piece in content.split_inclusive(|b| *b == b'\n') {
            if piece.strip_suffix(b"\n").unwrap_or(piece) == line.as_bytes() {
                removed = true;
            } else {
                kept.extend_from_slice(piece);
            }
        }
        if removed {
            let keep = KeepAttrs {
                mode: meta.mode() & 0o7777,
                owner: Some((meta.uid(), meta.gid())),
            };
            write_atomic(path, &kept, Some(keep))?;
        }
        Ok(removed)
    };
    remove().map_err(|e| path_error(path, e))
}

/// The mode (and owner) [`write_atomic`] gives its file, rather than `0644` less the umask.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeepAttrs {
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
}

/// Writes `bytes` to `path` atomically: a new temp file in the same directory (`O_EXCL`,
/// `O_NOFOLLOW`), fsync, rename over `path` (a symlink at `path` is replaced, never
/// followed), then fsync of the directory. Errors are not prefixed with the path.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], keep: Option<KeepAttrs>) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names no file to write"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (tmp, mut file) = {
        let mut tries = 0;
        loop {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(
                ".tmp-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let tmp: PathBuf = dir.join(tmp_name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
            {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    };
    let write = |file: &mut File| -> io::Result<()> {
        if let Some(keep) = keep {
            if let Some((uid, gid)) = keep.owner {
                // Best effort: only root may give a file away.
                let _ = std::os::unix::fs::fchown(&*file, Some(uid), Some(gid));
            }
            file.set_permissions(std::fs::Permissions::from_mode(keep.mode))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write(&mut file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is done; a failed directory fsync does not undo it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Mode};
    use std::{net::Ipv4Addr, os::unix::fs::symlink, time::Instant as StdInstant};

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    fn target() -> Target {
        Target {
            ip: V4,
            port: 1,
            mode: "atcp",
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portsentry-actions-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn is_eloop(e: &io::Error) -> bool {
        e.kind() == io::Error::from_raw_os_error(libc::ELOOP).kind()
    }

    #[test]
    fn substitute_tokens() {
        let t = target();
        assert_eq!(
            substitute("/sbin/route add -host $TARGET$ reject", &t),
            "/sbin/route add -host 192.0.2.7 reject"
        );
        assert_eq!(
            substitute("x $TARGET$ $PORT$ $MODE$ y", &t),
            "x 192.0.2.7 1 atcp y"
        );
        // Every occurrence, adjacent ones too.
        assert_eq!(
            substitute("$TARGET$$TARGET$ $PORT$/$PORT$ $MODE$$MODE$", &t),
            "192.0.2.7192.0.2.7 1/1 atcpatcp"
        );
        // Nothing else: unclosed, lower case, other names and a lone $ stay.
        assert_eq!(
            substitute("$TARGET $target$ $HOST$ $ $$ $PORT", &t),
            "$TARGET $target$ $HOST$ $ $$ $PORT"
        );
        assert_eq!(substitute("", &t), "");
        assert_eq!(substitute("no tokens", &t), "no tokens");
        // Overlapping tokens: $TARGET$ first, as PortSentry 1.2's SubstString order.
        assert_eq!(substitute("$PORT$TARGET$", &t), "$PORT192.0.2.7");
        assert_eq!(substitute("$TARGET$PORT$", &t), "192.0.2.7PORT$");
        // Shell metacharacters in the template are the administrator's; values are ours.
        assert_eq!(
            substitute("echo \"$TARGET$\" | logger -t $MODE$", &t),
            "echo \"192.0.2.7\" | logger -t atcp"
        );
        let t6 = Target {
            ip: "2001:db8:0:0:0:0:0:7".parse().unwrap(),
            port: 65535,
            mode: "sudp",
        };
        assert_eq!(
            substitute(
                "ip6tables -I INPUT -s $TARGET$ -j DROP # $PORT$ $MODE$",
                &t6
            ),
            "ip6tables -I INPUT -s 2001:db8::7 -j DROP # 65535 sudp"
        );
        let t0 = Target {
            ip: "::".parse().unwrap(),
            port: 0,
            mode: Mode::Stealth.tcp_token().unwrap(),
        };
        assert_eq!(substitute("$TARGET$ $PORT$ $MODE$", &t0), ":: 0 stcp");
    }

    /// The config for one combination; `keys` bit 0 = KILL_HOSTS_DENY, 1 = KILL_ROUTE,
    /// 2 = KILL_RUN_CMD.
    fn combo(first: bool, keys: u8, deny: &str, route: &str, run: &str) -> Config {
        Config {
            kill_run_cmd_first: first,
            kill_hosts_deny: (keys & 1 != 0).then(|| deny.to_owned()),
            kill_route: (keys & 2 != 0).then(|| route.to_owned()),
            kill_run_cmd: (keys & 4 != 0).then(|| run.to_owned()),
            ..Config::default()
        }
    }

    /// The expected order, written as PORTSENTRY.md states it: 1.2's order with the XDP
    /// ban taking KILL_ROUTE's place at the head of the blocking steps.
    fn expected_order(block: BlockMode, first: bool, keys: u8) -> Vec<&'static str> {
        let set = |name: &str| match name {
            "hostsdeny" => keys & 1 != 0,
            "route" => keys & 2 != 0,
            "runcmd" => keys & 4 != 0,
            _ => true,
        };
        let order: &[&'static str] = match (block, first) {
            (BlockMode::ReportOnly, _) => &[],
            (BlockMode::RunCmdOnly, _) => &["runcmd"],
            (BlockMode::Block, false) => &["xdp", "hostsdeny", "route", "runcmd"],
            (BlockMode::Block, true) => &["runcmd", "xdp", "hostsdeny", "route"],
        };
        order.iter().copied().filter(|n| set(n)).collect()
    }

    const BLOCKS: [BlockMode; 3] = [
        BlockMode::ReportOnly,
        BlockMode::Block,
        BlockMode::RunCmdOnly,
    ];

    #[test]
    fn plan_every_combination() {
        let t = target();
        let mut seen = 0;
        for block in BLOCKS {
            for first in [false, true] {
                for keys in 0..8u8 {
                    let cfg = combo(
                        first,
                        keys,
                        "ALL: $TARGET$ : DENY",
                        "/sbin/route add -host $TARGET$ reject",
                        "/usr/local/bin/alert $TARGET$ $PORT$ $MODE$",
                    );
                    let steps = plan(&cfg, block, &t);
                    let names: Vec<&str> = steps
                        .iter()
                        .map(|s| match s {
                            Step::XdpBan => "xdp",
                            Step::HostsDeny(l) => {
                                assert_eq!(l, "ALL: 192.0.2.7 : DENY");
                                "hostsdeny"
                            }
                            Step::Route(c) => {
                                assert_eq!(c, "/sbin/route add -host 192.0.2.7 reject");
                                "route"
                            }
                            Step::RunCmd(c) => {
                                assert_eq!(c, "/usr/local/bin/alert 192.0.2.7 1 atcp");
                                "runcmd"
                            }
                            Step::HostsDenyRemove(_) => panic!("undo step in a plan"),
                        })
                        .collect();
                    assert_eq!(
                        names,
                        expected_order(block, first, keys),
                        "BLOCK={} KILL_RUN_CMD_FIRST={} keys={keys:03b}",
                        block.as_number(),
                        first as u8
                    );
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 48);

        // Spot checks written out in full.
        let full = combo(false, 7, "ALL: $TARGET$", "r $TARGET$", "c $PORT$");
        assert_eq!(
            plan(&full, BlockMode::Block, &t),
            [
                Step::XdpBan,
                Step::HostsDeny("ALL: 192.0.2.7".into()),
                Step::Route("r 192.0.2.7".into()),
                Step::RunCmd("c 1".into()),
            ]
        );
        let first = Config {
            kill_run_cmd_first: true,
            ..full.clone()
        };
        assert_eq!(
            plan(&first, BlockMode::Block, &t),
            [
                Step::RunCmd("c 1".into()),
                Step::XdpBan,
                Step::HostsDeny("ALL: 192.0.2.7".into()),
                Step::Route("r 192.0.2.7".into()),
            ]
        );
        assert_eq!(
            plan(&full, BlockMode::RunCmdOnly, &t),
            [Step::RunCmd("c 1".into())]
        );
        assert_eq!(plan(&full, BlockMode::ReportOnly, &t), []);
        // With nothing configured, BLOCK=1 is the XDP ban alone.
        assert_eq!(
            plan(&Config::default(), BlockMode::Block, &t),
            [Step::XdpBan]
        );
    }

    #[test]
    fn plan_from_a_parsed_config() {
        let text = "BLOCK_TCP=\"1\"\nBLOCK_UDP=\"2\"\nKILL_RUN_CMD_FIRST=\"1\"\n\
                    KILL_HOSTS_DENY=\"ALL: $TARGET$ : DENY\"\n\
                    KILL_ROUTE=\"/sbin/iptables -I INPUT -s $TARGET$ -j DROP\"\n\
                    KILL_RUN_CMD=\"/bin/echo $MODE$ $TARGET$:$PORT$\"\n";
        let cfg = config::parse(text, Path::new("/t/portsentry.conf")).unwrap();
        let udp = Target {
            ip: "2001:db8::7".parse().unwrap(),
            port: 53,
            mode: cfg.udp_mode.udp_token().unwrap(),
        };
        assert_eq!(
            plan(&cfg, cfg.block_udp, &udp),
            [Step::RunCmd("/bin/echo audp 2001:db8::7:53".into())]
        );
        let tcp = Target {
            mode: cfg.tcp_mode.tcp_token().unwrap(),
            ..target()
        };
        assert_eq!(
            plan(&cfg, cfg.block_tcp, &tcp),
            [
                Step::RunCmd("/bin/echo atcp 192.0.2.7:1".into()),
                Step::XdpBan,
                Step::HostsDeny("ALL: 192.0.2.7 : DENY".into()),
                Step::Route("/sbin/iptables -I INPUT -s 192.0.2.7 -j DROP".into()),
            ]
        );
    }

    #[test]
    fn undo_steps() {
        let t = target();
        assert_eq!(undo_plan(&Config::default(), &t), []);
        let cfg = Config {
            kill_hosts_deny: Some("ALL: $TARGET$ : DENY".into()),
            unkill_route: Some("/sbin/route del -host $TARGET$ reject".into()),
            unkill_run_cmd: Some("/bin/echo unbanned $TARGET$ $PORT$ $MODE$".into()),
            ..Config::default()
        };
        assert!(cfg.unkill_hosts_deny, "UNKILL_HOSTS_DENY defaults to on");
        assert_eq!(
            undo_plan(&cfg, &t),
            [
                Step::Route("/sbin/route del -host 192.0.2.7 reject".into()),
                Step::HostsDenyRemove("ALL: 192.0.2.7 : DENY".into()),
                Step::RunCmd("/bin/echo unbanned 192.0.2.7 1 atcp".into()),
            ]
        );
        let off = Config {
            unkill_hosts_deny: false,
            ..cfg.clone()
        };
        assert_eq!(
            undo_plan(&off, &t),
            [
                Step::Route("/sbin/route del -host 192.0.2.7 reject".into()),
                Step::RunCmd("/bin/echo unbanned 192.0.2.7 1 atcp".into()),
            ]
        );
        // UNKILL_HOSTS_DENY without KILL_HOSTS_DENY has nothing to remove.
        let no_deny = Config {
            kill_hosts_deny: None,
            unkill_route: None,
            ..cfg
        };
        assert_eq!(
            undo_plan(&no_deny, &t),
            [Step::RunCmd("/bin/echo unbanned 192.0.2.7 1 atcp".into())]
        );
    }

    /// A tiny executor, as the daemon's: every step leaves a line in `log`.
    async fn execute(steps: &[Step], log: &Path) {
        for step in steps {
            match step {
                Step::XdpBan => append_line(log, "xdp").unwrap(),
                Step::HostsDeny(line) => append_line(log, line).unwrap(),
                Step::HostsDenyRemove(line) => {
                    remove_line(log, line).unwrap();
                }
                Step::Route(cmd) | Step::RunCmd(cmd) => {
                    let (outcome, output) = run_shell(cmd, Duration::from_secs(10)).await;
                    assert!(outcome.ok(), "{cmd}: {outcome}: {output}");
                }
            }
        }
    }

    /// Real commands, run in the planned order, write their words to a file: the file's
    /// lines are in the configured order for every combination.
    #[tokio::test]
    async fn planned_steps_run_in_order() {
        let dir = temp_dir("order");
        let log = dir.join("log");
        let quoted = format!("'{}'", log.display());
        let t = target();
        for block in BLOCKS {
            for first in [false, true] {
                for keys in 0..8u8 {
                    let _ = std::fs::remove_file(&log);
                    let cfg = combo(
                        first,
                        keys,
                        "hostsdeny $TARGET$",
                        &format!("echo route $TARGET$ >> {quoted}"),
                        &format!("echo runcmd $TARGET$ $PORT$ $MODE$ >> {quoted}"),
                    );
                    execute(&plan(&cfg, block, &t), &log).await;
                    let expected: Vec<String> = expected_order(block, first, keys)
                        .into_iter()
                        .map(|name| match name {
                            "xdp" => "xdp".to_owned(),
                            "hostsdeny" => "hostsdeny 192.0.2.7".to_owned(),
                            "route" => "route 192.0.2.7".to_owned(),
                            "runcmd" => "runcmd 192.0.2.7 1 atcp".to_owned(),
                            _ => unreachable!(),
                        })
                        .collect();
                    assert_eq!(
                        lines(&log),
                        expected,
                        "BLOCK={} KILL_RUN_CMD_FIRST={} keys={keys:03b}",
                        block.as_number(),
                        first as u8
                    );
                }
            }
        }
        // And the undo of a full ban, on the same file.
        let cfg = Config {
            kill_hosts_deny: Some("hostsdeny $TARGET$".into()),
            unkill_route: Some(format!("echo unroute $TARGET$ >> {quoted}")),
            unkill_run_cmd: Some(format!("echo unrun $TARGET$ >> {quoted}")),
            ..Config::default()
        };
        std::fs::write(&log, "before\nhostsdeny 192.0.2.7\nafter\n").unwrap();
        execute(&undo_plan(&cfg, &t), &log).await;
        assert_eq!(
            lines(&log),
            ["before", "after", "unroute 192.0.2.7", "unrun 192.0.2.7"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn run_shell_status_and_output() {
        let secs = Duration::from_secs(10);
        assert_eq!(
            run_shell("true", secs).await,
            (Outcome::Exited(0), "".into())
        );
        assert!(run_shell("true", secs).await.0.ok());
        assert_eq!(run_shell("exit 3", secs).await.0, Outcome::Exited(3));
        assert!(!Outcome::Exited(3).ok());
        assert_eq!(
            run_shell("kill -TERM $$", secs).await.0,
            Outcome::Signaled(libc::SIGTERM)
        );
        assert_eq!(
            run_shell("/nonexistent/command", secs).await.0,
            Outcome::Exited(127)
        );
        // stdout and stderr together, in order.
        assert_eq!(
            run_shell("echo out; echo err >&2; echo out2", secs).await,
            (Outcome::Exited(0), "out\nerr\nout2\n".into())
        );
        // cwd is / and stdin is /dev/null (cat ends at once).
        assert_eq!(run_shell("pwd", secs).await.1, "/\n");
        assert_eq!(
            run_shell("cat; echo done", secs).await,
            (Outcome::Exited(0), "done\n".into())
        );
        // Its own process group, led by the shell.
        let (_, out) = run_shell("echo $$ $(cut -d' ' -f5 /proc/$$/stat)", secs).await;
        let ids: Vec<i32> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
        assert_eq!(ids.len(), 2, "{out}");
        assert_eq!(ids[0], ids[1], "{out}");
        // SAFETY: no arguments, no side effects.
        assert_ne!(ids[1], unsafe { libc::getpgrp() });
        // The environment is inherited.
        let (_, path) = run_shell("printf %s \"$PATH\"", secs).await;
        assert_eq!(path, std::env::var("PATH").unwrap_or_default());
    }

    #[tokio::test]
    async fn run_shell_truncates_output() {
        // More than a pipe's buffer: the writer must not block on a full pipe.
        let (outcome, out) = run_shell(
            "head -c 300000 /dev/zero | tr '\\0' a; echo tail",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(outcome, Outcome::Exited(0));
        assert_eq!(out.len(), MAX_CAPTURE);
        assert!(out.bytes().all(|b| b == b'a'));
        // A multi-byte character cut at the limit is dropped: 1366 three-byte characters
        // are 4098 bytes, 1365 of them fit.
        let (_, out) = run_shell(
            "i=0; while [ $i -lt 1400 ]; do printf '\\342\\202\\254'; i=$((i+1)); done",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(out, "€".repeat(1365));
        // Invalid UTF-8 is shown lossily.
        let (_, out) = run_shell("printf 'a\\377b'", Duration::from_secs(10)).await;
        assert_eq!(out, "a\u{fffd}b");
    }

    /// Whether `pid` is gone: no such process, or a zombie (dead, waiting for its parent,
    /// which for an orphan is init).
    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    fn wait_gone(pid: i32) -> bool {
        let start = StdInstant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if gone(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn read_pid(path: &Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn run_shell_timeout_kills_the_group() {
        let dir = temp_dir("timeout");
        let pids = dir.join("pids");
        let cmd = format!(
            "echo $$ > '{p}.sh'; sleep 30 & echo $! > '{p}.bg'; sleep 30",
            p = pids.display()
        );
        let start = StdInstant::now();
        let (outcome, _) = run_shell(&cmd, Duration::from_millis(300)).await;
        let took = start.elapsed();
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let sh = read_pid(&pids.with_extension("sh"));
        let bg = read_pid(&pids.with_extension("bg"));
        // The shell is our child and reaped: it no longer exists at all.
        assert!(wait_gone(sh), "the shell {sh} survived");
        // SAFETY: signal 0 only checks existence.
        assert_eq!(unsafe { libc::kill(sh, 0) }, -1);
        // Its background child was in the group and was killed too.
        assert!(wait_gone(bg), "the background sleep {bg} survived");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn run_shell_background_child_holding_the_pipe() {
        let dir = temp_dir("background");
        let pid_file = dir.join("bg");
        // The shell exits at once; its background child keeps the output pipe open.
        let cmd = format!(
            "sleep 30 & echo $! > '{}'; echo started",
            pid_file.display()
        );
        let start = StdInstant::now();
        let (outcome, out) = run_shell(&cmd, Duration::from_secs(2)).await;
        let took = start.elapsed();
        assert_eq!((outcome, out.as_str()), (Outcome::Exited(0), "started\n"));
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let bg = read_pid(&pid_file);
        // Left running, as `cmd &` asks; we started it, so we end it.
        assert!(!gone(bg));
        // SAFETY: the pid is the sleep this test started, not yet reaped by init.
        unsafe { libc::kill(bg, libc::SIGKILL) };
        assert!(wait_gone(bg));

        // The same with a shell that does not exit: stopped at the timeout.
        let cmd = format!(
            "sleep 30 & echo $! > '{}'; echo started; wait",
            pid_file.display()
        );
        let start = StdInstant::now();
        let (outcome, out) = run_shell(&cmd, Duration::from_millis(300)).await;
        assert_eq!((outcome, out.as_str()), (Outcome::TimedOut, "started\n"));
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(wait_gone(read_pid(&pid_file)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn run_shell_dropped_kills_the_group() {
        let dir = temp_dir("dropped");
        let pid_file = dir.join("bg");
        let cmd = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let run = run_shell(&cmd, Duration::from_secs(60));
        // Give up on it after a moment: dropping the future kills the group.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), run)
                .await
                .is_err()
        );
        assert!(wait_gone(read_pid(&pid_file)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outcome_text() {
        assert_eq!(Outcome::Exited(0).to_string(), "exited with status 0");
        assert_eq!(Outcome::Signaled(9).to_string(), "killed by signal 9");
        assert_eq!(Outcome::TimedOut.to_string(), "timed out (killed)");
        assert!(!Outcome::TimedOut.ok());
        assert!(!Outcome::SpawnFailed("x".into()).ok());
    }

    #[test]
    fn append_line_appends_and_refuses_symlinks() {
        let dir = temp_dir("append");
        let deny = dir.join("hosts.deny");
        append_line(&deny, "ALL: 192.0.2.7 : DENY").unwrap();
        append_line(&deny, "ALL: 2001:db8::7 : DENY").unwrap();
        assert_eq!(
            std::fs::read_to_string(&deny).unwrap(),
            "ALL: 192.0.2.7 : DENY\nALL: 2001:db8::7 : DENY\n"
        );
        let mode = std::fs::metadata(&deny).unwrap().mode() & 0o777;
        assert_eq!(
            mode & !0o644,
            0,
            "created with 0644 less the umask: {mode:o}"
        );

        // A symlink at the path, to an existing file or to nowhere, is never followed.
        let real = dir.join("real");
        std::fs::write(&real, "untouched\n").unwrap();
        let link = dir.join("link");
        symlink(&real, &link).unwrap();
        let e = append_line(&link, "ALL: 192.0.2.8").unwrap_err();
        assert!(is_eloop(&e), "{e:?}");
        assert!(e.to_string().contains(&link.display().to_string()), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "untouched\n");
        let dangling = dir.join("dangling");
        symlink(dir.join("nowhere"), &dangling).unwrap();
        assert!(is_eloop(&append_line(&dangling, "x").unwrap_err()));
        assert!(!dir.join("nowhere").exists());

        // Not a regular file; a newline inside the line; a missing directory.
        let e = append_line(&dir, "x").unwrap_err();
        assert!(e.to_string().starts_with(&dir.display().to_string()), "{e}");
        let e = append_line(&deny, "a\nb").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let missing = dir.join("no/such/file");
        let e = append_line(&missing, "x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no/such/file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remove_line_removes_exact_lines_and_refuses_symlinks() {
        let dir = temp_dir("remove");
        let deny = dir.join("hosts.deny");
        std::fs::write(
            &deny,
            "# hosts.deny\nALL: 192.0.2.7 : DENY\nALL: 192.0.2.70 : DENY\n\
             ALL: 192.0.2.7 : DENY \nsshd: ALL\nALL: 192.0.2.7 : DENY\nALL: 192.0.2.7 : DENY",
        )
        .unwrap();
        std::fs::set_permissions(&deny, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(remove_line(&deny, "ALL: 192.0.2.7 : DENY").unwrap());
        // Only exact matches (not a longer address, not one with a trailing space), all of
        // them, the last one without its newline too.
        assert_eq!(
            std::fs::read_to_string(&deny).unwrap(),
            "# hosts.deny\nALL: 192.0.2.70 : DENY\nALL: 192.0.2.7 : DENY \nsshd: ALL\n"
        );
        assert_eq!(std::fs::metadata(&deny).unwrap().mode() & 0o7777, 0o640);
        // Nothing to remove: false, and the file is left as it is.
        let before = std::fs::metadata(&deny).unwrap().ino();
        assert!(!remove_line(&deny, "ALL: 192.0.2.7 : DENY").unwrap());
        assert_eq!(std::fs::metadata(&deny).unwrap().ino(), before);
        assert!(!remove_line(&dir.join("missing"), "x").unwrap());
        // Removing the last line leaves an empty file; no temp files are left behind.
        let one = dir.join("one");
        std::fs::write(&one, "x\n").unwrap();
        assert!(remove_line(&one, "x").unwrap());
        assert_eq!(std::fs::read(&one).unwrap(), b"");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["hosts.deny", "one"]);

        // A symlink is refused, and its target is untouched.
        let real = dir.join("real");
        std::fs::write(&real, "x\ny\n").unwrap();
        let link = dir.join("link");
        symlink(&real, &link).unwrap();
        let e = remove_line(&link, "x").unwrap_err();
        assert!(is_eloop(&e), "{e:?}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "x\ny\n");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
