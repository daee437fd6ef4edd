//! The message filter behind `mailveil filter`, the milter and the rewrite API:
//! one RFC 5322 message in, one message out, never lost.
//!
//! Every HTML part is rewritten by the [`Engine`] through
//! [`crate::rewrite::mime`], and one `X-Mailveil` header is prepended. Whatever goes wrong — a parser
//! panic included — the caller gets a [`FilterError`] and passes the original bytes on.
//! This module does no I/O; reading stdin and writing stdout is `main`'s job.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::rewrite::html::{Engine, Report};
use crate::rewrite::mime::{self, MimeLimits};

/// Name of the header added to every rewritten message.
pub const HEADER_NAME: &str = "X-Mailveil";

/// Attached messages nested deeper than this are not parsed: the MIME parser frees nested
/// messages recursively, and a stack overflow cannot be contained like a panic.
const MAX_NESTED_MESSAGES: usize = 64;

/// Why a message is passed through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The input has no header section (empty input, binary junk).
    #[error("not a message: {0}")]
    NotAMessage(String),
    /// The MIME structure or an HTML part could not be rewritten.
    #[error("cannot rewrite: {0}")]
    Rewrite(String),
    /// More attached messages than the parser can be trusted with (64).
    #[error("more than {MAX_NESTED_MESSAGES} attached messages")]
    TooManyMessages,
    /// A parser panicked on this input; the panic was contained.
    #[error("internal error while parsing the message (contained)")]
    Panic,
}

/// A rewritten message and what was done to it.
#[derive(Debug, Clone)]
pub struct Filtered {
    /// The new message bytes.
    pub message: Vec<u8>,
    /// Counts, tracker hosts and the URLs to prefetch.
    pub report: Report,
    /// HTML parts rewritten.
    pub html_parts: usize,
    /// HTML parts left as they were because they could not be decoded faithfully.
    pub skipped_parts: usize,
}

/// Rewrites every HTML part of `raw` and adds the `X-Mailveil` header.
///
/// # Errors
/// [`FilterError`] when the message cannot be rewritten; the caller must then pass `raw`
/// on unchanged.
pub fn filter_message(engine: &Engine, raw: &[u8]) -> Result<Filtered, FilterError> {
    let mut filtered = rewrite_parts(engine, raw)?;
    filtered.message = mime::prepend_header(
        &filtered.message,
        HEADER_NAME,
        &filtered.report.header_value(),
    );
    Ok(filtered)
}

/// Rewrites every HTML part of `raw` without adding the header: the milter asks the MTA
/// to add it. Everything outside the HTML parts' bodies, the header section included, comes
/// out byte-identical.
///
/// # Errors
/// As [`filter_message`].
pub fn rewrite_parts(engine: &Engine, raw: &[u8]) -> Result<Filtered, FilterError> {
    check_nesting(raw)?;
    let limits = MimeLimits::default();
    let mut report = Report::default();
    let result = catch_unwind(AssertUnwindSafe(|| {
        mime::rewrite_html_parts(raw, &limits, &mut |html: &str| {
            let rewritten = engine.rewrite(html).map_err(|e| e.to_string())?;
            report.merge(rewritten.report);
            Ok(rewritten.html)
        })
    }));
    let outcome = match result {
        Err(_) => return Err(FilterError::Panic),
        Ok(Err(mime::MimeError::NoHeaders)) => {
            return Err(FilterError::NotAMessage("no header section".into()))
        }
        Ok(Err(e)) => return Err(FilterError::Rewrite(e.to_string())),
        Ok(Ok(outcome)) => outcome,
    };
    Ok(Filtered {
        message: outcome.message,
        report,
        html_parts: outcome.html_parts,
        skipped_parts: outcome.skipped_parts,
    })
}

/// Counts `message/rfc822` and `message/global` mentions (an upper bound on attached
/// messages) without parsing.
fn check_nesting(raw: &[u8]) -> Result<(), FilterError> {
    let count = |needle: &[u8]| {
        raw.windows(needle.len())
            .filter(|w| w.eq_ignore_ascii_case(needle))
            .count()
    };
    let mentions = count(b"message/rfc822") + count(b"message/global");
    if mentions > MAX_NESTED_MESSAGES {
        return Err(FilterError::TooManyMessages);
    }
    Ok(())
}
