//! Where log lines go: syslog as PortSentry logs (ident `portsentry`, `LOG_PID`, facility
//! `LOG_DAEMON`) and/or stderr. [`Logger::install`] also makes it the process's `log`
//! logger, so that a `log::warn!` from any module (or from aya) reaches the same sinks.

use std::{
    ffi::CString,
    io::{self, Write as _},
};

/// Where record lines go: syslog (ident `portsentry`, `LOG_PID`, facility `LOG_DAEMON`)
/// and/or stderr, each line as it is.
#[derive(Clone, Debug)]
pub struct Logger {
    syslog: bool,
    stderr: bool,
}

/// syslog keeps the pointer it is given: a static string.
const SYSLOG_IDENT: &std::ffi::CStr = c"portsentry";

impl Logger {
    /// A logger to the sinks that are on; with `syslog`, opens the process's syslog
    /// connection (`openlog`) under PortSentry's ident.
    pub fn new(syslog: bool, stderr: bool) -> Logger {
        if syslog {
            // SAFETY: the ident is a static NUL-terminated string, as openlog requires.
            unsafe { libc::openlog(SYSLOG_IDENT.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        }
        Logger { syslog, stderr }
    }

    /// Logs `line` at `LOG_NOTICE` (PortSentry's level for everything it reports).
    pub fn notice(&self, line: &str) {
        self.emit(libc::LOG_NOTICE, line);
    }

    /// Logs `line` at `LOG_WARNING`.
    pub fn warn(&self, line: &str) {
        self.emit(libc::LOG_WARNING, line);
    }

    /// A logger as [`Logger::new`], also installed as the process's `log` logger (the
    /// first call wins; later calls return a logger to the same sinks). `log` records
    /// at info level and above are written: warnings at `LOG_WARNING`, the rest at
    /// `LOG_NOTICE`, prefixed `portsentry: `.
    pub fn install(syslog: bool, stderr: bool) -> Logger {
        let logger = Logger::new(syslog, stderr);
        if log::set_logger(Box::leak(Box::new(Logger { syslog, stderr }))).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
        logger
    }

    fn emit(&self, level: libc::c_int, line: &str) {
        if self.syslog {
            // A NUL would end the C string early; the line never holds one, but be sure.
            let text =
                CString::new(line.replace('\0', "")).expect("no NUL bytes are left in the line");
            // SAFETY: a "%s" format with one valid C string argument: the line is never
            // read as a format.
            unsafe { libc::syslog(level | libc::LOG_DAEMON, c"%s".as_ptr(), text.as_ptr()) };
        }
        if self.stderr {
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            // One write per line; a closed stderr must not stop the daemon.
            let _ = io::stderr().lock().write_all(&bytes);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("portsentry: {}", record.args());
        match record.level() {
            log::Level::Error | log::Level::Warn => self.warn(&line),
            _ => self.notice(&line),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logger_never_uses_the_line_as_a_format() {
        // With "%n" read as a format this would write through a garbage pointer.
        let line = "portsentry unit test: %s%n%d%n%x are not conversions";
        Logger::new(true, false).notice(line);
        Logger::new(true, false).warn(line);
        Logger::new(false, true).notice("portsentry unit test: a line on stderr");
        Logger::new(false, false).warn("nowhere");
    }
}
