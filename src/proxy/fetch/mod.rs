//! Outbound fetching for mailveil.
//!
//! mailveil fetches remote images named by URLs in strangers' emails, which
//! makes it a server-side-request-forgery target: a sender can put
//! `http://169.254.169.254/` or `http://localhost:6379/` in an `<img>` tag.
//! This module is the only code that opens outbound sockets, and it owns:
//!
//! * the SSRF guard: [`IpPolicy::permits`] decides, in one place, which
//!   addresses may be contacted. It is applied to IP-literal hosts before any
//!   request is built, and again inside the TCP connector to every address a
//!   name resolves to, so redirects and DNS answers go through the same gate;
//! * DNS pinning: a name is resolved once per connection and the socket is
//!   connected to one of the addresses that passed the policy, never to the
//!   result of a second lookup (which DNS rebinding could swap);
//! * redirect, size and time limits ([`FetchConfig`]);
//! * anonymity: requests carry only `Host`, `User-Agent` and `Accept`, and the
//!   API takes nothing but a [`Url`], so nothing from a caller's request (its
//!   cookies, referer or address) can leak upstream.
//!
//! This file holds the client: [`Fetcher`], its redirect loop, the request it
//! sends and the body limit. The address rules are in `policy.rs`, name
//! resolution in `resolve.rs`, the connect-time checks in `connect.rs`, and
//! [`FetchError`] with the mapping from hyper's and rustls's errors in
//! `error.rs`; what other modules need of them is re-exported here. Checking
//! the fetched bytes is not this module's job (`proxy::content` does it).
//!
//! Logging is at debug level only and names the host plus a short keyed hash
//! of the URL (`UrlTag`), never the URL itself: tracking URLs identify
//! recipients.

mod connect;
mod error;
mod policy;
mod resolve;
#[cfg(test)]
mod testutil;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, ACCEPT, LOCATION, USER_AGENT};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::debug;
use url::{Host, Url};

use self::connect::GuardedConnector;
use self::error::{map_client_error, map_hyper_error};
use self::resolve::normalise_name;
use crate::urltag::UrlTag;

pub use self::error::FetchError;
pub use self::policy::IpPolicy;
pub use self::resolve::{Resolve, ResolveFuture, StaticResolver, SystemResolver};

/// The `Accept` header sent upstream: images first, then web fonts (stylesheets
/// in mail reference them), then anything.
const ACCEPT_VALUE: &str =
    "image/avif,image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,font/woff2,font/woff,*/*;q=0.5";

/// Idle pooled connections are dropped after this; the pool only saves
/// handshakes for images fetched from the same host in quick succession.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Cap on idle pooled connections per host, so one host cannot hold many sockets.
const POOL_MAX_IDLE_PER_HOST: usize = 4;

/// Limits and identity of the outbound client.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Sent as `User-Agent`; the only identifying header.
    pub user_agent: String,
    /// Limit for one TCP connect attempt.
    pub connect_timeout: Duration,
    /// Whole fetch including redirects and body.
    pub total_timeout: Duration,
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Redirects followed before giving up.
    pub max_redirects: u32,
    /// Which addresses may be contacted.
    pub policy: IpPolicy,
}

/// A successful fetch.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The response body, at most `max_bytes` long.
    pub body: Bytes,
    /// How many redirects were followed.
    pub redirects: u32,
}

type HttpsClient = Client<HttpsConnector<GuardedConnector>, Empty<Bytes>>;

/// The outbound client. Clone-cheap (Arc inside), Send + Sync.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    config: FetchConfig,
    /// Set-up failures are kept and reported by `fetch` so `new` needs no panic.
    client: Result<HttpsClient, FetchError>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What to do with a response.
enum Step {
    /// 2xx: read the body.
    Body,
    /// A followed redirect to this (not yet checked) URL.
    Redirect(Url),
}

impl Fetcher {
    /// A fetcher using the system resolver.
    pub fn new(config: FetchConfig) -> Self {
        Self::with_resolver(config, Arc::new(SystemResolver))
    }

    /// A fetcher resolving names with `resolver` (tests inject a static map).
    pub fn with_resolver(config: FetchConfig, resolver: Arc<dyn Resolve>) -> Self {
        let client = build_client(&config, resolver);
        Self {
            inner: Arc::new(Inner { config, client }),
        }
    }

    /// Fetches `url` anonymously, following at most max_redirects redirects, each target re-checked.
    ///
    /// # Errors
    /// A [`FetchError`] when the URL or a redirect target is refused (scheme, userinfo,
    /// address policy), when a limit is passed (time, size, redirects), when the upstream
    /// answers other than 2xx, and when resolution, connection, TLS or HTTP fails.
    pub async fn fetch(&self, url: &Url) -> Result<Fetched, FetchError> {
        let host = url.host_str().unwrap_or("");
        let tag = UrlTag::of(url.as_str());
        debug!(host, url = %tag, "fetch start");
        let outcome = tokio::time::timeout(self.inner.config.total_timeout, self.follow(url))
            .await
            .unwrap_or(Err(FetchError::Timeout));
        match &outcome {
            Ok(done) => {
                debug!(host, url = %tag, redirects = done.redirects, bytes = done.body.len(), "fetch done")
            }
            Err(error) => debug!(host, url = %tag, %error, "fetch failed"),
        }
        outcome
    }

    /// The redirect loop: check, send, then either read the body or move on.
    async fn follow(&self, start: &Url) -> Result<Fetched, FetchError> {
        let client = self.inner.client.as_ref().map_err(Clone::clone)?;
        let config = &self.inner.config;
        let mut url = start.clone();
        let mut redirects = 0;
        loop {
            check_target(&url, &config.policy)?;
            let response = send(client, &url, &config.user_agent).await?;
            match classify(&url, response.status(), response.headers())? {
                Step::Body => {
                    let body = read_body(response.into_body(), config.max_bytes).await?;
                    return Ok(Fetched { body, redirects });
                }
                Step::Redirect(next) => {
                    if redirects >= config.max_redirects {
                        return Err(FetchError::TooManyRedirects);
                    }
                    redirects += 1;
                    debug!(host = next.host_str().unwrap_or(""), url = %UrlTag::of(next.as_str()), redirects, "redirect");
                    url = next;
                }
            }
        }
    }
}

/// The hyper client: rustls (ring provider, webpki roots, ALPN h2 + http/1.1)
/// over the guarded connector.
fn build_client(
    config: &FetchConfig,
    resolver: Arc<dyn Resolve>,
) -> Result<HttpsClient, FetchError> {
    let guarded = GuardedConnector::new(config.policy.clone(), resolver, config.connect_timeout);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(guarded);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(https))
}

/// Explicit provider, so no process-global rustls default has to be installed.
fn tls_config() -> Result<rustls::ClientConfig, FetchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Setup(e.to_string()))?
        .with_webpki_roots()
        .with_no_client_auth())
}

/// Refusals that need no network: scheme, userinfo, host, IP-literal policy.
/// Names are checked by the connector once resolved.
fn check_target(url: &Url, policy: &IpPolicy) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::Userinfo);
    }
    match url.host() {
        None => Err(FetchError::NoHost),
        Some(Host::Domain(name)) if is_localhost_name(name) => {
            // RFC 6761: these names are loopback by definition, whatever a resolver says
            // (and some resolvers fail on them, which would hide the refusal).
            policy.check(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        Some(Host::Domain(_)) => Ok(()),
        Some(Host::Ipv4(v4)) => policy.check(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => policy.check(IpAddr::V6(v6)),
    }
}

/// `localhost`, `LOCALHOST.` and anything under `.localhost`.
fn is_localhost_name(name: &str) -> bool {
    let name = normalise_name(name);
    name == "localhost" || name.ends_with(".localhost")
}

/// Sends one GET for `url`, the client's errors mapped to [`FetchError`].
async fn send(
    client: &HttpsClient,
    url: &Url,
    user_agent: &str,
) -> Result<Response<Incoming>, FetchError> {
    let request = build_request(url, user_agent)?;
    client
        .request(request)
        .await
        .map_err(|e| map_client_error(&e))
}

/// A GET with exactly `User-Agent` and `Accept`; hyper adds `Host`. No
/// `Accept-Encoding`, so bodies arrive uncompressed and the size limit is real.
fn build_request(url: &Url, user_agent: &str) -> Result<Request<Empty<Bytes>>, FetchError> {
    let user_agent = HeaderValue::from_str(user_agent)
        .map_err(|_| FetchError::Setup("user agent is not a valid header value".to_owned()))?;
    Request::builder()
        .method(Method::GET)
        .uri(request_uri(url)?)
        .header(USER_AGENT, user_agent)
        .header(ACCEPT, HeaderValue::from_static(ACCEPT_VALUE))
        .body(Empty::new())
        .map_err(|e| FetchError::InvalidUrl(e.to_string()))
}

/// The URL as a request target, fragment removed (fragments are never sent).
fn request_uri(url: &Url) -> Result<Uri, FetchError> {
    let mut target = url.clone();
    target.set_fragment(None);
    target
        .as_str()
        .parse()
        .map_err(|e: http::uri::InvalidUri| FetchError::InvalidUrl(e.to_string()))
}

/// 2xx is a body, a followed redirect status (301, 302, 303, 307, 308) is its
/// target, anything else is a `Status` error.
fn classify(url: &Url, status: StatusCode, headers: &HeaderMap) -> Result<Step, FetchError> {
    if status.is_success() {
        return Ok(Step::Body);
    }
    let followed = [301, 302, 303, 307, 308].contains(&status.as_u16());
    if followed {
        return redirect_target(url, headers).map(Step::Redirect);
    }
    Err(FetchError::Status(status.as_u16()))
}

/// `Location` resolved against the current URL. The result is checked like
/// any other target by the next turn of the loop.
fn redirect_target(url: &Url, headers: &HeaderMap) -> Result<Url, FetchError> {
    let location = headers.get(LOCATION).ok_or(FetchError::BadRedirect)?;
    let location = location.to_str().map_err(|_| FetchError::BadRedirect)?;
    url.join(location).map_err(|_| FetchError::BadRedirect)
}

/// Streams the body, stopping as soon as it would pass `max_bytes`, so memory
/// stays bounded whatever the upstream sends.
async fn read_body(mut body: Incoming, max_bytes: u64) -> Result<Bytes, FetchError> {
    // The size hint carries Content-Length: refuse before reading anything.
    if body.size_hint().lower() > max_bytes {
        return Err(FetchError::TooLarge);
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| map_hyper_error(&e))?;
        if let Ok(data) = frame.into_data() {
            append_limited(&mut buf, &data, max_bytes)?;
        }
    }
    Ok(buf.freeze())
}

/// Appends `data` unless that would make `buf` longer than `max_bytes`.
fn append_limited(buf: &mut BytesMut, data: &[u8], max_bytes: u64) -> Result<(), FetchError> {
    let total = u64::try_from(buf.len().saturating_add(data.len())).unwrap_or(u64::MAX);
    if total > max_bytes {
        return Err(FetchError::TooLarge);
    }
    buf.extend_from_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::proxy::fetch::testutil::{
        config, resolver, sock, spawn_upstream, upstream_fetcher, url, Canary, IMG, UA,
    };

    #[test]
    fn fetcher_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Fetcher>();
        check::<FetchError>();
    }

    // ---- fetching ----

    #[tokio::test]
    async fn fetches_image_with_exactly_three_headers() {
        let up = spawn_upstream(vec![]).await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        let got = fetcher.fetch(&up.url("/img#fragment")).await.unwrap();
        assert_eq!(&got.body[..], IMG);
        assert_eq!(got.redirects, 0);

        let requests = up.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.path, "/img", "fragment must not be sent");
        let mut names: Vec<&str> = request.headers.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["accept", "host", "user-agent"],
            "{:?}",
            request.headers
        );
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header("host"), up.addr.to_string());
        assert_eq!(header("user-agent"), UA);
        assert_eq!(header("accept"), ACCEPT_VALUE);
    }

    #[tokio::test]
    async fn redirect_chain_within_limit_succeeds() {
        let up = spawn_upstream(vec![]).await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        let got = fetcher.fetch(&up.url("/redirect/5")).await.unwrap();
        assert_eq!(got.redirects, 5);
        assert_eq!(&got.body[..], IMG);
        // Every hop carried the same three headers only.
        for request in up.requests() {
            assert_eq!(request.headers.len(), 3, "{request:?}");
        }
    }

    #[tokio::test]
    async fn redirect_chain_over_limit_fails() {
        let up = spawn_upstream(vec![]).await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        let err = fetcher.fetch(&up.url("/redirect/6")).await.unwrap_err();
        assert_eq!(err, FetchError::TooManyRedirects);
        assert_eq!(
            up.requests().len(),
            6,
            "max_redirects + 1 requests, then stop"
        );
    }

    #[tokio::test]
    async fn redirect_loop_stops_quickly() {
        let up = spawn_upstream(vec![]).await;
        let mut cfg = config(&["127.0.0.1/32"]);
        cfg.max_redirects = 10;
        let started = Instant::now();
        let err = upstream_fetcher(cfg)
            .fetch(&up.url("/loop"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::TooManyRedirects);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(up.requests().len(), 11);
    }

    #[tokio::test]
    async fn redirects_to_private_or_unlisted_loopback_are_refused_without_connecting() {
        let canary4 = Canary::spawn(sock("127.0.0.2:0")).await;
        let canary6 = Canary::spawn(sock("[::1]:0")).await;
        let up = spawn_upstream(vec![
            ("/to-private", "http://10.0.0.1/x".to_owned()),
            (
                "/to-metadata",
                "http://169.254.169.254/latest/meta-data/".to_owned(),
            ),
            (
                "/to-canary",
                format!("http://127.0.0.2:{}/", canary4.port()),
            ),
            ("/to-canary6", format!("http://[::1]:{}/", canary6.port())),
            (
                "/to-canary-mapped",
                format!("http://[::ffff:127.0.0.2]:{}/", canary4.port()),
            ),
            (
                "/to-canary-name",
                format!("http://canary.test:{}/", canary4.port()),
            ),
        ])
        .await;
        let fetcher = Fetcher::with_resolver(
            config(&["127.0.0.1/32"]),
            resolver(&[("canary.test", &["127.0.0.2"])]),
        );
        for (path, host) in [
            ("/to-private", "10.0.0.1"),
            ("/to-metadata", "169.254.169.254"),
            ("/to-canary", "127.0.0.2"),
            ("/to-canary6", "::1"),
            ("/to-canary-mapped", "::ffff:127.0.0.2"),
            ("/to-canary-name", "canary.test"),
        ] {
            let err = fetcher.fetch(&up.url(path)).await.unwrap_err();
            assert_eq!(
                err,
                FetchError::Forbidden {
                    host: host.to_owned()
                },
                "{path}"
            );
        }
        assert_eq!(canary4.hits().await, 0);
        assert_eq!(canary6.hits().await, 0);
    }

    #[tokio::test]
    async fn bad_redirects_are_refused() {
        let up = spawn_upstream(vec![
            ("/to-ftp", "ftp://127.0.0.1/x".to_owned()),
            ("/to-file", "file:///etc/passwd".to_owned()),
            ("/to-userinfo", "http://user:pass@127.0.0.1/img".to_owned()),
            ("/to-garbage", "http://[::1/".to_owned()),
        ])
        .await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        for (path, expected) in [
            ("/no-location", FetchError::BadRedirect),
            ("/to-garbage", FetchError::BadRedirect),
            ("/to-ftp", FetchError::UnsupportedScheme),
            ("/to-file", FetchError::UnsupportedScheme),
            ("/to-userinfo", FetchError::Userinfo),
        ] {
            assert_eq!(
                fetcher.fetch(&up.url(path)).await.unwrap_err(),
                expected,
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn endless_body_is_too_large_quickly() {
        let up = spawn_upstream(vec![]).await;
        let mut cfg = config(&["127.0.0.1/32"]);
        cfg.max_bytes = 64 * 1024;
        cfg.total_timeout = Duration::from_secs(10);
        let started = Instant::now();
        let err = upstream_fetcher(cfg)
            .fetch(&up.url("/endless"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::TooLarge);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn announced_big_body_is_refused_up_front() {
        let up = spawn_upstream(vec![]).await;
        let started = Instant::now();
        let err = upstream_fetcher(config(&["127.0.0.1/32"]))
            .fetch(&up.url("/big"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::TooLarge);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn body_limit_is_inclusive() {
        let up = spawn_upstream(vec![]).await;
        let mut cfg = config(&["127.0.0.1/32"]);
        cfg.max_bytes = IMG.len() as u64;
        assert!(upstream_fetcher(cfg.clone())
            .fetch(&up.url("/img"))
            .await
            .is_ok());
        cfg.max_bytes -= 1;
        assert_eq!(
            upstream_fetcher(cfg)
                .fetch(&up.url("/img"))
                .await
                .unwrap_err(),
            FetchError::TooLarge
        );
        // Directly: the streaming check stops at the first byte over.
        let mut buf = BytesMut::new();
        assert!(append_limited(&mut buf, b"abc", 4).is_ok());
        assert_eq!(
            append_limited(&mut buf, b"de", 4),
            Err(FetchError::TooLarge)
        );
        assert_eq!(&buf[..], b"abc");
    }

    #[tokio::test]
    async fn slow_drip_times_out() {
        let up = spawn_upstream(vec![]).await;
        let mut cfg = config(&["127.0.0.1/32"]);
        cfg.total_timeout = Duration::from_secs(1);
        let started = Instant::now();
        let err = upstream_fetcher(cfg)
            .fetch(&up.url("/slow"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::Timeout);
        assert!(err.is_transient());
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1500),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn slow_resolver_is_bounded_by_total_timeout() {
        struct Stuck;
        impl Resolve for Stuck {
            fn resolve(&self, _host: &str, _port: u16) -> ResolveFuture<'_> {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(vec![])
                })
            }
        }
        let mut cfg = config(&[]);
        cfg.total_timeout = Duration::from_millis(500);
        let started = Instant::now();
        let err = Fetcher::with_resolver(cfg, Arc::new(Stuck))
            .fetch(&url("http://stuck.test/"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn status_codes() {
        let up = spawn_upstream(vec![]).await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        for (path, code, transient) in [
            ("/500", 500, true),
            ("/429", 429, true),
            ("/404", 404, false),
        ] {
            let err = fetcher.fetch(&up.url(path)).await.unwrap_err();
            assert_eq!(err, FetchError::Status(code));
            assert_eq!(err.is_transient(), transient, "{path}");
        }
    }

    /// What a refused URL must fail with.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Refusal {
        Forbidden,
        Scheme,
        Userinfo,
    }

    fn refusal_of(err: &FetchError) -> Option<Refusal> {
        match err {
            FetchError::Forbidden { .. } => Some(Refusal::Forbidden),
            FetchError::UnsupportedScheme => Some(Refusal::Scheme),
            FetchError::Userinfo => Some(Refusal::Userinfo),
            _ => None,
        }
    }

    /// Loopback in every spelling, literal or by name; `p4` and `p6` are the canaries' ports.
    fn loopback_cases(p4: u16, p6: u16) -> Vec<(String, Refusal)> {
        use Refusal::*;
        vec![
            (format!("http://127.0.0.1:{p4}/"), Forbidden),
            (format!("https://127.0.0.1:{p4}/"), Forbidden),
            (format!("http://127.1:{p4}/"), Forbidden),
            (format!("http://2130706433:{p4}/"), Forbidden),
            (format!("http://0x7f000001:{p4}/"), Forbidden),
            (format!("http://017700000001:{p4}/"), Forbidden),
            (format!("http://0177.0.0.1:{p4}/"), Forbidden),
            (format!("http://127.0.0.1.:{p4}/"), Forbidden),
            (format!("http://%31%32%37.0.0.1:{p4}/"), Forbidden),
            (format!("http://[::1]:{p6}/"), Forbidden),
            (format!("http://[::]:{p6}/"), Forbidden),
            (format!("http://[::ffff:127.0.0.1]:{p4}/"), Forbidden),
            (format!("http://[::ffff:7f00:1]:{p4}/"), Forbidden),
            (
                format!("http://[0:0:0:0:0:ffff:127.0.0.1]:{p4}/"),
                Forbidden,
            ),
            ("http://[::127.0.0.1]/".to_owned(), Forbidden),
            ("http://[64:ff9b::7f00:1]/".to_owned(), Forbidden),
            ("http://[2002:7f00:1::]/".to_owned(), Forbidden),
            (format!("http://0.0.0.0:{p4}/"), Forbidden),
            (format!("http://0:{p4}/"), Forbidden),
            (format!("http://localhost:{p4}/"), Forbidden),
            (format!("http://LOCALHOST:{p6}/"), Forbidden),
            (format!("http://loopback.test:{p4}/"), Forbidden),
            (format!("https://loopback.test:{p4}/"), Forbidden),
            (format!("http://loopback6.test:{p6}/"), Forbidden),
            (format!("http://mixed.test:{p4}/"), Forbidden),
        ]
    }

    /// Private, link-local (metadata), multicast and other special ranges.
    fn special_range_cases() -> Vec<(String, Refusal)> {
        use Refusal::*;
        vec![
            ("http://10.0.0.1/".to_owned(), Forbidden),
            ("http://172.16.0.1/".to_owned(), Forbidden),
            ("http://192.168.1.1/".to_owned(), Forbidden),
            ("http://100.64.0.1/".to_owned(), Forbidden),
            (
                "http://169.254.169.254/latest/meta-data/".to_owned(),
                Forbidden,
            ),
            ("http://[::ffff:169.254.169.254]/".to_owned(), Forbidden),
            ("http://metadata.test/".to_owned(), Forbidden),
            ("http://224.0.0.1/".to_owned(), Forbidden),
            ("http://255.255.255.255/".to_owned(), Forbidden),
            ("http://198.18.0.1/".to_owned(), Forbidden),
            ("http://192.0.2.1/".to_owned(), Forbidden),
            ("http://[fc00::1]/".to_owned(), Forbidden),
            ("http://[fe80::1]/".to_owned(), Forbidden),
            ("http://[fec0::1]/".to_owned(), Forbidden),
            ("http://[ff02::1]/".to_owned(), Forbidden),
            ("http://[2001:db8::1]/".to_owned(), Forbidden),
            ("http://[2001::1]/".to_owned(), Forbidden),
            ("http://[100::1]/".to_owned(), Forbidden),
        ]
    }

    /// URLs refused for their form, before any address is looked at.
    fn refused_form_cases(p4: u16) -> Vec<(String, Refusal)> {
        use Refusal::*;
        vec![
            ("http://user:pass@example.com/".to_owned(), Userinfo),
            (format!("http://example.com@127.0.0.1:{p4}/"), Userinfo),
            ("ftp://example.com/x.png".to_owned(), Scheme),
            ("file:///etc/passwd".to_owned(), Scheme),
            ("gopher://example.com/".to_owned(), Scheme),
            ("data:image/png;base64,AAAA".to_owned(), Scheme),
        ]
    }

    #[tokio::test]
    async fn ssrf_targets_are_refused_with_the_default_policy() {
        let canary4 = Canary::spawn(sock("127.0.0.1:0")).await;
        let canary6 = Canary::spawn(sock("[::1]:0")).await;
        let (p4, p6) = (canary4.port(), canary6.port());
        let cases: Vec<(String, Refusal)> = loopback_cases(p4, p6)
            .into_iter()
            .chain(special_range_cases())
            .chain(refused_form_cases(p4))
            .collect();
        assert!(cases.len() >= 30);
        let names = resolver(&[
            ("loopback.test", &["127.0.0.1"]),
            ("loopback6.test", &["::1"]),
            ("mixed.test", &["192.0.2.10", "127.0.0.1"]),
            ("metadata.test", &["169.254.169.254", "fd00:ec2::254"]),
        ]);
        let static_fetcher = Fetcher::with_resolver(config(&[]), names);
        let system_fetcher = Fetcher::new(config(&[]));
        let started = Instant::now();
        for (target, expected) in &cases {
            let fetcher = if target.to_ascii_lowercase().contains("localhost") {
                &system_fetcher
            } else {
                &static_fetcher
            };
            let parsed = Url::parse(target).unwrap();
            let result = fetcher.fetch(&parsed).await;
            let got = result.as_ref().err().and_then(refusal_of);
            assert_eq!(got, Some(*expected), "{target} gave {result:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusals must not wait on the network"
        );
        assert_eq!(canary4.hits().await, 0);
        assert_eq!(canary6.hits().await, 0);
    }
}
