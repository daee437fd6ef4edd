//! mailveil ends email read-tracking.
//!
//! A message's HTML is rewritten so that every remote reference points at a signed URL on
//! the proxy ([`html`], [`css`], [`mime`]); known trackers are removed ([`trackers`]).
//! [`filter`] is the never-lose-a-message wrapper used by `mailveil filter`.
//! See `ARCHITECTURE.md` for the data flow and the invariants.

pub mod config;
pub mod css;
pub mod filter;
pub mod html;
pub mod mime;
pub mod sign;
pub mod trackers;
