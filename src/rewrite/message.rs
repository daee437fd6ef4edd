//! The message filter behind `mailveil filter`, the milter and the rewrite API:
//! one RFC 5322 message in, one message out, never lost, never left live.
//!
//! Every part a client renders as HTML is rewritten by the [`Engine`] through
//! [`crate::rewrite::mime`], and one `X-Mailveil` header is prepended. The sender writes
//! the input, so no failure may hand the message on as it came: a part the engine refuses is
//! neutralised ([`crate::rewrite::neutralise`]), and when the MIME path as a whole cannot be
//! trusted (a parser error or panic, parts it could not decode, or a part tree that differs
//! from the line-anchored split clients make, [`crate::rewrite::scan`]) every HTML part the
//! line-anchored split finds is neutralised instead. Only input with no HTML at all goes on
//! unchanged. This module does no I/O.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::rewrite::html::{Engine, Report};
use crate::rewrite::mime::{self, MimeLimits, MimeOutcome};
use crate::rewrite::neutralise::{neutralise_parts, neutralised_html};
use crate::rewrite::scan::{self, renders_as_html, ScanError, ScanLimits, ScannedPart};

/// Name of the header added to every rewritten message.
pub const HEADER_NAME: &str = "X-Mailveil";

/// The top-level fields that say how a body is read; renamed (with
/// [`ORIGINAL_FIELD_PREFIX`]) when a message whose parts cannot be found is shown as text.
pub const CONTENT_FIELDS: [&str; 2] = ["Content-Type", "Content-Transfer-Encoding"];
/// Prefix of the renamed [`CONTENT_FIELDS`], so the original structure can be recovered.
pub const ORIGINAL_FIELD_PREFIX: &str = "X-Mailveil-Original-";
/// The fields (in this order) that make a message's body plain text.
pub const PLAIN_TEXT_FIELDS: [(&str, &str); 2] = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Transfer-Encoding", "8bit"),
];

/// Attached messages nested deeper than this are not given to the MIME parser: it frees
/// nested messages recursively, and a stack overflow cannot be contained like a panic.
/// Such messages take the neutralising path, which does not recurse.
const MAX_NESTED_MESSAGES: usize = 64;

/// How far the line-anchored split follows nested containers. It does not recurse, so this
/// bounds work, not stack: deep enough for any message a person wrote (the MIME parser
/// handles 1,000 nested multiparts), shallow enough to stop a sender's pile of 10,000.
const SCAN_LIMITS: ScanLimits = ScanLimits {
    max_depth: 2_000,
    max_parts: 10_000,
};

/// Why a message goes on unchanged: it is not a message, or mailveil cannot find its parts
/// at all.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The input has no header section (empty input, binary junk): nothing renders as HTML.
    #[error("not a message: {0}")]
    NotAMessage(String),
    /// Even the line-anchored split gave up (nesting or part count past its limits).
    #[error("cannot find the parts: {0}")]
    Unsplittable(ScanError),
}

/// A rewritten message and what was done to it.
#[derive(Debug, Clone)]
pub struct Filtered {
    /// The new message bytes.
    pub message: Vec<u8>,
    /// Counts, tracker hosts and the URLs to prefetch.
    pub report: Report,
    /// HTML parts seen.
    pub html_parts: usize,
    /// Why the message's HTML was neutralised rather than rewritten, if it was.
    pub fallback: Option<String>,
}

/// Rewrites every HTML part of `raw` and adds the `X-Mailveil` header, after removing any
/// `X-Mailveil` field that came with the message (the sender's, not ours). A message whose
/// parts cannot be found is shown as plain text.
///
/// # Errors
/// [`FilterError::NotAMessage`] when `raw` has no header section: nothing in it renders,
/// and the caller passes it on.
pub fn filter_message(engine: &Engine, raw: &[u8]) -> Result<Filtered, FilterError> {
    let stripped = mime::remove_header_fields(raw, HEADER_NAME);
    let raw = stripped.as_deref().unwrap_or(raw);
    let mut filtered = match rewrite_parts(engine, raw) {
        Err(FilterError::Unsplittable(e)) => as_plain_text(raw, &e),
        other => other?,
    };
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
/// [`FilterError::NotAMessage`], and [`FilterError::Unsplittable`] when the parts cannot be
/// found: showing such a message as text changes its header section, which is the
/// caller's to do ([`filter_message`] does it; the milter asks the MTA).
pub fn rewrite_parts(engine: &Engine, raw: &[u8]) -> Result<Filtered, FilterError> {
    let parts = match scan::scan(raw, &SCAN_LIMITS) {
        Ok(parts) => parts,
        Err(ScanError::NoHeaders) => {
            return Err(FilterError::NotAMessage("no header section".into()))
        }
        Err(e) => return Err(FilterError::Unsplittable(e)),
    };
    if nested_messages(&parts) > MAX_NESTED_MESSAGES {
        let reason = format!("it nests more than {MAX_NESTED_MESSAGES} attached messages.");
        return Ok(neutralise(raw, &parts, &reason));
    }
    let mut report = Report::default();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        mime::rewrite_html_parts(raw, &MimeLimits::default(), &mut |html: &str| {
            Ok(rewrite_or_neutralise(engine, html, &mut report))
        })
    }));
    let outcome = match outcome {
        Err(_) => {
            return Ok(neutralise(
                raw,
                &parts,
                "its MIME structure broke the parser.",
            ))
        }
        Ok(Err(e)) => {
            let reason = format!("its MIME structure could not be rewritten ({e}).");
            return Ok(neutralise(raw, &parts, &reason));
        }
        Ok(Ok(outcome)) => outcome,
    };
    if outcome.skipped_parts > 0 {
        return Ok(neutralise(raw, &parts, "a part could not be decoded."));
    }
    if !same_html_parts(&outcome, raw, &parts) {
        return Ok(neutralise(
            raw,
            &parts,
            "its parts are split differently by different readers.",
        ));
    }
    Ok(Filtered {
        message: outcome.message,
        report,
        html_parts: outcome.html_parts,
        fallback: None,
    })
}

/// The engine's rewrite of one HTML document, or its neutralised form when the engine
/// refuses it (a limit reached on hostile markup).
fn rewrite_or_neutralise(engine: &Engine, html: &str, report: &mut Report) -> String {
    match engine.rewrite(html) {
        Ok(rewritten) => {
            report.merge(rewritten.report);
            rewritten.html
        }
        Err(_) => {
            report.neutralised += 1;
            neutralised_html(html, "This part could not be rewritten safely.")
        }
    }
}

/// The last resort, for a message whose parts cannot even be found: the whole body shown
/// as plain text (nothing in plain text loads), every byte of it kept. The top-level
/// `Content-Type` and `Content-Transfer-Encoding` fields are renamed, not removed, so the
/// original structure can still be recovered by hand.
fn as_plain_text(raw: &[u8], error: &ScanError) -> Filtered {
    let mut message = raw.to_vec();
    for name in CONTENT_FIELDS {
        let original = format!("{ORIGINAL_FIELD_PREFIX}{name}");
        if let Some(renamed) = mime::rename_header_fields(&message, name, &original) {
            message = renamed;
        }
    }
    for (name, value) in PLAIN_TEXT_FIELDS.iter().rev() {
        message = mime::prepend_header(&message, name, value);
    }
    Filtered {
        message,
        report: Report {
            neutralised: 1,
            ..Report::default()
        },
        html_parts: 0,
        fallback: Some(format!(
            "its parts cannot be found ({error}); shown as plain text."
        )),
    }
}

/// The fallback: every HTML part of the line-anchored split neutralised.
fn neutralise(raw: &[u8], parts: &[ScannedPart], reason: &str) -> Filtered {
    let notice = format!("This message could not be rewritten safely: {reason}");
    let (message, count) = neutralise_parts(raw, parts, &notice);
    let report = Report {
        neutralised: count,
        ..Report::default()
    };
    Filtered {
        message,
        report,
        html_parts: count,
        fallback: Some(reason.to_owned()),
    }
}

/// Attached messages among the parts' ancestors, at the deepest point: what the MIME
/// parser would recurse through.
fn nested_messages(parts: &[ScannedPart]) -> usize {
    parts.iter().map(|p| p.message_depth).max().unwrap_or(0)
}

/// Whether the MIME parser rewrote exactly the HTML parts a line-anchored split finds in
/// `raw` (bodies compared without the line breaks around them, which the two delimit
/// differently).
fn same_html_parts(outcome: &MimeOutcome, raw: &[u8], parts: &[ScannedPart]) -> bool {
    let trimmed = |range: &std::ops::Range<usize>| {
        raw.get(range.clone())
            .map(|body| body.trim_ascii())
            .unwrap_or_default()
    };
    // A multipart the split could not open may hide HTML that some reader does find.
    if parts.iter().any(|p| p.media_type.starts_with("multipart/")) {
        return false;
    }
    let mut scanned: Vec<&[u8]> = parts
        .iter()
        .filter(|p| renders_as_html(&p.media_type))
        .map(|p| trimmed(&p.body))
        .collect();
    let mut parsed: Vec<&[u8]> = outcome.html_bodies.iter().map(trimmed).collect();
    // The parser lists the parts of attached messages after its own; the scan, in document
    // order. The same parts, in any order, agree.
    scanned.sort_unstable();
    parsed.sort_unstable();
    scanned == parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::trackers::{TrackerMode, TrackerRules};
    use crate::sign::{Key, Signer};

    fn engine() -> Engine {
        let base = url::Url::parse("http://127.0.0.1:8700").unwrap();
        let signer = Signer::new(&base, Key::from_bytes([1; 32]), vec![]);
        Engine::new(signer, TrackerRules::builtin(), TrackerMode::Block)
    }

    #[test]
    fn html_in_and_after_an_attached_message_is_rewritten_not_neutralised() {
        // The parser lists the attached message's parts after the outer ones; the scan in
        // document order. Same parts: they agree.
        let raw = "From: a@b.example\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n\
                   --x\r\nContent-Type: message/rfc822\r\n\r\n\
                   From: c@d.example\r\nContent-Type: text/html\r\n\r\n\
                   <img src=\"https://inner.example/a.png\">\r\n\
                   --x\r\nContent-Type: text/html\r\n\r\n<img src=\"https://outer.example/b.png\">\r\n\
                   --x--\r\n";
        let out = filter_message(&engine(), raw.as_bytes()).unwrap();
        assert_eq!(out.fallback, None);
        assert_eq!((out.report.proxied, out.report.neutralised), (2, 0));
        let text = String::from_utf8(out.message).unwrap();
        assert!(!text.contains("inner.example") && !text.contains("outer.example"));
    }

    #[test]
    fn a_message_without_html_goes_on_as_it_came() {
        let raw = b"From: a@b.example\r\nSubject: hi\r\n\r\nplain text\r\n";
        let out = filter_message(&engine(), raw).unwrap();
        assert_eq!(out.fallback, None);
        let expected = mime::prepend_header(raw, HEADER_NAME, "proxied=0; trackers=0; removed=0");
        assert_eq!(out.message, expected);
    }
}
