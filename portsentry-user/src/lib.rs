//! The portsentry daemon and CLI as a library, so the integration tests can drive it.

pub mod actions;
pub mod addr;
pub mod bans;
pub mod book;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod detector;
pub mod metrics;
pub mod object;
pub mod ops;
pub mod records;
pub mod state;
