//! The `portsentry` binary: parse the command line, run the subcommand.

use std::process::ExitCode;

use clap::Parser as _;
use portsentry_user::cli::{self, Cli};

fn main() -> ExitCode {
    return_big_buffers();
    let cli = Cli::parse_from(cli::translate_legacy(std::env::args_os().collect()));
    cli::execute(cli.command)
}

/// Buffers of a MiB or more are given back to the system when freed. By default glibc
/// raises that threshold to the size of the last big buffer freed (up to 32 MiB), so
/// that start-up's buffers for a million bans (the journal's records, the keys written
/// to the kernel) stayed in the daemon's memory as free space once done: 16 bytes of
/// resident memory a ban, for good (BENCHMARKS.md, "Daemon memory").
fn return_big_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
