//! The kind of a body, from its bytes alone.
//!
//! Owns the magic-byte table and the SVG root-element test, and so the type allowlist:
//! what sniffs as no [`Kind`] is never served. Whether a body of a sniffed kind is sound
//! is left to the checker of that kind (`raster`, `animation`, `font`, `svg`).

use super::Kind;

/// The root `<svg` element must start within this many bytes.
const SVG_SNIFF_WINDOW: usize = 1024;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The kind of `bytes`, from magic bytes only; [`super::sanitize`] dispatches on it.
///
/// TrueType collections (`ttcf`) and UTF-16 SVG give `None`: they are not
/// served (collections are not web fonts in practice; refusing is simpler than
/// checking every member font).
#[must_use]
pub(super) fn sniff(bytes: &[u8]) -> Option<Kind> {
    sniff_magic(bytes).or_else(|| looks_like_svg(bytes).then_some(Kind::Svg))
}

/// Binary signatures, all at offset 0 (WebP also at offset 8).
fn sniff_magic(bytes: &[u8]) -> Option<Kind> {
    const MAGIC: [(&[u8], Kind); 11] = [
        (b"\x89PNG\r\n\x1a\n", Kind::Png),
        (b"\xFF\xD8\xFF", Kind::Jpeg),
        (b"GIF87a", Kind::Gif),
        (b"GIF89a", Kind::Gif),
        (b"\x00\x00\x01\x00", Kind::Ico),
        (b"BM", Kind::Bmp),
        (b"wOFF", Kind::Woff),
        (b"wOF2", Kind::Woff2),
        (b"\x00\x01\x00\x00", Kind::Ttf),
        (b"true", Kind::Ttf),
        (b"OTTO", Kind::Otf),
    ];
    if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP".as_slice()) {
        return Some(Kind::WebP);
    }
    MAGIC
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|&(_, kind)| kind)
}

/// True when, after an optional UTF-8 BOM, whitespace, XML declaration,
/// comments and a DOCTYPE, the root element is `<svg` within the first 1 KiB.
///
/// Looking for the root element rather than "contains `<svg`" keeps XHTML
/// pages with inline SVG out, and a DOCTYPE with an internal subset (entity
/// definitions: billion-laughs/XXE material) does not parse as a prolog item,
/// so such documents are refused too.
fn looks_like_svg(bytes: &[u8]) -> bool {
    let window = bytes.get(..SVG_SNIFF_WINDOW).unwrap_or(bytes);
    let mut rest = window.strip_prefix(UTF8_BOM).unwrap_or(window);
    loop {
        rest = rest.trim_ascii_start();
        if starts_with_ignore_case(rest, b"<svg") {
            return rest
                .get(4)
                .is_some_and(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/');
        }
        match skip_prolog_item(rest) {
            Some(after) => rest = after,
            None => return false,
        }
    }
}

/// Skips one `<?…?>`, `<!--…-->` or `<!…>` at the start of `rest`.
fn skip_prolog_item(rest: &[u8]) -> Option<&[u8]> {
    let (open, close): (&[u8], &[u8]) = if rest.starts_with(b"<!--") {
        (b"<!--", b"-->")
    } else if rest.starts_with(b"<?") {
        (b"<?", b"?>")
    } else if rest.starts_with(b"<!") {
        (b"<!", b">")
    } else {
        return None;
    };
    let body = rest.get(open.len()..)?;
    let end = body.windows(close.len()).position(|w| w == close)?;
    body.get(end + close.len()..)
}

fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_recognises_every_magic() {
        let cases: [(&[u8], Option<Kind>); 14] = [
            (b"\x89PNG\r\n\x1a\nrest", Some(Kind::Png)),
            (b"\xFF\xD8\xFF\xE0", Some(Kind::Jpeg)),
            (b"GIF87a..", Some(Kind::Gif)),
            (b"GIF89a..", Some(Kind::Gif)),
            (b"RIFF\x10\x00\x00\x00WEBPVP8L", Some(Kind::WebP)),
            (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
            (b"\x00\x00\x01\x00\x01\x00", Some(Kind::Ico)),
            (b"BM\x00\x00", Some(Kind::Bmp)),
            (b"wOFF\x00\x01", Some(Kind::Woff)),
            (b"wOF2\x00\x01", Some(Kind::Woff2)),
            (b"\x00\x01\x00\x00\x00\x01", Some(Kind::Ttf)),
            (b"true\x00\x01", Some(Kind::Ttf)),
            (b"OTTO\x00\x01", Some(Kind::Otf)),
            (b"ttcf\x00\x01\x00\x00", None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(sniff(bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn sniff_svg_variants() {
        assert_eq!(
            sniff(b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
            Some(Kind::Svg)
        );
        assert_eq!(sniff(b"\xEF\xBB\xBF \n<SVG>"), Some(Kind::Svg));
        let prolog = b"<?xml version=\"1.0\"?>\n<!-- Generator: x -->\n<!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG 1.1//EN\" \"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd\">\n<svg width=\"1\"></svg>";
        assert_eq!(sniff(prolog), Some(Kind::Svg));
        // Root element must be svg: XHTML with inline SVG is not SVG.
        let xhtml = b"<?xml version=\"1.0\"?><html><body><svg></svg></body></html>";
        assert_eq!(sniff(xhtml), None);
        // Entity definitions (internal subset) are not accepted.
        let entities =
            b"<?xml version=\"1.0\"?><!DOCTYPE svg [<!ENTITY a \"aaaa\">]><svg>&a;</svg>";
        assert_eq!(sniff(entities), None);
        // Root beyond the 1 KiB window.
        let mut late = b"<!--".to_vec();
        late.extend(std::iter::repeat_n(b'x', 2000));
        late.extend_from_slice(b"--><svg></svg>");
        assert_eq!(sniff(&late), None);
        assert_eq!(sniff(b"<svgfoo>"), None);
    }
}
