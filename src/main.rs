//! The `mailveil` command line: argument parsing, logging set-up, exit codes.
//!
//! Everything of substance lives in the library; this file wires config to engine and
//! standard streams to the filter, and decides exit codes. `filter` is special: whatever
//! fails (config, key, parsing), it still writes a message to stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use mailveil::config::{Config, MilterListen, OnError, RawConfig};
use mailveil::daemon::activation::Activation;
use mailveil::delivery::api::ApiState;
use mailveil::delivery::milter::{self, MilterState};
use mailveil::delivery::prefetch;
use mailveil::delivery::spool::Spool;
use mailveil::metrics::Metrics;
use mailveil::proxy::cache::Cache;
use mailveil::proxy::fetch::Fetcher;
use mailveil::proxy::{self as server, ListenerConfig, ProxyState};
use mailveil::rewrite::html::Engine;
use mailveil::rewrite::message::SharedEngine;
use mailveil::rewrite::trackers::TrackerRules;
use mailveil::sign::{Key, Signer};
use tokio_util::sync::CancellationToken;

/// sysexits.h: temporary failure, the MTA should retry.
const EX_TEMPFAIL: u8 = 75;
/// sysexits.h: bad configuration.
const EX_CONFIG: u8 = 78;

/// Ends email read-tracking.
///
/// mailveil rewrites every remote reference in a message's HTML to a signed URL on its own
/// proxy, fetches those resources anonymously at delivery time and serves them to the
/// reader, so the sender never learns when, where or whether the mail was read. Known
/// tracking pixels are removed and reported in an `X-Mailveil` header.
#[derive(Debug, Parser)]
#[command(name = "mailveil", version, max_term_width = 100)]
struct Cli {
    /// Config file (TOML). Without it and without $MAILVEIL_CONFIG, built-in defaults apply:
    /// listen on 127.0.0.1:8700, state and cache under your data and cache directories.
    #[arg(
        short,
        long,
        global = true,
        env = "MAILVEIL_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    /// More log output on stderr (-v debug, -vv trace). $MAILVEIL_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: the image endpoint that answers signed URLs from the cache, the
    /// prefetch workers, and (when configured) the rewrite API and the milter.
    ///
    /// With no config it listens on 127.0.0.1:8700. Stops gracefully on SIGTERM or SIGINT;
    /// SIGHUP reloads the config and keys; tells systemd it is ready when run with
    /// Type=notify.
    Serve,
    /// Rewrite one RFC 5322 message from stdin to stdout (for procmail, maildrop, Sieve, fetchmail).
    ///
    /// Never loses a message: if anything goes wrong the original bytes are written
    /// unchanged, the reason goes to stderr, and the exit status is 0 (or 75 with
    /// `filter.on_error = "tempfail"`).
    Filter,
    /// Rewrite an HTML document from FILE (or stdin) to stdout.
    Rewrite {
        /// HTML file to read; stdin when absent or "-".
        file: Option<PathBuf>,
    },
    /// Print the proxy URL for URL.
    Sign {
        /// An http or https URL.
        url: String,
    },
    /// Print a new random signing key (64 hex digits) for `keys.key_file`.
    Keygen,
    /// Validate the config, print the effective configuration, exit non-zero on error.
    CheckConfig,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) for `man -l -`.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match &cli.command {
        Command::Serve => run_serve(cli.config.as_deref()),
        Command::Filter => return run_filter(cli.config.as_deref()),
        Command::Rewrite { file } => run_rewrite(cli.config.as_deref(), file.as_deref()),
        Command::Sign { url } => run_sign(cli.config.as_deref(), url),
        Command::Keygen => run_keygen(),
        Command::CheckConfig => run_check_config(cli.config.as_deref()),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "mailveil", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => run_man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailveil: {e:#}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILVEIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Loads the config named on the command line (or by $MAILVEIL_CONFIG), else the defaults.
fn load_raw(path: Option<&Path>) -> Result<RawConfig> {
    match path {
        Some(path) => Ok(RawConfig::from_file(path)?),
        None => Ok(RawConfig::default()),
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(Config::from_raw(&load_raw(path)?)?)
}

/// Builds the rewrite engine: keys (creating the signing key on first use) and trackers.
fn build_engine(config: &Config) -> Result<Engine> {
    let signer = load_signer(config)?;
    Ok(Engine::new(
        signer,
        load_trackers(config)?,
        config.trackers.mode,
    ))
}

fn load_signer(config: &Config) -> Result<Signer> {
    let key = Key::load_or_create(&config.keys.key_file)?;
    let previous = config
        .keys
        .previous_key_files
        .iter()
        .map(|p| Key::load(p))
        .collect::<Result<Vec<_>, _>>()
        .context("keys.previous_key_files")?;
    Ok(Signer::new(&config.public_url, key, previous))
}

fn run_serve(config_path: Option<&Path>) -> Result<()> {
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, config_path))
}

async fn serve(config: Config, config_path: Option<&Path>) -> Result<()> {
    let state = Arc::new(
        ProxyState::new(
            load_signer(&config)?,
            Cache::open(config.cache.clone()).context("cache.dir")?,
            Fetcher::new(config.fetch.clone()),
            config.images.clone(),
            Arc::new(Metrics::new()),
        )
        .with_on_miss(config.on_miss),
    );
    let spool = Spool::open(&config.spool_dir).context("prefetch.spool_dir")?;
    let tls = match &config.server.tls {
        Some((cert, key)) => Some(server::load_tls(cert, key)?),
        None => None,
    };
    // Sockets systemd opened for us (mailveil.socket) replace the matching binds.
    let mut activation = Activation::from_env()?;
    let listener = tcp_listener(
        &mut activation,
        config.listen,
        "server.listen",
        "image endpoint",
    )
    .await?;
    spawn_eviction(state.cache.clone());
    let stop_prefetch = CancellationToken::new();
    let prefetch = tokio::spawn(prefetch::run(
        spool,
        state.clone(),
        config.prefetch.clone(),
        stop_prefetch.clone(),
    ));
    let tls_on = tls.is_some();
    let server_config = ListenerConfig {
        max_connections: config.server.max_connections,
        header_timeout: config.server.header_timeout,
        shutdown_grace: config.server.shutdown_grace,
        tls,
    };
    let stop = CancellationToken::new();
    // The rewrite API and the milter sign URLs with one engine, which SIGHUP swaps.
    let tokens = config.api.load_tokens()?;
    let engine = if tokens.is_empty() && config.milter.listen.is_none() {
        None
    } else {
        Some(Arc::new(SharedEngine::new(build_engine(&config)?)))
    };
    let api = match &engine {
        Some(engine) if !tokens.is_empty() => Some(
            spawn_api(
                &config,
                engine.clone(),
                &tokens,
                &mut activation,
                stop.clone(),
            )
            .await?,
        ),
        _ => {
            tracing::info!("rewrite API off (no api.tokens)");
            None
        }
    };
    let milter = match (&engine, &config.milter.listen) {
        (Some(engine), Some(listen)) => Some(spawn_milter(
            &config,
            listen,
            engine.clone(),
            state.metrics.clone(),
            &mut activation,
            stop.clone(),
        )?),
        _ => None,
    };
    activation.check_all_claimed()?;
    spawn_reload(config_path.map(Path::to_owned), state.clone(), engine);
    // Ready only once every listener is open: systemd then starts what depends on us.
    tracing::info!(
        listen = %config.listen,
        public_url = %config.public_url,
        tls = tls_on,
        "mailveil serving"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.cancel();
    });
    server::run(
        listener,
        state,
        server_config,
        stop.clone().cancelled_owned(),
    )
    .await?;
    stop.cancel();
    if let Some(api) = api {
        let _ = api.await;
    }
    if let Some(milter) = milter {
        // Sessions in flight finish their message; the MTA's own timeouts bound the wait.
        match tokio::time::timeout(config.server.shutdown_grace, milter).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "milter stopped with an error"),
            Err(_) => tracing::warn!("milter sessions still open at the shutdown deadline"),
            _ => {}
        }
    }
    stop_prefetch.cancel();
    let _ = prefetch.await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopped");
    Ok(())
}

/// The TCP listener for the config key `key`: the socket systemd passed for `addr` if there
/// is one, else a fresh bind. `what` names the listener in the log.
async fn tcp_listener(
    activation: &mut Activation,
    addr: std::net::SocketAddr,
    key: &str,
    what: &str,
) -> Result<tokio::net::TcpListener> {
    let inherited = activation
        .take_tcp(addr)
        .with_context(|| format!("{key}: inherited socket"))?;
    if let Some(inherited) = inherited {
        tracing::info!(listen = %addr, "{what} using the socket passed by systemd");
        return tokio::net::TcpListener::from_std(inherited)
            .with_context(|| format!("{key}: inherited socket"));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key} = {:?}: cannot listen", addr.to_string()))
}

/// Starts the rewrite API on its own listener.
async fn spawn_api(
    config: &Config,
    engine: Arc<SharedEngine>,
    tokens: &[String],
    activation: &mut Activation,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let state = Arc::new(ApiState::new(
        engine,
        Spool::open_for_writing(&config.spool_dir).context("prefetch.spool_dir")?,
        tokens,
        config.api.max_body,
    ));
    let listener = tcp_listener(activation, config.api.listen, "api.listen", "rewrite API").await?;
    tracing::info!(listen = %config.api.listen, "rewrite API serving");
    let api_config = ListenerConfig {
        max_connections: 256,
        header_timeout: config.server.header_timeout,
        shutdown_grace: config.server.shutdown_grace,
        tls: None,
    };
    Ok(tokio::spawn(server::serve_with(
        listener,
        api_config,
        stop.cancelled_owned(),
        move |req| mailveil::delivery::api::handle(state.clone(), req),
    )))
}

/// Starts the milter listener. The socket is opened before this returns, so a bad
/// `milter.listen` stops `serve` at start-up.
fn spawn_milter(
    config: &Config,
    listen: &MilterListen,
    engine: Arc<SharedEngine>,
    metrics: Arc<Metrics>,
    activation: &mut Activation,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let state = Arc::new(MilterState::new(
        engine,
        Spool::open_for_writing(&config.spool_dir).context("prefetch.spool_dir")?,
        metrics,
        &config.milter,
    ));
    let listener = match milter::Listener::inherited(listen, activation)
        .context("milter.listen: inherited socket")?
    {
        Some(inherited) => {
            tracing::info!(listen = %listen, "milter using the socket passed by systemd");
            inherited
        }
        None => milter::Listener::bind(listen)
            .with_context(|| format!("milter.listen = {:?}: cannot listen", listen.to_string()))?,
    };
    Ok(tokio::spawn(milter::run(
        listener,
        state,
        config.server.max_connections,
        stop,
    )))
}

/// On SIGHUP, re-reads the config file and the keys (and the tracker lists the API and the
/// milter use) and swaps them in; connections stay open. Listen addresses and limits need a
/// restart. A bad new config is reported and the running one kept.
fn spawn_reload(
    config_path: Option<PathBuf>,
    state: Arc<ProxyState>,
    engine: Option<Arc<SharedEngine>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let reloaded = load_config(config_path.as_deref()).and_then(|config| {
                let signer = load_signer(&config)?;
                let new_engine = engine.as_ref().map(|_| build_engine(&config)).transpose()?;
                Ok((signer, new_engine))
            });
            match reloaded {
                Ok((signer, new_engine)) => {
                    state.replace_signer(signer);
                    if let (Some(engine), Some(new_engine)) = (&engine, new_engine) {
                        engine.replace(new_engine);
                    }
                    tracing::info!("configuration and keys reloaded");
                }
                Err(e) => tracing::warn!("reload failed, keeping the running configuration: {e:#}"),
            }
        }
    });
}

/// Evicts expired and over-budget cache entries hourly.
fn spawn_eviction(cache: Cache) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match cache.evict().await {
                Ok(stats) => tracing::debug!(?stats, "cache eviction"),
                Err(e) => tracing::warn!(error = %e, "cache eviction failed"),
            }
        }
    });
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C still ends the process the default way.
            std::future::pending::<()>().await;
        }
    }
    tracing::info!("shutdown requested");
}

fn load_trackers(config: &Config) -> Result<TrackerRules> {
    let mut rules = if config.trackers.builtin {
        TrackerRules::builtin()
    } else {
        TrackerRules::empty()
    };
    for (i, path) in config.trackers.lists.iter().enumerate() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("trackers.lists[{i}] = {:?}", path.display().to_string()))?;
        let name = path.display().to_string();
        let added = rules
            .add_adblock_list(&name, &text)
            .with_context(|| format!("trackers.lists[{i}] = {name:?}"))?;
        tracing::debug!(list = %name, rules = added, "tracker list loaded");
    }
    Ok(rules)
}

fn run_rewrite(config: Option<&Path>, file: Option<&Path>) -> Result<()> {
    let engine = build_engine(&load_config(config)?)?;
    let bytes = match file {
        Some(path) if path != Path::new("-") => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        _ => read_all_stdin()?,
    };
    let html = String::from_utf8_lossy(&bytes);
    let rewritten = engine.rewrite(&html)?;
    tracing::info!(summary = %rewritten.report.header_value(), "rewritten");
    let mut out = std::io::stdout().lock();
    out.write_all(rewritten.html.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn read_all_stdin() -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .context("cannot read stdin")?;
    Ok(bytes)
}

fn run_sign(config: Option<&Path>, url: &str) -> Result<()> {
    let config = load_config(config)?;
    let target = url::Url::parse(url).with_context(|| format!("not a URL: {url:?}"))?;
    anyhow::ensure!(
        matches!(target.scheme(), "http" | "https"),
        "only http and https URLs can be proxied: {url:?}"
    );
    let key = Key::load_or_create(&config.keys.key_file)?;
    let signer = Signer::new(&config.public_url, key, Vec::new());
    println!("{}", signer.sign(&target));
    Ok(())
}

fn run_man() -> Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    // One section per subcommand, so `man` shows their options too.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        writeln!(
            out,
            ".SH \"MAILVEIL {}\"",
            sub.get_name().to_ascii_uppercase()
        )?;
        let page = clap_mangen::Man::new(sub.clone());
        page.render_description_section(&mut out)?;
        page.render_options_section(&mut out)?;
    }
    out.flush()?;
    Ok(())
}

fn run_keygen() -> Result<()> {
    let key = Key::generate().map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    println!("{}", key.to_hex());
    Ok(())
}

fn run_check_config(path: Option<&Path>) -> Result<()> {
    let raw = load_raw(path)?;
    let config = Config::from_raw(&raw)?;
    load_trackers(&config)?;
    config.api.load_tokens()?;
    for (i, p) in config.keys.previous_key_files.iter().enumerate() {
        Key::load(p).with_context(|| format!("keys.previous_key_files[{i}]"))?;
    }
    print!("{}", raw.to_toml());
    Ok(())
}

/// `mailveil filter`: the one command that must write a message whatever happens.
fn run_filter(config_path: Option<&Path>) -> ExitCode {
    let config = load_config(config_path);
    let limit = config
        .as_ref()
        .map(|c| c.filter.max_message_bytes)
        .unwrap_or(RawConfig::default().filter.max_message_bytes);
    let on_error = config
        .as_ref()
        .map(|c| c.filter.on_error)
        .unwrap_or(OnError::Pass);
    let input = match read_limited_stdin(limit) {
        Ok(input) => input,
        Err(e) => {
            // We may have consumed part of the message and cannot give it back.
            eprintln!("mailveil filter: cannot read the message: {e:#}");
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    let outcome = match (&input, config) {
        (Input::TooLarge(_), _) => {
            // A size policy, not a failure: retrying would not make the message smaller.
            eprintln!(
                "mailveil filter: message larger than {limit} bytes, passed through unchanged"
            );
            return write_or_tempfail(|out| input.write_original(out));
        }
        (Input::Whole(_), Err(e)) => Err(e.context("configuration")),
        (Input::Whole(raw), Ok(config)) => filter_with(&config, raw),
    };
    match outcome {
        Ok(message) => write_or_tempfail(|out| out.write_all(&message)),
        Err(e) => {
            eprintln!("mailveil filter: passing the message through unchanged: {e:#}");
            let status = write_or_tempfail(|out| input.write_original(out));
            match on_error {
                OnError::Pass => status,
                OnError::Tempfail => ExitCode::from(EX_TEMPFAIL),
            }
        }
    }
}

fn filter_with(config: &Config, raw: &[u8]) -> Result<Vec<u8>> {
    let engine = build_engine(config)?;
    let filtered = mailveil::rewrite::message::filter_message(&engine, raw)?;
    queue_prefetch(config, &filtered.report);
    tracing::info!(
        html_parts = filtered.html_parts,
        summary = %filtered.report.header_value(),
        "message rewritten"
    );
    Ok(filtered.message)
}

/// Records the message's proxied URLs for the daemon to fetch now, at delivery. A failure
/// here does not hold the message back: its images are then fetched when first opened.
fn queue_prefetch(config: &Config, report: &mailveil::rewrite::html::Report) {
    let targets: Vec<String> = report.targets.iter().cloned().collect();
    let queued = Spool::open_for_writing(&config.spool_dir).and_then(|s| s.enqueue(&targets));
    if let Err(e) = queued {
        eprintln!("mailveil filter: prefetch not queued ({e}); images will be fetched when opened");
    }
}

/// Writes to stdout; a failed write means the MTA has a truncated message, so ask it to retry.
fn write_or_tempfail(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailveil filter: cannot write the message: {e}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

/// The message as read from stdin.
enum Input {
    /// All of it, within the size limit.
    Whole(Vec<u8>),
    /// The first `limit + 1` bytes; the rest is still on stdin and is streamed through.
    TooLarge(Vec<u8>),
}

impl Input {
    fn write_original(&self, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Input::Whole(bytes) => out.write_all(bytes),
            Input::TooLarge(head) => {
                out.write_all(head)?;
                std::io::copy(&mut std::io::stdin().lock(), out).map(|_| ())
            }
        }
    }
}

fn read_limited_stdin(limit: u64) -> std::io::Result<Input> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        Ok(Input::TooLarge(bytes))
    } else {
        Ok(Input::Whole(bytes))
    }
}
