//! The durable prefetch queue: one job file per message, holding the remote URLs its
//! rewrite proxied. Written by `filter` (and the rewrite API and milter), drained by the
//! prefetch workers in `serve`; neither needs the other to be running.
//!
//! A job file appears whole or not at all (temporary file, fsync, rename, fsync of the
//! directory) and leaves the spool only when each of its URLs is cached or has failed
//! permanently. Job files hold tracking URLs, so the directory is 0700 and files 0600.
//! This module does file I/O only; fetching is [`crate::delivery::prefetch`]'s.

use std::fs::{DirBuilder, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::fsutil::{self, Durability, TMP_PREFIX};
use crate::sign::{sealed, FetchTarget};

/// Suffix of complete job files; anything else in the directory is ignored.
const JOB_SUFFIX: &str = ".job";
/// Largest job file read (a message with tens of thousands of images is still far below).
const MAX_JOB_BYTES: u64 = 16 << 20;

/// Spool failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file or directory operation failed.
    #[error("spool {path}: {error}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A job file is not valid JSON of the expected shape.
    #[error("spool job {path}: {error}")]
    Corrupt {
        /// The job file.
        path: PathBuf,
        /// What the parser said.
        error: String,
    },
}

/// One message's prefetch work, as stored in its job file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Format version, for future changes.
    version: u32,
    /// When the message was rewritten (Unix seconds).
    created: u64,
    /// URLs still to fetch.
    urls: Vec<String>,
    /// Written (always empty) by 0.1.0; read so that its job files still load.
    #[serde(default, rename = "failed", skip_serializing)]
    _failed: serde::de::IgnoredAny,
}

impl Job {
    /// The job's URLs as fetch targets, and how many of them are not URLs at all (a job
    /// file edited by hand, or damaged).
    pub fn targets(&self) -> (Vec<QueuedUrl>, usize) {
        let targets: Vec<QueuedUrl> = self
            .urls
            .iter()
            .filter_map(|u| Url::parse(u).ok())
            .map(QueuedUrl)
            .collect();
        let invalid = self.urls.len() - targets.len();
        (targets, invalid)
    }
}

/// A URL read from the daemon's own spool: the one kind of URL besides a
/// [`SignedUrl`](crate::sign::SignedUrl) that the proxy's fetch path takes (see
/// [`FetchTarget`]). Only [`Job::targets`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedUrl(Url);

impl sealed::Sealed for QueuedUrl {}

impl FetchTarget for QueuedUrl {
    fn url(&self) -> &Url {
        &self.0
    }
}

/// A job file's name: sortable by creation time, unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    /// The file name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens the spool, creating the directory (0700) if needed and removing temporary
    /// files a crash left behind.
    ///
    /// # Errors
    /// [`SpoolError::Io`] when the directory cannot be created or read.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let spool = Self::open_for_writing(dir)?;
        spool.remove_stale_temporaries()?;
        Ok(spool)
    }

    /// Opens the spool without cleaning: for writers (`filter`), which must not remove a
    /// temporary file another writer is still filling.
    ///
    /// # Errors
    /// [`SpoolError::Io`] when the directory cannot be created.
    pub fn open_for_writing(dir: &Path) -> Result<Self, SpoolError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| io(dir, error))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records a job for `urls` (nothing is written for an empty list).
    ///
    /// # Errors
    /// [`SpoolError::Io`] when the file cannot be written durably.
    pub fn enqueue(&self, urls: &[String]) -> Result<Option<JobId>, SpoolError> {
        if urls.is_empty() {
            return Ok(None);
        }
        let job = Job {
            version: 1,
            created: unix_now(),
            urls: urls.to_vec(),
            _failed: serde::de::IgnoredAny,
        };
        let id = JobId(format!("{}-{}{JOB_SUFFIX}", unix_nanos(), random_hex()));
        self.write(&id, &job)?;
        Ok(Some(id))
    }

    /// Jobs in the spool, oldest first.
    ///
    /// # Errors
    /// [`SpoolError::Io`] when the directory cannot be read.
    pub fn list(&self) -> Result<Vec<JobId>, SpoolError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|error| io(&self.dir, error))?;
        let mut ids: Vec<JobId> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.ends_with(JOB_SUFFIX) && !name.starts_with('.'))
            .map(JobId)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Reads a job.
    ///
    /// # Errors
    /// [`SpoolError::Io`] or [`SpoolError::Corrupt`].
    pub fn load(&self, id: &JobId) -> Result<Job, SpoolError> {
        let path = self.path(id);
        let file = File::open(&path).map_err(|error| io(&path, error))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_JOB_BYTES), &mut text)
            .map_err(|error| io(&path, error))?;
        serde_json::from_str(&text).map_err(|e| SpoolError::Corrupt {
            path,
            error: e.to_string(),
        })
    }

    /// Removes a finished job.
    ///
    /// # Errors
    /// [`SpoolError::Io`], except when the job is already gone.
    pub fn complete(&self, id: &JobId) -> Result<(), SpoolError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(&self.dir).map_err(|error| io(&self.dir, error)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io(&path, error)),
        }
    }

    /// Moves an unreadable job aside (`.bad` suffix) so it is kept for inspection but no
    /// longer retried.
    ///
    /// # Errors
    /// [`SpoolError::Io`].
    pub fn quarantine(&self, id: &JobId) -> Result<(), SpoolError> {
        let from = self.path(id);
        let to = self.dir.join(format!("{}.bad", id.as_str()));
        std::fs::rename(&from, &to).map_err(|error| io(&from, error))
    }

    fn path(&self, id: &JobId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    fn write(&self, id: &JobId, job: &Job) -> Result<(), SpoolError> {
        let target = self.path(id);
        let bytes = serde_json::to_vec(job).map_err(|e| SpoolError::Corrupt {
            path: target.clone(),
            error: e.to_string(),
        })?;
        fsutil::replace(&target, &bytes, 0o600, Durability::Synced)
            .map_err(|error| io(&target, error))
    }

    fn remove_stale_temporaries(&self) -> Result<(), SpoolError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|error| io(&self.dir, error))?;
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

fn io(path: &Path, error: std::io::Error) -> SpoolError {
    SpoolError::Io {
        path: path.to_owned(),
        error,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    // Uniqueness, not secrecy: fall back to the process id and time if the OS has no
    // randomness to give.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = (u64::from(std::process::id()) ^ unix_nanos() as u64).to_le_bytes();
    }
    format!("{:016x}", u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn urls(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("https://t.example/{i}.png"))
            .collect()
    }

    #[test]
    fn enqueue_list_load_complete() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        assert_eq!(spool.enqueue(&[]).unwrap(), None);
        let a = spool.enqueue(&urls(2)).unwrap().unwrap();
        let b = spool.enqueue(&urls(3)).unwrap().unwrap();
        assert_eq!(spool.list().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(spool.load(&a).unwrap().urls, urls(2));
        spool.complete(&a).unwrap();
        spool.complete(&a).unwrap();
        assert_eq!(spool.list().unwrap(), vec![b]);
    }

    #[test]
    fn files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path).unwrap();
        let id = spool.enqueue(&urls(1)).unwrap().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&path.join(id.as_str())), 0o600);
    }

    #[test]
    fn temporaries_are_ignored_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(".tmp-abc"), b"{partial").unwrap();
        assert!(spool.list().unwrap().is_empty());
        Spool::open(dir.path()).unwrap();
        assert!(!dir.path().join(".tmp-abc").exists());
    }

    #[test]
    fn quarantine_sets_unreadable_jobs_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.enqueue(&urls(2)).unwrap().unwrap();
        std::fs::write(dir.path().join("1-x.job"), b"not json").unwrap();
        let bad = JobId("1-x.job".into());
        assert!(matches!(spool.load(&bad), Err(SpoolError::Corrupt { .. })));
        spool.quarantine(&bad).unwrap();
        assert_eq!(spool.list().unwrap(), vec![id]);
    }

    #[test]
    fn jobs_written_by_0_1_0_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("1-a.job"),
            br#"{"version":1,"created":5,"urls":["https://t.example/0.png","not a url"],"failed":[]}"#,
        )
        .unwrap();
        let job = spool.load(&JobId("1-a.job".into())).unwrap();
        let (targets, invalid) = job.targets();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].url().as_str(), "https://t.example/0.png");
        assert_eq!(invalid, 1);
    }
}
