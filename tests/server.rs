//! The image proxy (in-process) against a real loopback upstream: hits and misses,
//! signatures, redirects, the exact headers sent upstream, the cache across restarts,
//! corruption, coalescing, HTTP semantics. Hostile upstreams are in `hostile.rs`.

use std::time::{Duration, Instant};

use crate::util::proxy::{get, loopback_proxy, png, request, setup_proxy, USER_AGENT};
use crate::util::upstream::Route;
use crate::util::walk;

#[tokio::test]
async fn miss_then_hit_with_our_headers_only() {
    let (_dir, up, proxy) = setup_proxy().await;
    up.body("/a.png", "image/png", png(20, 10));
    let path = proxy.path_for(&up.url("/a.png"));
    let first = get(&proxy.url(&path)).await;
    assert_eq!(first.status, 200);
    let second = get(&proxy.url(&path)).await;
    assert_eq!(second.status, 200);
    assert_eq!(first.body, second.body);
    assert_eq!(up.hits("/a.png"), 1, "second request served from cache");
    let h = &second.headers;
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["content-length"], second.body.len().to_string().as_str());
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"]
        .to_str()
        .expect("csp")
        .contains("default-src 'none'"));
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["cache-control"]
        .to_str()
        .expect("cc")
        .contains("max-age="));
    assert!(
        h.get("set-cookie").is_none(),
        "no upstream header passes through"
    );
    let decoded = image::load_from_memory(&second.body).expect("a valid image");
    assert_eq!((decoded.width(), decoded.height()), (20, 10));
    proxy.stop().await;
}

#[tokio::test]
async fn bad_or_missing_signature_is_403_without_touching_the_network() {
    let (_dir, up, proxy) = setup_proxy().await;
    up.body("/a.png", "image/png", png(2, 2));
    let good = proxy.path_for(&up.url("/a.png"));
    let other = proxy.path_for(&up.url("/b.png"));
    let forged = format!(
        "{}/{}",
        good.rsplit_once('/').expect("tag").0,
        other.rsplit_once('/').expect("t").1
    );
    for path in [
        "/i/",
        "/i/abc",
        "/i/AAAAAAAAAAAAAAAAAAAAAA/aHR0cDovL3guZXhhbXBsZS8",
        forged.as_str(),
    ] {
        assert_eq!(get(&proxy.url(path)).await.status, 403, "{path}");
    }
    assert!(up.log().is_empty(), "upstream contacted: {:?}", up.log());
    proxy.stop().await;
}

#[tokio::test]
async fn routes_health_metrics_and_404() {
    let (_dir, _up, proxy) = setup_proxy().await;
    assert_eq!(get(&proxy.url("/healthz")).await.status, 200);
    assert_eq!(get(&proxy.url("/nothing")).await.status, 404);
    assert_eq!(request("POST", &proxy.url("/i/x/y"), &[]).await.status, 405);
    let _ = get(&proxy.url("/i/bad/sig")).await;
    let metrics = get(&proxy.url("/metrics")).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("mailveil_requests_total{outcome=\"bad_signature\"} 1"),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn exactly_the_allowed_headers_go_upstream() {
    let (_dir, up, proxy) = setup_proxy().await;
    up.body("/h.png", "image/png", png(3, 3));
    let path = proxy.path_for(&up.url("/h.png"));
    let got = request(
        "GET",
        &proxy.url(&path),
        &[
            ("cookie", "session=reader"),
            ("referer", "https://webmail.example/inbox"),
            ("x-forwarded-for", "203.0.113.9"),
            ("user-agent", "ReaderMail/1.0"),
            ("accept-language", "fr"),
        ],
    )
    .await;
    assert_eq!(got.status, 200);
    let log = up.log();
    assert_eq!(log.len(), 1);
    let mut names: Vec<&str> = log[0].headers.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["accept", "host", "user-agent"],
        "{:?}",
        log[0].headers
    );
    let ua = log[0]
        .headers
        .iter()
        .find(|(k, _)| k == "user-agent")
        .expect("ua");
    assert_eq!(ua.1, USER_AGENT);
    proxy.stop().await;
}

#[tokio::test]
async fn redirect_chains_are_followed_within_the_limit() {
    let (_dir, up, proxy) = setup_proxy().await;
    up.body("/final.png", "image/png", png(4, 4));
    up.route("/r1", Route::Redirect(up.url("/r2")));
    up.route("/r2", Route::Redirect("/final.png".into()));
    let ok = get(&proxy.url(&proxy.path_for(&up.url("/r1")))).await;
    assert_eq!(ok.status, 200);
    up.route("/loop/", Route::RedirectLoop("/loop/"));
    let started = Instant::now();
    let looped = get(&proxy.url(&proxy.path_for(&up.url("/loop/0")))).await;
    assert!(
        looped.status >= 400,
        "redirect loop must fail, got {}",
        looped.status
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        up.hits_prefix("/loop/") <= 6,
        "at most max_redirects + 1 requests"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn if_none_match_gives_304_and_head_has_no_body() {
    let (_dir, up, proxy) = setup_proxy().await;
    up.body("/e.png", "image/png", png(5, 5));
    let url = proxy.url(&proxy.path_for(&up.url("/e.png")));
    let first = get(&url).await;
    let etag = first.headers["etag"].to_str().expect("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.len() == 66,
        "strong etag: {etag}"
    );
    let cond = request("GET", &url, &[("if-none-match", &etag)]).await;
    assert_eq!(cond.status, 304);
    assert!(cond.body.is_empty());
    let head = request("HEAD", &url, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers["content-length"],
        first.body.len().to_string().as_str()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn cache_survives_a_restart() {
    let (dir, up, proxy) = setup_proxy().await;
    up.body("/keep.png", "image/png", png(6, 6));
    let path = proxy.path_for(&up.url("/keep.png"));
    let before = get(&proxy.url(&path)).await;
    proxy.stop().await;
    let proxy = loopback_proxy(dir.path()).await;
    let after = get(&proxy.url(&path)).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.body, before.body);
    assert_eq!(up.hits("/keep.png"), 1, "served from disk after restart");
    proxy.stop().await;
}

#[tokio::test]
async fn a_corrupt_cache_file_is_never_served() {
    let (dir, up, proxy) = setup_proxy().await;
    up.body("/c.png", "image/png", png(7, 7));
    let path = proxy.path_for(&up.url("/c.png"));
    let good = get(&proxy.url(&path)).await;
    proxy.stop().await;
    let mut corrupted = 0;
    for entry in walk(&dir.path().join("objects")) {
        let mut bytes = std::fs::read(&entry).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&entry, bytes).expect("write");
        corrupted += 1;
    }
    assert_eq!(corrupted, 1);
    let proxy = loopback_proxy(dir.path()).await;
    let again = get(&proxy.url(&path)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, good.body, "refetched, not the corrupt bytes");
    assert_eq!(up.hits("/c.png"), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn hundred_concurrent_requests_make_one_upstream_fetch() {
    let (_dir, up, proxy) = setup_proxy().await;
    up.route(
        "/slow.png",
        Route::Body {
            content_type: "image/png",
            body: png(8, 8).into(),
            delay: Duration::from_millis(300),
        },
    );
    let url = proxy.url(&proxy.path_for(&up.url("/slow.png")));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("join"), 200);
    }
    assert_eq!(up.hits("/slow.png"), 1);
    proxy.stop().await;
}
