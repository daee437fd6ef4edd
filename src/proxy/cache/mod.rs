//! The image cache: a memory LRU over a content-addressed disk store, with
//! integrity checks, eviction and request coalescing.
//!
//! Images are fetched once (at mail delivery) and then served from here for
//! months, so the disk store is the source of truth and the memory tier only
//! speeds up the hot set. This module does no network I/O: callers hand it a
//! fetch closure (`get_or_fetch`) or a finished body (`put`).
//!
//! This file owns the public API ([`Cache`], its config, entry and error types)
//! and request coalescing: one fetch per URL however many callers ask at once.
//! It leaves the rest to its sub-modules:
//!
//! * `memory`: the memory tier, an LRU bounded by body bytes;
//! * `record`: URL keys, entries and the index records that describe them;
//! * `disk`: the layout under `CacheConfig::dir`, storing and verified reading;
//! * `evict`: age and disk-budget eviction.
//!
//! Nothing read back from disk is trusted: records are validated and bodies
//! are re-hashed before they are returned.

mod disk;
mod evict;
mod memory;
mod record;
#[cfg(test)]
mod testing;

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{OnceCell, RwLock};
use tracing::{debug, warn};

use self::disk::{
    is_refused_blocking, mark_refused_blocking, read_entry, store_blocking, sweep_refused_blocking,
    Layout,
};
pub use self::evict::EvictStats;
use self::evict::{evict_blocking, Policy};
use self::memory::MemoryTier;
use self::record::{key_hex, make_entry, unstored_entry, url_key, Key};

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Root directory of the store (created with mode 0700).
    pub dir: PathBuf,
    /// Disk budget for stored bodies; eviction removes oldest entries first beyond it.
    pub max_disk_bytes: u64,
    /// Memory tier budget (sum of body sizes held in the LRU).
    pub memory_bytes: u64,
    /// Entries older than this are evicted — but see `evict`: age is the normal expiry, the disk budget the hard limit.
    pub max_age: Duration,
}

/// A cached resource.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The image bytes, exactly as fetched.
    pub body: Bytes,
    /// Validated `type/subtype` (no parameters).
    pub content_type: String,
    /// BLAKE3 of `body`: the object's name on disk and the HTTP ETag.
    pub hash: blake3::Hash,
    /// When the body was fetched; truncated to whole seconds (as stored on disk), except
    /// for an entry that could not be stored.
    pub fetched_at: SystemTime,
}

/// What a fetch produces for `get_or_fetch` to store.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// The image bytes.
    pub body: Bytes,
    /// Must be a short printable ASCII `type/subtype`; strip parameters first.
    pub content_type: String,
    /// The fetcher judged the image a tracking pixel (kept in the index record).
    pub is_pixel: bool,
}

/// Where a lookup was answered from (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Memory tier hit.
    Memory,
    /// Read (and verified) from disk, now promoted to memory.
    Disk,
    /// This call ran the fetch.
    Fetched,
    /// Another concurrent call ran the fetch; this one shared its outcome.
    Coalesced,
}

/// Errors from cache operations.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem operation failed.
    #[error("i/o error on {}", path.display())]
    Io {
        /// The file or directory involved (names are hashes, never URLs).
        path: PathBuf,
        /// The underlying error.
        #[source]
        error: io::Error,
    },
    /// The content type is not a short printable ASCII `type/subtype`.
    #[error("invalid content type")]
    InvalidContentType,
    /// An index record could not be encoded.
    #[error("could not encode index record")]
    Encode(#[source] serde_json::Error),
    /// A blocking disk task panicked or was cancelled.
    #[error("blocking disk task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The two-tier cache. Cheap to clone (Arc inside), Send + Sync.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Shared state behind every `Cache` clone.
struct Inner {
    config: CacheConfig,
    layout: Layout,
    memory: Mutex<MemoryTier>,
    /// In-flight fetches by URL key. Values are `Arc<Slot<E>>`, erased
    /// because each `get_or_fetch` call picks its own error type.
    inflight: Mutex<HashMap<Key, Arc<dyn Any + Send + Sync>>>,
    /// Puts take it shared, eviction exclusive: otherwise eviction could
    /// delete an object that a put has just decided not to rewrite.
    /// Owned guards are moved into blocking tasks so a cancelled caller
    /// cannot release it while its disk work still runs.
    disk_lock: Arc<RwLock<()>>,
}

/// Shared outcome of one coalesced fetch.
type Slot<E> = OnceCell<Result<Arc<Entry>, Arc<E>>>;

impl Inner {
    fn memory(&self) -> MutexGuard<'_, MemoryTier> {
        // A panic elsewhere leaves the LRU structurally valid, so keep serving.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn inflight(&self) -> MutexGuard<'_, HashMap<Key, Arc<dyn Any + Send + Sync>>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Cache {
    /// Opens (creating, mode 0700) the cache directory; removes stale temp files left by a crash.
    ///
    /// Does blocking filesystem work: call it at startup, or from `spawn_blocking`.
    ///
    /// # Errors
    /// [`CacheError::Io`] when the directories cannot be created, made private or swept.
    pub fn open(config: CacheConfig) -> Result<Self, CacheError> {
        let layout = Layout::new(config.dir.clone());
        let removed = layout.prepare()?;
        debug!(removed_temp_files = removed, "cache opened");
        let memory = MemoryTier::new(config.memory_bytes);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                layout,
                memory: Mutex::new(memory),
                inflight: Mutex::new(HashMap::new()),
                disk_lock: Arc::new(RwLock::new(())),
            }),
        })
    }

    /// Looks `url` up: memory, then disk (read in spawn_blocking, verified against its hash — a corrupt or truncated object is deleted, with its index record, and treated as a miss, never returned).
    pub async fn get(&self, url: &str) -> Option<Arc<Entry>> {
        self.lookup(url).await.map(|(entry, _)| entry)
    }

    /// Stores a body for `url`: object written once per distinct body (content-addressed by BLAKE3: identical bodies behind a million URLs are one file), index record keyed by BLAKE3(url). Each file is replaced whole (`crate::fsutil`), without fsync: reads verify what they find.
    ///
    /// # Errors
    /// [`CacheError::InvalidContentType`] for an unsafe content type; otherwise a failure
    /// to write the files.
    pub async fn put(&self, url: &str, new: NewEntry) -> Result<Arc<Entry>, CacheError> {
        self.put_at(url, new, SystemTime::now()).await
    }

    /// Like `put`, with an explicit fetch time (tests of age-based eviction backdate with it).
    async fn put_at(
        &self,
        url: &str,
        new: NewEntry,
        fetched_at: SystemTime,
    ) -> Result<Arc<Entry>, CacheError> {
        let key = url_key(url);
        let (entry, record) = make_entry(new, fetched_at)?;
        let entry = Arc::new(entry);
        let body = entry.body.clone();
        let layout = self.inner.layout.clone();
        let guard = Arc::clone(&self.inner.disk_lock).read_owned().await;
        run_blocking(move || {
            let _guard = guard;
            store_blocking(&layout, &key, &record, &body)
        })
        .await?;
        // Newly delivered mail is what readers open next, so warm memory too.
        self.inner.memory().insert(key, Arc::clone(&entry));
        debug!(hash = %entry.hash, size = entry.body.len(), "entry stored");
        Ok(entry)
    }

    /// Returns the cached entry, or runs `fetch` once and stores its result. Concurrent calls for the same url are coalesced: exactly one runs `fetch`, the others wait for and share its outcome (errors too; the error type is shared through Arc).
    ///
    /// If storing the fetched body fails, the entry is still returned (and
    /// served uncached); the failure is logged. If the running call is
    /// cancelled, one of the waiters runs its own `fetch` instead.
    ///
    /// # Errors
    /// The error of the `fetch` that ran, shared by every caller that waited for it.
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        url: &str,
        fetch: F,
    ) -> Result<(Arc<Entry>, Source), Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<NewEntry, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(hit) = self.lookup(url).await {
            return Ok(hit);
        }
        let key = url_key(url);
        let Some(slot) = self.join_inflight::<E>(key) else {
            // Only when two callers use different error types for one URL.
            debug!("in-flight fetch has another error type; fetching uncoalesced");
            let entry = self.fetch_and_store(url, fetch).await?;
            return Ok((entry, Source::Fetched));
        };
        let mut ran = None;
        let outcome = slot
            .get_or_init(|| async {
                let _guard = InflightGuard::new(&self.inner, key, &slot);
                let (outcome, source) = self.lookup_or_fetch(url, fetch).await;
                ran = Some(source);
                outcome
            })
            .await
            .clone();
        // `ran` is set only in the call whose initializer ran; everyone else shared it.
        outcome.map(|entry| (entry, ran.unwrap_or(Source::Coalesced)))
    }

    /// Removes entries older than max_age, then oldest-first until the stored bodies fit max_disk_bytes; deletes objects no index record references. Returns what it did.
    ///
    /// Also drops records that are invalid or whose object is missing. Scans
    /// the whole store and blocks puts while it runs: schedule it, e.g. hourly.
    ///
    /// # Errors
    /// A failure to scan the store or to delete a file; what was deleted before stays deleted.
    pub async fn evict(&self) -> Result<EvictStats, CacheError> {
        let policy = Policy::new(&self.inner.config, SystemTime::now());
        let layout = self.inner.layout.clone();
        let guard = Arc::clone(&self.inner.disk_lock).write_owned().await;
        let outcome = run_blocking(move || {
            let _guard = guard;
            evict_blocking(&layout, &policy)
        })
        .await?;
        let stats = outcome.stats;
        self.inner.memory().forget(&outcome);
        let layout = self.inner.layout.clone();
        let max_age = self.inner.config.max_age;
        let marks = run_blocking(move || sweep_refused_blocking(&layout, max_age)).await?;
        debug!(refused_marks_removed = marks, "refused marks swept");
        debug!(?stats, "eviction done");
        Ok(stats)
    }

    /// Marks `url` as refused at delivery: its delivery-time fetch was tried and failed, so a
    /// reader's open must not fetch it (the sender would learn the open time). Kept as
    /// long as entries are (`max_age`).
    ///
    /// # Errors
    /// A failure to write the mark.
    pub async fn mark_refused(&self, url: &str) -> Result<(), CacheError> {
        let key = url_key(url);
        let layout = self.inner.layout.clone();
        run_blocking(move || mark_refused_blocking(&layout, &key)).await
    }

    /// Whether `url` was marked refused ([`Cache::mark_refused`]).
    pub async fn is_refused(&self, url: &str) -> bool {
        let key = url_key(url);
        let layout = self.inner.layout.clone();
        run_blocking(move || Ok(is_refused_blocking(&layout, &key)))
            .await
            .unwrap_or(false)
    }

    /// Memory, then disk; a disk hit is promoted into memory.
    async fn lookup(&self, url: &str) -> Option<(Arc<Entry>, Source)> {
        let key = url_key(url);
        if let Some(entry) = self.inner.memory().get(&key) {
            return Some((entry, Source::Memory));
        }
        let entry = Arc::new(self.read_disk(key).await?);
        self.inner.memory().insert(key, Arc::clone(&entry));
        Some((entry, Source::Disk))
    }

    /// Reads and verifies one entry from disk; any failure is a miss.
    async fn read_disk(&self, key: Key) -> Option<Entry> {
        let layout = self.inner.layout.clone();
        match run_blocking(move || read_entry(&layout, &key)).await {
            Ok(entry) => entry,
            Err(error) => {
                warn!(%error, key = %key_hex(&key), "cache read failed");
                None
            }
        }
    }

    /// Registers interest in the in-flight fetch for `key`, creating it if
    /// none runs. None if the running one has a different error type.
    fn join_inflight<E: Send + Sync + 'static>(&self, key: Key) -> Option<Arc<Slot<E>>> {
        let mut map = self.inner.inflight();
        if let Some(existing) = map.get(&key) {
            return Arc::clone(existing).downcast::<Slot<E>>().ok();
        }
        let slot = Arc::new(Slot::<E>::new());
        let erased: Arc<dyn Any + Send + Sync> = slot.clone();
        map.insert(key, erased);
        Some(slot)
    }

    /// The body of a coalesced fetch. Re-checks the cache first: a previous
    /// fetch may have finished between our miss and our joining.
    async fn lookup_or_fetch<F, Fut, E>(
        &self,
        url: &str,
        fetch: F,
    ) -> (Result<Arc<Entry>, Arc<E>>, Source)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<NewEntry, E>>,
    {
        if let Some((entry, source)) = self.lookup(url).await {
            return (Ok(entry), source);
        }
        (self.fetch_and_store(url, fetch).await, Source::Fetched)
    }

    /// Runs `fetch` and stores its result.
    async fn fetch_and_store<F, Fut, E>(&self, url: &str, fetch: F) -> Result<Arc<Entry>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<NewEntry, E>>,
    {
        let new = fetch().await.map_err(Arc::new)?;
        Ok(self.store_fetched(url, new).await)
    }

    /// Stores a fetched entry; if that fails, still returns it so the reader
    /// gets the image (a later request will fetch again).
    async fn store_fetched(&self, url: &str, new: NewEntry) -> Arc<Entry> {
        match self.put(url, new.clone()).await {
            Ok(entry) => entry,
            Err(error) => {
                warn!(%error, "could not store fetched entry; serving it uncached");
                Arc::new(unstored_entry(new))
            }
        }
    }
}

/// Removes the in-flight map entry when the fetch that fills the slot ends,
/// whether it succeeds, fails or is cancelled, so a later call retries.
struct InflightGuard<'a> {
    inner: &'a Inner,
    key: Key,
    slot: Arc<dyn Any + Send + Sync>,
}

impl<'a> InflightGuard<'a> {
    fn new<E: Send + Sync + 'static>(inner: &'a Inner, key: Key, slot: &Arc<Slot<E>>) -> Self {
        let slot: Arc<dyn Any + Send + Sync> = slot.clone();
        Self { inner, key, slot }
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.inner.inflight();
        // Only remove our own slot, not a newer fetch's.
        if map
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            map.remove(&self.key);
        }
    }
}

/// Runs blocking disk work off the async workers.
async fn run_blocking<T, F>(work: F) -> Result<T, CacheError>
where
    F: FnOnce() -> Result<T, CacheError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(CacheError::Task)?
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::proxy::cache::disk::read_record;
    use crate::proxy::cache::record::FALLBACK_CONTENT_TYPE;
    use crate::proxy::cache::testing::{has_record, image, layout, open, put};

    #[tokio::test]
    async fn refused_marks_survive_a_restart_and_age_out() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = "https://tracker.example/p.gif?u=alice";
        let cache = open(tmp.path());
        assert!(!cache.is_refused(url).await);
        cache.mark_refused(url).await.expect("mark");
        assert!(cache.is_refused(url).await);
        assert!(!cache.is_refused("https://tracker.example/other").await);
        let marks = crate::proxy::cache::testing::files_under(&layout(&cache).refused());
        assert_eq!(marks.len(), 1);
        let name = marks[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.contains("tracker"), "the URL is not on disk in clear");
        let cache = open(tmp.path());
        assert!(cache.is_refused(url).await, "kept across a restart");
        let none = Duration::ZERO;
        let removed = sweep_refused_blocking(layout(&cache), none).expect("sweep");
        assert_eq!(removed, 1);
        assert!(!cache.is_refused(url).await);
    }

    #[tokio::test]
    async fn put_then_get_from_memory_then_disk_after_restart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = "https://tracker.example/p.gif?u=alice";
        let cache = open(tmp.path());
        let stored = put(&cache, url, b"png bytes").await;
        assert_eq!(stored.hash, blake3::hash(b"png bytes"));
        let (hit, source) = cache.lookup(url).await.expect("hit");
        assert_eq!(source, Source::Memory);
        assert_eq!(hit.body, stored.body);
        drop(cache);

        let reopened = open(tmp.path());
        let (hit, source) = reopened.lookup(url).await.expect("hit after restart");
        assert_eq!(source, Source::Disk);
        assert_eq!(hit.body.as_ref(), b"png bytes");
        assert_eq!(hit.content_type, "image/png");
        assert_eq!(hit.fetched_at, stored.fetched_at);
        let record = read_record(layout(&reopened), &url_key(url))
            .expect("read")
            .expect("record");
        assert!(!record.is_pixel);
        assert_eq!(
            reopened.lookup(url).await.map(|h| h.1),
            Some(Source::Memory)
        );
        assert!(reopened.get("https://other.example/").await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_fetches_are_coalesced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (cache, calls) = (cache.clone(), Arc::clone(&calls));
            let url = if i % 2 == 0 {
                "https://a.example/1"
            } else {
                "https://b.example/2"
            };
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(url, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, io::Error>(image(url.as_bytes()))
                    })
                    .await
            }));
        }
        let mut fetched = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            let (entry, source) = task.await.expect("join").expect("fetch ok");
            let url = if i % 2 == 0 {
                "https://a.example/1"
            } else {
                "https://b.example/2"
            };
            assert_eq!(entry.hash, blake3::hash(url.as_bytes()));
            fetched += usize::from(source == Source::Fetched);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(fetched, 2);
        assert!(cache.inner.inflight().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_callers_one_fetch() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (cache, calls) = (cache.clone(), Arc::clone(&calls));
                tokio::spawn(async move {
                    cache
                        .get_or_fetch("https://one.example/", || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Ok::<_, io::Error>(image(b"shared"))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            let (entry, _) = task.await.expect("join").expect("ok");
            assert_eq!(entry.hash, blake3::hash(b"shared"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn errors_are_shared_then_retried() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (cache, calls) = (cache.clone(), Arc::clone(&calls));
                tokio::spawn(async move {
                    cache
                        .get_or_fetch("https://down.example/", || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err::<NewEntry, _>(io::Error::other("upstream 503"))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            let error = task.await.expect("join").expect_err("shared error");
            assert_eq!(error.to_string(), "upstream 503");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (_, source) = cache
            .get_or_fetch("https://down.example/", || async {
                Ok::<_, io::Error>(image(b"back up"))
            })
            .await
            .expect("retry succeeds");
        assert_eq!(source, Source::Fetched);
        let (_, source) = cache
            .get_or_fetch("https://down.example/", || async {
                Err::<NewEntry, io::Error>(io::Error::other("not called"))
            })
            .await
            .expect("cached");
        assert_eq!(source, Source::Memory);
    }

    #[tokio::test]
    async fn cancelled_fetcher_hands_over_to_a_waiter() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch("https://slow.example/", || async {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok::<_, io::Error>(image(b"never"))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch("https://slow.example/", || async {
                        Ok::<_, io::Error>(image(b"waiter"))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let (entry, source) = waiter.await.expect("join").expect("ok");
        assert_eq!(entry.body.as_ref(), b"waiter");
        assert_eq!(source, Source::Fetched);
        assert!(cache.inner.inflight().is_empty());
    }

    #[tokio::test]
    async fn fetched_entry_is_served_even_if_storing_fails() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let (entry, source) = cache
            .get_or_fetch("https://weird.example/", || async {
                Ok::<_, io::Error>(NewEntry {
                    content_type: "bogus".to_owned(),
                    ..image(b"img")
                })
            })
            .await
            .expect("served");
        assert_eq!(source, Source::Fetched);
        assert_eq!(entry.content_type, FALLBACK_CONTENT_TYPE);
        assert!(!has_record(&cache, "https://weird.example/"));
    }

    #[test]
    fn cache_is_send_sync_and_errors_read_well() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Cache>();
        let error = CacheError::Io {
            path: PathBuf::from("/c/objects/ab"),
            error: io::Error::other("boom"),
        };
        assert_eq!(error.to_string(), "i/o error on /c/objects/ab");
    }

    /// Not an assertion on speed: prints the cost of the hot path.
    #[tokio::test]
    async fn measure_memory_hit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let url = "https://newsletter.example.com/images/2024/header-banner.png?utm_source=mail&id=1234567";
        put(&cache, url, &[7; 4096]).await;
        let rounds: u32 = 200_000;
        let start = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(cache.get(std::hint::black_box(url)).await);
        }
        let per_op = start.elapsed().as_nanos() / u128::from(rounds);
        println!("memory hit: {per_op} ns/op over {rounds} gets");

        let cold = open(tmp.path());
        let start = Instant::now();
        let disk_rounds: u32 = 200;
        for i in 0..disk_rounds {
            cold.inner.memory().remove(&url_key(url));
            std::hint::black_box(cold.get(url).await);
            std::hint::black_box(i);
        }
        let per_op = start.elapsed().as_micros() / u128::from(disk_rounds);
        println!("disk hit (4 KiB, spawn_blocking + verify): {per_op} us/op");
    }
}
