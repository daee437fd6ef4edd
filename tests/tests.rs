//! The integration test binary: one binary, shared harness in `util`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod cli;
mod filter;
mod props;
mod vectors;
mod hostile;
mod server;
mod ssrf;
mod upstream;
mod chromium;
mod daemon;
mod prefetch;
mod systemd;
mod api;
mod recipes;
mod milter;
mod postfix;
mod sieve;
mod activation;
