//! The one way a remote URL appears in a log line: [`UrlTag`], a short keyed hash.
//!
//! Remote URLs are chosen by senders and often carry the recipient's identity, so no log
//! line holds one. An unkeyed hash would not be enough: whoever reads the logs could hash a
//! guessed tracking URL and confirm it. The key is random per process, so tags correlate
//! the lines of one run (a fetch, its retries, its outcome) and nothing else.

use std::fmt;
use std::sync::OnceLock;

/// A log-safe stand-in for a URL: 12 hex digits of a keyed BLAKE3 hash.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UrlTag([u8; 6]);

impl UrlTag {
    /// The tag of `url` under this process's key.
    pub fn of(url: &str) -> Self {
        let hash = blake3::keyed_hash(process_key(), url.as_bytes());
        let mut tag = [0u8; 6];
        tag.copy_from_slice(&hash.as_bytes()[..6]);
        Self(tag)
    }
}

impl fmt::Display for UrlTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for UrlTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        // Without OS randomness the tag is still keyed by something a log reader does not
        // see (the clock and the pid at start), which is the best that can be done.
        if getrandom::fill(&mut key).is_err() {
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            key = *blake3::hash(seed.as_bytes()).as_bytes();
        }
        key
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_stable_and_hide_the_url() {
        let url = "http://tracker.example/open?recipient=alice@example.org";
        let tag = UrlTag::of(url).to_string();
        assert_eq!(tag.len(), 12);
        assert!(!tag.contains("alice"));
        assert_eq!(tag, UrlTag::of(url).to_string());
        assert_ne!(
            tag,
            UrlTag::of("http://tracker.example/open?r=bob").to_string()
        );
    }

    #[test]
    fn tags_are_keyed() {
        let url = "http://tracker.example/p.gif";
        let unkeyed = blake3::hash(url.as_bytes()).to_hex();
        assert!(!unkeyed.starts_with(&UrlTag::of(url).to_string()));
    }
}
