//! System tests: each needs software beyond Rust, as Debian packages (`.ci/run` installs
//! them), or root. Chromium (`chromium`); Postfix, as root (`postfix`); Dovecot's LDA and
//! Pigeonhole (`sieve`); procmail and maildrop (`recipes`); `systemd-analyze` (`systemd`)
//! and `systemd-socket-activate` (`activation`). Skip them all with
//! `cargo test -- --skip system::`.

mod activation;
mod chromium;
mod postfix;
mod recipes;
mod sieve;
mod systemd;
