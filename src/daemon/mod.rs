//! `mailveil serve`'s wiring, as named steps: build the shared state, open the listeners
//! (or take the ones systemd passed), start the fronts (prefetch workers, rewrite API,
//! milter) and the housekeeping (cache eviction, reload on SIGHUP), serve the image
//! endpoint until SIGTERM or SIGINT, then drain.
//!
//! Everything here is glue: what each part does is its own module's business.

mod signals;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::activation::Activation;
use crate::config::Config;
use crate::delivery::api::ApiState;
use crate::delivery::milter::{self, MilterListen, MilterState};
use crate::delivery::spool::Spool;
use crate::delivery::{prefetch, SharedEngine};
use crate::http::{load_tls, ListenerConfig};
use crate::metrics::Metrics;
use crate::proxy::cache::Cache;
use crate::proxy::fetch::Fetcher;
use crate::proxy::{self, ProxyState};
use crate::sign::Signer;
use crate::startup::{self, StartupError};

/// Runs `mailveil serve` with the config at `config_path` (or the defaults) until a
/// shutdown signal, on a runtime of its own.
///
/// # Errors
/// Whatever stops it from starting, and an image endpoint that stops on its own.
pub fn run(config_path: Option<&Path>) -> Result<(), StartupError> {
    let config = startup::load_config(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartupError::Runtime)?;
    runtime.block_on(serve(config, config_path.map(Path::to_owned)))
}

/// Serves until SIGTERM or SIGINT. `config_path` is read again on SIGHUP.
///
/// # Errors
/// As [`run`].
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> Result<(), StartupError> {
    let state = Arc::new(build_proxy_state(&config)?);
    let listener_config = image_listener_config(&config)?;
    // Sockets systemd opened for us (mailveil.socket) replace the matching binds.
    let mut activation = Activation::from_env()?;
    let images = tcp_listener(
        &mut activation,
        config.listen,
        "server.listen",
        "image endpoint",
    )
    .await?;
    let stop = CancellationToken::new();
    let fronts = Fronts::start(&config, &state, &mut activation, &stop).await?;
    activation.check_all_claimed()?;
    signals::spawn_eviction(state.cache.clone(), config.cache_evict_interval);
    signals::spawn_reload(config_path, state.clone(), fronts.engine.clone());
    signals::cancel_on_shutdown_signal(stop.clone());
    announce_ready(&config, listener_config.tls.is_some());
    proxy::run(
        images,
        state,
        listener_config,
        stop.clone().cancelled_owned(),
    )
    .await
    .map_err(StartupError::Serve)?;
    stop.cancel();
    fronts.drain(config.server.shutdown_grace).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopped");
    Ok(())
}

/// Cache, fetcher, signer, content policy and metrics: what the image endpoint and the
/// prefetch workers share.
fn build_proxy_state(config: &Config) -> Result<ProxyState, StartupError> {
    Ok(ProxyState::new(
        startup::load_signer(config)?,
        Cache::open(config.cache.clone())?,
        Fetcher::new(config.fetch.clone()),
        config.images.clone(),
        Arc::new(Metrics::new()),
    )
    .with_on_miss(config.on_miss))
}

fn image_listener_config(config: &Config) -> Result<ListenerConfig, StartupError> {
    let tls = match &config.server.tls {
        Some((cert, key)) => Some(load_tls(cert, key)?),
        None => None,
    };
    Ok(ListenerConfig {
        max_connections: config.server.max_connections,
        header_timeout: config.server.header_timeout,
        shutdown_grace: config.server.shutdown_grace,
        tls,
    })
}

/// Ready only once every listener is open: systemd then starts what depends on us.
fn announce_ready(config: &Config, tls: bool) {
    tracing::info!(
        listen = %config.listen,
        public_url = %config.public_url,
        tls,
        "mailveil serving"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// The TCP listener for the config key `key`: the socket systemd passed for `addr` if there
/// is one, else a fresh bind. `what` names the listener in the log.
async fn tcp_listener(
    activation: &mut Activation,
    addr: SocketAddr,
    key: &'static str,
    what: &str,
) -> Result<TcpListener, StartupError> {
    if let Some(inherited) = activation
        .take_tcp(addr)
        .map_err(startup::listen_error(key, addr))?
    {
        tracing::info!(listen = %addr, "{what} using the socket passed by systemd");
        return TcpListener::from_std(inherited).map_err(startup::listen_error(key, addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(startup::listen_error(key, addr))
}

/// The milter's listener: the socket systemd passed, else a fresh bind (so a bad
/// `milter.listen` stops `serve` at start-up).
fn milter_listener(
    activation: &mut Activation,
    listen: &MilterListen,
) -> Result<milter::Listener, StartupError> {
    let error = |error| StartupError::Listen {
        key: "milter.listen",
        addr: listen.to_string(),
        error,
    };
    let inherited = match listen {
        MilterListen::Inet(addr) => activation
            .take_tcp(*addr)
            .map_err(error)?
            .map(milter::Listener::inherited_tcp),
        MilterListen::Unix(path, _) => activation
            .take_unix(path)
            .map_err(error)?
            .map(|l| milter::Listener::inherited_unix(l, path)),
    };
    match inherited {
        Some(listener) => {
            tracing::info!(listen = %listen, "milter using the socket passed by systemd");
            listener.map_err(error)
        }
        None => milter::Listener::bind(listen).map_err(error),
    }
}

/// The tasks that run beside the image endpoint and stop after it.
struct Fronts {
    /// The engine the API and the milter share (and SIGHUP swaps); `None` when neither runs.
    engine: Option<Arc<SharedEngine>>,
    /// Stops the prefetch workers, last, so jobs queued while the fronts drain are kept.
    stop_prefetch: CancellationToken,
    prefetch: JoinHandle<()>,
    api: Option<JoinHandle<std::io::Result<()>>>,
    milter: Option<JoinHandle<std::io::Result<()>>>,
}

impl Fronts {
    /// Starts the prefetch workers, and the rewrite API and the milter when configured.
    /// The API and the milter stop when `stop` is cancelled.
    async fn start(
        config: &Config,
        state: &Arc<ProxyState>,
        activation: &mut Activation,
        stop: &CancellationToken,
    ) -> Result<Self, StartupError> {
        let spool = Spool::open(&config.spool_dir)?;
        let stop_prefetch = CancellationToken::new();
        let prefetch = tokio::spawn(prefetch::run(
            spool,
            state.clone(),
            config.prefetch.clone(),
            stop_prefetch.clone(),
        ));
        let tokens = config.api.load_tokens()?;
        let engine = if tokens.is_empty() && config.milter.listen.is_none() {
            None
        } else {
            let signer = Signer::clone(&state.signer());
            let engine = startup::engine_with_signer(config, signer)?;
            Some(Arc::new(SharedEngine::new(engine)))
        };
        let api = match &engine {
            Some(engine) if !tokens.is_empty() => {
                Some(start_api(config, engine.clone(), &tokens, activation, stop).await?)
            }
            _ => {
                tracing::info!("rewrite API off (no api.tokens)");
                None
            }
        };
        let milter = match (&engine, &config.milter.listen) {
            (Some(engine), Some(listen)) => {
                let listener = milter_listener(activation, listen)?;
                let state = MilterState::new(
                    engine.clone(),
                    Spool::open_for_writing(&config.spool_dir)?,
                    state.metrics.clone(),
                    &config.milter,
                );
                let max = config.server.max_connections;
                Some(tokio::spawn(milter::run(
                    listener,
                    Arc::new(state),
                    max,
                    stop.clone(),
                )))
            }
            _ => None,
        };
        Ok(Self {
            engine,
            stop_prefetch,
            prefetch,
            api,
            milter,
        })
    }

    /// Waits for the API, then the milter (its sessions finish their message; the MTA's own
    /// timeouts bound the wait, and so does `grace`), then stops the prefetch workers.
    async fn drain(self, grace: Duration) {
        if let Some(api) = self.api {
            let _ = api.await;
        }
        if let Some(milter) = self.milter {
            match tokio::time::timeout(grace, milter).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "milter stopped with an error"),
                Err(_) => tracing::warn!("milter sessions still open at the shutdown deadline"),
                _ => {}
            }
        }
        self.stop_prefetch.cancel();
        let _ = self.prefetch.await;
    }
}

/// Starts the rewrite API on its own listener.
async fn start_api(
    config: &Config,
    engine: Arc<SharedEngine>,
    tokens: &[String],
    activation: &mut Activation,
    stop: &CancellationToken,
) -> Result<JoinHandle<std::io::Result<()>>, StartupError> {
    let state = Arc::new(ApiState::new(
        engine,
        Spool::open_for_writing(&config.spool_dir)?,
        tokens,
        config.api.max_body,
    ));
    let listener = tcp_listener(activation, config.api.listen, "api.listen", "rewrite API").await?;
    tracing::info!(listen = %config.api.listen, "rewrite API serving");
    let listener_config = ListenerConfig {
        max_connections: config.api.max_connections,
        header_timeout: config.server.header_timeout,
        shutdown_grace: config.server.shutdown_grace,
        tls: None,
    };
    Ok(tokio::spawn(crate::http::serve(
        listener,
        listener_config,
        stop.clone().cancelled_owned(),
        move |req| crate::delivery::api::handle(state.clone(), req),
    )))
}
