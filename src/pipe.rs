//! `mailveil filter`: one message on stdin, one message on stdout, for delivery agents
//! (procmail, maildrop, Sieve's `filter`, fetchmail's mda).
//!
//! The one front that must write a message whatever happens. A message it cannot rewrite
//! is not handed on as the sender wrote it: [`filter_message`] neutralises what it cannot
//! rewrite. When mailveil itself cannot work (a bad config, a missing key) it writes the
//! original, says why on stderr, and reports success (or, with
//! `filter.on_error = "tempfail"`, a temporary failure so the MTA retries); so it does,
//! for now, with a message over `filter.max_message_bytes` (issue 11). Only when stdin
//! cannot be read, or stdout cannot be written, does it ask for a retry regardless: the
//! message would otherwise be lost or truncated.

use std::io::{Read, Write};
use std::path::Path;

use crate::config::{Config, FilterOnError, RawConfig};
use crate::delivery::queue_prefetch;
use crate::delivery::spool::Spool;
use crate::rewrite::message::filter_message;
use crate::startup;

/// How `mailveil filter` ends; `main` turns it into the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeExit {
    /// A message was written (rewritten, or the original): exit 0.
    Delivered,
    /// The MTA should keep the message and retry: exit 75 (EX_TEMPFAIL).
    Tempfail,
}

/// Filters stdin to stdout with the config at `config_path` (or the defaults).
pub fn run(config_path: Option<&Path>) -> PipeExit {
    let config = startup::load_config(config_path);
    let limit = config.as_ref().map_or_else(
        |_| RawConfig::default().filter.max_message_bytes,
        |c| c.filter.max_message_bytes,
    );
    let on_error = config
        .as_ref()
        .map_or(FilterOnError::Pass, |c| c.filter.on_error);
    let input = match read_limited_stdin(limit) {
        Ok(input) => input,
        Err(e) => {
            // We may have consumed part of the message and cannot give it back.
            eprintln!("mailveil filter: cannot read the message: {e}");
            return PipeExit::Tempfail;
        }
    };
    let raw = match (&input, config) {
        (Input::TooLarge(_), _) => {
            // A size policy, not a failure: retrying would not make the message smaller.
            eprintln!(
                "mailveil filter: message larger than {limit} bytes, passed through unchanged"
            );
            return write_or_tempfail(|out| input.write_original(out));
        }
        (Input::Whole(_), Err(e)) => Err(format!("configuration: {e}")),
        (Input::Whole(raw), Ok(config)) => rewrite(&config, raw),
    };
    match raw {
        Ok(message) => write_or_tempfail(|out| out.write_all(&message)),
        Err(reason) => {
            eprintln!("mailveil filter: passing the message through unchanged: {reason}");
            let status = write_or_tempfail(|out| input.write_original(out));
            match on_error {
                FilterOnError::Pass => status,
                FilterOnError::Tempfail => PipeExit::Tempfail,
            }
        }
    }
}

/// The rewritten message, its prefetch queued; the reason as text when it cannot be.
fn rewrite(config: &Config, raw: &[u8]) -> Result<Vec<u8>, String> {
    let engine = startup::build_engine(config).map_err(|e| e.to_string())?;
    let filtered = filter_message(&engine, raw).map_err(|e| e.to_string())?;
    if let Some(reason) = filtered
        .fallback
        .as_ref()
        .filter(|_| filtered.report.neutralised > 0)
    {
        eprintln!("mailveil filter: HTML neutralised, not rewritten: {reason}");
    }
    match Spool::open_for_writing(&config.spool_dir) {
        Ok(spool) => queue_prefetch(&spool, &filtered.report),
        Err(e) => {
            eprintln!(
                "mailveil filter: prefetch not queued ({e}); images will be fetched when opened"
            );
        }
    }
    tracing::info!(
        html_parts = filtered.html_parts,
        summary = %filtered.report.header_value(),
        "message rewritten"
    );
    Ok(filtered.message)
}

/// Writes to stdout; a failed write means the MTA has a truncated message, so ask it to retry.
fn write_or_tempfail(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> PipeExit {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => PipeExit::Delivered,
        Err(e) => {
            eprintln!("mailveil filter: cannot write the message: {e}");
            PipeExit::Tempfail
        }
    }
}

/// The message as read from stdin.
enum Input {
    /// All of it, within the size limit.
    Whole(Vec<u8>),
    /// The first `limit + 1` bytes; the rest is still on stdin and is streamed through.
    TooLarge(Vec<u8>),
}

impl Input {
    fn write_original(&self, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Input::Whole(bytes) => out.write_all(bytes),
            Input::TooLarge(head) => {
                out.write_all(head)?;
                std::io::copy(&mut std::io::stdin().lock(), out).map(|_| ())
            }
        }
    }
}

fn read_limited_stdin(limit: u64) -> std::io::Result<Input> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        Ok(Input::TooLarge(bytes))
    } else {
        Ok(Input::Whole(bytes))
    }
}
