//! The proxy side: the image endpoint of `mailveil serve`. It answers signed URLs from the
//! [`cache`], fetching upstream ([`fetch`], the only code that opens outbound sockets) on a
//! miss and serving only what passed the [`content`] checks.
//!
//! [`ProxyState`] is what the handlers ([`routes`]) and the prefetch workers share. Its
//! fetch path takes only a [`FetchTarget`]: a [`SignedUrl`] whose
//! signature verified, or a URL the daemon's own prefetch spool holds. Errors become status
//! codes in one place ([`ProxyError::status`]); logs get the host and a keyed
//! [`UrlTag`], never the URL.

pub mod cache;
pub mod content;
pub mod fetch;
mod routes;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use url::Url;

use crate::http::ListenerConfig;
use crate::metrics::{FetchResult, Metrics, Outcome};
use crate::proxy::cache::{Cache, Entry, NewEntry, Source};
use crate::proxy::content::{ContentError, ContentPolicy};
use crate::proxy::fetch::{FetchError, Fetcher};
use crate::sign::{FetchTarget, SignedUrl, Signer};
use crate::swap::Swap;
use crate::urltag::UrlTag;

/// Serves the image endpoint on `listener` until `shutdown` completes, then drains
/// connections for at most `config.shutdown_grace`.
///
/// # Errors
/// As the accept loop it runs on (`http::serve`): none today.
pub async fn run(
    listener: TcpListener,
    state: Arc<ProxyState>,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    crate::http::serve(listener, config, shutdown, move |req| {
        routes::handle(state.clone(), req)
    })
    .await
}

/// What request handlers share.
pub struct ProxyState {
    /// Verifies proxy URLs; replaced whole on reload (SIGHUP), so a request sees one key set.
    signer: Swap<Signer>,
    /// The two-tier cache.
    pub(crate) cache: Cache,
    /// The outbound client (the only code opening outbound sockets); private, so the only
    /// way to it is [`ProxyState::load`] with a [`FetchTarget`].
    fetcher: Fetcher,
    /// Content checks for fetched bodies.
    content: ContentPolicy,
    /// Exported metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Bounds image decoding running at once: each can take a second of CPU and about
    /// twice `images.max_alloc` of memory, and blocking tasks cannot be cancelled.
    decode_slots: Semaphore,
    /// What a reader's request does when the cache has nothing.
    on_miss: OnMiss,
}

/// What a reader's request does on a cache miss (prefetch failed, or the entry was evicted):
/// `prefetch.on_miss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
        content: ContentPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self {
            signer: Swap::new(signer),
            cache,
            fetcher,
            content,
            metrics,
            decode_slots: Semaphore::new(cpus),
            on_miss: OnMiss::Fetch,
        }
    }

    /// The current signer.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer.get()
    }

    /// Swaps in a new signer (keys reloaded); requests in flight finish with the old one.
    pub fn replace_signer(&self, signer: Signer) {
        self.signer.replace(signer);
    }

    /// Sets what a reader's request does on a cache miss (default: fetch).
    pub fn with_on_miss(mut self, on_miss: OnMiss) -> Self {
        self.on_miss = on_miss;
        self
    }

    /// The cached entry for `target`, fetched (once, however many ask at the same time) and
    /// checked on a miss. Used by readers' requests and by the prefetch workers alike; only
    /// a [`FetchTarget`] gets here.
    ///
    /// # Errors
    /// The shared [`ProxyError`] of the fetch.
    pub async fn load(
        self: &Arc<Self>,
        target: &impl FetchTarget,
    ) -> Result<(Arc<Entry>, Source), Arc<ProxyError>> {
        let target = target.url();
        let state = self.clone();
        let owned = target.clone();
        self.cache
            .get_or_fetch(target.as_str(), move || fetch_and_check(state, owned))
            .await
    }
}

impl ProxyState {
    /// What a reader's open gets: the cached entry, else a fetch now, unless the
    /// delivery-time fetch of this URL was tried and failed
    /// ([`ProxyError::RefusedAtDelivery`]). The check runs only on a miss, inside the
    /// coalesced fetch, so hits pay nothing for it.
    ///
    /// # Errors
    /// The shared [`ProxyError`] of the fetch, or `RefusedAtDelivery`.
    pub(crate) async fn open(
        self: &Arc<Self>,
        signed: &SignedUrl,
    ) -> Result<(Arc<Entry>, Source), Arc<ProxyError>> {
        let state = self.clone();
        let target = signed.target().clone();
        self.cache
            .get_or_fetch(signed.target().as_str(), move || async move {
                if state.cache.is_refused(target.as_str()).await {
                    return Err(ProxyError::RefusedAtDelivery);
                }
                fetch_and_check(state, target).await
            })
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
    /// The delivery-time fetch of this URL was tried and failed; a reader's open does not
    /// try again (the sender, who may refuse the proxy on purpose, would learn the open
    /// time). The reader gets the placeholder.
    #[error("refused at delivery; not fetched when opened")]
    RefusedAtDelivery,
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
            ProxyError::RefusedAtDelivery => StatusCode::NOT_FOUND,
        }
    }

    /// Worth retrying later (the prefetch queue's question).
    pub fn is_transient(&self) -> bool {
        match self {
            ProxyError::Fetch(e) => e.is_transient(),
            ProxyError::Content(_) | ProxyError::RefusedAtDelivery => false,
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

/// Fetches and checks a body, for the cache to store. Runs once per coalesced group.
async fn fetch_and_check(state: Arc<ProxyState>, target: Url) -> Result<NewEntry, ProxyError> {
    let result = fetch_and_sanitize(&state, &target).await;
    state.metrics.fetch(match &result {
        Ok(_) => FetchResult::Ok,
        Err(e) => e.fetch_result(),
    });
    if result.as_ref().is_ok_and(|entry| entry.is_pixel) {
        state.metrics.tracking_pixel();
        tracing::debug!(host = target.host_str().unwrap_or(""), url = %UrlTag::of(target.as_str()), "fetched a tracking pixel");
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
    let policy = state.content.clone();
    let sanitized = tokio::task::spawn_blocking(move || content::sanitize(&fetched.body, &policy))
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))??;
    tracing::debug!(
        host = target.host_str().unwrap_or(""),
        url = %UrlTag::of(target.as_str()),
        kind = sanitized.kind.content_type(),
        width = sanitized.width,
        height = sanitized.height,
        bytes = sanitized.body.len(),
        "fetched body vetted"
    );
    Ok(NewEntry {
        content_type: sanitized.kind.content_type().to_owned(),
        is_pixel: sanitized.is_pixel,
        body: Bytes::from(sanitized.body),
    })
}
