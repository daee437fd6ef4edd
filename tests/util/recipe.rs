//! What the README's delivery recipes (procmail, maildrop, fetchmail, Dovecot Sieve) are
//! tested with: the message they deliver, and the checks on what arrived.

use std::path::Path;

use super::leaks;

/// The message every recipe delivers: HTML with one remote image.
pub const MESSAGE: &str = "From: news@sender.example\nTo: reader@example.org\nSubject: recipe\n\
Content-Type: text/html; charset=utf-8\n\n<p>Hi</p><img src=\"https://img.remote.test/a.png\">\n";

fn read(mbox: &Path) -> String {
    std::fs::read_to_string(mbox).unwrap_or_else(|e| panic!("{}: {e}", mbox.display()))
}

/// Checks that the message delivered to `mbox` was rewritten and reported.
pub fn assert_rewritten(mbox: &Path) {
    let text = read(mbox);
    assert!(text.contains("X-Mailveil: proxied=1"), "{text}");
    assert!(text.contains("Subject: recipe"), "{text}");
    assert!(leaks(&text, &[]).is_empty(), "{text}");
}

/// Checks that the message delivered to `mbox` is the original.
pub fn assert_delivered_unchanged(mbox: &Path) {
    let text = read(mbox);
    assert!(
        text.contains("<img src=\"https://img.remote.test/a.png\">"),
        "{text}"
    );
    assert!(!text.contains("X-Mailveil"), "{text}");
}
