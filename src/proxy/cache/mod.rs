//! The image cache: a memory LRU over a content-addressed disk store, with
//! its index, integrity checks, eviction and request coalescing.
//!
//! Images are fetched once (at mail delivery) and then served from here for
//! months, so the disk store is the source of truth and the memory tier only
//! speeds up the hot set. This module does no network I/O: callers hand it a
//! fetch closure (`get_or_fetch`) or a finished body (`put`).
//!
//! Disk layout under `CacheConfig::dir` (dirs 0700, files 0600):
//!
//! * `objects/ab/<64-hex>`: a body, named by its BLAKE3 hash. Identical bodies
//!   behind many URLs are stored once.
//! * `index/ab/<64-hex>`: a small JSON record named by BLAKE3 of the URL, so
//!   the disk never holds a tracking URL in clear.
//!
//! Every file is written atomically (temp file in the same directory,
//! rename), and nothing read back is trusted: records are validated and bodies
//! are re-hashed before they are returned.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, RwLock};
use tracing::{debug, warn};

/// Subdirectory holding bodies.
const OBJECTS_DIR: &str = "objects";
/// Subdirectory holding index records.
const INDEX_DIR: &str = "index";
/// Prefix of in-progress writes; anything with it is crash debris.
const TMP_PREFIX: &str = ".tmp-";
/// Real records are ~200 bytes; refusing bigger files bounds what a
/// tampered index can make us read.
const MAX_RECORD_BYTES: u64 = 1024;
/// Longest content type accepted (it ends up in an HTTP header).
const MAX_CONTENT_TYPE_LEN: usize = 100;
/// Served when a fetched entry could not be stored and its type is unusable.
const FALLBACK_CONTENT_TYPE: &str = "application/octet-stream";

/// BLAKE3 of a URL: the index key, on disk and in memory.
type Key = [u8; 32];

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
    /// When the body was fetched, truncated to whole seconds (as stored on disk).
    pub fetched_at: SystemTime,
    /// Recorded by the fetcher: the image was a tracking pixel (≤2x2 or fully transparent).
    pub is_pixel: bool,
}

/// What a fetch produces for `get_or_fetch` to store.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// The image bytes.
    pub body: Bytes,
    /// Must be a short printable ASCII `type/subtype`; strip parameters first.
    pub content_type: String,
    /// The fetcher judged the image a tracking pixel.
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

/// What one `evict` run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictStats {
    /// Index records deleted (expired, over budget, dangling or invalid).
    pub records_removed: u64,
    /// Object files deleted because no remaining record referenced them.
    pub objects_removed: u64,
    /// Bytes of the deleted objects.
    pub bytes_freed: u64,
}

/// A snapshot of the cache's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Index records on disk.
    pub records: u64,
    /// Object files on disk.
    pub objects: u64,
    /// Sum of the object files' sizes.
    pub object_bytes: u64,
    /// Sum of body sizes held in the memory tier.
    pub memory_bytes: u64,
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
    pub fn open(config: CacheConfig) -> Result<Self, CacheError> {
        let layout = Layout {
            root: config.dir.clone(),
        };
        for dir in [layout.root.clone(), layout.objects(), layout.index()] {
            create_private_dir(&dir)?;
        }
        // An existing root may have looser permissions; the store is private.
        set_mode(&layout.root, 0o700)?;
        let removed = remove_temp_files(&layout.objects())? + remove_temp_files(&layout.index())?;
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

    /// Stores a body for `url`: object written once per distinct body (content-addressed by BLAKE3: identical bodies behind a million URLs are one file), index record keyed by BLAKE3(url). Writes are atomic (temp file in the same dir + rename; see `write_atomic` on fsync).
    pub async fn put(&self, url: &str, new: NewEntry) -> Result<Arc<Entry>, CacheError> {
        self.put_at(url, new, SystemTime::now()).await
    }

    /// Like `put`, with an explicit fetch time. For tools that import or
    /// migrate entries (and for tests of age-based eviction).
    pub async fn put_at(
        &self,
        url: &str,
        new: NewEntry,
        fetched_at: SystemTime,
    ) -> Result<Arc<Entry>, CacheError> {
        let key = url_key(url);
        let entry = Arc::new(make_entry(new, fetched_at)?);
        let record = Record::of(&entry);
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
        outcome.map(|entry| (entry, ran.unwrap_or(Source::Coalesced)))
    }

    /// True if `url` has an index record (no body read) — used by the prefetch queue.
    pub async fn contains(&self, url: &str) -> bool {
        let path = self.inner.layout.record_path(&url_key(url));
        tokio::fs::try_exists(path).await.unwrap_or(false)
    }

    /// Removes entries older than max_age, then oldest-first until the stored bodies fit max_disk_bytes; deletes objects no index record references. Returns what it did.
    ///
    /// Also drops records that are invalid or whose object is missing. Scans
    /// the whole store and blocks puts while it runs: schedule it, e.g. hourly.
    pub async fn evict(&self) -> Result<EvictStats, CacheError> {
        let policy = Policy {
            now: unix_secs(SystemTime::now()),
            max_age: self.inner.config.max_age.as_secs(),
            max_bytes: self.inner.config.max_disk_bytes,
        };
        let layout = self.inner.layout.clone();
        let guard = Arc::clone(&self.inner.disk_lock).write_owned().await;
        let outcome = run_blocking(move || {
            let _guard = guard;
            evict_blocking(&layout, &policy)
        })
        .await?;
        let stats = outcome.stats;
        self.inner.memory().forget(&outcome);
        debug!(?stats, "eviction done");
        Ok(stats)
    }

    /// Current disk usage (bytes of objects) and entry counts.
    ///
    /// Scans the store (in a blocking task); on a scan error the disk figures are 0.
    pub async fn stats(&self) -> CacheStats {
        let layout = self.inner.layout.clone();
        let disk = run_blocking(move || disk_stats(&layout)).await;
        let mut stats = disk.unwrap_or_else(|error| {
            warn!(%error, "could not scan cache");
            CacheStats::default()
        });
        stats.memory_bytes = self.inner.memory().bytes;
        stats
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

// ---------------------------------------------------------------------------
// Memory tier

/// LRU of entries bounded by the sum of body sizes, not by entry count:
/// images range from 43-byte pixels to megabyte banners.
struct MemoryTier {
    lru: LruCache<Key, Arc<Entry>>,
    bytes: u64,
    budget: u64,
}

impl MemoryTier {
    fn new(budget: u64) -> Self {
        Self {
            lru: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    fn get(&mut self, key: &Key) -> Option<Arc<Entry>> {
        self.lru.get(key).cloned()
    }

    /// Inserts, then drops least recently used entries until within budget.
    /// A body larger than the whole budget is not kept.
    fn insert(&mut self, key: Key, entry: Arc<Entry>) {
        self.remove(&key);
        let size = body_size(&entry);
        if size > self.budget {
            return;
        }
        self.bytes += size;
        self.lru.put(key, entry);
        while self.bytes > self.budget {
            let Some((_, old)) = self.lru.pop_lru() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(body_size(&old));
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.lru.pop(key) {
            self.bytes = self.bytes.saturating_sub(body_size(&old));
        }
    }

    /// Drops what eviction removed from disk, so memory never serves an
    /// entry the store no longer has. Also catches entries whose record was
    /// removed outside eviction but whose object eviction then deleted.
    fn forget(&mut self, evicted: &Evicted) {
        for key in &evicted.records {
            self.remove(key);
        }
        if evicted.objects.is_empty() {
            return;
        }
        let stale: Vec<Key> = self
            .lru
            .iter()
            .filter(|(_, entry)| evicted.objects.contains(&entry.hash))
            .map(|(key, _)| *key)
            .collect();
        for key in &stale {
            self.remove(key);
        }
    }
}

fn body_size(entry: &Entry) -> u64 {
    entry.body.len() as u64
}

// ---------------------------------------------------------------------------
// Entries and records

fn url_key(url: &str) -> Key {
    *blake3::hash(url.as_bytes()).as_bytes()
}

/// Hex of a URL key, for file names and logs (never the URL itself).
fn key_hex(key: &Key) -> String {
    blake3::Hash::from(*key).to_hex().to_string()
}

/// Builds an entry from a fetch, rejecting content types that are unsafe to
/// echo into a header. Time is truncated to what the record can hold.
fn make_entry(new: NewEntry, fetched_at: SystemTime) -> Result<Entry, CacheError> {
    if !valid_content_type(&new.content_type) {
        return Err(CacheError::InvalidContentType);
    }
    Ok(Entry {
        hash: blake3::hash(&new.body),
        body: new.body,
        content_type: new.content_type,
        fetched_at: UNIX_EPOCH + Duration::from_secs(unix_secs(fetched_at)),
        is_pixel: new.is_pixel,
    })
}

/// An entry that could not be stored; still safe to serve.
fn unstored_entry(new: NewEntry) -> Entry {
    let content_type = if valid_content_type(&new.content_type) {
        new.content_type
    } else {
        FALLBACK_CONTENT_TYPE.to_owned()
    };
    Entry {
        hash: blake3::hash(&new.body),
        body: new.body,
        content_type,
        fetched_at: SystemTime::now(),
        is_pixel: new.is_pixel,
    }
}

/// `type/subtype` made of RFC 6838 restricted-name characters, short.
fn valid_content_type(content_type: &str) -> bool {
    if content_type.len() > MAX_CONTENT_TYPE_LEN {
        return false;
    }
    let mut parts = content_type.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(kind), Some(subtype), None) => is_mime_token(kind) && is_mime_token(subtype),
        _ => false,
    }
}

fn is_mime_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// On-disk form of an index record.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFile {
    object: String,
    content_type: String,
    size: u64,
    fetched_at: u64,
    is_pixel: bool,
}

/// A validated index record.
#[derive(Debug, Clone)]
struct Record {
    object: blake3::Hash,
    content_type: String,
    size: u64,
    fetched_at: u64,
    is_pixel: bool,
}

impl Record {
    fn of(entry: &Entry) -> Self {
        Self {
            object: entry.hash,
            content_type: entry.content_type.clone(),
            size: body_size(entry),
            fetched_at: unix_secs(entry.fetched_at),
            is_pixel: entry.is_pixel,
        }
    }

    fn encode(&self) -> Result<Vec<u8>, CacheError> {
        let file = RecordFile {
            object: self.object.to_hex().to_string(),
            content_type: self.content_type.clone(),
            size: self.size,
            fetched_at: self.fetched_at,
            is_pixel: self.is_pixel,
        };
        serde_json::to_vec(&file).map_err(CacheError::Encode)
    }

    /// Parses and validates; None for anything malformed.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let file: RecordFile = serde_json::from_slice(bytes).ok()?;
        let object = parse_hex_name(&file.object)?;
        if !valid_content_type(&file.content_type) {
            return None;
        }
        Some(Self {
            object: blake3::Hash::from(object),
            content_type: file.content_type,
            size: file.size,
            fetched_at: file.fetched_at,
            is_pixel: file.is_pixel,
        })
    }
}

/// Parses a canonical (lowercase, 64-digit) hex name.
fn parse_hex_name(name: &str) -> Option<[u8; 32]> {
    let hash = blake3::Hash::from_hex(name).ok()?;
    (hash.to_hex().as_str() == name).then(|| *hash.as_bytes())
}

// ---------------------------------------------------------------------------
// Disk layout and file primitives

/// Paths inside the store.
#[derive(Debug, Clone)]
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn objects(&self) -> PathBuf {
        self.root.join(OBJECTS_DIR)
    }

    fn index(&self) -> PathBuf {
        self.root.join(INDEX_DIR)
    }

    fn object_path(&self, hash: &blake3::Hash) -> PathBuf {
        fan_out(&self.objects(), hash.as_bytes())
    }

    fn record_path(&self, key: &Key) -> PathBuf {
        fan_out(&self.index(), key)
    }
}

/// `base/ab/abcd…`: a two-hex-digit fan-out keeps directories small.
fn fan_out(base: &Path, name: &[u8; 32]) -> PathBuf {
    let [first, ..] = *name;
    let hex = blake3::Hash::from(*name).to_hex();
    base.join(format!("{first:02x}")).join(hex.as_str())
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |error| CacheError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn create_private_dir(path: &Path) -> Result<(), CacheError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_error(path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CacheError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(path))
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

/// Writes `data` to `target` so readers see either nothing or all of it: temp file in the
/// same directory (same filesystem), then rename.
///
/// No fsync: every read verifies what it finds (objects against their BLAKE3 name, records
/// against their object), so a write torn by a power cut is a miss and a refetch, never
/// bad data served. Skipping the two fsyncs per file is what lets prefetch drain at the
/// speed of the network rather than of the disk's flushes.
fn write_atomic(target: &Path, data: &[u8]) -> Result<(), CacheError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let tmp = dir.join(temp_name());
    let written =
        write_new(&tmp, data).and_then(|()| fs::rename(&tmp, target).map_err(io_error(target)));
    if written.is_err() {
        // Best effort; open() sweeps whatever remains.
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn write_new(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(data).map_err(io_error(path))
}

/// `.tmp-<16 hex>`, unique per process via a counter and across processes
/// via pid and clock; `create_new` guards against the unlikely clash.
fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.update(&nanos.to_le_bytes());
    let [a, b, c, d, e, f, g, h, ..] = *hasher.finalize().as_bytes();
    format!(
        "{TMP_PREFIX}{:016x}",
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    )
}

/// Reads at most `limit + 1` bytes, so an oversized file is detectable
/// without reading it all.
fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)?;
    Ok(data)
}

/// Removes a file, treating "already gone" as success (races with other
/// cleaners are harmless). Returns whether this call removed it.
fn remove_if_exists(path: &Path) -> Result<bool, CacheError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(CacheError::Io {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// Calls `visit(path, name)` for every file in the fan-out directories of `base`.
fn for_each_file(
    base: &Path,
    mut visit: impl FnMut(&Path, &str) -> Result<(), CacheError>,
) -> Result<(), CacheError> {
    for dir in fs::read_dir(base).map_err(io_error(base))? {
        let dir = dir.map_err(io_error(base))?;
        if !dir.file_type().map_err(io_error(base))?.is_dir() {
            continue;
        }
        let dir_path = dir.path();
        for file in fs::read_dir(&dir_path).map_err(io_error(&dir_path))? {
            let file = file.map_err(io_error(&dir_path))?;
            if let Some(name) = file.file_name().to_str() {
                visit(&file.path(), name)?;
            }
        }
    }
    Ok(())
}

/// Deletes crash debris (`.tmp-*`) under `base`; returns how many.
fn remove_temp_files(base: &Path) -> Result<u64, CacheError> {
    let mut removed = 0;
    for_each_file(base, |path, name| {
        if name.starts_with(TMP_PREFIX) && remove_if_exists(path)? {
            removed += 1;
        }
        Ok(())
    })?;
    Ok(removed)
}

// ---------------------------------------------------------------------------
// Blocking store and read

/// Writes the object (unless an intact-looking copy exists) then the record;
/// in that order, so a visible record always had its object written.
fn store_blocking(
    layout: &Layout,
    key: &Key,
    record: &Record,
    body: &[u8],
) -> Result<(), CacheError> {
    write_object_once(layout, &record.object, body)?;
    write_atomic(&layout.record_path(key), &record.encode()?)
}

/// Content addressing makes an existing object of the right size the same
/// bytes (a corrupt one is caught and deleted when read).
fn write_object_once(layout: &Layout, hash: &blake3::Hash, body: &[u8]) -> Result<(), CacheError> {
    let path = layout.object_path(hash);
    if fs::metadata(&path).is_ok_and(|m| m.len() == body.len() as u64) {
        debug!(%hash, "object already stored");
        return Ok(());
    }
    write_atomic(&path, body)
}

/// Reads and verifies the entry for `key`. Ok(None) on a miss, including
/// every kind of damage, which is cleaned up on the way.
fn read_entry(layout: &Layout, key: &Key) -> Result<Option<Entry>, CacheError> {
    let Some(record) = read_record(layout, key)? else {
        return Ok(None);
    };
    let Some(body) = read_object(layout, key, &record)? else {
        return Ok(None);
    };
    Ok(Some(Entry {
        body: Bytes::from(body),
        content_type: record.content_type,
        hash: record.object,
        fetched_at: UNIX_EPOCH + Duration::from_secs(record.fetched_at),
        is_pixel: record.is_pixel,
    }))
}

/// Reads the record for `key`; an invalid one (truncated, tampered,
/// oversized) is deleted and reported as absent.
fn read_record(layout: &Layout, key: &Key) -> Result<Option<Record>, CacheError> {
    let path = layout.record_path(key);
    let data = match read_limited(&path, MAX_RECORD_BYTES) {
        Ok(data) => data,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(CacheError::Io { path, error }),
    };
    let record = (data.len() as u64 <= MAX_RECORD_BYTES)
        .then(|| Record::decode(&data))
        .flatten();
    if record.is_none() {
        warn!(key = %key_hex(key), "invalid index record; removing it");
        remove_if_exists(&path)?;
    }
    Ok(record)
}

/// Reads the object a record names and checks it: a body whose hash differs
/// from its name is corrupt (deleted with the record); a size differing from
/// the record means the record is wrong (record deleted). A missing object
/// is a plain miss: eviction removes the dangling record.
fn read_object(layout: &Layout, key: &Key, record: &Record) -> Result<Option<Vec<u8>>, CacheError> {
    let path = layout.object_path(&record.object);
    let body = match read_limited(&path, record.size) {
        Ok(body) => body,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            debug!(hash = %record.object, "object missing");
            return Ok(None);
        }
        Err(error) => return Err(CacheError::Io { path, error }),
    };
    if blake3::hash(&body) != record.object {
        if body.len() as u64 > record.size {
            // We only read size + 1 bytes: the object is larger than the
            // record says, so we cannot tell which is wrong; drop the record.
            warn!(hash = %record.object, "object larger than its record; removing record");
        } else {
            warn!(hash = %record.object, "corrupt object; removing it and its record");
            remove_if_exists(&path)?;
        }
        remove_if_exists(&layout.record_path(key))?;
        return Ok(None);
    }
    if body.len() as u64 != record.size {
        warn!(hash = %record.object, "record size mismatch; removing record");
        remove_if_exists(&layout.record_path(key))?;
        return Ok(None);
    }
    Ok(Some(body))
}

// ---------------------------------------------------------------------------
// Eviction and stats

/// Eviction limits, in whole seconds and bytes.
struct Policy {
    now: u64,
    max_age: u64,
    max_bytes: u64,
}

/// One valid record found by a scan.
#[derive(Debug, Clone)]
struct Scanned {
    key: Key,
    object: blake3::Hash,
    fetched_at: u64,
}

/// The whole index: valid records, plus keys of files that failed validation.
struct IndexScan {
    records: Vec<Scanned>,
    invalid: Vec<Key>,
}

/// What one eviction removed, for the memory tier to forget.
struct Evicted {
    stats: EvictStats,
    records: Vec<Key>,
    objects: HashSet<blake3::Hash>,
}

fn evict_blocking(layout: &Layout, policy: &Policy) -> Result<Evicted, CacheError> {
    let scan = scan_index(layout)?;
    let objects = scan_objects(layout)?;
    let (victims, survivors) = select_victims(scan.records, &objects, policy);
    let mut stats = EvictStats::default();
    let mut removed: Vec<Key> = scan.invalid;
    removed.extend(victims.iter().map(|r| r.key));
    for key in &removed {
        if remove_if_exists(&layout.record_path(key))? {
            stats.records_removed += 1;
        }
    }
    let referenced: HashSet<blake3::Hash> = survivors.iter().map(|r| r.object).collect();
    let mut deleted = HashSet::new();
    for (hash, size) in objects.iter().filter(|(h, _)| !referenced.contains(*h)) {
        if remove_if_exists(&layout.object_path(hash))? {
            stats.objects_removed += 1;
            stats.bytes_freed += size;
            deleted.insert(*hash);
        }
    }
    Ok(Evicted {
        stats,
        records: removed,
        objects: deleted,
    })
}

/// Splits records into (victims, survivors): dangling and expired records
/// go first, then the oldest until the objects still referenced fit the
/// budget. An object shared by several records frees its bytes only when
/// the last of them goes.
fn select_victims(
    mut records: Vec<Scanned>,
    objects: &HashMap<blake3::Hash, u64>,
    policy: &Policy,
) -> (Vec<Scanned>, Vec<Scanned>) {
    records.sort_by_key(|r| r.fetched_at);
    let (mut victims, live): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| {
        !objects.contains_key(&r.object) || policy.now.saturating_sub(r.fetched_at) > policy.max_age
    });
    let mut refs: HashMap<blake3::Hash, usize> = HashMap::new();
    for record in &live {
        *refs.entry(record.object).or_default() += 1;
    }
    let size_of = |hash: &blake3::Hash| objects.get(hash).copied().unwrap_or(0);
    let mut used: u64 = refs.keys().map(size_of).sum();
    let mut live = live.into_iter();
    while used > policy.max_bytes {
        let Some(oldest) = live.next() else { break };
        if let Some(count) = refs.get_mut(&oldest.object) {
            *count -= 1;
            if *count == 0 {
                used = used.saturating_sub(size_of(&oldest.object));
            }
        }
        victims.push(oldest);
    }
    (victims, live.collect())
}

/// Reads every record file. Temp files are skipped; anything else that does
/// not validate is listed as invalid.
fn scan_index(layout: &Layout) -> Result<IndexScan, CacheError> {
    let mut scan = IndexScan {
        records: Vec::new(),
        invalid: Vec::new(),
    };
    for_each_file(&layout.index(), |path, name| {
        let Some(key) = parse_hex_name(name) else {
            return Ok(());
        };
        let record = read_limited(path, MAX_RECORD_BYTES)
            .ok()
            .filter(|data| data.len() as u64 <= MAX_RECORD_BYTES)
            .and_then(|data| Record::decode(&data));
        match record {
            Some(r) => scan.records.push(Scanned {
                key,
                object: r.object,
                fetched_at: r.fetched_at,
            }),
            None => scan.invalid.push(key),
        }
        Ok(())
    })?;
    Ok(scan)
}

/// Sizes of all object files, by hash.
fn scan_objects(layout: &Layout) -> Result<HashMap<blake3::Hash, u64>, CacheError> {
    let mut objects = HashMap::new();
    for_each_file(&layout.objects(), |path, name| {
        if let Some(hash) = parse_hex_name(name) {
            let size = fs::metadata(path).map_err(io_error(path))?.len();
            objects.insert(blake3::Hash::from(hash), size);
        }
        Ok(())
    })?;
    Ok(objects)
}

fn disk_stats(layout: &Layout) -> Result<CacheStats, CacheError> {
    let objects = scan_objects(layout)?;
    let mut records = 0;
    for_each_file(&layout.index(), |_, name| {
        if parse_hex_name(name).is_some() {
            records += 1;
        }
        Ok(())
    })?;
    Ok(CacheStats {
        records,
        objects: objects.len() as u64,
        object_bytes: objects.values().sum(),
        memory_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    const DAY: Duration = Duration::from_secs(86_400);

    fn config(dir: &Path) -> CacheConfig {
        CacheConfig {
            dir: dir.join("cache"),
            max_disk_bytes: 1 << 30,
            memory_bytes: 1 << 20,
            max_age: 90 * DAY,
        }
    }

    fn open(dir: &Path) -> Cache {
        Cache::open(config(dir)).expect("open")
    }

    fn image(body: &[u8]) -> NewEntry {
        NewEntry {
            body: Bytes::copy_from_slice(body),
            content_type: "image/png".to_owned(),
            is_pixel: false,
        }
    }

    fn layout(cache: &Cache) -> &Layout {
        &cache.inner.layout
    }

    fn files_under(base: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for_each_file(base, |path, _| {
            files.push(path.to_path_buf());
            Ok(())
        })
        .expect("walk");
        files
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn put_then_get_from_memory_then_disk_after_restart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = "https://tracker.example/p.gif?u=alice";
        let cache = open(tmp.path());
        let stored = cache.put(url, image(b"png bytes")).await.expect("put");
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
        assert!(!hit.is_pixel);
        assert_eq!(
            reopened.lookup(url).await.map(|h| h.1),
            Some(Source::Memory)
        );
        assert!(reopened.get("https://other.example/").await.is_none());
    }

    #[tokio::test]
    async fn files_are_private_and_hold_no_url() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let url = "https://tracker.example/open?id=SECRET-RECIPIENT";
        cache.put(url, image(b"x")).await.expect("put");
        let root = &layout(&cache).root;
        assert_eq!(mode(root), 0o700);
        let files = [
            files_under(&layout(&cache).objects()),
            files_under(&layout(&cache).index()),
        ]
        .concat();
        assert_eq!(files.len(), 2);
        for file in &files {
            assert_eq!(mode(file), 0o600, "{}", file.display());
            assert_eq!(mode(file.parent().expect("parent")), 0o700);
            let text = fs::read(file).expect("read");
            assert!(!String::from_utf8_lossy(&text).contains("SECRET"));
        }
        assert_eq!(
            layout(&cache).record_path(&url_key(url)),
            root.join("index")
                .join(&key_hex(&url_key(url))[..2])
                .join(key_hex(&url_key(url)))
        );
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
    async fn corrupt_object_is_removed_and_refetched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = "https://img.example/logo.png";
        let cache = open(tmp.path());
        let entry = cache.put(url, image(b"original body")).await.expect("put");
        let object = layout(&cache).object_path(&entry.hash);
        let record = layout(&cache).record_path(&url_key(url));
        let mut bytes = fs::read(&object).expect("read");
        bytes[0] ^= 0x01;
        fs::write(&object, &bytes).expect("write");

        let cache = open(tmp.path()); // fresh memory tier
        assert!(cache.get(url).await.is_none());
        assert!(!object.exists());
        assert!(!record.exists());
        let (entry, source) = cache
            .get_or_fetch(url, || async {
                Ok::<_, io::Error>(image(b"original body"))
            })
            .await
            .expect("refetch");
        assert_eq!(source, Source::Fetched);
        assert_eq!(entry.body.as_ref(), b"original body");
        assert!(object.exists());
    }

    #[tokio::test]
    async fn truncated_object_is_a_miss() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = "https://img.example/t.png";
        let entry = open(tmp.path())
            .put(url, image(b"0123456789"))
            .await
            .expect("put");
        let object = layout(&open(tmp.path())).object_path(&entry.hash);
        fs::write(&object, b"01234").expect("truncate");
        let cache = open(tmp.path());
        assert!(cache.get(url).await.is_none());
        assert!(!object.exists());
        assert!(!cache.contains(url).await);
    }

    #[tokio::test]
    async fn truncated_or_bogus_record_is_a_miss() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        cache
            .put("https://a.example/", image(b"a"))
            .await
            .expect("put");
        cache
            .put("https://b.example/", image(b"b"))
            .await
            .expect("put");
        let record_a = layout(&cache).record_path(&url_key("https://a.example/"));
        let full = fs::read(&record_a).expect("read");
        fs::write(&record_a, &full[..full.len() / 2]).expect("truncate");
        let record_b = layout(&cache).record_path(&url_key("https://b.example/"));
        let text = String::from_utf8(fs::read(&record_b).expect("read")).expect("utf8");
        fs::write(&record_b, text.replace("image/png", "image/png\r\nX: y")).expect("tamper");

        let cache = open(tmp.path());
        assert!(cache.get("https://a.example/").await.is_none());
        assert!(cache.get("https://b.example/").await.is_none());
        assert!(!record_a.exists());
        assert!(!record_b.exists());
    }

    #[tokio::test]
    async fn record_lying_about_size_is_a_miss() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let entry = cache
            .put("https://s.example/", image(b"abcdef"))
            .await
            .expect("put");
        let path = layout(&cache).record_path(&url_key("https://s.example/"));
        let text = String::from_utf8(fs::read(&path).expect("read")).expect("utf8");
        fs::write(&path, text.replace("\"size\":6", "\"size\":3")).expect("tamper");
        let cache = open(tmp.path());
        assert!(cache.get("https://s.example/").await.is_none());
        assert!(!path.exists());
        // The object itself is intact, so it stays (eviction reclaims it if unreferenced).
        assert!(layout(&cache).object_path(&entry.hash).exists());
    }

    #[tokio::test]
    async fn identical_bodies_share_one_object() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let pixel = [0x47u8; 43];
        for i in 0..1000 {
            cache
                .put(&format!("https://t.example/o?id={i}"), image(&pixel))
                .await
                .expect("put");
        }
        assert_eq!(files_under(&layout(&cache).objects()).len(), 1);
        let stats = cache.stats().await;
        assert_eq!(
            (stats.records, stats.objects, stats.object_bytes),
            (1000, 1, 43)
        );
    }

    #[tokio::test]
    async fn open_removes_stale_temp_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let entry = cache
            .put("https://x.example/", image(b"x"))
            .await
            .expect("put");
        let object_dir = layout(&cache)
            .object_path(&entry.hash)
            .parent()
            .expect("dir")
            .to_path_buf();
        let debris = object_dir.join(".tmp-deadbeefdeadbeef");
        fs::write(&debris, b"half written").expect("write");
        let cache = open(tmp.path());
        assert!(!debris.exists());
        assert!(cache.get("https://x.example/").await.is_some());
    }

    #[tokio::test]
    async fn evicts_by_age() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let now = SystemTime::now();
        cache
            .put_at("https://old.example/", image(b"old"), now - 91 * DAY)
            .await
            .expect("put");
        cache
            .put_at("https://new.example/", image(b"new"), now - 89 * DAY)
            .await
            .expect("put");
        let stats = cache.evict().await.expect("evict");
        assert_eq!(
            stats,
            EvictStats {
                records_removed: 1,
                objects_removed: 1,
                bytes_freed: 3
            }
        );
        assert!(cache.get("https://old.example/").await.is_none());
        assert!(!cache.contains("https://old.example/").await);
        assert!(cache.get("https://new.example/").await.is_some());
    }

    #[tokio::test]
    async fn evicts_oldest_first_beyond_disk_budget() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(CacheConfig {
            max_disk_bytes: 250,
            ..config(tmp.path())
        })
        .expect("open");
        let now = SystemTime::now();
        for (i, age) in [5u32, 1, 4, 2, 3].into_iter().enumerate() {
            let body = vec![u8::try_from(i).expect("small"); 100];
            cache
                .put_at(
                    &format!("https://e.example/{age}"),
                    image(&body),
                    now - age * DAY,
                )
                .await
                .expect("put");
        }
        let stats = cache.evict().await.expect("evict");
        assert_eq!(
            stats,
            EvictStats {
                records_removed: 3,
                objects_removed: 3,
                bytes_freed: 300
            }
        );
        for age in [3, 4, 5] {
            assert!(
                !cache.contains(&format!("https://e.example/{age}")).await,
                "{age}"
            );
        }
        for age in [1, 2] {
            assert!(
                cache
                    .get(&format!("https://e.example/{age}"))
                    .await
                    .is_some(),
                "{age}"
            );
        }
        assert_eq!(cache.stats().await.object_bytes, 200);
    }

    #[tokio::test]
    async fn shared_object_lives_while_referenced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let now = SystemTime::now();
        let entry = cache
            .put_at("https://old.example/", image(b"pixel"), now - 100 * DAY)
            .await
            .expect("put");
        cache
            .put_at("https://mid.example/", image(b"pixel"), now - 10 * DAY)
            .await
            .expect("put");
        let object = layout(&cache).object_path(&entry.hash);

        let stats = cache.evict().await.expect("evict");
        assert_eq!(
            stats,
            EvictStats {
                records_removed: 1,
                objects_removed: 0,
                bytes_freed: 0
            }
        );
        assert!(object.exists());
        assert!(cache.get("https://mid.example/").await.is_some());

        let short = Cache::open(CacheConfig {
            max_age: 5 * DAY,
            ..config(tmp.path())
        })
        .expect("open");
        let stats = short.evict().await.expect("evict");
        assert_eq!(
            stats,
            EvictStats {
                records_removed: 1,
                objects_removed: 1,
                bytes_freed: 5
            }
        );
        assert!(!object.exists());
    }

    #[tokio::test]
    async fn evict_cleans_dangling_records_and_orphan_objects() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let a = cache
            .put("https://a.example/", image(b"aaaa"))
            .await
            .expect("put");
        cache
            .put("https://b.example/", image(b"bb"))
            .await
            .expect("put");
        fs::remove_file(layout(&cache).object_path(&a.hash)).expect("rm object");
        fs::remove_file(layout(&cache).record_path(&url_key("https://b.example/")))
            .expect("rm record");
        let stats = cache.evict().await.expect("evict");
        assert_eq!(
            stats,
            EvictStats {
                records_removed: 1,
                objects_removed: 1,
                bytes_freed: 2
            }
        );
        assert_eq!(cache.stats().await, CacheStats::default());
    }

    #[tokio::test]
    async fn memory_tier_is_bounded_by_body_bytes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(CacheConfig {
            memory_bytes: 250,
            ..config(tmp.path())
        })
        .expect("open");
        for i in 0..5u8 {
            cache
                .put(&format!("https://m.example/{i}"), image(&[i; 100]))
                .await
                .expect("put");
        }
        assert_eq!(cache.stats().await.memory_bytes, 200);
        assert_eq!(
            cache.lookup("https://m.example/4").await.map(|h| h.1),
            Some(Source::Memory)
        );
        assert_eq!(
            cache.lookup("https://m.example/0").await.map(|h| h.1),
            Some(Source::Disk)
        );
        cache
            .put("https://m.example/big", image(&[9; 300]))
            .await
            .expect("put");
        assert_eq!(
            cache.lookup("https://m.example/big").await.map(|h| h.1),
            Some(Source::Disk)
        );
        assert!(cache.stats().await.memory_bytes <= 250);
    }

    #[tokio::test]
    async fn rejects_unsafe_content_types() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        for bad in [
            "",
            "image",
            "image/",
            "/png",
            "image/png; q=1",
            "image/png\r\nSet-Cookie: x",
            "a/b/c",
            "imagé/png",
        ] {
            let new = NewEntry {
                content_type: bad.to_owned(),
                ..image(b"x")
            };
            assert!(
                matches!(
                    cache.put("https://c.example/", new).await,
                    Err(CacheError::InvalidContentType)
                ),
                "{bad:?}"
            );
        }
        let long = format!("image/{}", "x".repeat(100));
        assert!(!valid_content_type(&long));
        assert!(valid_content_type("image/svg+xml"));
        assert!(!cache.contains("https://c.example/").await);
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
        assert!(!cache.contains("https://weird.example/").await);
    }

    #[tokio::test]
    async fn contains_reflects_index_records() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        assert!(!cache.contains("https://p.example/").await);
        cache
            .put("https://p.example/", image(b"p"))
            .await
            .expect("put");
        assert!(cache.contains("https://p.example/").await);
        assert!(open(tmp.path()).contains("https://p.example/").await);
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
        cache.put(url, image(&[7; 4096])).await.expect("put");
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
