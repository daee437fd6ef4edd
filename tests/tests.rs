//! The integration test binary: one binary, the shared harness in `util`, and the tests
//! that need software beyond Rust under `system` (`cargo test -- --skip system::` runs the
//! rest on any machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod system;

mod api;
mod cli;
mod daemon;
mod filter;
mod hostile;
mod milter;
mod prefetch;
mod props;
mod server;
mod ssrf;
mod vectors;
