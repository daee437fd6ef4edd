//! The rewrite API for webmail: `POST /api/v1/rewrite` with a `text/html` body returns the
//! rewritten HTML; with a `message/rfc822` body, the rewritten message. Either way the
//! proxied URLs are queued for prefetch, as `filter` does.
//!
//! It signs URLs, so strangers must not reach it: it listens on its own address
//! (`api.listen`, loopback by default), answers only requests bearing one of the configured
//! tokens (401 otherwise; tokens are compared as BLAKE3 digests, in constant time), and
//! bounds request bodies (413). Errors map to statuses here; the rewrite itself is
//! [`crate::rewrite::message`]'s and [`crate::rewrite::html`]'s.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::delivery::spool::Spool;
use crate::delivery::{queue_prefetch, SharedEngine};
use crate::http::{plain, Body};
use crate::rewrite::html::{Engine, Report};
use crate::rewrite::message::filter_message;

/// What the API handlers share.
pub struct ApiState {
    /// Shared with the milter; replaced whole on reload (SIGHUP).
    engine: Arc<SharedEngine>,
    spool: Spool,
    /// BLAKE3 digests of the accepted tokens.
    tokens: Vec<[u8; 32]>,
    max_body: usize,
}

impl ApiState {
    /// API state; `tokens` are the accepted bearer tokens (an empty list refuses everyone).
    pub fn new(
        engine: Arc<SharedEngine>,
        spool: Spool,
        tokens: &[String],
        max_body: usize,
    ) -> Self {
        Self {
            engine,
            spool,
            tokens: tokens
                .iter()
                .map(|t| *blake3::hash(t.as_bytes()).as_bytes())
                .collect(),
            max_body,
        }
    }

    fn engine(&self) -> Arc<Engine> {
        self.engine.get()
    }

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| *blake3::hash(t.trim().as_bytes()).as_bytes());
        presented.is_some_and(|p| {
            // Check every token, so timing does not tell which one was close.
            self.tokens.iter().fold(false, |ok, t| {
                constant_time_eq::constant_time_eq_32(t, &p) | ok
            })
        })
    }
}

/// The kinds of body the API rewrites.
enum Kind {
    Html,
    Message,
}

/// Answers one API request. Never fails: every error is a response.
pub async fn handle(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(respond(&state, req).await)
}

async fn respond(state: &Arc<ApiState>, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/api/v1/rewrite" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    if !state.authorised(&req) {
        let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let Some(kind) = content_kind(&req) else {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send text/html or message/rfc822\n",
        );
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
    }
    let body = match Limited::new(req.into_body(), state.max_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n"),
    };
    let state = state.clone();
    // Rewriting is CPU work on a whole document: keep it off the async threads.
    match tokio::task::spawn_blocking(move || rewrite(&state, kind, &body)).await {
        Ok(response) => response,
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
    }
}

fn content_kind(req: &Request<Incoming>) -> Option<Kind> {
    let value = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim().to_ascii_lowercase();
    match media.as_str() {
        "text/html" => Some(Kind::Html),
        "message/rfc822" => Some(Kind::Message),
        _ => None,
    }
}

fn rewrite(state: &ApiState, kind: Kind, body: &[u8]) -> Response<Body> {
    let (bytes, report, content_type) = match kind {
        Kind::Html => {
            let html = String::from_utf8_lossy(body);
            match state.engine().rewrite(&html) {
                Ok(r) => (Bytes::from(r.html), r.report, "text/html; charset=utf-8"),
                Err(e) => {
                    tracing::debug!(error = %e, "api: html refused");
                    return plain(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "cannot rewrite this html\n",
                    );
                }
            }
        }
        Kind::Message => match filter_message(&state.engine(), body) {
            Ok(f) => (Bytes::from(f.message), f.report, "message/rfc822"),
            Err(e) => {
                // Like `filter`: the caller keeps the original; say so rather than guess.
                tracing::debug!(error = %e, "api: message passed through");
                (
                    Bytes::copy_from_slice(body),
                    Report::default(),
                    "message/rfc822",
                )
            }
        },
    };
    queue_prefetch(&state.spool, &report);
    let mut r = Response::new(Full::new(bytes));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&report.header_value()) {
        h.insert("x-mailveil", v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
