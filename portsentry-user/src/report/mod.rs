//! PortSentry's records: the `attackalert:` lines ([`alert`]), the history and blocked
//! files ([`history`]), and where log lines go ([`syslog`]).

pub mod alert;
pub mod history;
pub mod syslog;

pub use syslog::Logger;
