//! The `portsentry` binary: parse the command line, run the subcommand.

use std::process::ExitCode;

use clap::Parser as _;
use portsentry_user::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse_from(cli::translate_legacy(std::env::args_os().collect()));
    cli::execute(cli.command)
}
