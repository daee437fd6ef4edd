//! Outbound fetching for mailveil.
//!
//! mailveil fetches remote images named by URLs in strangers' emails, which
//! makes it a server-side-request-forgery target: a sender can put
//! `http://169.254.169.254/` or `http://localhost:6379/` in an `<img>` tag.
//! This module is the only code that opens outbound sockets, and it owns:
//!
//! * the SSRF guard: [`IpPolicy::permits`] decides, in one place, which
//!   addresses may be contacted. It is applied to IP-literal hosts before any
//!   request is built, and again inside the TCP connector to every address a
//!   name resolves to, so redirects and DNS answers go through the same gate;
//! * DNS pinning: a name is resolved once per connection and the socket is
//!   connected to one of the addresses that passed the policy, never to the
//!   result of a second lookup (which DNS rebinding could swap);
//! * redirect, size and time limits ([`FetchConfig`]);
//! * anonymity: requests carry only `Host`, `User-Agent` and `Accept`, and the
//!   API takes nothing but a [`Url`], so nothing from a caller's request (its
//!   cookies, referer or address) can leak upstream.
//!
//! Logging is at debug level only and names the host plus a short keyed hash
//! of the URL, never the URL itself: tracking URLs identify recipients.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, ACCEPT, LOCATION, USER_AGENT};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::TcpStream;
use tracing::debug;
use url::{Host, Url};

/// The `Accept` header sent upstream: images first, then web fonts (stylesheets
/// in mail reference them), then anything.
const ACCEPT_VALUE: &str =
    "image/avif,image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,font/woff2,font/woff,*/*;q=0.5";

/// How many policy-approved addresses of one name are tried before giving up;
/// bounds the time a name with many dead addresses can cost.
const MAX_CONNECT_ATTEMPTS: usize = 4;

/// Idle pooled connections are dropped after this; the pool only saves
/// handshakes for images fetched from the same host in quick succession.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Cap on idle pooled connections per host, so one host cannot hold many sockets.
const POOL_MAX_IDLE_PER_HOST: usize = 4;

// ---------------------------------------------------------------------------
// IP policy
// ---------------------------------------------------------------------------

/// Which destination addresses may be contacted. Decided in one place: `permits`.
#[derive(Debug, Clone)]
pub struct IpPolicy {
    allow: Vec<IpNet>,
}

/// An IPv4 range refused by default.
struct V4Rule {
    net: Ipv4Addr,
    prefix: u8,
    name: &'static str,
}

impl V4Rule {
    const fn new(net: [u8; 4], prefix: u8, name: &'static str) -> Self {
        let [a, b, c, d] = net;
        Self {
            net: Ipv4Addr::new(a, b, c, d),
            prefix,
            name,
        }
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.net) & mask
    }
}

/// What an IPv6 range means for the policy.
#[derive(Clone, Copy)]
enum V6Action {
    /// Never contacted.
    Refuse,
    /// The address carries an IPv4 address (mapped, compatible, NAT64, 6to4)
    /// that a translator or the kernel would really talk to: judge that one.
    JudgeEmbedded(fn(Ipv6Addr) -> Ipv4Addr),
}

/// An IPv6 range with special meaning for the policy.
struct V6Rule {
    net: Ipv6Addr,
    prefix: u8,
    action: V6Action,
    name: &'static str,
}

impl V6Rule {
    const fn new(net: [u16; 8], prefix: u8, action: V6Action, name: &'static str) -> Self {
        let [a, b, c, d, e, f, g, h] = net;
        let net = Ipv6Addr::new(a, b, c, d, e, f, g, h);
        Self {
            net,
            prefix,
            action,
            name,
        }
    }

    fn contains(&self, ip: Ipv6Addr) -> bool {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        u128::from(ip) & mask == u128::from(self.net) & mask
    }
}

/// The low 32 bits: IPv4-mapped, IPv4-compatible and NAT64 (RFC 6052 /96) addresses.
fn low_32(ip: Ipv6Addr) -> Ipv4Addr {
    let [.., a, b, c, d] = ip.octets();
    Ipv4Addr::new(a, b, c, d)
}

/// Bits 16..48: the IPv4 address of a 6to4 (2002::/16) relay.
fn six_to_four(ip: Ipv6Addr) -> Ipv4Addr {
    let [_, _, a, b, c, d, ..] = ip.octets();
    Ipv4Addr::new(a, b, c, d)
}

/// IPv4 ranges that are not publicly routable or not unicast.
#[rustfmt::skip]
const V4_BLOCKED: &[V4Rule] = &[
    V4Rule::new([0, 0, 0, 0], 8, "this network"),
    V4Rule::new([10, 0, 0, 0], 8, "private"),
    V4Rule::new([100, 64, 0, 0], 10, "shared address space (cgnat)"),
    V4Rule::new([127, 0, 0, 0], 8, "loopback"),
    V4Rule::new([169, 254, 0, 0], 16, "link-local (cloud metadata)"),
    V4Rule::new([172, 16, 0, 0], 12, "private"),
    V4Rule::new([192, 0, 0, 0], 24, "ietf protocol assignments"),
    V4Rule::new([192, 0, 2, 0], 24, "documentation (test-net-1)"),
    V4Rule::new([192, 88, 99, 0], 24, "6to4 relay anycast"),
    V4Rule::new([192, 168, 0, 0], 16, "private"),
    V4Rule::new([198, 18, 0, 0], 15, "benchmarking"),
    V4Rule::new([198, 51, 100, 0], 24, "documentation (test-net-2)"),
    V4Rule::new([203, 0, 113, 0], 24, "documentation (test-net-3)"),
    V4Rule::new([224, 0, 0, 0], 4, "multicast"),
    V4Rule::new([240, 0, 0, 0], 4, "reserved and broadcast"),
];

use V6Action::{JudgeEmbedded, Refuse};

/// IPv6 ranges with special meaning. The first match wins, so specific rows
/// (`::1`, the embedded-IPv4 forms) come before the catch-alls at the end.
#[rustfmt::skip]
const V6_RULES: &[V6Rule] = &[
    V6Rule::new([0, 0, 0, 0, 0, 0, 0, 0],           128, Refuse,                      "unspecified"),
    V6Rule::new([0, 0, 0, 0, 0, 0, 0, 1],           128, Refuse,                      "loopback"),
    V6Rule::new([0, 0, 0, 0, 0, 0xffff, 0, 0],      96,  JudgeEmbedded(low_32),       "ipv4-mapped"),
    V6Rule::new([0, 0, 0, 0, 0, 0, 0, 0],           96,  JudgeEmbedded(low_32),       "ipv4-compatible"),
    V6Rule::new([0x64, 0xff9b, 0, 0, 0, 0, 0, 0],   96,  JudgeEmbedded(low_32),       "nat64"),
    V6Rule::new([0x64, 0xff9b, 1, 0, 0, 0, 0, 0],   48,  Refuse,                      "local-use nat64"),
    V6Rule::new([0x100, 0, 0, 0, 0, 0, 0, 0],       64,  Refuse,                      "discard-only"),
    V6Rule::new([0x2001, 0, 0, 0, 0, 0, 0, 0],      23,  Refuse,                      "ietf special (teredo)"),
    V6Rule::new([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],  32,  Refuse,                      "documentation"),
    V6Rule::new([0x3fff, 0, 0, 0, 0, 0, 0, 0],      20,  Refuse,                      "documentation"),
    V6Rule::new([0x2002, 0, 0, 0, 0, 0, 0, 0],      16,  JudgeEmbedded(six_to_four),  "6to4"),
    V6Rule::new([0xfc00, 0, 0, 0, 0, 0, 0, 0],      7,   Refuse,                      "unique local"),
    V6Rule::new([0xfe80, 0, 0, 0, 0, 0, 0, 0],      10,  Refuse,                      "link-local"),
    V6Rule::new([0xfec0, 0, 0, 0, 0, 0, 0, 0],      10,  Refuse,                      "site-local"),
    V6Rule::new([0xff00, 0, 0, 0, 0, 0, 0, 0],      8,   Refuse,                      "multicast"),
    // Only 2000::/3 is allocated for global unicast; whatever else is left
    // is reserved or unassigned and has no business being an image host.
    V6Rule::new([0, 0, 0, 0, 0, 0, 0, 0],           3,   Refuse,                      "not global unicast"),
    V6Rule::new([0x4000, 0, 0, 0, 0, 0, 0, 0],      2,   Refuse,                      "not global unicast"),
    V6Rule::new([0x8000, 0, 0, 0, 0, 0, 0, 0],      1,   Refuse,                      "not global unicast"),
];

fn v4_rule(ip: Ipv4Addr) -> Option<&'static V4Rule> {
    V4_BLOCKED.iter().find(|rule| rule.contains(ip))
}

fn v6_rule(ip: Ipv6Addr) -> Option<&'static V6Rule> {
    V6_RULES.iter().find(|rule| rule.contains(ip))
}

/// The IPv4 address inside an IPv4-mapped or IPv4-compatible address.
/// `::` and `::1` are not compatible addresses, whatever their bits say.
fn mapped_or_compatible(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let is_special = ip == Ipv6Addr::UNSPECIFIED || ip == Ipv6Addr::LOCALHOST;
    // ::ffff:0:0/96 (mapped) or ::/96 (compatible): the top 96 bits say which.
    let top_96 = u128::from(ip) >> 32;
    let is_embedding = top_96 == 0xffff || top_96 == 0;
    (!is_special && is_embedding).then(|| low_32(ip))
}

impl IpPolicy {
    /// Public addresses only, plus `allow` (CIDRs exempt from the block, e.g. a test upstream's 127.0.0.1/32).
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// True if `ip` may be contacted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
    }

    /// The single decision: why `ip` is refused (the matching range's name),
    /// or `None` if it may be contacted. The allow-list is consulted first.
    fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.is_allowed(ip) {
            return None;
        }
        match ip {
            IpAddr::V4(v4) => v4_rule(v4).map(|rule| rule.name),
            IpAddr::V6(v6) => {
                let rule = v6_rule(v6)?;
                match rule.action {
                    V6Action::Refuse => Some(rule.name),
                    V6Action::JudgeEmbedded(extract) => v4_rule(extract(v6)).map(|_| rule.name),
                }
            }
        }
    }

    /// The allow-list matches the address itself, and for mapped/compatible
    /// IPv6 also the IPv4 address the kernel would really connect to.
    fn is_allowed(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => mapped_or_compatible(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .any(|net| net.contains(&ip) || embedded.is_some_and(|e| net.contains(&e)))
    }

    /// `Ok` if `ip` may be contacted, else the `Forbidden` error naming it.
    fn check(&self, ip: IpAddr) -> Result<(), FetchError> {
        match self.refusal(ip) {
            None => Ok(()),
            Some(reason) => {
                debug!(%ip, reason, "address refused by policy");
                Err(FetchError::Forbidden {
                    host: ip.to_string(),
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Name resolution
// ---------------------------------------------------------------------------

/// The future a [`Resolve`] implementation returns: every address of the name.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves host names. The system resolver in production; tests inject a static map.
pub trait Resolve: Send + Sync + 'static {
    /// All addresses of `host`; the fetcher filters them through the policy.
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

fn normalise_name(name: &str) -> String {
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

// ---------------------------------------------------------------------------
// Configuration, results, errors
// ---------------------------------------------------------------------------

/// Limits and identity of the outbound client.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Sent as `User-Agent`; the only identifying header.
    pub user_agent: String,
    /// Limit for one TCP connect attempt.
    pub connect_timeout: Duration,
    /// Whole fetch including redirects and body.
    pub total_timeout: Duration,
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Redirects followed before giving up.
    pub max_redirects: u32,
    /// Which addresses may be contacted.
    pub policy: IpPolicy,
}

/// A successful fetch.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The response body, at most `max_bytes` long.
    pub body: Bytes,
    /// The URL the body came from after redirects.
    pub final_url: Url,
    /// How many redirects were followed.
    pub redirects: u32,
}

/// Why a fetch failed. Messages never contain the URL, only at most its host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)] // Clone: results are shared by coalesced requests
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

// ---------------------------------------------------------------------------
// The guarded connector
// ---------------------------------------------------------------------------

/// The TCP connector under TLS: checks the destination against the policy and
/// connects only to addresses it approved. Every connection hyper opens —
/// first request or redirect, http or https — comes through here.
#[derive(Clone)]
struct GuardedConnector {
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

// ---------------------------------------------------------------------------
// The fetcher
// ---------------------------------------------------------------------------

type HttpsClient = Client<HttpsConnector<GuardedConnector>, Empty<Bytes>>;

/// The outbound client. Clone-cheap (Arc inside), Send + Sync.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    config: FetchConfig,
    /// Set-up failures are kept and reported by `fetch` so `new` needs no panic.
    client: Result<HttpsClient, FetchError>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What to do with a response.
enum Step {
    /// 2xx: read the body.
    Body,
    /// A followed redirect to this (not yet checked) URL.
    Redirect(Url),
}

impl Fetcher {
    /// A fetcher using the system resolver.
    pub fn new(config: FetchConfig) -> Self {
        Self::with_resolver(config, Arc::new(SystemResolver))
    }

    /// A fetcher resolving names with `resolver` (tests inject a static map).
    pub fn with_resolver(config: FetchConfig, resolver: Arc<dyn Resolve>) -> Self {
        let client = build_client(&config, resolver);
        Self {
            inner: Arc::new(Inner { config, client }),
        }
    }

    /// Fetches `url` anonymously, following at most max_redirects redirects, each target re-checked.
    pub async fn fetch(&self, url: &Url) -> Result<Fetched, FetchError> {
        let host = url.host_str().unwrap_or("");
        let tag = log_tag(url);
        debug!(host, url = %tag, "fetch start");
        let outcome = tokio::time::timeout(self.inner.config.total_timeout, self.follow(url))
            .await
            .unwrap_or(Err(FetchError::Timeout));
        match &outcome {
            Ok(done) => {
                debug!(host, url = %tag, redirects = done.redirects, bytes = done.body.len(), "fetch done")
            }
            Err(error) => debug!(host, url = %tag, %error, "fetch failed"),
        }
        outcome
    }

    /// The redirect loop: check, send, then either read the body or move on.
    async fn follow(&self, start: &Url) -> Result<Fetched, FetchError> {
        let client = self.inner.client.as_ref().map_err(Clone::clone)?;
        let config = &self.inner.config;
        let mut url = start.clone();
        let mut redirects = 0;
        loop {
            check_target(&url, &config.policy)?;
            let response = send(client, &url, &config.user_agent).await?;
            match classify(&url, response.status(), response.headers())? {
                Step::Body => {
                    let body = read_body(response.into_body(), config.max_bytes).await?;
                    return Ok(Fetched {
                        body,
                        final_url: url,
                        redirects,
                    });
                }
                Step::Redirect(next) => {
                    if redirects >= config.max_redirects {
                        return Err(FetchError::TooManyRedirects);
                    }
                    redirects += 1;
                    debug!(host = next.host_str().unwrap_or(""), url = %log_tag(&next), redirects, "redirect");
                    url = next;
                }
            }
        }
    }
}

/// The hyper client: rustls (ring provider installed here, webpki roots, ALPN
/// h2 + http/1.1) over the guarded connector.
fn build_client(
    config: &FetchConfig,
    resolver: Arc<dyn Resolve>,
) -> Result<HttpsClient, FetchError> {
    let guarded = GuardedConnector {
        policy: Arc::new(config.policy.clone()),
        resolver,
        connect_timeout: config.connect_timeout,
    };
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(guarded);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(https))
}

/// Explicit provider, so no process-global rustls default has to be installed.
fn tls_config() -> Result<rustls::ClientConfig, FetchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Setup(e.to_string()))?
        .with_webpki_roots()
        .with_no_client_auth())
}

/// Refusals that need no network: scheme, userinfo, host, IP-literal policy.
/// Names are checked by the connector once resolved.
fn check_target(url: &Url, policy: &IpPolicy) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::Userinfo);
    }
    match url.host() {
        None => Err(FetchError::NoHost),
        Some(Host::Domain(name)) if is_localhost_name(name) => {
            // RFC 6761: these names are loopback by definition, whatever a resolver says
            // (and some resolvers fail on them, which would hide the refusal).
            policy.check(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        }
        Some(Host::Domain(_)) => Ok(()),
        Some(Host::Ipv4(v4)) => policy.check(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => policy.check(IpAddr::V6(v6)),
    }
}

/// `localhost`, `LOCALHOST.` and anything under `.localhost`.
fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

async fn send(
    client: &HttpsClient,
    url: &Url,
    user_agent: &str,
) -> Result<Response<Incoming>, FetchError> {
    let request = build_request(url, user_agent)?;
    client
        .request(request)
        .await
        .map_err(|e| map_client_error(&e))
}

/// A GET with exactly `User-Agent` and `Accept`; hyper adds `Host`. No
/// `Accept-Encoding`, so bodies arrive uncompressed and the size limit is real.
fn build_request(url: &Url, user_agent: &str) -> Result<Request<Empty<Bytes>>, FetchError> {
    let user_agent = HeaderValue::from_str(user_agent)
        .map_err(|_| FetchError::Setup("user agent is not a valid header value".to_owned()))?;
    Request::builder()
        .method(Method::GET)
        .uri(request_uri(url)?)
        .header(USER_AGENT, user_agent)
        .header(ACCEPT, HeaderValue::from_static(ACCEPT_VALUE))
        .body(Empty::new())
        .map_err(|e| FetchError::InvalidUrl(e.to_string()))
}

/// The URL as a request target, fragment removed (fragments are never sent).
fn request_uri(url: &Url) -> Result<Uri, FetchError> {
    let mut target = url.clone();
    target.set_fragment(None);
    target
        .as_str()
        .parse()
        .map_err(|e: http::uri::InvalidUri| FetchError::InvalidUrl(e.to_string()))
}

fn classify(url: &Url, status: StatusCode, headers: &HeaderMap) -> Result<Step, FetchError> {
    if status.is_success() {
        return Ok(Step::Body);
    }
    let followed = [301, 302, 303, 307, 308].contains(&status.as_u16());
    if followed {
        return redirect_target(url, headers).map(Step::Redirect);
    }
    Err(FetchError::Status(status.as_u16()))
}

/// `Location` resolved against the current URL. The result is checked like
/// any other target by the next turn of the loop.
fn redirect_target(url: &Url, headers: &HeaderMap) -> Result<Url, FetchError> {
    let location = headers.get(LOCATION).ok_or(FetchError::BadRedirect)?;
    let location = location.to_str().map_err(|_| FetchError::BadRedirect)?;
    url.join(location).map_err(|_| FetchError::BadRedirect)
}

/// Streams the body, stopping as soon as it would pass `max_bytes`, so memory
/// stays bounded whatever the upstream sends.
async fn read_body(mut body: Incoming, max_bytes: u64) -> Result<Bytes, FetchError> {
    // The size hint carries Content-Length: refuse before reading anything.
    if body.size_hint().lower() > max_bytes {
        return Err(FetchError::TooLarge);
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| map_hyper_error(&e))?;
        if let Ok(data) = frame.into_data() {
            append_limited(&mut buf, &data, max_bytes)?;
        }
    }
    Ok(buf.freeze())
}

fn append_limited(buf: &mut BytesMut, data: &[u8], max_bytes: u64) -> Result<(), FetchError> {
    let total = u64::try_from(buf.len().saturating_add(data.len())).unwrap_or(u64::MAX);
    if total > max_bytes {
        return Err(FetchError::TooLarge);
    }
    buf.extend_from_slice(data);
    Ok(())
}

// ---------------------------------------------------------------------------
// Error mapping and logging
// ---------------------------------------------------------------------------

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

fn map_client_error(err: &hyper_util::client::legacy::Error) -> FetchError {
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
fn map_hyper_error(err: &hyper::Error) -> FetchError {
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

/// A short hash of the URL for correlating log lines. Keyed per process, so
/// logs cannot be matched against guessed tracking URLs.
fn log_tag(url: &Url) -> String {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    let hash = KEY.get_or_init(RandomState::new).hash_one(url.as_str());
    format!("{:08x}", hash >> 32)
}

#[cfg(test)]
mod tests {
    //! Everything here talks only to 127.0.0.0/8 and ::1, and every server
    //! loop is bounded: the runtime of each test drops its tasks at the end.

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const IMG: &[u8] = b"\x89PNG\r\n\x1a\nnot a real png, but bytes all the same";
    const UA: &str = "mailveil-test/1.0";

    // ---- the upstream: a tiny HTTP/1.1 server that logs every request ----

    #[derive(Debug, Clone)]
    struct Logged {
        path: String,
        headers: Vec<(String, String)>,
    }

    struct Upstream {
        addr: SocketAddr,
        log: Arc<Mutex<Vec<Logged>>>,
    }

    impl Upstream {
        fn url(&self, path: &str) -> Url {
            Url::parse(&format!("http://{}{}", self.addr, path)).unwrap()
        }
        fn requests(&self) -> Vec<Logged> {
            self.log.lock().unwrap().clone()
        }
    }

    type Routes = Arc<HashMap<String, String>>;

    /// Starts the upstream on 127.0.0.1; `redirects` adds path → Location routes.
    async fn spawn_upstream(redirects: Vec<(&str, String)>) -> Upstream {
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

    struct Canary {
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
    }

    impl Canary {
        async fn spawn(bind: SocketAddr) -> Canary {
            let listener = TcpListener::bind(bind).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let hits = Arc::new(AtomicUsize::new(0));
            let counter = hits.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                }
            });
            Canary { addr, hits }
        }
        fn port(&self) -> u16 {
            self.addr.port()
        }
        /// Connections seen, after giving a pending accept time to land.
        async fn hits(&self) -> usize {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.hits.load(Ordering::SeqCst)
        }
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // ---- fetchers ----

    fn config(allow: &[&str]) -> FetchConfig {
        FetchConfig {
            user_agent: UA.to_owned(),
            connect_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_secs(3),
            max_bytes: 1 << 20,
            max_redirects: 5,
            policy: IpPolicy::new(allow.iter().map(|n| n.parse().unwrap()).collect()),
        }
    }

    fn resolver(entries: &[(&str, &[&str])]) -> Arc<dyn Resolve> {
        Arc::new(StaticResolver::new(entries.iter().map(|(name, ips)| {
            (name.to_string(), ips.iter().map(|i| ip(i)).collect())
        })))
    }

    /// Allows exactly the upstream's 127.0.0.1.
    fn upstream_fetcher(config: FetchConfig) -> Fetcher {
        Fetcher::with_resolver(config, resolver(&[]))
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    // ---- policy table ----

    fn v4_add(ip: Ipv4Addr, delta: i64) -> Option<Ipv4Addr> {
        u32::try_from(i64::from(u32::from(ip)) + delta)
            .ok()
            .map(Ipv4Addr::from)
    }

    fn v6_add(ip: Ipv6Addr, delta: i128) -> Option<Ipv6Addr> {
        let n = u128::from(ip);
        let moved = if delta >= 0 {
            n.checked_add(delta.unsigned_abs())
        } else {
            n.checked_sub(delta.unsigned_abs())
        };
        moved.map(Ipv6Addr::from)
    }

    #[test]
    fn v4_table_first_last_in_and_neighbours_out() {
        let policy = IpPolicy::new(vec![]);
        for rule in V4_BLOCKED {
            let net = ipnet::Ipv4Net::new(rule.net, rule.prefix).unwrap();
            let (first, last) = (net.network(), net.broadcast());
            assert_eq!(first, rule.net, "{} is not a network address", rule.name);
            for inside in [first, last] {
                assert!(
                    !policy.permits(IpAddr::V4(inside)),
                    "{inside} ({}) permitted",
                    rule.name
                );
                assert_eq!(v4_rule(inside).map(|r| r.name), Some(rule.name));
            }
            // A neighbour is outside this range; unless another range (224/4
            // touches 240/4) claims it, it is public.
            for outside in [v4_add(first, -1), v4_add(last, 1)].into_iter().flatten() {
                let matched = v4_rule(outside).map(|r| (r.net, r.prefix));
                assert_ne!(
                    matched,
                    Some((rule.net, rule.prefix)),
                    "{outside} matched {}",
                    rule.name
                );
                if matched.is_none() {
                    assert!(
                        policy.permits(IpAddr::V4(outside)),
                        "{outside} next to {} refused",
                        rule.name
                    );
                }
            }
        }
    }

    #[test]
    fn v6_table_first_last_in_and_neighbours_out() {
        let policy = IpPolicy::new(vec![]);
        for rule in V6_RULES {
            let net = ipnet::Ipv6Net::new(rule.net, rule.prefix).unwrap();
            let (first, last) = (net.network(), net.broadcast());
            assert_eq!(first, rule.net, "{} is not a network address", rule.name);
            // Embedded ranges start at 0.0.0.0 and end at 255.255.255.255: both refused.
            for inside in [first, last] {
                assert!(
                    !policy.permits(IpAddr::V6(inside)),
                    "{inside} ({}) permitted",
                    rule.name
                );
            }
            for outside in [v6_add(first, -1), v6_add(last, 1)].into_iter().flatten() {
                let matched = v6_rule(outside).map(|r| (r.net, r.prefix));
                assert_ne!(
                    matched,
                    Some((rule.net, rule.prefix)),
                    "{outside} matched {}",
                    rule.name
                );
                if matched.is_none() {
                    assert!(
                        policy.permits(IpAddr::V6(outside)),
                        "{outside} next to {} refused",
                        rule.name
                    );
                }
            }
        }
    }

    #[test]
    fn v6_neighbours_in_global_unicast_are_public() {
        let policy = IpPolicy::new(vec![]);
        for public in [
            "2001:200::",                              // after 2001::/23
            "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",  // before 2001:db8::/32
            "2001:db9::",                              // after 2001:db8::/32
            "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",  // last of 2001::/23 is refused, this is it
            "2003::",                                  // after 2002::/16
            "2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", // before 2002::/16
            "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", // before 3fff::/20
            "3fff:1000::",                             // after 3fff::/20
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
        ] {
            let expected = public != "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff";
            assert_eq!(policy.permits(ip(public)), expected, "{public}");
        }
    }

    #[test]
    fn embedded_ipv4_is_judged() {
        let policy = IpPolicy::new(vec![]);
        for (addr, permitted) in [
            ("::ffff:8.8.8.8", true),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.1.2.3", false),
            ("::8.8.8.8", true),
            ("::127.0.0.1", false),
            ("64:ff9b::8.8.8.8", true),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("2002:808:808::1", true),
            ("2002:7f00:1::", false),
            ("2002:c0a8:101::1", false),
            ("64:ff9b:1::808:808", false),
            ("::", false),
            ("::1", false),
        ] {
            assert_eq!(policy.permits(ip(addr)), permitted, "{addr}");
        }
    }

    #[test]
    fn public_addresses_permitted() {
        let policy = IpPolicy::new(vec![]);
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "9.255.255.255",
            "11.0.0.0",
            "223.255.255.255",
        ] {
            assert!(policy.permits(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn allow_list_exempts_exact_and_embedded_ipv4() {
        let policy = IpPolicy::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ]);
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.1")));
        assert!(policy.permits(ip("::127.0.0.1")));
        assert!(policy.permits(ip("fd00::5")));
        assert!(!policy.permits(ip("127.0.0.2")));
        assert!(!policy.permits(ip("::ffff:127.0.0.2")));
        assert!(!policy.permits(ip("::1")));
        assert!(!policy.permits(ip("fd00:0:0:1::5")));
    }

    // ---- errors ----

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

    #[test]
    fn fetcher_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Fetcher>();
        check::<FetchError>();
    }

    #[test]
    fn log_tag_is_short_and_hides_the_url() {
        let u = url("http://tracker.example/open?recipient=alice@example.org");
        let tag = log_tag(&u);
        assert_eq!(tag.len(), 8);
        assert!(!tag.contains("alice"));
        assert_eq!(tag, log_tag(&u));
    }

    // ---- fetching ----

    #[tokio::test]
    async fn fetches_image_with_exactly_three_headers() {
        let up = spawn_upstream(vec![]).await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        let got = fetcher.fetch(&up.url("/img#fragment")).await.unwrap();
        assert_eq!(&got.body[..], IMG);
        assert_eq!(got.redirects, 0);
        assert_eq!(got.final_url, up.url("/img#fragment"));

        let requests = up.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.path, "/img", "fragment must not be sent");
        let mut names: Vec<&str> = request.headers.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["accept", "host", "user-agent"],
            "{:?}",
            request.headers
        );
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header("host"), up.addr.to_string());
        assert_eq!(header("user-agent"), UA);
        assert_eq!(header("accept"), ACCEPT_VALUE);
    }

    #[tokio::test]
    async fn redirect_chain_within_limit_succeeds() {
        let up = spawn_upstream(vec![]).await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        let got = fetcher.fetch(&up.url("/redirect/5")).await.unwrap();
        assert_eq!(got.redirects, 5);
        assert_eq!(got.final_url, up.url("/img"));
        assert_eq!(&got.body[..], IMG);
        // Every hop carried the same three headers only.
        for request in up.requests() {
            assert_eq!(request.headers.len(), 3, "{request:?}");
        }
    }

    #[tokio::test]
    async fn redirect_chain_over_limit_fails() {
        let up = spawn_upstream(vec![]).await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        let err = fetcher.fetch(&up.url("/redirect/6")).await.unwrap_err();
        assert_eq!(err, FetchError::TooManyRedirects);
        assert_eq!(
            up.requests().len(),
            6,
            "max_redirects + 1 requests, then stop"
        );
    }

    #[tokio::test]
    async fn redirect_loop_stops_quickly() {
        let up = spawn_upstream(vec![]).await;
        let mut cfg = config(&["127.0.0.1/32"]);
        cfg.max_redirects = 10;
        let started = Instant::now();
        let err = upstream_fetcher(cfg)
            .fetch(&up.url("/loop"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::TooManyRedirects);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(up.requests().len(), 11);
    }

    #[tokio::test]
    async fn redirects_to_private_or_unlisted_loopback_are_refused_without_connecting() {
        let canary4 = Canary::spawn(sock("127.0.0.2:0")).await;
        let canary6 = Canary::spawn(sock("[::1]:0")).await;
        let up = spawn_upstream(vec![
            ("/to-private", "http://10.0.0.1/x".to_owned()),
            (
                "/to-metadata",
                "http://169.254.169.254/latest/meta-data/".to_owned(),
            ),
            (
                "/to-canary",
                format!("http://127.0.0.2:{}/", canary4.port()),
            ),
            ("/to-canary6", format!("http://[::1]:{}/", canary6.port())),
            (
                "/to-canary-mapped",
                format!("http://[::ffff:127.0.0.2]:{}/", canary4.port()),
            ),
            (
                "/to-canary-name",
                format!("http://canary.test:{}/", canary4.port()),
            ),
        ])
        .await;
        let fetcher = Fetcher::with_resolver(
            config(&["127.0.0.1/32"]),
            resolver(&[("canary.test", &["127.0.0.2"])]),
        );
        for (path, host) in [
            ("/to-private", "10.0.0.1"),
            ("/to-metadata", "169.254.169.254"),
            ("/to-canary", "127.0.0.2"),
            ("/to-canary6", "::1"),
            ("/to-canary-mapped", "::ffff:127.0.0.2"),
            ("/to-canary-name", "canary.test"),
        ] {
            let err = fetcher.fetch(&up.url(path)).await.unwrap_err();
            assert_eq!(
                err,
                FetchError::Forbidden {
                    host: host.to_owned()
                },
                "{path}"
            );
        }
        assert_eq!(canary4.hits().await, 0);
        assert_eq!(canary6.hits().await, 0);
    }

    #[tokio::test]
    async fn bad_redirects_are_refused() {
        let up = spawn_upstream(vec![
            ("/to-ftp", "ftp://127.0.0.1/x".to_owned()),
            ("/to-file", "file:///etc/passwd".to_owned()),
            ("/to-userinfo", "http://user:pass@127.0.0.1/img".to_owned()),
            ("/to-garbage", "http://[::1/".to_owned()),
        ])
        .await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        for (path, expected) in [
            ("/no-location", FetchError::BadRedirect),
            ("/to-garbage", FetchError::BadRedirect),
            ("/to-ftp", FetchError::UnsupportedScheme),
            ("/to-file", FetchError::UnsupportedScheme),
            ("/to-userinfo", FetchError::Userinfo),
        ] {
            assert_eq!(
                fetcher.fetch(&up.url(path)).await.unwrap_err(),
                expected,
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn endless_body_is_too_large_quickly() {
        let up = spawn_upstream(vec![]).await;
        let mut cfg = config(&["127.0.0.1/32"]);
        cfg.max_bytes = 64 * 1024;
        cfg.total_timeout = Duration::from_secs(10);
        let started = Instant::now();
        let err = upstream_fetcher(cfg)
            .fetch(&up.url("/endless"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::TooLarge);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn announced_big_body_is_refused_up_front() {
        let up = spawn_upstream(vec![]).await;
        let started = Instant::now();
        let err = upstream_fetcher(config(&["127.0.0.1/32"]))
            .fetch(&up.url("/big"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::TooLarge);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn body_limit_is_inclusive() {
        let up = spawn_upstream(vec![]).await;
        let mut cfg = config(&["127.0.0.1/32"]);
        cfg.max_bytes = IMG.len() as u64;
        assert!(upstream_fetcher(cfg.clone())
            .fetch(&up.url("/img"))
            .await
            .is_ok());
        cfg.max_bytes -= 1;
        assert_eq!(
            upstream_fetcher(cfg)
                .fetch(&up.url("/img"))
                .await
                .unwrap_err(),
            FetchError::TooLarge
        );
        // Directly: the streaming check stops at the first byte over.
        let mut buf = BytesMut::new();
        assert!(append_limited(&mut buf, b"abc", 4).is_ok());
        assert_eq!(
            append_limited(&mut buf, b"de", 4),
            Err(FetchError::TooLarge)
        );
        assert_eq!(&buf[..], b"abc");
    }

    #[tokio::test]
    async fn slow_drip_times_out() {
        let up = spawn_upstream(vec![]).await;
        let mut cfg = config(&["127.0.0.1/32"]);
        cfg.total_timeout = Duration::from_secs(1);
        let started = Instant::now();
        let err = upstream_fetcher(cfg)
            .fetch(&up.url("/slow"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::Timeout);
        assert!(err.is_transient());
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1500),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn slow_resolver_is_bounded_by_total_timeout() {
        struct Stuck;
        impl Resolve for Stuck {
            fn resolve(&self, _host: &str, _port: u16) -> ResolveFuture<'_> {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(vec![])
                })
            }
        }
        let mut cfg = config(&[]);
        cfg.total_timeout = Duration::from_millis(500);
        let started = Instant::now();
        let err = Fetcher::with_resolver(cfg, Arc::new(Stuck))
            .fetch(&url("http://stuck.test/"))
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn status_codes() {
        let up = spawn_upstream(vec![]).await;
        let fetcher = upstream_fetcher(config(&["127.0.0.1/32"]));
        for (path, code, transient) in [
            ("/500", 500, true),
            ("/429", 429, true),
            ("/404", 404, false),
        ] {
            let err = fetcher.fetch(&up.url(path)).await.unwrap_err();
            assert_eq!(err, FetchError::Status(code));
            assert_eq!(err.is_transient(), transient, "{path}");
        }
    }

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

    #[tokio::test]
    async fn untrusted_certificate_is_a_permanent_tls_error() {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
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
        let handshakes = Arc::new(AtomicUsize::new(0));
        let seen = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
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

    /// What a refused URL must fail with.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Refusal {
        Forbidden,
        Scheme,
        Userinfo,
    }

    fn refusal_of(err: &FetchError) -> Option<Refusal> {
        match err {
            FetchError::Forbidden { .. } => Some(Refusal::Forbidden),
            FetchError::UnsupportedScheme => Some(Refusal::Scheme),
            FetchError::Userinfo => Some(Refusal::Userinfo),
            _ => None,
        }
    }

    #[tokio::test]
    async fn ssrf_targets_are_refused_with_the_default_policy() {
        let canary4 = Canary::spawn(sock("127.0.0.1:0")).await;
        let canary6 = Canary::spawn(sock("[::1]:0")).await;
        let (p4, p6) = (canary4.port(), canary6.port());
        use Refusal::*;
        let cases: Vec<(String, Refusal)> = vec![
            (format!("http://127.0.0.1:{p4}/"), Forbidden),
            (format!("https://127.0.0.1:{p4}/"), Forbidden),
            (format!("http://127.1:{p4}/"), Forbidden),
            (format!("http://2130706433:{p4}/"), Forbidden),
            (format!("http://0x7f000001:{p4}/"), Forbidden),
            (format!("http://017700000001:{p4}/"), Forbidden),
            (format!("http://0177.0.0.1:{p4}/"), Forbidden),
            (format!("http://127.0.0.1.:{p4}/"), Forbidden),
            (format!("http://%31%32%37.0.0.1:{p4}/"), Forbidden),
            (format!("http://[::1]:{p6}/"), Forbidden),
            (format!("http://[::]:{p6}/"), Forbidden),
            (format!("http://[::ffff:127.0.0.1]:{p4}/"), Forbidden),
            (format!("http://[::ffff:7f00:1]:{p4}/"), Forbidden),
            (
                format!("http://[0:0:0:0:0:ffff:127.0.0.1]:{p4}/"),
                Forbidden,
            ),
            ("http://[::127.0.0.1]/".to_owned(), Forbidden),
            ("http://[64:ff9b::7f00:1]/".to_owned(), Forbidden),
            ("http://[2002:7f00:1::]/".to_owned(), Forbidden),
            (format!("http://0.0.0.0:{p4}/"), Forbidden),
            (format!("http://0:{p4}/"), Forbidden),
            (format!("http://localhost:{p4}/"), Forbidden),
            (format!("http://LOCALHOST:{p6}/"), Forbidden),
            (format!("http://loopback.test:{p4}/"), Forbidden),
            (format!("https://loopback.test:{p4}/"), Forbidden),
            (format!("http://loopback6.test:{p6}/"), Forbidden),
            (format!("http://mixed.test:{p4}/"), Forbidden),
            ("http://10.0.0.1/".to_owned(), Forbidden),
            ("http://172.16.0.1/".to_owned(), Forbidden),
            ("http://192.168.1.1/".to_owned(), Forbidden),
            ("http://100.64.0.1/".to_owned(), Forbidden),
            (
                "http://169.254.169.254/latest/meta-data/".to_owned(),
                Forbidden,
            ),
            ("http://[::ffff:169.254.169.254]/".to_owned(), Forbidden),
            ("http://metadata.test/".to_owned(), Forbidden),
            ("http://224.0.0.1/".to_owned(), Forbidden),
            ("http://255.255.255.255/".to_owned(), Forbidden),
            ("http://198.18.0.1/".to_owned(), Forbidden),
            ("http://192.0.2.1/".to_owned(), Forbidden),
            ("http://[fc00::1]/".to_owned(), Forbidden),
            ("http://[fe80::1]/".to_owned(), Forbidden),
            ("http://[fec0::1]/".to_owned(), Forbidden),
            ("http://[ff02::1]/".to_owned(), Forbidden),
            ("http://[2001:db8::1]/".to_owned(), Forbidden),
            ("http://[2001::1]/".to_owned(), Forbidden),
            ("http://[100::1]/".to_owned(), Forbidden),
            ("http://user:pass@example.com/".to_owned(), Userinfo),
            (format!("http://example.com@127.0.0.1:{p4}/"), Userinfo),
            ("ftp://example.com/x.png".to_owned(), Scheme),
            ("file:///etc/passwd".to_owned(), Scheme),
            ("gopher://example.com/".to_owned(), Scheme),
            ("data:image/png;base64,AAAA".to_owned(), Scheme),
        ];
        assert!(cases.len() >= 30);
        let names = resolver(&[
            ("loopback.test", &["127.0.0.1"]),
            ("loopback6.test", &["::1"]),
            ("mixed.test", &["192.0.2.10", "127.0.0.1"]),
            ("metadata.test", &["169.254.169.254", "fd00:ec2::254"]),
        ]);
        let static_fetcher = Fetcher::with_resolver(config(&[]), names);
        let system_fetcher = Fetcher::new(config(&[]));
        let started = Instant::now();
        for (target, expected) in &cases {
            let fetcher = if target.to_ascii_lowercase().contains("localhost") {
                &system_fetcher
            } else {
                &static_fetcher
            };
            let parsed = Url::parse(target).unwrap();
            let result = fetcher.fetch(&parsed).await;
            let got = result.as_ref().err().and_then(refusal_of);
            assert_eq!(got, Some(*expected), "{target} gave {result:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusals must not wait on the network"
        );
        assert_eq!(canary4.hits().await, 0);
        assert_eq!(canary6.hits().await, 0);
    }
}
