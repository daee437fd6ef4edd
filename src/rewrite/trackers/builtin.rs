//! The built-in table of open-tracking endpoints of email service providers and
//! sales-tracking tools, and how a URL is tested against it.
//!
//! Owns the rules (host suffix, path constraint, optional query key), their index by the
//! last two host labels, and the text a rule is reported by. Which table a rule set uses,
//! and how a hit combines with list rules and exceptions, is left to [`super::TrackerRules`].

use url::form_urlencoded;

use crate::weburl::WebUrl;

use self::PathMatch::{Any, Contains, Exact, Prefix};

/// How a built-in rule constrains the URL path. Needles are lowercase and are
/// compared against the lowercased path, because ESPs are inconsistent about
/// case and a tracker gains nothing from case tricks.
#[derive(Debug, Clone, Copy)]
enum PathMatch {
    /// Any path: the host serves nothing but tracking.
    Any,
    /// The path starts with the needle.
    Prefix(&'static str),
    /// The path contains the needle.
    Contains(&'static str),
    /// The path equals the needle.
    Exact(&'static str),
}

/// One built-in open-tracking rule.
#[derive(Debug, Clone, Copy)]
pub(super) struct BuiltinRule {
    /// Host suffix, compared label by label from the right. A label ending in
    /// `*` matches any label with that prefix (for numbered tracking hosts
    /// such as `sidekickopen01.com`, `sidekickopen87.com`).
    host: &'static str,
    /// Constraint on the path.
    path: PathMatch,
    /// When set, the query must contain this key (case-insensitive).
    query_key: Option<&'static str>,
}

/// Shorthand constructor so the table below stays one line per rule.
const fn rule(host: &'static str, path: PathMatch) -> BuiltinRule {
    BuiltinRule {
        host,
        path,
        query_key: None,
    }
}

/// Shorthand constructor for rules that also require a query key.
const fn rule_q(host: &'static str, path: PathMatch, key: &'static str) -> BuiltinRule {
    BuiltinRule {
        query_key: Some(key),
        ..rule(host, path)
    }
}

/// Open-tracking (pixel) endpoints, written from public knowledge of how
/// these services build their beacons. Click-tracking redirects are left out
/// on purpose where the service separates them: the proxy only cares about
/// resources fetched when the mail is *displayed*. Plain image CDNs (e.g.
/// `mcusercontent.com`) are deliberately absent to avoid false positives.
pub(super) static BUILTIN_RULES: &[BuiltinRule] = &[
    // Mailchimp and its transactional arm Mandrill.
    rule("list-manage.com", Prefix("/track/open.php")),
    rule("mandrillapp.com", Prefix("/track/open.php")),
    // SendGrid ("wf" = web front open handler); also white-labelled by Klaviyo.
    rule("sendgrid.net", Prefix("/wf/open")),
    // Amazon SES open tracking: `I0`, newer `CI0`; clicks use `L0`/`CL0`.
    rule("awstrack.me", Prefix("/i0/")),
    rule("awstrack.me", Prefix("/ci0/")),
    // Mailjet.
    rule("mjt.lu", Prefix("/oo/")),
    // Campaign Monitor.
    rule("createsend1.com", Prefix("/t/")),
    rule("cmail19.com", Prefix("/t/")),
    rule("cmail20.com", Prefix("/t/")),
    // Constant Contact.
    rule("rs6.net", Prefix("/on.jsp")),
    // HubSpot analytics beacon and HubSpot Sales (Sidekick) opens (`/e1t/o/`).
    rule("hubspot.com", Prefix("/__ptq.gif")),
    rule("sidekickopen*.com", Contains("/o/")),
    // Postmark.
    rule("pstmrk.it", Prefix("/open")),
    // Salesforce Marketing Cloud (ExactTarget).
    rule("exct.net", Prefix("/open.aspx")),
    rule("exacttarget.com", Prefix("/open.aspx")),
    // Mailgun.
    rule("mailgun.org", Prefix("/o/")),
    rule("mailgun.net", Prefix("/o/")),
    // SparkPost opens are `/q/`, clicks `/f/`.
    rule("sparkpostmail.com", Prefix("/q/")),
    // Intercom.
    rule("intercom.io", Prefix("/o/")),
    rule("intercom-mail.com", Any),
    // Customer.io.
    rule("customeriomail.com", Prefix("/e/o/")),
    // Klaviyo (own opens `/o/`, SendGrid-backed opens `/wf/open`).
    rule("klclick.com", Prefix("/o/")),
    rule("klclick.com", Prefix("/wf/open")),
    rule("klaviyomail.com", Prefix("/o/")),
    // Brevo (formerly Sendinblue): `/tr/op/` opens, `/tr/cl/` clicks.
    rule("sendibt*.com", Prefix("/tr/op/")),
    // Mixmax.
    rule("mixmax.com", Prefix("/api/track/")),
    rule("mixmax.com", Prefix("/e/o")),
    // Yesware, Mailtrack, Streak, Superhuman: tracking-only hosts/paths.
    rule("t.yesware.com", Any),
    rule("mailtrack.io", Prefix("/trace/")),
    rule("mailfoogae.appspot.com", Any),
    rule("r.superhuman.com", Any),
    rule("r.sup.sh", Any),
    // Litmus email analytics.
    rule("emltrk.com", Any),
    // Google Analytics measurement protocol hits (`/collect`, `/g/collect`).
    rule_q("google-analytics.com", Contains("/collect"), "tid"),
    // Facebook pixel.
    rule_q("facebook.com", Exact("/tr"), "id"),
    rule("facebook.com", Prefix("/tr/")),
    // LinkedIn email impression beacon.
    rule("linkedin.com", Prefix("/emimp/")),
    // Substack email-open tracking host.
    rule("eotrx.substackcdn.com", Any),
    // Marketo email opens (`/trk?t=1&mid=...`).
    rule("mktoweb.com", Exact("/trk")),
    // Pardot (Salesforce Account Engagement) tracking host.
    rule("pi.pardot.com", Any),
    // Iterable link/open tracking host.
    rule("links.iterable.com", Any),
    // Salesloft tracked-email endpoints.
    rule("salesloft.com", Prefix("/t/")),
    // MailerLite tracking host.
    rule("clicks.mlsend.com", Any),
    // Kit (ConvertKit) open tracking.
    rule("convertkit-mail*.com", Prefix("/o/")),
    // GitHub notification read beacon.
    rule("github.com", Prefix("/notifications/beacon/")),
];

impl BuiltinRule {
    /// Whether this rule matches a URL with the given (normalised) host.
    fn matches(&self, host: &str, url: &WebUrl<'_>) -> bool {
        host_suffix_matches(self.host, host)
            && self.path_matches(&url.path().to_ascii_lowercase())
            && self.query_matches(url)
    }

    /// Applies the path constraint to an already lowercased path.
    fn path_matches(&self, path: &str) -> bool {
        match self.path {
            Any => true,
            Prefix(needle) => path.starts_with(needle),
            Contains(needle) => path.contains(needle),
            Exact(needle) => path == needle,
        }
    }

    /// Applies the optional query-key constraint.
    fn query_matches(&self, url: &WebUrl<'_>) -> bool {
        match self.query_key {
            None => true,
            // What `Url::query_pairs` does.
            Some(key) => form_urlencoded::parse(url.query().unwrap_or("").as_bytes())
                .any(|(k, _)| k.eq_ignore_ascii_case(key)),
        }
    }

    /// Human-readable rule text for [`super::TrackerMatch::rule`].
    pub(super) fn describe(&self) -> String {
        let path = match self.path {
            Any => "*".to_owned(),
            Prefix(p) => p.to_owned(),
            Contains(p) => format!("*{p}*"),
            Exact(p) => format!("={p}"),
        };
        match self.query_key {
            Some(key) => format!("{} {path} ?{key}", self.host),
            None => format!("{} {path}", self.host),
        }
    }
}

/// Label-wise host-suffix test, so `list-manage.com` matches
/// `x.list-manage.com` but never `evil-list-manage.com`.
fn host_suffix_matches(pattern: &str, host: &str) -> bool {
    let mut host_labels = host.rsplit('.');
    pattern.rsplit('.').all(|want| {
        host_labels
            .next()
            .is_some_and(|got| label_matches(want, got))
    })
}

/// Compares one label; a trailing `*` in the pattern makes it a prefix test.
fn label_matches(want: &str, got: &str) -> bool {
    match want.strip_suffix('*') {
        Some(prefix) => got.starts_with(prefix),
        None => want == got,
    }
}

/// [`BUILTIN_RULES`] filed by the last two labels of their host pattern.
struct BuiltinIndex {
    /// FxHash: a fixed table of our own keys, so a sender cannot grow a collision chain.
    by_tail: rustc_hash::FxHashMap<&'static str, Vec<usize>>,
    /// Rules with a wildcard in their last two labels, with the literal start of that tail
    /// (`sidekickopen` for `sidekickopen*.com`) as a cheap first test.
    wildcard: Vec<(usize, &'static str)>,
}

/// The first rule of `rules` that matches `url`, whose host, normalised, is `host`. Only
/// the rules filed under the host's last two labels (and the few with a wildcard there)
/// are tried. `rules` is [`BUILTIN_RULES`] or empty: the index holds positions in the table.
pub(super) fn first_match<'r>(
    rules: &'r [BuiltinRule],
    host: &str,
    url: &WebUrl<'_>,
) -> Option<&'r BuiltinRule> {
    let index = builtin_index();
    let tail = last_two_labels(host);
    let filed = index.by_tail.get(tail).into_iter().flatten().copied();
    let wild = index
        .wildcard
        .iter()
        .filter(|(_, start)| tail.starts_with(start))
        .map(|&(i, _)| i);
    filed
        .chain(wild)
        .filter_map(|i| rules.get(i))
        .find(|rule| rule.matches(host, url))
}

/// The index of [`BUILTIN_RULES`], built on first use.
fn builtin_index() -> &'static BuiltinIndex {
    static INDEX: std::sync::OnceLock<BuiltinIndex> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = BuiltinIndex {
            by_tail: rustc_hash::FxHashMap::default(),
            wildcard: Vec::new(),
        };
        for (i, rule) in BUILTIN_RULES.iter().enumerate() {
            let tail = last_two_labels(rule.host);
            if let Some(star) = tail.find('*') {
                index.wildcard.push((i, tail.get(..star).unwrap_or("")));
            } else {
                index.by_tail.entry(tail).or_default().push(i);
            }
        }
        index
    })
}

/// `a.b.example.com` → `example.com`; a one-label host is its own tail.
fn last_two_labels(host: &str) -> &str {
    // Runs for every image of every message: `memrchr` rather than a string searcher.
    let bytes = host.as_bytes();
    let second = memchr::memrchr(b'.', bytes)
        .and_then(|last| memchr::memrchr(b'.', bytes.get(..last).unwrap_or_default()));
    match second {
        Some(second) => host.get(second + 1..).unwrap_or(host),
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{hit, url};
    use super::super::{RuleSource, TrackerRules};
    use super::*;

    fn builtin_hit(s: &str) -> bool {
        hit(&TrackerRules::builtin(), s)
    }

    #[test]
    fn last_two_labels_of_hosts() {
        for (host, tail) in [
            ("a.b.example.com", "example.com"),
            ("example.com", "example.com"),
            ("com", "com"),
            ("", ""),
            (".com", ".com"),
            ("a..b", ".b"),
            ("x.example.com.", "com."),
        ] {
            assert_eq!(last_two_labels(host), tail, "{host}");
        }
    }

    #[test]
    fn builtin_needles_are_lowercase() {
        for r in BUILTIN_RULES {
            let needle = match r.path {
                Any => "",
                Prefix(p) | Contains(p) | Exact(p) => p,
            };
            assert_eq!(needle, needle.to_ascii_lowercase(), "{r:?}");
            assert_eq!(r.host, r.host.to_ascii_lowercase(), "{r:?}");
        }
    }

    #[test]
    fn builtin_mailchimp_open_matches_with_details() {
        let m = TrackerRules::builtin()
            .classify(&url(
                "https://Acme.us1.List-Manage.com/track/open.php?u=1&id=2&e=3",
            ))
            .unwrap();
        assert_eq!(m.host, "acme.us1.list-manage.com");
        assert_eq!(m.rule, "list-manage.com /track/open.php");
        assert_eq!(m.source, RuleSource::Builtin);
    }

    #[test]
    fn builtin_mailchimp_click_is_not_open_pixel() {
        assert!(!builtin_hit(
            "https://acme.us1.list-manage.com/track/click?u=1&id=2&e=3"
        ));
    }

    #[test]
    fn builtin_image_cdn_is_not_tracker() {
        assert!(!builtin_hit(
            "https://mcusercontent.com/abc/images/logo.png"
        ));
        assert!(!builtin_hit(
            "https://gallery.mailchimp.com/abc/images/x.jpg"
        ));
    }

    #[test]
    fn builtin_host_suffix_respects_label_boundary() {
        assert!(builtin_hit("https://x.list-manage.com/track/open.php"));
        assert!(builtin_hit("https://list-manage.com/track/open.php"));
        assert!(!builtin_hit("https://evil-list-manage.com/track/open.php"));
        assert!(!builtin_hit(
            "https://list-manage.com.evil.net/track/open.php"
        ));
    }

    #[test]
    fn builtin_positive_sample() {
        for s in [
            "https://mandrillapp.com/track/open.php?u=1&id=2",
            "https://u123.ct.sendgrid.net/wf/open?upn=abc",
            "https://abc.r.us-east-1.awstrack.me/I0/0100/xyz",
            "https://open.example.awstrack.me/CI0/0/abc",
            "https://x.mjt.lu/oo/abc.gif",
            "https://acme.createsend1.com/t/d-o-abc/o.gif",
            "https://r20.rs6.net/on.jsp?a=1",
            "https://track.hubspot.com/__ptq.gif?a=1",
            "http://t.sidekickopen04.com/e1t/o/5/abc",
            "https://pstmrk.it/open?m=abc",
            "https://cl.exct.net/open.aspx?ffcb10-abc",
            "https://e.customeriomail.com/e/o/abc",
            "https://ctrk.klclick.com/o/01ABC",
            "https://xyz.r.bh.d.sendibt3.com/tr/op/abc",
            "https://track.mixmax.com/api/track/v2/abc",
            "https://t.yesware.com/t/abc/spacer.gif",
            "https://mailtrack.io/trace/mail/abc.png",
            "https://mailfoogae.appspot.com/t?sender=abc",
            "https://r.superhuman.com/abc.png",
            "https://abc.emltrk.com/abc?d=x",
            "https://www.google-analytics.com/collect?v=1&tid=UA-1&t=event",
            "https://www.facebook.com/tr?id=123&ev=PageView",
            "https://www.linkedin.com/emimp/abc.gif",
            "https://eotrx.substackcdn.com/open?token=abc",
            "https://github.com/notifications/beacon/abc.gif",
            "https://open.convertkit-mail2.com/o/abc",
        ] {
            assert!(builtin_hit(s), "expected tracker: {s}");
        }
    }

    #[test]
    fn builtin_negative_sample() {
        for s in [
            "https://u123.ct.sendgrid.net/ls/click?upn=abc",
            "https://abc.r.us-east-1.awstrack.me/L0/https:%2F%2Fexample.com",
            "https://ctrk.klclick.com/l/01ABC_0",
            "http://t.sidekickopen04.com/e1t/c/5/abc",
            "https://xyz.r.bh.d.sendibt3.com/tr/cl/abc",
            "https://www.google-analytics.com/analytics.js",
            "https://www.facebook.com/travel/photo.jpg",
            "https://www.facebook.com/tr",
            "https://www.linkedin.com/in/someone",
            "https://github.com/user/repo/raw/main/logo.png",
            "https://images.example.com/track/open.php",
        ] {
            assert!(!builtin_hit(s), "expected clean: {s}");
        }
    }

    #[test]
    fn builtin_hosts_without_host_are_clean() {
        assert!(!builtin_hit("mailto:someone@list-manage.com"));
        assert!(!builtin_hit("data:image/gif;base64,R0lGOD"));
    }
}
