//! Configuration: what the operator typed ([`RawConfig`], TOML with embedded defaults) and the
//! validated form the rest of the program uses ([`Config`]).
//!
//! Validation happens once, at startup, and every error names the offending key and value.
//! Each side receives its own small struct (the fetcher a `FetchConfig`, the cache a
//! `CacheConfig`, the milter a `MilterConfig`), never the raw TOML; the structs belong to
//! the modules that use them, and this module fills them in. It reads the config file and
//! nothing else: the key files, tracker lists and token files it names are read by
//! [`crate::startup`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::delivery::milter::{MilterConfig, MilterListen, MilterOnError};
use crate::proxy::OnMiss;
use crate::rewrite::trackers::TrackerMode;

/// A configuration problem, always naming the key and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The underlying I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML or has keys of the wrong type or unknown keys.
    #[error("config file {path}: {error}")]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// The parser's message, with the key and the line.
        error: Box<ParseError>,
    },
    /// A key has a value of the right type that is still not acceptable.
    #[error("{key} = {value:?}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `server.listen`.
        key: &'static str,
        /// The value as written.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

/// A config text that does not parse: a key of the wrong type, an unknown key or value, or
/// not TOML at all.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {error}")]
pub struct ParseError {
    /// The dotted key at fault (`trackers.mode`), or `.` for the document itself.
    key: String,
    /// What the TOML parser said, with the line.
    error: toml::de::Error,
}

/// The config as written by the operator, with every key present: missing keys take the
/// embedded defaults, so `RawConfig::default()` is the zero-setup laptop configuration.
/// Serialising it prints the effective configuration (`mailveil check-config`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`: the image endpoint.
    pub server: RawServer,
    /// `[keys]`: URL-signing keys.
    pub keys: RawKeys,
    /// `[cache]`: where fetched resources are kept.
    pub cache: RawCache,
    /// `[prefetch]`: the delivery-time fetch queue.
    pub prefetch: RawPrefetch,
    /// `[fetch]`: outbound fetching policy.
    pub fetch: RawFetch,
    /// `[trackers]`: tracker classification.
    pub trackers: RawTrackers,
    /// `[filter]`: behaviour of `mailveil filter`.
    pub filter: RawFilter,
    /// `[images]`: content checks on fetched bodies.
    pub images: RawImages,
    /// `[api]`: the rewrite API for webmail.
    pub api: RawApi,
    /// `[milter]`: the Postfix/Sendmail milter listener inside `serve`.
    pub milter: RawMilter,
}

/// `[milter]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMilter {
    /// `inet:host:port` or `unix:/path/to/socket`; empty (the default) means no milter.
    pub listen: String,
    /// Permissions of a `unix:` socket, in octal.
    pub socket_mode: String,
    /// Messages larger than this (headers and body) pass unchanged.
    pub max_message_bytes: u64,
    /// `"accept"`: on an internal failure the message goes on unchanged;
    /// `"tempfail"`: the MTA is told to try again later. Never a rejection.
    pub on_error: MilterOnError,
}

impl Default for RawMilter {
    fn default() -> Self {
        Self {
            listen: String::new(),
            socket_mode: "0660".into(),
            max_message_bytes: 32 << 20,
            on_error: MilterOnError::Accept,
        }
    }
}

/// `[api]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawApi {
    /// Address of the rewrite API, separate from the image endpoint; loopback by default.
    pub listen: String,
    /// Accepted bearer tokens. The API runs only when at least one token is configured.
    pub tokens: Vec<String>,
    /// A file with one token per line (blank lines and `#` comments ignored), instead of
    /// or as well as `tokens`.
    pub token_file: Option<PathBuf>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8701".into(),
            tokens: Vec::new(),
            token_file: None,
            max_body_bytes: 32 << 20,
            max_connections: 256,
        }
    }
}

/// Settings of the rewrite API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Its own address.
    pub listen: SocketAddr,
    /// Tokens written in the config itself (see [`ApiConfig::load_tokens`]).
    pub tokens: Vec<String>,
    /// File with more tokens, read by `serve` only.
    pub token_file: Option<PathBuf>,
    /// Request body bound.
    pub max_body: usize,
    /// Connections served at once.
    pub max_connections: usize,
}

impl ApiConfig {
    /// Every accepted token: `api.tokens` plus the lines of `api.token_file`. Read only by
    /// `serve` and `check-config`, so `filter`, run by other users, never needs the file.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when the file cannot be read or holds a short token.
    pub fn load_tokens(&self) -> Result<Vec<String>, ConfigError> {
        let mut tokens = self.tokens.clone();
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "api.token_file",
                    path.display().to_string(),
                    format!("cannot read ({e})"),
                )
            })?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
            check_tokens("api.token_file", &tokens)?;
        }
        Ok(tokens)
    }
}

/// `[server]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// Address the image endpoint listens on, `host:port`.
    pub listen: String,
    /// Base of every rewritten URL, as readers' clients reach the proxy.
    pub public_url: String,
    /// PEM certificate chain; with `tls_key`, the listener speaks TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Seconds a client gets to send its request headers.
    pub header_timeout_secs: u64,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_timeout_secs: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8700".into(),
            public_url: "http://127.0.0.1:8700".into(),
            tls_cert: None,
            tls_key: None,
            max_connections: 4096,
            header_timeout_secs: 10,
            shutdown_timeout_secs: 10,
        }
    }
}

/// `[keys]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawKeys {
    /// File holding the signing key (64 hex digits); created with mode 0600 if missing.
    pub key_file: PathBuf,
    /// Files holding earlier keys, still accepted when verifying but never used to sign.
    pub previous_key_files: Vec<PathBuf>,
}

impl Default for RawKeys {
    fn default() -> Self {
        Self {
            key_file: default_state_dir().join("key"),
            previous_key_files: Vec::new(),
        }
    }
}

/// `[cache]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCache {
    /// Directory of the on-disk cache.
    pub dir: PathBuf,
    /// Disk budget for cached bodies, in bytes.
    pub max_bytes: u64,
    /// Memory budget of the in-process tier, in bytes.
    pub memory_bytes: u64,
    /// Entries are kept at least this long unless the disk budget forces eviction.
    pub max_age_days: u64,
    /// Seconds between eviction sweeps of `serve`.
    pub evict_interval_secs: u64,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            dir: default_cache_dir(),
            max_bytes: 1 << 30,
            memory_bytes: 64 << 20,
            max_age_days: 180,
            evict_interval_secs: 3600,
        }
    }
}

/// `[prefetch]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPrefetch {
    /// Durable queue shared by `filter` (writer) and `serve` (reader).
    pub spool_dir: PathBuf,
    /// `"fetch"` or `"placeholder"`: what a reader's request does on a cache miss.
    pub on_miss: OnMiss,
    /// Upstream fetches at once.
    pub concurrency: usize,
    /// Upstream fetches at once to one host.
    pub per_host: usize,
    /// Attempts per URL on transient failures.
    pub max_attempts: u32,
    /// Seconds before the first retry (doubling after).
    pub retry_base_secs: u64,
    /// Milliseconds between scans of the spool for new jobs.
    pub poll_interval_ms: u64,
}

impl Default for RawPrefetch {
    fn default() -> Self {
        Self {
            spool_dir: default_state_dir().join("spool"),
            on_miss: OnMiss::Fetch,
            concurrency: 32,
            per_host: 8,
            max_attempts: 5,
            retry_base_secs: 30,
            poll_interval_ms: 500,
        }
    }
}

/// `[fetch]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFetch {
    /// CIDR ranges exempt from the private-address block (empty by default).
    pub allow_networks: Vec<String>,
    /// The one User-Agent sent upstream.
    pub user_agent: String,
    /// Seconds to establish a connection.
    pub connect_timeout_secs: u64,
    /// Seconds for a whole fetch, redirects and body included.
    pub timeout_secs: u64,
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Redirects followed at most.
    pub max_redirects: u32,
}

impl Default for RawFetch {
    fn default() -> Self {
        Self {
            allow_networks: Vec::new(),
            user_agent: concat!("mailveil/", env!("CARGO_PKG_VERSION"), " (image proxy)").into(),
            connect_timeout_secs: 5,
            timeout_secs: 20,
            max_bytes: 10 << 20,
            max_redirects: 5,
        }
    }
}

/// `[images]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawImages {
    /// Re-encode static images, dropping metadata and decoder exploits.
    pub reencode: bool,
    /// Serve SVG images (off: SVG is a document that can load and script).
    pub allow_svg: bool,
    /// Widest image decoded, in pixels.
    pub max_width: u32,
    /// Tallest image decoded, in pixels.
    pub max_height: u32,
    /// Memory the decoder may allocate for one image, in bytes.
    pub max_alloc_bytes: u64,
}

impl Default for RawImages {
    fn default() -> Self {
        Self {
            reencode: true,
            allow_svg: false,
            max_width: 8192,
            max_height: 8192,
            max_alloc_bytes: 128 << 20,
        }
    }
}

/// `[trackers]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTrackers {
    /// `"block"` (remove tracker references) or `"proxy"` (proxy them like other images).
    pub mode: TrackerMode,
    /// Use the built-in rules for email service providers' open-tracking endpoints.
    pub builtin: bool,
    /// Extra rule lists in Adblock filter syntax (e.g. EasyPrivacy's email-tracker list).
    pub lists: Vec<PathBuf>,
}

impl Default for RawTrackers {
    fn default() -> Self {
        Self {
            mode: TrackerMode::Block,
            builtin: true,
            lists: Vec::new(),
        }
    }
}

/// `[filter]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFilter {
    /// `"pass"`: on any failure write the original message and exit 0;
    /// `"tempfail"`: exit 75 so the MTA retries later.
    pub on_error: FilterOnError,
    /// Messages larger than this pass through unchanged (bounded memory).
    pub max_message_bytes: u64,
}

impl Default for RawFilter {
    fn default() -> Self {
        Self {
            on_error: FilterOnError::Pass,
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What `filter` does when it cannot rewrite a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterOnError {
    /// Write the original bytes and exit 0.
    Pass,
    /// Write the original bytes and exit 75 (EX_TEMPFAIL).
    Tempfail,
}

/// Tracker settings for the rewrite engine.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Block or proxy trackers.
    pub mode: TrackerMode,
    /// Whether the built-in rules apply.
    pub builtin: bool,
    /// Adblock-syntax list files to load.
    pub lists: Vec<PathBuf>,
}

/// Key files for signing.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// The signing key's file.
    pub key_file: PathBuf,
    /// Verify-only earlier keys.
    pub previous_key_files: Vec<PathBuf>,
}

/// Settings of `mailveil filter`.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// Failure behaviour.
    pub on_error: FilterOnError,
    /// Size above which messages pass unchanged.
    pub max_message_bytes: u64,
}

/// The validated configuration. Built only by [`Config::from_raw`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Image endpoint address.
    pub listen: SocketAddr,
    /// Base URL of rewritten references, without a trailing slash.
    pub public_url: Url,
    /// Signing keys.
    pub keys: KeyConfig,
    /// Time between eviction sweeps.
    pub cache_evict_interval: Duration,
    /// Prefetch spool directory.
    pub spool_dir: PathBuf,
    /// Tracker handling.
    pub trackers: TrackerConfig,
    /// Filter behaviour.
    pub filter: FilterConfig,
    /// Listener limits (TLS files are loaded at start-up by `serve`).
    pub server: ServerConfig,
    /// The cache's own configuration.
    pub cache: crate::proxy::cache::CacheConfig,
    /// The fetcher's own configuration (its address policy holds `allow_networks`).
    pub fetch: crate::proxy::fetch::FetchConfig,
    /// Content checks.
    pub images: crate::proxy::content::ContentPolicy,
    /// Prefetch workers' limits.
    pub prefetch: crate::delivery::prefetch::PrefetchConfig,
    /// What a reader's request does on a miss.
    pub on_miss: OnMiss,
    /// The rewrite API.
    pub api: ApiConfig,
    /// The milter.
    pub milter: MilterConfig,
}

/// Listener settings of `serve`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Certificate and key files, when TLS is on.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to receive request headers.
    pub header_timeout: Duration,
    /// Drain deadline on shutdown.
    pub shutdown_grace: Duration,
}

impl RawConfig {
    /// Reads a TOML config file; keys it omits take the embedded defaults.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`] (unknown keys are refused, so typos
    /// do not silently fall back to defaults).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_toml(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(error),
        })
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// The parser's error, which names the line and key.
    pub fn from_toml(text: &str) -> Result<Self, ParseError> {
        // Syntax errors come from parsing, before any key is reached: they belong to the
        // document itself, `.` as serde_path_to_error names the root.
        let document = toml::Deserializer::parse(text).map_err(|error| ParseError {
            key: ".".to_owned(),
            error,
        })?;
        serde_path_to_error::deserialize(document).map_err(|e| ParseError {
            key: e.path().to_string(),
            error: e.into_inner(),
        })
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        // Tokens are secrets: the effective configuration shows that they are set, not what.
        let mut shown = self.clone();
        shown.api.tokens = shown
            .api
            .tokens
            .iter()
            .map(|_| "<redacted>".to_owned())
            .collect();
        // Serialising plain strings, numbers and lists cannot fail; say so rather than
        // panic if a future field type ever makes it fail.
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

impl Config {
    /// Validates a raw config.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first offending key and its value.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let allow_networks = parse_networks(&raw.fetch.allow_networks)?;
        let cache_dir = non_empty_path("cache.dir", &raw.cache.dir)?;
        Ok(Self {
            server: parse_server(&raw.server)?,
            cache: parse_cache(&raw.cache, cache_dir)?,
            fetch: parse_fetch(&raw.fetch, allow_networks)?,
            images: parse_images(&raw.images)?,
            prefetch: parse_prefetch(&raw.prefetch)?,
            on_miss: raw.prefetch.on_miss,
            api: parse_api(&raw.api)?,
            milter: parse_milter(&raw.milter)?,
            listen: parse_listen(&raw.server.listen)?,
            public_url: parse_public_url(&raw.server.public_url)?,
            keys: KeyConfig {
                key_file: non_empty_path("keys.key_file", &raw.keys.key_file)?,
                previous_key_files: raw.keys.previous_key_files.clone(),
            },
            cache_evict_interval: seconds(
                "cache.evict_interval_secs",
                raw.cache.evict_interval_secs,
            )?,
            spool_dir: non_empty_path("prefetch.spool_dir", &raw.prefetch.spool_dir)?,
            trackers: TrackerConfig {
                mode: raw.trackers.mode,
                builtin: raw.trackers.builtin,
                lists: raw.trackers.lists.clone(),
            },
            filter: FilterConfig {
                on_error: raw.filter.on_error,
                max_message_bytes: parse_max_message(raw.filter.max_message_bytes)?,
            },
        })
    }
}

fn invalid(key: &'static str, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        reason: reason.into(),
    }
}

fn parse_listen(value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e| {
        invalid(
            "server.listen",
            value,
            format!("not a host:port address ({e})"),
        )
    })
}

fn parse_public_url(value: &str) -> Result<Url, ConfigError> {
    const KEY: &str = "server.public_url";
    let url = Url::parse(value).map_err(|e| invalid(KEY, value, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(KEY, value, "scheme must be http or https"));
    }
    if url.host().is_none() {
        return Err(invalid(KEY, value, "a host is required"));
    }
    if url.query().is_some() || url.fragment().is_some() || url.username() != "" {
        return Err(invalid(
            KEY,
            value,
            "query, fragment and user name are not allowed",
        ));
    }
    Ok(url)
}

fn non_empty_path(key: &'static str, path: &Path) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(key, "", "a path is required"));
    }
    Ok(path.to_owned())
}

fn parse_networks(values: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    values
        .iter()
        .map(|v| {
            v.parse::<IpNet>().map_err(|_| {
                invalid(
                    "fetch.allow_networks",
                    v.as_str(),
                    "not a CIDR range such as 127.0.0.1/32",
                )
            })
        })
        .collect()
}

fn positive(key: &'static str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(invalid(key, "0", "must be greater than 0"));
    }
    Ok(value)
}

fn seconds(key: &'static str, value: u64) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(positive(key, value)?))
}

fn parse_server(raw: &RawServer) -> Result<ServerConfig, ConfigError> {
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (Some(cert), None) => {
            return Err(invalid(
                "server.tls_key",
                "",
                format!(
                    "required with server.tls_cert = {:?}",
                    cert.display().to_string()
                ),
            ))
        }
        (None, Some(key)) => {
            return Err(invalid(
                "server.tls_cert",
                "",
                format!(
                    "required with server.tls_key = {:?}",
                    key.display().to_string()
                ),
            ))
        }
    };
    Ok(ServerConfig {
        tls,
        max_connections: positive("server.max_connections", raw.max_connections as u64)? as usize,
        header_timeout: seconds("server.header_timeout_secs", raw.header_timeout_secs)?,
        shutdown_grace: seconds("server.shutdown_timeout_secs", raw.shutdown_timeout_secs)?,
    })
}

fn parse_cache(
    raw: &RawCache,
    dir: PathBuf,
) -> Result<crate::proxy::cache::CacheConfig, ConfigError> {
    Ok(crate::proxy::cache::CacheConfig {
        dir,
        max_disk_bytes: positive("cache.max_bytes", raw.max_bytes)?,
        memory_bytes: raw.memory_bytes,
        max_age: Duration::from_secs(positive("cache.max_age_days", raw.max_age_days)? * 86_400),
    })
}

fn parse_fetch(
    raw: &RawFetch,
    allow: Vec<IpNet>,
) -> Result<crate::proxy::fetch::FetchConfig, ConfigError> {
    let ua = raw.user_agent.trim();
    if ua.is_empty() || !ua.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid(
            "fetch.user_agent",
            raw.user_agent.as_str(),
            "must be non-empty printable ASCII",
        ));
    }
    Ok(crate::proxy::fetch::FetchConfig {
        user_agent: ua.to_owned(),
        connect_timeout: seconds("fetch.connect_timeout_secs", raw.connect_timeout_secs)?,
        total_timeout: seconds("fetch.timeout_secs", raw.timeout_secs)?,
        max_bytes: positive("fetch.max_bytes", raw.max_bytes)?,
        max_redirects: raw.max_redirects,
        policy: crate::proxy::fetch::IpPolicy::new(allow),
    })
}

fn parse_images(raw: &RawImages) -> Result<crate::proxy::content::ContentPolicy, ConfigError> {
    Ok(crate::proxy::content::ContentPolicy {
        max_width: positive("images.max_width", u64::from(raw.max_width))? as u32,
        max_height: positive("images.max_height", u64::from(raw.max_height))? as u32,
        max_alloc: positive("images.max_alloc_bytes", raw.max_alloc_bytes)?,
        reencode: raw.reencode,
        allow_svg: raw.allow_svg,
    })
}

fn parse_prefetch(
    raw: &RawPrefetch,
) -> Result<crate::delivery::prefetch::PrefetchConfig, ConfigError> {
    Ok(crate::delivery::prefetch::PrefetchConfig {
        concurrency: positive("prefetch.concurrency", raw.concurrency as u64)? as usize,
        per_host: positive("prefetch.per_host", raw.per_host as u64)? as usize,
        max_attempts: positive("prefetch.max_attempts", u64::from(raw.max_attempts))? as u32,
        retry_base: seconds("prefetch.retry_base_secs", raw.retry_base_secs)?,
        poll_interval: Duration::from_millis(positive(
            "prefetch.poll_interval_ms",
            raw.poll_interval_ms,
        )?),
    })
}

fn parse_api(raw: &RawApi) -> Result<ApiConfig, ConfigError> {
    let listen = raw.listen.parse().map_err(|e| {
        invalid(
            "api.listen",
            raw.listen.as_str(),
            format!("not a host:port address ({e})"),
        )
    })?;
    let tokens: Vec<String> = raw.tokens.iter().map(|t| t.trim().to_owned()).collect();
    check_tokens("api.tokens", &tokens)?;
    Ok(ApiConfig {
        listen,
        tokens,
        token_file: raw.token_file.clone(),
        max_body: positive("api.max_body_bytes", raw.max_body_bytes as u64)? as usize,
        max_connections: positive("api.max_connections", raw.max_connections as u64)? as usize,
    })
}

fn parse_milter(raw: &RawMilter) -> Result<MilterConfig, ConfigError> {
    let listen = if raw.listen.trim().is_empty() {
        None
    } else if let Some(addr) = raw.listen.strip_prefix("inet:") {
        let addr = addr.parse().map_err(|e| {
            invalid(
                "milter.listen",
                raw.listen.as_str(),
                format!("inet: needs host:port ({e})"),
            )
        })?;
        Some(MilterListen::Inet(addr))
    } else if let Some(path) = raw.listen.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(invalid(
                "milter.listen",
                raw.listen.as_str(),
                "unix: needs an absolute path",
            ));
        }
        let mode = u32::from_str_radix(raw.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "milter.socket_mode",
                    raw.socket_mode.as_str(),
                    "expected octal permissions such as \"0660\"",
                )
            })?;
        Some(MilterListen::Unix(PathBuf::from(path), mode))
    } else {
        return Err(invalid(
            "milter.listen",
            raw.listen.as_str(),
            "expected \"inet:host:port\" or \"unix:/path\"",
        ));
    };
    let max = positive("milter.max_message_bytes", raw.max_message_bytes)?;
    Ok(MilterConfig {
        listen,
        max_message_bytes: usize::try_from(max).unwrap_or(usize::MAX),
        on_error: raw.on_error,
    })
}

fn check_tokens(key: &'static str, tokens: &[String]) -> Result<(), ConfigError> {
    if tokens.iter().any(|t| t.len() < 16) {
        // The value is a secret: name the key, not the token.
        return Err(invalid(
            key,
            "<redacted>",
            "tokens must be at least 16 characters",
        ));
    }
    Ok(())
}

fn parse_max_message(value: u64) -> Result<u64, ConfigError> {
    if value < 1024 {
        return Err(invalid(
            "filter.max_message_bytes",
            value.to_string(),
            "must be at least 1024",
        ));
    }
    Ok(value)
}

/// Where state (the key, the spool) lives by default: systemd's `$STATE_DIRECTORY`, else the
/// user's data directory, else `/var/lib/mailveil`.
fn default_state_dir() -> PathBuf {
    from_env_dir("STATE_DIRECTORY")
        .or_else(|| dirs::data_dir().map(|d| d.join("mailveil")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/mailveil"))
}

/// Where the cache lives by default: `$CACHE_DIRECTORY`, the user's cache directory, or
/// `/var/cache/mailveil`.
fn default_cache_dir() -> PathBuf {
    from_env_dir("CACHE_DIRECTORY")
        .or_else(|| dirs::cache_dir().map(|d| d.join("mailveil")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/mailveil"))
}

/// systemd may pass several colon-separated directories; the first is ours.
fn from_env_dir(var: &str) -> Option<PathBuf> {
    let value = std::env::var_os(var)?;
    let first = value.to_str()?.split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Result<Config, String> {
        let raw = RawConfig::from_toml(text).map_err(|e| e.to_string())?;
        Config::from_raw(&raw).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_validate() {
        let config = validate("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8700");
        assert_eq!(config.trackers.mode, TrackerMode::Block);
        assert_eq!(config.filter.on_error, FilterOnError::Pass);
    }

    #[test]
    fn errors_name_key_and_value() {
        let err = validate("[server]\nlisten = \"nowhere\"").unwrap_err();
        assert!(
            err.contains("server.listen") && err.contains("nowhere"),
            "{err}"
        );
        let err = validate("[fetch]\nallow_networks = [\"10.0.0.0/99\"]").unwrap_err();
        assert!(
            err.contains("fetch.allow_networks") && err.contains("10.0.0.0/99"),
            "{err}"
        );
        let err = validate("[trackers]\nmode = \"maybe\"").unwrap_err();
        assert!(
            err.contains("trackers.mode") && err.contains("maybe"),
            "{err}"
        );
        let err = validate("[server]\npublic_url = \"ftp://x\"").unwrap_err();
        assert!(err.contains("server.public_url"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = validate("[server]\nlisten_addr = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.contains("listen_addr"), "{err}");
    }

    #[test]
    fn effective_config_round_trips() {
        let raw = RawConfig::default();
        let again = RawConfig::from_toml(&raw.to_toml()).unwrap();
        assert_eq!(again.to_toml(), raw.to_toml());
    }

    #[test]
    fn milter_settings() {
        let config = validate("").unwrap();
        assert_eq!(config.milter.listen, None);
        assert_eq!(config.milter.on_error, MilterOnError::Accept);
        let config = validate("[milter]\nlisten = \"inet:127.0.0.1:8702\"").unwrap();
        assert_eq!(
            config.milter.listen,
            Some(MilterListen::Inet("127.0.0.1:8702".parse().unwrap()))
        );
        let config = validate(
            "[milter]\nlisten = \"unix:/run/mailveil/milter.sock\"\nsocket_mode = \"0666\"",
        )
        .unwrap();
        assert_eq!(
            config.milter.listen,
            Some(MilterListen::Unix(
                "/run/mailveil/milter.sock".into(),
                0o666
            ))
        );
        for (text, key) in [
            ("listen = \"tcp:1.2.3.4:5\"", "milter.listen"),
            ("listen = \"inet:localhost\"", "milter.listen"),
            ("listen = \"unix:relative.sock\"", "milter.listen"),
            (
                "listen = \"unix:/x.sock\"\nsocket_mode = \"rw\"",
                "milter.socket_mode",
            ),
            ("on_error = \"reject\"", "milter.on_error"),
            ("max_message_bytes = 0", "milter.max_message_bytes"),
        ] {
            let err = validate(&format!("[milter]\n{text}")).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
