//! The URL as the list matchers see it: its serialised text in original and folded
//! case, with the host span and a trailing FQDN dot dropped.
//!
//! Prepared once per classification, and only when a list rule may match. How patterns
//! use it is `pattern`'s business, which host keys are probed is `index`'s; the built-in
//! table reads the URL directly.

use std::ops::Range;

use crate::weburl::WebUrl;

/// A URL prepared once per classification: serialised text in original and
/// folded case (same byte offsets, URLs are ASCII), plus the host span.
pub(super) struct Subject {
    exact: String,
    folded: String,
    host: Range<usize>,
}

impl Subject {
    /// Prepares `url`, dropping a trailing FQDN dot from the host so that
    /// `list-manage.com.` cannot slip past rules written for `list-manage.com`.
    pub(super) fn new(url: &WebUrl<'_>) -> Self {
        let text = url.as_str();
        let Range { start, mut end } = url.host_range();
        let mut exact = text.to_owned();
        if end > start && text.as_bytes().get(end - 1) == Some(&b'.') {
            if let (Some(head), Some(tail)) = (text.get(..end - 1), text.get(end..)) {
                exact = format!("{head}{tail}");
                end -= 1;
            }
        }
        let folded = exact.to_ascii_lowercase();
        Subject {
            exact,
            folded,
            host: start..end,
        }
    }

    /// The normalised, lowercase host ("" for host-less URLs).
    pub(super) fn host(&self) -> &str {
        self.folded.get(self.host.clone()).unwrap_or("")
    }

    /// The text in its original case, for `$match-case` patterns.
    pub(super) fn exact(&self) -> &[u8] {
        self.exact.as_bytes()
    }

    /// The text in ASCII lowercase, for every other pattern.
    pub(super) fn folded(&self) -> &[u8] {
        self.folded.as_bytes()
    }

    /// Offsets where a `||` anchor may match: the host start and every
    /// position right after a `.` inside the host.
    pub(super) fn label_starts(&self) -> impl Iterator<Item = usize> + '_ {
        let start = self.host.start;
        std::iter::once(start).chain(
            self.host()
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'.')
                .map(move |(i, _)| start + i + 1),
        )
    }

    /// Every host suffix that starts at a label boundary, longest first
    /// (`a.b.c` → `a.b.c`, `b.c`, `c`).
    pub(super) fn host_suffixes(&self) -> impl Iterator<Item = &str> {
        let host = self.host();
        std::iter::once(host).chain(
            host.char_indices()
                .filter(|&(_, c)| c == '.')
                .filter_map(move |(i, _)| host.get(i + 1..)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{hit, with_list};

    #[test]
    fn host_anchor_trailing_dot_does_not_evade() {
        let rules = with_list("||tracker.com^");
        assert!(hit(&rules, "https://cdn.tracker.com./p.gif"));
    }
}
