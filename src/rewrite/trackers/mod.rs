//! Classification of URLs as known email trackers.
//!
//! This module owns the decision "is this remote reference an open-tracking
//! beacon?". It combines a small built-in table of open-pixel endpoints of
//! email service providers and sales-tracking tools with any number of
//! filter lists in Adblock Plus syntax (EasyPrivacy style).
//!
//! Here are the public types and [`TrackerRules`], which holds the rules and answers
//! [`TrackerRules::classify`]. The parts live in the sub-modules:
//!
//! - `builtin`: the built-in table and its host index;
//! - `subject`: the URL as the list matchers see it (host normalised, case folded);
//! - `pattern`: compiled Adblock patterns and the wildcard matcher;
//! - `adblock`: list syntax (comments, exceptions, options) into patterns;
//! - `index`: storage of list rules, indexed by host.
//!
//! The module does no I/O and no logging: lists are handed in as text, and
//! every decision is returned to the caller, who decides what to report.
//!
//! Matching is designed for lists with tens of thousands of rules:
//! host-anchored (`||host^`) rules are indexed by host, so classifying a URL
//! costs a few hash probes plus a linear scan of the (much smaller) set of
//! rules that carry no host, and the wildcard matcher is iterative with
//! single star-position backtracking, so no pattern can make it exponential.

mod adblock;
mod builtin;
mod index;
mod pattern;
mod subject;
#[cfg(test)]
mod testutil;

use std::fmt;

use crate::weburl::WebUrl;

use self::adblock::ParsedRule;
use self::builtin::{BuiltinRule, BUILTIN_RULES};
use self::index::{NetRule, RuleIndex};
use self::subject::Subject;

/// Where a matching rule came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    /// The built-in table of ESP open-tracking endpoints.
    Builtin,
    /// A filter list added with [`TrackerRules::add_adblock_list`]; holds the
    /// list's name as given there.
    List(String),
}

/// A positive classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerMatch {
    /// Host of the URL (lowercase, as `url` parsed it), for reporting.
    pub host: String,
    /// The rule text that matched (e.g. "list-manage.com /track/open.php" or
    /// the adblock line).
    pub rule: String,
    /// Where the matching rule came from.
    pub source: RuleSource,
}

/// Errors raised while building a [`TrackerRules`].
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// The list contained no network rule usable for email images (it was
    /// empty, only comments/cosmetic rules, only regex rules, or only rules
    /// restricted to other resource types). Nothing was added.
    #[error("list {name}: no usable rules")]
    NoUsableRules {
        /// The list's name as given to [`TrackerRules::add_adblock_list`].
        name: String,
    },
}

/// What to do with a reference classified as a tracker (`trackers.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerMode {
    /// Remove the reference; it is never fetched.
    Block,
    /// Proxy it like any other image (still counted).
    Proxy,
}

/// Compiled rule set. Cheap to share (Send + Sync), built once at startup.
pub struct TrackerRules {
    builtin: &'static [BuiltinRule],
    /// Names of added lists, indexed by [`NetRule::list`].
    lists: Vec<String>,
    block: RuleIndex,
    allow: RuleIndex,
}

impl fmt::Debug for TrackerRules {
    /// Summarises counts only; dumping tens of thousands of rules helps nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerRules")
            .field("builtin", &self.builtin.len())
            .field("lists", &self.lists)
            .field("block", &self.block.len())
            .field("allow", &self.allow.len())
            .finish()
    }
}

impl TrackerRules {
    /// Only the built-in ESP open-tracking rules.
    pub fn builtin() -> Self {
        TrackerRules {
            builtin: BUILTIN_RULES,
            ..Self::empty()
        }
    }

    /// No rules at all (for tests / `trackers.builtin = false`).
    pub fn empty() -> Self {
        TrackerRules {
            builtin: &[],
            lists: Vec::new(),
            block: RuleIndex::default(),
            allow: RuleIndex::default(),
        }
    }

    /// Adds rules from a list in Adblock Plus filter syntax (EasyPrivacy
    /// style); returns how many network rules (block and `@@` exception)
    /// were added.
    ///
    /// Comments, headers, cosmetic rules, regex rules and rules restricted to
    /// non-image resource types are skipped silently.
    ///
    /// # Errors
    ///
    /// [`TrackerError::NoUsableRules`] when the list yields no usable rule;
    /// the rule set is then left unchanged.
    pub fn add_adblock_list(&mut self, name: &str, text: &str) -> Result<usize, TrackerError> {
        let parsed = adblock::parse_list(text);
        if parsed.is_empty() {
            return Err(TrackerError::NoUsableRules {
                name: name.to_owned(),
            });
        }
        let list = self.lists.len();
        self.lists.push(name.to_owned());
        let added = parsed.len();
        for (line, rule) in parsed {
            self.insert(line, list, rule);
        }
        Ok(added)
    }

    /// Files one parsed rule into the block or exception index.
    fn insert(&mut self, line: &str, list: usize, rule: ParsedRule) {
        let net = NetRule {
            text: line.to_owned(),
            list,
            pattern: rule.pattern,
        };
        let index = if rule.exception {
            &mut self.allow
        } else {
            &mut self.block
        };
        index.insert(net, rule.host_key);
    }

    /// Classifies `url`; None when no rule matches or an exception (`@@`)
    /// rule matches. Exceptions override built-in rules too, so a list can
    /// whitelist an endpoint the built-in table gets wrong.
    ///
    /// `url` is a parsed [`url::Url`] or a [`WebUrl`].
    pub fn classify<'u>(&self, url: impl Into<WebUrl<'u>>) -> Option<TrackerMatch> {
        let url = url.into();
        // The common case — no built-in rule for this host and no lists — must stay cheap:
        // it runs for every image of every message. The `url` crate lowercases domains.
        let host = url.host().trim_end_matches('.');
        let builtin = self.builtin_hit(host, &url);
        if builtin.is_none() && self.block.len() == 0 {
            return None;
        }
        let subject = Subject::new(&url);
        let (rule, source) = builtin.or_else(|| self.list_hit(&subject))?;
        if self.allow.len() > 0 && self.allow.find(&subject).is_some() {
            return None;
        }
        Some(TrackerMatch {
            host: url.host().to_ascii_lowercase(),
            rule,
            source,
        })
    }

    /// First matching built-in rule, as (rule text, source).
    fn builtin_hit(&self, host: &str, url: &WebUrl<'_>) -> Option<(String, RuleSource)> {
        if host.is_empty() || self.builtin.is_empty() {
            return None;
        }
        builtin::first_match(self.builtin, host, url)
            .map(|rule| (rule.describe(), RuleSource::Builtin))
    }

    /// First matching list block rule, as (rule text, source).
    fn list_hit(&self, subject: &Subject) -> Option<(String, RuleSource)> {
        let rule = self.block.find(subject)?;
        let name = self.lists.get(rule.list).cloned().unwrap_or_default();
        Some((rule.text.clone(), RuleSource::List(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{hit, rule_count, url, with_list};
    use super::*;

    #[test]
    fn builtin_has_enough_rules() {
        assert!(rule_count(&TrackerRules::builtin()) >= 30);
        assert_eq!(rule_count(&TrackerRules::builtin()), BUILTIN_RULES.len());
        assert_eq!(rule_count(&TrackerRules::empty()), 0);
        assert_ne!(rule_count(&TrackerRules::builtin()), 0);
    }

    #[test]
    fn builtin_trailing_dot_host_does_not_evade() {
        assert!(hit(
            &TrackerRules::builtin(),
            "https://x.list-manage.com./track/open.php"
        ));
    }

    #[test]
    fn empty_rules_match_nothing() {
        assert!(!hit(
            &TrackerRules::empty(),
            "https://x.list-manage.com/track/open.php"
        ));
    }

    // --- exceptions ----------------------------------------------------------

    #[test]
    fn exception_overrides_block() {
        let rules = with_list("||tracker.com^\n@@||tracker.com/logo.png");
        assert!(hit(&rules, "https://tracker.com/pixel.gif"));
        assert!(!hit(&rules, "https://tracker.com/logo.png"));
    }

    #[test]
    fn exception_overrides_builtin() {
        let mut rules = TrackerRules::builtin();
        rules
            .add_adblock_list("allow", "@@||mailtrack.io/trace/ok^")
            .unwrap();
        assert!(hit(&rules, "https://mailtrack.io/trace/mail/abc.png"));
        assert!(!hit(&rules, "https://mailtrack.io/trace/ok/abc.png"));
    }

    #[test]
    fn exception_alone_blocks_nothing() {
        let rules = with_list("@@||example.com^");
        assert!(!hit(&rules, "https://example.com/x.gif"));
        assert_eq!(rule_count(&rules), 1);
    }

    // --- lists ---------------------------------------------------------------

    #[test]
    fn list_without_usable_rules_is_error_and_changes_nothing() {
        let mut rules = TrackerRules::builtin();
        let before = rule_count(&rules);
        let err = rules
            .add_adblock_list(
                "cosmetic",
                "! only comments\nexample.com##.ad\n/re+gex/\n*$image\n",
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "list cosmetic: no usable rules");
        assert_eq!(rule_count(&rules), before);
    }

    #[test]
    fn match_reports_list_name_and_line() {
        let mut rules = TrackerRules::empty();
        rules.add_adblock_list("first", "||one.com^").unwrap();
        rules
            .add_adblock_list("EasyPrivacy", "  ||two.com/pixel^$image  ")
            .unwrap();
        let m = rules.classify(&url("https://cdn.two.com/pixel?x")).unwrap();
        assert_eq!(m.host, "cdn.two.com");
        assert_eq!(m.rule, "||two.com/pixel^$image");
        assert_eq!(m.source, RuleSource::List("EasyPrivacy".to_owned()));
        assert_eq!(rule_count(&rules), 2);
    }

    #[test]
    fn counts_include_builtin_and_lists() {
        let mut rules = TrackerRules::builtin();
        let n = rules
            .add_adblock_list("l", "||a.com^\n@@||a.com/ok\n/beacon.")
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(rule_count(&rules), BUILTIN_RULES.len() + 3);
    }

    #[test]
    fn rules_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TrackerRules>();
        assert_send_sync::<TrackerMatch>();
        assert_send_sync::<TrackerError>();
    }
}
