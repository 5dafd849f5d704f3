//! `portsentry check-config`: load the configuration as `run` would and print the
//! effective settings (watched ports, ignore list, the actions in order).

use anyhow::Result;

use super::ConfigArgs;
use crate::config::effective;

/// The `check-config` report, or the error that names the file and line.
pub fn run(args: &ConfigArgs) -> Result<String> {
    Ok(effective::load(args)?.render())
}
