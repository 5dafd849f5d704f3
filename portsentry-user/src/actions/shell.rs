//! Running a kill command: `/bin/sh -c`, off the packet path, with a timeout that kills
//! the command's whole process group, and its output kept (bounded) for the log.

use std::{
    fmt, io,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use crate::kinds::ActionResult;

use tokio::{
    io::AsyncReadExt as _,
    net::unix::pipe,
    process::{Child, Command},
    time::Instant,
};

/// How much of a command's output [`run_shell`] keeps for the log.
pub const MAX_CAPTURE: usize = 4096;

/// After the shell exits, how long [`run_shell`] still waits for the end of its output
/// (output of the shell's own commands is already in the pipe by then; this is for a
/// background child that still holds the pipe).
const DRAIN_GRACE: Duration = Duration::from_millis(100);

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

    /// The `result` label of this outcome: exit status 0 is `ok`, a timeout `timed_out`,
    /// anything else (a non-zero status, a signal, a failed spawn) `failed`.
    pub fn result(&self) -> ActionResult {
        match self {
            Outcome::Exited(0) => ActionResult::Ok,
            Outcome::TimedOut => ActionResult::TimedOut,
            Outcome::Exited(_) | Outcome::Signaled(_) | Outcome::SpawnFailed(_) => {
                ActionResult::Failed
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::{path::Path, time::Instant as StdInstant};

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
        let dir = crate::fsutil::temp_dir("shell-timeout");
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
        let dir = crate::fsutil::temp_dir("shell-background");
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
        let dir = crate::fsutil::temp_dir("shell-dropped");
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
}
