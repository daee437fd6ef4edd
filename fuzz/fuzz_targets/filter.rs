//! `mailveil::filter_message` on arbitrary bytes, checked against the promise `mailveil
//! filter` makes: a message always comes out, and it is the original unless the filter
//! rewrote it.
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run filter` (see the README's Fuzzing section).
//! libfuzzer-sys turns every panic into a crash, including the ones `filter_message`
//! contains with `catch_unwind`: a parser panic is a bug worth seeing even when the
//! message survives it.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mailveil::Engine;
use mailveil::TrackerMode;
use mailveil::TrackerRules;
use mailveil::{filter_message, HEADER_NAME};
use mailveil::{prepend_header, remove_header_fields};
use mailveil::{Key, Signer};
use url::Url;

/// One engine for the whole run: building the tracker rules per input would dominate.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let public_url = Url::parse("https://proxy.fuzz.example").expect("constant URL parses");
        let signer = Signer::new(&public_url, Key::from_bytes([7; 32]), vec![]);
        Engine::new(signer, TrackerRules::builtin(), TrackerMode::Block)
    })
}

fuzz_target!(|raw: &[u8]| {
    // On an error `mailveil filter` writes the original bytes, which cannot lose anything;
    // what needs checking is the message the filter produced.
    let Ok(filtered) = filter_message(engine(), raw) else {
        return;
    };
    let out = &filtered.message;
    assert!(
        raw.is_empty() || !out.is_empty(),
        "a non-empty message came out empty"
    );
    // A rewritten message carries the header we add (after an mbox "From " line, if any)...
    let header = format!("{HEADER_NAME}: {}", filtered.report.header_value());
    assert!(
        out.windows(header.len()).any(|w| w == header.as_bytes()),
        "the {HEADER_NAME} header is missing"
    );
    // The sender's own X-Mailveil fields are dropped; nothing else in the header section
    // changes, unless the message's parts could not be found at all (then its top-level
    // Content-Type is renamed and the body shown as plain text).
    let own = remove_header_fields(raw, HEADER_NAME);
    let raw = own.as_deref().unwrap_or(raw);
    let last_resort = filtered.html_parts == 0 && filtered.report.neutralised > 0;
    // ...and with no HTML part in it, nothing else may change.
    if filtered.html_parts == 0 && !last_resort {
        let expected = prepend_header(raw, HEADER_NAME, &filtered.report.header_value());
        assert!(*out == expected, "a message without HTML parts was changed");
    }
    // Only HTML bodies change, so the header section survives: its first line is still
    // there, byte for byte.
    let first_line = raw.split(|&b| b == b'\n').next().unwrap_or(raw);
    assert!(
        last_resort
            || first_line.is_empty()
            || out.windows(first_line.len()).any(|w| w == first_line),
        "the first line of the message was lost"
    );
});
