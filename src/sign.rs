//! Signed proxy URLs: `{public_url}/i/{tag}/{target}`.
//!
//! `target` is the remote URL in unpadded base64url; `tag` is the first 128 bits of the
//! keyed BLAKE3 hash of a domain-separation prefix and the target, also base64url. The
//! server only ever fetches a target that came out of [`Signer::verify`], which is the
//! only way to obtain a [`SignedUrl`]. One key signs; earlier keys still verify, so keys
//! can be rotated without breaking mail already delivered.
//!
//! This module also loads and creates key files; it does no network I/O.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use url::Url;

use crate::fsutil::{self, Durability};
use crate::weburl::WebUrl;

/// Bytes of MAC carried in a URL (128 bits).
const TAG_LEN: usize = 16;
/// Separates our MACs from any other use of the same key.
const DOMAIN: &[u8] = b"mailveil proxy url v1\0";
/// Longest target URL accepted when verifying, to bound work per request.
const MAX_TARGET_LEN: usize = 8 * 1024;

/// Why a key could not be loaded or a URL could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file could not be read or created.
    #[error("key file {path}: {error}")]
    KeyIo {
        /// The file at fault.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The key file does not hold 64 hex digits.
    #[error("key file {path}: expected 64 hex digits (generate one with `mailveil keygen`)")]
    KeyFormat {
        /// The file at fault.
        path: String,
    },
    /// The path is not of the form `/i/{tag}/{target}`.
    #[error("not a proxy path")]
    Malformed,
    /// No key produced this tag.
    #[error("bad signature")]
    BadSignature,
    /// The signed target is not an http or https URL.
    #[error("signed target is not an http(s) url")]
    BadTarget,
}

/// A 256-bit signing key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key from the operating system's generator.
    ///
    /// # Errors
    /// When the OS has no randomness to give.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Parses 64 hex digits (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Option<Self> {
        // A key is 32 bytes, like a BLAKE3 hash: its hex codec does the job.
        let hash = blake3::Hash::from_hex(text.trim()).ok()?;
        Some(Self(*hash.as_bytes()))
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Reads a key file.
    ///
    /// # Errors
    /// [`SignError::KeyIo`] or [`SignError::KeyFormat`].
    pub fn load(path: &Path) -> Result<Self, SignError> {
        let text = std::fs::read_to_string(path).map_err(|source| key_io(path, source))?;
        Self::from_hex(&text).ok_or_else(|| SignError::KeyFormat {
            path: path.display().to_string(),
        })
    }

    /// Reads a key file, creating it (mode 0600, parent directories 0700) with a new random
    /// key if it does not exist. Safe against concurrent first use: the file appears whole
    /// (written to a temporary name, then linked into place), and if another process wins
    /// the race its key is the one used.
    ///
    /// # Errors
    /// [`SignError::KeyIo`] or [`SignError::KeyFormat`].
    pub fn load_or_create(path: &Path) -> Result<Self, SignError> {
        match std::fs::metadata(path) {
            Ok(_) => return Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_io(path, e)),
        }
        let key =
            Self::generate().map_err(|e| key_io(path, std::io::Error::other(e.to_string())))?;
        write_new_key_file(path, &key).map_err(|e| key_io(path, e))?;
        Self::load(path)
    }
}

fn key_io(path: &Path, error: std::io::Error) -> SignError {
    SignError::KeyIo {
        path: path.display().to_string(),
        error,
    }
}

fn write_new_key_file(path: &Path, key: &Key) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // If another process won the race, its key is the one every process uses.
    fsutil::create(
        path,
        format!("{}\n", key.to_hex()).as_bytes(),
        0o600,
        Durability::Synced,
    )
    .map(|_created| ())
}

/// A target URL whose signature verified. Only [`Signer::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUrl {
    target: Url,
}

impl SignedUrl {
    /// The remote URL the signature vouches for.
    pub fn target(&self) -> &Url {
        &self.target
    }
}

/// A remote URL mailveil vouches for, and so the only kind of URL the proxy's fetch path
/// takes: a [`SignedUrl`] whose signature verified, or a URL the daemon's own prefetch
/// spool holds (written there by the filter, the milter or the API right after the engine
/// signed it). Sealed: no other type can claim it.
pub trait FetchTarget: sealed::Sealed {
    /// The remote URL.
    fn url(&self) -> &Url;
}

pub(crate) mod sealed {
    /// Implemented only by the crate's vouched-for URL types.
    pub trait Sealed {}
}

impl sealed::Sealed for SignedUrl {}

impl FetchTarget for SignedUrl {
    fn url(&self) -> &Url {
        &self.target
    }
}

/// Signs and verifies proxy URLs.
#[derive(Debug, Clone)]
pub struct Signer {
    current: Key,
    previous: Vec<Key>,
    /// `public_url` without a trailing slash, followed by `/i/`.
    prefix: String,
}

impl Signer {
    /// A signer producing URLs under `public_url`, signing with `current` and also accepting
    /// `previous` keys when verifying.
    pub fn new(public_url: &Url, current: Key, previous: Vec<Key>) -> Self {
        let base = public_url.as_str().trim_end_matches('/');
        Self {
            current,
            previous,
            prefix: format!("{base}/i/"),
        }
    }

    /// The prefix every proxy URL starts with (`{public_url}/i/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The proxy URL for `target`, a parsed [`Url`] or a [`WebUrl`].
    pub fn sign<'u>(&self, target: impl Into<WebUrl<'u>>) -> String {
        let target = target.into();
        let tag = mac(&self.current, target.as_str());
        let mut out =
            String::with_capacity(self.prefix.len() + 24 + target.as_str().len() * 4 / 3 + 4);
        out.push_str(&self.prefix);
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        out.push('/');
        URL_SAFE_NO_PAD.encode_string(target.as_str(), &mut out);
        out
    }

    /// Verifies the path part of a proxy URL (`/i/{tag}/{target}`, as the server sees it) and
    /// returns the target only if some key produced the tag. The comparison is constant-time.
    ///
    /// # Errors
    /// [`SignError::Malformed`], [`SignError::BadSignature`] or [`SignError::BadTarget`].
    pub fn verify(&self, path: &str) -> Result<SignedUrl, SignError> {
        let rest = path.strip_prefix("/i/").ok_or(SignError::Malformed)?;
        let (tag_text, target_text) = rest.split_once('/').ok_or(SignError::Malformed)?;
        if target_text.len() > MAX_TARGET_LEN * 4 / 3 + 4 {
            return Err(SignError::Malformed);
        }
        let mut tag = [0u8; TAG_LEN];
        match URL_SAFE_NO_PAD.decode_slice(tag_text, &mut tag) {
            Ok(TAG_LEN) => {}
            _ => return Err(SignError::Malformed),
        }
        let target_bytes = URL_SAFE_NO_PAD
            .decode(target_text)
            .map_err(|_| SignError::Malformed)?;
        let target = String::from_utf8(target_bytes).map_err(|_| SignError::Malformed)?;
        let good = std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|key| constant_time_eq::constant_time_eq(&mac(key, &target), &tag));
        if !good {
            return Err(SignError::BadSignature);
        }
        let target = Url::parse(&target).map_err(|_| SignError::BadTarget)?;
        if !matches!(target.scheme(), "http" | "https") {
            return Err(SignError::BadTarget);
        }
        Ok(SignedUrl { target })
    }
}

/// The keyed BLAKE3 of `DOMAIN || target`, truncated. Short inputs (nearly every URL) are
/// hashed in one call from a stack buffer: the incremental hasher's set-up costs more than
/// hashing a hundred bytes. Both paths compute the same function.
fn mac(key: &Key, target: &str) -> [u8; TAG_LEN] {
    const ONE_SHOT: usize = 1024;
    let len = DOMAIN.len() + target.len();
    let hash = if len <= ONE_SHOT {
        let mut buf = [0u8; ONE_SHOT];
        buf[..DOMAIN.len()].copy_from_slice(DOMAIN);
        buf[DOMAIN.len()..len].copy_from_slice(target.as_bytes());
        blake3::keyed_hash(&key.0, &buf[..len])
    } else {
        let mut hasher = blake3::Hasher::new_keyed(&key.0);
        hasher.update(DOMAIN);
        hasher.update(target.as_bytes());
        hasher.finalize()
    };
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
    tag
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; 32])
    }

    fn signer(previous: Vec<Key>) -> Signer {
        let base = Url::parse("https://proxy.example/").unwrap();
        Signer::new(&base, key(7), previous)
    }

    fn path_of(url: &str) -> &str {
        url.strip_prefix("https://proxy.example").unwrap()
    }

    #[test]
    fn blake3_keyed_hash_known_answer() {
        // The official BLAKE3 test vector (input length 0, key "whats the Elvish word for friend").
        let key: [u8; 32] = *b"whats the Elvish word for friend";
        let hash = blake3::keyed_hash(&key, b"");
        assert_eq!(
            hash.to_hex().as_str(),
            "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"
        );
    }

    #[test]
    fn signed_url_known_answer() {
        // Pins the wire format: changing it would break every URL in delivered mail. The tag
        // was computed independently with the Python `blake3` package.
        let target = Url::parse("https://news.example/logo.png").unwrap();
        assert_eq!(
            signer(vec![]).sign(&target),
            "https://proxy.example/i/UwvxxSRuoQ1aWOFn3Lj6bg/aHR0cHM6Ly9uZXdzLmV4YW1wbGUvbG9nby5wbmc"
        );
    }

    #[test]
    fn round_trip_and_tamper() {
        let s = signer(vec![]);
        let target = Url::parse("http://t.example/p.gif?u=1&x=%20").unwrap();
        let signed = s.sign(&target);
        assert_eq!(s.verify(path_of(&signed)).unwrap().target(), &target);

        // Flip one character of the tag (the first, whose bits all count).
        let path = path_of(&signed);
        let first = path.as_bytes()[3];
        let flipped = if first == b'A' { 'B' } else { 'A' };
        let tampered = format!("/i/{flipped}{}", &path[4..]);
        assert!(matches!(s.verify(&tampered), Err(SignError::BadSignature)));

        let other = Url::parse("http://t.example/q.gif").unwrap();
        let (head, _) = path_of(&signed).rsplit_once('/').unwrap();
        let forged = format!("{head}/{}", URL_SAFE_NO_PAD.encode(other.as_str()));
        assert!(matches!(s.verify(&forged), Err(SignError::BadSignature)));
    }

    #[test]
    fn long_targets_take_the_incremental_path_to_the_same_function() {
        let long = format!("https://t.example/{}", "a".repeat(3000));
        let mut hasher = blake3::Hasher::new_keyed(&[7; 32]);
        hasher.update(DOMAIN);
        hasher.update(long.as_bytes());
        assert_eq!(mac(&key(7), &long), hasher.finalize().as_bytes()[..TAG_LEN]);
        let short = "https://t.example/x";
        let mut hasher = blake3::Hasher::new_keyed(&[7; 32]);
        hasher.update(DOMAIN);
        hasher.update(short.as_bytes());
        assert_eq!(mac(&key(7), short), hasher.finalize().as_bytes()[..TAG_LEN]);
    }

    #[test]
    fn malformed_paths() {
        let s = signer(vec![]);
        for p in [
            "",
            "/",
            "/i/",
            "/i/abc",
            "/x/a/b",
            "/i/!!!/aaaa",
            "/i/AAAAAAAAAAAAAAAAAAAAAA/%%%",
        ] {
            assert!(s.verify(p).is_err(), "{p}");
        }
    }

    #[test]
    fn rotation_previous_keys_verify_but_do_not_sign() {
        let target = Url::parse("https://a.example/x.png").unwrap();
        let old = Signer::new(
            &Url::parse("https://proxy.example").unwrap(),
            key(1),
            vec![],
        );
        let old_url = old.sign(&target);
        let rotated = signer(vec![key(1)]);
        assert!(rotated.verify(path_of(&old_url)).is_ok());
        assert_ne!(rotated.sign(&target), old_url);
        assert!(signer(vec![]).verify(path_of(&old_url)).is_err());
    }

    #[test]
    fn non_http_targets_are_refused_even_if_signed() {
        let s = signer(vec![]);
        let target = "file:///etc/passwd";
        let tag = mac(&key(7), target);
        let path = format!(
            "/i/{}/{}",
            URL_SAFE_NO_PAD.encode(tag),
            URL_SAFE_NO_PAD.encode(target)
        );
        assert!(matches!(s.verify(&path), Err(SignError::BadTarget)));
    }

    #[test]
    fn key_file_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let first = Key::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let second = Key::load_or_create(&path).unwrap();
        assert_eq!(first.to_hex(), second.to_hex());
    }

    #[test]
    fn bad_key_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(Key::load(&path), Err(SignError::KeyFormat { .. })));
    }
}
