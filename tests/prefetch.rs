//! Prefetch end to end, with the real binaries: messages go through `mailveil filter`,
//! `mailveil serve` drains the spool, and a logging "sender" proves that opening a message
//! tells it nothing — every URL fetched exactly once, before any open, with the same
//! anonymous headers whether the message is ever opened or not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::util::proxy::{get, png};
use crate::util::proxy_urls_at;
use crate::util::sandbox::Sandbox;
use crate::util::upstream::{Logged, Route, Upstream};
use crate::util::wait::until;

const MESSAGES: usize = 50;
const UA: &str = "mailveil-prefetch-test/1";

/// A sandbox for one scenario: the spool polled every 100 ms, `per_host` fetches at once to
/// a host, retries after 1 s, and `prefetch_extra` (more `[prefetch]` keys); fetching from
/// loopback allowed.
fn scenario(per_host: usize, prefetch_extra: &str) -> Sandbox {
    Sandbox::serving(&format!(
        "[prefetch]\npoll_interval_ms = 100\nper_host = {per_host}\nretry_base_secs = 1\n{prefetch_extra}\
         [fetch]\nallow_networks = [\"127.0.0.1/32\"]\nuser_agent = \"{UA}\"\n"
    ))
}

/// `mailveil filter` on `message`: the rewritten message.
fn filter(sandbox: &Sandbox, message: &str) -> String {
    let out = sandbox.run(&["filter"], message.as_bytes());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

async fn wait_until(what: &str, limit: Duration, done: impl FnMut() -> bool) {
    assert!(until(limit, done).await, "timed out waiting for {what}");
}

/// The sender: shared logos and per-recipient pixels, all logged.
async fn sender(delay: Duration) -> Upstream {
    let up = Upstream::start("127.0.0.1:0").await;
    let image = |w, h| Route::Body {
        content_type: "image/png",
        body: png(w, h).into(),
        delay,
    };
    up.route("/logo.png", image(60, 20));
    up.route("/banner.png", image(120, 30));
    up.route("/open/", image(1, 1));
    up.route("/hero/", image(40, 40));
    up
}

/// Message `i` for a recipient: two shared images, two unique per-recipient URLs.
fn message(up: &Upstream, i: usize) -> String {
    format!(
        "From: News <news@sender.example>\r\nTo: reader{i}@example.org\r\nSubject: Issue {i}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><body><img src=\"{logo}\"><p>Hello reader {i}</p>\
         <img src=\"{hero}\"><div style=\"background:url({banner})\">x</div>\
         <img src=\"{open}\"></body></html>\r\n",
        logo = up.url("/logo.png"),
        banner = up.url("/banner.png"),
        hero = up.url(&format!("/hero/{i}.png?r=rcpt{i}")),
        open = up.url(&format!("/open/{i}.gif?id=rcpt{i}")),
    )
}

fn expected_paths() -> BTreeSet<String> {
    let mut paths: BTreeSet<String> = ["/logo.png".to_owned(), "/banner.png".to_owned()].into();
    for i in 0..MESSAGES {
        paths.insert(format!("/hero/{i}.png?r=rcpt{i}"));
        paths.insert(format!("/open/{i}.gif?id=rcpt{i}"));
    }
    paths
}

fn counts(log: &[Logged]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for l in log {
        *counts.entry(l.path.clone()).or_insert(0) += 1;
    }
    counts
}

/// Every request carries exactly Host, the fixed User-Agent and Accept.
fn assert_anonymous(log: &[Logged]) {
    for l in log {
        let mut names: Vec<&str> = l.headers.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["accept", "host", "user-agent"],
            "{}: {:?}",
            l.path,
            l.headers
        );
        assert!(l.headers.iter().any(|(k, v)| k == "user-agent" && v == UA));
    }
}

/// A tiny deterministic generator, so the "random" opening pattern replays.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Opens some messages (some twice), never others, at random later moments; returns the
/// indexes opened and the time of the first open.
async fn open_some(rewritten: &[String], base: &str) -> (BTreeSet<usize>, SystemTime) {
    let mut rng = Lcg(0x5eed);
    let mut opened = BTreeSet::new();
    let first_open = SystemTime::now();
    for (i, message) in rewritten.iter().enumerate() {
        let times = rng.next() % 3; // 0: never opened, 1: once, 2: twice
        for _ in 0..times {
            tokio::time::sleep(Duration::from_millis(rng.next() % 20)).await;
            let urls = proxy_urls_at(message, base);
            assert_eq!(urls.len(), 4, "message {i} has four proxied images");
            for url in urls {
                assert_eq!(get(&url).await.status, 200, "message {i}: {url}");
            }
            opened.insert(i);
        }
    }
    (opened, first_open)
}

async fn metric(base: &str, name: &str) -> f64 {
    let text = String::from_utf8_lossy(&get(&format!("{base}/metrics")).await.body).into_owned();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

/// The checks shared by the scenarios, after the spool drained.
async fn assert_opens_tell_the_sender_nothing(
    setup: &Sandbox,
    up: &Upstream,
    rewritten: &[String],
) {
    let before = up.log();
    let fetched = counts(&before);
    assert_eq!(
        fetched.keys().cloned().collect::<BTreeSet<_>>(),
        expected_paths()
    );
    assert!(
        fetched.values().all(|&n| n == 1),
        "each URL fetched once: {fetched:?}"
    );
    assert_anonymous(&before);

    let (opened, first_open) = open_some(rewritten, &setup.base()).await;
    assert!(
        !opened.is_empty() && opened.len() < MESSAGES,
        "some opened, some not"
    );
    let after = up.log();
    assert_eq!(
        after.len(),
        before.len(),
        "opening fetched nothing upstream"
    );
    assert!(
        after.iter().all(|l| l.at <= first_open),
        "every fetch happened before the first open"
    );
    // Opened and never-opened messages left the same trace: one anonymous fetch per URL.
    for i in 0..MESSAGES {
        let mine: Vec<&Logged> = after
            .iter()
            .filter(|l| l.path.ends_with(&format!("=rcpt{i}")))
            .collect();
        assert_eq!(mine.len(), 2, "message {i}");
        let headers: BTreeSet<Vec<(String, String)>> = mine
            .iter()
            .map(|l| {
                l.headers
                    .iter()
                    .filter(|(k, _)| k != "host")
                    .cloned()
                    .collect()
            })
            .collect();
        assert_eq!(headers.len(), 1, "message {i}: identical anonymous headers");
    }
    assert_eq!(
        metric(&setup.base(), "mailveil_open_time_fetches_total").await,
        0.0
    );
    assert!(metric(&setup.base(), "mailveil_tracking_pixels_total").await >= MESSAGES as f64);
}

#[tokio::test]
async fn messages_filtered_while_serve_runs_are_prefetched_before_any_open() {
    let up = sender(Duration::ZERO).await;
    let setup = scenario(8, "");
    let _serve = setup.serve_healthy().await;
    let rewritten: Vec<String> = (0..MESSAGES)
        .map(|i| filter(&setup, &message(&up, i)))
        .collect();
    assert!(rewritten
        .iter()
        .all(|m| m.starts_with("X-Mailveil: proxied=4")));
    wait_until("the spool to drain", Duration::from_secs(60), || {
        setup.jobs() == 0
    })
    .await;
    // The figure behind the cache sizing advice in the README.
    let files = crate::util::walk(&setup.dir.path().join("cache"));
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "cache after {MESSAGES} messages: {} files, {bytes} bytes, {} bytes per message",
        files.len(),
        bytes / MESSAGES as u64
    );
    assert_opens_tell_the_sender_nothing(&setup, &up, &rewritten).await;
}

#[tokio::test]
async fn jobs_wait_in_the_spool_until_serve_starts() {
    let up = sender(Duration::ZERO).await;
    let setup = scenario(8, "");
    let rewritten: Vec<String> = (0..MESSAGES)
        .map(|i| filter(&setup, &message(&up, i)))
        .collect();
    assert_eq!(setup.jobs(), MESSAGES);
    assert!(up.log().is_empty(), "filter itself fetches nothing");
    let _serve = setup.serve_healthy().await;
    wait_until("the spool to drain", Duration::from_secs(60), || {
        setup.jobs() == 0
    })
    .await;
    assert_opens_tell_the_sender_nothing(&setup, &up, &rewritten).await;
}

#[tokio::test]
async fn sigkill_mid_drain_loses_no_job() {
    let up = sender(Duration::from_millis(200)).await;
    let per_host = 4;
    let setup = scenario(per_host, "");
    let rewritten: Vec<String> = (0..MESSAGES)
        .map(|i| filter(&setup, &message(&up, i)))
        .collect();
    let serve = setup.serve();
    wait_until("the drain to be under way", Duration::from_secs(30), || {
        up.log().len() >= 20
    })
    .await;
    serve.kill();
    let at_kill = up.log().len();
    assert!(
        at_kill < expected_paths().len(),
        "killed mid-drain ({at_kill} fetched)"
    );
    assert!(setup.jobs() > 0, "jobs remain after the kill");

    let _serve = setup.serve_healthy().await;
    wait_until("the spool to drain", Duration::from_secs(60), || {
        setup.jobs() == 0
    })
    .await;
    let fetched = counts(&up.log());
    assert_eq!(
        fetched.keys().cloned().collect::<BTreeSet<_>>(),
        expected_paths(),
        "no URL lost"
    );
    let twice: Vec<_> = fetched.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.iter().all(|(_, &n)| n == 2), "{twice:?}");
    // Only fetches in flight at the kill (at most per_host to this one host) may repeat.
    assert!(
        twice.len() <= per_host,
        "refetched after restart: {twice:?}"
    );
    let (opened, _) = open_some(&rewritten, &setup.base()).await;
    assert!(!opened.is_empty());
    assert_eq!(
        metric(&setup.base(), "mailveil_open_time_fetches_total").await,
        0.0
    );
}

#[tokio::test]
async fn placeholder_mode_tells_the_sender_nothing_on_a_miss() {
    let up = sender(Duration::ZERO).await;
    let setup = scenario(8, "on_miss = \"placeholder\"\n");
    let _serve = setup.serve_healthy().await;
    // Signed but never queued for prefetch: the cache has nothing.
    let url = setup.sign(&up.url("/logo.png"));
    let got = get(&url).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-type"], "image/gif");
    assert_eq!(got.headers["cache-control"], "no-store");
    assert!(up.log().is_empty(), "the sender saw nothing");
    assert_eq!(
        metric(&setup.base(), "mailveil_placeholders_total").await,
        1.0
    );
    assert_eq!(
        metric(&setup.base(), "mailveil_open_time_fetches_total").await,
        0.0
    );
}

#[tokio::test]
async fn fetch_mode_counts_an_open_time_fetch_on_a_miss() {
    let up = sender(Duration::ZERO).await;
    let setup = scenario(8, "");
    let _serve = setup.serve_healthy().await;
    let url = setup.sign(&up.url("/logo.png"));
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(up.hits("/logo.png"), 1);
    assert_eq!(
        metric(&setup.base(), "mailveil_open_time_fetches_total").await,
        1.0
    );
}

#[tokio::test]
async fn transient_failures_are_retried_until_cached() {
    let up = sender(Duration::ZERO).await;
    up.route("/flaky.png", Route::Status(503));
    let setup = scenario(8, "");
    let _serve = setup.serve_healthy().await;
    let message = format!(
        "From: a@b.example\r\nContent-Type: text/html\r\n\r\n<img src=\"{}\">\r\n",
        up.url("/flaky.png")
    );
    filter(&setup, &message);
    wait_until("a first failed attempt", Duration::from_secs(10), || {
        up.hits("/flaky.png") >= 1
    })
    .await;
    assert_eq!(setup.jobs(), 1, "the job stays while retrying");
    up.route("/flaky.png", Route::body("image/png", png(9, 9)));
    wait_until("the retry to succeed", Duration::from_secs(20), || {
        setup.jobs() == 0
    })
    .await;
    assert!(up.hits("/flaky.png") >= 2);
    assert!(metric(&setup.base(), "mailveil_prefetch_retries_total").await >= 1.0);
}

#[tokio::test]
async fn permanent_failures_end_the_job() {
    let up = sender(Duration::ZERO).await;
    up.route("/gone.png", Route::Status(404));
    up.body(
        "/page.png",
        "text/html",
        b"<html>not an image</html>".to_vec(),
    );
    let setup = scenario(8, "");
    let _serve = setup.serve_healthy().await;
    let message = format!(
        "From: a@b.example\r\nContent-Type: text/html\r\n\r\n<img src=\"{}\"><img src=\"{}\">\r\n",
        up.url("/gone.png"),
        up.url("/page.png")
    );
    filter(&setup, &message);
    wait_until("the job to end", Duration::from_secs(20), || {
        setup.jobs() == 0
    })
    .await;
    assert_eq!(up.hits("/gone.png"), 1, "a 404 is not retried");
    assert_eq!(up.hits("/page.png"), 1, "refused content is not retried");
}

#[tokio::test]
async fn a_prefetch_refused_on_purpose_is_not_retried_when_the_mail_is_opened() {
    // Issue 11: a sender who answers the delivery-time fetch with 404, 503 or silence used
    // to learn the open time after all, from the fetch the reader's open made.
    let up = sender(Duration::ZERO).await;
    up.route("/refused.png", Route::Status(404));
    up.route("/busy.png", Route::Status(503));
    up.route("/silent.png", Route::Drip(Duration::from_secs(5)));
    let setup = Sandbox::serving(&format!(
        "[prefetch]\npoll_interval_ms = 100\nretry_base_secs = 1\nmax_attempts = 2\n\
         [fetch]\nallow_networks = [\"127.0.0.1/32\"]\nuser_agent = \"{UA}\"\ntimeout_secs = 2\n"
    ));
    let _serve = setup.serve_healthy().await;
    let paths = ["/refused.png", "/busy.png", "/silent.png"];
    let imgs: String = paths
        .iter()
        .map(|p| format!("<img src=\"{}\">", up.url(p)))
        .collect();
    let rewritten = filter(
        &setup,
        &format!("From: a@b.example\r\nContent-Type: text/html\r\n\r\n{imgs}\r\n"),
    );
    wait_until("the job to end", Duration::from_secs(30), || {
        setup.jobs() == 0
    })
    .await;
    let delivered = up.log().len();
    assert!(delivered >= 3, "each was tried at delivery");
    // The sender now answers, hoping to see the open.
    for path in paths {
        up.route(path, Route::body("image/png", png(3, 3)));
    }
    let urls = proxy_urls_at(&rewritten, &setup.base());
    assert_eq!(urls.len(), 3, "{rewritten}");
    for url in &urls {
        let got = get(url).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["content-type"], "image/gif", "the placeholder");
    }
    assert_eq!(
        up.log().len(),
        delivered,
        "no request reached the sender after delivery"
    );
    assert_eq!(
        metric(&setup.base(), "mailveil_open_time_fetches_total").await,
        0.0
    );
}
