//! TEMPORARY stub, replaced by the real module.
#![allow(missing_docs)]
#[derive(Debug, Clone, Default)]
pub struct MimeLimits { pub max_encoded_depth: usize, pub max_html_parts: usize }
#[derive(Debug, thiserror::Error)]
pub enum MimeError { #[error("no header section found")] NoHeaders, #[error("html: {0}")] Html(String) }
pub struct MimeOutcome { pub message: Vec<u8>, pub html_parts: usize, pub skipped_parts: usize }
pub fn rewrite_html_parts(raw: &[u8], _l: &MimeLimits, _f: &mut dyn FnMut(&str) -> Result<String, String>) -> Result<MimeOutcome, MimeError> { Ok(MimeOutcome{message: raw.to_vec(), html_parts: 0, skipped_parts: 0}) }
pub fn prepend_header(raw: &[u8], name: &str, value: &str) -> Vec<u8> { let mut v = format!("{name}: {value}\r\n").into_bytes(); v.extend_from_slice(raw); v }
