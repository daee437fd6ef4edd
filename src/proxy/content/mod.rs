//! Decides which remote bodies may be served to mail readers, and in what form.
//!
//! This module owns the public surface: the [`ContentPolicy`] the operator sets, the
//! [`Kind`]s that may be served, the [`Sanitized`] result, the [`ContentError`] refusals,
//! and [`sanitize`], which sniffs a body and hands it to the checker for its kind. The
//! checks themselves live in the sub-modules:
//!
//! - `sniff`: the kind of a body, from its magic bytes only (the upstream `Content-Type`
//!   is written by a stranger and is never consulted); that is also the type allowlist;
//! - `raster`: static images (bounded decoding, re-encoding), the decoder limits and
//!   tracking-pixel detection;
//! - `animation`: GIF and WebP, walked frame by frame under frame and pixel caps;
//! - `font`: structural checks of WOFF, WOFF2 and bare sfnt containers;
//! - `svg`: the policy switch for SVG documents.
//!
//! The bytes come from hostile servers, so every image is fully decoded under
//! [`ContentPolicy`] limits before anything is served: the dimensions are read
//! from the header and checked *before* any pixel buffer exists (so
//! decompression bombs cost a header parse), and the decoded size is checked
//! against `max_alloc` before the pixel buffer is allocated. Static images are
//! then re-encoded from pixels, which drops EXIF/XMP/ICC/text metadata and any
//! byte-level trick aimed at the reader's own image decoder.
//!
//! Pure: no I/O, no logging, no async. [`sanitize`] is CPU-bound and is meant
//! to be called inside `tokio::task::spawn_blocking`. Serving the result (headers, cache)
//! is the proxy's business.

// The bytes are hostile: a panic here would be a remote crash, so the panicking
// shortcuts are refused by the linter for the module and its sub-modules (tests may
// unwrap per clippy.toml, and opt back in to indexing where they cut samples).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod animation;
mod font;
mod raster;
mod sniff;
mod svg;
#[cfg(test)]
mod testutil;

/// What may be served and how images are checked.
#[derive(Debug, Clone)]
pub struct ContentPolicy {
    /// Widest image accepted, read from the header before decoding (default 8192).
    pub max_width: u32,
    /// Tallest image accepted, read from the header before decoding (default 8192).
    pub max_height: u32,
    /// Bytes the decoder may allocate; the decoded pixel buffer counts (default 128 MiB).
    pub max_alloc: u64,
    /// Re-encode static images (drops metadata); animated GIF/WebP are fully
    /// decoded to validate, then served as received.
    pub reencode: bool,
    /// Serve SVG (as image/svg+xml), unchanged. Off by default: SVG is a
    /// document that can script/load.
    pub allow_svg: bool,
}

impl Default for ContentPolicy {
    fn default() -> Self {
        Self {
            max_width: 8192,
            max_height: 8192,
            max_alloc: 128 * 1024 * 1024,
            reencode: true,
            allow_svg: false,
        }
    }
}

/// Sniffed kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PNG (`\x89PNG\r\n\x1a\n`); APNG is flattened to its default image.
    Png,
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// GIF (`GIF87a` / `GIF89a`).
    Gif,
    /// WebP (`RIFF....WEBP`), lossy or lossless, static or animated.
    WebP,
    /// Windows icon (`00 00 01 00`).
    Ico,
    /// Windows bitmap (`BM`).
    Bmp,
    /// WOFF 1.0 font (`wOFF`).
    Woff,
    /// WOFF 2.0 font (`wOF2`).
    Woff2,
    /// TrueType font (`00 01 00 00` or `true`).
    Ttf,
    /// OpenType/CFF font (`OTTO`).
    Otf,
    /// SVG document: root `<svg>` element within the first 1 KiB.
    Svg,
}

impl Kind {
    /// The `Content-Type` to serve a body of this kind with.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Png => "image/png",
            Kind::Jpeg => "image/jpeg",
            Kind::Gif => "image/gif",
            Kind::WebP => "image/webp",
            Kind::Ico => "image/x-icon",
            Kind::Bmp => "image/bmp",
            Kind::Woff => "font/woff",
            Kind::Woff2 => "font/woff2",
            Kind::Ttf => "font/ttf",
            Kind::Otf => "font/otf",
            Kind::Svg => "image/svg+xml",
        }
    }
}

/// A body that passed the checks, ready to serve.
#[derive(Debug, Clone)]
pub struct Sanitized {
    /// The bytes to serve (re-encoded, or the original when allowed unchanged).
    pub body: Vec<u8>,
    /// Kind of `body` (may differ from the input's, e.g. a static WebP re-encoded as PNG).
    pub kind: Kind,
    /// Image width (None for fonts and SVG).
    pub width: Option<u32>,
    /// Image height (None for fonts and SVG).
    pub height: Option<u32>,
    /// Decodes to at most 2x2 pixels, or every pixel fully transparent: a tracking pixel.
    pub is_pixel: bool,
}

impl Sanitized {
    /// A document passed through unchanged (fonts, SVG): no pixels, so no size and never
    /// a tracking pixel.
    fn unchanged(bytes: &[u8], kind: Kind) -> Self {
        Sanitized {
            body: bytes.to_vec(),
            kind,
            width: None,
            height: None,
            is_pixel: false,
        }
    }
}

/// Why a body may not be served. The caller serves a neutral response instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Not a type we serve (HTML, JSON, PDF, font collections, unknown…).
    #[error("content type not allowed")]
    NotAllowed,
    /// SVG while `allow_svg` is off.
    #[error("svg refused by policy")]
    SvgRefused,
    /// Dimensions over the limits (checked from the header BEFORE decoding pixels).
    #[error("image too large: {width}x{height}")]
    TooLarge {
        /// Width declared by the header.
        width: u32,
        /// Height declared by the header.
        height: u32,
    },
    /// Decoder refused, ran over `max_alloc` or an animation cap, or a font header is malformed.
    #[error("decode failed: {0}")]
    Decode(String),
    /// Empty body.
    #[error("empty body")]
    Empty,
}

/// Sniffs, checks and (per policy) re-encodes `bytes`.
///
/// # Errors
/// See [`ContentError`]; the caller serves a neutral response, never the bytes.
pub fn sanitize(bytes: &[u8], policy: &ContentPolicy) -> Result<Sanitized, ContentError> {
    if bytes.is_empty() {
        return Err(ContentError::Empty);
    }
    let kind = sniff::sniff(bytes).ok_or(ContentError::NotAllowed)?;
    match kind {
        Kind::Woff | Kind::Woff2 | Kind::Ttf | Kind::Otf => font::sanitize_font(bytes, kind),
        Kind::Svg => svg::sanitize_svg(bytes, policy),
        Kind::Gif => animation::sanitize_gif(bytes, policy),
        Kind::WebP => animation::sanitize_webp(bytes, policy),
        Kind::Png | Kind::Jpeg | Kind::Ico | Kind::Bmp => {
            raster::sanitize_static(bytes, kind, policy)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::policy;
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(Kind::Png.content_type(), "image/png");
        assert_eq!(Kind::Ico.content_type(), "image/x-icon");
        assert_eq!(Kind::Woff2.content_type(), "font/woff2");
        assert_eq!(Kind::Otf.content_type(), "font/otf");
        assert_eq!(Kind::Svg.content_type(), "image/svg+xml");
    }

    #[test]
    fn html_json_pdf_and_empty_refused() {
        let html =
            b"<!DOCTYPE html><html><head><title>x</title></head><body><img src=x></body></html>";
        assert_eq!(
            sanitize(html, &policy()).unwrap_err(),
            ContentError::NotAllowed
        );
        assert_eq!(
            sanitize(b"{\"a\":1}", &policy()).unwrap_err(),
            ContentError::NotAllowed
        );
        assert_eq!(
            sanitize(b"%PDF-1.7\n%...", &policy()).unwrap_err(),
            ContentError::NotAllowed
        );
        assert_eq!(sanitize(b"", &policy()).unwrap_err(), ContentError::Empty);
        assert_eq!(
            sanitize(b"  \n", &policy()).unwrap_err(),
            ContentError::NotAllowed
        );
    }

    #[test]
    fn html_whatever_upstream_claimed_is_refused() {
        // An upstream saying `Content-Type: image/png` never reaches us: only bytes do.
        let html = b"\n\n<html><script>alert(1)</script></html>";
        assert_eq!(sniff::sniff(html), None);
        assert_eq!(
            sanitize(html, &policy()).unwrap_err(),
            ContentError::NotAllowed
        );
    }
}
