//! mailveil ends email read-tracking.
//!
//! See `ARCHITECTURE.md` for the data flow and the invariants.

pub mod config;
pub mod daemon;
pub mod delivery;
pub mod metrics;
pub mod proxy;
pub mod rewrite;
pub mod sign;
