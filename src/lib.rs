//! mailveil ends email read-tracking.
//!
//! A message's HTML is rewritten so that every remote reference points at a signed URL on
//! the proxy ([`html`], [`css`], [`mime`]); known trackers are removed ([`trackers`]).
//! [`filter`] is the never-lose-a-message wrapper used by `mailveil filter`, the [`milter`]
//! and the rewrite [`api`].
//! `mailveil serve` is [`server`]: signed URLs ([`sign`]) answered from the [`cache`], with
//! upstream fetches ([`fetch`], the only outbound code) checked by [`image`].
//! See `ARCHITECTURE.md` for the data flow and the invariants.

pub mod activation;
pub mod api;
pub mod cache;
pub mod config;
pub mod css;
pub mod fetch;
pub mod filter;
pub mod html;
pub mod image;
pub mod metrics;
pub mod milter;
pub mod mime;
pub mod prefetch;
pub mod server;
pub mod sign;
pub mod spool;
pub mod trackers;
pub mod weburl;
