//! Prefetch workers: drain the [`Spool`] into the cache at delivery time, so that a reader
//! opening a message contacts nobody, and the sender learns nothing from the open.
//!
//! A scanner polls the spool; each job's URLs are fetched through the same cached,
//! coalesced path as readers' requests ([`ProxyState::load`]), bounded by a global and a
//! per-host limit. Transient failures (timeouts, resets, 5xx, 429) are retried with
//! exponential backoff up to a limit; permanent ones are counted and dropped. A job file is
//! removed only once every URL is cached or has failed for good, so `kill -9` at any moment
//! loses nothing: the next start finds the job again, and URLs already cached are skipped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::delivery::spool::{JobId, QueuedUrl, Spool};
use crate::proxy::ProxyState;
use crate::sign::FetchTarget;
use crate::urltag::UrlTag;

/// Limits of the prefetch workers.
#[derive(Debug, Clone)]
pub struct PrefetchConfig {
    /// Upstream fetches at once, across all hosts.
    pub concurrency: usize,
    /// Upstream fetches at once to one host.
    pub per_host: usize,
    /// Attempts per URL before a transient failure counts as permanent.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub retry_base: Duration,
    /// How often the spool is scanned for new jobs.
    pub poll_interval: Duration,
}

/// How one URL ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlOutcome {
    /// In the cache (fetched now, or already there).
    Cached,
    /// Failed permanently or ran out of attempts.
    Failed,
}

/// The shared limits: a global semaphore and one per host.
struct Limits {
    global: Semaphore,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Limits {
    fn host(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Idle hosts are dropped so the map does not grow with every sender ever seen.
        if hosts.len() > 4096 {
            hosts.retain(|_, s| Arc::strong_count(s) > 1);
        }
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone()
    }
}

/// Drains `spool` until `stop` is cancelled. Jobs in progress at that moment stay in the
/// spool and are picked up again on the next start.
pub async fn run(
    spool: Spool,
    state: Arc<ProxyState>,
    config: PrefetchConfig,
    stop: CancellationToken,
) {
    let limits = Arc::new(Limits {
        global: Semaphore::new(config.concurrency.max(1)),
        per_host: config.per_host.max(1),
        hosts: Mutex::new(HashMap::new()),
    });
    let active: Arc<Mutex<HashSet<JobId>>> = Arc::default();
    let mut jobs = JoinSet::new();
    let mut tick = tokio::time::interval(config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
            Some(_) = jobs.join_next(), if !jobs.is_empty() => continue,
        }
        let pending = match spool.list() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the prefetch spool");
                continue;
            }
        };
        state.metrics.spool_jobs(pending.len());
        for id in pending {
            if !lock(&active).insert(id.clone()) {
                continue;
            }
            let job = JobRun {
                spool: spool.clone(),
                state: state.clone(),
                limits: limits.clone(),
                config: config.clone(),
                active: active.clone(),
                id,
            };
            jobs.spawn(job.run());
        }
    }
    jobs.abort_all();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One job being drained.
struct JobRun {
    spool: Spool,
    state: Arc<ProxyState>,
    limits: Arc<Limits>,
    config: PrefetchConfig,
    active: Arc<Mutex<HashSet<JobId>>>,
    id: JobId,
}

impl JobRun {
    async fn run(self) {
        let job = match self.spool.load(&self.id) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(job = self.id.as_str(), error = %e, "unreadable prefetch job set aside");
                let _ = self.spool.quarantine(&self.id);
                lock(&self.active).remove(&self.id);
                return;
            }
        };
        let (targets, invalid) = job.targets();
        for _ in 0..invalid {
            self.state.metrics.prefetch_url(false);
        }
        let mut urls = JoinSet::new();
        for url in targets {
            urls.spawn(prefetch_url(
                self.state.clone(),
                self.limits.clone(),
                self.config.clone(),
                url,
            ));
        }
        let mut failed = invalid;
        while let Some(outcome) = urls.join_next().await {
            if !matches!(outcome, Ok(UrlOutcome::Cached)) {
                failed += 1;
            }
        }
        match self.spool.complete(&self.id) {
            Ok(()) => {
                self.state.metrics.prefetch_job_done();
                tracing::debug!(job = self.id.as_str(), failed, "prefetch job done");
            }
            Err(e) => {
                tracing::warn!(job = self.id.as_str(), error = %e, "cannot remove a finished job")
            }
        }
        lock(&self.active).remove(&self.id);
    }
}

/// Fetches one URL into the cache, retrying transient failures.
async fn prefetch_url(
    state: Arc<ProxyState>,
    limits: Arc<Limits>,
    config: PrefetchConfig,
    target: QueuedUrl,
) -> UrlOutcome {
    // No separate "already cached?" check: `load` answers from the cache when it can, so
    // URLs cached before a restart, or shared with an earlier message, are not refetched.
    let host = target.url().host_str().unwrap_or("").to_owned();
    let tag = UrlTag::of(target.url().as_str());
    let mut delay = config.retry_base;
    for attempt in 1..=config.max_attempts.max(1) {
        let result = {
            let host_slot = limits.host(&host);
            let _host = host_slot.acquire().await;
            let _global = limits.global.acquire().await;
            state.load(&target).await
        };
        if result.is_err() && attempt == 1 {
            // Tried at delivery and failed: from now on a reader's open gets the
            // placeholder, so a sender who refuses the proxy on purpose still learns
            // nothing. A later retry that succeeds fills the cache, which readers hit first.
            if let Err(e) = state.cache.mark_refused(target.url().as_str()).await {
                tracing::warn!(%host, url = %tag, error = %e, "cannot mark a failed prefetch");
            }
        }
        match result {
            Ok(_) => {
                state.metrics.prefetch_url(true);
                return UrlOutcome::Cached;
            }
            Err(e) if e.is_transient() && attempt < config.max_attempts => {
                tracing::debug!(%host, url = %tag, attempt, error = %e, "prefetch will retry");
                state.metrics.prefetch_retry();
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            Err(e) => {
                tracing::debug!(%host, url = %tag, attempt, error = %e, "prefetch failed");
                break;
            }
        }
    }
    state.metrics.prefetch_url(false);
    UrlOutcome::Failed
}
