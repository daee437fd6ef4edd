//! A real HTTP server on loopback standing in for senders' servers: it logs every request
//! (path and headers) and answers from a small route table, including hostile behaviours.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub at: std::time::SystemTime,
}

/// What a route answers.
#[derive(Clone)]
pub enum Route {
    /// 200 with this content type and body, after an optional delay.
    Body {
        content_type: &'static str,
        body: Bytes,
        delay: Duration,
    },
    /// 200 with this content type and body once the gate opens.
    Held {
        content_type: &'static str,
        body: Bytes,
        gate: Gate,
    },
    /// 302 to this location.
    Redirect(String),
    /// 302 to `/{prefix}/{n+1}` forever.
    RedirectLoop(&'static str),
    /// A body that never ends.
    Endless,
    /// One byte per `interval`, forever.
    Drip(Duration),
    /// This status with an empty body.
    Status(u16),
}

/// Holds [`Route::Held`] answers back until the test opens it; clones share it.
#[derive(Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Gate {
    /// Lets every held answer, and every later one, go.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

impl Route {
    /// 200 with `content_type` and `body`, at once.
    pub fn body(content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Route::Body {
            content_type,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

/// The server. Clones share its routes and log.
#[derive(Clone, Default)]
pub struct Upstream {
    pub addr: Option<SocketAddr>,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    log: Arc<Mutex<Vec<Logged>>>,
}

impl Upstream {
    /// Starts on `bind` (e.g. "127.0.0.1:0") with no routes; unknown paths get 404.
    pub async fn start(bind: &str) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind upstream");
        let up = Upstream {
            addr: Some(listener.local_addr().expect("addr")),
            ..Default::default()
        };
        let server = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| server.clone().answer(req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("started")
    }

    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn route(&self, path: &str, route: Route) {
        self.routes
            .lock()
            .expect("lock")
            .insert(path.to_owned(), route);
    }

    /// Answers `path` with 200, `content_type` and `body`.
    pub fn body(&self, path: &str, content_type: &'static str, body: impl Into<Bytes>) {
        self.route(path, Route::body(content_type, body));
    }

    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().expect("lock").clone()
    }

    pub fn hits(&self, path: &str) -> usize {
        self.log().iter().filter(|l| l.path == path).count()
    }

    pub fn hits_prefix(&self, prefix: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| l.path.starts_with(prefix))
            .count()
    }

    async fn answer(
        self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        self.log.lock().expect("lock").push(Logged {
            path: path.clone(),
            headers,
            at: std::time::SystemTime::now(),
        });
        let route = self.find(&path);
        Ok(respond(route, &path).await)
    }

    fn find(&self, path: &str) -> Option<Route> {
        let routes = self.routes.lock().expect("lock");
        if let Some(r) = routes.get(path) {
            return Some(r.clone());
        }
        // Prefix routes ("/loop/" matches "/loop/17").
        routes
            .iter()
            .find(|(k, _)| k.ends_with('/') && path.starts_with(k.as_str()))
            .map(|(_, r)| r.clone())
    }
}

fn full(status: StatusCode, body: Bytes) -> Response<BoxBody<Bytes, Infallible>> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    r
}

async fn respond(route: Option<Route>, path: &str) -> Response<BoxBody<Bytes, Infallible>> {
    match route {
        None => full(StatusCode::NOT_FOUND, Bytes::new()),
        Some(Route::Body {
            content_type,
            body,
            delay,
        }) => {
            tokio::time::sleep(delay).await;
            ok(content_type, body)
        }
        Some(Route::Held {
            content_type,
            body,
            gate,
        }) => {
            gate.passed().await;
            ok(content_type, body)
        }
        Some(Route::Redirect(to)) => redirect(&to),
        Some(Route::RedirectLoop(prefix)) => {
            let n: u64 = path
                .rsplit('/')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            redirect(&format!("{prefix}{}", n + 1))
        }
        Some(Route::Status(code)) => {
            full(StatusCode::from_u16(code).expect("status"), Bytes::new())
        }
        Some(Route::Endless) => {
            let chunk = Bytes::from(vec![0u8; 64 * 1024]);
            let stream = futures_stream(move || Some(chunk.clone()), Duration::ZERO);
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut()
                .insert("content-type", "image/png".parse().expect("ct"));
            r
        }
        Some(Route::Drip(interval)) => {
            let stream = futures_stream(|| Some(Bytes::from_static(b"\x89")), interval);
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut()
                .insert("content-type", "image/png".parse().expect("ct"));
            r
        }
    }
}

/// 200 with `body`, and a cookie as a tracking sender would set.
fn ok(content_type: &str, body: Bytes) -> Response<BoxBody<Bytes, Infallible>> {
    let mut r = full(StatusCode::OK, body);
    r.headers_mut()
        .insert("content-type", content_type.parse().expect("ct"));
    r.headers_mut()
        .insert("set-cookie", "tracker=1; Path=/".parse().expect("cookie"));
    r
}

fn redirect(to: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut r = full(StatusCode::FOUND, Bytes::new());
    r.headers_mut()
        .insert("location", to.parse().expect("location"));
    r
}

/// A body stream producing `next()` every `interval` until the client goes away.
fn futures_stream(
    mut next: impl FnMut() -> Option<Bytes> + Send + 'static,
    interval: Duration,
) -> tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        while let Some(chunk) = next() {
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
