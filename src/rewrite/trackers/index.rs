//! Storage of list rules of one polarity (block or `@@` exception): host-anchored rules
//! filed by host, the rest scanned in order.
//!
//! Parsing the lines is `adblock`'s, matching one rule is `pattern`'s; which index is
//! asked, and in what order against the built-in table, is [`super::TrackerRules`]'.

use std::collections::HashMap;

use super::pattern::Pattern;
use super::subject::Subject;

/// One stored network rule.
#[derive(Debug, Clone)]
pub(super) struct NetRule {
    /// The original line, reported in [`super::TrackerMatch::rule`].
    pub(super) text: String,
    /// Index into the names of the lists added to the rule set.
    pub(super) list: usize,
    /// The compiled pattern.
    pub(super) pattern: Pattern,
}

/// Rules of one polarity (block or exception), indexed by host key.
#[derive(Debug, Default)]
pub(super) struct RuleIndex {
    rules: Vec<NetRule>,
    by_host: HashMap<String, Vec<usize>>,
    generic: Vec<usize>,
}

impl RuleIndex {
    /// Stores a rule under its host key, or in the linear-scan set.
    pub(super) fn insert(&mut self, rule: NetRule, host_key: Option<String>) {
        let id = self.rules.len();
        self.rules.push(rule);
        match host_key {
            Some(key) => self.by_host.entry(key).or_default().push(id),
            None => self.generic.push(id),
        }
    }

    /// First rule matching the subject: indexed candidates for each host
    /// suffix (most specific first), then the generic rules.
    pub(super) fn find(&self, subject: &Subject) -> Option<&NetRule> {
        let indexed = subject
            .host_suffixes()
            .filter_map(|suffix| self.by_host.get(suffix))
            .flatten();
        indexed
            .chain(self.generic.iter())
            .filter_map(|&id| self.rules.get(id))
            .find(|rule| rule.pattern.matches(subject))
    }

    /// Rules stored.
    pub(super) fn len(&self) -> usize {
        self.rules.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::testutil::{hit, with_list};

    #[test]
    fn large_list_uses_index() {
        let text: String = (0..50_000)
            .map(|i| format!("||host{i}.example^\n"))
            .collect();
        let rules = with_list(&text);
        assert_eq!(rules.block.generic.len(), 0);
        let start = Instant::now();
        for _ in 0..1_000 {
            assert!(hit(&rules, "https://cdn.host49999.example/p.gif"));
            assert!(!hit(&rules, "https://clean.example.org/p.gif"));
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
