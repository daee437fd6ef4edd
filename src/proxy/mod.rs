//! The HTTP server of `mailveil serve`: accepts connections (plain or TLS, HTTP/1.1 and
//! HTTP/2), routes requests, and answers signed image URLs from the cache, fetching
//! upstream only on a miss.
//!
//! Routes: `GET`/`HEAD /i/…` (signed proxy URL), `/healthz`, `/metrics`; everything else
//! is 404. A request is only ever fetched upstream after its signature verified
//! ([`Signer::verify`]). Errors become status codes in one place ([`ProxyError::status`]);
//! clients get a terse body, logs get the detail (host and URL hash, never the URL).
//! Shutdown: stop accepting, let in-flight connections finish under a deadline.

pub mod cache;
pub mod content;
pub mod fetch;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use url::Url;

use crate::metrics::{FetchResult, Metrics, Outcome};
use crate::proxy::cache::{Cache, Entry, NewEntry, Source};
use crate::proxy::content::{ContentError, ContentPolicy};
use crate::proxy::fetch::{FetchError, Fetcher};
use crate::sign::Signer;

/// Body type of every response.
pub type Body = Full<Bytes>;

/// Limits and options of the listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client gets to send its request headers (slowloris bound).
    pub header_timeout: Duration,
    /// Time in-flight connections get to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// TLS, when `server.tls_cert` and `server.tls_key` are set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What request handlers share.
pub struct ProxyState {
    /// Verifies proxy URLs; replaced whole on reload (SIGHUP), so a request sees one key set.
    signer: std::sync::RwLock<Arc<Signer>>,
    /// The two-tier cache.
    pub cache: Cache,
    /// The outbound client (the only code opening outbound sockets).
    pub fetcher: Fetcher,
    /// Content checks for fetched bodies.
    pub images: ContentPolicy,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Bounds image decoding running at once: each can take a second of CPU and about
    /// twice `images.max_alloc` of memory, and blocking tasks cannot be cancelled.
    decode_slots: Semaphore,
    /// What a reader's request does when the cache has nothing.
    on_miss: OnMiss,
}

/// What a reader's request does on a cache miss (prefetch failed, or the entry was evicted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMiss {
    /// Fetch now: the sender learns the open time, but still not the reader's address.
    Fetch,
    /// Serve a neutral transparent image: the sender learns nothing.
    Placeholder,
}

impl ProxyState {
    /// Shared state for the handlers; decoding is bounded to the machine's parallelism.
    pub fn new(
        signer: Signer,
        cache: Cache,
        fetcher: Fetcher,
        images: ContentPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self {
            signer: std::sync::RwLock::new(Arc::new(signer)),
            cache,
            fetcher,
            images,
            metrics,
            decode_slots: Semaphore::new(cpus),
            on_miss: OnMiss::Fetch,
        }
    }

    /// The current signer.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Swaps in a new signer (keys reloaded); requests in flight finish with the old one.
    pub fn replace_signer(&self, signer: Signer) {
        *self
            .signer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(signer);
    }

    /// Sets what a reader's request does on a cache miss (default: fetch).
    pub fn with_on_miss(mut self, on_miss: OnMiss) -> Self {
        self.on_miss = on_miss;
        self
    }

    /// The cached entry for `target`, fetched (once, however many ask at the same time) and
    /// checked on a miss. Used by readers' requests and by the prefetch workers alike.
    ///
    /// # Errors
    /// The shared [`ProxyError`] of the fetch.
    pub async fn load(
        self: &Arc<Self>,
        target: &Url,
    ) -> Result<(Arc<Entry>, Source), Arc<ProxyError>> {
        let state = self.clone();
        let owned = target.clone();
        self.cache
            .get_or_fetch(target.as_str(), move || fetch_and_check(state, owned))
            .await
    }
}

/// Why an image request failed. Mapped to a status code in [`ProxyError::status`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// Upstream fetch failed or was refused.
    #[error("fetch: {0}")]
    Fetch(#[from] FetchError),
    /// The body failed the content checks.
    #[error("content: {0}")]
    Content(#[from] ContentError),
    /// The blocking sanitiser task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The one place where failures become HTTP statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Fetch(e) => match e {
                FetchError::UnsupportedScheme
                | FetchError::Userinfo
                | FetchError::NoHost
                | FetchError::Forbidden { .. } => StatusCode::FORBIDDEN,
                FetchError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
            ProxyError::Content(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Worth retrying later (the prefetch queue's question).
    pub fn is_transient(&self) -> bool {
        match self {
            ProxyError::Fetch(e) => e.is_transient(),
            ProxyError::Content(_) => false,
            ProxyError::Internal(_) => true,
        }
    }

    fn outcome(&self) -> Outcome {
        match self.status() {
            StatusCode::FORBIDDEN => Outcome::Forbidden,
            StatusCode::GATEWAY_TIMEOUT => Outcome::Timeout,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Outcome::Refused,
            StatusCode::BAD_GATEWAY => Outcome::UpstreamError,
            _ => Outcome::Internal,
        }
    }

    fn fetch_result(&self) -> FetchResult {
        match self.outcome() {
            Outcome::Forbidden => FetchResult::Forbidden,
            Outcome::Timeout => FetchResult::Timeout,
            Outcome::Refused => FetchResult::Refused,
            _ => FetchResult::Error,
        }
    }
}

/// Serves `listener` until `shutdown` completes, then drains connections for at most
/// `config.shutdown_grace`.
///
/// # Errors
/// Only if accepting fails in a way that is not per-connection (the listener is gone).
pub async fn run(
    listener: TcpListener,
    state: Arc<ProxyState>,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, config, shutdown, move |req| {
        handle(state.clone(), req)
    })
    .await
}

/// The accept loop shared by the image endpoint and the rewrite API: bounded connections,
/// optional TLS, HTTP/1.1 and HTTP/2, graceful drain. `handler` answers every request.
///
/// # Errors
/// Only if accepting fails in a way that is not per-connection.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let builder = connection_builder(&config);
    let tls = config.tls.clone().map(TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        // Wait for capacity before accepting, so excess clients queue in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let header_timeout = config.header_timeout;
        tokio::spawn(async move {
            let service = service_fn(handler);
            let result = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        _ => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed with connections still open");
    }
    Ok(())
}

fn connection_builder(config: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(16 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(16 * 1024);
    builder
}

/// Routes one request. Never fails: every error is a response.
async fn handle(
    state: Arc<ProxyState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let response = match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => plain(StatusCode::OK, "ok\n"),
        (&Method::GET, "/metrics") => metrics(&state),
        (&Method::GET | &Method::HEAD, p) if p.starts_with("/i/") => image(&state, &req).await,
        (_, p) if p.starts_with("/i/") || p == "/healthz" || p == "/metrics" => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(strip_body_for_head(req.method(), response))
}

/// HEAD gets the GET headers (Content-Length included) and no body.
fn strip_body_for_head(method: &Method, mut response: Response<Body>) -> Response<Body> {
    if method == Method::HEAD {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn metrics(state: &ProxyState) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(state.metrics.encode())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// A signed image request: verify, then cache or fetch.
async fn image(state: &Arc<ProxyState>, req: &Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (response, outcome) = match state.signer().verify(req.uri().path()) {
        Err(e) => {
            tracing::debug!(error = %e, "refused proxy request");
            (
                plain(StatusCode::FORBIDDEN, "forbidden\n"),
                Outcome::BadSignature,
            )
        }
        Ok(signed) => serve_target(state, signed.target(), req).await,
    };
    state
        .metrics
        .request(outcome, started.elapsed().as_secs_f64());
    response
}

async fn serve_target(
    state: &Arc<ProxyState>,
    target: &Url,
    req: &Request<Incoming>,
) -> (Response<Body>, Outcome) {
    // Log fields are computed only when debug logging is on: this is the hot path.
    let host = || target.host_str().unwrap_or("");
    let url_hash = || short_hash(target.as_str());
    if state.on_miss == OnMiss::Placeholder {
        let Some(entry) = state.cache.get(target.as_str()).await else {
            tracing::debug!(host = host(), url = %url_hash(), "miss answered with the placeholder");
            state.metrics.placeholder();
            return (placeholder(), Outcome::Placeholder);
        };
        return cached_response(state, &entry, req, Outcome::Hit);
    }
    let result = state.load(target).await;
    match result {
        Ok((entry, source)) => {
            let outcome = match source {
                Source::Memory => Outcome::HitMemory,
                Source::Disk => Outcome::HitDisk,
                Source::Fetched => Outcome::Fetched,
                Source::Coalesced => Outcome::Coalesced,
            };
            record_source(&state.metrics, source);
            tracing::debug!(host = host(), url = %url_hash(), ?outcome, "served");
            cached_response(state, &entry, req, outcome)
        }
        Err(e) => {
            tracing::debug!(host = host(), url = %url_hash(), error = %e, "proxy request failed");
            let status = e.status();
            let reason = status.canonical_reason().unwrap_or("error");
            (
                plain(status, &format!("{}\n", reason.to_ascii_lowercase())),
                e.outcome(),
            )
        }
    }
}

fn record_source(metrics: &Metrics, source: Source) {
    match source {
        Source::Memory => metrics.cache_hit("memory"),
        Source::Disk => metrics.cache_hit("disk"),
        Source::Fetched => {
            // A reader's open caused an upstream fetch: the sender learns the open time.
            metrics.cache_miss();
            metrics.open_time_fetch();
        }
        Source::Coalesced => metrics.cache_miss(),
    }
}

/// A 1×1 transparent GIF, served when `prefetch.on_miss = "placeholder"` finds nothing.
const PLACEHOLDER_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The neutral image; not cacheable by the client, so a later prefetch can still show.
fn placeholder() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(PLACEHOLDER_GIF)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(PLACEHOLDER_GIF.len()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    add_security_headers(h);
    r
}

/// Fetches and checks a body, for the cache to store. Runs once per coalesced group.
async fn fetch_and_check(state: Arc<ProxyState>, target: Url) -> Result<NewEntry, ProxyError> {
    let result = fetch_and_sanitize(&state, &target).await;
    state.metrics.fetch(match &result {
        Ok(_) => FetchResult::Ok,
        Err(e) => e.fetch_result(),
    });
    if result.as_ref().is_ok_and(|entry| entry.is_pixel) {
        state.metrics.tracking_pixel();
        tracing::debug!(host = target.host_str().unwrap_or(""), url = %short_hash(target.as_str()), "fetched a tracking pixel");
    }
    result
}

async fn fetch_and_sanitize(state: &ProxyState, target: &Url) -> Result<NewEntry, ProxyError> {
    let fetched = state.fetcher.fetch(target).await?;
    let _slot = state
        .decode_slots
        .acquire()
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))?;
    let policy = state.images.clone();
    let sanitized = tokio::task::spawn_blocking(move || {
        crate::proxy::content::sanitize(&fetched.body, &policy)
    })
    .await
    .map_err(|e| ProxyError::Internal(e.to_string()))??;
    Ok(NewEntry {
        content_type: sanitized.kind.content_type().to_owned(),
        is_pixel: sanitized.is_pixel,
        body: Bytes::from(sanitized.body),
    })
}

/// Builds the response for a cached entry: our headers only, none from upstream.
fn cached_response(
    state: &ProxyState,
    entry: &crate::proxy::cache::Entry,
    req: &Request<Incoming>,
    outcome: Outcome,
) -> (Response<Body>, Outcome) {
    let etag = format!("\"{}\"", entry.hash.to_hex());
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let (status, body, outcome) = if not_modified {
        (StatusCode::NOT_MODIFIED, Bytes::new(), Outcome::NotModified)
    } else {
        (StatusCode::OK, entry.body.clone(), outcome)
    };
    if req.method() == Method::GET {
        state.metrics.bytes(body.len());
    }
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&entry.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::OK {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    add_security_headers(h);
    (r, outcome)
}

/// Headers on every response: nothing served here may be sniffed into a document, run
/// script, or leak the reader's page through a referer.
fn add_security_headers(h: &mut http::HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// A short `text/plain` response carrying the security headers.
pub fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(text.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    add_security_headers(h);
    r
}

/// A short, stable identifier for a URL in logs: enough to correlate, useless to a reader
/// of the logs who wants the recipient's tracking token.
pub fn short_hash(url: &str) -> String {
    let hash = blake3::hash(url.as_bytes());
    hash.to_hex()[..12].to_owned()
}

/// Loads a PEM certificate chain and private key into a rustls server config (ring
/// provider, ALPN h2 and http/1.1).
///
/// # Errors
/// Unreadable files, no certificate, no key, or a key that does not match.
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("server.tls_cert {}", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "server.tls_cert {}: no certificate found",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("server.tls_key {}: no private key read", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls_cert / server.tls_key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
