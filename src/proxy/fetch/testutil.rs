//! Shared fixtures of the fetcher's unit tests: a logging upstream, canaries, configs.
//!
//! Everything here talks only to 127.0.0.0/8 and ::1, and every server loop is bounded:
//! the runtime of each test drops its tasks at the end. The tests themselves live beside
//! the code they test, in each file's `tests` module.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

use super::{FetchConfig, Fetcher, IpPolicy, Resolve, StaticResolver};

pub(super) const IMG: &[u8] = b"\x89PNG\r\n\x1a\nnot a real png, but bytes all the same";
pub(super) const UA: &str = "mailveil-test/1.0";

// ---- the upstream: a tiny HTTP/1.1 server that logs every request ----

#[derive(Debug, Clone)]
pub(super) struct Logged {
    pub(super) path: String,
    pub(super) headers: Vec<(String, String)>,
}

pub(super) struct Upstream {
    pub(super) addr: SocketAddr,
    log: Arc<Mutex<Vec<Logged>>>,
}

impl Upstream {
    pub(super) fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://{}{}", self.addr, path)).unwrap()
    }
    pub(super) fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

type Routes = Arc<HashMap<String, String>>;

/// Starts the upstream on 127.0.0.1; `redirects` adds path → Location routes.
pub(super) async fn spawn_upstream(redirects: Vec<(&str, String)>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let routes: Routes = Arc::new(
        redirects
            .into_iter()
            .map(|(p, l)| (p.to_owned(), l))
            .collect(),
    );
    let server_log = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, server_log.clone(), routes.clone()));
        }
    });
    Upstream { addr, log }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<Logged>>>, routes: Routes) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let request = parse_head(&head);
    log.lock().unwrap().push(request.clone());
    respond(&mut stream, &request.path, &routes).await;
    let _ = stream.shutdown().await;
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

fn parse_head(head: &str) -> Logged {
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Logged { path, headers }
}

async fn write_simple(stream: &mut TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
}

async fn write_redirect(stream: &mut TcpStream, location: &str) {
    let head = format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
}

async fn respond(stream: &mut TcpStream, path: &str, routes: &Routes) {
    if let Some(location) = routes.get(path) {
        return write_redirect(stream, location).await;
    }
    if let Some(n) = path
        .strip_prefix("/redirect/")
        .and_then(|n| n.parse::<u32>().ok())
    {
        let next = if n <= 1 {
            "/img".to_owned()
        } else {
            format!("/redirect/{}", n - 1)
        };
        return write_redirect(stream, &next).await;
    }
    match path {
        "/img" => write_simple(stream, "200 OK", IMG).await,
        "/loop" => write_redirect(stream, "/loop").await,
        "/no-location" => write_simple(stream, "302 Found", b"").await,
        "/endless" => endless(stream).await,
        "/slow" => slow(stream).await,
        "/big" => big(stream).await,
        "/500" => write_simple(stream, "500 Internal Server Error", b"oops").await,
        "/429" => write_simple(stream, "429 Too Many Requests", b"").await,
        _ => write_simple(stream, "404 Not Found", b"").await,
    }
}

/// A body without length that goes on until the client hangs up (capped at 64 MiB).
async fn endless(stream: &mut TcpStream) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..4096 {
        if stream.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// One byte every 500 ms (capped at 40 bytes, 20 s).
async fn slow(stream: &mut TcpStream) {
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 40\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if stream.write_all(b"x").await.is_err() {
            return;
        }
    }
}

/// Announces 100 MB, sends a little, hangs up.
async fn big(stream: &mut TcpStream) {
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n";
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&[0u8; 1024]).await;
}

// ---- canaries: listeners that must never see a connection ----

pub(super) struct Canary {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Canary {
    pub(super) async fn spawn(bind: SocketAddr) -> Canary {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = count_accepts(listener, |stream| async move { drop(stream) });
        Canary { addr, hits }
    }
    pub(super) fn port(&self) -> u16 {
        self.addr.port()
    }
    /// Connections seen, after giving a pending accept time to land.
    pub(super) async fn hits(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.hits.load(Ordering::SeqCst)
    }
}

/// Accepts on `listener` until the runtime ends, counting each connection before
/// handing it to `handle` (awaited before the next accept).
pub(super) fn count_accepts<F, Fut>(listener: TcpListener, handle: F) -> Arc<AtomicUsize>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            handle(stream).await;
        }
    });
    count
}

pub(super) fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---- fetchers ----

pub(super) fn config(allow: &[&str]) -> FetchConfig {
    FetchConfig {
        user_agent: UA.to_owned(),
        connect_timeout: Duration::from_secs(1),
        total_timeout: Duration::from_secs(3),
        max_bytes: 1 << 20,
        max_redirects: 5,
        policy: IpPolicy::new(allow.iter().map(|n| n.parse().unwrap()).collect()),
    }
}

pub(super) fn resolver(entries: &[(&str, &[&str])]) -> Arc<dyn Resolve> {
    Arc::new(StaticResolver::new(entries.iter().map(|(name, ips)| {
        (name.to_string(), ips.iter().map(|i| ip(i)).collect())
    })))
}

/// Allows exactly the upstream's 127.0.0.1.
pub(super) fn upstream_fetcher(config: FetchConfig) -> Fetcher {
    Fetcher::with_resolver(config, resolver(&[]))
}

pub(super) fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}
