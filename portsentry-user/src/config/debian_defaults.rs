//! PortSentry 1.2's start-up file on Debian, `/etc/default/portsentry`. Its init script
//! started one daemon per mode the file names: `TCP_MODE` and `UDP_MODE`, `tcp`/`udp` as
//! its postinst writes them (or `stcp`, `atcp`, `sudp`, `audp`); an empty or missing one
//! started none for that protocol. The modes of a host moved from 1.2 live there, not in
//! `portsentry.conf`, so the packaged unit passes the file (`--modes-file`): when it
//! exists, its modes are the ones in force.
//!
//! The file is a shell fragment; only plain assignments of the two keys are read (with
//! or without quotes, `export` allowed, a comment after the value allowed). A line that
//! sets one of them any other way is an error naming the line; other lines are left
//! alone, as the init script's `.` would have run them for nothing of ours.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::{Config, ConfigError, Mode, text::read_text};
use crate::paths::DEFAULT_CONFIG;

/// Where PortSentry 1.2 kept the modes on Debian, beside [`DEFAULT_CONFIG`].
pub const DEBIAN_DEFAULTS: &str = "/etc/default/portsentry";

/// The start-up file whose modes apply to `config`: `explicit` (`--modes-file`), else
/// [`DEBIAN_DEFAULTS`] for the system's configuration file ([`DEFAULT_CONFIG`]), beside
/// which it sits on a host moved from 1.2 (so that `run`, `check-config` and `status`
/// agree on the modes in force); none for another file.
pub fn file_for(config: &Config, explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => config
            .source
            .as_deref()
            .is_some_and(|s| same_file(s, Path::new(DEFAULT_CONFIG)))
            .then(|| PathBuf::from(DEBIAN_DEFAULTS)),
    }
}

/// Whether `a` and `b` name one file, however written (relative, with `..`, through a
/// symbolic link).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

/// Sets `config`'s modes from the start-up file for it ([`file_for`]) when that file
/// exists; the file, then.
pub fn apply(config: &mut Config, explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = file_for(config, explicit) else {
        return Ok(None);
    };
    let Some(m) = read(&path)? else {
        return Ok(None);
    };
    config.tcp_mode = m.tcp;
    config.udp_mode = m.udp;
    Ok(Some(path))
}

/// The modes a start-up file sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modes {
    pub tcp: Mode,
    pub udp: Mode,
}

/// The modes `path` sets; `None` when there is no such file.
pub fn read(path: &Path) -> Result<Option<Modes>, ConfigError> {
    match path.try_exists() {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfigError::new(path, 0, format!("cannot look at it: {e}"))),
    }
    parse(&read_text(path)?, path).map(Some)
}

/// The modes the text of a start-up file sets (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<Modes, ConfigError> {
    let mut tcp = Mode::Off;
    let mut udp = Mode::Off;
    for (i, raw) in text.lines().enumerate() {
        let err = |message: String| ConfigError::new(path, i + 1, message);
        let mut line = raw.trim();
        for word in ["export", "readonly"] {
            if let Some(rest) = line.strip_prefix(word)
                && rest.starts_with(char::is_whitespace)
            {
                line = rest.trim_start();
            }
        }
        let Some((key, is_tcp)) =
            [("TCP_MODE", true), ("UDP_MODE", false)]
                .into_iter()
                .find(|(k, _)| {
                    line.strip_prefix(k)
                        .is_some_and(|r| !r.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
                })
        else {
            continue;
        };
        // `TCP_MODE = "tcp"` runs a command named TCP_MODE in the shell: no assignment.
        let Some(rest) = line[key.len()..].strip_prefix('=') else {
            return Err(err(format!(
                "{key} is not assigned here (the shell reads this line as a command): write \
                 {key}=\"{}\", without spaces around =",
                if is_tcp { "tcp" } else { "udp" }
            )));
        };
        let value = shell_word(rest).ok_or_else(|| {
            err(format!(
                "{key} must be one word, quoted or not, with nothing after it but a \
                 comment (as PortSentry 1.2's postinst writes it: {key}=\"{}\")",
                if is_tcp { "tcp" } else { "udp" }
            ))
        })?;
        // Empty: PortSentry 1.2's init script started no daemon for the protocol.
        let mode = if value.is_empty() {
            Mode::Off
        } else {
            let parsed = if is_tcp {
                Mode::parse_tcp(value)
            } else {
                Mode::parse_udp(value)
            };
            parsed.map_err(err)?
        };
        if is_tcp {
            tcp = mode;
        } else {
            udp = mode;
        }
    }
    if tcp == Mode::Off && udp == Mode::Off {
        return Err(ConfigError::new(
            path,
            0,
            "TCP_MODE and UDP_MODE are both empty or unset, so PortSentry 1.2's init script \
             started nothing: set one (TCP_MODE=\"tcp\"), or remove this file to take the \
             modes from the configuration file",
        ));
    }
    Ok(Modes { tcp, udp })
}

/// The value of a shell assignment's right side: `"word"`, `'word'` or `word`, then
/// nothing but blanks and a comment. `None` for anything else (a variable, a command,
/// two words).
fn shell_word(rest: &str) -> Option<&str> {
    let (value, after) = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let body = &rest[1..];
            let end = body.find(q)?;
            (&body[..end], &body[end + 1..])
        }
        _ => match rest.find(char::is_whitespace) {
            Some(end) => (&rest[..end], &rest[end..]),
            None => (rest, ""),
        },
    };
    let after = after.trim_start();
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (plain && (after.is_empty() || after.starts_with('#'))).then_some(value)
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_file_however_named() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("portsentry.conf");
        std::fs::write(&conf, "").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let link = dir.path().join("link.conf");
        std::os::unix::fs::symlink(&conf, &link).unwrap();
        assert!(same_file(&conf, &dir.path().join("sub/../portsentry.conf")));
        assert!(same_file(&conf, &link));
        assert!(!same_file(&conf, &dir.path().join("other.conf")));
    }

    use super::*;

    fn modes(text: &str) -> Result<Modes, ConfigError> {
        parse(text, Path::new("/etc/default/portsentry"))
    }

    #[test]
    fn what_portsentry_12_writes() {
        // Debian's postinst, word for word.
        let text = "# /etc/default/portsentry\n#\n# This file is read by \
                    /etc/init.d/portsentry. See the portsentry.8\n# manpage for details.\n#\n\
                    # The options in this file refer to commandline arguments (all in \
                    lowercase)\n# of portsentry. Use only one tcp and udp mode at a time.\n\
                    #\nTCP_MODE=\"tcp\"\nUDP_MODE=\"udp\"\n";
        assert_eq!(
            modes(text).unwrap(),
            Modes {
                tcp: Mode::Stealth,
                udp: Mode::Stealth
            }
        );
    }

    #[test]
    fn forms_of_the_assignment() {
        let m = modes(
            "export TCP_MODE=atcp # advanced\n  UDP_MODE='sudp'\nOTHER=$(x)\nTCP_MODES=x y\n",
        );
        assert_eq!(
            m.unwrap(),
            Modes {
                tcp: Mode::Advanced,
                udp: Mode::Stealth
            }
        );
        // Empty or unset: that protocol is off, as 1.2 started no daemon for it.
        let m = modes("TCP_MODE=\"\"\nUDP_MODE=\"audp\"\n").unwrap();
        assert_eq!((m.tcp, m.udp), (Mode::Off, Mode::Advanced));
        let m = modes("TCP_MODE=stcp\n").unwrap();
        assert_eq!((m.tcp, m.udp), (Mode::Stealth, Mode::Off));
        // The last assignment wins, as in the shell.
        let m = modes("TCP_MODE=tcp\nTCP_MODE=atcp\n").unwrap();
        assert_eq!(m.tcp, Mode::Advanced);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, says) in [
            ("# x\nTCP_MODE=\"udp\"\n", 2, "mode of the other protocol"),
            ("TCP_MODE=tcp\nUDP_MODE=\"udp\" audp\n", 2, "one word"),
            ("UDP_MODE=$MODE\n", 1, "one word"),
            ("TCP_MODE=\"tcp\n", 1, "one word"),
            ("TCP_MODE=bogus\n", 1, "TCP_MODE must be"),
            ("TCP_MODE=\"\"\nUDP_MODE=\n", 0, "both empty"),
            ("UDP_MODE=udp\nTCP_MODE = \"tcp\"\n", 2, "not assigned"),
            ("export\tTCP_MODE tcp\n", 1, "not assigned"),
            ("# nothing\n", 0, "both empty"),
        ] {
            let e = modes(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_file_beside_the_systems_configuration() {
        let system = Config {
            source: Some(PathBuf::from(DEFAULT_CONFIG)),
            ..Config::default()
        };
        assert_eq!(
            file_for(&system, None),
            Some(PathBuf::from(DEBIAN_DEFAULTS))
        );
        let other = Config {
            source: Some(PathBuf::from("/tmp/test/portsentry.conf")),
            ..Config::default()
        };
        assert_eq!(file_for(&other, None), None);
        assert_eq!(file_for(&Config::default(), None), None);
        let given = Path::new("/srv/modes");
        assert_eq!(file_for(&other, Some(given)), Some(given.to_path_buf()));
    }

    #[test]
    fn a_missing_file_sets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&dir.path().join("portsentry")).unwrap(), None);
        let path = dir.path().join("portsentry");
        std::fs::write(&path, "TCP_MODE=\"stcp\"\nUDP_MODE=\"\"\n").unwrap();
        let m = read(&path).unwrap().unwrap();
        assert_eq!((m.tcp, m.udp), (Mode::Stealth, Mode::Off));
    }
}
