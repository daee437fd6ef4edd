//! The long-lived parts built from a validated [`Config`] at start-up (and again on reload):
//! the signer (creating the key on first use), the tracker rules, the rewrite engine. Also
//! [`StartupError`], the one error type of everything that can stop mailveil from starting.
//!
//! Config validation is [`crate::config`]'s; this module reads the files the config names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::activation::ActivationError;
use crate::config::{Config, ConfigError, RawConfig};
use crate::delivery::spool::SpoolError;
use crate::http::TlsError;
use crate::proxy::cache::CacheError;
use crate::rewrite::html::Engine;
use crate::rewrite::trackers::{TrackerError, TrackerRules};
use crate::sign::{Key, SignError, Signer};

/// Why mailveil could not start (or reload).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key file could not be read, created or parsed.
    #[error("{key}: {error}")]
    Key {
        /// The config key naming the file (`keys.key_file`, `keys.previous_key_files[1]`).
        key: String,
        /// What went wrong.
        error: SignError,
    },
    /// A tracker list could not be read.
    #[error("trackers.lists[{index}] = {path:?}: {error}")]
    TrackerListIo {
        /// Position in `trackers.lists`.
        index: usize,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A tracker list holds nothing usable.
    #[error("trackers.lists[{index}] = {path:?}: {error}")]
    TrackerList {
        /// Position in `trackers.lists`.
        index: usize,
        /// The file.
        path: PathBuf,
        /// What the list parser said.
        error: TrackerError,
    },
    /// The TLS certificate or key.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The cache directory.
    #[error("cache.dir: {0}")]
    Cache(#[from] CacheError),
    /// The spool directory.
    #[error("prefetch.spool_dir: {0}")]
    Spool(#[from] SpoolError),
    /// A socket passed by systemd.
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// A listen address could not be opened.
    #[error("{key} = {addr:?}: cannot listen: {error}")]
    Listen {
        /// The config key (`server.listen`, `api.listen`, `milter.listen`).
        key: &'static str,
        /// The address as configured.
        addr: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The image endpoint stopped accepting connections.
    #[error("image endpoint: {0}")]
    Serve(std::io::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl StartupError {
    /// Whether the operator's configuration is at fault (exit status 78, EX_CONFIG), as
    /// opposed to the system (a port taken, a directory that cannot be created).
    pub fn is_config(&self) -> bool {
        match self {
            StartupError::Config(_)
            | StartupError::Key { .. }
            | StartupError::TrackerList { .. }
            | StartupError::Tls(_)
            | StartupError::Activation(_) => true,
            StartupError::TrackerListIo { .. }
            | StartupError::Cache(_)
            | StartupError::Spool(_)
            | StartupError::Listen { .. }
            | StartupError::Serve(_)
            | StartupError::Runtime(_) => false,
        }
    }
}

/// The config file named on the command line (or by `$MAILVEIL_CONFIG`), else the embedded
/// defaults, as written.
///
/// # Errors
/// [`ConfigError`] when the file cannot be read or parsed.
pub fn load_raw_config(path: Option<&Path>) -> Result<RawConfig, ConfigError> {
    match path {
        Some(path) => RawConfig::from_file(path),
        None => Ok(RawConfig::default()),
    }
}

/// The validated config from `path` (or the defaults).
///
/// # Errors
/// [`ConfigError`] naming the key at fault.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    Config::from_raw(&load_raw_config(path)?)
}

/// The signer: the current key (created on first use) and the verify-only earlier ones.
///
/// # Errors
/// [`StartupError::Key`] naming the key file at fault.
pub fn load_signer(config: &Config) -> Result<Signer, StartupError> {
    let current =
        Key::load_or_create(&config.keys.key_file).map_err(|error| StartupError::Key {
            key: "keys.key_file".into(),
            error,
        })?;
    Ok(Signer::new(
        &config.public_url,
        current,
        load_previous_keys(config)?,
    ))
}

/// The earlier keys, still accepted when verifying.
///
/// # Errors
/// [`StartupError::Key`] naming the first file at fault.
pub fn load_previous_keys(config: &Config) -> Result<Vec<Key>, StartupError> {
    let files = &config.keys.previous_key_files;
    files
        .iter()
        .enumerate()
        .map(|(i, path)| {
            Key::load(path).map_err(|error| StartupError::Key {
                key: format!("keys.previous_key_files[{i}]"),
                error,
            })
        })
        .collect()
}

/// The tracker rules: the built-in ones unless switched off, plus every configured list.
///
/// # Errors
/// A list that cannot be read or holds no usable rule.
pub fn load_trackers(config: &Config) -> Result<TrackerRules, StartupError> {
    let mut rules = if config.trackers.builtin {
        TrackerRules::builtin()
    } else {
        TrackerRules::empty()
    };
    for (index, path) in config.trackers.lists.iter().enumerate() {
        let text = std::fs::read_to_string(path).map_err(|error| StartupError::TrackerListIo {
            index,
            path: path.clone(),
            error,
        })?;
        let name = path.display().to_string();
        let added =
            rules
                .add_adblock_list(&name, &text)
                .map_err(|error| StartupError::TrackerList {
                    index,
                    path: path.clone(),
                    error,
                })?;
        tracing::debug!(list = %name, rules = added, "tracker list loaded");
    }
    Ok(rules)
}

/// The rewrite engine: signer and tracker rules.
///
/// # Errors
/// As [`load_signer`] and [`load_trackers`].
pub fn build_engine(config: &Config) -> Result<Engine, StartupError> {
    engine_with_signer(config, load_signer(config)?)
}

/// The rewrite engine around a signer loaded already (the daemon's, so the keys are read
/// once).
///
/// # Errors
/// As [`load_trackers`].
pub fn engine_with_signer(config: &Config, signer: Signer) -> Result<Engine, StartupError> {
    Ok(Engine::new(
        signer,
        load_trackers(config)?,
        config.trackers.mode,
    ))
}

/// Turns the I/O error of opening `addr` into a [`StartupError::Listen`] naming the key.
pub(crate) fn listen_error(
    key: &'static str,
    addr: SocketAddr,
) -> impl FnOnce(std::io::Error) -> StartupError {
    move |error| StartupError::Listen {
        key,
        addr: addr.to_string(),
        error,
    }
}

/// Everything `mailveil check-config` checks: the config itself, the tracker lists, the API
/// token file and the earlier keys (the current key is created on first use, so its absence
/// is no error).
///
/// # Errors
/// The first problem found, naming its key.
pub fn check_config(raw: &RawConfig) -> Result<Config, StartupError> {
    let config = Config::from_raw(raw)?;
    load_trackers(&config)?;
    config.api.load_tokens()?;
    load_previous_keys(&config)?;
    Ok(config)
}
