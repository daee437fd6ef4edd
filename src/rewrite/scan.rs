//! A line-anchored MIME scanner, independent of mail-parser (issue 11: the sender must not
//! be able to switch mailveil off).
//!
//! mail-parser ends a part at `--boundary` even in the middle of a line, while RFC 2046 and
//! mail clients split only at a line start, so a sender can hide a part from it. [`scan`]
//! finds the leaf parts the way clients do, with Python's `email.feedparser` as the
//! reference where RFC 2046 leaves room, so that the caller can cross-check mail-parser's
//! part tree against it and, when full parsing fails, still find every part a client would
//! render as HTML ([`renders_as_html`]).
//!
//! This module owns: splitting a message into header section and body, reading
//! `Content-Type` (media type, `boundary`, `charset`) and `Content-Transfer-Encoding`, the
//! delimiter-line rules of multiparts, descending into unencoded `message/rfc822` and
//! `message/global`, and the bounds on that work ([`ScanLimits`]). It is pure: no I/O, no
//! logging, no recursion (an explicit stack of open multiparts), no panics on any input,
//! and work linear in the input length for a given depth limit.
//!
//! It leaves to others: decoding (transfer encoding, charset, RFC 2047, RFC 2231), comparing
//! its parts with mail-parser's and deciding what a disagreement means (`mime`, `message`),
//! and rewriting or neutralising anything.
//!
//! Where RFC 2046 leaves room, the scanner does what Python's feedparser does (marked
//! "Python:" where it happens): a line that starts with a delimiter and goes on with other
//! text is body text; delimiter lines right after a delimiter are skipped; the outermost open
//! multipart takes a delimiter line; a close delimiter before any delimiter leaves the
//! multipart a leaf whose body is the preamble; a line that is no header line ends the
//! header section and starts the body; the boundary loses trailing white space. It departs
//! from Python where Python departs from RFC 5322/2045 (marked "Not Python:"): a bare CR is
//! no line break; only unencoded `message/rfc822` and `message/global` are scanned inside
//! (Python: every `message/*`, encoded or not); `Content-Type` is read as RFC 2045 tokens,
//! comments and white space skipped between them (Python keeps them in values); a body that
//! runs to the end of the input keeps its final line break (Python strips it).

use std::ops::Range;

use memchr::memmem;

/// Bounds on the work [`scan`] does for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanLimits {
    /// Deepest nesting of multipart and `message/rfc822` containers: the top-level message
    /// has depth 0, and a part at a depth beyond this is [`ScanError::TooDeep`].
    pub max_depth: usize,
    /// Most leaf parts in one message; one more is [`ScanError::TooManyParts`].
    pub max_parts: usize,
}

impl Default for ScanLimits {
    /// `max_depth = 32`, `max_parts = 10_000`.
    fn default() -> Self {
        ScanLimits {
            max_depth: 32,
            max_parts: 10_000,
        }
    }
}

/// One leaf part as [`scan`] found it: a part that is neither a multipart with its
/// delimiters present nor an unencoded nested message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedPart {
    /// Byte range of the part's header section in the scanned message, without the empty
    /// line that ends it; empty for a part with no header section.
    pub header: Range<usize>,
    /// Byte range of the body, without the line break before the next delimiter line
    /// (RFC 2046 §5.1.1: that CRLF belongs to the delimiter). A body that runs to the end of
    /// the input keeps its final line break.
    pub body: Range<usize>,
    /// Lowercased `type/subtype` from `Content-Type`; without one, `text/plain`, or
    /// `message/rfc822` directly inside a `multipart/digest` (RFC 2046 §5.1.5); with an
    /// invalid one, `text/plain` (RFC 2045 §5.2). A multipart whose delimiters never appear
    /// is a leaf of its declared `multipart/*` type.
    pub media_type: String,
    /// Lowercased, unquoted `charset` parameter, if any.
    pub charset: Option<String>,
    /// Lowercased `Content-Transfer-Encoding` token as written; `7bit` when absent.
    pub transfer_encoding: String,
    /// Number of multipart and nested-message containers around the part (0: the message
    /// itself is the leaf).
    pub depth: usize,
    /// How many of those containers are nested messages (unencoded `message/rfc822` or
    /// `message/global`): what a MIME parser recurses through.
    pub message_depth: usize,
}

/// Why [`scan`] gave up; the caller should fail closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The input does not start with a header field (or an empty header section): it is
    /// empty or not a message.
    #[error("no header section found")]
    NoHeaders,
    /// Containers are nested deeper than [`ScanLimits::max_depth`].
    #[error("mime parts nested too deep")]
    TooDeep,
    /// More leaf parts than [`ScanLimits::max_parts`].
    #[error("too many mime parts")]
    TooManyParts,
}

/// The leaf parts of the message `raw`, in document order.
///
/// A leading mbox `From ` postmark line is skipped. Preambles and epilogues are not parts.
///
/// # Errors
///
/// [`ScanError::NoHeaders`] if `raw` is empty or its first line is neither a header field
/// nor an empty line; [`ScanError::TooDeep`] and [`ScanError::TooManyParts`] when `limits`
/// are exceeded.
pub fn scan(raw: &[u8], limits: &ScanLimits) -> Result<Vec<ScannedPart>, ScanError> {
    let start = message_start(raw)?;
    let mut scanner = Scanner {
        raw,
        limits,
        frames: Vec::new(),
        parts: Vec::new(),
    };
    let mut step = Step::Entity(Entity {
        start,
        depth: 0,
        message_depth: 0,
        in_digest: false,
    });
    loop {
        step = match step {
            Step::Entity(entity) => scanner.enter(entity)?,
            Step::Delimiter(found) => scanner.on_delimiter(found)?,
            Step::Eof => return scanner.finish(),
        };
    }
}

/// Whether a mail client renders a part of this media type as HTML: `text/html`,
/// `application/xhtml+xml`, Apple's `text/watch-html` (also seen as `text/x-watch-html`)
/// and Gmail's AMP `text/x-amp-html`. Case-insensitive.
pub fn renders_as_html(media_type: &str) -> bool {
    const HTML_TYPES: [&str; 5] = [
        "text/html",
        "application/xhtml+xml",
        "text/watch-html",
        "text/x-watch-html",
        "text/x-amp-html",
    ];
    let media_type = media_type.trim();
    HTML_TYPES
        .iter()
        .any(|html| html.eq_ignore_ascii_case(media_type))
}

/// Where the header section of the top-level message starts, or why there is none.
fn message_start(raw: &[u8]) -> Result<usize, ScanError> {
    // An mbox postmark ("From sender date") is the envelope, not a header field.
    let start = if raw.starts_with(b"From ") {
        line_at(raw, 0).end
    } else {
        0
    };
    if start >= raw.len() {
        return Err(ScanError::NoHeaders);
    }
    let first = text(raw, &line_at(raw, start));
    // Lenient like clients: a first line `name:` starts a header section even when no empty
    // line follows before the end; an empty first line is an empty header section.
    match classify(first) {
        _ if first.is_empty() => Ok(start),
        HeaderLine::Field(_) => Ok(start),
        _ => Err(ScanError::NoHeaders),
    }
}

/// One line of the input: `start..content_end` is its text, `end` is past its line break.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    content_end: usize,
    end: usize,
}

/// The line starting at `start`. Lines end at LF; a CR right before the LF (or at the end
/// of the input) belongs to the line break. Not Python: a bare CR elsewhere is text, as in
/// RFC 5322 and mail-parser, where Python's feedparser also breaks lines at a bare CR.
fn line_at(raw: &[u8], start: usize) -> Line {
    let rest = raw.get(start..).unwrap_or_default();
    let (mut content_end, end) = match memchr::memchr(b'\n', rest) {
        Some(i) => (start + i, start + i + 1),
        None => (start + rest.len(), start + rest.len()),
    };
    if content_end > start && raw.get(content_end - 1) == Some(&b'\r') {
        content_end -= 1;
    }
    Line {
        start,
        content_end,
        end,
    }
}

/// The text of `line`, without its line break.
fn text<'a>(raw: &'a [u8], line: &Line) -> &'a [u8] {
    raw.get(line.start..line.content_end).unwrap_or_default()
}

/// Whether `delimiter` (`--` + boundary) is the delimiter in `line`: `Some(true)` for a
/// close delimiter, `Some(false)` for a delimiter, `None` for body text.
///
/// After the boundary only `--` and then spaces and tabs may follow (RFC 2046's transport
/// padding). A line that starts with the delimiter and goes on with anything else is body
/// text. RFC 2046 makes such lines unambiguous only by forbidding boundaries that are
/// prefixes of each other, so a reader could take `--bX` for a delimiter of `b`; Python's
/// feedparser (`boundaryendRE`) does not, and neither does this.
fn match_delimiter(line: &[u8], delimiter: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(delimiter)?;
    let (close, rest) = match rest.strip_prefix(b"--") {
        Some(after) => (true, after),
        None => (false, rest),
    };
    rest.iter()
        .all(|&b| b == b' ' || b == b'\t')
        .then_some(close)
}

/// A multipart whose body is being scanned.
#[derive(Debug)]
struct Frame {
    /// `--` followed by the boundary.
    delimiter: Vec<u8>,
    /// Depth of the multipart itself; its parts are one deeper.
    depth: usize,
    /// Nested messages around the multipart (and so around its parts).
    message_depth: usize,
    /// A `multipart/digest`: parts without `Content-Type` are `message/rfc822`.
    digest: bool,
    /// The multipart as a leaf, while no delimiter has been seen in its body: if none comes
    /// before it ends, it is emitted with its body up to there.
    pending: Option<ScannedPart>,
}

/// A delimiter line found in a body, with the open multipart it belongs to.
#[derive(Debug, Clone, Copy)]
struct Delimiter {
    line: Line,
    /// Index into the frame stack.
    owner: usize,
    close: bool,
}

/// The delimiter in `line`, if it is one for any open multipart.
///
/// RFC 2046 §5.1.2: an outer multipart's delimiter ends every part nested inside it. When a
/// line is a delimiter of several open multiparts (equal boundaries), the outermost takes
/// it, as in Python's feedparser, where outer boundaries are checked before the inner one.
fn delimiter_at(raw: &[u8], line: Line, frames: &[Frame]) -> Option<Delimiter> {
    let line_text = text(raw, &line);
    if !line_text.starts_with(b"--") {
        return None;
    }
    frames.iter().enumerate().find_map(|(owner, frame)| {
        match_delimiter(line_text, &frame.delimiter).map(|close| Delimiter { line, owner, close })
    })
}

/// The first delimiter line of an open multipart at or after `from`, a line start.
///
/// Only lines starting with `--` are looked at, found with one forward `memmem` search, so
/// the work is linear in the bytes passed over times the number of open multiparts.
fn find_delimiter(raw: &[u8], from: usize, frames: &[Frame]) -> Option<Delimiter> {
    if frames.is_empty() {
        return None;
    }
    let rest = raw.get(from..)?;
    if let Some(found) = delimiter_at(raw, line_at(raw, from), frames) {
        return Some(found);
    }
    memmem::find_iter(rest, b"\n--")
        .find_map(|i| delimiter_at(raw, line_at(raw, from + i + 1), frames))
}

/// Where a body that is followed by the delimiter line at `line_start` ends: before the
/// line break that precedes the delimiter (RFC 2046 §5.1.1).
fn body_end(raw: &[u8], body_start: usize, line_start: usize) -> usize {
    let mut end = line_start;
    if end > body_start && raw.get(end - 1) == Some(&b'\n') {
        end -= 1;
        if end > body_start && raw.get(end - 1) == Some(&b'\r') {
            end -= 1;
        }
    }
    end
}

/// The position after any further delimiter lines of the multipart at `owner`, starting at
/// the line start `pos`.
///
/// Python: feedparser consumes delimiter lines that directly follow a delimiter (close
/// delimiters included) instead of seeing empty parts between them, or the end of the
/// multipart. RFC 2046 would see an empty part, and a close delimiter there would end the
/// multipart, leaving what follows as epilogue. Following Python errs towards finding more
/// parts: an epilogue is never rendered, so neutralising it is harmless.
fn skip_delimiters(raw: &[u8], mut pos: usize, owner: usize, frames: &[Frame]) -> usize {
    while pos < raw.len() {
        let line = line_at(raw, pos);
        match delimiter_at(raw, line, frames) {
            Some(found) if found.owner == owner => pos = line.end,
            _ => break,
        }
    }
    pos
}

/// What a header line is, following Python's feedparser (`headerRE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderLine {
    /// A field `name:`; the name is this many bytes (printable ASCII except `:`).
    Field(usize),
    /// Starts with a space or tab: continues the field above (folding).
    Continuation,
    /// Part of the header section but no field: `From ` lines and a `:` with no name.
    Ignored,
    /// Not a header line: it ends the header section and is the first line of the body.
    Body,
}

/// Classifies a non-empty line of a header section.
///
/// Python: a line that is neither a field nor a continuation ends the header section and
/// starts the body (feedparser); a field name cannot contain white space, so
/// `Content-Type : x` is such a line. RFC 5322 has no such lines; mail-parser skips them and
/// reads on to the empty line. Following Python errs towards longer bodies (a client that
/// reads such lines as headers renders less than this body), and where the two split a part
/// differently the cross-check notices.
fn classify(line: &[u8]) -> HeaderLine {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return HeaderLine::Continuation;
    }
    if line.starts_with(b"From ") {
        return HeaderLine::Ignored;
    }
    let name_len = line
        .iter()
        .position(|&b| !matches!(b, 0x21..=0x39 | 0x3b..=0x7e))
        .unwrap_or(line.len());
    match line.get(name_len) {
        Some(b':') if name_len > 0 => HeaderLine::Field(name_len),
        Some(b':') => HeaderLine::Ignored,
        _ => HeaderLine::Body,
    }
}

/// The header fields the scanner reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ContentType,
    TransferEncoding,
}

/// A part's header section and where the values of its MIME fields are.
#[derive(Debug, Default)]
struct Headers {
    section: Range<usize>,
    body_start: usize,
    content_type: Option<Range<usize>>,
    transfer_encoding: Option<Range<usize>>,
}

impl Headers {
    fn slot(&mut self, field: Field) -> &mut Option<Range<usize>> {
        match field {
            Field::ContentType => &mut self.content_type,
            Field::TransferEncoding => &mut self.transfer_encoding,
        }
    }

    /// Records a field whose value is `value`; returns the field that continuation lines
    /// extend. When a field repeats, the first one counts, as in Python (`Message.get`
    /// returns the first) and mail-parser.
    fn begin_field(&mut self, name: &[u8], value: Range<usize>) -> Option<Field> {
        let field = if name.eq_ignore_ascii_case(b"content-type") {
            Field::ContentType
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            Field::TransferEncoding
        } else {
            return None;
        };
        let slot = self.slot(field);
        if slot.is_some() {
            return None;
        }
        *slot = Some(value);
        Some(field)
    }

    /// Extends the value of `field` (a folded field) to `end`.
    fn extend(&mut self, field: Option<Field>, end: usize) {
        if let Some(range) = field.and_then(|field| self.slot(field).as_mut()) {
            range.end = end;
        }
    }
}

/// Reads the header section starting at `start`: up to the first empty line (CRLF or LF),
/// the first line that is no header line ([`classify`]), a delimiter line of an open
/// multipart, or the end of the input. Only the empty line is consumed.
fn read_headers(raw: &[u8], start: usize, frames: &[Frame]) -> Headers {
    let mut headers = Headers::default();
    let mut current = None;
    let mut pos = start;
    while pos < raw.len() {
        let line = line_at(raw, pos);
        if delimiter_at(raw, line, frames).is_some() {
            break;
        }
        let line_text = text(raw, &line);
        if line_text.is_empty() {
            headers.section = start..pos;
            headers.body_start = line.end;
            return headers;
        }
        match classify(line_text) {
            HeaderLine::Body => break,
            HeaderLine::Field(name_len) => {
                let name = line_text.get(..name_len).unwrap_or_default();
                let value = line.start + name_len + 1..line.content_end;
                current = headers.begin_field(name, value);
            }
            HeaderLine::Continuation => headers.extend(current, line.content_end),
            // Python drops continuation lines after these.
            HeaderLine::Ignored => current = None,
        }
        pos = line.end;
    }
    headers.section = start..pos;
    headers.body_start = pos;
    headers
}

/// What `Content-Type` says.
#[derive(Debug, PartialEq, Eq)]
struct ContentType {
    media_type: String,
    boundary: Option<Vec<u8>>,
    charset: Option<String>,
}

/// Parses a `Content-Type` value: `type/subtype`, then `;`-separated parameters. White
/// space (folding included) and comments are allowed between tokens; parameter names are
/// case-insensitive and the first of a repeated parameter counts; values are tokens or
/// quoted strings with backslash escapes. RFC 2231 is not decoded.
///
/// Python (`get_boundary`): trailing white space of the boundary is dropped (RFC 2046
/// forbids it). Not Python, which takes everything up to the next `;` as the value: here a
/// bare value ends at white space (folding included) or a comment, and text after a quoted
/// string is ignored; Python unescapes only `\\` and `\"` in quoted strings, and takes a
/// media type followed by other text before the `;` (`text/html: x`) as invalid, where this
/// reads `text/html`. All of these follow RFC 2045's tokens and matter only for malformed
/// values.
fn parse_content_type(value: &[u8]) -> ContentType {
    let mut cursor = Cursor::new(value);
    let media_type = cursor
        .media_type()
        .unwrap_or_else(|| "text/plain".to_owned());
    let mut boundary = None;
    let mut charset = None;
    while cursor.skip_past_semicolon() {
        let Some((name, value)) = cursor.parameter() else {
            continue;
        };
        if name.eq_ignore_ascii_case(b"boundary") && boundary.is_none() {
            let kept = value.trim_ascii_end().len();
            boundary = Some(value.get(..kept).unwrap_or_default().to_vec());
        } else if name.eq_ignore_ascii_case(b"charset") && charset.is_none() {
            charset = Some(String::from_utf8_lossy(&value).to_ascii_lowercase());
        }
    }
    ContentType {
        media_type,
        boundary,
        charset,
    }
}

/// The lowercased first token of a `Content-Transfer-Encoding` value; `7bit` if none.
fn parse_transfer_encoding(value: &[u8]) -> String {
    let mut cursor = Cursor::new(value);
    cursor.skip_cfws();
    let token = cursor.token();
    if token.is_empty() {
        "7bit".to_owned()
    } else {
        String::from_utf8_lossy(token).to_ascii_lowercase()
    }
}

/// A position in a structured header value (RFC 2045 §5.1 tokens).
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.pos += usize::from(found);
        found
    }

    /// Skips white space (folding line breaks included) and comments.
    fn skip_cfws(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'(') => self.skip_comment(),
                _ => return,
            }
        }
    }

    /// Skips a comment, nested ones and quoted pairs included, from its `(`; an unclosed
    /// comment runs to the end.
    fn skip_comment(&mut self) {
        let mut level = 0usize;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'\\' => self.pos += 1,
                b'(' => level += 1,
                b')' => {
                    level = level.saturating_sub(1);
                    if level == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// Takes the bytes while `keep` holds.
    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        self.bytes.get(start..self.pos).unwrap_or_default()
    }

    /// An RFC 2045 token (possibly empty); bytes beyond ASCII are let through.
    fn token(&mut self) -> &'a [u8] {
        self.take_while(|b| b > b' ' && b != 0x7f && !b"()<>@,;:\\\"/[]?=".contains(&b))
    }

    /// A quoted string's content, from its `"`; an unclosed one runs to the end.
    fn quoted(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.pos += 1;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'"' => return out,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        out.push(escaped);
                        self.pos += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        out
    }

    /// `type/subtype`, lowercased; `None` if it is not there. Anything after it up to the
    /// first `;` is ignored.
    fn media_type(&mut self) -> Option<String> {
        self.skip_cfws();
        let main = self.token();
        self.skip_cfws();
        if !self.eat(b'/') {
            return None;
        }
        self.skip_cfws();
        let sub = self.token();
        if main.is_empty() || sub.is_empty() {
            return None;
        }
        let media_type = [main, b"/", sub].concat();
        Some(String::from_utf8_lossy(&media_type).to_ascii_lowercase())
    }

    /// Moves past the next `;` outside quoted strings and comments; false at the end.
    fn skip_past_semicolon(&mut self) -> bool {
        while let Some(b) = self.peek() {
            match b {
                b';' => {
                    self.pos += 1;
                    return true;
                }
                b'"' => {
                    self.quoted();
                }
                b'(' => self.skip_comment(),
                _ => self.pos += 1,
            }
        }
        false
    }

    /// `name = value` after a `;`. A bare value is lenient: it runs to white space, `;` or a
    /// comment, so the unquoted `=` and `/` that real boundaries contain are kept.
    fn parameter(&mut self) -> Option<(&'a [u8], Vec<u8>)> {
        self.skip_cfws();
        let name = self.token();
        self.skip_cfws();
        if name.is_empty() || !self.eat(b'=') {
            return None;
        }
        self.skip_cfws();
        let value = if self.peek() == Some(b'"') {
            self.quoted()
        } else {
            self.take_while(|b| !matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n' | b'('))
                .to_vec()
        };
        Some((name, value))
    }
}

/// How the scanner goes on with a part.
#[derive(Debug)]
enum Shape {
    /// A multipart with this boundary: its body is scanned for delimiters.
    Multipart(Vec<u8>),
    /// An unencoded `message/rfc822` or `message/global`: its body is a message.
    Message,
    /// Anything else.
    Leaf,
}

/// The part `entity` whose headers are `headers`, as a leaf with an empty body at its body
/// start, and how to go on with it.
fn describe(raw: &[u8], headers: &Headers, entity: Entity) -> (ScannedPart, Shape) {
    let field = |range: &Option<Range<usize>>| {
        range
            .clone()
            .map(|range| raw.get(range).unwrap_or_default())
    };
    let content_type = field(&headers.content_type).map(parse_content_type);
    let transfer_encoding = field(&headers.transfer_encoding)
        .map_or_else(|| "7bit".to_owned(), parse_transfer_encoding);
    let default_type = if entity.in_digest {
        "message/rfc822"
    } else {
        "text/plain"
    };
    let ContentType {
        media_type,
        boundary,
        charset,
    } = content_type.unwrap_or_else(|| ContentType {
        media_type: default_type.to_owned(),
        boundary: None,
        charset: None,
    });
    let identity = matches!(transfer_encoding.as_str(), "7bit" | "8bit" | "binary");
    // Python: a multipart that declares a transfer encoding (a defect) is still scanned.
    // Not Python: Python descends into every message/* whatever its encoding; an encoded
    // nested message is a leaf here, for the caller to decode and scan.
    let shape = match boundary {
        Some(boundary) if media_type.starts_with("multipart/") => Shape::Multipart(boundary),
        _ if identity && matches!(media_type.as_str(), "message/rfc822" | "message/global") => {
            Shape::Message
        }
        _ => Shape::Leaf,
    };
    let part = ScannedPart {
        header: headers.section.clone(),
        body: headers.body_start..headers.body_start,
        media_type,
        charset,
        transfer_encoding,
        depth: entity.depth,
        message_depth: entity.message_depth,
    };
    (part, shape)
}

/// A part or nested message about to be read.
#[derive(Debug, Clone, Copy)]
struct Entity {
    /// Where its header section starts.
    start: usize,
    depth: usize,
    message_depth: usize,
    /// Directly inside a `multipart/digest`.
    in_digest: bool,
}

/// The scanner's next move.
#[derive(Debug)]
enum Step {
    /// A part (or nested message) starts.
    Entity(Entity),
    /// A delimiter line of an open multipart.
    Delimiter(Delimiter),
    /// The end of the input.
    Eof,
}

/// The scan's state: the open multiparts, innermost last, and the leaves found so far.
struct Scanner<'a> {
    raw: &'a [u8],
    limits: &'a ScanLimits,
    frames: Vec<Frame>,
    parts: Vec<ScannedPart>,
}

impl Scanner<'_> {
    /// Reads the part `entity` and decides how to go on.
    fn enter(&mut self, entity: Entity) -> Result<Step, ScanError> {
        if entity.depth > self.limits.max_depth {
            return Err(ScanError::TooDeep);
        }
        let headers = read_headers(self.raw, entity.start, &self.frames);
        let (part, shape) = describe(self.raw, &headers, entity);
        match shape {
            // A multipart with no boundary parameter is a leaf of its declared type, as in
            // Python; so is one whose delimiter never appears (kept as `pending`).
            Shape::Multipart(boundary) => {
                let digest = part.media_type == "multipart/digest";
                self.frames.push(Frame {
                    delimiter: [b"--".as_slice(), &boundary].concat(),
                    depth: entity.depth,
                    message_depth: entity.message_depth,
                    digest,
                    pending: Some(part),
                });
                Ok(self.step_from(headers.body_start))
            }
            Shape::Message => Ok(Step::Entity(Entity {
                start: headers.body_start,
                depth: entity.depth + 1,
                message_depth: entity.message_depth + 1,
                in_digest: false,
            })),
            Shape::Leaf => {
                let next = find_delimiter(self.raw, headers.body_start, &self.frames);
                let end = next.map_or(self.raw.len(), |found| {
                    body_end(self.raw, headers.body_start, found.line.start)
                });
                self.emit(part, end)?;
                Ok(next.map_or(Step::Eof, Step::Delimiter))
            }
        }
    }

    /// Handles a delimiter line: it ends every multipart nested inside its owner, then
    /// starts the owner's next part or, for a close delimiter, ends the owner.
    fn on_delimiter(&mut self, found: Delimiter) -> Result<Step, ScanError> {
        while self.frames.len() > found.owner + 1 {
            self.pop_frame(Some(found.line.start))?;
        }
        if found.close {
            // Python: a close delimiter before any delimiter leaves the multipart a leaf
            // whose body is the preamble; what follows up to the enclosing end is epilogue.
            self.pop_frame(Some(found.line.start))?;
            // The epilogue runs to a delimiter of an enclosing multipart or the end.
            return Ok(self.step_from(found.line.end));
        }
        let Some(frame) = self.frames.get_mut(found.owner) else {
            // Unreachable: `owner` indexes the stack the delimiter was found with.
            return Ok(Step::Eof);
        };
        frame.pending = None;
        let mut next = Entity {
            start: found.line.end,
            depth: frame.depth + 1,
            message_depth: frame.message_depth,
            in_digest: frame.digest,
        };
        next.start = skip_delimiters(self.raw, next.start, found.owner, &self.frames);
        Ok(Step::Entity(next))
    }

    /// The step after scanning on from `pos` (a line start) to the next delimiter line.
    fn step_from(&self, pos: usize) -> Step {
        find_delimiter(self.raw, pos, &self.frames).map_or(Step::Eof, Step::Delimiter)
    }

    /// Ends the innermost open multipart, at the delimiter line starting at `line_start`
    /// or (`None`) at the end of the input; if it never saw a delimiter, it is a leaf.
    fn pop_frame(&mut self, line_start: Option<usize>) -> Result<(), ScanError> {
        let Some(part) = self.frames.pop().and_then(|frame| frame.pending) else {
            return Ok(());
        };
        let end = line_start.map_or(self.raw.len(), |line_start| {
            body_end(self.raw, part.body.start, line_start)
        });
        self.emit(part, end)
    }

    /// Adds a leaf whose body ends at `end`.
    fn emit(&mut self, mut part: ScannedPart, end: usize) -> Result<(), ScanError> {
        if self.parts.len() >= self.limits.max_parts {
            return Err(ScanError::TooManyParts);
        }
        part.body.end = end.max(part.body.start);
        self.parts.push(part);
        Ok(())
    }

    /// At the end of the input: every open multipart ends (those that never saw a
    /// delimiter become leaves), and the leaves are the result.
    fn finish(mut self) -> Result<Vec<ScannedPart>, ScanError> {
        while !self.frames.is_empty() {
            self.pop_frame(None)?;
        }
        Ok(self.parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_ok(raw: &[u8]) -> Vec<ScannedPart> {
        match scan(raw, &ScanLimits::default()) {
            Ok(parts) => parts,
            Err(e) => panic!("scan failed: {e}: {}", String::from_utf8_lossy(raw)),
        }
    }

    /// Each leaf as (media type, body text).
    fn leaves(raw: &[u8]) -> Vec<(String, String)> {
        scan_ok(raw)
            .into_iter()
            .map(|p| {
                let body = String::from_utf8_lossy(&raw[p.body.clone()]).into_owned();
                (p.media_type, body)
            })
            .collect()
    }

    fn leaf(media_type: &str, body: &str) -> (String, String) {
        (media_type.to_owned(), body.to_owned())
    }

    fn multipart(boundary: &str, body: &str) -> String {
        format!("Subject: t\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\n\n{body}")
    }

    #[test]
    fn single_part_message_has_header_and_body_ranges() {
        let raw = b"Subject: hi\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n<p>x</p>\r\n";
        let parts = scan_ok(raw);
        assert_eq!(parts.len(), 1);
        let part = &parts[0];
        assert_eq!(&raw[part.header.clone()], &raw[..53]);
        assert!(raw[part.header.clone()].ends_with(b"UTF-8\r\n"));
        assert_eq!(
            &raw[part.body.clone()],
            b"<p>x</p>\r\n",
            "a body at the end keeps its line break"
        );
        assert_eq!(part.media_type, "text/html");
        assert_eq!(part.charset.as_deref(), Some("utf-8"));
        assert_eq!(part.transfer_encoding, "7bit");
        assert_eq!((part.depth, part.message_depth), (0, 0));
    }

    #[test]
    fn mid_line_boundary_is_not_a_split() {
        let raw = multipart(
            "b",
            "--b\nContent-Type: text/plain\n\nhi --b\nContent-Type: text/html\n\n<img src=x>\n--b--\n",
        );
        assert_eq!(
            leaves(raw.as_bytes()),
            [leaf(
                "text/plain",
                "hi --b\nContent-Type: text/html\n\n<img src=x>"
            )]
        );
    }

    #[test]
    fn html_comment_with_the_boundary_is_text() {
        let body = "--x\nContent-Type: text/html\n\n<!--x-->\n--x-->\n<p>--x</p>\n--x--\n";
        assert_eq!(
            leaves(multipart("x", body).as_bytes()),
            [leaf("text/html", "<!--x-->\n--x-->\n<p>--x</p>")]
        );
    }

    #[test]
    fn a_line_that_goes_on_after_the_delimiter_is_text() {
        let body = "--b\n\none\n--bb\n--b-x\n--b --\n--b--x\n-- b\n--b\ntwo\n--b--\n";
        assert_eq!(
            leaves(multipart("b", body).as_bytes()),
            [
                leaf("text/plain", "one\n--bb\n--b-x\n--b --\n--b--x\n-- b"),
                leaf("text/plain", "two"),
            ]
        );
    }

    #[test]
    fn crlf_and_lf_mixed() {
        let raw = b"Content-Type: multipart/alternative;\r\n boundary=q\n\r\n--q\r\nContent-Type: text/plain\n\r\na\r\nb\n--q\n\
                    Content-Type: text/html\r\n\n<p>\r\n\n--q--\r\n";
        assert_eq!(
            leaves(raw),
            [leaf("text/plain", "a\r\nb"), leaf("text/html", "<p>\r\n")]
        );
    }

    #[test]
    fn missing_close_delimiter_runs_to_the_end() {
        let raw = multipart(
            "b",
            "--b\n\none\n--b\nContent-Type: text/html\n\n<p>two</p>\n",
        );
        assert_eq!(
            leaves(raw.as_bytes()),
            [leaf("text/plain", "one"), leaf("text/html", "<p>two</p>\n")]
        );
    }

    #[test]
    fn preamble_and_epilogue_are_not_parts() {
        let body = "pre <img>\n--b\n\none\n--b--\nepi\n--b\nContent-Type: text/html\n\n<img>\n";
        assert_eq!(
            leaves(multipart("b", body).as_bytes()),
            [leaf("text/plain", "one")]
        );
    }

    #[test]
    fn nested_multiparts() {
        let body =
            "--o\nContent-Type: multipart/alternative; boundary=i\n\npre\n--i\n\nplain\n--i\n\
                    Content-Type: text/html\n\n<p>\n--i--\nepi\n--o\nContent-Type: image/png\n\
                    Content-Transfer-Encoding: BASE64\n\nAAAA\n--o--\n";
        let raw = multipart("o", body);
        let parts = scan_ok(raw.as_bytes());
        let got: Vec<_> = parts
            .iter()
            .map(|p| (p.media_type.as_str(), &raw[p.body.clone()], p.depth))
            .collect();
        assert_eq!(
            got,
            [
                ("text/plain", "plain", 2),
                ("text/html", "<p>", 2),
                ("image/png", "AAAA", 1)
            ]
        );
        assert_eq!(parts[2].transfer_encoding, "base64");
    }

    #[test]
    fn an_outer_delimiter_ends_the_inner_multiparts() {
        let body = "--o\nContent-Type: multipart/mixed; boundary=i\n\n--i\n\ninner\n--o\n\
                    Content-Type: text/html\n\n<p>\n--o--\n";
        assert_eq!(
            leaves(multipart("o", body).as_bytes()),
            [leaf("text/plain", "inner"), leaf("text/html", "<p>")]
        );
        // Equal boundaries: the outer multipart takes the line, so the inner one never sees
        // its delimiter and is a leaf (as in Python).
        let body = "--a\nContent-Type: multipart/mixed; boundary=a\n\n--a\nX: y\n\ninner\n--a--\n";
        assert_eq!(
            leaves(multipart("a", body).as_bytes()),
            [leaf("multipart/mixed", ""), leaf("text/plain", "inner")]
        );
    }

    #[test]
    fn delimiters_with_trailing_white_space() {
        let body = "--b \t\n\none\n--b\t\r\nContent-Type: text/html\n\n<p>\n--b--  \nepi\n";
        assert_eq!(
            leaves(multipart("b", body).as_bytes()),
            [leaf("text/plain", "one"), leaf("text/html", "<p>")]
        );
        // Python drops trailing white space of the boundary parameter itself.
        let raw = "Content-Type: multipart/mixed; boundary=\"b  \"\n\n--b\n\none\n--b--  \n";
        assert_eq!(leaves(raw.as_bytes()), [leaf("text/plain", "one")]);
    }

    #[test]
    fn quoted_boundary_with_special_characters() {
        let boundary = "'()+_,-./:=? x;\\\"y";
        let quoted = "'()+_,-./:=? x;\\\\\\\"y";
        let delimiter = "--'()+_,-./:=? x;\\\"y";
        let raw = format!(
            "Content-Type: multipart/mixed; boundary=\"{quoted}\"\n\n{delimiter}\n\none\n{delimiter}--\n"
        );
        let parts = scan_ok(raw.as_bytes());
        assert_eq!(parts.len(), 1, "{boundary}");
        assert_eq!(&raw[parts[0].body.clone()], "one");
    }

    #[test]
    fn folded_and_repeated_content_type() {
        let raw = "Content-Type:\r\n multipart/mixed;\r\n\tcharset=us-ascii;\r\n  boundary=\r\n \"f\"\r\n\
                   Content-Type: text/plain\r\n\r\n--f\r\nContent-type: TEXT/HTML\r\ncontent-type: text/plain\r\n\r\n<p>\r\n--f--\r\n";
        // The first field counts, as in Python's Message.get.
        assert_eq!(leaves(raw.as_bytes()), [leaf("text/html", "<p>")]);
    }

    #[test]
    fn content_type_parameters() {
        let parse = |v: &str| parse_content_type(v.as_bytes());
        let ct =
            parse(" (c) Text (x) / HTML (y) ; (z) CHARSET = \"ISO-8859-1\" (w); charset=utf-8");
        assert_eq!(ct.media_type, "text/html");
        assert_eq!(ct.charset.as_deref(), Some("iso-8859-1"));
        let ct = parse("multipart/mixed; foo; bar=\"a;b\"; boundary=----=_Part_1/2 (comment)");
        assert_eq!(ct.boundary.as_deref(), Some(b"----=_Part_1/2".as_slice()));
        let ct = parse("multipart/related; boundary=\"a\\\\b\\\"c(d)\"; boundary=other");
        assert_eq!(ct.boundary.as_deref(), Some(b"a\\b\"c(d)".as_slice()));
        for invalid in ["", "text", "/html", "text/", "; charset=x", "(text/html)"] {
            assert_eq!(parse(invalid).media_type, "text/plain", "{invalid:?}");
        }
        assert_eq!(parse("texthtml; charset=X").charset.as_deref(), Some("x"));
        assert_eq!(parse("text/html \"junk; charset=x").charset, None);
        assert_eq!(
            parse_transfer_encoding(b" (c) Quoted-Printable (d)"),
            "quoted-printable"
        );
        assert_eq!(parse_transfer_encoding(b"  "), "7bit");
    }

    #[test]
    fn message_rfc822_is_scanned_inside() {
        let body = "--b\nContent-Type: message/rfc822\n\nSubject: inner\nContent-Type: multipart/mixed; boundary=c\n\n\
                    --c\nContent-Type: text/html\n\n<p>\n--c--\n--b\nContent-Type: message/global\n\
                    Content-Transfer-Encoding: 8bit\n\nSubject: g\n\nplain\n--b--\n";
        let raw = multipart("b", body);
        let got: Vec<_> = scan_ok(raw.as_bytes())
            .iter()
            .map(|p| {
                (
                    p.media_type.clone(),
                    &raw[p.body.clone()],
                    p.depth,
                    p.message_depth,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("text/html".into(), "<p>", 3, 1),
                ("text/plain".into(), "plain", 2, 1)
            ]
        );
    }

    #[test]
    fn an_encoded_message_rfc822_is_a_leaf() {
        let raw = "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeA0KDQp4\n";
        let parts = scan_ok(raw.as_bytes());
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].media_type, "message/rfc822");
        assert_eq!(parts[0].transfer_encoding, "base64");
        assert_eq!(&raw[parts[0].body.clone()], "U3ViamVjdDogeA0KDQp4\n");
    }

    #[test]
    fn digest_parts_default_to_message_rfc822() {
        let raw = "Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\nContent-Type: text/html\n\n<p>\n\
                   --d\nContent-Type: text/plain\n\ntwo\n--d\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeA==\n--d--\n";
        let got: Vec<_> = scan_ok(raw.as_bytes())
            .into_iter()
            .map(|p| (p.media_type, p.depth, p.message_depth))
            .collect();
        assert_eq!(
            got,
            [
                ("text/html".into(), 2, 1),
                ("text/plain".into(), 1, 0),
                ("message/rfc822".into(), 1, 0),
            ]
        );
        // Only directly inside the digest: the nested message's own default is text/plain.
        let raw =
            "Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: x\n\nbody\n--d--\n";
        assert_eq!(leaves(raw.as_bytes()), [leaf("text/plain", "body")]);
    }

    #[test]
    fn a_multipart_without_delimiters_is_a_leaf_of_its_type() {
        let raw = "Content-Type: multipart/mixed\n\n--b\nContent-Type: text/html\n\n<p>\n";
        assert_eq!(
            leaves(raw.as_bytes()),
            [leaf("multipart/mixed", &raw[31..])]
        );
        let raw = multipart("never", "--b\nContent-Type: text/html\n\n<p>\n");
        assert_eq!(
            leaves(raw.as_bytes()),
            [leaf(
                "multipart/mixed",
                "--b\nContent-Type: text/html\n\n<p>\n"
            )]
        );
        // Python: a close delimiter before any delimiter leaves the preamble as the body.
        let raw = multipart("b", "pre\n--b--\nContent-Type: text/html\n\n<p>\n");
        assert_eq!(leaves(raw.as_bytes()), [leaf("multipart/mixed", "pre")]);
        // Inside another multipart, it ends at the enclosing delimiter.
        let body = "--o\nContent-Type: multipart/alternative\n\n<p>\n--o\n\nlast\n--o--\n";
        assert_eq!(
            leaves(multipart("o", body).as_bytes()),
            [
                leaf("multipart/alternative", "<p>"),
                leaf("text/plain", "last")
            ]
        );
    }

    #[test]
    fn repeated_delimiters_are_skipped_like_python() {
        // Python consumes delimiter lines that follow a delimiter, close ones included.
        let body = "--b\n--b\n--b--\nContent-Type: text/html\n\n<img>\n--b\n\n--b--\n";
        assert_eq!(
            leaves(multipart("b", body).as_bytes()),
            [leaf("text/html", "<img>"), leaf("text/plain", "")]
        );
        // A delimiter at the very end still opens an (empty) part.
        assert_eq!(leaves(multipart("b", "--b\n\nx\n--b").as_bytes()).len(), 2);
    }

    #[test]
    fn a_line_that_is_no_header_line_starts_the_body() {
        let body = "--b\nContent-Type: text/html\n<img src=x>\n\nmore\n--b\n<p>no headers\n--b\n\
                    Content-Type : text/html\n\nz\n--b\n \tcontinued first\nContent-Type: text/html\n\n<i>\n--b--\n";
        let parts = scan_ok(multipart("b", body).as_bytes());
        let raw = multipart("b", body);
        let got: Vec<_> = parts
            .iter()
            .map(|p| {
                (
                    p.media_type.as_str(),
                    &raw[p.body.clone()],
                    p.header.is_empty(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("text/html", "<img src=x>\n\nmore", false),
                ("text/plain", "<p>no headers", true),
                ("text/plain", "Content-Type : text/html\n\nz", true),
                ("text/html", "<i>", false),
            ]
        );
    }

    #[test]
    fn messages_without_a_header_section() {
        let limits = ScanLimits::default();
        for junk in [
            &b""[..],
            b"\x00\x01binary",
            b"<html>",
            b" indented: x",
            b"From x\n",
            b"From x\nnot a header\n",
        ] {
            assert_eq!(scan(junk, &limits), Err(ScanError::NoHeaders), "{junk:?}");
        }
        // Lenient like clients: a header line without an empty line after it.
        let parts = scan_ok(b"Subject: only");
        assert_eq!(
            (parts[0].header.clone(), parts[0].body.clone()),
            (0..13, 13..13)
        );
        // An mbox postmark is no header field; an empty header section is one.
        let raw = b"From a@b Mon Jan  1 00:00:00 2024\nContent-Type: text/html\n\n<p>";
        let parts = scan_ok(raw);
        assert_eq!(
            (parts[0].header.start, parts[0].media_type.as_str()),
            (34, "text/html")
        );
        assert_eq!(leaves(b"\r\nbody"), [leaf("text/plain", "body")]);
    }

    #[test]
    fn too_deep_on_ten_thousand_nested_multiparts() {
        let mut raw = String::new();
        for i in 0..10_000 {
            raw.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
            ));
        }
        raw.push_str("\n<p>\n");
        assert_eq!(
            scan(raw.as_bytes(), &ScanLimits::default()),
            Err(ScanError::TooDeep)
        );
        let raw = "Content-Type: message/rfc822\n\n".repeat(10_000);
        assert_eq!(
            scan(raw.as_bytes(), &ScanLimits::default()),
            Err(ScanError::TooDeep)
        );
        let limits = ScanLimits {
            max_depth: 10_000,
            max_parts: 10,
        };
        assert_eq!(scan(raw.as_bytes(), &limits).map(|p| p.len()), Ok(1));
        // Exactly at the limit is fine.
        let raw = "Content-Type: message/rfc822\n\n".repeat(32);
        let parts = scan_ok(raw.as_bytes());
        assert_eq!((parts[0].depth, parts[0].message_depth), (32, 32));
    }

    #[test]
    fn too_many_parts() {
        let body = "--b\n\nx\n".repeat(11);
        let limits = ScanLimits {
            max_depth: 32,
            max_parts: 10,
        };
        assert_eq!(
            scan(multipart("b", &body).as_bytes(), &limits),
            Err(ScanError::TooManyParts)
        );
        let limits = ScanLimits {
            max_parts: 11,
            ..limits
        };
        assert_eq!(
            scan(multipart("b", &body).as_bytes(), &limits).map(|p| p.len()),
            Ok(11)
        );
    }

    #[test]
    fn ten_megabytes_in_linear_time() {
        let started = std::time::Instant::now();
        let mut raw = b"Content-Type: text/html\n\n".to_vec();
        raw.resize(10 << 20, b'a');
        assert_eq!(scan_ok(&raw)[0].body, 25..raw.len());
        // Inside a multipart with a long boundary, every line starting like the delimiter.
        let boundary = "z".repeat(70);
        let mut raw = multipart(&boundary, &format!("--{boundary}\n\n")).into_bytes();
        let line = format!("--{}y\n", "z".repeat(69));
        while raw.len() < 10 << 20 {
            raw.extend_from_slice(line.as_bytes());
        }
        raw.extend_from_slice(format!("--{boundary}--\n").as_bytes());
        assert_eq!(scan_ok(&raw).len(), 1);
        // A quadratic scan would take hours; the linear one takes well under a second.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn html_media_types() {
        for html in [
            "text/html",
            "TEXT/HTML",
            "application/xhtml+xml",
            "text/watch-html",
            "text/x-watch-html",
            "text/x-amp-html",
        ] {
            assert!(renders_as_html(html), "{html}");
        }
        for other in [
            "text/plain",
            "text/htm",
            "multipart/alternative",
            "message/rfc822",
            "text/html2",
            "",
        ] {
            assert!(!renders_as_html(other), "{other}");
        }
    }

    /// xorshift64*: the same messages on every run, no crate needed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn one_in(&mut self, n: usize) -> bool {
            self.below(n) == 0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Writes tricky messages: line endings switch between CRLF and LF at random.
    struct Gen {
        rng: Rng,
        out: Vec<u8>,
        crlf: bool,
    }

    impl Gen {
        fn eol(&mut self) {
            if self.rng.one_in(4) {
                self.crlf = !self.crlf;
            }
            self.out
                .extend_from_slice(if self.crlf { b"\r\n" } else { b"\n" });
        }

        fn line(&mut self, text: &str) {
            self.out.extend_from_slice(text.as_bytes());
            self.eol();
        }

        /// A boundary: sometimes an enclosing one, an extension or prefix of one, often
        /// with characters that need quoting; and the parameter that declares it.
        fn boundary(&mut self, enclosing: &[String]) -> (String, String) {
            let outer =
                (!enclosing.is_empty()).then(|| enclosing[self.rng.below(enclosing.len())].clone());
            let boundary = match (outer, self.rng.below(8)) {
                (Some(outer), 0) => outer,
                (Some(outer), 1) => format!("{outer}x"),
                (Some(outer), 2) if outer.len() > 1 => outer[..outer.len() - 1].to_owned(),
                _ => {
                    let chars = b"abcXYZ019'()+_,-./:=? ";
                    let len = 1 + self.rng.below(10);
                    let mut b: String = (0..len)
                        .map(|_| chars[self.rng.below(chars.len())] as char)
                        .collect();
                    b.replace_range(..1, "q");
                    b.trim_end().to_owned()
                }
            };
            let bare = !boundary.contains(['(', ' ']) && self.rng.one_in(2);
            let param = match (bare, self.rng.below(4)) {
                (true, _) => format!("boundary={boundary}"),
                (false, 0) => format!("boundary=\"{boundary}  \""),
                (false, 1) => format!("BOUNDARY = \"{boundary}\""),
                _ => format!("boundary=\"{boundary}\""),
            };
            (boundary, param)
        }

        /// A body line, often built to look like a delimiter of `boundaries` without being
        /// one; rarely a real one.
        fn body_line(&mut self, boundaries: &[String]) -> String {
            let b = if boundaries.is_empty() || self.rng.one_in(5) {
                "zz".to_owned()
            } else {
                boundaries[self.rng.below(boundaries.len())].clone()
            };
            let template = self.rng.pick(&[
                "<p>hello world</p>",
                "<img src=\"http://t.example/p.gif\">",
                "<!--{b}-->",
                "<!-- --{b} -->",
                "text --{b} more",
                "--{b}junk",
                "--{b}--junk",
                "--{b} --",
                "-- {b}",
                "",
                " indented",
                "\ttabbed",
                "key: value",
                "caf\u{e9} =3D",
                "--",
                "{b}",
                "--{b}",
                "--{b}--",
                "--{b}\t",
            ]);
            let real = template.starts_with("--{b}")
                && !template.contains("junk")
                && !template.contains(' ');
            if real && !self.rng.one_in(6) {
                return "<b>bold</b>".to_owned();
            }
            template.replace("{b}", &b)
        }

        fn body(&mut self, boundaries: &[String]) {
            for _ in 0..self.rng.below(5) {
                let line = self.body_line(boundaries);
                self.line(&line);
            }
            if self.rng.one_in(6) {
                let line = self.body_line(boundaries);
                self.out.extend_from_slice(line.as_bytes());
            }
        }
    }

    impl Gen {
        /// Header lines, `|` separating them (a `|` before white space folds a field).
        fn fields(&mut self, spec: &str) {
            for field in spec.split('|').filter(|f| !f.is_empty()) {
                self.line(field);
            }
        }

        fn top(&mut self) {
            if self.rng.one_in(4) {
                self.line("From sender@example.com Mon Jan  1 00:00:00 2024");
            }
            self.fields("From: a@example.com|Subject: test|MIME-Version: 1.0");
            self.entity(0, &[], false);
        }

        /// A part: header fields, the empty line, the body. The message itself is mostly a
        /// multipart; nesting stops at depth 4.
        fn entity(&mut self, depth: usize, boundaries: &[String], in_digest: bool) {
            let choice = match depth {
                0 => 6 + self.rng.below(10),
                1..=3 => self.rng.below(16),
                _ => self.rng.below(10),
            };
            match choice {
                0..=9 => self.leaf(depth, boundaries, in_digest),
                10..=13 => self.multipart(depth, boundaries),
                _ => self.message(depth, boundaries, in_digest),
            }
        }

        fn leaf(&mut self, depth: usize, boundaries: &[String], in_digest: bool) {
            let spec = self.rng.pick(&[
                "Content-Type: text/html; charset=utf-8",
                "Content-type: TEXT/HTML",
                "Content-Type: text/plain; charset=\"ISO-8859-1\"",
                "Content-Type: application/xhtml+xml|Content-Transfer-Encoding: quoted-printable",
                "Content-Type: text/watch-html",
                "Content-Type: image/gif|Content-Transfer-Encoding: base64",
                "Content-Type: texthtml",
                "Content-Type: text/html;|\tcharset=us-ascii",
                "Content-Type: text/html|Content-Type: text/plain",
                "X-Other: 1| folded",
                "",
            ]);
            if in_digest && !spec.contains("Content-Type") {
                return self.message(depth, boundaries, in_digest);
            }
            self.fields(spec);
            if spec.is_empty() && self.rng.one_in(3) {
                // No header section and no empty line: the body starts at once.
                self.line("<p>start");
            } else {
                self.eol();
            }
            self.body(boundaries);
        }

        fn multipart(&mut self, depth: usize, enclosing: &[String]) {
            let sub = self
                .rng
                .pick(&["mixed", "alternative", "related", "digest", "Mixed"]);
            let (boundary, param) = self.boundary(enclosing);
            match self.rng.below(8) {
                0 => self.line(&format!("Content-Type: multipart/{sub}")),
                1 => self.fields(&format!("Content-Type: multipart/{sub};|\t{param}")),
                2 => self.line(&format!(
                    "Content-Type: Multipart/{sub}; charset=x; {param}"
                )),
                _ => self.line(&format!("Content-Type: multipart/{sub}; {param}")),
            }
            self.eol();
            let mut boundaries = enclosing.to_vec();
            boundaries.push(boundary.clone());
            self.body(&boundaries);
            for _ in 0..self.rng.below(4) {
                self.delimiter(&boundary, "");
                if self.rng.one_in(8) {
                    let close = if self.rng.one_in(2) { "--" } else { "" };
                    self.delimiter(&boundary, close);
                }
                self.entity(depth + 1, &boundaries, sub == "digest");
            }
            if !self.rng.one_in(4) {
                self.delimiter(&boundary, "--");
                self.body(&boundaries);
            }
        }

        fn delimiter(&mut self, boundary: &str, close: &str) {
            let padding = self.rng.pick(&["", "", " ", "\t ", "  "]);
            self.line(&format!("--{boundary}{close}{padding}"));
        }

        fn message(&mut self, depth: usize, boundaries: &[String], in_digest: bool) {
            if !in_digest || self.rng.one_in(2) {
                let cte = self.rng.pick(&[
                    "",
                    "|Content-Transfer-Encoding: 7bit",
                    "|Content-Transfer-Encoding: 8BIT",
                ]);
                self.fields(&format!("Content-Type: message/rfc822{cte}"));
            }
            self.eol();
            self.fields("Subject: inner|From: x@example.com");
            self.entity(depth + 1, boundaries, false);
        }
    }

    /// Prints, for each message in the file (8-byte little-endian length, then the bytes),
    /// an `M` line and then each non-multipart part in `walk()` order as media type, charset
    /// (`-` for none) and raw payload, each in hex.
    const PYTHON_LEAVES: &str = r#"
import email, email.policy, sys
data = open(sys.argv[1], 'rb').read()
pos, out = 0, []
while pos < len(data):
    size = int.from_bytes(data[pos:pos + 8], 'little')
    raw = data[pos + 8:pos + 8 + size]
    pos += 8 + size
    # message_from_bytes, not message_from_binary_file: the latter reads through a
    # TextIOWrapper in universal-newline mode, which turns every CRLF into LF.
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out.append('M')
    for part in msg.walk():
        if part.is_multipart():
            continue
        # The stored payload: get_payload() would decode non-ASCII bytes by the charset.
        body = part._payload.encode('ascii', 'surrogateescape')
        fields = [part.get_content_type(), part.get_content_charset() or '-']
        fields = [f.encode('utf-8', 'surrogateescape') for f in fields] + [body]
        out.append(' '.join(f.hex() for f in fields))
print('\n'.join(out))
"#;

    /// A leaf as compared: media type, charset (`-` for none), body.
    type Compared = (String, String, Vec<u8>);

    fn python_leaves(messages: &[Vec<u8>]) -> Vec<Vec<Compared>> {
        use std::io::Write as _;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for message in messages {
            file.write_all(&(message.len() as u64).to_le_bytes())
                .unwrap();
            file.write_all(message).unwrap();
        }
        file.flush().unwrap();
        let output = std::process::Command::new("python3")
            .arg("-c")
            .arg(PYTHON_LEAVES)
            .arg(file.path())
            .output()
            .unwrap_or_else(|e| {
                panic!("this test needs python3 (its email package is the reference) on PATH: {e}")
            });
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "python3 failed: {stderr}");
        let mut all: Vec<Vec<Compared>> = Vec::new();
        for line in String::from_utf8(output.stdout).unwrap().lines() {
            if line == "M" {
                all.push(Vec::new());
                continue;
            }
            let fields: Vec<&str> = line.split(' ').collect();
            let [media_type, charset, body] = fields[..] else {
                panic!("bad python line {line:?}")
            };
            let text = |hex| String::from_utf8_lossy(&unhex(hex)).into_owned();
            all.last_mut()
                .unwrap()
                .push((text(media_type), text(charset), unhex(body)));
        }
        assert_eq!(
            all.len(),
            messages.len(),
            "python3 printed the wrong number of messages"
        );
        all
    }

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// `body` without one final line break, if it has one.
    fn without_final_line_break(body: &[u8]) -> &[u8] {
        let body = body.strip_suffix(b"\n").unwrap_or(body);
        body.strip_suffix(b"\r").unwrap_or(body)
    }

    /// Whether two lists of leaves agree. Bodies may differ in one final line break, on
    /// either side, and in nothing else: Python strips the line break before a delimiter
    /// from every non-multipart part, even at the end of the input (where the scanner keeps
    /// it: no delimiter follows, so it is content), but keeps it on a multipart that became
    /// a leaf (where the scanner drops it, RFC 2046 §5.1.1).
    fn agree(ours: &[Compared], python: &[Compared]) -> bool {
        ours.len() == python.len()
            && ours.iter().zip(python).all(|(a, b)| {
                let (a_body, b_body) = (a.2.as_slice(), b.2.as_slice());
                (&a.0, &a.1) == (&b.0, &b.1)
                    && (a_body == b_body
                        || without_final_line_break(a_body) == b_body
                        || a_body == without_final_line_break(b_body))
            })
    }

    fn scanned_leaves(raw: &[u8]) -> Vec<Compared> {
        scan_ok(raw)
            .into_iter()
            .map(|p| {
                let charset = p.charset.unwrap_or_else(|| "-".into());
                (p.media_type, charset, raw[p.body].to_vec())
            })
            .collect()
    }

    #[test]
    fn agrees_with_python_email_on_generated_messages() {
        let mut gen = Gen {
            rng: Rng(0x6d61_696c_7665_696c),
            out: Vec::new(),
            crlf: false,
        };
        let messages: Vec<Vec<u8>> = (0..500)
            .map(|_| {
                gen.out.clear();
                gen.top();
                gen.out.clone()
            })
            .collect();
        let expected = python_leaves(&messages);
        let (mut leaves, mut html, mut from_multipart, mut deep) = (0, 0, 0, 0);
        for (i, (raw, python)) in messages.iter().zip(&expected).enumerate() {
            let ours = scanned_leaves(raw);
            assert!(
                agree(&ours, python),
                "message {i}:\n{}\nours:   {ours:?}\npython: {python:?}",
                String::from_utf8_lossy(raw)
            );
            leaves += ours.len();
            html += ours.iter().filter(|l| renders_as_html(&l.0)).count();
            from_multipart += ours
                .iter()
                .filter(|l| l.0.starts_with("multipart/"))
                .count();
            deep += scan_ok(raw).iter().filter(|p| p.depth >= 3).count();
        }
        // The generator must keep producing the interesting cases.
        let counts = [leaves, html, from_multipart, deep];
        let minimums = [600, 250, 100, 30];
        assert!(
            counts.iter().zip(minimums).all(|(&c, min)| c >= min),
            "{counts:?}"
        );
    }

    #[test]
    fn random_input_never_panics_and_ranges_are_ordered() {
        let pieces: [&[u8]; 20] = [
            b"--",
            b"b",
            b"\r\n",
            b"\n",
            b"\r",
            b"Content-Type: multipart/mixed; boundary=b",
            b"Content-Type: message/rfc822",
            b"Content-Type: multipart/digest; boundary=\"b\"",
            b"Content-Transfer-Encoding: base64",
            b": ",
            b" ",
            b"\t",
            b"\"",
            b"(",
            b")",
            b";",
            b"\\",
            b"\xff",
            b"From ",
            b"x",
        ];
        let limits = ScanLimits {
            max_depth: 4,
            max_parts: 40,
        };
        let mut rng = Rng(0x5eed);
        for _ in 0..3000 {
            let raw: Vec<u8> = (0..rng.below(80))
                .flat_map(|_| pieces[rng.below(pieces.len())].to_vec())
                .collect();
            let Ok(parts) = scan(&raw, &limits) else {
                continue;
            };
            let mut end = 0;
            for p in &parts {
                let ordered = [
                    end,
                    p.header.start,
                    p.header.end,
                    p.body.start,
                    p.body.end,
                    raw.len(),
                ];
                assert!(
                    ordered.windows(2).all(|w| w[0] <= w[1]),
                    "{ordered:?} in {raw:?}"
                );
                assert!(p.message_depth <= p.depth && p.depth <= limits.max_depth);
                end = p.body.end;
            }
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(ScanError::NoHeaders.to_string(), "no header section found");
        assert_eq!(ScanError::TooDeep.to_string(), "mime parts nested too deep");
        assert_eq!(ScanError::TooManyParts.to_string(), "too many mime parts");
    }
}
