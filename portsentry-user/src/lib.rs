//! The portsentry daemon and CLI as a library, so the integration tests can drive it.
//!
//! From the bottom up: fixed names ([`paths`]), small typed values ([`kinds`]),
//! rtnetlink requests ([`rtnl`]), the configuration ([`config`]), PortSentry's records
//! ([`report`]), hardened file writes ([`fsutil`]), the kernel maps ([`kernel`]), bans ([`bans`]), the kill
//! actions ([`actions`]), metrics, the control-socket protocol ([`control`]), the daemon
//! ([`daemon`]) and the command line ([`cli`]). Nothing below the daemon imports it.

pub mod actions;
pub mod bans;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod crowdsec;
pub mod daemon;
pub mod fsutil;
pub mod kernel;
pub mod kinds;
pub mod line_files;
pub mod metrics;
pub mod paths;
pub mod pidfile;
pub mod report;
pub mod rtnl;
