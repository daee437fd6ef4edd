//! The shared test harness: engines with the test key, fixtures, the leak checker, and
//! (in the submodules) the processes, servers and messages the tests drive.

pub mod canary;
pub mod milter;
pub mod process;
pub mod proxy;
pub mod recipe;
pub mod sandbox;
pub mod upstream;
pub mod wait;

use std::path::{Path, PathBuf};

use mailveil::{Engine, Key, Signer, TrackerMode, TrackerRules};
use url::Url;

/// The proxy base every test engine signs for: the built-in default, never listened on.
pub const PUBLIC_URL: &str = "http://127.0.0.1:8700";
/// The key every test engine signs with.
pub const KEY: [u8; 32] = [42; 32];

/// A signer with the test key for a proxy at `public_url`.
pub fn signer_for(public_url: &str) -> Signer {
    let base = Url::parse(public_url).expect("valid url");
    Signer::new(&base, Key::from_bytes(KEY), vec![])
}

/// The signer for [`PUBLIC_URL`].
pub fn signer() -> Signer {
    signer_for(PUBLIC_URL)
}

/// An engine with the built-in tracker rules, signing with the test key for `public_url`.
pub fn engine_for(public_url: &str, mode: TrackerMode) -> Engine {
    Engine::new(signer_for(public_url), TrackerRules::builtin(), mode)
}

/// The engine for [`PUBLIC_URL`].
pub fn engine(mode: TrackerMode) -> Engine {
    engine_for(PUBLIC_URL, mode)
}

/// `tests/data/{rel}`.
pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

pub fn read_data(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// Undoes CSS escapes (`\72 `, `\:`) so an escaped host cannot hide from the checker.
fn css_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let mut hex = String::new();
        while hex.len() < 6 && chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
            hex.extend(chars.next());
        }
        if hex.is_empty() {
            out.extend(chars.next());
        } else {
            if chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
        }
    }
    out
}

/// Every place where `needles` (or the fixtures' remote host suffix `remote.test`) still
/// appears after entity and CSS unescaping, with some context. Proxied URLs carry their
/// target in base64, so a surviving host name means a reference escaped the rewrite.
pub fn leaks(html: &str, needles: &[&str]) -> Vec<String> {
    let decoded = css_unescape(&htmlize::unescape(html)).to_ascii_lowercase();
    let mut found = Vec::new();
    for needle in std::iter::once("remote.test").chain(needles.iter().copied()) {
        for (at, _) in decoded.match_indices(needle) {
            let start = decoded.floor_char_boundary(at.saturating_sub(60));
            let end = decoded.ceil_char_boundary((at + needle.len() + 20).min(decoded.len()));
            found.push(decoded[start..end].to_owned());
        }
    }
    found
}

/// Every proxy URL for [`PUBLIC_URL`] in `text`.
pub fn proxy_urls(text: &str) -> Vec<String> {
    proxy_urls_at(text, PUBLIC_URL)
}

/// Every proxy URL (`{base}/i/...`) in `text`.
pub fn proxy_urls_at(text: &str, base: &str) -> Vec<String> {
    let prefix = format!("{base}/i/");
    text.match_indices(&prefix)
        .map(|(at, _)| {
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "-_/:.".contains(c)))
                .unwrap_or(rest.len());
            rest[..end].to_owned()
        })
        .collect()
}

/// Every file under `dir`, recursively, but for temporary ones (`.tmp*`).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
        {
            out.push(p);
        }
    }
    out
}

/// A port that was free a moment ago, for a daemon started as a separate process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Whether something accepts connections on `127.0.0.1:{port}`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The last `max` bytes of `text`, cut at a character boundary: a log's end for a failure
/// message.
pub fn tail(text: &str, max: usize) -> &str {
    &text[text.ceil_char_boundary(text.len().saturating_sub(max))..]
}
