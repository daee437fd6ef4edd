//! MIME handling for mailveil: locates every `text/html` part of a message,
//! decodes it (transfer encoding and charset), hands the HTML text to a
//! callback, re-encodes the result with the part's own transfer encoding and
//! charset, and splices it over the original body bytes.
//!
//! The overriding rule is that a message is never lost or corrupted: apart
//! from the bodies of `text/html` parts whose text the callback changed, the
//! output is byte-identical to the input (headers, other parts, boundaries,
//! preamble, epilogue and line endings). Parts that cannot be decoded
//! faithfully are left untouched and counted in [`MimeOutcome::skipped_parts`].
//!
//! This module owns no I/O and does no logging.

use std::borrow::Cow;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use encoding_rs::{Encoding, UTF_16BE, UTF_16LE, UTF_8, WINDOWS_1252, X_USER_DEFINED};
use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};

/// Bounds on the work done for one message.
#[derive(Debug, Clone)]
pub struct MimeLimits {
    /// Nested `message/rfc822` that is itself transfer-encoded (base64/QP) is
    /// parsed recursively at most this deep.
    pub max_encoded_depth: usize,
    /// Maximum number of HTML parts rewritten in one message (more → error).
    pub max_html_parts: usize,
}

impl Default for MimeLimits {
    /// `max_encoded_depth = 3`, `max_html_parts = 256`.
    fn default() -> Self {
        MimeLimits {
            max_encoded_depth: 3,
            max_html_parts: 256,
        }
    }
}

/// Result of [`rewrite_html_parts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimeOutcome {
    /// The new message bytes; equal to the input if no part changed.
    pub message: Vec<u8>,
    /// Number of `text/html` parts seen, at any depth (rewritten or not).
    pub html_parts: usize,
    /// Number of parts left untouched because they could not be handled
    /// faithfully: HTML parts with an unknown or undecodable transfer
    /// encoding or whose rewrite would have introduced a MIME boundary, and
    /// encoded nested messages that were undecodable, unparsable or deeper
    /// than [`MimeLimits::max_encoded_depth`].
    pub skipped_parts: usize,
    /// Body ranges of the HTML parts found in `raw` itself (not inside an encoded attached
    /// message), as mail-parser delimits them: what the caller checks against a
    /// line-anchored scan.
    pub html_bodies: Vec<std::ops::Range<usize>>,
}

/// Errors of [`rewrite_html_parts`]; on any error the caller neutralises the message's HTML
/// (see `rewrite::message`), never passes it on as it came.
#[derive(Debug, thiserror::Error)]
pub enum MimeError {
    /// No RFC 5322 header section could be found.
    #[error("no header section found")]
    NoHeaders,
    /// The HTML callback failed for one part.
    #[error("html rewrite failed: {0}")]
    Html(String),
    /// More HTML parts than [`MimeLimits::max_html_parts`] (the count reached).
    #[error("too many html parts: {0}")]
    TooManyParts(usize),
    /// The message is larger than the parser's 32-bit offsets can address.
    #[error("message too large: {0} bytes")]
    TooLarge(usize),
    /// The parser reported part offsets that are out of range or overlap.
    #[error("inconsistent part offsets")]
    BadOffsets,
    /// The rewritten message no longer parses into the same MIME structure.
    #[error("rewritten message changed mime structure")]
    StructureChanged,
}

/// Rewrites every text/html part of `raw` (at any depth, including inside
/// attached message/rfc822 messages, whether those are inline or themselves
/// base64/QP encoded) by decoding its body (transfer encoding:
/// 7bit/8bit/binary/quoted-printable/base64; charset via encoding_rs),
/// calling `rewrite_html` with the decoded HTML text, then re-encoding the
/// result with the SAME transfer encoding and the SAME charset, and splicing
/// it over the original body bytes.
///
/// Returns the new message bytes (equal to `raw` if no part changed), the
/// number of HTML parts seen and the number of parts skipped (see
/// [`MimeOutcome`]). A part whose callback result equals its input is not
/// touched at all, and empty HTML bodies are not passed to the callback.
///
/// # Errors
/// See [`MimeError`]; on error the caller neutralises the message's HTML.
pub fn rewrite_html_parts(
    raw: &[u8],
    limits: &MimeLimits,
    rewrite_html: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<MimeOutcome, MimeError> {
    let mut walker = Walker {
        limits,
        rewrite_html,
        html_parts: 0,
        skipped_parts: 0,
        html_bodies: Vec::new(),
    };
    let message = walker.rewrite_message(raw, 0, &[])?;
    Ok(MimeOutcome {
        message,
        html_parts: walker.html_parts,
        skipped_parts: walker.skipped_parts,
        html_bodies: walker.html_bodies,
    })
}

/// Returns `raw` with one header field `name: value` added at the very top of
/// the header section, using the message's own line ending (CRLF if its first
/// line ends in CRLF, else LF).
///
/// An mbox postmark line (`From sender date`, as procmail delivers it) is not
/// part of the header section, so the field goes right after it. `value` must
/// be a single line (caller guarantees; checked by `debug_assert`); in release
/// builds stray CR/LF are replaced by spaces so a header can never be injected.
pub fn prepend_header(raw: &[u8], name: &str, value: &str) -> Vec<u8> {
    debug_assert!(
        !value.contains(['\r', '\n']),
        "header value must be one line"
    );
    debug_assert!(
        !name.contains([':', ' ', '\t', '\r', '\n']),
        "bad header name"
    );
    let eol = first_line_ending(raw);
    let insert_at = if raw.starts_with(b"From ") {
        raw.iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| i + 1)
    } else {
        0
    };
    let (before, after) = raw.split_at(insert_at.min(raw.len()));
    let value = value.replace(['\r', '\n'], " ");
    let mut out = Vec::with_capacity(raw.len() + name.len() + value.len() + 4);
    out.extend_from_slice(before);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(eol);
    out.extend_from_slice(after);
    out
}

/// Returns `raw` without the top-level header fields called `name` (any case), folded
/// continuation lines included; every other byte stays as it was. `None` when there is
/// none. The header section ends at the first empty line; an mbox postmark line (`From `)
/// before it is not a field.
pub fn remove_header_fields(raw: &[u8], name: &str) -> Option<Vec<u8>> {
    edit_header_fields(raw, name, None)
}

/// Returns `raw` with the top-level header fields called `name` renamed to `new_name`, their
/// values and folding as they were. `None` when there is none.
pub fn rename_header_fields(raw: &[u8], name: &str, new_name: &str) -> Option<Vec<u8>> {
    edit_header_fields(raw, name, Some(new_name))
}

/// Removes (`rename` = `None`) or renames the top-level fields called `name`.
fn edit_header_fields(raw: &[u8], name: &str, rename: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut edited = false;
    let mut keep = true;
    let mut at = 0usize;
    while at < raw.len() {
        let end = memchr::memchr(b'\n', raw.get(at..).unwrap_or_default())
            .map_or(raw.len(), |i| at + i + 1);
        let mut line = raw.get(at..end).unwrap_or_default();
        if line == b"\n" || line == b"\r\n" {
            break;
        }
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            let postmark = at == 0 && line.starts_with(b"From ");
            let matched = !postmark && is_field(line, name);
            edited |= matched;
            keep = !matched || rename.is_some();
            if let (true, Some(new_name)) = (matched, rename) {
                out.extend_from_slice(new_name.as_bytes());
                line = line.get(name.len()..).unwrap_or_default();
            }
        }
        if keep {
            out.extend_from_slice(line);
        }
        at = end;
    }
    if !edited {
        return None;
    }
    out.extend_from_slice(raw.get(at..).unwrap_or_default());
    Some(out)
}

/// Whether the header line starts the field `name`.
fn is_field(line: &[u8], name: &str) -> bool {
    let Some(colon) = memchr::memchr(b':', line) else {
        return false;
    };
    let field = line.get(..colon).unwrap_or_default();
    let field = field.trim_ascii_end();
    field.eq_ignore_ascii_case(name.as_bytes())
}

/// CRLF if the first line of `raw` ends in CRLF, else LF.
pub(crate) fn first_line_ending(raw: &[u8]) -> &'static [u8] {
    match raw.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && raw.get(i - 1) == Some(&b'\r') => b"\r\n",
        _ => b"\n",
    }
}

/// Body transfer encoding as declared by `Content-Transfer-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    /// 7bit, 8bit, binary or absent: the body is the charset-encoded text.
    Identity,
    /// quoted-printable.
    QuotedPrintable,
    /// base64.
    Base64,
}

/// What a leaf part is to us.
enum PartKind {
    /// A part a client renders as HTML (`text/html` and its kin).
    Html,
    /// A `message/rfc822` (or `message/global`) part that is base64/QP encoded.
    EncodedMessage(Transfer),
    /// Anything else: never touched.
    Other,
}

/// One replacement of `raw[start..end]`.
struct Edit {
    start: usize,
    end: usize,
    bytes: Vec<u8>,
}

/// Per-call state shared across recursion into encoded nested messages.
struct Walker<'a> {
    limits: &'a MimeLimits,
    rewrite_html: &'a mut dyn FnMut(&str) -> Result<String, String>,
    html_parts: usize,
    skipped_parts: usize,
    html_bodies: Vec<std::ops::Range<usize>>,
}

impl Walker<'_> {
    /// Rewrites one (possibly nested) message; `outer` holds the `--boundary`
    /// markers of all enclosing messages, which new bodies must not contain.
    fn rewrite_message(
        &mut self,
        raw: &[u8],
        depth: usize,
        outer: &[Vec<u8>],
    ) -> Result<Vec<u8>, MimeError> {
        if u32::try_from(raw.len()).is_err() {
            return Err(MimeError::TooLarge(raw.len()));
        }
        let message = MessageParser::default()
            .parse(raw)
            .ok_or(MimeError::NoHeaders)?;
        let tree = walk_tree(&message);
        let mut markers = outer.to_vec();
        markers.extend(tree.markers);
        let mut edits = Vec::new();
        for part in tree.leaves {
            let edit = match classify(part) {
                PartKind::Html => {
                    if depth == 0 {
                        let (start, end) = body_span(raw, part)?;
                        self.html_bodies.push(start..end);
                    }
                    self.html_edit(raw, part, &markers)?
                }
                PartKind::EncodedMessage(transfer) => {
                    self.nested_edit(raw, part, transfer, depth, &markers)?
                }
                PartKind::Other => None,
            };
            edits.extend(edit);
        }
        if edits.is_empty() {
            return Ok(raw.to_vec());
        }
        let before = structure_fingerprint(raw, &tree.headers);
        drop(message);
        let out = splice(raw, edits)?;
        verify_structure(&out, &before)?;
        Ok(out)
    }

    /// Builds the edit for one `text/html` part, if its text changed.
    fn html_edit(
        &mut self,
        raw: &[u8],
        part: &MessagePart<'_>,
        markers: &[Vec<u8>],
    ) -> Result<Option<Edit>, MimeError> {
        self.html_parts += 1;
        if self.html_parts > self.limits.max_html_parts {
            return Err(MimeError::TooManyParts(self.html_parts));
        }
        let (start, end) = body_span(raw, part)?;
        let body = raw.get(start..end).ok_or(MimeError::BadOffsets)?;
        if body.is_empty() {
            // Nothing to rewrite, and inserting text would glue it to the boundary.
            return Ok(None);
        }
        let transfer = transfer_of(part);
        let decoded = transfer_decode(transfer, body);
        let Some((text, charset)) = decode_text(charset_label(part), &decoded) else {
            return Ok(self.skip());
        };
        let new_text = (self.rewrite_html)(&text).map_err(MimeError::Html)?;
        if new_text == text {
            return Ok(None);
        }
        let eol = part_line_ending(raw, part);
        let new_body = transfer_encode(transfer, &encode_text(charset, &new_text), body, eol);
        Ok(self.checked_edit(start, end, new_body, markers))
    }

    /// Builds the edit for a base64/QP encoded nested message, by decoding it
    /// and rewriting it recursively.
    fn nested_edit(
        &mut self,
        raw: &[u8],
        part: &MessagePart<'_>,
        transfer: Transfer,
        depth: usize,
        markers: &[Vec<u8>],
    ) -> Result<Option<Edit>, MimeError> {
        if depth >= self.limits.max_encoded_depth {
            return Ok(self.skip());
        }
        let (start, end) = body_span(raw, part)?;
        let body = raw.get(start..end).ok_or(MimeError::BadOffsets)?;
        let decoded = transfer_decode(transfer, body);
        let inner = match self.rewrite_message(&decoded, depth + 1, markers) {
            Ok(inner) => inner,
            // An attachment that is not a message is not our business.
            Err(MimeError::NoHeaders) => return Ok(self.skip()),
            Err(e) => return Err(e),
        };
        if inner == decoded {
            return Ok(None);
        }
        let eol = part_line_ending(raw, part);
        let new_body = transfer_encode(transfer, &inner, body, eol);
        Ok(self.checked_edit(start, end, new_body, markers))
    }

    /// Returns the edit unless the new body contains a boundary marker of an
    /// enclosing multipart (which would split the part); then it is skipped.
    fn checked_edit(
        &mut self,
        start: usize,
        end: usize,
        bytes: Vec<u8>,
        markers: &[Vec<u8>],
    ) -> Option<Edit> {
        if contains_marker(&bytes, markers) {
            return self.skip();
        }
        Some(Edit { start, end, bytes })
    }

    /// Counts a part left untouched.
    fn skip(&mut self) -> Option<Edit> {
        self.skipped_parts += 1;
        None
    }
}

/// Parts of a parsed message, flattened across inline nested messages.
struct Tree<'m, 'x> {
    /// Parts that carry a body (not multipart containers, not inline messages).
    leaves: Vec<&'m MessagePart<'x>>,
    /// `--boundary` markers of every multipart in the tree.
    markers: Vec<Vec<u8>>,
    /// Header-section spans of every part, in a deterministic order.
    headers: Vec<(usize, usize)>,
}

/// Walks the part tree iteratively (deep nesting must not use the call stack).
///
/// Inline (not transfer-encoded) nested messages have offsets relative to the
/// outer raw bytes, so their parts are walked as if they were our own.
fn walk_tree<'m, 'x>(message: &'m Message<'x>) -> Tree<'m, 'x> {
    let mut tree = Tree {
        leaves: Vec::new(),
        markers: Vec::new(),
        headers: Vec::new(),
    };
    let mut stack = vec![message];
    while let Some(msg) = stack.pop() {
        for part in &msg.parts {
            tree.headers
                .push((part.offset_header as usize, part.offset_body as usize));
            if let Some(boundary) = multipart_boundary(part) {
                tree.markers.push([b"--", boundary.as_bytes()].concat());
            }
            match &part.body {
                PartType::Message(nested) if part.encoding == mail_parser::Encoding::None => {
                    stack.push(nested);
                }
                PartType::Multipart(_) => {}
                _ => tree.leaves.push(part),
            }
        }
    }
    tree
}

/// The boundary parameter of a `multipart/*` part.
fn multipart_boundary<'p>(part: &'p MessagePart<'_>) -> Option<&'p str> {
    let ct = part.content_type()?;
    if !ct.ctype().eq_ignore_ascii_case("multipart") {
        return None;
    }
    ct.attribute("boundary").filter(|b| !b.is_empty())
}

/// Classifies a leaf part from its own headers (not from mail-parser's
/// `PartType`, which is downgraded on encoding problems).
fn classify(part: &MessagePart<'_>) -> PartKind {
    let ct = part.content_type();
    let is_type = |t: &str, subs: &[&str]| {
        ct.is_some_and(|c| {
            c.ctype().eq_ignore_ascii_case(t)
                && c.subtype()
                    .is_some_and(|s| subs.iter().any(|x| s.eq_ignore_ascii_case(x)))
        })
    };
    // Every type a mail client renders as HTML: Apple Watch's and AMP's alternatives too.
    if is_type(
        "text",
        &["html", "watch-html", "x-watch-html", "x-amp-html"],
    ) || is_type("application", &["xhtml+xml"])
    {
        return PartKind::Html;
    }
    let is_message =
        matches!(part.body, PartType::Message(_)) || is_type("message", &["rfc822", "global"]);
    match transfer_of(part) {
        t @ (Transfer::Base64 | Transfer::QuotedPrintable) if is_message => {
            PartKind::EncodedMessage(t)
        }
        _ => PartKind::Other,
    }
}

/// The transfer encoding of a part.
fn transfer_of(part: &MessagePart<'_>) -> Transfer {
    Transfer::from_name(part.content_transfer_encoding().unwrap_or_default())
}

impl Transfer {
    /// The encoding a `Content-Transfer-Encoding` value names, read as clients read it.
    fn from_name(cte: &str) -> Self {
        let cte = cte.trim();
        if cte.eq_ignore_ascii_case("base64") {
            Transfer::Base64
        } else if cte.eq_ignore_ascii_case("quoted-printable") {
            Transfer::QuotedPrintable
        } else {
            // 7bit, 8bit, binary, none, and every made-up value (`8bit+`, `Hexa`,
            // `x-uuencode`): clients show the bytes as they are, so that is what is read.
            Transfer::Identity
        }
    }
}

/// A body's bytes after the transfer decoding clients apply for the
/// `Content-Transfer-Encoding` value `cte` (the neutralising fallback reads bodies so too).
pub(crate) fn decode_transfer(cte: &str, body: &[u8]) -> Vec<u8> {
    transfer_decode(Transfer::from_name(cte), body)
}

/// The `charset` parameter of a part's Content-Type, if present.
fn charset_label<'p>(part: &'p MessagePart<'_>) -> Option<&'p str> {
    part.content_type()?.attribute("charset")
}

/// The body byte range of a part, checked against `raw`.
///
/// mail-parser's `offset_end` stops before the line break that precedes the
/// next boundary (that line break belongs to the boundary), so replacing
/// exactly this range keeps boundaries and their line breaks intact.
fn body_span(raw: &[u8], part: &MessagePart<'_>) -> Result<(usize, usize), MimeError> {
    let (start, end) = (part.offset_body as usize, part.offset_end as usize);
    if start > end || end > raw.len() {
        return Err(MimeError::BadOffsets);
    }
    Ok((start, end))
}

/// The line ending used by a part: from its body if it has a line break,
/// else from its header section, else CRLF (the RFC 5322 default).
fn part_line_ending(raw: &[u8], part: &MessagePart<'_>) -> &'static [u8] {
    let from = part.offset_header as usize;
    let to = (part.offset_end as usize).min(raw.len());
    let body_first = (part.offset_body as usize).min(to);
    for start in [body_first, from.min(to)] {
        let Some(window) = raw.get(start..to) else {
            continue;
        };
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            let cr = i > 0 && window.get(i - 1) == Some(&b'\r');
            return if cr { b"\r\n" } else { b"\n" };
        }
    }
    b"\r\n"
}

/// Removes the transfer encoding, leniently, as clients do: every body decodes.
fn transfer_decode(transfer: Transfer, body: &[u8]) -> Vec<u8> {
    match transfer {
        Transfer::Identity => body.to_vec(),
        Transfer::Base64 => decode_base64(body),
        Transfer::QuotedPrintable => decode_qp(body),
    }
}

/// Applies the transfer encoding to `data`, shaped like the original `body`.
fn transfer_encode(transfer: Transfer, data: &[u8], body: &[u8], eol: &[u8]) -> Vec<u8> {
    match transfer {
        Transfer::Identity => data.to_vec(),
        Transfer::Base64 => encode_base64(data, body, eol),
        Transfer::QuotedPrintable => encode_qp(data, eol),
    }
}

/// Base64 engine for the cleaned-up alphabet run: no padding, and the non-zero trailing
/// bits found in real mail tolerated.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Decodes base64 as RFC 2045 §6.8 tells decoders (and as clients do): characters
/// outside the alphabet (line breaks, stray junk) are ignored, decoding stops at the
/// padding, and a dangling sixth of a byte is dropped.
fn decode_base64(body: &[u8]) -> Vec<u8> {
    let mut clean: Vec<u8> = body
        .iter()
        .copied()
        .take_while(|&b| b != b'=')
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    LENIENT_BASE64.decode(&clean).unwrap_or_default()
}

/// Encodes base64 with the original's line width, line ending and leading
/// and trailing whitespace (so the bytes up to the boundary keep their shape).
fn encode_base64(data: &[u8], original: &[u8], eol: &[u8]) -> Vec<u8> {
    let (lead, core, trail) = split_whitespace(original);
    let width = base64_line_width(core);
    let encoded = STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / width * eol.len() + 8);
    out.extend_from_slice(lead);
    for (i, line) in encoded.as_bytes().chunks(width).enumerate() {
        if i > 0 {
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(trail);
    out
}

/// Width of the original's first line if it is a plausible base64 line
/// width (a multiple of 4 up to 76), else 76.
fn base64_line_width(core: &[u8]) -> usize {
    match core.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(w) if w > 0 && w % 4 == 0 && w <= 76 => w,
        _ => 76,
    }
}

/// Splits `bytes` into leading whitespace, the rest, and trailing whitespace.
fn split_whitespace(bytes: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    (
        bytes.get(..start).unwrap_or_default(),
        bytes.get(start..end).unwrap_or_default(),
        bytes.get(end..).unwrap_or_default(),
    )
}

/// Decodes quoted-printable robustly (RFC 2045 6.7): `=XX` (any case) becomes
/// a byte, `=` at line end is a soft break, trailing blanks are dropped, hard
/// line breaks become CRLF, and anything else (stray `=`, raw 8-bit bytes)
/// is kept as is. Unlike `quoted_printable::decode`, raw 8-bit bytes
/// are not dropped, so rewriting never loses text.
fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let terminated = lines.peek().is_some();
        let line = if terminated {
            line.strip_suffix(b"\r").unwrap_or(line)
        } else {
            line
        };
        let line = trim_blanks_end(line);
        match line.strip_suffix(b"=") {
            Some(soft) => decode_qp_line(soft, &mut out),
            None => {
                decode_qp_line(line, &mut out);
                if terminated {
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }
    out
}

/// Decodes the `=XX` escapes of one quoted-printable line into `out`.
fn decode_qp_line(line: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(&b) = line.get(i) {
        let hex = (b == b'=')
            .then(|| Some((hex_value(*line.get(i + 1)?)?, hex_value(*line.get(i + 2)?)?)))
            .flatten();
        match hex {
            Some((hi, lo)) => {
                out.push((hi << 4) | lo);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
}

/// Value of one hex digit.
fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `line` without trailing spaces and tabs.
fn trim_blanks_end(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    line.get(..end).unwrap_or_default()
}

/// Encodes quoted-printable in text mode, so CRLF pairs stay hard line
/// breaks, then converts the encoder's CRLFs to the part's line ending (the
/// encoder escapes every other CR, so each CR it emits starts a CRLF).
fn encode_qp(data: &[u8], eol: &[u8]) -> Vec<u8> {
    let encoded = quoted_printable::encode(data);
    if eol == b"\r\n" {
        return encoded;
    }
    encoded.into_iter().filter(|&b| b != b'\r').collect()
}

/// Picks the charset for a body: the declared one if encoding_rs knows it,
/// x-user-defined for bogus names (it maps every byte to a distinct
/// character and back, keeping ASCII markup readable), and for a missing
/// one UTF-8 if valid, else windows-1252.
fn pick_charset(label: Option<&str>, bytes: &[u8]) -> Option<&'static Encoding> {
    match label.map(str::trim).filter(|l| !l.is_empty()) {
        // A charset a client may decode into markup that is not in the bytes as ASCII
        // (UTF-7's `+ADw-`, UTF-32): the part cannot be rewritten, its message is
        // neutralised.
        Some(label) if hides_markup(label) => None,
        // Other unknown labels (`unknown-8bit`, typos) are read byte by byte, as clients
        // fall back to an ASCII-compatible default for them.
        Some(label) => {
            Some(Encoding::for_label_no_replacement(label.as_bytes()).unwrap_or(X_USER_DEFINED))
        }
        None if std::str::from_utf8(bytes).is_ok() => Some(UTF_8),
        None => Some(WINDOWS_1252),
    }
}

/// Whether a charset label names a family that spells markup in bytes other than ASCII's
/// and that the rewrite does not read: UTF-7, UTF-32, UCS-2/UCS-4 and ISO-10646 names,
/// however written. (encoding_rs would take some UCS-2 names for UTF-16; they are still
/// left to the neutralising path.)
fn hides_markup(label: &str) -> bool {
    let label = label.to_ascii_lowercase().replace(['-', '_'], "");
    ["utf7", "utf32", "ucs2", "ucs4", "10646"]
        .iter()
        .any(|bad| label.contains(bad))
}

/// Decodes `bytes` to text with a charset that round-trips exactly: the
/// picked one if encoding the decoded text gives back the same bytes, else
/// x-user-defined. `None` only if even that fails (it should not).
fn decode_text(label: Option<&str>, bytes: &[u8]) -> Option<(String, &'static Encoding)> {
    let picked = pick_charset(label, bytes)?;
    // Bytes that are not valid in the declared charset are read one byte per character
    // (x-user-defined): a client decoding an ASCII-compatible charset sees the same markup.
    // Not for UTF-16, whose markup is two bytes a character: broken UTF-16 (an odd length)
    // read byte by byte would hide a `<` the client still decodes.
    let fallback = (picked != UTF_16LE && picked != UTF_16BE).then_some(X_USER_DEFINED);
    std::iter::once(picked).chain(fallback).find_map(|charset| {
        let text = charset.decode_without_bom_handling_and_without_replacement(bytes)?;
        (encode_text(charset, &text) == bytes).then(|| (text.into_owned(), charset))
    })
}

/// Encodes text in `charset`. UTF-16 is done by hand because encoding_rs
/// (following WHATWG) encodes UTF-16 as UTF-8. Characters the charset cannot
/// represent become HTML numeric character references.
fn encode_text(charset: &'static Encoding, text: &str) -> Vec<u8> {
    if charset == UTF_16LE {
        return text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    }
    if charset == UTF_16BE {
        return text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    }
    match charset.encode(text).0 {
        Cow::Borrowed(b) => b.to_vec(),
        Cow::Owned(b) => b,
    }
}

/// Whether any `--boundary` marker occurs in `haystack`. Markers all start
/// with `--`, which is rare in HTML, so only those positions are checked
/// (many nested multiparts times a large part stays cheap).
fn contains_marker(haystack: &[u8], markers: &[Vec<u8>]) -> bool {
    haystack
        .windows(2)
        .enumerate()
        .filter(|(_, w)| *w == b"--")
        .any(|(i, _)| {
            let rest = haystack.get(i..).unwrap_or_default();
            markers.iter().any(|m| rest.starts_with(m))
        })
}

/// Applies non-overlapping edits to `raw` in one pass.
fn splice(raw: &[u8], mut edits: Vec<Edit>) -> Result<Vec<u8>, MimeError> {
    edits.sort_by_key(|e| e.start);
    let grow: usize = edits.iter().map(|e| e.bytes.len()).sum();
    let mut out = Vec::with_capacity(raw.len().saturating_add(grow));
    let mut pos = 0;
    for edit in edits {
        if edit.start < pos || edit.end < edit.start {
            return Err(MimeError::BadOffsets);
        }
        out.extend_from_slice(raw.get(pos..edit.start).ok_or(MimeError::BadOffsets)?);
        out.extend_from_slice(&edit.bytes);
        pos = edit.end;
    }
    out.extend_from_slice(raw.get(pos..).ok_or(MimeError::BadOffsets)?);
    Ok(out)
}

/// The header sections of all parts, in walk order: a cheap fingerprint of
/// the MIME structure that body rewrites must not change.
fn structure_fingerprint(raw: &[u8], headers: &[(usize, usize)]) -> Vec<Vec<u8>> {
    headers
        .iter()
        .map(|&(s, e)| raw.get(s..e).unwrap_or_default().to_vec())
        .collect()
}

/// Re-parses the output and checks that its structure fingerprint is
/// unchanged, as a last guard against a rewrite that splits or merges parts.
fn verify_structure(out: &[u8], before: &[Vec<u8>]) -> Result<(), MimeError> {
    let message = MessageParser::default()
        .parse(out)
        .ok_or(MimeError::StructureChanged)?;
    let tree = walk_tree(&message);
    if structure_fingerprint(out, &tree.headers) == before {
        Ok(())
    } else {
        Err(MimeError::StructureChanged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MARK: &str = "<!--mv-->";

    fn limits() -> MimeLimits {
        MimeLimits::default()
    }

    /// Callback that appends a marker.
    fn mark(s: &str) -> Result<String, String> {
        Ok(format!("{s}{MARK}"))
    }

    fn run(raw: &[u8]) -> Result<MimeOutcome, MimeError> {
        rewrite_html_parts(raw, &limits(), &mut mark)
    }

    /// Spans of the bodies of all text/html parts (top level and inline nested).
    fn html_spans(raw: &[u8]) -> Vec<(usize, usize)> {
        let Some(msg) = MessageParser::default().parse(raw) else {
            return Vec::new();
        };
        let mut spans: Vec<_> = walk_tree(&msg)
            .leaves
            .into_iter()
            .filter(|p| matches!(classify(p), PartKind::Html))
            .map(|p| (p.offset_body as usize, p.offset_end as usize))
            .collect();
        spans.sort_unstable();
        spans
    }

    /// `raw` without its HTML bodies: everything that must stay identical.
    fn skeleton(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        for (s, e) in html_spans(raw) {
            out.extend_from_slice(&raw[pos..s]);
            out.extend_from_slice(b"|");
            pos = e;
        }
        out.extend_from_slice(&raw[pos..]);
        out
    }

    /// Decoded texts of all HTML parts (top level and inline nested).
    fn html_texts(raw: &[u8]) -> Vec<String> {
        let msg = MessageParser::default().parse(raw).expect("parses");
        let mut parts: Vec<_> = walk_tree(&msg)
            .leaves
            .into_iter()
            .filter(|p| matches!(classify(p), PartKind::Html))
            .collect();
        parts.sort_by_key(|p| p.offset_body);
        parts
            .into_iter()
            .map(|p| {
                let body = &raw[p.offset_body as usize..p.offset_end as usize];
                let bytes = transfer_decode(transfer_of(p), body);
                decode_text(charset_label(p), &bytes).unwrap().0
            })
            .collect()
    }

    /// Asserts the rewrite changed only HTML bodies and each gained the marker.
    fn assert_only_html_marked(raw: &[u8], out: &[u8]) {
        assert_eq!(skeleton(raw), skeleton(out), "non-html bytes changed");
        let before = html_texts(raw);
        let after = html_texts(out);
        assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            if !b.is_empty() {
                assert_eq!(format!("{b}{MARK}"), *a);
            }
        }
    }

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/mime/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).expect("fixture")
    }

    const ALT: &str = "From: a@example.com
To: b@example.com
Subject: alt
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary=\"BOUND\"

preamble text
--BOUND
Content-Type: text/plain; charset=utf-8

plain <img src=\"http://x/y.png\">
--BOUND
Content-Type: text/html; charset=utf-8

<html><body>caf\u{e9} <img src=\"http://x/y.png\"></body></html>
--BOUND--
epilogue
";

    #[test]
    fn lf_and_crlf_multipart() {
        for raw in [ALT.as_bytes().to_vec(), crlf(ALT)] {
            let out = run(&raw).unwrap();
            assert_eq!(out.html_parts, 1);
            assert_eq!(out.skipped_parts, 0);
            let expected = String::from_utf8(raw.clone())
                .unwrap()
                .replace("</html>", &format!("</html>{MARK}"));
            assert_eq!(out.message, expected.as_bytes());
            assert_only_html_marked(&raw, &out.message);
        }
    }

    #[test]
    fn unchanged_text_means_identical_bytes() {
        let raw = crlf(ALT);
        let out = rewrite_html_parts(&raw, &limits(), &mut |s| Ok(s.to_string())).unwrap();
        assert_eq!(out.message, raw);
        assert_eq!(out.html_parts, 1);
    }

    #[test]
    fn callback_error_and_too_many_parts() {
        let raw = crlf(ALT);
        let err = rewrite_html_parts(&raw, &limits(), &mut |_| Err("boom".into())).unwrap_err();
        assert!(matches!(err, MimeError::Html(ref m) if m == "boom"));
        assert_eq!(err.to_string(), "html rewrite failed: boom");
        let tight = MimeLimits {
            max_html_parts: 0,
            ..limits()
        };
        let err = rewrite_html_parts(&raw, &tight, &mut mark).unwrap_err();
        assert!(matches!(err, MimeError::TooManyParts(1)));
    }

    #[test]
    fn empty_junk_and_header_only() {
        assert!(matches!(run(b""), Err(MimeError::NoHeaders)));
        assert_eq!(MimeError::NoHeaders.to_string(), "no header section found");
        let mut junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        junk.extend_from_slice(b"\xff\xfe\x00\r\n\r\n--x--");
        if let Ok(out) = run(&junk) {
            assert_eq!(out.message, junk);
        }
        for raw in [
            &b"Subject: x\r\n"[..],
            b"Subject: x\r\n\r\n",
            b"Subject: x",
            b"\r\n\r\n",
        ] {
            if let Ok(out) = run(raw) {
                assert_eq!(out.message, raw);
            }
        }
        // Header-only message that says text/html: empty body, nothing to do.
        let raw = b"Content-Type: text/html\r\n\r\n";
        let out = run(raw).unwrap();
        assert_eq!((out.message.as_slice(), out.html_parts), (&raw[..], 1));
    }

    #[test]
    fn single_part_html_message() {
        let raw = b"Subject: s\nContent-Type: TEXT/HTML\n\n<p>hi</p>\n";
        let out = run(raw).unwrap();
        assert_eq!(
            out.message,
            b"Subject: s\nContent-Type: TEXT/HTML\n\n<p>hi</p>\n<!--mv-->"
        );
    }

    #[test]
    fn every_truncation_is_safe() {
        for raw in [crlf(ALT), fixture("mixed.eml")] {
            for cut in 0..raw.len() {
                let prefix = &raw[..cut];
                if let Ok(out) = run(prefix) {
                    let stripped = String::from_utf8_lossy(&out.message).replace(MARK, "");
                    if out.skipped_parts == 0 && !prefix.windows(4).any(|w| w == b"\nCon") {
                        // Nothing but the marker may differ for identity parts.
                        assert_eq!(stripped.as_bytes(), prefix, "cut at {cut}");
                    }
                    assert_eq!(skeleton(prefix), skeleton(&out.message), "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn missing_final_boundary() {
        let raw = crlf(&ALT.replace("--BOUND--\nepilogue\n", ""));
        let out = run(&raw).unwrap();
        assert_eq!(out.html_parts, 1);
        assert_only_html_marked(&raw, &out.message);
    }

    #[test]
    fn base64_and_qp_parts_keep_shape() {
        let raw = fixture("mixed.eml");
        let out = run(&raw).unwrap();
        assert_eq!(out.html_parts, 3);
        assert_eq!(out.skipped_parts, 0);
        assert_only_html_marked(&raw, &out.message);
        // base64 lines keep the original 64-column width and CRLF.
        let text = String::from_utf8(out.message.clone()).unwrap();
        let b64 = text
            .split("--MIX\r\n")
            .find(|p| p.contains("base64") && p.contains("text/html"))
            .unwrap();
        let body = b64.split("\r\n\r\n").nth(1).unwrap();
        let lines: Vec<_> = body.trim_end().split("\r\n").collect();
        assert!(lines.len() > 1 && lines[..lines.len() - 1].iter().all(|l| l.len() == 64));
        // QP keeps hard line breaks as CRLF, never =0D=0A.
        assert!(!text.contains("=0D=0A"));
    }

    #[test]
    fn qp_lf_message_and_8bit_bytes_survive() {
        let raw = b"Content-Type: text/html; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n<p>caf=E9 na\xefve</p>\n<p>long =\nline</p>\n".to_vec();
        let out = run(&raw).unwrap();
        let texts = html_texts(&out.message);
        assert_eq!(
            texts,
            vec![format!(
                "<p>caf\u{e9} na\u{ef}ve</p>\r\n<p>long line</p>\r\n{MARK}"
            )]
        );
        assert!(!out.message.contains(&b'\r'), "LF message must stay LF");
    }

    #[test]
    fn charsets_round_trip_exactly() {
        let cases: [(&str, &[u8]); 8] = [
            ("unknown-8bit", b"<p>\x80\xff\xc3</p>"),
            ("\"utf-8; x\"", b"<p>\xc3\xa9\xff</p>"),
            ("\"\"", b"<p>\x93q\x94</p>"),
            ("bogus", b"<p>\x00\x7f\x80</p>"),
            ("utf-8", b"<p>\xe9 broken utf8</p>"),
            ("iso-8859-1", b"<p>\x81\x8d\x8f\x90\x9d\xe9</p>"),
            ("shift_jis", b"<p>\x82\xa0\x82\xa2</p>"),
            ("iso-2022-jp", b"<p>\x1b$B$\"\x1b(B</p>"),
        ];
        for (label, body) in cases {
            let mut raw = format!("Content-Type: text/html; charset={label}\r\n\r\n").into_bytes();
            raw.extend_from_slice(body);
            let out = run(&raw).unwrap();
            let mut expected = raw.clone();
            expected.extend_from_slice(MARK.as_bytes());
            assert_eq!(out.message, expected, "charset {label}");
        }
    }

    #[test]
    fn all_bytes_round_trip_in_fallback_charsets() {
        let all: Vec<u8> = (0..=255u8).collect();
        for cs in [WINDOWS_1252, X_USER_DEFINED] {
            let text = cs
                .decode_without_bom_handling_and_without_replacement(&all)
                .unwrap();
            assert_eq!(encode_text(cs, &text), all, "{}", cs.name());
        }
        // Missing charset, not UTF-8: windows-1252 keeps every byte.
        let (text, cs) = decode_text(None, &all).unwrap();
        assert_eq!((cs, encode_text(cs, &text)), (WINDOWS_1252, all));
    }

    #[test]
    fn utf16_base64_part() {
        let html = "<p>\u{263a} x</p>";
        let utf16: Vec<u8> = html.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let raw = format!(
            "Content-Type: text/html; charset=utf-16le\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            STANDARD.encode(&utf16)
        );
        let out = run(raw.as_bytes()).unwrap();
        assert_eq!(html_texts(&out.message), vec![format!("{html}{MARK}")]);
        let body = &out.message[out.message.len() - 2..];
        assert_eq!(body, b"\r\n", "trailing line break kept");
    }

    #[test]
    fn unknown_transfer_encodings_and_stray_base64_are_read_as_clients_do() {
        // Issue 11: clients show a made-up transfer encoding's bytes as they are and skip
        // characters outside the base64 alphabet; so does the rewrite, instead of leaving
        // the part (and its references) as it was.
        for cte in ["x-uuencode", "8bit+", "Hexa", "base-64"] {
            let raw = crlf(&format!(
                "Content-Type: text/html\nContent-Transfer-Encoding: {cte}\n\n<p>x</p>\n"
            ));
            let out = run(&raw).unwrap();
            assert_eq!(out.skipped_parts, 0, "{cte}");
            assert_ne!(out.message, raw, "{cte}: rewritten");
            assert!(out.message.ends_with(b"<!--mv-->"), "{cte}");
        }
        let html = base64::engine::general_purpose::STANDARD.encode("<p>x</p>");
        let stray = format!("{}!{}", &html[..4], &html[4..]);
        let raw = crlf(&format!(
            "Content-Type: text/html\nContent-Transfer-Encoding: base64\n\n{stray}\n"
        ));
        let out = run(&raw).unwrap();
        assert_eq!(out.skipped_parts, 0);
        assert_ne!(out.message, raw);
    }

    #[test]
    fn base64_is_read_past_stray_characters() {
        assert_eq!(decode_base64(b"PGlt!Zz4=\r\n"), b"<img>");
        assert_eq!(decode_base64(b"PGltZz4"), b"<img>");
        assert_eq!(decode_base64(b"PG\r\nltZz4=\r\n"), b"<img>");
        assert_eq!(decode_base64(b"P"), b"");
    }

    #[test]
    fn charsets_that_hide_markup_are_not_rewritten_blind() {
        // UTF-7 and UTF-32 spell `<` in bytes the rewriter would not see; broken UTF-16
        // (an odd length) read byte by byte would too. Such parts are skipped, and the
        // message filter then neutralises them.
        for charset in ["utf-7", "UNICODE-1-1-UTF-7", "utf-32", "ucs-4"] {
            let raw = crlf(&format!(
                "Content-Type: text/html; charset={charset}\n\n+ADw-img src=x+AD4-\n"
            ));
            let out = run(&raw).unwrap();
            assert_eq!((out.message, out.skipped_parts), (raw, 1), "{charset}");
        }
        let mut raw = crlf("Content-Type: text/html; charset=utf-16le\n\n").to_vec();
        raw.extend_from_slice(b"<\0i\0m\0g\0>");
        let out = run(&raw).unwrap();
        assert_eq!((out.message, out.skipped_parts), (raw, 1));
    }

    #[test]
    fn truncated_base64_body() {
        let raw = fixture("mixed.eml");
        let text = String::from_utf8(raw).unwrap();
        let cut = text.find("PGh0bWw+").unwrap() + 30;
        let prefix = &text.as_bytes()[..cut];
        let out = run(prefix).unwrap();
        assert_eq!(skeleton(prefix), skeleton(&out.message));
    }

    #[test]
    fn boundary_in_rewrite_is_refused() {
        let raw = crlf(ALT);
        let out = rewrite_html_parts(&raw, &limits(), &mut |s| Ok(format!("{s}\r\n--BOUND\r\n")))
            .unwrap();
        assert_eq!((out.message, out.skipped_parts), (raw, 1));
    }

    #[test]
    fn html_attachment_is_rewritten() {
        let raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nhi\n--b\nContent-Type: text/html; name=a.html\nContent-Disposition: attachment; filename=a.html\n\n<img src=x>\n--b--\n");
        let out = run(&raw).unwrap();
        assert_eq!(out.html_parts, 1);
        assert_only_html_marked(&raw, &out.message);
    }

    #[test]
    fn inline_nested_message_offsets_are_outer() {
        let raw = fixture("nested-inline.eml");
        let out = run(&raw).unwrap();
        assert_eq!(out.html_parts, 2);
        assert_only_html_marked(&raw, &out.message);
        let text = String::from_utf8(out.message).unwrap();
        assert!(text.contains(&format!("<p>inner</p>{MARK}\r\n--inner--")));
        assert!(text.contains(&format!("<p>outer</p>{MARK}\r\n--outer")));
    }

    /// Wraps `inner` as a transfer-encoded message/rfc822 attachment.
    fn wrap_encoded(inner: &[u8], qp: bool) -> Vec<u8> {
        let (cte, body) = if qp {
            (
                "quoted-printable",
                String::from_utf8(quoted_printable::encode(inner)).unwrap(),
            )
        } else {
            let b64 = STANDARD.encode(inner);
            let lines: Vec<_> = b64
                .as_bytes()
                .chunks(76)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            ("base64", lines.join("\r\n"))
        };
        format!("Subject: wrap\r\nContent-Type: multipart/mixed; boundary=w\r\n\r\n--w\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--w\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body}\r\n--w--\r\n").into_bytes()
    }

    /// Decodes the message/rfc822 attachment of a `wrap_encoded` message.
    fn unwrap_encoded(raw: &[u8]) -> Vec<u8> {
        let msg = MessageParser::default().parse(raw).unwrap();
        let part = walk_tree(&msg)
            .leaves
            .into_iter()
            .find(|p| matches!(classify(p), PartKind::EncodedMessage(_)))
            .unwrap();
        let PartKind::EncodedMessage(t) = classify(part) else {
            unreachable!()
        };
        transfer_decode(t, &raw[part.offset_body as usize..part.offset_end as usize])
    }

    #[test]
    fn encoded_nested_messages() {
        let inner = crlf(ALT);
        for qp in [false, true] {
            let raw = wrap_encoded(&inner, qp);
            let out = run(&raw).unwrap();
            assert_eq!((out.html_parts, out.skipped_parts), (1, 0), "qp={qp}");
            let new_inner = unwrap_encoded(&out.message);
            assert_only_html_marked(&inner, &new_inner);
            let cte = raw.windows(9).position(|w| w == b"Transfer-").unwrap();
            let head = cte
                + raw[cte..]
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .unwrap()
                + 4;
            assert_eq!(out.message[..head], raw[..head]);
            assert!(out.message.ends_with(b"\r\n--w--\r\n"));
            let (a, b) = (
                raw.split(|&c| c == b'\n').count(),
                out.message.split(|&c| c == b'\n').count(),
            );
            assert!(b.abs_diff(a) <= 1, "shape kept");
        }
    }

    #[test]
    fn encoded_depth_limit() {
        let mut raw = crlf(ALT);
        for _ in 0..4 {
            raw = wrap_encoded(&raw, false);
        }
        let out = run(&raw).unwrap();
        assert_eq!(
            (out.message.clone(), out.html_parts, out.skipped_parts),
            (raw.clone(), 0, 1)
        );
        let deep = MimeLimits {
            max_encoded_depth: 4,
            ..limits()
        };
        let out = rewrite_html_parts(&raw, &deep, &mut mark).unwrap();
        assert_eq!((out.html_parts, out.skipped_parts), (1, 0));
        let mut inner = out.message;
        for _ in 0..4 {
            inner = unwrap_encoded(&inner);
        }
        assert_only_html_marked(&crlf(ALT), &inner);
    }

    #[test]
    fn deep_multipart_nesting() {
        let depth = 1000;
        let mut raw = String::from("Subject: deep\r\n");
        for i in 0..depth {
            raw.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"b{i}x\"\r\n\r\n--b{i}x\r\n"
            ));
        }
        raw.push_str("Content-Type: text/html\r\n\r\n<img src=\"http://t/x\">\r\n");
        for i in (0..depth).rev() {
            raw.push_str(&format!("--b{i}x--\r\n"));
        }
        let start = Instant::now();
        let out = run(raw.as_bytes()).unwrap();
        let took = start.elapsed();
        assert_eq!(out.html_parts, 1);
        let expected = raw.replace("x\">\r\n--b999x--", &format!("x\">{MARK}\r\n--b999x--"));
        assert_eq!(out.message, expected.as_bytes());
        if !cfg!(debug_assertions) {
            assert!(took.as_millis() < 500, "took {took:?}");
        }
    }

    #[test]
    fn deep_inline_message_nesting() {
        let depth = 300;
        let mut raw = String::from(
            "Subject: deep\r\nContent-Type: multipart/mixed; boundary=\"top\"\r\n\r\n--top\r\n",
        );
        for i in 0..depth {
            raw.push_str(&format!(
                "Content-Type: message/rfc822\r\n\r\nSubject: n{i}\r\n"
            ));
        }
        raw.push_str("Content-Type: text/html\r\n\r\n<p>x</p>\r\n--top--\r\n");
        let out = run(raw.as_bytes()).unwrap();
        assert_eq!(out.html_parts, 1);
        assert_eq!(
            out.message,
            raw.replace("</p>", &format!("</p>{MARK}")).as_bytes()
        );
    }

    #[test]
    fn fifty_megabyte_attachment() {
        let blob: Vec<u8> = (0..37_500_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let b64 = STANDARD.encode(&blob);
        let mut raw = crlf("Subject: big\nContent-Type: multipart/mixed; boundary=big\n\n--big\nContent-Type: text/html\n\n<img src=\"http://x\">\n--big\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n");
        for line in b64.as_bytes().chunks(76) {
            raw.extend_from_slice(line);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"--big--\r\n");
        assert!(raw.len() > 50_000_000);
        let start = Instant::now();
        let out = run(&raw).unwrap();
        let took = start.elapsed();
        let pos = raw.windows(5).position(|w| w == b"\">\r\n-").unwrap() + 2;
        assert_eq!(&out.message[..pos], &raw[..pos]);
        assert_eq!(&out.message[pos..pos + MARK.len()], MARK.as_bytes());
        assert_eq!(&out.message[pos + MARK.len()..], &raw[pos..]);
        if !cfg!(debug_assertions) {
            assert!(took.as_secs() < 5, "took {took:?}");
        }
    }

    #[test]
    fn qp_decoder_edge_cases() {
        assert_eq!(decode_qp(b"a=3Db=3db"), b"a=b=b");
        assert_eq!(decode_qp(b"soft=\r\nbreak  \r\nx=\n"), b"softbreak\r\nx");
        assert_eq!(decode_qp(b"bad=ZZ=4"), b"bad=ZZ=4");
        assert_eq!(decode_qp(b"8bit \xe9\n"), b"8bit \xe9\r\n");
        assert_eq!(encode_qp(b"a=b\r\nc", b"\n"), b"a=3Db\nc");
    }

    #[test]
    fn prepend_header_line_endings() {
        assert_eq!(
            prepend_header(b"A: b\r\n\r\nx", "X-Mv", "1"),
            b"X-Mv: 1\r\nA: b\r\n\r\nx"
        );
        assert_eq!(
            prepend_header(b"A: b\n\nx", "X-Mv", "1"),
            b"X-Mv: 1\nA: b\n\nx"
        );
        assert_eq!(prepend_header(b"", "X-Mv", "1"), b"X-Mv: 1\n");
        assert_eq!(
            prepend_header(b"From a@b Mon Jan 1 00:00:00 2024\nA: b\n\nx", "X-Mv", "1"),
            b"From a@b Mon Jan 1 00:00:00 2024\nX-Mv: 1\nA: b\n\nx"
        );
    }

    #[test]
    fn mbox_postmark_line() {
        let raw = b"From a@b Mon Jan  1 00:00:00 2024\nContent-Type: text/html\n\n<p>x</p>\n";
        if let Ok(out) = run(raw) {
            assert_eq!(skeleton(raw), skeleton(&out.message));
        }
    }

    /// mail-parser 0.11.9 subtracts with overflow (quoted_printable.rs:138)
    /// on a QP body `=` LF `--boundary`: a panic in debug builds only.
    #[test]
    fn mail_parser_qp_underflow_input() {
        let raw: &[u8] = b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n=\n--b--\n";
        let result = std::panic::catch_unwind(|| run(raw).map(|o| o.message));
        if !cfg!(debug_assertions) {
            let out = result.expect("no panic in release").unwrap();
            assert!(out.ends_with(b"\n--b--\n"));
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Spec {
            Html(u8, String),
            Binary(Vec<u8>),
            Text(String),
            Nested(Vec<Spec>),
        }

        fn text() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9 <>/.\"\u{e9}\u{263a}]{0,40}(\n[a-zA-Z0-9 <>/.\"]{0,100}){0,4}"
        }

        fn spec() -> impl Strategy<Value = Spec> {
            let leaf = prop_oneof![
                (0u8..3, text()).prop_map(|(t, s)| Spec::Html(t, format!("<p>{s}</p>"))),
                proptest::collection::vec(any::<u8>(), 0..300).prop_map(Spec::Binary),
                text().prop_map(Spec::Text),
            ];
            leaf.prop_recursive(3, 24, 5, |inner| {
                proptest::collection::vec(inner, 1..5).prop_map(Spec::Nested)
            })
        }

        fn render(spec: &Spec, eol: &str, counter: &mut usize, out: &mut String) {
            match spec {
                Spec::Html(t, s) => {
                    let s = s.replace('\n', eol);
                    let (cte, body) = match t {
                        0 => ("8bit", s),
                        1 => ("base64", STANDARD.encode(&s)),
                        _ => ("quoted-printable", String::from_utf8(encode_qp(s.as_bytes(), eol.as_bytes())).unwrap()),
                    };
                    out.push_str(&format!("Content-Type: text/html; charset=utf-8{eol}Content-Transfer-Encoding: {cte}{eol}{eol}{body}"));
                }
                Spec::Binary(b) => out.push_str(&format!("Content-Type: application/octet-stream{eol}Content-Transfer-Encoding: base64{eol}{eol}{}", STANDARD.encode(b))),
                Spec::Text(s) => out.push_str(&format!("Content-Type: text/plain{eol}{eol}{}", s.replace('\n', eol))),
                Spec::Nested(children) => {
                    *counter += 1;
                    let b = format!("=_mv{}_", *counter);
                    out.push_str(&format!("Content-Type: multipart/mixed; boundary=\"{b}\"{eol}{eol}pre{eol}"));
                    for c in children {
                        out.push_str(&format!("--{b}{eol}"));
                        render(c, eol, counter, out);
                        out.push_str(eol);
                    }
                    out.push_str(&format!("--{b}--{eol}"));
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn only_html_changes(root in spec(), lf in any::<bool>()) {
                let eol = if lf { "\n" } else { "\r\n" };
                let mut raw = format!("Subject: p{eol}");
                render(&root, eol, &mut 0, &mut raw);
                let raw = raw.into_bytes();
                let out = run(&raw).unwrap();
                prop_assert_eq!(out.skipped_parts, 0);
                assert_only_html_marked(&raw, &out.message);
            }
        }
    }
}

#[cfg(test)]
mod remove_header_tests {
    use super::remove_header_fields;

    #[test]
    fn removes_every_field_of_the_name_with_its_continuations() {
        let raw = b"From a@b Mon\nX-Mailveil: forged\nSubject: hi\nx-mailveil : also\n  folded\nTo: c\n\nX-Mailveil: in the body\n";
        let out = remove_header_fields(raw, "X-Mailveil").unwrap();
        assert_eq!(
            out,
            b"From a@b Mon\nSubject: hi\nTo: c\n\nX-Mailveil: in the body\n".to_vec()
        );
    }

    #[test]
    fn renames_keep_values_and_folding() {
        let raw = b"Content-Type: multipart/mixed;\r\n boundary=x\r\nTo: c\r\n\r\nbody";
        let out = super::rename_header_fields(raw, "content-type", "X-Original-Content-Type");
        assert_eq!(
            out.unwrap(),
            b"X-Original-Content-Type: multipart/mixed;\r\n boundary=x\r\nTo: c\r\n\r\nbody"
                .to_vec()
        );
    }

    #[test]
    fn leaves_messages_without_the_field_alone() {
        assert_eq!(
            remove_header_fields(b"Subject: x\r\n\r\nbody", "X-Mailveil"),
            None
        );
        assert_eq!(
            remove_header_fields(b"X-Mailveiled: x\r\n\r\n", "X-Mailveil"),
            None
        );
    }
}
