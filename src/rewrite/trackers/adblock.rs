//! Adblock Plus list syntax: which lines are network rules usable for email images, and
//! what they say (block or `@@` exception, options, the host a rule is filed under).
//!
//! Comments, headers, cosmetic and regex rules, and rules restricted to other resource
//! types are dropped here. Compiling and matching the pattern part is `pattern`'s;
//! storing the rules is `index`'s.

use super::pattern::{Case, Pattern};

/// A network rule parsed from one list line.
#[derive(Debug, Clone)]
pub(super) struct ParsedRule {
    /// An `@@` rule: it unblocks what it matches.
    pub(super) exception: bool,
    /// The compiled pattern part.
    pub(super) pattern: Pattern,
    /// The host key for the index, when the rule is `||host` followed by a
    /// character that ends the host (`^`, `/`, `:`, `?`).
    pub(super) host_key: Option<String>,
}

/// Markers of element-hiding / scriptlet / HTML-filtering rules (ABP, uBO,
/// AdGuard); none of them affect network requests.
const COSMETIC_MARKERS: &[&str] = &[
    "##", "#@#", "#?#", "#$#", "#@?#", "#@$#", "#%#", "$$", "$@$",
];

/// Resource types an email image request can have. `other`/`ping`/`beacon`
/// are kept because lists classify tracking pixels under them too.
const IMAGE_TYPES: &[&str] = &["image", "other", "ping", "beacon", "all"];

/// Resource types (and page-level exception types) that never apply to an
/// image fetched from mail, including common uBlock Origin aliases.
const OTHER_TYPES: &[&str] = &[
    "script",
    "stylesheet",
    "css",
    "xmlhttprequest",
    "xhr",
    "subdocument",
    "frame",
    "document",
    "doc",
    "popup",
    "object",
    "object-subrequest",
    "media",
    "font",
    "websocket",
    "webrtc",
    "elemhide",
    "ehide",
    "generichide",
    "ghide",
    "genericblock",
    "specifichide",
    "shide",
    "content",
    "jsinject",
    "urlblock",
    "extension",
    "inline-script",
    "inline-font",
    "popunder",
];

/// Options that turn a line into something other than "block this request"
/// (header/CSP injection, parameter stripping, disabling another filter).
/// Treating them as plain blocks would invert or distort their intent.
const NON_BLOCKING_OPTIONS: &[&str] = &[
    "badfilter",
    "csp",
    "removeparam",
    "queryprune",
    "removeheader",
    "responseheader",
    "permissions",
    "replace",
    "urltransform",
    "cookie",
    "hls",
    "jsonprune",
    "header",
];

/// The usable network rules of a list, each with its line (trimmed) for reporting.
pub(super) fn parse_list(text: &str) -> Vec<(&str, ParsedRule)> {
    text.lines()
        .filter_map(|line| parse_line(line).map(|rule| (line.trim(), rule)))
        .collect()
}

/// Parses one list line; `None` for anything that is not a usable network
/// rule for email images.
fn parse_line(raw: &str) -> Option<ParsedRule> {
    let line = raw.trim().trim_start_matches('\u{feff}');
    if is_ignorable(line) {
        return None;
    }
    let (exception, body) = match line.strip_prefix("@@") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (pattern_text, options) = split_options(body);
    let case = evaluate_options(options)?;
    if is_regex(pattern_text) {
        return None;
    }
    let pattern = Pattern::compile(pattern_text, case)?;
    Some(ParsedRule {
        exception,
        host_key: host_key(pattern_text),
        pattern,
    })
}

/// Empty lines, comments, headers and cosmetic rules.
fn is_ignorable(line: &str) -> bool {
    line.is_empty()
        || line.starts_with('!')
        || line.starts_with('[')
        || COSMETIC_MARKERS.iter().any(|m| line.contains(m))
}

/// Regex rules (`/.../`) are out of scope for the glob matcher.
fn is_regex(pattern: &str) -> bool {
    pattern.len() > 1 && pattern.starts_with('/') && pattern.ends_with('/')
}

/// Splits `pattern$options` at the last `$`, but only when the tail looks
/// like an option list; a `$` inside a URL pattern is left alone.
fn split_options(body: &str) -> (&str, Option<&str>) {
    let Some(dollar) = body.rfind('$') else {
        return (body, None);
    };
    let (pattern, tail) = (body.get(..dollar), body.get(dollar + 1..));
    match (pattern, tail) {
        (Some(p), Some(t)) if looks_like_options(t) => (p, Some(t)),
        _ => (body, None),
    }
}

/// An option list starts with an option name (`~`? then letters, digits,
/// `-`, `_`), ended by `,`, `=` or the end. Values after `=` may contain
/// anything (`csp=script-src 'none'`), so only the first name is checked.
fn looks_like_options(tail: &str) -> bool {
    let name = tail.strip_prefix('~').unwrap_or(tail);
    let name_end = name.find([',', '=']).unwrap_or(name.len());
    let first = name.get(..name_end).unwrap_or("");
    !first.is_empty()
        && first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decides whether a rule with these options can apply to an email image.
/// Returns `Some(case)` to keep the rule, `None` to drop it.
/// Unknown options (and `domain=`, `third-party`, ...) are ignored: the page
/// context they refer to does not exist for mail, and erring towards
/// blocking is the safe direction for privacy.
fn evaluate_options(options: Option<&str>) -> Option<Case> {
    let mut case = Case::Insensitive;
    let (mut any_type, mut image_type, mut image_negated) = (false, false, false);
    for option in options.unwrap_or("").split(',') {
        let option = option.trim().to_ascii_lowercase();
        let (negated, name) = match option.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, option.as_str()),
        };
        let name = name.split('=').next().unwrap_or("");
        if NON_BLOCKING_OPTIONS.contains(&name) {
            return None;
        }
        if name == "match-case" && !negated {
            case = Case::Sensitive;
        } else if IMAGE_TYPES.contains(&name) {
            image_negated |= negated && name == "image";
            any_type |= !negated;
            image_type |= !negated;
        } else if OTHER_TYPES.contains(&name) {
            any_type |= !negated;
        }
    }
    let applies = if any_type { image_type } else { !image_negated };
    applies.then_some(case)
}

/// Index key for `||host^`-style patterns: the host text, provided it is
/// followed by a character that ends a host. Patterns like `||ads.` or
/// `||example.com*` could match longer hosts, so they stay un-indexed.
fn host_key(pattern: &str) -> Option<String> {
    let rest = pattern.strip_prefix("||")?;
    let end = rest.find(['^', '/', '*', ':', '?', '|'])?;
    let terminator = rest.as_bytes().get(end)?;
    let key = rest.get(..end)?;
    let ends_host = matches!(terminator, b'^' | b'/' | b':' | b'?');
    (ends_host && !key.is_empty()).then(|| key.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{hit, with_list};
    use super::super::{TrackerError, TrackerRules};
    use super::*;

    // --- options -------------------------------------------------------------

    #[test]
    fn options_filter_resource_types() {
        let text = "\
||script.com^$script
||css.com^$stylesheet,third-party
||xhr.com^$xmlhttprequest
||doc.com^$document
||frame.com^$subdocument
||pop.com^$popup
||img.com^$image
||other.com^$other
||ping.com^$ping
||mixed.com^$script,image
||notimg.com^$~image
||notscript.com^$~script
||plain.com^";
        let mut rules = TrackerRules::empty();
        let added = rules.add_adblock_list("t", text).unwrap();
        assert_eq!(added, 6);
        for host in ["script", "css", "xhr", "doc", "frame", "pop", "notimg"] {
            assert!(!hit(&rules, &format!("https://{host}.com/x")), "{host}");
        }
        for host in ["img", "other", "ping", "mixed", "notscript", "plain"] {
            assert!(hit(&rules, &format!("https://{host}.com/x")), "{host}");
        }
    }

    #[test]
    fn unknown_and_domain_options_keep_rule() {
        let rules = with_list(
            "||a.com^$third-party,important\n||b.com^$domain=shop.example|~news.example\n||c.com^$frobnicate",
        );
        assert!(hit(&rules, "https://a.com/x"));
        assert!(hit(&rules, "https://b.com/x"));
        assert!(hit(&rules, "https://c.com/x"));
    }

    #[test]
    fn non_blocking_options_are_skipped() {
        let mut rules = TrackerRules::empty();
        let err = rules
            .add_adblock_list("t", "||a.com^$badfilter\n||b.com^$removeparam=utm_source\n||c.com^$csp=script-src 'none'")
            .unwrap_err();
        assert!(matches!(err, TrackerError::NoUsableRules { .. }));
    }

    #[test]
    fn dollar_inside_pattern_is_not_options() {
        let rules = with_list("/pixel?a=$(id)");
        assert!(hit(&rules, "https://x.com/pixel?a=$(id)"));
    }

    // --- skipping and errors -------------------------------------------------

    #[test]
    fn comments_headers_cosmetics_and_regex_skipped() {
        let text = "\
[Adblock Plus 2.0]
! Title: test
! comment ||commented.com^

example.com##.ad
example.com#@#.ad
example.com#?#div:-abp-has(.x)
example.com#$#log 1
/track[0-9]+/
||real.com^";
        let mut rules = TrackerRules::empty();
        assert_eq!(rules.add_adblock_list("t", text).unwrap(), 1);
        assert!(hit(&rules, "https://real.com/x"));
        assert!(!hit(&rules, "https://commented.com/x"));
        assert!(!hit(&rules, "https://example.com/track12/"));
    }

    #[test]
    fn host_keys_only_for_terminated_hosts() {
        assert_eq!(host_key("||a.com^"), Some("a.com".to_owned()));
        assert_eq!(host_key("||A.com/x"), Some("a.com".to_owned()));
        assert_eq!(host_key("||a.com:8080/"), Some("a.com".to_owned()));
        assert_eq!(host_key("||a.com"), None);
        assert_eq!(host_key("||a.com*x"), None);
        assert_eq!(host_key("||*.a.com^"), None);
        assert_eq!(host_key("|a.com^"), None);
    }
}
