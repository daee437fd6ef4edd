//! Test-only helpers that the tests of more than one tracker sub-module use: parsing a
//! URL, building a rule set from one list, asking whether a URL is a tracker, and
//! counting rules.

use url::Url;

use super::TrackerRules;

/// `s`, parsed.
pub(super) fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

/// A rule set of the one list `text` (named "test"), without the built-in table.
pub(super) fn with_list(text: &str) -> TrackerRules {
    let mut rules = TrackerRules::empty();
    rules.add_adblock_list("test", text).unwrap();
    rules
}

/// Whether `rules` classify `s` as a tracker.
pub(super) fn hit(rules: &TrackerRules, s: &str) -> bool {
    rules.classify(&url(s)).is_some()
}

/// Number of rules in `rules`: built-in, block and exception.
pub(super) fn rule_count(rules: &TrackerRules) -> usize {
    rules.builtin.len() + rules.block.len() + rules.allow.len()
}
