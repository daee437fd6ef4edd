//! The integration test binary: one binary, shared harness in `util`.

mod util;

mod cli;
mod filter;
mod props;
mod vectors;
