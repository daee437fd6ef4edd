//! The HTML rewrite engine: every reference that would make a client load something remote
//! is rewritten to a signed proxy URL (images and fonts) or removed (everything else).
//!
//! Built on `lol_html` (streaming; no DOM). One element handler looks at every element and
//! its attributes, one text handler collects `<style>` contents for [`crate::rewrite::css`], and one
//! comment handler rewrites the insides of MSO conditional comments (`<!--[if mso]>…`),
//! which `lol_html` rightly treats as opaque text but Outlook renders as HTML.
//!
//! Links the reader clicks (`a href`), `cid:` and `data:` images, text and layout are kept
//! as written. This module does no I/O and no logging; MIME handling is [`crate::rewrite::mime`]'s.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::OnceLock;

use lol_html::html_content::{Attribute, Comment, ContentType, Element, SourceLocation, TextChunk};
use lol_html::{
    doc_comments, ElementContentHandlers, HandlerResult, HtmlRewriter, MemorySettings, Selector,
    Settings,
};
use url::Url;

use crate::rewrite::css::{self, StyleHints, UrlAction, UrlKind};
use crate::rewrite::trackers::TrackerMode;
use crate::rewrite::trackers::TrackerRules;
use crate::sign::Signer;
use crate::weburl::WebUrl;

/// MSO comments and `<noscript>` nest rarely and never deeply; this bounds recursion on
/// hostile input.
const MAX_NESTED_DEPTH: usize = 4;
/// Upper bound on `lol_html`'s own buffers for one document.
const MAX_REWRITER_MEMORY: usize = 32 * 1024 * 1024;
/// Tracker hosts listed in the `X-Mailveil` header, so it stays one short line.
const MAX_REPORTED_HOSTS: usize = 8;
const SVG_NAMESPACE: &str = "http://www.w3.org/2000/svg";

/// Why a document could not be rewritten. The caller keeps the original.
#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    /// `lol_html` refused the input (e.g. its memory limit was reached).
    #[error("html rewriter: {0}")]
    Rewriter(String),
    /// The rewriter produced bytes that are not UTF-8 (cannot happen with UTF-8 input).
    #[error("html rewriter produced invalid utf-8")]
    Encoding,
}

/// What rewriting did, summed over every HTML document of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// References rewritten to the proxy.
    pub proxied: usize,
    /// References classified as trackers (blocked or proxied, depending on the mode).
    pub trackers: usize,
    /// Other loading references removed (stylesheets, frames, scripts, refreshes, bad URLs).
    pub removed: usize,
    /// HTML parts that could not be rewritten and were neutralised instead (shown as text,
    /// nothing loaded; see `rewrite::neutralise`).
    pub neutralised: usize,
    /// Hosts of the trackers found.
    pub tracker_hosts: BTreeSet<String>,
    /// Distinct remote URLs that were proxied: the prefetch work for this message.
    pub targets: BTreeSet<String>,
}

impl Report {
    /// Adds another document's counts to this one.
    pub fn merge(&mut self, other: Report) {
        self.proxied += other.proxied;
        self.trackers += other.trackers;
        self.removed += other.removed;
        self.neutralised += other.neutralised;
        self.tracker_hosts.extend(other.tracker_hosts);
        self.targets.extend(other.targets);
    }

    /// The value of the `X-Mailveil` header: counts, then tracker hosts (at most a few).
    pub fn header_value(&self) -> String {
        let mut value = format!(
            "proxied={}; trackers={}; removed={}",
            self.proxied, self.trackers, self.removed
        );
        if self.neutralised > 0 {
            value.push_str(&format!("; neutralised={}", self.neutralised));
        }
        if !self.tracker_hosts.is_empty() {
            let hosts: Vec<&str> = self
                .tracker_hosts
                .iter()
                .take(MAX_REPORTED_HOSTS)
                .map(String::as_str)
                .collect();
            value.push_str("; tracker-hosts=");
            value.push_str(&hosts.join(","));
            if self.tracker_hosts.len() > MAX_REPORTED_HOSTS {
                value.push_str(",...");
            }
        }
        value
    }
}

/// Rewrites HTML documents. Cheap to share between threads.
#[derive(Debug)]
pub struct Engine {
    signer: Signer,
    trackers: TrackerRules,
    mode: TrackerMode,
}

/// A rewritten document and what was done to it.
#[derive(Debug, Clone)]
pub struct Rewritten {
    /// The new HTML.
    pub html: String,
    /// Counts and targets.
    pub report: Report,
}

impl Engine {
    /// An engine signing with `signer` and classifying with `trackers`.
    pub fn new(signer: Signer, trackers: TrackerRules, mode: TrackerMode) -> Self {
        Self {
            signer,
            trackers,
            mode,
        }
    }

    /// The signer used for proxy URLs.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Rewrites one HTML document.
    ///
    /// # Errors
    /// [`HtmlError`] when `lol_html` refuses the input; the caller keeps the original.
    pub fn rewrite(&self, html: &str) -> Result<Rewritten, HtmlError> {
        rewrite_document(self, html, None, 0)
    }
}

/// Per-document state shared by the handlers.
struct State<'e> {
    engine: &'e Engine,
    /// The document being rewritten: tag and attribute names and values are read from it
    /// by their source locations instead of being copied out of `lol_html`.
    source: &'e str,
    /// The first `<base href>`, against which relative URLs resolve.
    base: Option<Url>,
    /// How deep inside MSO comments this document is.
    depth: usize,
    /// Style hints already read in this document, by raw `style` value: templated mail
    /// repeats the same inline styles on its images. SipHash, as for `memo`.
    style_memo: std::collections::HashMap<String, StyleHints>,
    /// Scratch space for the relevant attributes of one element, reused across elements.
    attrs: Vec<(Cow<'e, str>, Cow<'e, str>)>,
    /// Text of the raw-text element (`<style>`, `<noscript>`…) being collected; they cannot
    /// nest, so one buffer serves all.
    raw_text: String,
    report: Report,
    /// Image references already decided in this document, without and with the
    /// tracking-pixel hint; cleared when `<base>` changes how references resolve.
    /// SipHash on purpose: the keys are chosen by the sender, and a hasher whose collisions
    /// can be crafted would let one message make this quadratic.
    memo: [std::collections::HashMap<String, Seen>; 2],
}

/// A remembered decision and the counts it added.
#[derive(Clone)]
struct Seen {
    disposition: Disposition,
    proxied: bool,
    tracker: bool,
    removed: bool,
}

/// How a reference resolved.
enum Resolved<'r> {
    /// Nothing remote: relative, fragment, `cid:`, an image `data:` URL, or already proxied.
    Local,
    /// An http(s) URL.
    Remote(Remote<'r>),
    /// Something that must not load: another scheme, a non-image `data:` URL, unparsable.
    Bad,
}

/// A remote reference's URL: parsed, or already in the form parsing would give it (then
/// not parsed at all, see [`WebUrl::canonical`]).
enum Remote<'r> {
    Parsed(Url),
    Canonical(WebUrl<'r>),
}

impl Remote<'_> {
    fn web(&self) -> WebUrl<'_> {
        match self {
            Remote::Parsed(url) => WebUrl::from(url),
            Remote::Canonical(web) => *web,
        }
    }
}

/// What to do with one attribute value or URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Disposition {
    Keep,
    Replace(String),
    Remove,
}

/// The image memo, sized for the document up front: growing it from empty rehashes every
/// key (SipHash over a whole URL) several times over. About one distinct reference per
/// 512 bytes of markup is typical of newsletters.
fn memo_for(source: &str) -> std::collections::HashMap<String, Seen> {
    std::collections::HashMap::with_capacity((source.len() / 512).min(4096))
}

impl<'e> State<'e> {
    fn new(engine: &'e Engine, source: &'e str, base: Option<Url>, depth: usize) -> Self {
        Self {
            engine,
            source,
            base,
            depth,
            style_memo: Default::default(),
            attrs: Vec::new(),
            raw_text: String::new(),
            report: Report::default(),
            memo: [memo_for(source), Default::default()],
        }
    }

    fn resolve<'r>(&self, raw: &'r str) -> Resolved<'r> {
        let s = raw.trim_matches(|c: char| c.is_ascii_whitespace());
        if s.is_empty() || s.starts_with('#') || s.starts_with(self.engine.signer.prefix()) {
            return Resolved::Local;
        }
        // An absolute http(s) URL resolves the same with or without a base.
        if let Some(url) = WebUrl::canonical(s) {
            return Resolved::Remote(Remote::Canonical(url));
        }
        let parsed = match &self.base {
            Some(base) => base.join(s),
            None => Url::parse(s),
        };
        match parsed {
            Ok(url) => classify_scheme(url),
            Err(url::ParseError::RelativeUrlWithoutBase) => resolve_relative(s),
            Err(_) => Resolved::Bad,
        }
    }

    /// An image or font reference: proxied, kept, or removed (trackers in block mode).
    /// `tiny` says the markup around it looks like a tracking pixel.
    fn image(&mut self, raw: &str, tiny: bool) -> Disposition {
        let memo = &self.memo[usize::from(tiny)];
        if let Some(seen) = memo.get(raw) {
            // Newsletters repeat the same images (spacers, logos, srcset entries): replay
            // the counts, skip the parse and the MAC.
            let seen = seen.clone();
            self.report.proxied += usize::from(seen.proxied);
            self.report.trackers += usize::from(seen.tracker);
            self.report.removed += usize::from(seen.removed);
            return seen.disposition;
        }
        let before = (
            self.report.proxied,
            self.report.trackers,
            self.report.removed,
        );
        let disposition = match self.resolve(raw) {
            Resolved::Local => Disposition::Keep,
            Resolved::Bad => {
                self.report.removed += 1;
                Disposition::Remove
            }
            Resolved::Remote(url) => self.remote_image(url, tiny),
        };
        let seen = Seen {
            disposition: disposition.clone(),
            proxied: self.report.proxied > before.0,
            tracker: self.report.trackers > before.1,
            removed: self.report.removed > before.2,
        };
        self.memo[usize::from(tiny)].insert(raw.to_owned(), seen);
        disposition
    }

    fn remote_image(&mut self, remote: Remote<'_>, tiny: bool) -> Disposition {
        let url = remote.web();
        let by_rule = self.engine.trackers.classify(url).map(|m| m.host);
        let tracker_host = by_rule.or_else(|| tiny.then(|| url.host().to_owned()));
        if let Some(host) = tracker_host {
            self.report.trackers += 1;
            self.report.tracker_hosts.insert(host);
            if self.engine.mode == TrackerMode::Block {
                return Disposition::Remove;
            }
        }
        self.report.proxied += 1;
        let signed = self.engine.signer.sign(url);
        self.report.targets.insert(url.as_str().to_owned());
        Disposition::Replace(signed)
    }

    /// The layout hints of a raw `style` value (entities not yet decoded).
    fn style_hints(&mut self, raw: &str) -> StyleHints {
        if let Some(hints) = self.style_memo.get(raw) {
            return *hints;
        }
        let hints = css::style_hints(&decode_entities(raw));
        self.style_memo.insert(raw.to_owned(), hints);
        hints
    }

    /// A reference that would load something we do not proxy: removed unless local.
    fn other_load(&mut self, raw: &str) -> Disposition {
        match self.resolve(raw) {
            Resolved::Local => Disposition::Keep,
            Resolved::Remote(_) | Resolved::Bad => {
                self.report.removed += 1;
                Disposition::Remove
            }
        }
    }

    /// Rewrites CSS (a stylesheet or a declaration list).
    fn css<'t>(&mut self, text: &'t str) -> std::borrow::Cow<'t, str> {
        css::rewrite_css(text, &mut |url, kind| match kind {
            UrlKind::Import => {
                self.report.removed += 1;
                UrlAction::Remove
            }
            UrlKind::Image | UrlKind::Font => match self.image(url, false) {
                Disposition::Keep => UrlAction::Keep,
                Disposition::Replace(u) => UrlAction::Replace(u),
                Disposition::Remove => UrlAction::Remove,
            },
        })
    }

    /// Rewrites a `srcset` value candidate by candidate, keeping descriptors. The kept
    /// candidates are written as `url descriptors`, joined by `, `.
    fn srcset(&mut self, value: &str, tiny: bool) -> Disposition {
        let mut changed = false;
        let mut kept = 0usize;
        let mut out = String::new();
        for (url, descriptors) in parse_srcset(value) {
            let replaced;
            let url = match self.image(url, tiny) {
                Disposition::Keep => url,
                Disposition::Replace(new) => {
                    changed = true;
                    replaced = new;
                    replaced.as_str()
                }
                Disposition::Remove => {
                    changed = true;
                    continue;
                }
            };
            if kept > 0 {
                out.push_str(", ");
            } else {
                // Signed URLs are longer than the originals.
                out.reserve(value.len() * 2);
            }
            kept += 1;
            out.push_str(url);
            if !descriptors.is_empty() {
                out.push(' ');
                out.push_str(descriptors);
            }
        }
        match (changed, kept) {
            (false, _) => Disposition::Keep,
            (true, 0) => Disposition::Remove,
            (true, _) => Disposition::Replace(out),
        }
    }
}

fn classify_scheme(url: Url) -> Resolved<'static> {
    match url.scheme() {
        "http" | "https" => Resolved::Remote(Remote::Parsed(url)),
        "cid" | "mid" => Resolved::Local,
        "data" if is_image_data_url(url.path()) => Resolved::Local,
        _ => Resolved::Bad,
    }
}

/// A relative reference with no base: local unless it is protocol-relative (`//host/…`),
/// which browsers resolve against the page's scheme; we assume https.
fn resolve_relative(s: &str) -> Resolved<'static> {
    let b = s.as_bytes();
    let is_slash = |c: u8| c == b'/' || c == b'\\';
    if b.len() >= 2 && is_slash(b[0]) && is_slash(b[1]) {
        return match Url::parse(&format!("https:{s}")) {
            Ok(url) => classify_scheme(url),
            Err(_) => Resolved::Bad,
        };
    }
    Resolved::Local
}

/// `data:image/png;base64,…` keeps; `data:text/html,…` and friends do not.
fn is_image_data_url(path: &str) -> bool {
    let media = path.trim_start().get(..6).unwrap_or("");
    media.eq_ignore_ascii_case("image/")
}

/// Splits a `srcset` value into (url, descriptors) candidates, following the HTML
/// standard's rules closely enough for rewriting: a URL is a run of non-whitespace
/// (trailing commas end the candidate), descriptors run to the next comma outside parens.
fn parse_srcset(value: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            return out;
        }
        // Byte scans: every delimiter here is ASCII, so each split is on a char boundary.
        let url_end = rest
            .bytes()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let (url, after) = rest.split_at(url_end);
        if url.ends_with(',') {
            out.push((url.trim_end_matches(','), ""));
            rest = after;
            continue;
        }
        let desc_end = descriptors_end(after);
        let (descriptors, after) = after.split_at(desc_end);
        out.push((url, descriptors.trim()));
        rest = after;
    }
}

fn descriptors_end(s: &str) -> usize {
    let mut depth = 0usize;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => return i,
            _ => {}
        }
    }
    s.len()
}

/// How `lol_html` treats markup whose parsing context it cannot know without a DOM.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parsing {
    /// Refuse ambiguous markup (`lol_html`'s strict mode).
    Strict,
    /// Carry on through ambiguous markup, and also rewrite the text of every raw-text
    /// element as markup, so that whichever way a browser resolves the ambiguity, no
    /// reference it would load is left behind.
    Lenient,
}

/// Rewrites a document (or a fragment from a comment), strictly first; ambiguous markup,
/// which `lol_html` refuses in strict mode, gets a second, lenient pass.
fn rewrite_document(
    engine: &Engine,
    html: &str,
    base: Option<Url>,
    depth: usize,
) -> Result<Rewritten, HtmlError> {
    let mut last_error = None;
    for parsing in [Parsing::Strict, Parsing::Lenient] {
        let state = RefCell::new(State::new(engine, html, base.clone(), depth));
        match run_rewriter(html, &state, parsing) {
            Ok(html) => {
                return Ok(Rewritten {
                    html,
                    report: state.into_inner().report,
                })
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or(HtmlError::Encoding))
}

/// The selectors of [`run_rewriter`]'s handlers, parsed once: every document (and every
/// MSO comment, which is rewritten as a document of its own) would parse them again.
struct Selectors {
    every_element: Selector,
    style: Selector,
    /// Raw-text elements whose text a client may render as markup (see [`Parsing`]).
    fallback_strict: Selector,
    fallback_lenient: Selector,
}

fn selectors() -> &'static Selectors {
    static SELECTORS: OnceLock<Selectors> = OnceLock::new();
    SELECTORS.get_or_init(|| {
        // Constant, valid selectors: `run_rewriter` runs on every test document, so a typo
        // here fails every test rather than a message.
        #[allow(clippy::expect_used)]
        let parse = |s: &str| s.parse::<Selector>().expect("constant selector parses");
        Selectors {
            every_element: parse("*"),
            style: parse("style"),
            fallback_strict: parse("noscript, noembed, noframes"),
            fallback_lenient: parse("noscript, noembed, noframes, xmp, textarea, title, plaintext"),
        }
    })
}

/// Runs `lol_html` over `html` with our handlers.
fn run_rewriter(
    html: &str,
    state: &RefCell<State<'_>>,
    parsing: Parsing,
) -> Result<String, HtmlError> {
    let mut out = Vec::with_capacity(html.len() + html.len() / 4);
    let selectors = selectors();
    let fallback = match parsing {
        Parsing::Strict => &selectors.fallback_strict,
        Parsing::Lenient => &selectors.fallback_lenient,
    };
    let settings = Settings::new()
        .append_element_content_handler((
            Cow::Borrowed(&selectors.every_element),
            ElementContentHandlers::default()
                .element(|el: &mut Element<'_, '_>| on_element(state, el)),
        ))
        .append_element_content_handler((
            Cow::Borrowed(&selectors.style),
            ElementContentHandlers::default()
                .text(|chunk: &mut TextChunk<'_>| on_style_text(state, chunk)),
        ))
        .append_element_content_handler((
            Cow::Borrowed(fallback),
            ElementContentHandlers::default()
                .text(|chunk: &mut TextChunk<'_>| on_fallback_text(state, chunk)),
        ))
        .append_document_content_handler(doc_comments!(|c| on_comment(state, c)))
        .with_strict(parsing == Parsing::Strict)
        .with_memory_settings(
            MemorySettings::new().with_max_allowed_memory_usage(MAX_REWRITER_MEMORY),
        );
    let mut rewriter = HtmlRewriter::new(settings, |chunk: &[u8]| out.extend_from_slice(chunk));
    rewriter
        .write(html.as_bytes())
        .and_then(|()| rewriter.end())
        .map_err(|e| HtmlError::Rewriter(e.to_string()))?;
    String::from_utf8(out).map_err(|_| HtmlError::Encoding)
}

/// Elements removed whole, content included: they load a document or run code.
fn removed_with_content(tag: &str) -> bool {
    matches!(
        tag,
        "script" | "iframe" | "frame" | "embed" | "applet" | "portal" | "fencedframe"
    )
}

fn on_element(state: &RefCell<State<'_>>, el: &mut Element<'_, '_>) -> HandlerResult {
    let mut st = state.borrow_mut();
    let tag = tag_name(st.source, el);
    if removed_with_content(&tag) {
        st.report.removed += 1;
        el.remove();
        return Ok(());
    }
    match &*tag {
        "object" => {
            // Its fallback content is ordinary markup, rewritten like the rest.
            st.report.removed += 1;
            el.remove_and_keep_content();
            return Ok(());
        }
        "base" => return on_base(&mut st, el),
        "meta" => return on_meta(&mut st, el),
        "link" => return on_link(&mut st, el),
        "set" | "animate" if animates_reference(el) => {
            st.report.removed += 1;
            el.remove();
            return Ok(());
        }
        _ => {}
    }
    if el.attributes().is_empty() {
        return Ok(());
    }
    rewrite_attributes(&mut st, el, &tag)
}

/// Remembers the first `<base href>` for resolving, then drops the element so the client
/// resolves nothing against a remote base.
fn on_base(st: &mut State<'_>, el: &mut Element<'_, '_>) -> HandlerResult {
    if st.base.is_none() {
        if let Some(href) = el.get_attribute("href") {
            if let Ok(url) = Url::parse(decode_entities(&href).trim()) {
                if matches!(url.scheme(), "http" | "https") {
                    st.base = Some(url);
                    st.memo = [memo_for(st.source), Default::default()];
                }
            }
        }
    }
    el.remove();
    Ok(())
}

fn on_meta(st: &mut State<'_>, el: &mut Element<'_, '_>) -> HandlerResult {
    let refresh = el
        .get_attribute("http-equiv")
        .is_some_and(|v| decode_entities(&v).trim().eq_ignore_ascii_case("refresh"));
    if refresh {
        st.report.removed += 1;
        el.remove();
    }
    Ok(())
}

/// Icons are images and are proxied; every other `<link>` that points somewhere
/// (stylesheets, preloads, prefetches, imports, manifests) is removed.
fn on_link(st: &mut State<'_>, el: &mut Element<'_, '_>) -> HandlerResult {
    let Some(href) = el.get_attribute("href") else {
        return Ok(());
    };
    let rel = decode_entities(&el.get_attribute("rel").unwrap_or_default()).to_ascii_lowercase();
    let href = decode_entities(&href);
    let is_icon = rel.split_ascii_whitespace().any(|t| t.contains("icon"));
    if !is_icon {
        if !matches!(st.resolve(&href), Resolved::Local) || rel.contains("stylesheet") {
            st.report.removed += 1;
            el.remove();
        }
        return Ok(());
    }
    el.remove_attribute("imagesrcset");
    match st.image(&href, false) {
        Disposition::Keep => Ok(()),
        Disposition::Replace(new) => set_attribute(el, "href", &new),
        Disposition::Remove => {
            el.remove();
            Ok(())
        }
    }
}

/// SVG `<set>`/`<animate>` can point an `href` at a remote resource after load.
fn animates_reference(el: &Element<'_, '_>) -> bool {
    el.get_attribute("attributename").is_some_and(|name| {
        let name = name.trim().to_ascii_lowercase();
        matches!(name.as_str(), "href" | "xlink:href" | "src" | "style")
    })
}

/// The attributes of one element, with the decisions that need the element's context.
fn rewrite_attributes(st: &mut State<'_>, el: &mut Element<'_, '_>, tag: &str) -> HandlerResult {
    let svg = el.namespace_uri() == SVG_NAMESPACE;
    let has_base = st.base.is_some();
    let source = st.source;
    // Only the attributes that can matter are looked at further: most attributes of a
    // newsletter (class, align, width, cellpadding…) never do, and this runs per element,
    // so the list goes into a buffer kept across elements.
    let mut attrs = std::mem::take(&mut st.attrs);
    attrs.extend(el.attributes().iter().filter_map(|a| {
        let name = attribute_name(source, a);
        is_relevant(&name, tag, svg, has_base).then(|| (name, attribute_value(source, a)))
    }));
    let result = rewrite_relevant(st, el, tag, svg, &attrs);
    attrs.clear();
    st.attrs = attrs;
    result
}

/// Rewrites the `attrs` of `el` that [`is_relevant`] picked.
fn rewrite_relevant(
    st: &mut State<'_>,
    el: &mut Element<'_, '_>,
    tag: &str,
    svg: bool,
    attrs: &[(Cow<'_, str>, Cow<'_, str>)],
) -> HandlerResult {
    if attrs.is_empty() {
        return Ok(());
    }
    let tiny = tag == "img" && looks_like_pixel(attrs, |style| st.style_hints(style));
    for (name, raw) in attrs {
        let name: &str = name;
        let value = decode_entities(raw);
        let disposition = match name {
            n if n.starts_with("on") => Disposition::Remove,
            "src" | "lowsrc" | "dynsrc" => match tag {
                "video" | "audio" | "source" | "track" => st.other_load(&value),
                _ => st.image(&value, tiny),
            },
            "srcset" => st.srcset(&value, tiny),
            "background" | "poster" | "icon" => st.image(&value, false),
            "style" => replace_if_changed(&value, st.css(&value)),
            "href" | "xlink:href" if svg => svg_href(st, tag, &value),
            "href" if matches!(tag, "a" | "area") => absolute_link(st, &value),
            "ping" | "manifest" => st.other_load(&value),
            n if svg && is_svg_paint(n) && contains_ignore_case(&value, "url(") => {
                replace_if_changed(&value, st.css(&value))
            }
            _ => Disposition::Keep,
        };
        if tag == "img" && name == "src" && disposition == Disposition::Remove {
            // A blocked pixel goes entirely, so no broken-image frame is left behind.
            el.remove();
            return Ok(());
        }
        match disposition {
            Disposition::Keep => {}
            Disposition::Replace(new) => set_attribute(el, name, &new)?,
            Disposition::Remove => el.remove_attribute(name),
        }
    }
    Ok(())
}

/// The element's tag name, lowercased, read from the source when it is plain ASCII.
/// `lol_html`'s [`Element::tag_name`] allocates and decodes a new `String` for every
/// element; this borrows unless the name has capitals or anything unusual in it.
fn tag_name<'s>(source: &'s str, el: &Element<'_, '_>) -> Cow<'s, str> {
    let start = el.source_location().bytes().start + 1;
    let name = source
        .get(start - 1..start)
        .filter(|open| *open == "<")
        .and_then(|_| source.get(start..))
        .map(|rest| {
            let is_end = |c: char| matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ' | '/' | '>');
            rest.find(is_end).map_or(rest, |end| &rest[..end])
        })
        .filter(|name| {
            let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b':';
            !name.is_empty() && name.bytes().all(plain)
        });
    let found = match name {
        Some(name) if name.bytes().any(|b| b.is_ascii_uppercase()) => {
            Cow::Owned(name.to_ascii_lowercase())
        }
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(el.tag_name()),
    };
    debug_assert_eq!(found, el.tag_name());
    found
}

/// An attribute's name, lowercased, borrowed from the source when it is plain ASCII.
fn attribute_name<'s>(source: &'s str, attr: &Attribute<'_>) -> Cow<'s, str> {
    let found = match from_source(source, attr.name_source_location()) {
        Some(name) if !name.is_ascii() => Cow::Owned(attr.name()),
        Some(name) if name.bytes().any(|b| b.is_ascii_uppercase()) => {
            Cow::Owned(name.to_ascii_lowercase())
        }
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(attr.name()),
    };
    debug_assert_eq!(found, attr.name());
    found
}

/// An attribute's raw value (entities not decoded), borrowed from the source. A value that
/// starts with a byte-order mark is left to `lol_html`, whose decoder drops it.
fn attribute_value<'s>(source: &'s str, attr: &Attribute<'_>) -> Cow<'s, str> {
    let found = match from_source(source, attr.value_source_location()) {
        Some(value) if !value.starts_with('\u{feff}') => Cow::Borrowed(value),
        _ => Cow::Owned(attr.value()),
    };
    debug_assert_eq!(found, attr.value());
    found
}

fn from_source(source: &str, location: Option<SourceLocation>) -> Option<&str> {
    source.get(location?.bytes())
}

/// Attributes that can load something (or that pixel detection reads).
fn is_relevant(name: &str, tag: &str, svg: bool, has_base: bool) -> bool {
    match name {
        "src" | "lowsrc" | "dynsrc" | "srcset" | "background" | "poster" | "icon" | "style"
        | "ping" | "manifest" => true,
        "href" | "xlink:href" => svg || (has_base && matches!(tag, "a" | "area")),
        "width" | "height" => tag == "img",
        n if n.starts_with("on") => true,
        n => svg && is_svg_paint(n),
    }
}

/// SVG presentation attributes that take a `url()` reference.
fn is_svg_paint(name: &str) -> bool {
    matches!(
        name,
        "fill"
            | "stroke"
            | "filter"
            | "mask"
            | "clip-path"
            | "marker-start"
            | "marker-mid"
            | "marker-end"
            | "cursor"
    )
}

fn svg_href(st: &mut State<'_>, tag: &str, value: &str) -> Disposition {
    match tag {
        "a" => Disposition::Keep,
        "image" | "feimage" => st.image(value, false),
        _ => st.other_load(value),
    }
}

/// With `<base href>` gone, a relative link must be made absolute to keep pointing where
/// the sender meant. Links are followed only when clicked, so they are not proxied.
fn absolute_link(st: &State<'_>, value: &str) -> Disposition {
    let Some(base) = &st.base else {
        return Disposition::Keep;
    };
    let v = value.trim();
    if v.is_empty() || v.starts_with('#') || Url::parse(v).is_ok() {
        return Disposition::Keep;
    }
    match base.join(v) {
        Ok(url) => Disposition::Replace(url.into()),
        Err(_) => Disposition::Keep,
    }
}

fn replace_if_changed(old: &str, new: std::borrow::Cow<'_, str>) -> Disposition {
    match new {
        std::borrow::Cow::Owned(new) if new != old => Disposition::Replace(new),
        _ => Disposition::Keep,
    }
}

/// `lol_html` escapes quotes in values it writes but not `&`, so a decoded `&` would be
/// read back as the start of an entity; escape it first.
fn set_attribute(el: &mut Element<'_, '_>, name: &str, value: &str) -> HandlerResult {
    if value.contains('&') {
        el.set_attribute(name, &value.replace('&', "&amp;"))?;
    } else {
        el.set_attribute(name, value)?;
    }
    Ok(())
}

/// Attribute values arrive as written; entities (`&#104;ttp`, `&amp;`) are decoded as the
/// browser would before the URL is looked at.
fn decode_entities(raw: &str) -> std::borrow::Cow<'_, str> {
    if raw.contains('&') {
        htmlize::unescape_attribute(raw)
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// ASCII case-insensitive substring test. Runs over whole comments and attribute values,
/// so it jumps between candidate first bytes with `memchr` instead of comparing at every
/// position.
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (hay, needle) = (haystack.as_bytes(), needle.as_bytes());
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let mut from = 0;
    while let Some(found) = hay
        .get(from..)
        .and_then(|h| memchr::memchr2(lower, upper, h))
    {
        let at = from + found;
        let candidate = hay.get(at + 1..at + 1 + rest.len());
        if candidate.is_some_and(|c| c.eq_ignore_ascii_case(rest)) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Markup hints of a tracking pixel: a 0 or 1 pixel size, or hidden by CSS.
/// `style_hints` reads a raw `style` value.
fn looks_like_pixel(
    attrs: &[(Cow<'_, str>, Cow<'_, str>)],
    style_hints: impl FnOnce(&str) -> StyleHints,
) -> bool {
    let get = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_ref());
    let width = get("width").and_then(parse_pixels);
    let height = get("height").and_then(parse_pixels);
    let hints = get("style").map(style_hints).unwrap_or_default();
    let width = hints.width_px.or(width);
    let height = hints.height_px.or(height);
    let tiny = |v: Option<f32>| v.is_some_and(|v| v <= 1.0);
    let zero = |v: Option<f32>| v.is_some_and(|v| v <= 0.0);
    hints.hidden || (tiny(width) && tiny(height)) || zero(width) || zero(height)
}

/// `1`, `1px`, ` 0 ` → pixels; percentages and junk → None.
fn parse_pixels(value: &str) -> Option<f32> {
    let v = value.trim();
    let v = v.strip_suffix("px").unwrap_or(v).trim();
    v.parse::<f32>().ok().filter(|n| n.is_finite())
}

fn on_style_text(state: &RefCell<State<'_>>, chunk: &mut TextChunk<'_>) -> HandlerResult {
    let mut st = state.borrow_mut();
    st.raw_text.push_str(chunk.as_str());
    if !chunk.last_in_text_node() {
        chunk.remove();
        return Ok(());
    }
    let text = std::mem::take(&mut st.raw_text);
    let rewritten = st.css(&text);
    chunk.replace(&rewritten, ContentType::Html);
    Ok(())
}

/// Rewrites the inside of `<!--[if …]> … <![endif]-->`, which Outlook renders as HTML
/// (VML `v:fill`, `v:image`, `v:imagedata` backgrounds live there). Other comments are
/// inert in every client and are left alone.
fn on_comment(state: &RefCell<State<'_>>, c: &mut Comment<'_>) -> HandlerResult {
    let text = c.text();
    if !is_conditional(&text) || !may_reference(&text) {
        return Ok(());
    }
    match rewrite_nested(state, &text).filter(|r| c.set_text(r).is_ok()) {
        Some(_) => {}
        None => {
            // Could not rewrite it safely: drop it rather than leave remote references.
            state.borrow_mut().report.removed += 1;
            c.remove();
        }
    }
    Ok(())
}

/// `<noscript>`, `<noembed>` and `<noframes>` hold raw text for `lol_html` (as for a
/// browser with scripting on), but a client with scripting off renders it as HTML.
fn on_fallback_text(state: &RefCell<State<'_>>, chunk: &mut TextChunk<'_>) -> HandlerResult {
    let text = {
        let mut st = state.borrow_mut();
        st.raw_text.push_str(chunk.as_str());
        if !chunk.last_in_text_node() {
            chunk.remove();
            return Ok(());
        }
        std::mem::take(&mut st.raw_text)
    };
    if !may_reference(&text) {
        chunk.replace(&text, ContentType::Html);
        return Ok(());
    }
    match rewrite_nested(state, &text) {
        Some(rewritten) => chunk.replace(&rewritten, ContentType::Html),
        None => {
            state.borrow_mut().report.removed += 1;
            chunk.remove();
        }
    }
    Ok(())
}

/// Runs the whole rewriter on markup found inside a comment or raw-text element, with the
/// same base URL, and adds its counts to ours. None when it cannot be done safely.
fn rewrite_nested(state: &RefCell<State<'_>>, text: &str) -> Option<String> {
    let (engine, base, depth) = {
        let st = state.borrow();
        (st.engine, st.base.clone(), st.depth)
    };
    if depth >= MAX_NESTED_DEPTH {
        return None;
    }
    let rewritten = rewrite_document(engine, text, base, depth + 1).ok()?;
    state.borrow_mut().report.merge(rewritten.report);
    Some(rewritten.html)
}

fn is_conditional(text: &str) -> bool {
    let t = text.trim_start();
    t.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("[if"))
}

/// Cheap pre-check so that plain conditional wrappers (`<table>` for Outlook) skip the
/// nested rewrite pass.
fn may_reference(text: &str) -> bool {
    [
        "src",
        "href",
        "url",
        "background",
        "//",
        "style",
        "poster",
        "&#",
        "\\",
    ]
    .iter()
    .any(|needle| contains_ignore_case(text, needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::Key;

    fn engine(mode: TrackerMode) -> Engine {
        let base = Url::parse("http://proxy.test").unwrap();
        let signer = Signer::new(&base, Key::from_bytes([3; 32]), vec![]);
        Engine::new(signer, TrackerRules::builtin(), mode)
    }

    fn rewrite(html: &str) -> Rewritten {
        engine(TrackerMode::Block).rewrite(html).unwrap()
    }

    #[test]
    fn srcset_parsing() {
        assert_eq!(
            parse_srcset("a.png 1x, b.png 2x"),
            vec![("a.png", "1x"), ("b.png", "2x")]
        );
        assert_eq!(parse_srcset("a,b.png"), vec![("a,b.png", "")]);
        assert_eq!(
            parse_srcset("a.png,, b.png 100w"),
            vec![("a.png", ""), ("b.png", "100w")]
        );
        assert_eq!(parse_srcset("  "), Vec::<(&str, &str)>::new());
    }

    #[test]
    fn contains_ignore_case_finds_any_spelling() {
        assert!(contains_ignore_case("a URL(b)", "url("));
        assert!(contains_ignore_case("xxSrC", "src"));
        assert!(!contains_ignore_case("sr", "src"));
        assert!(!contains_ignore_case("", "src"));
        assert!(contains_ignore_case("abc", ""));
    }

    #[test]
    fn pixel_hints() {
        let attrs = |pairs: &[(&'static str, &'static str)]| {
            pairs
                .iter()
                .map(|&(a, b)| (Cow::Borrowed(a), Cow::Borrowed(b)))
                .collect::<Vec<_>>()
        };
        let pixel = |pairs| looks_like_pixel(&attrs(pairs), css::style_hints);
        assert!(pixel(&[("width", "1"), ("height", "1px")]));
        assert!(pixel(&[("width", "0")]));
        assert!(!pixel(&[("width", "1")]));
        assert!(!pixel(&[("width", "600"), ("height", "1")]));
        assert!(pixel(&[("width", "600"), ("style", "height:0")]));
        assert!(!pixel(&[
            ("width", "1"),
            ("height", "1"),
            ("style", "width:10px")
        ]));
    }

    #[test]
    fn untouched_markup_is_byte_identical() {
        let html = "<!DOCTYPE html><p class=x>Hi &amp; <a href=\"https://e.example/\">link</a><img src=\"cid:a\"></p>";
        assert_eq!(rewrite(html).html, html);
    }

    #[test]
    fn names_and_values_are_read_from_the_source_as_lol_html_reads_them() {
        // `tag_name`, `attribute_name` and `attribute_value` debug-assert that they agree
        // with `lol_html`'s own accessors; these are the spellings where they could differ.
        let html = concat!(
            "<IMG SRC=\"https://a.example/1.png\" Style=\"background:url(https://a.example/2.png)\">",
            "<img src=\"\u{feff}https://a.example/3.png\" alt hidden>",
            "<img \u{e9}src=\"https://a.example/4.png\" src=https://a.example/5.png>",
            "<Svg><Image XLINK:HREF=\"https://a.example/6.png\"/></Svg>",
            "<img\nsrc=\"https://a.example/7.png\"/><p\u{0}x style=\"\">",
            "<td background='https://a.example/8.png'><img/src=https://a.example/9.png>",
        );
        let out = rewrite(html);
        for n in [1, 2, 5, 6, 7, 8, 9] {
            assert!(
                !out.html.contains(&format!("a.example/{n}.png")),
                "{n}: {}",
                out.html
            );
        }
    }

    #[test]
    fn header_value_lists_hosts() {
        let mut r = Report {
            proxied: 2,
            trackers: 1,
            ..Report::default()
        };
        r.tracker_hosts.insert("t.example".into());
        assert_eq!(
            r.header_value(),
            "proxied=2; trackers=1; removed=0; tracker-hosts=t.example"
        );
    }
}
