//! The memory tier: the hot set of entries, held in an LRU bounded by body bytes.
//!
//! Owns only what is held in memory and when it is dropped. It never touches
//! the disk: `Cache` decides what to insert (stored and promoted entries) and
//! tells it what eviction removed from disk (`forget`).

use std::sync::Arc;

use lru::LruCache;

use super::evict::Evicted;
use super::record::{body_size, Key};
use super::Entry;

/// LRU of entries bounded by the sum of body sizes, not by entry count:
/// images range from 43-byte pixels to megabyte banners.
pub(super) struct MemoryTier {
    lru: LruCache<Key, Arc<Entry>>,
    bytes: u64,
    budget: u64,
}

impl MemoryTier {
    /// An empty tier holding at most `budget` bytes of bodies.
    pub(super) fn new(budget: u64) -> Self {
        Self {
            lru: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    /// The entry for `key`, now the most recently used.
    pub(super) fn get(&mut self, key: &Key) -> Option<Arc<Entry>> {
        self.lru.get(key).cloned()
    }

    /// Inserts, then drops least recently used entries until within budget.
    /// A body larger than the whole budget is not kept.
    pub(super) fn insert(&mut self, key: Key, entry: Arc<Entry>) {
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

    /// Drops the entry for `key`, if held.
    pub(super) fn remove(&mut self, key: &Key) {
        if let Some(old) = self.lru.pop(key) {
            self.bytes = self.bytes.saturating_sub(body_size(&old));
        }
    }

    /// Drops what eviction removed from disk, so memory never serves an
    /// entry the store no longer has. Also catches entries whose record was
    /// removed outside eviction but whose object eviction then deleted.
    pub(super) fn forget(&mut self, evicted: &Evicted) {
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

    /// Sum of the body sizes held.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use crate::proxy::cache::testing::{config, put};
    use crate::proxy::cache::{Cache, CacheConfig, Source};

    #[tokio::test]
    async fn memory_tier_is_bounded_by_body_bytes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(CacheConfig {
            memory_bytes: 250,
            ..config(tmp.path())
        })
        .expect("open");
        for i in 0..5u8 {
            put(&cache, &format!("https://m.example/{i}"), &[i; 100]).await;
        }
        assert_eq!(cache.inner.memory().bytes(), 200);
        assert_eq!(
            cache.lookup("https://m.example/4").await.map(|h| h.1),
            Some(Source::Memory)
        );
        assert_eq!(
            cache.lookup("https://m.example/0").await.map(|h| h.1),
            Some(Source::Disk)
        );
        put(&cache, "https://m.example/big", &[9; 300]).await;
        assert_eq!(
            cache.lookup("https://m.example/big").await.map(|h| h.1),
            Some(Source::Disk)
        );
        assert!(cache.inner.memory().bytes() <= 250);
    }
}
