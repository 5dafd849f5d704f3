//! Which external programs a Rust source runs, found by reading it (for
//! `tests/installed_programs.rs`): `Command::new("...")` and `Netns::command("...")` with
//! what `nsenter`, `unshare`, `timeout`, `sh -c` and `ip netns exec` run in turn; the
//! argument vectors of the demo's `exec`/`output`/`in_ns`; shell strings given to
//! `netns::sh` and `Netns::exec`/`try_exec`; and the KILL_ROUTE/KILL_RUN_CMD commands the
//! daemon runs through /bin/sh. A program whose name is only known at run time (a path in
//! a variable, the project's own binary) is not reported.

mod rust_source;
mod shell;

use std::path::{Path, PathBuf};

use rust_source::{bound_name, calls, chain_args, lex, literal_at};
use shell::argv_programs;
pub use shell::shell_programs;

/// One program found in a source file.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its name (a path's last component).
    pub program: String,
    /// The file, relative to the scanned root.
    pub file: String,
    pub line: usize,
}

/// Every program `src` (the file `rel`) runs, with its line.
pub fn programs_in(rel: &str, src: &str) -> Vec<Found> {
    let (code, lits) = lex(src);
    let mut found: Vec<(String, usize)> = Vec::new();
    let mut add = |programs: Vec<String>, line: usize| {
        found.extend(programs.into_iter().map(|p| (p, line)));
    };
    // Command::new("x") and Netns::command("x"), with what wrappers run.
    for (needle, method) in [("Command::new(", false), ("command(", true)] {
        for i in calls(&code, needle, method) {
            if let Some(l) = literal_at(&code, &lits, i) {
                let mut argv = vec![Some(l.text.clone())];
                let var = bound_name(&code, i - needle.len());
                argv.extend(chain_args(&code, &lits, l.end + 1, var));
                let mut out = Vec::new();
                argv_programs(&argv, &mut out);
                add(out, l.line);
            }
        }
    }
    // Shell strings: netns::sh(..), Netns::exec(..) and try_exec(..).
    for (needle, method) in [("sh(", false), ("exec(", true), ("try_exec(", true)] {
        for i in calls(&code, needle, method) {
            if let Some(l) = literal_at(&code, &lits, i) {
                let script = l.text.replace("{{", "{").replace("}}", "}");
                add(shell_programs(&script), l.line);
            }
        }
    }
    // Argument vectors of the demo's exec(&[..]), output(&[..]) and in_ns(NS, &[..]).
    for needle in ["exec(", "output(", "in_ns("] {
        for mut i in calls(&code, needle, false) {
            if needle == "in_ns(" {
                // The namespace argument.
                while i < code.len() && code[i] != b',' && code[i] != b')' {
                    i += 1;
                }
                i += 1;
            }
            while i < code.len() && code[i].is_ascii_whitespace() {
                i += 1;
            }
            if code[i..].starts_with(b"&[")
                && let Some(l) = literal_at(&code, &lits, i + 2)
            {
                let mut out = Vec::new();
                argv_programs(&[Some(l.text.clone())], &mut out);
                add(out, l.line);
            }
        }
    }
    // Commands the daemon runs through /bin/sh: KILL_ROUTE="..." in a config text, and
    // constants named after them.
    for l in &lits {
        for key in ["KILL_ROUTE=\"", "KILL_RUN_CMD=\""] {
            for (at, _) in l.text.match_indices(key) {
                let value = &l.text[at + key.len()..];
                let value = &value[..value.find('"').unwrap_or(value.len())];
                let line = l.line + l.text[..at].matches('\n').count();
                add(shell_programs(value), line);
            }
        }
    }
    for i in calls(&code, "KILL_RUN_CMD: &str =", false) {
        if let Some(l) = literal_at(&code, &lits, i) {
            add(shell_programs(&l.text), l.line);
        }
    }
    found
        .into_iter()
        .map(|(program, line)| Found {
            program,
            file: rel.to_owned(),
            line,
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Every program the Rust files under `dirs` (relative to `root`) run; files are named
/// relative to `root`.
pub fn scan(root: &Path, dirs: &[&str]) -> Vec<Found> {
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&root.join(dir), &mut files);
    }
    let mut found = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let src =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        found.extend(programs_in(&rel, &src));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::programs_in;

    #[test]
    fn builder_chains_and_argument_vectors_are_followed() {
        let src = r##"fn f() {
    Command::new("nsenter")
        .arg(format!("--net=/x"))
        .args(["ping", "-c", "1"]);
    ns.command("timeout").args([&n, "hping3", "-S"]);
    Command::new("sh").args(["-c", &format!("command -v {bin}")]);
    exec(&[&bin, "unload"]);
    in_ns(ATK_NS, &[
        "nmap",
    ]);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--propagation", "private", "sh", "-c"])
        .arg(format!("mount --bind {} /etc/hosts && exec nsenter --net=/x \"$0\"", a))
        .arg(binary());
    // Command::new("bpftool") in a comment runs nothing.
    let s = "Command::new(\"tc\")";
}
"##;
        let mut found: Vec<(String, usize)> = programs_in("xtask/src/demo.rs", src)
            .into_iter()
            .map(|u| (u.program, u.line))
            .collect();
        found.sort_by_key(|(_, line)| *line);
        let want = [
            ("nsenter", 2),
            ("ping", 2),
            ("timeout", 5),
            ("hping3", 5),
            ("sh", 6),
            ("command", 6),
            ("nmap", 9),
            ("unshare", 11),
            ("sh", 11),
            ("mount", 11),
            ("exec", 11),
            ("nsenter", 11),
        ];
        let want: Vec<(String, usize)> = want.iter().map(|(p, l)| (p.to_string(), *l)).collect();
        assert_eq!(found, want);
    }
}
