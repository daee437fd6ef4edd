//! The image proxy in-process on a loopback port, and the HTTP client the tests talk to it
//! (and to `serve` daemons) with.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mailveil::{
    Cache, CacheConfig, ContentPolicy, FetchConfig, Fetcher, IpPolicy, ListenerConfig, Metrics,
    ProxyState,
};
use tokio::sync::oneshot;

use super::upstream::Upstream;
use super::wait::until_async;
use super::{signer, PUBLIC_URL};

/// The User-Agent the in-process proxy sends upstream.
pub const USER_AGENT: &str = "mailveil-test/1";

/// A running proxy on an ephemeral loopback port, signing with [`super::signer`].
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Fetching with 2 s timeouts, 2 MiB and 5 redirects at most, to public addresses and
/// `allow` (CIDRs).
pub fn fetch_config(allow: &[&str]) -> FetchConfig {
    FetchConfig {
        user_agent: USER_AGENT.into(),
        connect_timeout: Duration::from_secs(2),
        total_timeout: Duration::from_secs(2),
        max_bytes: 2 << 20,
        max_redirects: 5,
        policy: IpPolicy::new(allow.iter().map(|n| n.parse().expect("cidr")).collect()),
    }
}

impl Proxy {
    pub async fn start(cache_dir: &Path, fetch: FetchConfig) -> Self {
        Self::start_with_fetcher(cache_dir, Fetcher::new(fetch)).await
    }

    pub async fn start_with_fetcher(cache_dir: &Path, fetcher: Fetcher) -> Self {
        Self::start_with(cache_dir, fetcher, None).await
    }

    /// With its cache in `cache_dir`, fetching with `fetcher`, serving TLS when given.
    pub async fn start_with(
        cache_dir: &Path,
        fetcher: Fetcher,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let cache = Cache::open(CacheConfig {
            dir: cache_dir.to_owned(),
            max_disk_bytes: 1 << 30,
            memory_bytes: 16 << 20,
            max_age: Duration::from_secs(86_400 * 30),
        })
        .expect("cache");
        let state = Arc::new(ProxyState::new(
            signer(),
            cache,
            fetcher,
            ContentPolicy {
                max_alloc: 32 << 20,
                ..ContentPolicy::default()
            },
            Arc::new(Metrics::new()),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ListenerConfig {
            max_connections: 512,
            header_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            tls,
        };
        let task = tokio::spawn(mailveil::run_proxy(listener, state, config, async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// The proxy path (`/i/...`) for `target`.
    pub fn path_for(&self, target: &str) -> String {
        signed_path(target)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// The proxy path (`/i/...`) [`super::signer`] makes for `target`, for any proxy using the
/// test key.
pub fn signed_path(target: &str) -> String {
    let signed = signer().sign(&url::Url::parse(target).expect("url"));
    signed.strip_prefix(PUBLIC_URL).expect("prefix").to_owned()
}

/// A proxy with its cache in `cache_dir`, allowed to fetch from 127.0.0.1 (where the fake
/// upstream listens) as from a public sender.
pub async fn loopback_proxy(cache_dir: &Path) -> Proxy {
    Proxy::start(cache_dir, fetch_config(&["127.0.0.1/32"])).await
}

/// A temp dir for the cache, a fake upstream, and a [`loopback_proxy`].
pub async fn setup_proxy() -> (tempfile::TempDir, Upstream, Proxy) {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start("127.0.0.1:0").await;
    let proxy = loopback_proxy(dir.path()).await;
    (dir, up, proxy)
}

/// A response, read whole.
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

pub async fn get(url: &str) -> Got {
    request("GET", url, &[]).await
}

pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
    request_with_body(method, url, headers, Vec::new()).await
}

/// Sends one request; fails the test unless it is answered within 30 s.
pub async fn request_with_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Got {
    try_request(method, url, headers, body, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Sends one request; the error says why no answer came within `limit`.
async fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    limit: Duration,
) -> Result<Got, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("req");
    let resp = tokio::time::timeout(limit, client.request(req))
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Ok(Got {
        status,
        headers,
        body,
    })
}

/// Waits until `{base}/healthz` answers 200.
pub async fn wait_healthy(base: &str) {
    let url = format!("{base}/healthz");
    let url = &url;
    let healthy = until_async(Duration::from_secs(20), || async move {
        try_request("GET", url, &[], Vec::new(), Duration::from_secs(1))
            .await
            .is_ok_and(|got| got.status == 200)
    })
    .await;
    assert!(healthy, "not healthy at {base}");
}

/// A PNG of `width` x `height` with a pattern.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x * 7) as u8, (y * 3) as u8, 90, 255])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}
