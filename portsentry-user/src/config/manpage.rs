//! portsentry.conf(5), written from [`KEYS`]: every key's name, default and doc line come
//! from the table the parser uses, so the page cannot list a key the parser does not know
//! or miss one it does. The prose around the keys (the file syntax) is the short form of
//! `docs/configuration.md`.

use std::fmt::Write as _;

use super::keys::{KEYS, Key, Section};

/// The page's file name in a man directory.
pub const FILE_NAME: &str = "portsentry.conf.5";

/// Escapes `text` for roff: a backslash is printed with `\e`, a hyphen is a minus sign
/// (`\-`, so that options and paths copy and search as typed), and a line that would start
/// with a control character (`.` or `'`) gets a zero-width `\&` in front.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.split('\n') {
        if !out.is_empty() {
            out.push('\n');
        }
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str("\\&");
        }
        for c in line.chars() {
            match c {
                '\\' => out.push_str("\\e"),
                '-' => out.push_str("\\-"),
                c => out.push(c),
            }
        }
    }
    out
}

/// One key as a tagged paragraph: the name in bold, its default, then the doc line.
fn key_entry(out: &mut String, key: &Key) {
    let default = match key.default {
        Some("") => "empty (not set)".to_owned(),
        Some(d) => format!("\"{d}\""),
        None => "not set".to_owned(),
    };
    let _ = writeln!(out, ".TP");
    let _ = writeln!(out, ".B {}", escape(key.name));
    let _ = writeln!(
        out,
        "{}",
        code_in_bold(&escape(&format!("{}.", capitalise(key.doc))))
    );
    let _ = writeln!(out, ".br");
    let _ = writeln!(out, "Default: {}.", escape(&default));
}

/// `code` spans (Markdown backticks) in bold.
fn code_in_bold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('`').enumerate() {
        if i > 0 {
            out.push_str(if i % 2 == 1 { "\\fB" } else { "\\fR" });
        }
        out.push_str(part);
    }
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The whole page, in roff (man macros). `version` goes in the footer.
pub fn render(version: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        ".TH PORTSENTRY.CONF 5 \"\" \"portsentry {}\" \"File Formats\"",
        escape(version)
    );
    out.push_str(
        r#".SH NAME
portsentry.conf \- configuration file of portsentry, the XDP port\-scan detector
.SH SYNOPSIS
.I /etc/portsentry/portsentry.conf
.SH DESCRIPTION
.BR portsentry (8)
reads PortSentry 1.2's configuration file: PortSentry's keys keep their meaning, and a
few extension keys configure what PortSentry could not do (expiring bans, the XDP
attachment, rate limits).
A key the file leaves out takes the default listed below.
.PP
One
.B KEY="value"
per line; keys are upper case.
Spaces around the key, the
.B =
and the value are ignored.
Blank lines and lines whose first non\-blank character is
.B #
are comments.
The value runs from the first
.B \(dq
after
.B =
to the last one on the line, so a command may contain quotes.
.B KEY=""
is an empty value: for commands, paths and addresses it means not set.
.PP
Loading is all or nothing: an unknown key, a bad value or a malformed line stops the
load with a message naming the file and line, and nothing from the file is applied.
.B portsentry check\-config
loads the file as the daemon would and prints the effective settings.
A running daemon re\-reads the file and the ignore file on SIGHUP
.RB ( "systemctl reload portsentry" );
a file with an error is refused and the running settings stay.
.PP
In commands,
.B $TARGET$
is replaced by the attacking address,
.B $PORT$
by the port and
.B $MODE$
by the mode (atcp, audp, stcp or sudp).
Durations are seconds or a number with a unit: 90s, 30m, 12h, 7d.
"#,
    );
    for (section, heading) in [
        (Section::PortSentry, "PORTSENTRY 1.2 KEYS"),
        (Section::Extension, "EXTENSION KEYS"),
    ] {
        let _ = writeln!(out, ".SH {heading}");
        for key in KEYS.iter().filter(|k| k.section == section) {
            key_entry(&mut out, key);
        }
    }
    out.push_str(
        r#".SH FILES
.TP
.I /etc/portsentry/portsentry.conf
This file.
.TP
.I /etc/portsentry/portsentry.ignore
Hosts and networks never acted on (IGNORE_FILE), one address or ADDR/PREFIX per line.
.TP
.I /var/lib/portsentry
STATE_DIR: the bans on record, the pid file and the control socket.
.TP
.I /usr/share/doc/portsentry/configuration.md.gz
Every key at length, with how each differs from PortSentry 1.2.
.SH SEE ALSO
.BR portsentry (8),
.BR portsentry\-check\-config (8),
.BR hosts.deny (5)
"#,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_on_the_page_with_its_default() {
        let page = render("1.0.0");
        for key in KEYS {
            let entry = format!(".TP\n.B {}\n", escape(key.name));
            let at = page
                .find(&entry)
                .unwrap_or_else(|| panic!("{} has no entry on the page", key.name));
            let body = &page[at + entry.len()..];
            let body = &body[..body.find(".TP").unwrap_or(body.len())];
            if let Some(d) = key.default.filter(|d| !d.is_empty()) {
                assert!(
                    body.contains(&format!("Default: \"{}\"", escape(d))),
                    "{}: default {d:?} missing in {body:?}",
                    key.name
                );
            }
            let first_word = key.doc.split_whitespace().nth(1).unwrap_or(key.doc);
            assert!(
                body.contains(&escape(first_word)),
                "{}: doc line missing in {body:?}",
                key.name
            );
        }
        // Each key once: the page's entries are exactly the table.
        assert_eq!(page.matches(".TP\n.B ").count(), KEYS.len());
    }

    #[test]
    fn sections_follow_the_table() {
        let page = render("1.0.0");
        let ext = page.find(".SH EXTENSION KEYS").expect("extension heading");
        let ps = page.find(".SH PORTSENTRY 1.2 KEYS").expect("1.2 heading");
        assert!(ps < ext);
        for key in KEYS {
            let at = page.find(&format!(".B {}\n", escape(key.name))).unwrap();
            assert_eq!(
                at > ext,
                key.section == Section::Extension,
                "{} is under the wrong heading",
                key.name
            );
        }
    }

    #[test]
    fn roff_control_characters_are_escaped() {
        assert_eq!(escape("a-b"), "a\\-b");
        assert_eq!(escape("C:\\x"), "C:\\ex");
        assert_eq!(escape(".x\n'y"), "\\&.x\n\\&'y");
        assert_eq!(code_in_bold("use `ban` now"), "use \\fBban\\fR now");
    }
}
