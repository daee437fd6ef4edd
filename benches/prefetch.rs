//! Prefetch drain benchmark: 1,000 messages × 10 images against loopback upstreams that
//! answer after 50 ms. Prints the time to drain the spool and its ratio to the ideal time
//! (upstream fetches × latency ÷ concurrency). Run: `cargo bench --bench prefetch`.
//! Environment: `MESSAGES` (default 1000), `LATENCY_MS` (50), `CONCURRENCY` (32).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mailveil::ContentPolicy;
use mailveil::Metrics;
use mailveil::PrefetchConfig;
use mailveil::ProxyState;
use mailveil::Spool;
use mailveil::{Cache, CacheConfig};
use mailveil::{FetchConfig, Fetcher, IpPolicy};
use mailveil::{Key, Signer};
use tokio_util::sync::CancellationToken;

const HOSTS: u8 = 10;
const IMAGES_PER_MESSAGE: usize = 10;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pixel_png() -> Bytes {
    let img = image::RgbaImage::from_pixel(1, 1, image::Rgba([0, 0, 0, 0]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    Bytes::from(out.into_inner())
}

/// One upstream per loopback address, so per-host limits apply as with real senders.
async fn start_upstream(
    ip: &str,
    latency: Duration,
    body: Bytes,
    count: Arc<AtomicUsize>,
) -> String {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    let count = count.clone();
                    async move {
                        tokio::time::sleep(latency).await;
                        count.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn main() {
    let messages = env("MESSAGES", 1000);
    let latency = Duration::from_millis(env("LATENCY_MS", 50) as u64);
    let concurrency = env("CONCURRENCY", 32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(messages, latency, concurrency));
}

async fn run(messages: usize, latency: Duration, concurrency: usize) {
    let dir = tempfile::tempdir().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let body = pixel_png();
    let mut bases = Vec::new();
    for h in 1..=HOSTS {
        bases.push(
            start_upstream(
                &format!("127.0.0.{h}"),
                latency,
                body.clone(),
                fetches.clone(),
            )
            .await,
        );
    }

    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    for m in 0..messages {
        let base = &bases[m % bases.len()];
        let mut urls: Vec<String> = (0..IMAGES_PER_MESSAGE - 2)
            .map(|i| format!("{base}/open/{m}/{i}.png?rcpt={m}"))
            .collect();
        urls.push(format!("{base}/logo.png"));
        urls.push(format!("{base}/footer.png"));
        spool.enqueue(&urls).unwrap();
    }

    let cache = Cache::open(CacheConfig {
        dir: dir.path().join("cache"),
        max_disk_bytes: 1 << 30,
        memory_bytes: 64 << 20,
        max_age: Duration::from_secs(86_400),
    })
    .unwrap();
    let fetch = FetchConfig {
        user_agent: "mailveil-bench".into(),
        connect_timeout: Duration::from_secs(5),
        total_timeout: Duration::from_secs(30),
        max_bytes: 1 << 20,
        max_redirects: 5,
        policy: IpPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]),
    };
    let signer = Signer::new(
        &"http://127.0.0.1:1".parse().unwrap(),
        Key::from_bytes([1; 32]),
        vec![],
    );
    let state = Arc::new(ProxyState::new(
        signer,
        cache,
        Fetcher::new(fetch),
        ContentPolicy::default(),
        Arc::new(Metrics::new()),
    ));
    let config = PrefetchConfig {
        concurrency,
        per_host: 8,
        max_attempts: 3,
        retry_base: Duration::from_secs(1),
        poll_interval: Duration::from_millis(100),
    };
    let stop = CancellationToken::new();
    let started = Instant::now();
    let workers = tokio::spawn(mailveil::run_prefetch(
        spool.clone(),
        state,
        config,
        stop.clone(),
    ));
    while !spool.list().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain took too long"
        );
    }
    let measured = started.elapsed();
    stop.cancel();
    let _ = workers.await;

    let fetched = fetches.load(Ordering::Relaxed);
    let ideal = latency.as_secs_f64() * fetched as f64 / concurrency as f64;
    println!("prefetch drain: {messages} messages x {IMAGES_PER_MESSAGE} images, {HOSTS} upstream hosts, latency {latency:?}, concurrency {concurrency}");
    println!("upstream fetches: {fetched}");
    println!("ideal (fetches x latency / concurrency): {ideal:.2} s");
    println!("measured: {:.2} s", measured.as_secs_f64());
    println!("ideal / measured: {:.2}", ideal / measured.as_secs_f64());
}
