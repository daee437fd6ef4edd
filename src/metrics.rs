//! Prometheus metrics of the daemon, in the text exposition format served at `/metrics`.
//!
//! One [`Metrics`] value is shared by the server, the cache path and the fetcher glue; its
//! counters are lock-free. Encoding is left to `prometheus-client`.

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

/// How a request to the image endpoint ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the memory tier.
    HitMemory,
    /// Served from the disk tier.
    HitDisk,
    /// Fetched upstream for this request.
    Fetched,
    /// Waited for another request's upstream fetch.
    Coalesced,
    /// Served from the cache (tier not distinguished).
    Hit,
    /// Nothing cached; the neutral placeholder was served (`prefetch.on_miss`).
    Placeholder,
    /// `If-None-Match` matched: 304.
    NotModified,
    /// Signature missing or wrong: 403 without touching the network.
    BadSignature,
    /// Destination refused by the address policy.
    Forbidden,
    /// Content refused by the type and image checks.
    Refused,
    /// Upstream failed (status, connection, too large, redirects).
    UpstreamError,
    /// Upstream too slow.
    Timeout,
    /// Anything else (internal).
    Internal,
}

/// Result of one upstream fetch.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum FetchResult {
    /// Body fetched and accepted.
    Ok,
    /// Refused before connecting (address policy, scheme, userinfo).
    Forbidden,
    /// Fetched but refused by the content checks.
    Refused,
    /// Timed out.
    Timeout,
    /// Any other upstream failure.
    Error,
}

/// What the milter did with one message.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum MilterOutcome {
    /// HTML parts rewritten; the MTA replaced the body.
    Rewritten,
    /// Nothing to rewrite; only the header was added.
    Unchanged,
    /// Over `milter.max_message_bytes`; passed unchanged.
    TooLarge,
    /// Could not be rewritten; passed unchanged or tempfailed per `milter.on_error`.
    Failed,
    /// Its parts could not be found; shown as plain text (nothing in it loads).
    Neutralised,
}

impl MilterOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MilterOutcome::Rewritten => "rewritten",
            MilterOutcome::Unchanged => "unchanged",
            MilterOutcome::TooLarge => "too_large",
            MilterOutcome::Failed => "failed",
            MilterOutcome::Neutralised => "neutralised",
        }
    }
}

impl EncodeLabelValue for MilterOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MilterLabels {
    outcome: MilterOutcome,
}

impl Outcome {
    /// The label value, snake_case as Prometheus convention has it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::HitMemory => "hit_memory",
            Outcome::HitDisk => "hit_disk",
            Outcome::Fetched => "fetched",
            Outcome::Coalesced => "coalesced",
            Outcome::Hit => "hit",
            Outcome::Placeholder => "placeholder",
            Outcome::NotModified => "not_modified",
            Outcome::BadSignature => "bad_signature",
            Outcome::Forbidden => "forbidden",
            Outcome::Refused => "refused",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
            Outcome::Internal => "internal",
        }
    }
}

impl FetchResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchResult::Ok => "ok",
            FetchResult::Forbidden => "forbidden",
            FetchResult::Refused => "refused",
            FetchResult::Timeout => "timeout",
            FetchResult::Error => "error",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for FetchResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: FetchResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

/// A labelled family registered so that its `# HELP` and `# TYPE` lines are listed even
/// before its first sample, as `/metrics` always has. prometheus-client leaves out families
/// with no labels created yet; this wrapper answers "not empty" and otherwise defers.
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Registers `metric` as `name` and hands it back (metrics are shared handles).
fn metric<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Registers a new labelled family as `name`, listed even before its first sample.
fn family<S, M>(registry: &mut Registry, name: &str, help: &str) -> Family<S, M>
where
    Family<S, M>: Default + Clone,
    Listed<Family<S, M>>: Metric,
{
    let family = Family::default();
    registry.register(name, help, Listed(family.clone()));
    family
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    cache_hits: Family<TierLabels, Counter>,
    cache_misses: Counter,
    fetches: Family<ResultLabels, Counter>,
    bytes_served: Counter,
    latency: Histogram,
    open_time_fetches: Counter,
    placeholders: Counter,
    tracking_pixels: Counter,
    spool_jobs: Gauge,
    prefetch_jobs: Counter,
    prefetch_urls: Family<ResultLabels, Counter>,
    prefetch_retries: Counter,
    milter_messages: Family<MilterLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, in the order `/metrics` lists them.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("mailveil");
        Self {
            requests: family(&mut r, "requests", "Image requests by outcome"),
            cache_hits: family(&mut r, "cache_hits", "Cache hits by tier"),
            cache_misses: metric(&mut r, "cache_misses", "Cache misses", Counter::default()),
            fetches: family(&mut r, "upstream_fetches", "Upstream fetches by result"),
            bytes_served: metric(&mut r, "response_bytes", "Body bytes served", Counter::default()),
            latency: metric(
                &mut r,
                "request_duration_seconds",
                "Time to answer image requests",
                // 100 µs to ~26 s.
                Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            ),
            open_time_fetches: metric(
                &mut r,
                "open_time_fetches",
                "Upstream fetches caused by a reader opening a message (prefetch missed)",
                Counter::default(),
            ),
            placeholders: metric(
                &mut r,
                "placeholders",
                "Misses answered with the neutral placeholder",
                Counter::default(),
            ),
            tracking_pixels: metric(
                &mut r,
                "tracking_pixels",
                "Fetched images that decoded to a tracking pixel (at most 2x2, or fully transparent)",
                Counter::default(),
            ),
            spool_jobs: metric(
                &mut r,
                "spool_jobs",
                "Prefetch jobs waiting in the spool at the last scan",
                Gauge::default(),
            ),
            prefetch_jobs: metric(&mut r, "prefetch_jobs", "Prefetch jobs finished", Counter::default()),
            prefetch_urls: family(&mut r, "prefetch_urls", "Prefetched URLs by result"),
            prefetch_retries: metric(
                &mut r,
                "prefetch_retries",
                "Prefetch retries after transient failures",
                Counter::default(),
            ),
            milter_messages: family(&mut r, "milter_messages", "Messages seen by the milter, by outcome"),
            registry: r,
        }
    }

    /// Counts a message the milter finished.
    pub fn milter_message(&self, outcome: MilterOutcome) {
        self.milter_messages
            .get_or_create(&MilterLabels { outcome })
            .inc();
    }

    /// Counts a finished image request and its duration.
    pub fn request(&self, outcome: Outcome, seconds: f64) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.latency.observe(seconds);
    }

    /// Counts a cache hit in `tier` (`memory` or `disk`).
    pub fn cache_hit(&self, tier: &'static str) {
        self.cache_hits.get_or_create(&TierLabels { tier }).inc();
    }

    /// Counts a cache miss.
    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    /// Counts an upstream fetch.
    pub fn fetch(&self, result: FetchResult) {
        self.fetches.get_or_create(&ResultLabels { result }).inc();
    }

    /// Adds served body bytes.
    pub fn bytes(&self, n: usize) {
        self.bytes_served.inc_by(n as u64);
    }

    /// Counts an upstream fetch caused by a reader's request.
    pub fn open_time_fetch(&self) {
        self.open_time_fetches.inc();
    }

    /// Counts a placeholder served on a miss.
    pub fn placeholder(&self) {
        self.placeholders.inc();
    }

    /// Counts a fetched image found to be a tracking pixel.
    pub fn tracking_pixel(&self) {
        self.tracking_pixels.inc();
    }

    /// Sets the number of jobs seen in the spool.
    pub fn spool_jobs(&self, n: usize) {
        self.spool_jobs.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a finished prefetch job.
    pub fn prefetch_job_done(&self) {
        self.prefetch_jobs.inc();
    }

    /// Counts a prefetched URL, cached (`true`) or failed for good.
    pub fn prefetch_url(&self, cached: bool) {
        let result = if cached {
            FetchResult::Ok
        } else {
            FetchResult::Error
        };
        self.prefetch_urls
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a prefetch retry.
    pub fn prefetch_retry(&self) {
        self.prefetch_retries.inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::new();
        m.request(Outcome::HitMemory, 0.001);
        m.cache_hit("memory");
        m.cache_miss();
        m.fetch(FetchResult::Ok);
        m.bytes(10);
        let text = m.encode();
        for name in [
            "mailveil_requests_total{outcome=\"hit_memory\"} 1",
            "mailveil_cache_hits_total{tier=\"memory\"} 1",
            "mailveil_cache_misses_total 1",
            "mailveil_upstream_fetches_total{result=\"ok\"} 1",
            "mailveil_response_bytes_total 10",
            "mailveil_request_duration_seconds_count 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }

    #[test]
    fn families_are_listed_before_their_first_sample() {
        let text = Metrics::new().encode();
        for name in [
            "requests",
            "cache_hits",
            "upstream_fetches",
            "prefetch_urls",
            "milter_messages",
        ] {
            let type_line = format!("# TYPE mailveil_{name} counter\n");
            assert!(text.contains(&type_line), "{name} not listed in\n{text}");
            assert!(!text.contains(&format!("mailveil_{name}_total")), "{text}");
        }
    }
}
