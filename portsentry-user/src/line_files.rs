//! The daemon's edits of the files it keeps line by line: hosts.deny (`KILL_HOSTS_DENY`
//! and its undo) and the history file.
//!
//! One thread makes every edit, so that an undo's rewrite of hosts.deny (read, write the
//! rest, rename) never loses a line another host's kill appended meanwhile. The edits
//! asked for while the thread was busy go together: a file's appends in one write and
//! one fsync, its removals in one rewrite (group commit), so a flood of scanners costs
//! one fsync per file and batch, not two per scanner, and no fsync blocks the daemon's
//! event loop. Each caller still waits until its edit is on disk (or failed), so the
//! steps of a response keep PortSentry's order, and a file's edits are made in the
//! order asked. (Another program's edit of hosts.deny made during a removal's rewrite
//! can still be lost, as with any tool that rewrites the file.)

use std::{
    io,
    path::{Path, PathBuf},
    sync::Mutex,
};

use tokio::sync::{mpsc, oneshot};

use crate::fsutil;

/// The most edits taken together (a bound on one write's size).
const MAX_BATCH: usize = 4096;

/// Appends `line` to `path` ([`fsutil::append_lines`]: no symlink followed, errors name
/// the path) and waits until it is on disk.
pub async fn append(path: &Path, line: &str) -> io::Result<()> {
    fsutil::check_line(path, line)?;
    let (done, answer) = oneshot::channel();
    send(Edit {
        path: path.to_path_buf(),
        line: line.to_string(),
        done: Done::Append(done),
    })?;
    answer.await.unwrap_or_else(|_| Err(stopped(path)))
}

/// Removes every line equal to `line` from `path` ([`fsutil::remove_lines`]); whether
/// one was there.
pub async fn remove(path: &Path, line: &str) -> io::Result<bool> {
    let (done, answer) = oneshot::channel();
    send(Edit {
        path: path.to_path_buf(),
        line: line.to_string(),
        done: Done::Remove(done),
    })?;
    answer.await.unwrap_or_else(|_| Err(stopped(path)))
}

/// One edit of a file, and where its outcome goes.
struct Edit {
    path: PathBuf,
    line: String,
    done: Done,
}

/// An append, or a removal, by where its outcome goes.
enum Done {
    Append(oneshot::Sender<io::Result<()>>),
    Remove(oneshot::Sender<io::Result<bool>>),
}

fn stopped(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{}: the daemon's writer of the file stopped before the edit was made",
        path.display()
    ))
}

/// The writer thread's end of the edits, once started.
static WRITER: Mutex<Option<mpsc::UnboundedSender<Edit>>> = Mutex::new(None);

/// Hands `edit` to the daemon's writer thread ([`send_to`]).
fn send(edit: Edit) -> io::Result<()> {
    send_to(&WRITER, edit)
}

/// Hands `edit` to the writer thread of `slot`, started at the first edit, and again
/// when it is gone (a failed start is tried again at the next edit).
fn send_to(slot: &Mutex<Option<mpsc::UnboundedSender<Edit>>>, edit: Edit) -> io::Result<()> {
    let mut writer = slot.lock().unwrap_or_else(|e| e.into_inner());
    let edit = match writer.as_ref() {
        Some(tx) => match tx.send(edit) {
            Ok(()) => return Ok(()),
            // The thread is gone (it panicked): a new one takes the edit.
            Err(mpsc::error::SendError(edit)) => edit,
        },
        None => edit,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("line-files".into())
        .spawn(move || write_loop(rx))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: could not start the daemon's writer of the file: {e}",
                    edit.path.display()
                ),
            )
        })?;
    let sent = tx.send(edit).map_err(|e| stopped(&e.0.path));
    *writer = Some(tx);
    sent
}

/// Makes the edits as they come, those waiting taken together; how many times it wrote
/// to a file (appends, or a rewrite for removals), once every sender is gone.
fn write_loop(mut rx: mpsc::UnboundedReceiver<Edit>) -> u64 {
    let mut writes = 0;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        writes += apply(batch);
    }
    writes
}

/// A file's edits of one kind, waiting to be made together.
struct Group {
    path: PathBuf,
    appends: bool,
    edits: Vec<(String, Done)>,
}

/// Makes `batch`'s edits, each file's in the order asked: its appends one after the
/// other in one write, its removals one after the other in one rewrite. Returns how
/// many writes it made.
fn apply(batch: Vec<Edit>) -> u64 {
    let mut writes = 0;
    let mut groups: Vec<Group> = Vec::new();
    for Edit { path, line, done } in batch {
        let appends = matches!(done, Done::Append(_));
        match groups.iter().position(|g| g.path == path) {
            Some(i) if groups[i].appends == appends => groups[i].edits.push((line, done)),
            found => {
                // The file's other kind of edit, asked for before, is made first.
                if let Some(i) = found {
                    make(groups.swap_remove(i));
                    writes += 1;
                }
                groups.push(Group {
                    path,
                    appends,
                    edits: vec![(line, done)],
                });
            }
        }
    }
    for g in groups {
        make(g);
        writes += 1;
    }
    writes
}

/// Makes a group's edits in one write and tells each caller the outcome.
fn make(g: Group) {
    let text: Vec<&str> = g.edits.iter().map(|(l, _)| l.as_str()).collect();
    let copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
    if g.appends {
        let outcome = fsutil::append_lines(&g.path, &text);
        for (_, done) in g.edits {
            if let Done::Append(done) = done {
                let _ = done.send(outcome.as_ref().map(|_| ()).map_err(copy));
            }
        }
    } else {
        let outcome = fsutil::remove_lines(&g.path, &text);
        for (i, (_, done)) in g.edits.into_iter().enumerate() {
            if let Done::Remove(done) = done {
                let _ = done.send(outcome.as_ref().map(|r| r[i]).map_err(copy));
            }
        }
    }
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
            let done = if *append {
                let (done, answer) = oneshot::channel();
                appended.push(answer);
                Done::Append(done)
            } else {
                let (done, answer) = oneshot::channel();
                removed.push(answer);
                Done::Remove(done)
            };
            tx.send(Edit { path, line, done }).ok().unwrap();
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
    /// appends are not held for it (five writes: the file's two groups of appends and
    /// two of removals, and the other file's appends).
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
        assert_eq!(write_loop(rx), 5);
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

    /// Removals asked for together are made in one rewrite of the file.
    #[test]
    fn removals_waiting_together_share_one_rewrite() {
        let dir = fsutil::temp_dir("line-files-removals");
        let deny = dir.join("hosts.deny");
        let lines: Vec<String> = (0..100)
            .map(|i| format!("ALL: 192.0.2.{i} : DENY"))
            .collect();
        fsutil::append_lines(&deny, &lines.iter().map(|s| s.as_str()).collect::<Vec<_>>()).unwrap();
        let mut edits: Vec<_> = lines[..50]
            .iter()
            .map(|l| (deny.as_path(), l.clone(), false))
            .collect();
        edits.push((
            deny.as_path(),
            "ALL: 198.51.100.1 : DENY".to_string(),
            false,
        ));
        edits.push((deny.as_path(), lines[0].clone(), false));
        let (rx, _, mut removed) = queued(&edits);
        assert_eq!(write_loop(rx), 1, "one rewrite");
        let removed: Vec<bool> = removed
            .iter_mut()
            .map(|a| a.try_recv().unwrap().unwrap())
            .collect();
        assert!(removed[..50].iter().all(|r| *r));
        assert_eq!(removed[50..], [false, true], "absent; asked twice");
        let text = std::fs::read_to_string(&deny).unwrap();
        assert_eq!(text.lines().collect::<Vec<_>>(), lines[50..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A writer thread gone (a panic) is replaced at the next edit, which is made (a
    /// writer of the test's own, not the daemon's the other tests use).
    #[tokio::test]
    async fn a_writer_gone_is_started_again() {
        let dir = fsutil::temp_dir("line-files-restart");
        let history = dir.join("history");
        let slot = Mutex::new(None);
        let edit = |line: &str| {
            let (done, answer) = oneshot::channel();
            let edit = Edit {
                path: history.clone(),
                line: line.to_string(),
                done: Done::Append(done),
            };
            (edit, answer)
        };
        let (one, answer) = edit("one");
        send_to(&slot, one).unwrap();
        answer.await.unwrap().unwrap();
        {
            let (tx, rx) = mpsc::unbounded_channel();
            drop(rx);
            *slot.lock().unwrap() = Some(tx);
        }
        let (two, answer) = edit("two");
        send_to(&slot, two).unwrap();
        answer.await.unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(&history).unwrap(), "one\ntwo\n");
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
