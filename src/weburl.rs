//! Absolute http(s) URLs as the tracker rules ([`crate::rewrite::trackers`]) and the signer
//! ([`crate::sign`]) read them: the serialised text and where its host, path and query are.
//!
//! A [`WebUrl`] comes either from a parsed [`Url`] or, without parsing, from text that is
//! already in the exact form the WHATWG parser serialises to ([`WebUrl::canonical`]).
//! Nearly every image URL in real mail is of that form (`https://host/path?query`), and
//! checking the form costs a pass over its bytes where `Url::parse` costs several thousand
//! instructions (host mapping, percent-encoding, path normalisation, allocation). Anything
//! that is not plainly canonical is left to the `url` crate. This module does no I/O.

use url::{Position, Url};

/// An absolute http(s) URL: its serialisation plus the byte ranges of its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebUrl<'a> {
    text: &'a str,
    /// The host, without userinfo or port.
    host: (usize, usize),
    path: (usize, usize),
    /// The query without its `?`, if there is one (possibly empty).
    query: Option<(usize, usize)>,
}

impl<'a> WebUrl<'a> {
    /// `text` as it is, when `Url::parse(text)` would serialise to exactly `text` with the
    /// parts found here; None when that cannot be told cheaply (the caller then parses).
    ///
    /// Accepted: `http://` or `https://` (lowercase), a host of non-empty lowercase
    /// letter-digit-hyphen labels whose last label starts with a letter (so no IPv4
    /// number parsing applies), no label starting `xn--` or holding `--` (no IDNA
    /// decoding), no userinfo or port; a path starting with `/` with no dot segment (`.`,
    /// `..` or `%2e` spellings) and no byte the path percent-encode set or the special
    /// schemes' `\` rule would change; an optional query with no byte the special-query
    /// percent-encode set would change; no fragment. Every byte is printable ASCII, so no
    /// tab, newline or control character is there to be stripped.
    pub fn canonical(text: &'a str) -> Option<Self> {
        let bytes = text.as_bytes();
        let host_start = if bytes.starts_with(b"https://") {
            8
        } else if bytes.starts_with(b"http://") {
            7
        } else {
            return None;
        };
        let host_end = plain_domain_end(bytes, host_start)?;
        let path_end = path_end(bytes, host_end)?;
        let query = match bytes.get(path_end) {
            None => None,
            Some(b'?') => {
                let query = bytes.get(path_end + 1..)?;
                if !query.iter().all(|&b| QUERY_BYTES[usize::from(b)]) {
                    return None;
                }
                Some((path_end + 1, bytes.len()))
            }
            // A fragment: rare in references, left to the parser.
            Some(_) => return None,
        };
        Some(WebUrl {
            text,
            host: (host_start, host_end),
            path: (host_end, path_end),
            query,
        })
    }

    /// The whole URL.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The host, as [`Url::host_str`] gives it.
    pub fn host(&self) -> &'a str {
        self.part(self.host)
    }

    /// The byte range of [`WebUrl::host`] in [`WebUrl::as_str`].
    pub fn host_range(&self) -> std::ops::Range<usize> {
        self.host.0..self.host.1
    }

    /// The path, as [`Url::path`] gives it.
    pub fn path(&self) -> &'a str {
        self.part(self.path)
    }

    /// The query, as [`Url::query`] gives it.
    pub fn query(&self) -> Option<&'a str> {
        self.query.map(|range| self.part(range))
    }

    fn part(&self, (start, end): (usize, usize)) -> &'a str {
        // The ranges are found in `text` itself (or given by `url`), on ASCII boundaries.
        self.text.get(start..end).unwrap_or("")
    }
}

impl<'a> From<&'a Url> for WebUrl<'a> {
    fn from(url: &'a Url) -> Self {
        // `Position` slicing uses the offsets `url` recorded while serialising, so each
        // prefix is a prefix of `as_str()` and its length an offset into it.
        let at = |position: Position| url[..position].len();
        WebUrl {
            text: url.as_str(),
            host: (at(Position::BeforeHost), at(Position::AfterHost)),
            path: (at(Position::BeforePath), at(Position::AfterPath)),
            query: url
                .query()
                .map(|_| (at(Position::BeforeQuery), at(Position::AfterQuery))),
        }
    }
}

/// Where a host of lowercase letter-digit-hyphen labels that no step of the WHATWG host
/// parser changes ends; it must end at the path's `/` (a `?`, `#`, `:`, `@`, `\`, `%` or
/// capital would each mean more work for the parser). Labels are non-empty, neither start
/// nor end with `-` and hold no `--` (so no `xn--` label needs IDNA decoding), and the last
/// one starts with a letter (so the host is not parsed as an IPv4 address).
fn plain_domain_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut label_start = start;
    // The byte before the current one, as if the host followed a dot.
    let mut previous = b'.';
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => {}
            b'-' | b'.' if matches!(previous, b'.' | b'-') => return None,
            b'-' => {}
            b'.' => label_start = i + 1,
            b'/' if !matches!(previous, b'.' | b'-') => {
                return bytes
                    .get(label_start)
                    .is_some_and(u8::is_ascii_lowercase)
                    .then_some(i);
            }
            _ => return None,
        }
        previous = b;
    }
    None
}

/// Where a path starting at `start` (at its `/`) ends, if no byte of it is one the path
/// percent-encode set or the special schemes' `\` rule would change and no segment is a
/// dot segment (`.` or `..` in any of their percent-encoded spellings), which the parser
/// resolves.
fn path_end(bytes: &[u8], start: usize) -> Option<usize> {
    let rest = bytes.get(start..)?;
    let end = memchr::memchr2(b'?', b'#', rest).unwrap_or(rest.len());
    let path = rest.get(..end)?;
    if !path.iter().all(|&b| PATH_BYTES[usize::from(b)]) {
        return None;
    }
    // Every segment follows a `/`; a dot segment starts with `.` or `%`.
    for slash in memchr::memchr_iter(b'/', path) {
        let segment = path.get(slash + 1..).unwrap_or_default();
        if matches!(segment.first(), Some(b'.' | b'%')) {
            let len = memchr::memchr(b'/', segment).unwrap_or(segment.len());
            if is_dot_segment(segment.get(..len).unwrap_or_default()) {
                return None;
            }
        }
    }
    Some(start + end)
}

/// Printable ASCII outside the path percent-encode set, and not `\` (a path separator in
/// http(s) URLs).
const PATH_BYTES: [bool; 256] = byte_table(b"\"<>`{}\\");

/// Printable ASCII outside the special-query percent-encode set.
const QUERY_BYTES: [bool; 256] = byte_table(b"\"<>'#");

/// A table of the printable ASCII bytes (`!` to `~`) not in `excluded`.
const fn byte_table(excluded: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        table[b] = true;
        b += 1;
    }
    let mut i = 0;
    while i < excluded.len() {
        table[excluded[i] as usize] = false;
        i += 1;
    }
    table
}

/// `.` and `..` in any of their percent-encoded spellings.
fn is_dot_segment(segment: &[u8]) -> bool {
    [&b"."[..], b"..", b"%2e", b".%2e", b"%2e.", b"%2e%2e"]
        .iter()
        .any(|dots| segment.eq_ignore_ascii_case(dots))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `canonical` promises: parsing gives back the same text and the same parts.
    fn assert_agrees_with_url(text: &str) -> bool {
        let Some(fast) = WebUrl::canonical(text) else {
            return false;
        };
        let url = Url::parse(text).unwrap_or_else(|e| panic!("{text:?} accepted but fails: {e}"));
        assert_eq!(url.as_str(), text, "{text:?} is not canonical");
        assert_eq!(WebUrl::from(&url), fast, "{text:?}");
        assert_eq!(url.host_str(), Some(fast.host()), "{text:?}");
        assert_eq!(url.path(), fast.path(), "{text:?}");
        assert_eq!(url.query(), fast.query(), "{text:?}");
        // `<base href>` makes no difference to an absolute http(s) URL, whichever scheme
        // the base has.
        for base in [
            "https://base.example/dir/page?q#f",
            "http://base.example:81/",
        ] {
            let joined = Url::parse(base).and_then(|base| base.join(text));
            assert_eq!(
                joined.as_ref().map(Url::as_str),
                Ok(text),
                "{text:?} against {base}"
            );
        }
        true
    }

    #[test]
    fn common_urls_are_canonical() {
        for text in [
            "https://img.example.com/a/b.png",
            "http://a.example/",
            "https://cdn.mail-host.example/x/y?u=1&v=%20w&z",
            "https://a.example/p?",
            "https://a.example/%E2%9C%93/...//x.png?q=a?b/c",
            "https://x1.example/1x1'.gif?e=ab",
        ] {
            assert!(
                assert_agrees_with_url(text),
                "{text} should take the fast path"
            );
        }
    }

    #[test]
    fn everything_the_parser_would_change_is_refused() {
        for text in [
            "HTTPS://a.example/",
            "https://A.example/",
            "https://a.example",
            "https://a.example?x",
            "https://a.example:443/",
            "https://u@a.example/",
            "https://a.example/b#frag",
            "https://a.example/./b",
            "https://a.example/b/..",
            "https://a.example/%2E%2e/b",
            "https://a.example/b c",
            "https://a.example/b\\c",
            "https://a.example/{x}",
            "https://a.example/?a'b\"",
            "https://1.2.3.4/",
            "https://a.0x7f/",
            "https://xn--nxasmq6b.example/",
            "https://a..example/",
            "https://a.example./",
            "https://-a.example/",
            "https://a_b.example/",
            "https://a.example/\u{e9}",
            "https:/a.example/",
            "https:///a.example/",
            "ftp://a.example/",
        ] {
            assert!(
                WebUrl::canonical(text).is_none(),
                "{text} must be left to the parser"
            );
        }
    }

    #[test]
    fn generated_urls_agree_with_the_url_crate() {
        // Mostly plain pieces, mixed with every byte class the parser treats specially; a
        // small LCG keeps the run deterministic.
        let schemes = [
            "https://", "http://", "https://", "http://", "HTTP://", "https:/",
        ];
        let plain_labels = ["a", "mail", "x1", "e-2", "com", "example", "b"];
        let odd_labels = [
            "0", "9", "-", "", "xn--", "0x", "A", "_", "%41", ":80", "@", "[", "a--b", "\u{e9}",
        ];
        let plain_path = ["/", "/", "a", "b.png", "~", "!$&'()*+,;=:@", "%20", "..."];
        let odd_path = [
            ".", "..", "%2e", "%2E", "%", "\"", "<", ">", "`", "{", "}", "|", "^", "\\", " ", "\t",
            "\u{7f}", "\u{e9}", "[]", "#", "#x",
        ];
        let plain_query = [
            "a=1", "&", "b", "%41", "=", "/", "?", "|", "^", "`", "{", "}",
        ];
        let odd_query = ["%", "'", "\"", "<", ">", "\\", " ", "#", "\u{1}", "\u{e9}"];
        let mut seed = 0x9e37_79b9_u32;
        let mut pick = |n: usize| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as usize % n
        };
        let mut piece = |plain: &[&'static str], odd: &[&'static str]| {
            if pick(8) == 0 {
                odd[pick(odd.len())]
            } else {
                plain[pick(plain.len())]
            }
        };
        let mut accepted = 0;
        for round in 0..60_000 {
            let mut text = String::from(schemes[round % schemes.len()]);
            for label in 0..1 + round % 3 {
                if label > 0 {
                    text.push('.');
                }
                text.push_str(piece(&plain_labels, &odd_labels));
            }
            if round % 11 != 0 {
                text.push('/');
            }
            for _ in 0..round % 7 {
                text.push_str(piece(&plain_path, &odd_path));
            }
            if round % 2 == 0 {
                text.push('?');
                for _ in 0..round % 5 {
                    text.push_str(piece(&plain_query, &odd_query));
                }
            }
            if assert_agrees_with_url(&text) {
                accepted += 1;
            }
        }
        // Enough of the inputs take the fast path for the comparison to mean something.
        assert!(accepted > 10_000, "only {accepted} accepted");
    }
}
