//! Sharing bans with a CrowdSec Local API (LAPI): as a bouncer we enforce its decisions
//! ([`enforce`]), as a machine we report our scan bans to it ([`report`]). The calls
//! ([`api`]), the stream's decisions ([`decisions`]), which decisions hold each ban
//! ([`held`]), those not enforced ([`refused`]), the retry pacing ([`backoff`]) and the
//! state `status` shows ([`link`]).
//! The daemon wires them to the ban book (`daemon/crowdsec.rs`).

pub mod api;
pub mod backoff;
pub mod decisions;
pub mod enforce;
pub mod held;
pub mod link;
pub mod refused;
pub mod report;
