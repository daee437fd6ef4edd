//! The accept loop: bounded connections, optional TLS, HTTP/1.1 and HTTP/2 on one port,
//! graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::Body;

/// Limits and options of a listener.
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

/// Serves `listener` with `handler` until `shutdown` completes, then drains connections for
/// at most `config.shutdown_grace`. `handler` answers every request and never fails.
///
/// # Errors
/// None today: accept errors are per connection and logged; the signature leaves room for
/// a listener that is gone.
pub async fn serve<H, F>(
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
    let connection = Connection {
        builder: connection_builder(&config),
        tls: config.tls.clone().map(TlsAcceptor::from),
        handshake_timeout: config.header_timeout,
    };
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &permits) => accepted,
            () = &mut shutdown => break,
        };
        let Some((stream, peer, permit)) = accepted else {
            break;
        };
        let connection = connection.clone();
        let watcher = graceful.watcher();
        let handler = handler.clone();
        tokio::spawn(async move {
            connection.serve(stream, peer, watcher, handler).await;
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

/// The next connection, once there is capacity for it: excess clients wait in the kernel's
/// backlog. `None` when the semaphore is closed.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer, permit));
            }
            Err(e) => tracing::debug!(error = %e, "accept failed"),
        }
    }
}

/// How one accepted connection is served.
#[derive(Clone)]
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    /// The TLS handshake gets as long as a request's headers.
    handshake_timeout: Duration,
}

impl Connection {
    async fn serve<H, F>(self, stream: TcpStream, peer: SocketAddr, watcher: Watcher, handler: H)
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let service = service_fn(handler);
        let result = match self.tls {
            None => {
                let conn = self.builder.serve_connection(TokioIo::new(stream), service);
                watcher.watch(conn.into_owned()).await
            }
            Some(acceptor) => {
                match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let conn = self
                            .builder
                            .serve_connection(TokioIo::new(tls_stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    _ => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
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
