//! Hostile upstreams: each must end in a bounded time with an error status, pass no bytes
//! through, and leave the server healthy.

use std::time::{Duration, Instant};

use crate::util::proxy::{get, png, setup_proxy};
use crate::util::upstream::Route;

/// CRC-32 (IEEE) for hand-made PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small valid PNG whose header claims `width` x `height`: a decompression bomb.
fn bomb_png(width: u32, height: u32) -> Vec<u8> {
    let mut png = png(1, 1);
    // IHDR data starts after the 8-byte signature, 4-byte length and 4-byte type.
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

async fn status_within(path: &str, limit: Duration, route: Route) -> (u16, usize) {
    let (_dir, up, proxy) = setup_proxy().await;
    up.route(path, route);
    let started = Instant::now();
    let got = get(&proxy.url(&proxy.path_for(&up.url(path)))).await;
    assert!(
        started.elapsed() < limit,
        "{path}: took {:?}",
        started.elapsed()
    );
    assert_eq!(
        get(&proxy.url("/healthz")).await.status,
        200,
        "server still healthy"
    );
    proxy.stop().await;
    (got.status, got.body.len())
}

#[tokio::test]
async fn decompression_bomb_png_is_refused() {
    let (status, len) = status_within(
        "/bomb.png",
        Duration::from_secs(5),
        Route::body("image/png", bomb_png(100_000, 100_000)),
    )
    .await;
    assert_eq!(status, 415);
    assert!(len < 100, "no image bytes passed through");
}

#[tokio::test]
async fn html_served_as_png_is_refused() {
    let html = b"<!DOCTYPE html><html><script>alert(1)</script></html>".to_vec();
    let (status, len) = status_within(
        "/fake.png",
        Duration::from_secs(5),
        Route::body("image/png", html),
    )
    .await;
    assert_eq!(status, 415);
    assert!(len < 100);
}

#[tokio::test]
async fn svg_is_refused_by_default() {
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>".to_vec();
    let (status, _) = status_within(
        "/x.svg",
        Duration::from_secs(5),
        Route::body("image/svg+xml", svg),
    )
    .await;
    assert_eq!(status, 415);
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_byte_cap() {
    let (status, _) = status_within("/endless", Duration::from_secs(10), Route::Endless).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn a_slow_drip_times_out() {
    let (status, _) = status_within(
        "/drip",
        Duration::from_secs(6),
        Route::Drip(Duration::from_millis(400)),
    )
    .await;
    assert_eq!(status, 504);
}

#[tokio::test]
async fn a_ten_thousand_redirect_loop_stops_early() {
    let (status, _) = status_within(
        "/loop/0",
        Duration::from_secs(5),
        Route::RedirectLoop("/loop/"),
    )
    .await;
    assert!(status >= 400, "{status}");
}

#[tokio::test]
async fn upstream_errors_are_not_passed_through() {
    for code in [404u16, 500, 503] {
        let (status, _) = status_within("/err", Duration::from_secs(5), Route::Status(code)).await;
        assert_eq!(status, 502, "upstream {code}");
    }
}
