//! The disk store: where files live, how entries are stored, and how they are
//! read back and verified.
//!
//! Layout under `CacheConfig::dir` (dirs 0700, files 0600):
//!
//! * `objects/ab/<64-hex>`: a body, named by its BLAKE3 hash. Identical bodies
//!   behind many URLs are stored once.
//! * `index/ab/<64-hex>`: a small JSON record named by BLAKE3 of the URL, so
//!   the disk never holds a tracking URL in clear.
//!
//! Every file is written whole or not at all by [`crate::fsutil`] (temp file in
//! the same directory, then rename); this module creates the private fan-out
//! directory first and sweeps the temp files a crash left. What a record says
//! is `record`'s business, which files to delete for age or budget `evict`'s.
//! Everything here blocks: `Cache` runs it in `spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::{debug, warn};

use super::record::{key_hex, Key, Record};
use super::{CacheError, Entry};
use crate::fsutil::{self, Durability, TMP_PREFIX};

/// Subdirectory holding bodies.
const OBJECTS_DIR: &str = "objects";
/// Subdirectory holding index records.
const INDEX_DIR: &str = "index";
/// Subdirectory holding the marks of URLs whose delivery-time fetch failed.
const REFUSED_DIR: &str = "refused";
/// Mode of every directory of the store.
const DIR_MODE: u32 = 0o700;
/// Mode of every file of the store.
const FILE_MODE: u32 = 0o600;
/// Real records are ~200 bytes; refusing bigger files bounds what a
/// tampered index can make us read.
const MAX_RECORD_BYTES: u64 = 1024;

/// Paths inside the store.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of a store rooted at `root` (nothing is touched on disk).
    pub(super) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Creates the store's directories (0700, also tightening an existing root)
    /// and removes the temp files a crash left behind. Returns how many.
    pub(super) fn prepare(&self) -> Result<u64, CacheError> {
        for dir in [self.root.clone(), self.objects(), self.index()] {
            create_private_dir(&dir)?;
        }
        // An existing root may have looser permissions; the store is private.
        set_mode(&self.root, DIR_MODE)?;
        Ok(remove_temp_files(&self.objects())? + remove_temp_files(&self.index())?)
    }

    /// Directory of the bodies.
    pub(super) fn objects(&self) -> PathBuf {
        self.root.join(OBJECTS_DIR)
    }

    /// Directory of the index records.
    pub(super) fn index(&self) -> PathBuf {
        self.root.join(INDEX_DIR)
    }

    /// Where the body with this hash lives.
    pub(super) fn object_path(&self, hash: &blake3::Hash) -> PathBuf {
        fan_out(&self.objects(), hash.as_bytes())
    }

    /// Where the record of this URL key lives.
    pub(super) fn record_path(&self, key: &Key) -> PathBuf {
        fan_out(&self.index(), key)
    }

    /// Directory of the refused marks.
    pub(super) fn refused(&self) -> PathBuf {
        self.root.join(REFUSED_DIR)
    }

    /// Where the mark of a URL whose delivery-time fetch failed lives: an empty file, its
    /// modification time the time of the failure.
    pub(super) fn refused_path(&self, key: &Key) -> PathBuf {
        fan_out(&self.refused(), key)
    }
}

/// `base/ab/abcd…`: a two-hex-digit fan-out keeps directories small.
fn fan_out(base: &Path, name: &[u8; 32]) -> PathBuf {
    let [first, ..] = *name;
    let hex = blake3::Hash::from(*name).to_hex();
    base.join(format!("{first:02x}")).join(hex.as_str())
}

/// Wraps an I/O error with the path it happened on.
pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |error| CacheError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn create_private_dir(path: &Path) -> Result<(), CacheError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(io_error(path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CacheError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(path))
}

/// Writes `data` to `target` so readers see either nothing or all of it, creating the
/// target's fan-out directory first.
///
/// No fsync: every read verifies what it finds (objects against their BLAKE3 name, records
/// against their object), so a write torn by a power cut is a miss and a refetch, never
/// bad data served. Skipping the two fsyncs per file is what lets prefetch drain at the
/// speed of the network rather than of the disk's flushes.
fn write_file(target: &Path, data: &[u8]) -> Result<(), CacheError> {
    if let Some(dir) = target.parent() {
        create_private_dir(dir)?;
    }
    fsutil::replace(target, data, FILE_MODE, Durability::Unsynced).map_err(io_error(target))
}

/// Marks the URL key as refused at delivery (an empty file; a second mark refreshes its
/// time).
pub(super) fn mark_refused_blocking(layout: &Layout, key: &Key) -> Result<(), CacheError> {
    write_file(&layout.refused_path(key), b"")
}

/// Whether the URL key carries a refused mark.
pub(super) fn is_refused_blocking(layout: &Layout, key: &Key) -> bool {
    layout.refused_path(key).is_file()
}

/// Removes refused marks older than `max_age`; returns how many went.
pub(super) fn sweep_refused_blocking(
    layout: &Layout,
    max_age: std::time::Duration,
) -> Result<u64, CacheError> {
    let now = std::time::SystemTime::now();
    let mut removed = 0u64;
    let base = layout.refused();
    if !base.is_dir() {
        return Ok(0);
    }
    for_each_file(&base, |path, _name| {
        let old = fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > max_age);
        if old && remove_if_exists(path)? {
            removed += 1;
        }
        Ok(())
    })?;
    Ok(removed)
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

/// [`read_limited`], with a missing file as `Ok(None)`.
fn read_existing(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, CacheError> {
    match read_limited(path, limit) {
        Ok(data) => Ok(Some(data)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(CacheError::Io {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// A record file's content, validated: None when oversized or malformed.
fn parse_record(data: &[u8]) -> Option<Record> {
    (data.len() as u64 <= MAX_RECORD_BYTES)
        .then(|| Record::decode(data))
        .flatten()
}

/// The valid record in the file at `path`; None for one that cannot be read or validated.
pub(super) fn load_record(path: &Path) -> Option<Record> {
    read_limited(path, MAX_RECORD_BYTES)
        .ok()
        .and_then(|data| parse_record(&data))
}

/// Removes a file, treating "already gone" as success (races with other
/// cleaners are harmless). Returns whether this call removed it.
pub(super) fn remove_if_exists(path: &Path) -> Result<bool, CacheError> {
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
pub(super) fn for_each_file(
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

/// Writes the object (unless an intact-looking copy exists) then the record;
/// in that order, so a visible record always had its object written.
pub(super) fn store_blocking(
    layout: &Layout,
    key: &Key,
    record: &Record,
    body: &[u8],
) -> Result<(), CacheError> {
    write_object_once(layout, &record.object, body)?;
    write_file(&layout.record_path(key), &record.encode()?)
}

/// Content addressing makes an existing object of the right size the same
/// bytes (a corrupt one is caught and deleted when read).
fn write_object_once(layout: &Layout, hash: &blake3::Hash, body: &[u8]) -> Result<(), CacheError> {
    let path = layout.object_path(hash);
    if fs::metadata(&path).is_ok_and(|m| m.len() == body.len() as u64) {
        debug!(%hash, "object already stored");
        return Ok(());
    }
    write_file(&path, body)
}

/// Reads and verifies the entry for `key`. Ok(None) on a miss, including
/// every kind of damage, which is cleaned up on the way.
pub(super) fn read_entry(layout: &Layout, key: &Key) -> Result<Option<Entry>, CacheError> {
    let Some(record) = read_record(layout, key)? else {
        return Ok(None);
    };
    let Some(body) = read_object(layout, key, &record)? else {
        return Ok(None);
    };
    Ok(Some(record.into_entry(Bytes::from(body))))
}

/// Reads the record for `key`; an invalid one (truncated, tampered,
/// oversized) is deleted and reported as absent.
pub(super) fn read_record(layout: &Layout, key: &Key) -> Result<Option<Record>, CacheError> {
    let path = layout.record_path(key);
    let Some(data) = read_existing(&path, MAX_RECORD_BYTES)? else {
        return Ok(None);
    };
    let record = parse_record(&data);
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
    let Some(body) = read_existing(&path, record.size)? else {
        debug!(hash = %record.object, "object missing");
        return Ok(None);
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

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::proxy::cache::record::url_key;
    use crate::proxy::cache::testing::{files_under, has_record, image, layout, open, put, usage};
    use crate::proxy::cache::Source;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn files_are_private_and_hold_no_url() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let url = "https://tracker.example/open?id=SECRET-RECIPIENT";
        put(&cache, url, b"x").await;
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

    #[tokio::test]
    async fn corrupt_object_is_removed_and_refetched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = "https://img.example/logo.png";
        let cache = open(tmp.path());
        let entry = put(&cache, url, b"original body").await;
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
        let entry = put(&open(tmp.path()), url, b"0123456789").await;
        let object = layout(&open(tmp.path())).object_path(&entry.hash);
        fs::write(&object, b"01234").expect("truncate");
        let cache = open(tmp.path());
        assert!(cache.get(url).await.is_none());
        assert!(!object.exists());
        assert!(!has_record(&cache, url));
    }

    #[tokio::test]
    async fn truncated_or_bogus_record_is_a_miss() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        put(&cache, "https://a.example/", b"a").await;
        put(&cache, "https://b.example/", b"b").await;
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
        let entry = put(&cache, "https://s.example/", b"abcdef").await;
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
            put(&cache, &format!("https://t.example/o?id={i}"), &pixel).await;
        }
        assert_eq!(files_under(&layout(&cache).objects()).len(), 1);
        let stats = usage(&cache);
        assert_eq!(
            (stats.records, stats.objects, stats.object_bytes),
            (1000, 1, 43)
        );
    }

    #[tokio::test]
    async fn open_removes_stale_temp_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let entry = put(&cache, "https://x.example/", b"x").await;
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
    async fn put_writes_an_index_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        assert!(!has_record(&cache, "https://p.example/"));
        put(&cache, "https://p.example/", b"p").await;
        assert!(has_record(&cache, "https://p.example/"));
        assert!(has_record(&open(tmp.path()), "https://p.example/"));
    }
}
