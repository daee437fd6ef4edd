//! Adblock patterns: the pattern part of a network rule (`||`, `|`, `*`, `^`) compiled to
//! tokens, and the wildcard matcher that runs them against a [`Subject`].
//!
//! The rest of a list line (comments, `@@`, `$options`) is `adblock`'s; where compiled
//! patterns are stored and which are tried is `index`'s.

use super::subject::Subject;

/// Whether a pattern compares letters as written (`$match-case`) or folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Case {
    /// The default: the pattern and the URL are compared in ASCII lowercase.
    Insensitive,
    /// `$match-case`: compared as written.
    Sensitive,
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A literal byte (already lowercased unless `$match-case`).
    Lit(u8),
    /// `^`: one separator byte, or the end of the URL.
    Sep,
    /// `*`: any run of bytes, including none.
    Star,
}

/// A compiled network-rule pattern. Unanchored starts/ends are represented
/// by explicit leading/trailing `Star` tokens so one matcher serves all.
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    tokens: Vec<Token>,
    /// `||`: must start at a host label boundary.
    host_anchored: bool,
    case: Case,
}

impl Pattern {
    /// Compiles the pattern part of a rule; `None` when it has no literal byte,
    /// since a rule like `*` or `||^` would block every image in every mail.
    pub(super) fn compile(text: &str, case: Case) -> Option<Pattern> {
        let (host_anchored, start_anchored, rest) = if let Some(r) = text.strip_prefix("||") {
            (true, true, r)
        } else if let Some(r) = text.strip_prefix('|') {
            (false, true, r)
        } else {
            (false, false, text)
        };
        let (end_anchored, body) = match rest.strip_suffix('|') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let mut tokens = Vec::with_capacity(body.len() + 2);
        if !start_anchored {
            tokens.push(Token::Star);
        }
        for b in body.bytes() {
            push_token(&mut tokens, b, case);
        }
        if !end_anchored {
            push_token(&mut tokens, b'*', case);
        }
        let has_literal = tokens.iter().any(|t| matches!(t, Token::Lit(_)));
        has_literal.then_some(Pattern {
            tokens,
            host_anchored,
            case,
        })
    }

    /// Whether the pattern matches the whole prepared URL.
    pub(super) fn matches(&self, subject: &Subject) -> bool {
        let text = match self.case {
            Case::Sensitive => subject.exact(),
            Case::Insensitive => subject.folded(),
        };
        if self.host_anchored {
            subject
                .label_starts()
                .any(|start| glob_match(&self.tokens, text, start))
        } else {
            glob_match(&self.tokens, text, 0)
        }
    }
}

/// Appends the token for one pattern byte, collapsing runs of `*` (they are
/// equivalent to one and would only slow the matcher down).
fn push_token(tokens: &mut Vec<Token>, b: u8, case: Case) {
    let token = match b {
        b'*' => Token::Star,
        b'^' => Token::Sep,
        _ if case == Case::Sensitive => Token::Lit(b),
        _ => Token::Lit(b.to_ascii_lowercase()),
    };
    if token == Token::Star && tokens.last() == Some(&Token::Star) {
        return;
    }
    tokens.push(token);
}

/// Adblock separator class: anything but a letter, digit, `_`, `-`, `.`, `%`.
fn is_separator(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'%'))
}

/// Advances over one non-star token at `pos`; `None` on mismatch. `Sep` is
/// zero-width at the end of the text, as `^` also matches the end of a URL.
fn step(token: Token, text: &[u8], pos: usize) -> Option<usize> {
    match (token, text.get(pos)) {
        (Token::Lit(want), Some(&got)) if want == got => Some(pos + 1),
        (Token::Sep, Some(&got)) if is_separator(got) => Some(pos + 1),
        (Token::Sep, None) => Some(pos),
        _ => None,
    }
}

/// Matches `tokens` against all of `text[start..]`.
///
/// Classic iterative wildcard matching: on a mismatch, resume from the most
/// recent `*`, letting it swallow one more byte. Only the latest star needs
/// remembering because every segment between stars matches a fixed number
/// of bytes (a zero-width `^` only happens at the very end), so the leftmost
/// placement of each segment is always the best one. That bounds the work
/// to O(len(text) × len(tokens)) — no exponential blow-up.
fn glob_match(tokens: &[Token], text: &[u8], start: usize) -> bool {
    let (mut t, mut pos) = (0, start);
    let mut resume: Option<(usize, usize)> = None;
    loop {
        match tokens.get(t) {
            Some(Token::Star) if t + 1 == tokens.len() => return true,
            Some(Token::Star) => {
                resume = Some((t + 1, pos));
                t += 1;
                continue;
            }
            Some(&token) => {
                if let Some(next) = step(token, text, pos) {
                    t += 1;
                    pos = next;
                    continue;
                }
            }
            None if pos == text.len() => return true,
            None => {}
        }
        match resume {
            Some((rt, rpos)) if rpos < text.len() => {
                resume = Some((rt, rpos + 1));
                t = rt;
                pos = rpos + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::testutil::{hit, with_list};
    use super::*;

    // --- adblock anchors and wildcards ---------------------------------------

    #[test]
    fn host_anchor_matches_host_and_subdomains_only() {
        let rules = with_list("||tracker.com^");
        assert!(hit(&rules, "https://tracker.com/pixel.gif"));
        assert!(hit(&rules, "https://a.b.tracker.com/pixel.gif"));
        assert!(hit(&rules, "https://tracker.com:8443/pixel.gif"));
        assert!(!hit(&rules, "https://eviltracker.com/pixel.gif"));
        assert!(!hit(&rules, "https://tracker.com.example.org/p.gif"));
        assert!(!hit(&rules, "https://example.org/?u=tracker.com/"));
    }

    #[test]
    fn host_anchor_without_terminator_is_prefix_of_label() {
        let rules = with_list("||ads.track");
        assert!(hit(&rules, "https://ads.tracker.net/x.gif"));
        assert!(hit(&rules, "https://cdn.ads.tracking.io/x.gif"));
        assert!(!hit(&rules, "https://myads.tracker.net/x.gif"));
    }

    #[test]
    fn start_anchor() {
        let rules = with_list("|https://pix.");
        assert!(hit(&rules, "https://pix.example.com/a.gif"));
        assert!(!hit(&rules, "http://pix.example.com/a.gif"));
        assert!(!hit(&rules, "https://example.com/?r=https://pix.x/"));
    }

    #[test]
    fn end_anchor() {
        let rules = with_list("/open.gif|");
        assert!(hit(&rules, "https://example.com/open.gif"));
        assert!(!hit(&rules, "https://example.com/open.gif?x=1"));
    }

    #[test]
    fn separator_semantics() {
        let rules = with_list("||example.com/pixel^");
        assert!(hit(&rules, "https://example.com/pixel?id=1"));
        assert!(hit(&rules, "https://example.com/pixel/1"));
        assert!(!hit(&rules, "https://example.com/pixel.gif"));
        assert!(!hit(&rules, "https://example.com/pixel-1"));
        assert!(!hit(&rules, "https://example.com/pixel_1"));
        assert!(!hit(&rules, "https://example.com/pixel%20"));
    }

    #[test]
    fn separator_matches_end_of_url() {
        let rules = with_list("|https://example.com/beacon^");
        assert!(hit(&rules, "https://example.com/beacon"));
        assert!(!hit(&rules, "https://example.com/beacons"));
    }

    #[test]
    fn wildcards() {
        let rules = with_list("/track/*/open*.gif");
        assert!(hit(&rules, "https://x.com/track/abc/def/open123.gif"));
        assert!(hit(&rules, "https://x.com/track//open.gif"));
        assert!(!hit(&rules, "https://x.com/track/open.gif"));
        assert!(!hit(&rules, "https://x.com/track/abc/open.png"));
    }

    #[test]
    fn unanchored_pattern_matches_anywhere() {
        let rules = with_list("-tracking-pixel.");
        assert!(hit(&rules, "https://cdn.x.com/a/b-tracking-pixel.gif"));
        assert!(!hit(&rules, "https://cdn.x.com/a/b-tracking.gif"));
    }

    #[test]
    fn case_insensitive_by_default() {
        let rules = with_list("||Tracker.COM/Open^");
        assert!(hit(&rules, "https://TRACKER.com/OPEN?x"));
        assert!(hit(&rules, "https://tracker.com/open?x"));
    }

    #[test]
    fn match_case_option() {
        let rules = with_list("/Open.gif$match-case");
        assert!(hit(&rules, "https://x.com/Open.gif"));
        assert!(!hit(&rules, "https://x.com/open.gif"));
    }

    // --- the matcher ---------------------------------------------------------

    #[test]
    fn pathological_pattern_is_fast() {
        let rules = with_list("*a*a*a*a*a*b");
        let long = format!("https://x.com/{}", "a".repeat(20_000));
        let start = Instant::now();
        assert!(!hit(&rules, &long));
        assert!(hit(&rules, &format!("{long}b")));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn glob_basics() {
        let toks = |s: &str| Pattern::compile(s, Case::Insensitive).unwrap().tokens;
        assert!(glob_match(&toks("|abc|"), b"abc", 0));
        assert!(!glob_match(&toks("|abc|"), b"abcd", 0));
        assert!(glob_match(&toks("|a*c|"), b"abbbc", 0));
        assert!(glob_match(&toks("|a^"), b"a", 0));
        assert!(glob_match(&toks("|a^*"), b"a/x", 0));
        assert!(!glob_match(&toks("|a^b"), b"a", 0));
        assert!(Pattern::compile("*", Case::Insensitive).is_none());
        assert!(Pattern::compile("||^", Case::Insensitive).is_none());
    }
}
