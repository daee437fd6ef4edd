//! Routes of the image endpoint: `GET`/`HEAD /i/…` (a signed proxy URL), `/healthz`,
//! `/metrics`; everything else is 404. A proxy path reaches the fetch path only after
//! [`Signer::verify`](crate::sign::Signer::verify) turned it into a `SignedUrl`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{OnMiss, ProxyError, ProxyState};
use crate::http::{add_security_headers, plain, Body};
use crate::metrics::{Metrics, Outcome};
use crate::proxy::cache::{Entry, Source};
use crate::sign::SignedUrl;
use crate::urltag::UrlTag;

/// Routes one request. Never fails: every error is a response.
pub(super) async fn handle(
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
        Ok(signed) => serve_target(state, &signed, req).await,
    };
    state
        .metrics
        .request(outcome, started.elapsed().as_secs_f64());
    response
}

async fn serve_target(
    state: &Arc<ProxyState>,
    signed: &SignedUrl,
    req: &Request<Incoming>,
) -> (Response<Body>, Outcome) {
    let target = signed.target();
    // Log fields are computed only when debug logging is on: this is the hot path.
    let host = || target.host_str().unwrap_or("");
    let url_hash = || UrlTag::of(target.as_str());
    if state.on_miss == OnMiss::Placeholder {
        let Some(entry) = state.cache.get(target.as_str()).await else {
            tracing::debug!(host = host(), url = %url_hash(), "miss answered with the placeholder");
            state.metrics.placeholder();
            return (placeholder(), Outcome::Placeholder);
        };
        return cached_response(state, &entry, req, Outcome::Hit);
    }
    let result = state.open(signed).await;
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
        Err(e) if matches!(*e, ProxyError::RefusedAtDelivery) => {
            tracing::debug!(host = host(), url = %url_hash(), "refused at delivery: placeholder");
            state.metrics.placeholder();
            (placeholder(), Outcome::Placeholder)
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

/// Builds the response for a cached entry: our headers only, none from upstream.
fn cached_response(
    state: &ProxyState,
    entry: &Entry,
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
