//! The `mailveil` command line: argument parsing, logging set-up, exit codes.
//!
//! Everything of substance lives in the library; `main` parses, calls it, and chooses the
//! exit status from the outcome (`sysexits.h`: 78 for a configuration at fault, 64 for a
//! bad argument, 74 for input or output that failed, 70 for anything else). `filter` has
//! its own rules ([`mailveil::filter_stdin`]): it always writes a message.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{Cli, Command};
use mailveil::{ConfigError, Key, PipeExit, Signer, StartupError};

/// sysexits.h: the command was used incorrectly (a bad argument).
const EX_USAGE: u8 = 64;
/// sysexits.h: an internal software error.
const EX_SOFTWARE: u8 = 70;
/// sysexits.h: an error while reading or writing a file or a socket.
const EX_IOERR: u8 = 74;
/// sysexits.h: temporary failure, the MTA should retry.
const EX_TEMPFAIL: u8 = 75;
/// sysexits.h: bad configuration.
const EX_CONFIG: u8 = 78;

mod cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let config = cli.config.as_deref();
    let result = match &cli.command {
        Command::Serve => mailveil::serve(config).map_err(anyhow::Error::from),
        Command::Filter => {
            return match mailveil::filter_stdin(config) {
                PipeExit::Delivered => ExitCode::SUCCESS,
                PipeExit::Tempfail => ExitCode::from(EX_TEMPFAIL),
            }
        }
        Command::Rewrite { file } => run_rewrite(config, file.as_deref()),
        Command::Sign { url } => run_sign(config, url),
        Command::Keygen => run_keygen(),
        Command::CheckConfig => run_check_config(config),
        Command::Completions { shell } => {
            cli::print_completions(*shell);
            Ok(())
        }
        Command::Man => cli::print_man().map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailveil: {e:#}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// The exit status for a failure, from the first cause that tells.
fn exit_status(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<StartupError>() {
            return if e.is_config() { EX_CONFIG } else { EX_IOERR };
        }
        if cause.is::<ConfigError>() {
            return EX_CONFIG;
        }
        if cause.is::<UsageError>() {
            return EX_USAGE;
        }
        if cause.is::<std::io::Error>() {
            return EX_IOERR;
        }
    }
    EX_SOFTWARE
}

/// A command-line argument that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILVEIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn run_rewrite(config: Option<&Path>, file: Option<&Path>) -> Result<()> {
    let engine = mailveil::build_engine(&mailveil::load_config(config)?)?;
    let mut bytes = Vec::new();
    match file {
        Some(path) if path != Path::new("-") => {
            bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
        }
    }
    let rewritten = engine.rewrite(&String::from_utf8_lossy(&bytes))?;
    tracing::info!(summary = %rewritten.report.header_value(), "rewritten");
    let mut out = std::io::stdout().lock();
    out.write_all(rewritten.html.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn run_sign(config: Option<&Path>, url: &str) -> Result<()> {
    let config = mailveil::load_config(config)?;
    let target =
        url::Url::parse(url).map_err(|e| UsageError(format!("not a URL: {url:?} ({e})")))?;
    if !matches!(target.scheme(), "http" | "https") {
        let reason = format!("only http and https URLs can be proxied: {url:?}");
        return Err(UsageError(reason).into());
    }
    // Signing needs only the current key; earlier keys matter to the verifying daemon.
    let key = Key::load_or_create(&config.keys.key_file).context("keys.key_file")?;
    println!(
        "{}",
        Signer::new(&config.public_url, key, Vec::new()).sign(&target)
    );
    Ok(())
}

fn run_keygen() -> Result<()> {
    let key = Key::generate().map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    println!("{}", key.to_hex());
    Ok(())
}

fn run_check_config(path: Option<&Path>) -> Result<()> {
    let raw = mailveil::load_raw_config(path)?;
    mailveil::check_config(&raw)?;
    print!("{}", raw.to_toml());
    Ok(())
}
