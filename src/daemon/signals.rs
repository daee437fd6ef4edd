//! What `serve` does on its own clock and on signals: cache eviction at an interval,
//! reload on SIGHUP, shutdown on SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::delivery::SharedEngine;
use crate::proxy::cache::Cache;
use crate::proxy::ProxyState;
use crate::startup;

/// Evicts expired and over-budget cache entries every `interval`.
pub(super) fn spawn_eviction(cache: Cache, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            match cache.evict().await {
                Ok(stats) => tracing::debug!(?stats, "cache eviction"),
                Err(e) => tracing::warn!(error = %e, "cache eviction failed"),
            }
        }
    });
}

/// On SIGHUP, re-reads the config file and the keys (and the tracker lists the API and the
/// milter use) and swaps them in; connections stay open. Listen addresses and limits need a
/// restart. A bad new config is reported and the running one kept.
pub(super) fn spawn_reload(
    config_path: Option<PathBuf>,
    state: Arc<ProxyState>,
    engine: Option<Arc<SharedEngine>>,
) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reload(config_path.as_deref(), &state, engine.as_deref()) {
                Ok(()) => tracing::info!("configuration and keys reloaded"),
                Err(e) => tracing::warn!("reload failed, keeping the running configuration: {e}"),
            }
        }
    });
}

/// Loads everything first, then swaps: a failure leaves the running parts untouched.
fn reload(
    config_path: Option<&std::path::Path>,
    state: &ProxyState,
    engine: Option<&SharedEngine>,
) -> Result<(), startup::StartupError> {
    let config = startup::load_config(config_path)?;
    let signer = startup::load_signer(&config)?;
    let new_engine = engine
        .map(|_| startup::engine_with_signer(&config, signer.clone()))
        .transpose()?;
    state.replace_signer(signer);
    if let (Some(engine), Some(new_engine)) = (engine, new_engine) {
        engine.replace(new_engine);
    }
    Ok(())
}

/// Cancels `stop` on SIGTERM or SIGINT. The handlers are in place when this returns, so a
/// signal sent right after (say, once READY was announced) is not lost to the default
/// action.
pub(super) fn cancel_on_shutdown_signal(stop: CancellationToken) {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    tokio::spawn(async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                // Without signal handlers, Ctrl-C still ends the process the default way.
                tracing::warn!("cannot listen for SIGTERM and SIGINT; they stop mailveil at once");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutdown requested");
        stop.cancel();
    });
}
