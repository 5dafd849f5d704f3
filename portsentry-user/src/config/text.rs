//! Reading a text file line by line, shared by the config file and the ignore file: the size
//! and line-length limits, the encoding checks, and line numbering. Every problem is a
//! [`ConfigError`] naming the file and the line.

use std::{fs::File, io::Read as _, path::Path};

use super::ConfigError;

/// Largest config (or ignore) file we read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest line, in bytes, without its line ending.
pub const MAX_LINE_BYTES: usize = 4096;

/// Reads a text file of at most [`MAX_FILE_BYTES`], reporting a NUL byte, an over-long line or
/// invalid UTF-8 with the line it is on.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    let err = |line: usize, message: String| ConfigError::new(path, line, message);
    let file = File::open(path).map_err(|e| err(0, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(0, format!("cannot read: {e}")))?;
    check_size(bytes.len(), path)?;
    // A leading byte-order mark is not part of line 1 (parsing skips it too).
    let body = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        if line.len() > MAX_LINE_BYTES + 1 {
            return Err(err(n, too_long(line.len())));
        }
        if line.contains(&0) {
            return Err(err(n, nul_byte()));
        }
        if let Err(e) = std::str::from_utf8(line) {
            let at = e.valid_up_to();
            return Err(err(
                n,
                format!(
                    "is not valid UTF-8 text (byte 0x{:02x} at column {}); the file must be \
                     UTF-8 or plain ASCII text",
                    line[at],
                    at + 1
                ),
            ));
        }
    }
    String::from_utf8(bytes).map_err(|_| err(0, "is not valid UTF-8 text".to_string()))
}

/// Rejects a text over [`MAX_FILE_BYTES`], as an error about the whole file.
pub(crate) fn check_size(len: usize, path: &Path) -> Result<(), ConfigError> {
    if len as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::new(
            path,
            0,
            format!("is larger than {MAX_FILE_BYTES} bytes (1 MiB); is this the right file?"),
        ));
    }
    Ok(())
}

/// The numbered lines of `text` (1-based), without line endings (`\n` or `\r\n`) and without
/// a leading byte-order mark.
pub(crate) fn text_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

/// Rejects lines over [`MAX_LINE_BYTES`], NUL bytes and other control characters (tab is fine).
pub(crate) fn check_line(line: &str, n: usize, path: &Path) -> Result<(), ConfigError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ConfigError::new(path, n, too_long(line.len())));
    }
    for c in line.chars() {
        if c == '\0' {
            return Err(ConfigError::new(path, n, nul_byte()));
        }
        if c.is_control() && c != '\t' {
            return Err(ConfigError::new(
                path,
                n,
                format!(
                    "contains the control character U+{:04X}; the file must be plain text",
                    u32::from(c)
                ),
            ));
        }
    }
    Ok(())
}

fn too_long(len: usize) -> String {
    format!("line is {len} bytes long; lines may be at most {MAX_LINE_BYTES} bytes")
}

fn nul_byte() -> String {
    "contains a NUL byte; the file must be plain text (is this a binary file?)".to_string()
}

/// `s`, cut to 60 characters (and `...`) for quoting in a message.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
