//! Hardened file writes: append or remove a line (hosts.deny, the history file) and
//! replace a file atomically (the state and blocked files), never following a symlink an
//! attacker could have planted.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

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
    append_lines(path, &[line])
}

/// [`append_line`] of several lines, in one write and one fsync: all are refused when
/// one holds a newline ([`check_line`]). A file whose last line has no newline (an
/// editor's) gets one first, so the first line is not glued to it; a write that fails
/// part way is cut off again ([`cut_back`]), so no part of a line stays to be glued to
/// the next.
pub fn append_lines(path: &Path, lines: &[&str]) -> io::Result<()> {
    for line in lines {
        check_line(path, line)?;
    }
    let append = || -> io::Result<()> {
        // std opens with O_CLOEXEC.
        let mut file = open_regular(
            path,
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o644),
        )?;
        let len = file.metadata()?.len();
        let mut last = [b'\n'];
        if len > 0 {
            file.read_exact_at(&mut last, len - 1)?;
        }
        let mut bytes = Vec::with_capacity(1 + lines.iter().map(|l| l.len() + 1).sum::<usize>());
        if last[0] != b'\n' {
            bytes.push(b'\n');
        }
        for line in lines {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        let mut done = 0;
        while done < bytes.len() {
            match file.write(&bytes[done..]) {
                Ok(0) => {
                    cut_back(&file, &bytes[..done]);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    cut_back(&file, &bytes[..done]);
                    return Err(e);
                }
            }
        }
        file.sync_all()
    };
    append().map_err(|e| path_error(path, e))
}

/// After a write that failed part way: removes `written`, the part written, from the end
/// of the file, when it is still the end. Not when another program appended after it
/// (cutting at the length before the write would take that program's lines too, as it
/// would a line appended between the length read and the write).
fn cut_back(file: &File, written: &[u8]) {
    if written.is_empty() {
        return;
    }
    let Ok(end) = file.metadata().map(|m| m.len()) else {
        return;
    };
    let n = written.len() as u64;
    if end < n {
        return;
    }
    let mut tail = vec![0; written.len()];
    if file.read_exact_at(&mut tail, end - n).is_ok() && tail == written {
        let _ = file.set_len(end - n);
    }
}

/// A line to append must be one line: an error naming `path` when it holds a newline.
pub fn check_line(path: &Path, line: &str) -> io::Result<()> {
    if line.contains('\n') {
        return Err(path_error(
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to append a line that contains a newline",
            ),
        ));
    }
    Ok(())
}

/// Removes every line exactly equal to `line` (without its `\n`) from `path`: reads it,
/// writes the rest to a temp file in the same directory (`O_NOFOLLOW`, same mode and, where
/// permitted, owner), fsyncs it and renames it over `path`. A symlink at `path` is an error.
/// Returns whether any line was removed; a missing file has nothing to remove (`false`),
/// and an unchanged file is not rewritten.
///
/// Not safe against a concurrent writer of the same file (a line appended between the read
/// and the rename is lost): the daemon makes its edits one at a time
/// ([`crate::line_files`]).
pub fn remove_line(path: &Path, line: &str) -> io::Result<bool> {
    Ok(remove_lines(path, &[line])?[0])
}

/// [`remove_line`] of several lines, in one rewrite: for each, whether it was there.
pub fn remove_lines(path: &Path, lines: &[&str]) -> io::Result<Vec<bool>> {
    let remove = || -> io::Result<Vec<bool>> {
        let mut removed = vec![false; lines.len()];
        let mut file = match open_regular(path, OpenOptions::new().read(true)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let mut content = Vec::new();
        file.read_to_end(&mut content)?;
        drop(file);
        // Each line asked for, and where (the same line may be asked for twice).
        let mut asked: HashMap<&[u8], Vec<usize>> = HashMap::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            asked.entry(l.as_bytes()).or_default().push(i);
        }
        let mut kept = Vec::with_capacity(content.len());
        for piece in content.split_inclusive(|b| *b == b'\n') {
            match asked.get(piece.strip_suffix(b"\n").unwrap_or(piece)) {
                Some(at) => at.iter().for_each(|i| removed[*i] = true),
                None => kept.extend_from_slice(piece),
            }
        }
        if removed.contains(&true) {
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
    write_atomic_with(path, keep, |f| f.write_all(bytes))
}

/// [`write_atomic`] of what `fill` writes to the temp file (a large file written as it
/// is made, never whole in memory).
pub(crate) fn write_atomic_with(
    path: &Path,
    keep: Option<KeepAttrs>,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
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
        fill(file)?;
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

/// Creates `dir` and its missing parents, each new one made durable: its entry in its
/// parent fsynced (a state directory created at the first start holds bans acknowledged
/// as on disk: a crash must not take the directory with them).
pub fn create_dir_all_synced(dir: &Path) -> io::Result<()> {
    let mut created = Vec::new();
    let mut d = dir;
    while !d.exists() {
        created.push(d.to_path_buf());
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for d in created.iter().rev() {
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// A fresh directory for a unit test, named after the process and `name` (emptied if
/// a previous run left it).
#[cfg(test)]
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portsentry-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The lines of a file a unit test reads (none when it is missing).
#[cfg(test)]
pub(crate) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn is_eloop(e: &io::Error) -> bool {
        e.kind() == io::Error::from_raw_os_error(libc::ELOOP).kind()
    }

    #[test]
    fn a_part_written_is_cut_back_only_while_it_ends_the_file() {
        let dir = crate::fsutil::temp_dir("fsutil-cut-back");
        let deny = dir.join("hosts.deny");
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&deny)
                .unwrap()
        };
        std::fs::write(&deny, "ALL: 192.0.2.1 : DENY\nALL: 192.0").unwrap();
        cut_back(&open(), b"ALL: 192.0");
        assert_eq!(
            std::fs::read_to_string(&deny).unwrap(),
            "ALL: 192.0.2.1 : DENY\n"
        );
        // Another program appended after the part: nothing is cut (cut at the length
        // before the write, its line would go too).
        let kept = "ALL: 192.0.2.1 : DENY\nALL: 192.0sshd: 198.51.100.9\n";
        std::fs::write(&deny, kept).unwrap();
        cut_back(&open(), b"ALL: 192.0");
        assert_eq!(std::fs::read_to_string(&deny).unwrap(), kept);
        // Nothing written, nothing cut.
        cut_back(&open(), b"");
        assert_eq!(std::fs::read_to_string(&deny).unwrap(), kept);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn append_line_appends_and_refuses_symlinks() {
        let dir = crate::fsutil::temp_dir("fsutil-append");
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

        // A last line without its newline (an editor's) is not glued to the next.
        let edited = dir.join("edited");
        std::fs::write(&edited, "sshd: ALL").unwrap();
        append_lines(
            &edited,
            &["ALL: 192.0.2.9 : DENY", "ALL: 192.0.2.10 : DENY"],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&edited).unwrap(),
            "sshd: ALL\nALL: 192.0.2.9 : DENY\nALL: 192.0.2.10 : DENY\n"
        );

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
        let dir = crate::fsutil::temp_dir("fsutil-remove");
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

    /// Missing parents are made too; an existing directory is left as it is; a file in
    /// the way is an error.
    #[test]
    fn a_directory_is_created_with_its_parents() {
        let dir = temp_dir("mkdir-synced");
        let deep = dir.join("a/b/state");
        create_dir_all_synced(&deep).unwrap();
        assert!(deep.is_dir());
        std::fs::write(deep.join("f"), "x").unwrap();
        create_dir_all_synced(&deep).unwrap();
        assert!(deep.join("f").exists());
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(create_dir_all_synced(&file.join("sub")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
