//! Name resolution for the fetcher: the [`Resolve`] seam and its two implementations.
//!
//! Owns turning a host name into addresses: [`SystemResolver`] in production,
//! [`StaticResolver`] where tests need "a name resolving to loopback". It decides nothing:
//! which of the answers may be dialled is the policy's call (`policy.rs`), applied by the
//! connector (`connect.rs`), which also makes sure each connection resolves only once.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

/// The future a [`Resolve`] implementation returns: every address of the name.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves host names. The system resolver in production; tests inject a static map.
pub trait Resolve: Send + Sync + 'static {
    /// All addresses of `host`; the fetcher filters them through the policy.
    ///
    /// # Errors
    /// The future fails when the name cannot be resolved.
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture<'_>;
}

/// `tokio::net::lookup_host`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture<'_> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// A fixed name → addresses map (tests: "a name resolving to loopback").
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    map: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// Builds the map; names match case-insensitively and without a trailing dot.
    pub fn new(map: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> Self {
        let map = map
            .into_iter()
            .map(|(name, ips)| (normalise_name(&name), ips))
            .collect();
        Self { map }
    }
}

/// A DNS name in the form names are compared in: lowercase, without the trailing dot.
pub(super) fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Resolve for StaticResolver {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture<'_> {
        let answer = self
            .map
            .get(&normalise_name(host))
            .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name not in static map"));
        Box::pin(std::future::ready(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::fetch::testutil::{ip, sock};

    #[tokio::test]
    async fn static_names_match_normalised_and_take_the_asked_port() {
        let resolver = StaticResolver::new([("Pixel.Test.".to_owned(), vec![ip("192.0.2.1")])]);
        let addrs = resolver.resolve("pixel.TEST", 8080).await.unwrap();
        assert_eq!(addrs, [sock("192.0.2.1:8080")]);
        let err = resolver.resolve("other.test", 80).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
