//! The integration test binary: one binary, shared harness in `util`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod activation;
mod api;
mod chromium;
mod cli;
mod daemon;
mod filter;
mod hostile;
mod milter;
mod postfix;
mod prefetch;
mod props;
mod recipes;
mod server;
mod sieve;
mod ssrf;
mod systemd;
mod upstream;
mod vectors;
