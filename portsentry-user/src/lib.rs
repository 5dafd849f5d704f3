//! The portsentry daemon and CLI as a library, so the integration tests can drive it.

pub mod addr;
pub mod clock;
pub mod config;
pub mod dataplane;
pub mod ignore;
pub mod object;
pub mod ports;
