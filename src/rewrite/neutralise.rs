//! The fail-closed fallback: an HTML part that cannot be rewritten is *neutralised*, never
//! passed on as the sender wrote it.
//!
//! A neutralised part is a short notice followed by the part's text shown as text: every
//! character that could start markup (`<`, `>`, `&`, quotes) and `+` (which starts a UTF-7
//! shift sequence) is written as a numeric character reference, and so is everything
//! outside printable ASCII. No element, attribute, comment or style of the sender's
//! survives, whatever the input, so nothing in it can load; the reader still sees the words.
//! The output is plain ASCII without `+`, so it reads the same under every charset a client
//! may apply to the part (ASCII-compatible ones and UTF-7; under UTF-16 it is inert noise).
//!
//! [`neutralise_parts`] does this to parts found by the line-anchored scanner
//! ([`crate::rewrite::scan`]), for messages the full MIME path could not handle: it decodes
//! each body as the rewrite does, the way clients do (`mime::decode_transfer`), and writes
//! the notice back in the part's own transfer encoding. Every byte outside those bodies stays as it was.
//!
//! Pure: no I/O, no logging.

use std::fmt::Write as _;
use std::ops::Range;

use base64::Engine as _;
use encoding_rs::Encoding;

use crate::rewrite::mime::{decode_transfer, first_line_ending};
use crate::rewrite::scan::{renders_as_html, ScannedPart};

/// Lines of base64 and of quoted-printable written back are at most this long (RFC 2045).
const LINE_LEN: usize = 76;

/// The inert HTML that replaces a part's `text`; `reason` says why (ASCII, one line).
pub fn neutralised_html(text: &str, reason: &str) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    out.push_str("<!DOCTYPE html>\n<html><body>\n<p><b>mailveil:</b> ");
    push_inert(&mut out, reason);
    out.push_str(" This part is shown as text; nothing in it was loaded.</p>\n<div>\n");
    push_inert(&mut out, text);
    out.push_str("\n</div>\n</body></html>\n");
    out
}

/// Appends `text` with every character that is not plain, safe ASCII written as `&#N;`
/// and its line breaks as `<br>` (ours, the only markup in the output besides the frame).
fn push_inert(out: &mut String, text: &str) {
    for c in text.chars() {
        let plain = c.is_ascii() && !c.is_ascii_control() && !"<>&\"'+=\\".contains(c);
        if plain {
            out.push(c);
        } else if c == '\n' {
            out.push_str("<br>\n");
        } else if c == '\r' {
            // The transfer encoding writes the part's own line endings.
        } else {
            let _ = write!(out, "&#{};", u32::from(c));
        }
    }
}

/// Whether the fallback must neutralise a part of this type: one a client renders as HTML,
/// and the leaves that may hide one from the line-anchored split: a multipart it could not
/// split, an attached message in a transfer encoding (clients decode it and show it inline).
pub fn may_render_html(media_type: &str) -> bool {
    renders_as_html(media_type)
        || media_type.starts_with("multipart/")
        || matches!(
            media_type,
            "message/rfc822" | "message/global" | "message/news"
        )
}

/// Replaces the body of every part in `parts` that may render as HTML
/// ([`may_render_html`]) with its neutralised form. Returns the new message and how many
/// parts were neutralised.
pub fn neutralise_parts(raw: &[u8], parts: &[ScannedPart], reason: &str) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(raw.len());
    let mut copied = 0usize;
    let mut count = 0usize;
    for part in parts.iter().filter(|p| may_render_html(&p.media_type)) {
        let Some(body) = raw.get(part.body.clone()) else {
            continue;
        };
        if part.body.start < copied {
            continue;
        }
        out.extend_from_slice(raw.get(copied..part.body.start).unwrap_or_default());
        let text = decode_text(
            &decode_transfer(&part.transfer_encoding, body),
            part.charset.as_deref(),
        );
        let inert = neutralised_html(&text, reason);
        out.extend_from_slice(&encode_body(
            &inert,
            &part.transfer_encoding,
            line_ending(raw, &part.body),
        ));
        copied = part.body.end;
        count += 1;
    }
    out.extend_from_slice(raw.get(copied..).unwrap_or_default());
    (out, count)
}

/// The text of decoded body bytes in `charset` (UTF-8 when absent or unknown), lossy.
fn decode_text(bytes: &[u8], charset: Option<&str>) -> String {
    let encoding = charset
        .and_then(|c| Encoding::for_label(c.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    let (text, _, _) = encoding.decode(bytes);
    text.into_owned()
}

/// `ascii` (the neutralised HTML) in the part's transfer encoding, lines ending in `eol`.
fn encode_body(ascii: &str, transfer_encoding: &str, eol: &str) -> Vec<u8> {
    let mut out = String::with_capacity(ascii.len() * 4 / 3 + 64);
    match transfer_encoding {
        "base64" => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(ascii.as_bytes());
            for chunk in encoded.as_bytes().chunks(LINE_LEN) {
                out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                out.push_str(eol);
            }
        }
        // The neutralised HTML has no `=` and no byte outside printable ASCII, so it is its
        // own quoted-printable form once its lines are short enough.
        "quoted-printable" => push_lines(&mut out, ascii, eol, Some(LINE_LEN - 1)),
        _ => push_lines(&mut out, ascii, eol, None),
    }
    out.into_bytes()
}

/// Appends `text`'s lines with `eol`; with `soft_wrap`, longer lines are cut with
/// quoted-printable soft breaks (`=` at the end of a line).
fn push_lines(out: &mut String, text: &str, eol: &str, soft_wrap: Option<usize>) {
    for line in text.lines() {
        let mut rest = line;
        if let Some(width) = soft_wrap {
            while rest.len() > width {
                // Never cut a `&#N;` reference: its characters are all ASCII, so any byte
                // index is a char boundary, and a reference split over a soft break is
                // joined again by the decoder.
                let (head, tail) = rest.split_at(width);
                out.push_str(head);
                out.push('=');
                out.push_str(eol);
                rest = tail;
            }
        }
        out.push_str(rest);
        out.push_str(eol);
    }
}

/// The line ending the body uses: CRLF if its first line (or the line before it) ends in
/// CRLF, else LF.
fn line_ending(raw: &[u8], body: &Range<usize>) -> &'static str {
    let start = body.start.saturating_sub(2);
    let window = raw.get(start..body.end.min(raw.len())).unwrap_or_default();
    std::str::from_utf8(first_line_ending(window)).unwrap_or("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutralised_html_keeps_no_markup_of_the_sender() {
        let hostile =
            "<img src=\"https://t.example/p.gif\"><style>@import url(//x.example)</style>\
                       +ADw-img src=//u7.example+AD4- &lt;b&gt; é ☃ \u{0}";
        let out = neutralised_html(hostile, "a limit was reached.");
        let sender_part = out.split("<div>\n").nth(1).unwrap();
        let sender_part = sender_part.trim_end_matches("\n</div>\n</body></html>\n");
        assert!(
            !sender_part.contains(['<', '>', '"', '\'', '+', '=']),
            "{sender_part}"
        );
        assert!(
            !out.contains(['=', '+', '"']),
            "no quoted-printable or UTF-7 specials: {out}"
        );
        assert!(out.is_ascii());
        assert!(sender_part.contains("img src"), "the words are kept");
        assert!(sender_part.contains("&#9731;"), "{sender_part}");
    }

    #[test]
    fn quoted_printable_output_has_short_lines_and_no_stray_equals() {
        let long = "x".repeat(200);
        let body = encode_body(&neutralised_html(&long, "r."), "quoted-printable", "\r\n");
        let text = String::from_utf8(body).unwrap();
        assert!(text.lines().all(|l| l.len() <= LINE_LEN), "{text}");
        let decoded =
            quoted_printable::decode(text.as_bytes(), quoted_printable::ParseMode::Strict).unwrap();
        assert!(String::from_utf8(decoded).unwrap().contains(&long));
    }

    #[test]
    fn base64_output_decodes_to_the_notice() {
        let body = encode_body(&neutralised_html("hi", "r."), "base64", "\n");
        let decoded = decode_transfer("base64", &body);
        assert!(String::from_utf8(decoded).unwrap().contains("<div>"));
    }
}
