//! How a fetch fails: [`FetchError`], and the mapping from hyper's and rustls's errors.
//!
//! Owns the error type every part of the fetcher returns, the transient/permanent split
//! the prefetch queue retries on, and the translation of the client's nested error chains
//! into one variant. Deciding *when* to fail is left to the policy, the connector and the
//! client loop; turning a failure into an HTTP status is the proxy's job.

use std::error::Error as StdError;
use std::io;

/// Why a fetch failed. Messages never contain the URL, only at most its host.
///
/// `Clone` because one error is handed out more than once: a client that failed to set up
/// fails every fetch with the same error, the connector's own verdict is copied out of
/// hyper's error chain, and `ProxyError` (which wraps this) is `Clone` too. Coalesced
/// requests do not need it: the cache shares their result behind an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Not http/https.
    #[error("unsupported scheme")]
    UnsupportedScheme,
    /// Userinfo (`user:pass@`) in the URL.
    #[error("credentials in the url are refused")]
    Userinfo,
    /// The URL has no host.
    #[error("url has no host")]
    NoHost,
    /// The destination (or every address the name resolved to) is refused by the policy.
    #[error("destination {host} is forbidden by the address policy")]
    Forbidden {
        /// The IP literal or name that was refused.
        host: String,
    },
    /// Name resolution failed.
    #[error("name resolution failed: {0}")]
    Resolve(String),
    /// Connection failed, was refused or was reset.
    #[error("connection failed: {0}")]
    Connect(String),
    /// TLS handshake failed (bad certificate, no common protocol).
    #[error("tls failed: {0}")]
    Tls(String),
    /// Connect or total time exceeded.
    #[error("timed out")]
    Timeout,
    /// The body is over `max_bytes`.
    #[error("response body exceeds the size limit")]
    TooLarge,
    /// More than `max_redirects` redirects.
    #[error("too many redirects")]
    TooManyRedirects,
    /// A redirect without a Location, or with one that is not a URL.
    #[error("redirect without a usable location")]
    BadRedirect,
    /// The upstream answered non-2xx (and not a followed redirect).
    #[error("upstream answered status {0}")]
    Status(u16),
    /// The URL cannot be sent as an HTTP request target.
    #[error("url cannot be requested: {0}")]
    InvalidUrl(String),
    /// HTTP protocol error.
    #[error("http protocol error: {0}")]
    Http(String),
    /// The client could not be set up (TLS configuration, invalid user agent).
    #[error("client setup failed: {0}")]
    Setup(String),
}

impl FetchError {
    /// Worth retrying later (timeouts, connection resets/refusals, 5xx, 429) — used by the prefetch queue.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Timeout | FetchError::Connect(_) => true,
            FetchError::Status(code) => *code == 429 || (500..600).contains(code),
            _ => false,
        }
    }
}

/// The first error of type `T` in the source chain, `err` included.
fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The whole chain's messages, for errors that have no variant of their own.
fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        parts.push(e.to_string());
        current = e.source();
    }
    parts.join(": ")
}

/// A rustls error hidden inside `io::Error`s (tokio-rustls wraps handshake
/// errors in one, hyper-rustls wraps that in another; `io::Error::source`
/// skips the wrapped error, so follow `get_ref` instead).
fn find_tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut io_error = find_source::<io::Error>(err)?;
    loop {
        let inner = io_error.get_ref()?;
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        io_error = inner.downcast_ref::<io::Error>()?;
    }
}

/// The variant for a failed request: the connector's own verdict if there is one, else
/// TLS, hyper or connection trouble found in the chain, else `Http` with the whole chain.
pub(super) fn map_client_error(err: &hyper_util::client::legacy::Error) -> FetchError {
    // The connector's own verdict (Forbidden, Resolve, Timeout...) wins.
    if let Some(own) = find_source::<FetchError>(err) {
        return own.clone();
    }
    if let Some(tls) = find_tls_error(err) {
        return FetchError::Tls(tls.to_string());
    }
    if let Some(hyper_error) = find_source::<hyper::Error>(err) {
        return map_hyper_error(hyper_error);
    }
    if err.is_connect() {
        return FetchError::Connect(describe(err));
    }
    FetchError::Http(describe(err))
}

/// Transport trouble (closed, reset, cut short) is `Connect`, so it counts as
/// transient; malformed responses are `Http`.
pub(super) fn map_hyper_error(err: &hyper::Error) -> FetchError {
    if err.is_timeout() {
        return FetchError::Timeout;
    }
    let transport = err.is_incomplete_message()
        || err.is_closed()
        || err.is_canceled()
        || find_source::<io::Error>(err).is_some();
    if transport {
        FetchError::Connect(describe(err))
    } else {
        FetchError::Http(describe(err))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::fetch::testutil::{config, count_accepts, upstream_fetcher, url};

    #[test]
    fn transient_errors() {
        assert!(FetchError::Timeout.is_transient());
        assert!(FetchError::Connect("reset".into()).is_transient());
        assert!(FetchError::Status(500).is_transient());
        assert!(FetchError::Status(503).is_transient());
        assert!(FetchError::Status(429).is_transient());
        for permanent in [
            FetchError::Status(404),
            FetchError::Status(403),
            FetchError::Forbidden { host: "x".into() },
            FetchError::TooLarge,
            FetchError::TooManyRedirects,
            FetchError::BadRedirect,
            FetchError::UnsupportedScheme,
            FetchError::Userinfo,
            FetchError::Tls("bad cert".into()),
            FetchError::Http("parse".into()),
        ] {
            assert!(!permanent.is_transient(), "{permanent:?}");
        }
    }

    #[tokio::test]
    async fn untrusted_certificate_is_a_permanent_tls_error() {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = count_accepts(listener, move |stream| {
            let acceptor = acceptor.clone();
            async move {
                // The client rejects the certificate; the outcome here is irrelevant.
                let _ = acceptor.accept(stream).await;
            }
        });
        let target = url(&format!("https://{addr}/img"));
        let err = upstream_fetcher(config(&["127.0.0.1/32"]))
            .fetch(&target)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Tls(_)), "{err:?}");
        assert!(!err.is_transient());
        // The https path went through the guarded connector to the allowed address.
        assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    }
}
