//! Helpers shared by the cache's unit tests (compiled only for tests): a store in a
//! temporary directory, sample entries, and looks at the files underneath.
//!
//! Owns no behaviour under test; each sub-module's tests live at the end of its file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::disk::{for_each_file, Layout};
use super::evict::scan_objects;
use super::record::{parse_hex_name, url_key};
use super::{Cache, CacheConfig, Entry, NewEntry};

/// One day, for ages.
pub(super) const DAY: Duration = Duration::from_secs(86_400);

/// A roomy config under `dir`: 1 GiB of disk, 1 MiB of memory, 90 days.
pub(super) fn config(dir: &Path) -> CacheConfig {
    CacheConfig {
        dir: dir.join("cache"),
        max_disk_bytes: 1 << 30,
        memory_bytes: 1 << 20,
        max_age: 90 * DAY,
    }
}

/// Opens the cache of [`config`].
pub(super) fn open(dir: &Path) -> Cache {
    Cache::open(config(dir)).expect("open")
}

/// A PNG-typed entry with `body`, not a pixel.
pub(super) fn image(body: &[u8]) -> NewEntry {
    NewEntry {
        body: Bytes::copy_from_slice(body),
        content_type: "image/png".to_owned(),
        is_pixel: false,
    }
}

/// Stores [`image`]`(body)` for `url`.
pub(super) async fn put(cache: &Cache, url: &str, body: &[u8]) -> Arc<Entry> {
    cache.put(url, image(body)).await.expect("put")
}

/// The cache's disk layout.
pub(super) fn layout(cache: &Cache) -> &Layout {
    &cache.inner.layout
}

/// Every file in the fan-out directories of `base`.
pub(super) fn files_under(base: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for_each_file(base, |path, _| {
        files.push(path.to_path_buf());
        Ok(())
    })
    .expect("walk");
    files
}

/// True if `url` has an index record on disk (no body read).
pub(super) fn has_record(cache: &Cache, url: &str) -> bool {
    layout(cache).record_path(&url_key(url)).exists()
}

/// The cache's size: counts and bytes on disk, bytes in memory.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Usage {
    /// Index records on disk.
    pub(super) records: u64,
    /// Object files on disk.
    pub(super) objects: u64,
    /// Sum of the object files' sizes.
    pub(super) object_bytes: u64,
    /// Sum of body sizes held in the memory tier.
    pub(super) memory_bytes: u64,
}

/// Scans the store and the memory tier.
pub(super) fn usage(cache: &Cache) -> Usage {
    let objects = scan_objects(layout(cache)).expect("scan objects");
    let mut records = 0;
    for_each_file(&layout(cache).index(), |_, name| {
        if parse_hex_name(name).is_some() {
            records += 1;
        }
        Ok(())
    })
    .expect("scan index");
    Usage {
        records,
        objects: objects.len() as u64,
        object_bytes: objects.values().sum(),
        memory_bytes: cache.inner.memory().bytes(),
    }
}
