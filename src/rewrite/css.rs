//! CSS url rewriting for mailveil.
//!
//! This module owns everything that looks inside CSS: finding remote references (`url()`,
//! `image-set()` strings, `@font-face` sources, `@import` targets) in `<style>` content and
//! `style=""` attribute values, rewriting them as the caller decides, and reading the layout
//! hints used to spot tracking pixels. It does no I/O and no logging; policy (which URLs to
//! proxy, keep or drop) belongs to the caller.
//!
//! All scanning goes through cssparser's tokenizer, so comments, escapes and odd casing are
//! interpreted exactly as a browser would. Rewrites are recorded as byte ranges of the
//! original input and spliced in at the end, so untouched text is preserved byte-for-byte.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;

use cssparser::{CowRcStr, Delimiter, ParseError, Parser, ParserInput, SourcePosition, Token};

/// Deepest block nesting we descend into. Anything nested deeper is dropped from the output,
/// because leaving unexamined text in place could smuggle a URL past the filter, and
/// descending further would risk overflowing the stack on hostile input.
const MAX_DEPTH: usize = 64;

/// Error type for the parser closures; they never fail, it only satisfies cssparser's API.
type NoError<'i> = ParseError<'i, ()>;

/// Where a URL was found in CSS, so the caller can decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind {
    /// `url()` / `image-set()` etc. in an ordinary declaration (backgrounds, list-style, cursor, border-image, mask...).
    Image,
    /// `src:` descriptor inside `@font-face`.
    Font,
    /// Target of an `@import` rule.
    Import,
}

/// What the caller wants done with one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlAction {
    /// Leave the original bytes untouched.
    Keep,
    /// Replace the URL with this one (written as `url("...")`, escaped).
    Replace(String),
    /// Remove the reference: a `url()`/string becomes `none`; an `@import` rule is dropped whole.
    Remove,
}

/// Rewrites every URL reference in `css` (a stylesheet, i.e. `<style>` content, OR a declaration list,
/// i.e. a `style=""` attribute value -- the same function must handle both) by asking `decide` about each one.
/// Everything not touched is copied byte-for-byte from the input. Returns the new CSS.
///
/// `decide` is called once per reference, in source order. Blocks nested deeper than an
/// internal limit (64 levels) are emptied rather than examined.
pub fn rewrite_css<'a>(
    css: &'a str,
    decide: &mut dyn FnMut(&str, UrlKind) -> UrlAction,
) -> Cow<'a, str> {
    if !has_blocks_or_at_rules(css) || !may_contain_url(css) {
        return Cow::Borrowed(css);
    }
    let mut input = ParserInput::new(css);
    let mut parser = Parser::new(&mut input);
    let mut rewriter = Rewriter {
        decide,
        edits: Vec::new(),
    };
    rewriter.walk(&mut parser, 0, Context::plain(UrlKind::Image));
    if rewriter.edits.is_empty() {
        return Cow::Borrowed(css);
    }
    Cow::Owned(splice(css, &rewriter.edits))
}

/// Layout hints read from a declaration list (a `style` attribute), used to spot tracking pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StyleHints {
    /// `display:none`, `visibility:hidden`, or `opacity:0` present.
    pub hidden: bool,
    /// `width` in px if given as a plain px length or 0 (also `max-width:0`).
    pub width_px: Option<f32>,
    /// `height` likewise (also `max-height:0`).
    pub height_px: Option<f32>,
}

/// Reads [`StyleHints`] from a declaration list. Never fails; unknown input gives default hints.
///
/// Later declarations of the same property override earlier ones, as in the cascade;
/// `!important` is accepted but does not change precedence.
pub fn style_hints(declarations: &str) -> StyleHints {
    let mut input = ParserInput::new(declarations);
    let mut parser = Parser::new(&mut input);
    let mut hints = HintState::default();
    while !parser.is_exhausted() {
        let before = parser.position();
        let _ = parser.parse_until_after(Delimiter::Semicolon, |decl| {
            read_declaration(decl, &mut hints);
            Ok::<(), NoError<'_>>(())
        });
        // cssparser always consumes something here; guard anyway so garbage can't spin us.
        if parser.position() == before {
            break;
        }
    }
    hints.finish()
}

// ---------------------------------------------------------------------------------------------
// Fast path

/// Cheapest pre-check, for the many `style` attributes like `padding:0;color:#333`: every
/// edit the walker can record comes from a function or block (`url(`, `image-set(`,
/// `(`, `[`, `{`) or an at-rule (`@import`), and cssparser only starts those at a literal
/// `(`, `[`, `{` or `@` (an escaped one is part of a name). Without any of the four there
/// is nothing to rewrite, whatever the escapes.
fn has_blocks_or_at_rules(css: &str) -> bool {
    let bytes = css.as_bytes();
    memchr::memchr3(b'(', b'[', b'{', bytes).is_some() || memchr::memchr(b'@', bytes).is_some()
}

/// Cheap pre-check: a URL reference needs one of these words, or an escape that could spell
/// one (`u\72 l(`), so input without them cannot contain anything to rewrite.
fn may_contain_url(css: &str) -> bool {
    let bytes = css.as_bytes();
    bytes.iter().enumerate().any(|(i, byte)| {
        // Only slice when the lead byte matches; this loop runs over every byte.
        let rest = || bytes.get(i..).unwrap_or_default();
        match byte.to_ascii_lowercase() {
            b'\\' => true,
            b'u' => starts_with_ignore_case(rest(), b"url"),
            b'i' => {
                starts_with_ignore_case(rest(), b"image")
                    || starts_with_ignore_case(rest(), b"import")
            }
            b's' => starts_with_ignore_case(rest(), b"src("),
            _ => false,
        }
    })
}

fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

// ---------------------------------------------------------------------------------------------
// Token classification

/// How URLs found at the current nesting level are treated.
#[derive(Debug, Clone, Copy)]
struct Context {
    kind: UrlKind,
    /// Bare quoted strings are URLs here (directly inside `image-set()` and `image()`).
    strings_are_urls: bool,
}

impl Context {
    fn plain(kind: UrlKind) -> Self {
        Context {
            kind,
            strings_are_urls: false,
        }
    }
}

/// The at-rules that change how URLs are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtRule {
    Import,
    FontFace,
    /// `@namespace url(...)` names a namespace; nothing is fetched.
    Namespace,
    Other,
}

/// What one token means to the rewriter; owns only what it needs so the parser can move on.
enum Item<'i> {
    /// A complete URL token (unquoted `url(x)`, bad url, or a string where strings are URLs).
    Url(CowRcStr<'i>),
    /// `url(` / `src(` function whose argument is a quoted string.
    UrlFunction,
    /// Any other block or function; `closer` ends it, `strings_are_urls` applies inside.
    Block {
        closer: &'static str,
        curly: bool,
        strings_are_urls: bool,
    },
    AtRule(AtRule),
    Semicolon,
    Other,
}

fn classify<'i>(token: &Token<'i>, ctx: Context) -> Item<'i> {
    match token {
        Token::UnquotedUrl(url) | Token::BadUrl(url) => Item::Url(url.clone()),
        Token::QuotedString(url) if ctx.strings_are_urls => Item::Url(url.clone()),
        Token::Function(name) => classify_function(name),
        Token::ParenthesisBlock => plain_block(")", false),
        Token::SquareBracketBlock => plain_block("]", false),
        Token::CurlyBracketBlock => plain_block("}", true),
        Token::AtKeyword(name) => Item::AtRule(classify_at_rule(name)),
        Token::Semicolon => Item::Semicolon,
        _ => Item::Other,
    }
}

fn plain_block(closer: &'static str, curly: bool) -> Item<'static> {
    Item::Block {
        closer,
        curly,
        strings_are_urls: false,
    }
}

fn classify_function(name: &str) -> Item<'static> {
    // `src()` is the CSS Values 4 spelling of `url()` that also accepts `var()`.
    if name.eq_ignore_ascii_case("url") || name.eq_ignore_ascii_case("src") {
        return Item::UrlFunction;
    }
    let image_set = ["image-set", "-webkit-image-set", "image"]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f));
    Item::Block {
        closer: ")",
        curly: false,
        strings_are_urls: image_set,
    }
}

fn classify_at_rule(name: &str) -> AtRule {
    if name.eq_ignore_ascii_case("import") {
        AtRule::Import
    } else if name.eq_ignore_ascii_case("font-face") {
        AtRule::FontFace
    } else if name.eq_ignore_ascii_case("namespace") {
        AtRule::Namespace
    } else {
        AtRule::Other
    }
}

// ---------------------------------------------------------------------------------------------
// Rewriting

/// One replacement of a byte range of the original input.
struct Edit {
    range: Range<usize>,
    text: Cow<'static, str>,
}

/// Walks the token tree, asking `decide` about each URL and recording edits in source order.
struct Rewriter<'d> {
    decide: &'d mut dyn FnMut(&str, UrlKind) -> UrlAction,
    /// Sorted and non-overlapping by construction: we never record edits inside a range
    /// that is itself edited.
    edits: Vec<Edit>,
}

/// The end of an at-rule prelude and the first URL found in it.
struct Prelude<'i> {
    target: Option<(Range<usize>, CowRcStr<'i>)>,
    /// The prelude ended at a `{`, whose block is still to be consumed.
    opens_block: bool,
}

impl Rewriter<'_> {
    /// Visits every token of one nesting level (the whole input at depth 0).
    fn walk<'i>(&mut self, p: &mut Parser<'i, '_>, depth: usize, ctx: Context) {
        // Set by `@font-face`: its block (and everything inside) holds Font URLs.
        let mut font_face_pending = false;
        loop {
            let start = p.position();
            let item = match p.next_including_whitespace_and_comments() {
                Ok(token) => classify(token, ctx),
                Err(_) => return,
            };
            match item {
                Item::Url(url) => self.report(start, p.position(), &url, ctx.kind),
                Item::UrlFunction => self.url_function(p, start, ctx.kind),
                Item::Block {
                    closer,
                    curly,
                    strings_are_urls,
                } => {
                    let font = curly && std::mem::take(&mut font_face_pending);
                    let kind = if font { UrlKind::Font } else { ctx.kind };
                    let inner = Context {
                        kind,
                        strings_are_urls,
                    };
                    self.block(p, depth, inner, closer);
                }
                Item::AtRule(AtRule::Import) => self.import_rule(p, start, depth, ctx),
                Item::AtRule(AtRule::Namespace) => self.namespace_rule(p, depth, ctx),
                Item::AtRule(AtRule::FontFace) => font_face_pending = true,
                Item::Semicolon => font_face_pending = false,
                Item::AtRule(AtRule::Other) | Item::Other => {}
            }
        }
    }

    /// Descends into the block just opened, or empties it when it is nested too deeply.
    fn block(&mut self, p: &mut Parser<'_, '_>, depth: usize, ctx: Context, closer: &'static str) {
        if depth >= MAX_DEPTH {
            self.drop_block(p, closer);
            return;
        }
        let _ = p.parse_nested_block(|inner| {
            self.walk(inner, depth + 1, ctx);
            Ok::<(), NoError<'_>>(())
        });
    }

    /// Replaces the contents of the block just opened with nothing, keeping it closed so the
    /// surrounding tokens cannot fuse into something new (e.g. `\75 {…}rl(x)` into `url(x)`).
    fn drop_block(&mut self, p: &mut Parser<'_, '_>, closer: &'static str) {
        let inner_start = p.position();
        skip_block(p);
        self.push(inner_start, p.position(), Cow::Borrowed(closer));
    }

    /// Handles `url("…")` / `src("…")`, replacing the whole function when asked.
    fn url_function(&mut self, p: &mut Parser<'_, '_>, start: SourcePosition, kind: UrlKind) {
        if let Some(url) = read_url_function(p) {
            self.report(start, p.position(), &url, kind);
        }
    }

    /// Handles `@import`: the target is asked about as [`UrlKind::Import`]; `Remove` deletes
    /// the rule through its `;` (or its block, or the end of input).
    fn import_rule(
        &mut self,
        p: &mut Parser<'_, '_>,
        rule_start: SourcePosition,
        depth: usize,
        ctx: Context,
    ) {
        let prelude = scan_prelude(p);
        let Some((range, url)) = prelude.target else {
            // No url() or string: invalid CSS that browsers ignore, but a lenient client
            // might read `@import http://x/y.css;` anyway. Nothing worth keeping: drop it.
            if prelude.opens_block {
                skip_block(p);
            }
            return self.push(rule_start, p.position(), Cow::Borrowed(""));
        };
        match (self.decide)(&url, UrlKind::Import) {
            UrlAction::Keep => self.finish_prelude(p, prelude.opens_block, depth, ctx),
            UrlAction::Replace(new) => {
                self.edits.push(Edit {
                    range,
                    text: Cow::Owned(url_literal(&new)),
                });
                self.finish_prelude(p, prelude.opens_block, depth, ctx);
            }
            UrlAction::Remove => {
                if prelude.opens_block {
                    skip_block(p);
                }
                self.push(rule_start, p.position(), Cow::Borrowed(""));
            }
        }
    }

    /// `@namespace` URLs are identifiers, never fetched, so they are not reported.
    fn namespace_rule(&mut self, p: &mut Parser<'_, '_>, depth: usize, ctx: Context) {
        let prelude = scan_prelude(p);
        self.finish_prelude(p, prelude.opens_block, depth, ctx);
    }

    /// An at-rule block is invalid after `@import`/`@namespace`, but it is still examined:
    /// a lenient client might apply it.
    fn finish_prelude(
        &mut self,
        p: &mut Parser<'_, '_>,
        opens_block: bool,
        depth: usize,
        ctx: Context,
    ) {
        if opens_block {
            self.block(p, depth, Context::plain(ctx.kind), "}");
        }
    }

    /// Asks the caller about one URL token spanning `start..end` and records the answer.
    fn report(&mut self, start: SourcePosition, end: SourcePosition, url: &str, kind: UrlKind) {
        match (self.decide)(url, kind) {
            UrlAction::Keep => {}
            UrlAction::Replace(new) => self.push(start, end, Cow::Owned(url_literal(&new))),
            UrlAction::Remove => self.push(start, end, Cow::Borrowed("none")),
        }
    }

    fn push(&mut self, start: SourcePosition, end: SourcePosition, text: Cow<'static, str>) {
        self.edits.push(Edit {
            range: start.byte_index()..end.byte_index(),
            text,
        });
    }
}

/// Consumes the block just opened without looking inside. cssparser skips blocks with an
/// explicit stack, so this is safe at any nesting depth.
fn skip_block(p: &mut Parser<'_, '_>) {
    let _ = p.parse_nested_block(|_| Ok::<(), NoError<'_>>(()));
}

/// Reads the quoted-string argument of the `url(` / `src(` function just opened.
fn read_url_function<'i>(p: &mut Parser<'i, '_>) -> Option<CowRcStr<'i>> {
    let found = p.parse_nested_block(|inner| {
        let mut found = None;
        // Drain the whole argument list so cssparser sees the block as fully parsed.
        while let Ok(token) = inner.next_including_whitespace_and_comments() {
            if let (None, Token::QuotedString(url)) = (&found, token) {
                found = Some(url.clone());
            }
        }
        Ok::<_, NoError<'i>>(found)
    });
    found.ok().flatten()
}

/// Reads an at-rule prelude up to its `;`, its `{` or the end of input, remembering the
/// first URL or string (the `@import` / `@namespace` target).
fn scan_prelude<'i>(p: &mut Parser<'i, '_>) -> Prelude<'i> {
    // In a prelude a bare string names the target, like `url()` does.
    let ctx = Context {
        kind: UrlKind::Import,
        strings_are_urls: true,
    };
    let mut target = None;
    loop {
        let start = p.position();
        let found = match p.next_including_whitespace_and_comments() {
            Ok(token) => classify(token, ctx),
            Err(_) => break,
        };
        let url = match found {
            Item::Semicolon => break,
            Item::Block { curly: true, .. } => {
                return Prelude {
                    target,
                    opens_block: true,
                }
            }
            Item::Url(url) => Some(url),
            Item::UrlFunction => read_url_function(p),
            Item::Block { .. } => {
                // Consume now so the next token's start position is accurate.
                skip_block(p);
                None
            }
            Item::AtRule(_) | Item::Other => None,
        };
        if let (None, Some(url)) = (&target, url) {
            target = Some((start.byte_index()..p.position().byte_index(), url));
        }
    }
    Prelude {
        target,
        opens_block: false,
    }
}

/// Writes `url` as a CSS `url("…")` token. Besides what CSS requires (`"`, `\`, newlines),
/// control characters and `<`/`>` are hex-escaped so the result cannot end a `<style>`
/// element or confuse an HTML serializer.
fn url_literal(url: &str) -> String {
    let needs_escape = |b: u8| matches!(b, b'"' | b'\\' | b'\0'..=b'\x1f' | b'\x7f' | b'<' | b'>');
    let mut out = String::with_capacity(url.len() + 7);
    out.push_str("url(\"");
    let mut rest = url;
    // Runs without anything to escape (all of a proxy URL) are copied whole.
    while let Some(at) = rest.bytes().position(needs_escape) {
        // `at` is an ASCII byte, so both slices are on character boundaries.
        out.push_str(rest.get(..at).unwrap_or_default());
        let c = rest.as_bytes().get(at).copied().unwrap_or_default();
        if c == b'"' || c == b'\\' {
            out.push('\\');
            out.push(char::from(c));
        } else {
            // The trailing space terminates the hex escape; CSS swallows it.
            let _ = write!(out, "\\{c:x} ");
        }
        rest = rest.get(at + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    out.push_str("\")");
    out
}

/// Applies sorted, non-overlapping edits to `css`, copying everything else verbatim.
fn splice(css: &str, edits: &[Edit]) -> String {
    if edits.is_empty() {
        return css.to_owned();
    }
    let mut out = String::with_capacity(css.len() + edits.len() * 16);
    let mut copied = 0;
    for edit in edits {
        // Offsets come from the tokenizer and so are char boundaries; `get` keeps this
        // panic-free regardless, dropping (never leaking) text if that ever failed.
        out.push_str(css.get(copied..edit.range.start).unwrap_or_default());
        out.push_str(&edit.text);
        copied = edit.range.end;
    }
    out.push_str(css.get(copied..).unwrap_or_default());
    out
}

// ---------------------------------------------------------------------------------------------
// Style hints

/// Properties relevant to [`StyleHints`].
#[derive(Debug, Clone, Copy)]
enum HintProperty {
    Display,
    Visibility,
    Opacity,
    Width,
    Height,
    MaxWidth,
    MaxHeight,
}

const HINT_PROPERTIES: [(&str, HintProperty); 7] = [
    ("display", HintProperty::Display),
    ("visibility", HintProperty::Visibility),
    ("opacity", HintProperty::Opacity),
    ("width", HintProperty::Width),
    ("height", HintProperty::Height),
    ("max-width", HintProperty::MaxWidth),
    ("max-height", HintProperty::MaxHeight),
];

/// Per-property results; each is overwritten by a later declaration, like the cascade.
#[derive(Debug, Default)]
struct HintState {
    display_none: bool,
    visibility_hidden: bool,
    opacity_zero: bool,
    width: Option<f32>,
    height: Option<f32>,
    max_width_zero: bool,
    max_height_zero: bool,
}

impl HintState {
    fn apply(&mut self, property: HintProperty, value: &Token<'_>) {
        match property {
            HintProperty::Display => self.display_none = is_ident(value, &["none"]),
            // `collapse` hides non-table elements exactly like `hidden`.
            HintProperty::Visibility => {
                self.visibility_hidden = is_ident(value, &["hidden", "collapse"])
            }
            HintProperty::Opacity => self.opacity_zero = is_transparent(value),
            HintProperty::Width => self.width = px_length(value),
            HintProperty::Height => self.height = px_length(value),
            HintProperty::MaxWidth => self.max_width_zero = px_length(value) == Some(0.0),
            HintProperty::MaxHeight => self.max_height_zero = px_length(value) == Some(0.0),
        }
    }

    fn finish(&self) -> StyleHints {
        // A zero maximum wins over any width, since it caps the used size.
        let capped = |zero: bool, size: Option<f32>| if zero { Some(0.0) } else { size };
        StyleHints {
            hidden: self.display_none || self.visibility_hidden || self.opacity_zero,
            width_px: capped(self.max_width_zero, self.width),
            height_px: capped(self.max_height_zero, self.height),
        }
    }
}

/// Reads one `name: value` declaration (already delimited at `;`) into `hints`.
fn read_declaration(decl: &mut Parser<'_, '_>, hints: &mut HintState) {
    let Ok(name) = decl.expect_ident_cloned() else {
        return;
    };
    let Some(property) = hint_property(&name) else {
        return;
    };
    if decl.expect_colon().is_err() {
        return;
    }
    if let Some(value) = single_value(decl) {
        hints.apply(property, &value);
    }
}

fn hint_property(name: &str) -> Option<HintProperty> {
    HINT_PROPERTIES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|(_, property)| *property)
}

/// Returns the value if it is exactly one token, optionally followed by `!important`;
/// anything else is invalid (or too complex) for the properties we read.
fn single_value<'i>(decl: &mut Parser<'i, '_>) -> Option<Token<'i>> {
    let value = decl.next().ok()?.clone();
    if decl.is_exhausted() {
        return Some(value);
    }
    decl.expect_delim('!').ok()?;
    decl.expect_ident_matching("important").ok()?;
    decl.is_exhausted().then_some(value)
}

fn is_ident(token: &Token<'_>, names: &[&str]) -> bool {
    matches!(token, Token::Ident(ident) if names.iter().any(|n| ident.eq_ignore_ascii_case(n)))
}

/// `opacity` at or below zero (negative values clamp to 0), as a number or a percentage.
fn is_transparent(token: &Token<'_>) -> bool {
    match token {
        Token::Number { value, .. } => *value <= 0.0,
        Token::Percentage { unit_value, .. } => *unit_value <= 0.0,
        _ => false,
    }
}

/// A non-negative px length, or any zero length (`0`, `0em`, `0%` are all zero).
fn px_length(token: &Token<'_>) -> Option<f32> {
    match token {
        Token::Dimension { value, .. } if *value == 0.0 => Some(0.0),
        Token::Dimension { value, unit, .. } if unit.eq_ignore_ascii_case("px") && *value > 0.0 => {
            Some(*value)
        }
        Token::Number { value, .. }
        | Token::Percentage {
            unit_value: value, ..
        } if *value == 0.0 => Some(0.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `rewrite_css` with a fixed action, returning the output and every reported URL.
    fn run(css: &str, action: UrlAction) -> (String, Vec<(String, UrlKind)>) {
        let mut seen = Vec::new();
        let out = rewrite_css(css, &mut |url, kind| {
            seen.push((url.to_owned(), kind));
            action.clone()
        });
        (out.into_owned(), seen)
    }

    fn urls(css: &str) -> Vec<(String, UrlKind)> {
        let (out, seen) = run(css, UrlAction::Keep);
        assert_eq!(out, css, "keep must preserve input byte-for-byte");
        seen
    }

    fn images(list: &[&str]) -> Vec<(String, UrlKind)> {
        list.iter()
            .map(|u| (u.to_string(), UrlKind::Image))
            .collect()
    }

    fn proxied(css: &str) -> String {
        run(css, UrlAction::Replace("P".into())).0
    }

    #[test]
    fn no_urls_is_unchanged_via_fast_path() {
        let css = "p { color: red; /* hi */ }\n\t.a{margin:0}";
        assert!(!may_contain_url(css));
        assert_eq!(run(css, UrlAction::Remove), (css.to_owned(), vec![]));
    }

    #[test]
    fn fast_path_triggers_on_keywords_and_escapes() {
        for css in ["URL(x)", "a:ImAgE-set(", "@Import", "src(", "\\75 rl(x)"] {
            assert!(may_contain_url(css), "{css}");
        }
        assert!(!may_contain_url("ur l ima ge"));
    }

    #[test]
    fn without_blocks_or_at_rules_the_walker_has_nothing_to_do() {
        // What `has_blocks_or_at_rules` relies on, checked against the walker itself on
        // text built from every piece that matters to it except `(`, `[`, `{` and `@`.
        let pieces = [
            "url",
            "uRl",
            "\\75 rl",
            "\\",
            "image-set",
            "src",
            "import",
            "font-face",
            "\"a\"",
            "'b'",
            "x",
            ";",
            ":",
            " ",
            "/*",
            "*/",
            "}",
            "]",
            ")",
            "\n",
            "\\28",
            "\\40",
            "!",
        ];
        let mut seed = 0x2545_f491_u32;
        for _ in 0..2000 {
            let mut css = String::new();
            for _ in 0..12 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                css.push_str(pieces[(seed >> 16) as usize % pieces.len()]);
            }
            assert!(!has_blocks_or_at_rules(&css));
            let mut input = ParserInput::new(&css);
            let mut parser = Parser::new(&mut input);
            let mut asked = false;
            let mut decide = |_: &str, _: UrlKind| {
                asked = true;
                UrlAction::Remove
            };
            let mut rewriter = Rewriter {
                decide: &mut decide,
                edits: Vec::new(),
            };
            rewriter.walk(&mut parser, 0, Context::plain(UrlKind::Image));
            assert!(rewriter.edits.is_empty(), "{css}");
            assert!(!asked, "{css}");
        }
    }

    #[test]
    fn url_literal_escapes_what_could_end_the_token_or_the_element() {
        assert_eq!(
            url_literal("https://p.example/i/x?a=\"b\\c\n<d>\u{7f}\u{e9}"),
            "url(\"https://p.example/i/x?a=\\\"b\\\\c\\a \\3c d\\3e \\7f \u{e9}\")"
        );
        assert_eq!(url_literal(""), "url(\"\")");
    }

    #[test]
    fn keep_preserves_complex_input_byte_for_byte() {
        let css = "@media screen{ .a /*x*/ { background :\n url( a.png ) no-repeat ;}}\r\n\
                   .é→ { content: \"ü\"; list-style: URL('b') }  <!-- -->";
        assert_eq!(urls(css), images(&["a.png", "b"]));
    }

    #[test]
    fn style_attribute_declaration_list() {
        let css = "background:url(a);color:red";
        assert_eq!(urls(css), images(&["a"]));
        assert_eq!(proxied(css), "background:url(\"P\");color:red");
    }

    #[test]
    fn odd_case_and_whitespace() {
        assert_eq!(urls("a{b:URL(x)}"), images(&["x"]));
        assert_eq!(urls("a{b:Url(  y  )}"), images(&["y"]));
        assert_eq!(proxied("b:uRl(  y  ) z"), "b:url(\"P\") z");
    }

    #[test]
    fn escaped_function_name_is_unescaped() {
        assert_eq!(urls("b:u\\72 l(x)"), images(&["x"]));
        assert_eq!(urls("b:\\75\\52\\4c(\"q\")"), images(&["q"]));
        assert_eq!(proxied("b:u\\72 l(x);c:d"), "b:url(\"P\");c:d");
    }

    #[test]
    fn quoted_url_functions_are_replaced_whole() {
        assert_eq!(urls("b:url( \"x\" )"), images(&["x"]));
        assert_eq!(urls("b:url('x')"), images(&["x"]));
        assert_eq!(proxied("b:url( \"x\" ) 1px"), "b:url(\"P\") 1px");
        assert_eq!(proxied("b:url('x')"), "b:url(\"P\")");
    }

    #[test]
    fn escapes_inside_urls_are_unescaped() {
        assert_eq!(urls("b:url(a\\29 b)"), images(&["a)b"]));
        assert_eq!(urls("b:url(\"a\\\"b\")"), images(&["a\"b"]));
        assert_eq!(urls("b:url('h\\74tp')"), images(&["http"]));
    }

    #[test]
    fn comments_are_not_urls() {
        let css = "/* url(x) */ a { color: red /* background:url(y) */ }";
        assert_eq!(urls(css), vec![]);
        assert_eq!(proxied(css), css);
        assert_eq!(urls("a{/*url(x)*/b:url(z)}"), images(&["z"]));
    }

    #[test]
    fn ordinary_strings_are_not_urls() {
        assert_eq!(urls("a{content:\"http://x/\";font-family:'url'}"), vec![]);
        assert_eq!(urls("a{b:format(\"x.png\") c(\"y\")}"), vec![]);
    }

    #[test]
    fn image_set_strings_and_urls() {
        let css = "a{b:image-set(url(a) 1x, \"b.png\" 2x);c:-webkit-image-set('c' 1x)}";
        assert_eq!(urls(css), images(&["a", "b.png", "c"]));
        assert_eq!(
            proxied(css),
            "a{b:image-set(url(\"P\") 1x, url(\"P\") 2x);c:-webkit-image-set(url(\"P\") 1x)}"
        );
    }

    #[test]
    fn image_set_type_string_is_not_a_url() {
        assert_eq!(
            urls("b:image-set(\"a.avif\" type(\"image/avif\"))"),
            images(&["a.avif"])
        );
    }

    #[test]
    fn image_and_cross_fade() {
        assert_eq!(urls("b:image(\"x.png\")"), images(&["x.png"]));
        assert_eq!(urls("b:cross-fade(url(a), url(b))"), images(&["a", "b"]));
        assert_eq!(urls("b:src(\"s\")"), images(&["s"]));
    }

    #[test]
    fn nested_blocks_are_searched() {
        let css =
            "@media (min-width:1px){.x{background:url(a)}@supports (display:grid){.y{b:url(b)}}}\
                   .p{ .q{ &:hover{ c:url(c) } } } [d=url(e)]";
        assert_eq!(urls(css), images(&["a", "b", "c", "e"]));
    }

    #[test]
    fn font_face_sources_are_font_kind() {
        let css = "@font-face { font-family:F; src: url(a.woff2) format(\"woff2\"), local(Foo), local(\"Bar\") }\
                   .x{background:url(b)}";
        assert_eq!(
            urls(css),
            vec![
                ("a.woff2".into(), UrlKind::Font),
                ("b".into(), UrlKind::Image)
            ]
        );
        let nested = "@media print{@FONT-FACE{src:url(f)}}";
        assert_eq!(urls(nested), vec![("f".into(), UrlKind::Font)]);
    }

    #[test]
    fn import_variants_are_reported() {
        let css = "@import url(x.css);@import \"y.css\" screen;@IMPORT 'z'";
        let want: Vec<_> = ["x.css", "y.css", "z"]
            .iter()
            .map(|u| (u.to_string(), UrlKind::Import))
            .collect();
        assert_eq!(urls(css), want);
        assert_eq!(
            urls("@import url(\"q\") layer(a) supports(display:grid);"),
            vec![("q".into(), UrlKind::Import)]
        );
    }

    #[test]
    fn import_remove_drops_the_whole_rule() {
        let css = "@import url(x.css) print;\n@import \"y.css\";a{b:c}";
        assert_eq!(run(css, UrlAction::Remove).0, "\na{b:c}");
        assert_eq!(run("a{} @IMPORT 'x'", UrlAction::Remove).0, "a{} ");
        assert_eq!(
            run("@media x{@import 'y'}", UrlAction::Remove).0,
            "@media x{}"
        );
    }

    #[test]
    fn import_replace_touches_only_the_url() {
        let css = "@import 'x.css' screen;a{}";
        assert_eq!(proxied(css), "@import url(\"P\") screen;a{}");
        assert_eq!(
            proxied("@import url(x) layer(l);"),
            "@import url(\"P\") layer(l);"
        );
    }

    #[test]
    fn mixed_decisions_per_kind() {
        let css = "@import 'i';@font-face{src:url(f)}a{b:url(g)}";
        let out = rewrite_css(css, &mut |_, kind| match kind {
            UrlKind::Import => UrlAction::Remove,
            UrlKind::Font => UrlAction::Keep,
            UrlKind::Image => UrlAction::Replace("R".into()),
        });
        assert_eq!(out, "@font-face{src:url(f)}a{b:url(\"R\")}");
    }

    #[test]
    fn remove_turns_urls_into_none() {
        let css = "a{background:url(x) no-repeat, url( 'y' );b:image-set(\"z\" 1x)}";
        assert_eq!(
            run(css, UrlAction::Remove).0,
            "a{background:none no-repeat, none;b:image-set(none 1x)}"
        );
    }

    #[test]
    fn replacement_is_escaped() {
        let out = rewrite_css("b:url(x)", &mut |_, _| {
            UrlAction::Replace("a\"b\\c\nd</style>".into())
        });
        assert_eq!(out, "b:url(\"a\\\"b\\\\c\\a d\\3c /style\\3e \")");
        // The escaped form must read back as the original URL.
        assert_eq!(urls(&out), images(&["a\"b\\c\nd</style>"]));
    }

    #[test]
    fn bad_url_is_reported_raw() {
        assert_eq!(urls("b:url(http://t/a b)"), images(&["http://t/a b"]));
        assert_eq!(run("b:url(a b);c:d", UrlAction::Remove).0, "b:none;c:d");
    }

    #[test]
    fn namespace_is_not_a_fetch() {
        assert_eq!(
            urls("@namespace svg url(http://www.w3.org/2000/svg);a{b:url(x)}"),
            images(&["x"])
        );
    }

    #[test]
    fn unicode_around_edits_is_preserved() {
        assert_eq!(
            proxied("a{content:\"é→\";b:url(ü.png)}ß"),
            "a{content:\"é→\";b:url(\"P\")}ß"
        );
        assert_eq!(urls("b:url(ü.png)"), images(&["ü.png"]));
    }

    #[test]
    fn deep_parentheses_do_not_overflow_and_drop_hidden_urls() {
        let n = 100_000;
        let css = format!("a:url(top) {}url(deep){}", "(".repeat(n), ")".repeat(n));
        let (out, seen) = run(&css, UrlAction::Keep);
        assert_eq!(seen, images(&["top"]));
        assert!(!out.contains("deep"));
        assert!(out.starts_with("a:url(top) (((("));
        assert!(out.len() < 200);
    }

    #[test]
    fn deep_braces_do_not_overflow_and_drop_hidden_urls() {
        let n = 100_000;
        let css = format!(
            "{}a{{b:url(deep)}}{}.z{{c:url(after)}}",
            "{".repeat(n),
            "}".repeat(n)
        );
        let (out, seen) = run(&css, UrlAction::Keep);
        assert!(!out.contains("deep"));
        assert!(out.len() < 300);
        // The braces balance, so scanning resumes after the dropped block.
        assert_eq!(seen, images(&["after"]));
    }

    #[test]
    fn unterminated_deep_nesting_is_dropped_to_end() {
        let css = format!("{}url(x)", "[".repeat(100_000));
        let (out, seen) = run(&css, UrlAction::Keep);
        assert!(seen.is_empty());
        assert!(!out.contains("url"));
    }

    #[test]
    fn url_function_at_depth_limit_is_still_handled() {
        let css = format!(
            "{}url(\"x\"){}",
            "(".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        let (out, seen) = run(&css, UrlAction::Replace("P".into()));
        assert_eq!(seen, images(&["x"]));
        assert!(out.contains("url(\"P\")"));
    }

    #[test]
    fn dropped_block_cannot_fuse_neighbours_into_a_url() {
        let css = format!(
            "\\75{}{}rl(x)",
            "{".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        let (out, seen) = run(&css, UrlAction::Keep);
        assert!(seen.is_empty());
        assert_eq!(urls(&out), vec![]);
    }

    #[test]
    fn hints_sizes() {
        let h = style_hints("width:1px; HEIGHT: 1PX");
        assert_eq!(
            h,
            StyleHints {
                hidden: false,
                width_px: Some(1.0),
                height_px: Some(1.0)
            }
        );
        let h = style_hints("width: 0; height:0px");
        assert_eq!((h.width_px, h.height_px), (Some(0.0), Some(0.0)));
        assert_eq!(style_hints("width:50%;height:2em").width_px, None);
        assert_eq!(style_hints("width:-1px").width_px, None);
    }

    #[test]
    fn hints_max_sizes_and_cascade() {
        let h = style_hints("max-height:0px;height:100px;max-width:0;width:600px");
        assert_eq!((h.width_px, h.height_px), (Some(0.0), Some(0.0)));
        assert_eq!(style_hints("width:1px;width:auto").width_px, None);
        assert_eq!(
            style_hints("max-width:600px;width:10px").width_px,
            Some(10.0)
        );
        assert!(!style_hints("display:none;display:block").hidden);
    }

    #[test]
    fn hints_hidden() {
        for css in [
            "display : none !important",
            "visibility:hidden",
            "opacity:0",
            "opacity:0.0",
            "OPACITY: 0%",
            "color:red;/*x*/display:NONE",
            "dis\\70 lay:none",
        ] {
            assert!(style_hints(css).hidden, "{css}");
        }
        for css in [
            "display:block",
            "opacity:0.5",
            "display:none foo",
            "visibility:visible",
        ] {
            assert!(!style_hints(css).hidden, "{css}");
        }
    }

    #[test]
    fn hints_garbage_gives_defaults() {
        for css in [
            "",
            ";;;",
            "}{",
            "width",
            "width:",
            ":1px",
            "(((((",
            "width:1px)",
        ] {
            assert_eq!(style_hints(css), StyleHints::default(), "{css}");
        }
        assert_eq!(style_hints(&"{".repeat(100_000)), StyleHints::default());
        assert_eq!(style_hints("junk{;};width:3px").width_px, Some(3.0));
    }
}
