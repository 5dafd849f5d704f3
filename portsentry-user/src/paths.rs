//! Every fixed name the daemon and the CLI agree on: files in STATE_DIR, pins in
//! PIN_DIR. The directories themselves are settings (STATE_DIR, PIN_DIR; their defaults
//! are in the configuration).

use std::path::{Path, PathBuf};

/// The configuration file used when `-c` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/portsentry/portsentry.conf";

/// The pid file in STATE_DIR, also the lock that allows one daemon per state directory.
pub const PID_FILE: &str = "portsentry.pid";
/// The control socket in STATE_DIR (`portsentry ban`, `unban`).
pub const CONTROL_SOCKET: &str = "control.sock";
/// The ban journal in STATE_DIR ([`crate::bans::journal`]).
pub const JOURNAL_FILE: &str = "bans.journal";
/// The ban state file of earlier releases in STATE_DIR, migrated to the journal.
pub const STATE_FILE: &str = "bans.json";
/// The state of the daemon's link to a CrowdSec Local API in STATE_DIR (`status` reads
/// it; [`crate::crowdsec::link`]).
pub const CROWDSEC_FILE: &str = "crowdsec.json";
/// The reports to the CrowdSec Local API not yet sent, in STATE_DIR, kept across a
/// restart ([`crate::crowdsec::report::Outbox`]).
pub const CROWDSEC_REPORTS_FILE: &str = "crowdsec-reports.json";
/// Link pins in PIN_DIR are named this followed by the interface name.
pub const LINK_PREFIX: &str = "link-";
/// The program's pin in PIN_DIR is named this followed by the hash of the object it was
/// loaded from ([`crate::kernel::object::build_id`]): the next start of the same build
/// uses it instead of loading (and verifying) the program again.
pub const PROGRAM_PREFIX: &str = "prog-";
/// The pins of the links of the program's kernel hooks (`kernel::tcp_sockets`) are
/// named this followed by the hook program's name.
pub const HOOK_PREFIX: &str = "hook-";

pub fn pid_file(state_dir: &Path) -> PathBuf {
    state_dir.join(PID_FILE)
}

pub fn control_socket(state_dir: &Path) -> PathBuf {
    state_dir.join(CONTROL_SOCKET)
}

pub fn journal_file(state_dir: &Path) -> PathBuf {
    state_dir.join(JOURNAL_FILE)
}

pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

pub fn crowdsec_file(state_dir: &Path) -> PathBuf {
    state_dir.join(CROWDSEC_FILE)
}

pub fn crowdsec_reports_file(state_dir: &Path) -> PathBuf {
    state_dir.join(CROWDSEC_REPORTS_FILE)
}

/// The pin of the link that attaches the program to `interface`.
pub fn link_pin(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}{interface}"))
}

/// The pin of the program loaded from the object whose build id is `build_id`.
pub fn program_pin(pin_dir: &Path, build_id: u64) -> PathBuf {
    pin_dir.join(format!("{PROGRAM_PREFIX}{build_id:016x}"))
}

/// The pin of the link of the hook program `name`.
pub fn hook_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(format!("{HOOK_PREFIX}{name}"))
}

/// True when a pin's file name is a hook's link.
pub fn is_hook_pin(file_name: &str) -> bool {
    file_name.starts_with(HOOK_PREFIX)
}

/// True when a pin's file name is a program pin (of any build).
pub fn is_program_pin(file_name: &str) -> bool {
    file_name.starts_with(PROGRAM_PREFIX)
}

/// The interface a pin's file name is the link of, if it is a link pin.
pub fn link_interface(file_name: &str) -> Option<&str> {
    file_name.strip_prefix(LINK_PREFIX)
}
