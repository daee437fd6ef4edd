//! Web fonts (WOFF 1.0, WOFF 2.0, bare TrueType/OpenType): the container's header and
//! table directory are checked, then the bytes pass through unchanged.
//!
//! Fonts cannot be re-encoded here, so only their container is checked; the reader's
//! font sanitizer (e.g. OTS in browsers) does the deep validation. Recognising a font
//! (and refusing collections) is `sniff`'s job.

use super::{ContentError, Kind, Sanitized};

/// Most sfnt tables a font may declare; real fonts have a few dozen.
const MAX_FONT_TABLES: u16 = 256;
/// Fixed header sizes of the font containers we check.
const WOFF_HEADER_LEN: usize = 44;
const WOFF2_HEADER_LEN: usize = 48;
const SFNT_HEADER_LEN: usize = 12;
/// Table directory entry sizes (WOFF 1.0 and sfnt); WOFF2's are variable.
const WOFF_TABLE_ENTRY_LEN: usize = 20;
const SFNT_TABLE_ENTRY_LEN: usize = 16;
/// sfnt versions a font (or a WOFF flavor) may declare. `ttcf` is not among
/// them: collections are refused (see `sniff`).
const SFNT_VERSIONS: [&[u8; 4]; 3] = [b"\x00\x01\x00\x00", b"true", b"OTTO"];

/// Checks the container of a font of `kind` and passes it through unchanged.
///
/// # Errors
/// [`ContentError::Decode`] when the header or table directory is malformed.
pub(super) fn sanitize_font(bytes: &[u8], kind: Kind) -> Result<Sanitized, ContentError> {
    let checked = match kind {
        Kind::Woff => check_woff(bytes),
        Kind::Woff2 => check_woff2(bytes),
        _ => check_sfnt(bytes),
    };
    checked.map_err(|why| ContentError::Decode(format!("font: {why}")))?;
    Ok(Sanitized::unchanged(bytes, kind))
}

/// WOFF 1.0: 44-byte header, `length` equals the body, sane table directory.
fn check_woff(bytes: &[u8]) -> Result<(), &'static str> {
    let tables = check_woff_header(bytes, WOFF_HEADER_LEN)?;
    let directory_end = WOFF_HEADER_LEN + usize::from(tables) * WOFF_TABLE_ENTRY_LEN;
    if directory_end > bytes.len() {
        return Err("table directory past end");
    }
    Ok(())
}

/// WOFF 2.0: 48-byte header and `length` equals the body; its table directory
/// is variable-length, so the compressed stream must at least fit.
fn check_woff2(bytes: &[u8]) -> Result<(), &'static str> {
    check_woff_header(bytes, WOFF2_HEADER_LEN)?;
    let compressed = be_u32(bytes, 20).ok_or("short header")?;
    if u64::from(compressed) + WOFF2_HEADER_LEN as u64 > bytes.len() as u64 {
        return Err("compressed data past end");
    }
    Ok(())
}

/// Fields WOFF 1.0 and 2.0 share; returns numTables.
fn check_woff_header(bytes: &[u8], header_len: usize) -> Result<u16, &'static str> {
    if bytes.len() < header_len {
        return Err("short header");
    }
    let flavor = bytes.get(4..8).ok_or("short header")?;
    if !SFNT_VERSIONS.iter().any(|v| v.as_slice() == flavor) {
        return Err("unknown flavor");
    }
    let length = be_u32(bytes, 8).ok_or("short header")?;
    if u64::from(length) != bytes.len() as u64 {
        return Err("length field does not match body");
    }
    if be_u16(bytes, 14) != Some(0) {
        return Err("reserved field set");
    }
    table_count(bytes, 12)
}

/// Bare sfnt (TTF/OTF): sane numTables and every table inside the body.
fn check_sfnt(bytes: &[u8]) -> Result<(), &'static str> {
    let tables = table_count(bytes, 4)?;
    (0..usize::from(tables)).try_for_each(|index| {
        let record = SFNT_HEADER_LEN + index * SFNT_TABLE_ENTRY_LEN;
        let offset = be_u32(bytes, record + 8).ok_or("table directory past end")?;
        let length = be_u32(bytes, record + 12).ok_or("table directory past end")?;
        if u64::from(offset) + u64::from(length) > bytes.len() as u64 {
            return Err("table past end");
        }
        Ok(())
    })
}

fn table_count(bytes: &[u8], at: usize) -> Result<u16, &'static str> {
    match be_u16(bytes, at) {
        Some(n @ 1..=MAX_FONT_TABLES) => Ok(n),
        Some(_) => Err("implausible table count"),
        None => Err("short header"),
    }
}

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let raw = bytes.get(at..at.checked_add(2)?)?;
    raw.try_into().ok().map(u16::from_be_bytes)
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    raw.try_into().ok().map(u32::from_be_bytes)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // Sample surgery; a panic fails the test.
mod tests {
    use super::super::sanitize;
    use super::super::testutil::policy;
    use super::*;

    /// Minimal sfnt: offset table + one table record pointing at 4 bytes.
    fn sfnt(version: &[u8; 4]) -> Vec<u8> {
        let mut out = version.to_vec();
        out.extend_from_slice(&[0, 1, 0, 16, 0, 0, 0, 0]); // numTables=1, search fields
        out.extend_from_slice(b"head");
        out.extend_from_slice(&[0, 0, 0, 0]); // checksum
        out.extend_from_slice(&28u32.to_be_bytes()); // offset
        out.extend_from_slice(&4u32.to_be_bytes()); // length
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }

    /// WOFF (1 or 2) header, one table entry's worth of padding, and a
    /// `length` field that matches the body.
    fn woff(signature: &[u8; 4], header_len: usize) -> Vec<u8> {
        let total = header_len + WOFF_TABLE_ENTRY_LEN;
        let mut out = signature.to_vec();
        out.extend_from_slice(b"\x00\x01\x00\x00"); // flavor: TrueType
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0]); // numTables=1, reserved=0
        out.resize(total, 0);
        out
    }

    #[test]
    fn fonts_pass_through_unchanged() {
        let cases = [
            (woff(b"wOFF", WOFF_HEADER_LEN), Kind::Woff),
            (woff(b"wOF2", WOFF2_HEADER_LEN), Kind::Woff2),
            (sfnt(b"\x00\x01\x00\x00"), Kind::Ttf),
            (sfnt(b"true"), Kind::Ttf),
            (sfnt(b"OTTO"), Kind::Otf),
        ];
        for (bytes, kind) in cases {
            let out = sanitize(&bytes, &policy()).unwrap();
            assert_eq!((out.kind, &out.body), (kind, &bytes));
            assert_eq!((out.width, out.height, out.is_pixel), (None, None, false));
        }
    }

    #[test]
    fn malformed_fonts_refused() {
        let mut long = woff(b"wOFF", WOFF_HEADER_LEN);
        long.push(0); // length field no longer matches
        let mut no_tables = sfnt(b"OTTO");
        no_tables[4..6].copy_from_slice(&[0, 0]);
        let mut table_past_end = sfnt(b"OTTO");
        table_past_end[24..28].copy_from_slice(&1000u32.to_be_bytes());
        let mut bad_flavor = woff(b"wOF2", WOFF2_HEADER_LEN);
        bad_flavor[4..8].copy_from_slice(b"ttcf");
        for bytes in [
            long,
            no_tables,
            table_past_end,
            bad_flavor,
            b"wOFF".to_vec(),
        ] {
            assert!(matches!(
                sanitize(&bytes, &policy()),
                Err(ContentError::Decode(_))
            ));
        }
        let ttc = b"ttcf\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x00\x10";
        assert_eq!(
            sanitize(ttc, &policy()).unwrap_err(),
            ContentError::NotAllowed
        );
    }
}
