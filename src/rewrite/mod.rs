//! The rewrite side: pure functions from a message or an HTML document to its rewritten
//! form. No network, no disk, no logging: every remote reference becomes a signed proxy URL
//! ([`html`], [`css`]), known trackers are classified ([`trackers`]), MIME messages are taken
//! apart and put back together ([`mime`]), and [`message`] wraps it all for one RFC 5322
//! message with the never-lose-a-message rules.

pub mod css;
pub mod html;
pub mod message;
pub mod mime;
pub mod neutralise;
pub mod scan;
pub mod trackers;
