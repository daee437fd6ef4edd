//! Eviction: which records and objects go when entries expire or the store
//! outgrows its disk budget, and deleting them.
//!
//! Owns the policy (age first, then oldest-first down to the budget, an object
//! shared by several records living while any of them does) and the scans of
//! the whole store it needs. Paths, record files and deletion primitives come
//! from `disk`; `Cache::evict` holds the lock against puts, runs this off the
//! async workers and tells the memory tier what went.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::SystemTime;

use super::disk::{for_each_file, io_error, load_record, remove_if_exists, Layout};
use super::record::{parse_hex_name, unix_secs, Key};
use super::{CacheConfig, CacheError};

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

/// Eviction limits, in whole seconds and bytes.
pub(super) struct Policy {
    now: u64,
    max_age: u64,
    max_bytes: u64,
}

impl Policy {
    /// The limits of `config`, applied at time `now`.
    pub(super) fn new(config: &CacheConfig, now: SystemTime) -> Self {
        Self {
            now: unix_secs(now),
            max_age: config.max_age.as_secs(),
            max_bytes: config.max_disk_bytes,
        }
    }
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
pub(super) struct Evicted {
    /// Counts for the caller.
    pub(super) stats: EvictStats,
    /// URL keys whose records were deleted.
    pub(super) records: Vec<Key>,
    /// Objects deleted.
    pub(super) objects: HashSet<blake3::Hash>,
}

/// Deletes the records `policy` condemns (and invalid ones), then every
/// object no remaining record references.
pub(super) fn evict_blocking(layout: &Layout, policy: &Policy) -> Result<Evicted, CacheError> {
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
        match load_record(path) {
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
pub(super) fn scan_objects(layout: &Layout) -> Result<HashMap<blake3::Hash, u64>, CacheError> {
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::proxy::cache::record::url_key;
    use crate::proxy::cache::testing::{config, has_record, image, layout, open, put, usage, DAY};
    use crate::proxy::cache::{Cache, CacheConfig, Entry};

    /// Stores [`image`]`(body)` for `url` as if fetched `age` ago.
    async fn put_aged(cache: &Cache, url: &str, body: &[u8], age: Duration) -> Arc<Entry> {
        let fetched_at = SystemTime::now() - age;
        cache
            .put_at(url, image(body), fetched_at)
            .await
            .expect("put")
    }

    /// What an eviction should report.
    fn removed(records_removed: u64, objects_removed: u64, bytes_freed: u64) -> EvictStats {
        EvictStats {
            records_removed,
            objects_removed,
            bytes_freed,
        }
    }

    #[tokio::test]
    async fn evicts_by_age() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        put_aged(&cache, "https://old.example/", b"old", 91 * DAY).await;
        put_aged(&cache, "https://new.example/", b"new", 89 * DAY).await;
        let stats = cache.evict().await.expect("evict");
        assert_eq!(stats, removed(1, 1, 3));
        assert!(cache.get("https://old.example/").await.is_none());
        assert!(!has_record(&cache, "https://old.example/"));
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
        for (i, age) in [5u32, 1, 4, 2, 3].into_iter().enumerate() {
            let body = vec![u8::try_from(i).expect("small"); 100];
            put_aged(
                &cache,
                &format!("https://e.example/{age}"),
                &body,
                age * DAY,
            )
            .await;
        }
        let stats = cache.evict().await.expect("evict");
        assert_eq!(stats, removed(3, 3, 300));
        for age in [3, 4, 5] {
            let url = format!("https://e.example/{age}");
            assert!(!has_record(&cache, &url), "{age}");
        }
        for age in [1, 2] {
            let url = format!("https://e.example/{age}");
            assert!(cache.get(&url).await.is_some(), "{age}");
        }
        assert_eq!(usage(&cache).object_bytes, 200);
    }

    #[tokio::test]
    async fn shared_object_lives_while_referenced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let entry = put_aged(&cache, "https://old.example/", b"pixel", 100 * DAY).await;
        put_aged(&cache, "https://mid.example/", b"pixel", 10 * DAY).await;
        let object = layout(&cache).object_path(&entry.hash);

        let stats = cache.evict().await.expect("evict");
        assert_eq!(stats, removed(1, 0, 0));
        assert!(object.exists());
        assert!(cache.get("https://mid.example/").await.is_some());

        let short = Cache::open(CacheConfig {
            max_age: 5 * DAY,
            ..config(tmp.path())
        })
        .expect("open");
        let stats = short.evict().await.expect("evict");
        assert_eq!(stats, removed(1, 1, 5));
        assert!(!object.exists());
    }

    #[tokio::test]
    async fn evict_cleans_dangling_records_and_orphan_objects() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let a = put(&cache, "https://a.example/", b"aaaa").await;
        put(&cache, "https://b.example/", b"bb").await;
        fs::remove_file(layout(&cache).object_path(&a.hash)).expect("rm object");
        fs::remove_file(layout(&cache).record_path(&url_key("https://b.example/")))
            .expect("rm record");
        let stats = cache.evict().await.expect("evict");
        assert_eq!(stats, removed(1, 1, 2));
        assert_eq!(usage(&cache), Default::default());
    }
}
