//! Whole-or-nothing file writes, shared by the key file ([`crate::sign`]), the prefetch
//! spool and the cache: a reader (or a restart after `kill -9`) sees the old file, the new
//! file, or no file, never a torn one.
//!
//! Every write goes to a fresh temporary name in the target's directory (`create_new`, so
//! two writers never share one), then is renamed over the target ([`replace`]) or linked
//! to it only if nothing is there yet ([`create`]). Temporary names start with
//! [`TMP_PREFIX`], so owners can sweep what a crash left behind.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of every temporary file these helpers create.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// How far a write must reach before it counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// fsync the file and its directory: the write survives a power cut (spool jobs, keys).
    Synced,
    /// Atomic against crashes of this process, not of the machine (cache entries, which can
    /// be fetched again).
    Unsynced,
}

/// Writes `data` to `target` with permissions `mode`, replacing what was there.
///
/// # Errors
/// Any I/O error; the temporary file is removed on the way out.
pub(crate) fn replace(
    target: &Path,
    data: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<()> {
    let tmp = write_temporary(target, data, mode, durability)?;
    let renamed = std::fs::rename(&tmp, target);
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed?;
    finish(target, durability)
}

/// Writes `data` to `target` only if no file is there. Returns `false` when another
/// writer's file was already in place (that file is left as it is).
///
/// # Errors
/// Any I/O error but "already exists".
pub(crate) fn create(
    target: &Path,
    data: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<bool> {
    let tmp = write_temporary(target, data, mode, durability)?;
    let linked = std::fs::hard_link(&tmp, target);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => finish(target, durability).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes a rename, link or removal in `dir` durable.
///
/// # Errors
/// When the directory cannot be opened or synced.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// A name no other writer uses: a counter within the process, pid and clock across them;
/// `create_new` guards against the unlikely clash.
pub(crate) fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.update(&nanos.to_le_bytes());
    let [a, b, c, d, e, f, g, h, ..] = *hasher.finalize().as_bytes();
    format!(
        "{TMP_PREFIX}{:016x}",
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    )
}

fn write_temporary(
    target: &Path,
    data: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<PathBuf> {
    let tmp = directory(target).join(temp_name());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    // The umask may have taken bits away; the mode asked for is the mode the file gets.
    let written = file
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.write_all(data))
        .and_then(|()| match durability {
            Durability::Synced => file.sync_all(),
            Durability::Unsynced => Ok(()),
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

fn finish(target: &Path, durability: Durability) -> io::Result<()> {
    match durability {
        Durability::Synced => sync_dir(directory(target)),
        Durability::Unsynced => Ok(()),
    }
}

fn directory(target: &Path) -> &Path {
    target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replace_writes_whole_files_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        replace(&path, b"one", 0o600, Durability::Synced).unwrap();
        replace(&path, b"two", 0o600, Durability::Unsynced).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn create_keeps_the_first_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        assert!(create(&path, b"first", 0o600, Durability::Synced).unwrap());
        assert!(!create(&path, b"second", 0o600, Durability::Synced).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_names_differ() {
        assert_ne!(temp_name(), temp_name());
        assert!(temp_name().starts_with(TMP_PREFIX));
    }
}
