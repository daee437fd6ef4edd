//! Throughput of the HTML rewrite engine against a bare `lol_html` pass over the same input.
//!
//! `benches/data/newsletter.html` is a made-up ~100 KB marketing newsletter: nested tables,
//! images with `srcset`, inline `background` url()s, a `<style>` block with `@media` and
//! `@font-face`, MSO conditional VML, a tracking pixel and many tracked links. `passthrough`
//! runs `lol_html` with one no-op element handler, the floor any `lol_html` rewriter pays;
//! `rewrite` is [`Engine::rewrite`]. Run with `cargo bench --bench rewrite`; see BENCHMARKS.md.

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use lol_html::{element, HtmlRewriter, Settings};
use mailveil::Engine;
use mailveil::TrackerMode;
use mailveil::TrackerRules;
use mailveil::{Key, Signer};
use url::Url;

const NEWSLETTER: &str = include_str!("data/newsletter.html");

fn engine() -> Engine {
    // A constant that parses; a bench has no other way to report a bad URL than to stop.
    #[allow(clippy::expect_used)]
    let public_url = Url::parse("https://proxy.mail.example").expect("valid URL");
    let signer = Signer::new(&public_url, Key::from_bytes([9; 32]), vec![]);
    Engine::new(signer, TrackerRules::builtin(), TrackerMode::Block)
}

/// `lol_html` with a single no-op element handler, output collected as the engine does.
fn passthrough(html: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(html.len());
    let settings = Settings::new().append_element_content_handler(element!("*", |_| Ok(())));
    let mut rewriter = HtmlRewriter::new(settings, |chunk: &[u8]| out.extend_from_slice(chunk));
    let written = rewriter.write(html.as_bytes());
    if let Err(e) = written.and_then(|()| rewriter.end()) {
        panic!("lol_html refused the fixture: {e}");
    }
    out
}

fn bench_rewrite(c: &mut Criterion) {
    let engine = engine();
    // Fail loudly up front rather than benchmark an error path.
    if let Err(e) = engine.rewrite(NEWSLETTER) {
        panic!("the engine refused the fixture: {e}");
    }

    let mut group = c.benchmark_group("newsletter");
    group
        .throughput(Throughput::Bytes(NEWSLETTER.len() as u64))
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    group.bench_function("rewrite", |b| {
        b.iter(|| engine.rewrite(black_box(NEWSLETTER)))
    });
    group.bench_function("passthrough", |b| {
        b.iter(|| passthrough(black_box(NEWSLETTER)))
    });
    group.finish();
}

/// Both functions alternated round by round, medians compared: on a shared machine the
/// load changes between criterion's two back-to-back measurements, and alternating puts
/// both under the same conditions, so this ratio is the steadier figure.
fn interleaved_ratio() {
    let engine = engine();
    let rounds = 400;
    let mut rewrite = Vec::with_capacity(rounds);
    let mut pass = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = std::time::Instant::now();
        black_box(engine.rewrite(black_box(NEWSLETTER)).ok());
        rewrite.push(t.elapsed());
        let t = std::time::Instant::now();
        black_box(passthrough(black_box(NEWSLETTER)));
        pass.push(t.elapsed());
    }
    rewrite.sort_unstable();
    pass.sort_unstable();
    let mib = NEWSLETTER.len() as f64 / (1024.0 * 1024.0);
    let (r, p) = (
        rewrite[rounds / 2].as_secs_f64(),
        pass[rounds / 2].as_secs_f64(),
    );
    println!(
        "interleaved medians over {rounds} rounds: rewrite {:.1} MiB/s, passthrough {:.1} MiB/s, ratio {:.1} %",
        mib / r,
        mib / p,
        100.0 * p / r
    );
}

criterion_group!(benches, bench_rewrite);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    interleaved_ratio();
}
