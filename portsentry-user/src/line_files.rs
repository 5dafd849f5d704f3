//! The daemon's edits of the files it keeps line by line: hosts.deny (`KILL_HOSTS_DENY`
//! and its undo) and the history file.
//!
//! One thread makes every edit, one at a time, so that an undo's rewrite of hosts.deny
//! (read, write the rest, rename) never loses a line another host's kill appended
//! meanwhile. The appends asked for while the thread was busy go together in one write
//! and one fsync (group commit): a flood of scanners costs one fsync per batch, not two
//! per scanner, and no fsync blocks the daemon's event loop. Each caller still waits
//! until its line is on disk (or the edit failed), so the steps of a response keep
//! PortSentry's order.

use std::{
    io,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use tokio::sync::{mpsc, oneshot};

use crate::fsutil;

/// The most edits taken together (a bound on one write's size).
const MAX_BATCH: usize = 4096;

/// Appends `line` to `path` ([`fsutil::append_line`]: no symlink followed, errors name
/// the path) and waits until it is on disk.
pub async fn append(path: &Path, line: &str) -> io::Result<()> {
    fsutil::check_line(path, line)?;
    let (done, answer) = oneshot::channel();
    send(Edit::Append {
        path: path.to_path_buf(),
        line: line.to_string(),
        done,
    })?;
    answer.await.unwrap_or_else(|_| Err(stopped()))
}

/// Removes every line equal to `line` from `path` ([`fsutil::remove_line`]); whether one
/// was there.
pub async fn remove(path: &Path, line: &str) -> io::Result<bool> {
    let (done, answer) = oneshot::channel();
    send(Edit::Remove {
        path: path.to_path_buf(),
        line: line.to_string(),
        done,
    })?;
    answer.await.unwrap_or_else(|_| Err(stopped()))
}

/// One edit and where its outcome goes.
enum Edit {
    Append {
        path: PathBuf,
        line: String,
        done: oneshot::Sender<io::Result<()>>,
    },
    Remove {
        path: PathBuf,
        line: String,
        done: oneshot::Sender<io::Result<bool>>,
    },
}

fn stopped() -> io::Error {
    io::Error::other("the writer of hosts.deny and the history file stopped")
}

/// Hands `edit` to the writer thread, started at the first edit.
fn send(edit: Edit) -> io::Result<()> {
    static WRITER: OnceLock<Option<mpsc::UnboundedSender<Edit>>> = OnceLock::new();
    let writer = WRITER.get_or_init(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("line-files".into())
            .spawn(move || write_loop(rx))
            .ok()
            .map(|_| tx)
    });
    writer
        .as_ref()
        .ok_or_else(|| io::Error::other("could not start the writer of hosts.deny"))?
        .send(edit)
        .map_err(|_| stopped())
}

/// Makes the edits as they come, those waiting taken together; how many fsyncs of
/// appends it made, once every sender is gone.
fn write_loop(mut rx: mpsc::UnboundedReceiver<Edit>) -> u64 {
    let mut fsyncs = 0;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        fsyncs += apply(batch);
    }
    fsyncs
}

/// The appends to one file waiting for their write.
type Waiting = Vec<(String, oneshot::Sender<io::Result<()>>)>;

/// Makes `batch`'s edits in order per file: the appends to a file in one write, before
/// a removal from it asked for after them. Returns the fsyncs made for appends.
fn apply(batch: Vec<Edit>) -> u64 {
    let mut fsyncs = 0;
    let mut waiting: Vec<(PathBuf, Waiting)> = Vec::new();
    for edit in batch {
        match edit {
            Edit::Append { path, line, done } => {
                match waiting.iter_mut().find(|(p, _)| *p == path) {
                    Some((_, lines)) => lines.push((line, done)),
                    None => waiting.push((path, vec![(line, done)])),
                }
            }
            Edit::Remove { path, line, done } => {
                if let Some(i) = waiting.iter().position(|(p, _)| *p == path) {
                    let (path, lines) = waiting.swap_remove(i);
                    fsyncs += write(&path, lines);
                }
                let _ = done.send(fsutil::remove_line(&path, &line));
            }
        }
    }
    for (path, lines) in waiting {
        fsyncs += write(&path, lines);
    }
    fsyncs
}

/// Appends `lines` to `path` in one write and tells each caller the outcome.
fn write(path: &Path, lines: Waiting) -> u64 {
    let text: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    let outcome = fsutil::append_lines(path, &text);
    for (_, done) in lines {
        let _ = done.send(match &outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
    1
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// The writer's end, and where the appends' and the removals' outcomes come.
    type Queued = (
        mpsc::UnboundedReceiver<Edit>,
        Vec<oneshot::Receiver<io::Result<()>>>,
        Vec<oneshot::Receiver<io::Result<bool>>>,
    );

    /// Edits queued before the writer takes any: `(path, line, append?)`.
    fn queued(edits: &[(&Path, String, bool)]) -> Queued {
        let (tx, rx) = mpsc::unbounded_channel();
        let (mut appended, mut removed) = (Vec::new(), Vec::new());
        for (path, line, append) in edits {
            let (path, line) = (path.to_path_buf(), line.clone());
            if *append {
                let (done, answer) = oneshot::channel();
                tx.send(Edit::Append { path, line, done }).ok().unwrap();
                appended.push(answer);
            } else {
                let (done, answer) = oneshot::channel();
                tx.send(Edit::Remove { path, line, done }).ok().unwrap();
                removed.push(answer);
            }
        }
        (rx, appended, removed)
    }

    /// A thousand lines asked for while the writer was busy: one write, one fsync, in
    /// the order asked, each caller told.
    #[test]
    fn appends_waiting_together_share_one_fsync() {
        let dir = fsutil::temp_dir("line-files-group");
        let deny = dir.join("hosts.deny");
        let edits: Vec<_> = (0..1000)
            .map(|i| {
                (
                    deny.as_path(),
                    format!("ALL: 10.0.{}.{} : DENY", i / 256, i % 256),
                    true,
                )
            })
            .collect();
        let (rx, mut appended, _) = queued(&edits);
        assert_eq!(write_loop(rx), 1, "one fsync for the thousand lines");
        for answer in &mut appended {
            answer.try_recv().unwrap().unwrap();
        }
        let text = std::fs::read_to_string(&deny).unwrap();
        let want: Vec<&str> = edits.iter().map(|(_, l, _)| l.as_str()).collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A removal sees the appends asked for before it and none after it; another file's
    /// appends are not held for it.
    #[test]
    fn a_removal_keeps_its_place_among_the_appends() {
        let dir = fsutil::temp_dir("line-files-order");
        let (deny, history) = (dir.join("hosts.deny"), dir.join("history"));
        let edits = [
            (deny.as_path(), "a".to_string(), true),
            (history.as_path(), "h1".to_string(), true),
            (deny.as_path(), "b".to_string(), true),
            (deny.as_path(), "a".to_string(), false),
            (deny.as_path(), "a".to_string(), true),
            (history.as_path(), "h2".to_string(), true),
            (deny.as_path(), "c".to_string(), false),
        ];
        let (rx, mut appended, mut removed) = queued(&edits);
        assert_eq!(write_loop(rx), 3);
        for answer in &mut appended {
            answer.try_recv().unwrap().unwrap();
        }
        let removed: Vec<bool> = removed
            .iter_mut()
            .map(|a| a.try_recv().unwrap().unwrap())
            .collect();
        assert_eq!(removed, [true, false]);
        assert_eq!(std::fs::read_to_string(&deny).unwrap(), "b\na\n");
        assert_eq!(std::fs::read_to_string(&history).unwrap(), "h1\nh2\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One caller's bad file fails its batch's appends to that file only; a newline is
    /// refused before it reaches the writer.
    #[test]
    fn errors_reach_each_caller() {
        let dir = fsutil::temp_dir("line-files-errors");
        let real = dir.join("real");
        let link = dir.join("link");
        std::fs::write(&real, "untouched\n").unwrap();
        symlink(&real, &link).unwrap();
        let edits = [
            (link.as_path(), "x".to_string(), true),
            (link.as_path(), "y".to_string(), true),
            (real.as_path(), "z".to_string(), true),
        ];
        let (rx, mut appended, _) = queued(&edits);
        write_loop(rx);
        for answer in &mut appended[..2] {
            let e = answer.try_recv().unwrap().unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        appended[2].try_recv().unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "untouched\nz\n");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = runtime.block_on(append(&real, "a\nb")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Many hosts' kills and undos at once, through the daemon's writer: no line
    /// appended is lost to a removal's rewrite of the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_append_is_lost_to_a_concurrent_removal() {
        let dir = fsutil::temp_dir("line-files-race");
        let deny = dir.join("hosts.deny");
        let gone: Vec<String> = (0..200)
            .map(|i| format!("ALL: 192.0.2.{i} : DENY"))
            .collect();
        fsutil::append_lines(&deny, &gone.iter().map(|s| s.as_str()).collect::<Vec<_>>()).unwrap();
        let mut tasks = Vec::new();
        for (i, old) in gone.iter().enumerate() {
            let (path, old) = (deny.clone(), old.clone());
            tasks.push(tokio::spawn(async move {
                remove(&path, &old).await.unwrap();
            }));
            let path = deny.clone();
            tasks.push(tokio::spawn(async move {
                append(&path, &format!("ALL: 198.51.100.{i} : DENY"))
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let text = std::fs::read_to_string(&deny).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        let mut want: Vec<String> = (0..200)
            .map(|i| format!("ALL: 198.51.100.{i} : DENY"))
            .collect();
        want.sort();
        assert_eq!(lines, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
