//! Keys, entries and index records: what the cache knows about one URL.
//!
//! Owns the URL key (BLAKE3 of the URL, so the disk never holds a tracking URL
//! in clear), the checks that make a fetched body an [`Entry`] safe to serve,
//! and the JSON index record, in memory ([`Record`]) and in its exact on-disk
//! encoding. Where records are stored and how they are read back is `disk`'s
//! business; which ones to delete is `evict`'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{CacheError, Entry, NewEntry};

/// Longest content type accepted (it ends up in an HTTP header).
const MAX_CONTENT_TYPE_LEN: usize = 100;
/// Served when a fetched entry could not be stored and its type is unusable.
pub(super) const FALLBACK_CONTENT_TYPE: &str = "application/octet-stream";

/// BLAKE3 of a URL: the index key, on disk and in memory.
pub(super) type Key = [u8; 32];

/// The index key of `url`.
pub(super) fn url_key(url: &str) -> Key {
    *blake3::hash(url.as_bytes()).as_bytes()
}

/// Hex of a URL key, for file names and logs (never the URL itself).
pub(super) fn key_hex(key: &Key) -> String {
    blake3::Hash::from(*key).to_hex().to_string()
}

/// Size of an entry's body, the unit of both the memory and the disk budget.
pub(super) fn body_size(entry: &Entry) -> u64 {
    entry.body.len() as u64
}

/// Builds an entry from a fetch, and the record that indexes it, rejecting
/// content types that are unsafe to echo into a header. Time is truncated to
/// what the record can hold.
pub(super) fn make_entry(
    new: NewEntry,
    fetched_at: SystemTime,
) -> Result<(Entry, Record), CacheError> {
    if !valid_content_type(&new.content_type) {
        return Err(CacheError::InvalidContentType);
    }
    let is_pixel = new.is_pixel;
    let fetched_at = unix_secs(fetched_at);
    let entry = entry_of(new.body, new.content_type, from_unix_secs(fetched_at));
    let record = Record {
        object: entry.hash,
        content_type: entry.content_type.clone(),
        size: body_size(&entry),
        fetched_at,
        is_pixel,
    };
    Ok((entry, record))
}

/// An entry that could not be stored; still safe to serve.
pub(super) fn unstored_entry(new: NewEntry) -> Entry {
    let content_type = if valid_content_type(&new.content_type) {
        new.content_type
    } else {
        FALLBACK_CONTENT_TYPE.to_owned()
    };
    entry_of(new.body, content_type, SystemTime::now())
}

fn entry_of(body: Bytes, content_type: String, fetched_at: SystemTime) -> Entry {
    Entry {
        hash: blake3::hash(&body),
        body,
        content_type,
        fetched_at,
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

/// Whole seconds since the epoch (0 before it): the resolution of records and eviction.
pub(super) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// On-disk form of an index record. Field order is the file format.
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
pub(super) struct Record {
    /// BLAKE3 of the body: the object file's name.
    pub(super) object: blake3::Hash,
    /// Validated `type/subtype`.
    pub(super) content_type: String,
    /// Length of the body in bytes.
    pub(super) size: u64,
    /// Fetch time in whole seconds since the epoch.
    pub(super) fetched_at: u64,
    /// The fetcher judged the image a tracking pixel. Stored, not served.
    pub(super) is_pixel: bool,
}

impl Record {
    /// The JSON stored in the index file.
    pub(super) fn encode(&self) -> Result<Vec<u8>, CacheError> {
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
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
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

    /// The entry this record describes, given its body (already verified against `object`).
    pub(super) fn into_entry(self, body: Bytes) -> Entry {
        Entry {
            body,
            content_type: self.content_type,
            hash: self.object,
            fetched_at: from_unix_secs(self.fetched_at),
        }
    }
}

/// Parses a canonical (lowercase, 64-digit) hex name.
pub(super) fn parse_hex_name(name: &str) -> Option<[u8; 32]> {
    let hash = blake3::Hash::from_hex(name).ok()?;
    (hash.to_hex().as_str() == name).then(|| *hash.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::proxy::cache::disk::read_record;
    use crate::proxy::cache::testing::{has_record, image, layout, open};

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
        assert!(!has_record(&cache, "https://c.example/"));
    }

    #[test]
    fn fallback_content_type_is_itself_valid() {
        assert!(valid_content_type(FALLBACK_CONTENT_TYPE));
    }

    /// The index file format, byte for byte: stores written before must stay readable.
    #[test]
    fn record_encoding_is_stable() {
        let fetched_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        let (_, record) = make_entry(image(b"abc"), fetched_at).expect("entry");
        let expected = format!(
            "{{\"object\":\"{}\",\"content_type\":\"image/png\",\"size\":3,\
             \"fetched_at\":1700000000,\"is_pixel\":false}}",
            blake3::hash(b"abc").to_hex()
        );
        let encoded = record.encode().expect("encode");
        assert_eq!(String::from_utf8(encoded.clone()).expect("utf8"), expected);
        let decoded = Record::decode(&encoded).expect("decode");
        assert_eq!(decoded.encode().expect("encode"), encoded);
        let extra = expected.replace('}', ",\"extra\":1}");
        assert!(Record::decode(extra.as_bytes()).is_none());
    }

    #[tokio::test]
    async fn pixel_flag_is_kept_in_the_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = open(tmp.path());
        let url = "https://t.example/open.gif";
        let pixel = NewEntry {
            is_pixel: true,
            ..image(b"GIF89a")
        };
        cache.put(url, pixel).await.expect("put");
        let record = read_record(layout(&cache), &url_key(url))
            .expect("read")
            .expect("record");
        assert!(record.is_pixel);
        let text = fs::read_to_string(layout(&cache).record_path(&url_key(url))).expect("read");
        assert!(text.ends_with("\"is_pixel\":true}"), "{text}");
    }
}
