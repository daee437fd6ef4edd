//! The guarded connector: the TCP layer under TLS, where the policy meets DNS.
//!
//! Owns [`GuardedConnector`], through which every connection hyper opens passes (first
//! request or redirect, http or https): it resolves a name once per connection, keeps
//! only the addresses the policy permits, and dials only those, so DNS answers and
//! rebinding go through the same gate as IP literals. What is permitted is the policy's
//! decision (`policy.rs`); how names resolve is the resolver's (`resolve.rs`); TLS and
//! HTTP sit above, in the client.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::error::FetchError;
use super::policy::IpPolicy;
use super::resolve::Resolve;

/// How many policy-approved addresses of one name are tried before giving up;
/// bounds the time a name with many dead addresses can cost.
const MAX_CONNECT_ATTEMPTS: usize = 4;

/// The TCP connector under TLS: checks the destination against the policy and
/// connects only to addresses it approved. Every connection hyper opens —
/// first request or redirect, http or https — comes through here.
#[derive(Clone)]
pub(super) struct GuardedConnector {
    policy: Arc<IpPolicy>,
    resolver: Arc<dyn Resolve>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = FetchError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(dst).await })
    }
}

impl GuardedConnector {
    /// A connector admitting what `policy` permits, resolving names with `resolver`,
    /// giving each connect attempt `connect_timeout`.
    pub(super) fn new(
        policy: IpPolicy,
        resolver: Arc<dyn Resolve>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            policy: Arc::new(policy),
            resolver,
            connect_timeout,
        }
    }

    /// One connection to `dst`: its approved addresses, dialled in turn.
    async fn connect(self, dst: Uri) -> Result<TokioIo<TcpStream>, FetchError> {
        let (host, port) = destination(&dst)?;
        let addrs = self.approved_addrs(host, port).await?;
        let stream = connect_first(&addrs, self.connect_timeout).await?;
        Ok(TokioIo::new(stream))
    }

    /// The addresses this connection may use: the IP literal if permitted, or
    /// the permitted part of one resolution of the name.
    async fn approved_addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, FetchError> {
        if let Some(ip) = ip_literal(host) {
            self.policy.check(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let resolved = self
            .resolver
            .resolve(host, port)
            .await
            .map_err(|e| FetchError::Resolve(e.to_string()))?;
        if resolved.is_empty() {
            return Err(FetchError::Resolve("no addresses".to_owned()));
        }
        // The port comes from the URL, never from the resolver.
        let approved: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| self.policy.permits(addr.ip()))
            .map(|addr| SocketAddr::new(addr.ip(), port))
            .collect();
        if approved.is_empty() {
            debug!(host, "every resolved address refused by policy");
            return Err(FetchError::Forbidden {
                host: host.to_owned(),
            });
        }
        Ok(approved)
    }
}

/// Host and port of a connection target; the port defaults by scheme.
fn destination(dst: &Uri) -> Result<(&str, u16), FetchError> {
    let host = dst
        .host()
        .filter(|h| !h.is_empty())
        .ok_or(FetchError::NoHost)?;
    let default_port = if dst.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    Ok((host, dst.port_u16().unwrap_or(default_port)))
}

/// The host as an IP address if it is one (IPv6 arrives bracketed in a Uri).
fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Connects to the first approved address that answers, each attempt bounded
/// by `limit`. Only addresses from `addrs` are ever dialled.
async fn connect_first(addrs: &[SocketAddr], limit: Duration) -> Result<TcpStream, FetchError> {
    let mut last_error = FetchError::Connect("no address to try".to_owned());
    for addr in addrs.iter().take(MAX_CONNECT_ATTEMPTS) {
        match connect_one(*addr, limit).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// One connect attempt to `addr`, bounded by `limit`, with Nagle off.
async fn connect_one(addr: SocketAddr, limit: Duration) -> Result<TcpStream, FetchError> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| FetchError::Timeout)?
        .map_err(|e| FetchError::Connect(e.to_string()))?;
    // Small requests, latency-bound: don't let Nagle hold them back.
    stream
        .set_nodelay(true)
        .map_err(|e| FetchError::Connect(e.to_string()))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::fetch::resolve::{ResolveFuture, SystemResolver};
    use crate::proxy::fetch::testutil::{
        config, ip, resolver, sock, spawn_upstream, upstream_fetcher, url, Canary, IMG,
    };
    use crate::proxy::fetch::Fetcher;
    #[tokio::test]
    async fn refused_connection_is_transient() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let err = upstream_fetcher(config(&["127.0.0.1/32"]))
            .fetch(&url(&format!("http://127.0.0.1:{port}/img")))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Connect(_)), "{err:?}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn unknown_name_is_a_resolve_error() {
        let err = upstream_fetcher(config(&[]))
            .fetch(&url("http://nowhere.test/"))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Resolve(_)), "{err:?}");
    }

    #[tokio::test]
    async fn only_permitted_resolved_addresses_are_dialled() {
        let up = spawn_upstream(vec![]).await;
        // Same port on 127.0.0.2, which is not allowed: the name lists it first.
        let canary = Canary::spawn(SocketAddr::new(ip("127.0.0.2"), up.addr.port())).await;
        let fetcher = Fetcher::with_resolver(
            config(&["127.0.0.1/32"]),
            resolver(&[("mixed.test", &["127.0.0.2", "10.0.0.1", "127.0.0.1"])]),
        );
        let target = url(&format!("http://mixed.test:{}/img", up.addr.port()));
        let got = fetcher.fetch(&target).await.unwrap();
        assert_eq!(&got.body[..], IMG);
        assert_eq!(canary.hits().await, 0);
        let host = up.requests()[0]
            .headers
            .iter()
            .find(|(k, _)| k == "host")
            .unwrap()
            .1
            .clone();
        assert_eq!(host, format!("mixed.test:{}", up.addr.port()));
    }

    #[tokio::test]
    async fn one_lookup_per_connection_so_rebinding_cannot_swap_the_address() {
        /// First answer: the allowed upstream. Every later answer: the canary.
        struct Rebinding {
            calls: AtomicUsize,
        }
        impl Resolve for Rebinding {
            fn resolve(&self, _host: &str, port: u16) -> ResolveFuture<'_> {
                let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
                let ip = if first {
                    ip("127.0.0.1")
                } else {
                    ip("127.0.0.2")
                };
                Box::pin(std::future::ready(Ok(vec![SocketAddr::new(ip, port)])))
            }
        }
        let up = spawn_upstream(vec![]).await;
        let canary = Canary::spawn(SocketAddr::new(ip("127.0.0.2"), up.addr.port())).await;
        let rebinding = Arc::new(Rebinding {
            calls: AtomicUsize::new(0),
        });
        let fetcher = Fetcher::with_resolver(config(&["127.0.0.1/32"]), rebinding.clone());
        let target = url(&format!("http://rebind.test:{}/img", up.addr.port()));

        assert!(fetcher.fetch(&target).await.is_ok());
        assert_eq!(
            rebinding.calls.load(Ordering::SeqCst),
            1,
            "one lookup for one connection"
        );
        // The upstream closed that connection; the next one resolves afresh and is re-checked.
        let err = fetcher.fetch(&target).await.unwrap_err();
        assert_eq!(
            err,
            FetchError::Forbidden {
                host: "rebind.test".into()
            }
        );
        assert_eq!(canary.hits().await, 0);
    }

    #[tokio::test]
    async fn connector_checks_ip_literals_itself() {
        // Defence in depth: even a request that skipped check_target is stopped.
        let canary = Canary::spawn(sock("127.0.0.1:0")).await;
        let mut connector = GuardedConnector {
            policy: Arc::new(IpPolicy::new(vec![])),
            resolver: resolver(&[("loopback.test", &["127.0.0.1"])]),
            connect_timeout: Duration::from_secs(1),
        };
        for target in [
            format!("http://127.0.0.1:{}/", canary.port()),
            format!("http://[::ffff:127.0.0.1]:{}/", canary.port()),
            format!("http://loopback.test:{}/", canary.port()),
        ] {
            let uri: Uri = target.parse().unwrap();
            let result = tower_service::Service::call(&mut connector, uri).await;
            assert!(
                matches!(result, Err(FetchError::Forbidden { .. })),
                "{target}"
            );
        }
        // A non-canonical number reaching the connector is a "name": the system
        // resolver turns it into 127.0.0.1, which the policy then refuses.
        connector.resolver = Arc::new(SystemResolver);
        let uri: Uri = format!("http://2130706433:{}/", canary.port())
            .parse()
            .unwrap();
        let result = tower_service::Service::call(&mut connector, uri).await;
        assert!(
            matches!(result, Err(FetchError::Forbidden { .. })),
            "{result:?}"
        );
        assert_eq!(canary.hits().await, 0);
    }
}
