//! Decides which remote bodies may be served to mail readers, and in what form.
//!
//! This module owns content sniffing (magic bytes only: the upstream
//! `Content-Type` is written by a stranger and is never consulted), the type
//! allowlist, bounded decoding, re-encoding and tracking-pixel detection.
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
//! to be called inside `tokio::task::spawn_blocking`.

// The bytes are hostile: a panic here would be a remote crash, so the panicking
// shortcuts are refused by the linter for the module (tests opt back in).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Cursor;

use ::image::codecs::gif::GifDecoder;
use ::image::codecs::jpeg::JpegEncoder;
use ::image::codecs::png::PngEncoder;
use ::image::codecs::webp::WebPDecoder;
use ::image::metadata::Orientation;
use ::image::{
    AnimationDecoder, DynamicImage, Frames, ImageBuffer, ImageDecoder, ImageFormat, ImageReader,
    Limits, Pixel, Primitive, RgbaImage,
};

/// Frames decoded at most for one animation; a longer one is refused.
const MAX_FRAMES: u32 = 1000;
/// Canvas pixels composited at most over all frames of one animation (CPU bound).
const MAX_ANIMATION_PIXELS: u64 = 100_000_000;
/// Canvas-sized RGBA buffers alive at once while walking an animation
/// (decoder canvas, decoded frame, composited frame, our copy of frame 1).
/// The GIF decoder counts its own, the WebP one does not, so we check up front.
const ANIMATION_BUFFERS: u64 = 4;
/// JPEG re-encoding quality: visually lossless for photos, modest size growth.
const JPEG_QUALITY: u8 = 90;
/// The root `<svg` element must start within this many bytes.
const SVG_SNIFF_WINDOW: usize = 1024;
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
/// them: collections are refused (see [`sniff`]).
const SFNT_VERSIONS: [&[u8; 4]; 3] = [b"\x00\x01\x00\x00", b"true", b"OTTO"];
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

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

    /// The raster decoder for this kind, `None` for fonts and SVG.
    fn raster_format(self) -> Option<ImageFormat> {
        match self {
            Kind::Png => Some(ImageFormat::Png),
            Kind::Jpeg => Some(ImageFormat::Jpeg),
            Kind::Gif => Some(ImageFormat::Gif),
            Kind::WebP => Some(ImageFormat::WebP),
            Kind::Ico => Some(ImageFormat::Ico),
            Kind::Bmp => Some(ImageFormat::Bmp),
            Kind::Woff | Kind::Woff2 | Kind::Ttf | Kind::Otf | Kind::Svg => None,
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
    let kind = sniff(bytes).ok_or(ContentError::NotAllowed)?;
    match kind {
        Kind::Woff | Kind::Woff2 | Kind::Ttf | Kind::Otf => sanitize_font(bytes, kind),
        Kind::Svg => sanitize_svg(bytes, policy),
        Kind::Gif => sanitize_gif(bytes, policy),
        Kind::WebP => sanitize_webp(bytes, policy),
        Kind::Png | Kind::Jpeg | Kind::Ico | Kind::Bmp => sanitize_static(bytes, kind, policy),
    }
}

/// Sniffs only (magic bytes), for logs/metrics.
///
/// TrueType collections (`ttcf`) and UTF-16 SVG give `None`: they are not
/// served (collections are not web fonts in practice; refusing is simpler than
/// checking every member font).
#[must_use]
pub fn sniff(bytes: &[u8]) -> Option<Kind> {
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

// ---------------------------------------------------------------------------
// Static rasters (PNG, JPEG, ICO, BMP, static WebP, single-frame GIF)
// ---------------------------------------------------------------------------

/// Decodes a static image under the limits and re-encodes it if asked.
fn sanitize_static(
    bytes: &[u8],
    kind: Kind,
    policy: &ContentPolicy,
) -> Result<Sanitized, ContentError> {
    let format = kind.raster_format().ok_or(ContentError::NotAllowed)?;
    let image = decode_static(bytes, format, policy)?;
    finish_static(bytes, kind, &image, policy)
}

/// Header first, limits checked, only then the pixels.
fn decode_static(
    bytes: &[u8],
    format: ImageFormat,
    policy: &ContentPolicy,
) -> Result<DynamicImage, ContentError> {
    // The dimension limits are left off this first reader on purpose: the
    // decoder would refuse with an error that does not carry the numbers, and
    // we want `TooLarge { width, height }` for the logs.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits(policy, false));
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    check_dimensions(decoder.dimensions(), policy)?;
    decoder
        .set_limits(limits(policy, true))
        .map_err(decode_error)?;
    // Same check `ImageReader::decode` does: refuse before the buffer exists.
    check_alloc(decoder.total_bytes(), policy)?;
    // Metadata is about to be dropped, so its rotation must be baked in.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Builds the result for a decoded static image.
fn finish_static(
    original: &[u8],
    kind: Kind,
    image: &DynamicImage,
    policy: &ContentPolicy,
) -> Result<Sanitized, ContentError> {
    let (body, kind) = if policy.reencode {
        reencode(image, kind)?
    } else {
        (original.to_vec(), kind)
    };
    Ok(Sanitized {
        body,
        kind,
        width: Some(image.width()),
        height: Some(image.height()),
        is_pixel: is_tracking_pixel(image),
    })
}

/// JPEG stays JPEG (photos); everything else becomes lossless PNG, since the
/// image crate only writes lossless WebP and GIF would need re-quantizing.
fn reencode(image: &DynamicImage, source: Kind) -> Result<(Vec<u8>, Kind), ContentError> {
    let mut out = Vec::new();
    let (written, kind) = if source == Kind::Jpeg {
        let encoder = JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY);
        (image.write_with_encoder(encoder), Kind::Jpeg)
    } else {
        (
            image.write_with_encoder(PngEncoder::new(&mut out)),
            Kind::Png,
        )
    };
    written.map_err(|e| ContentError::Decode(format!("re-encode: {e}")))?;
    Ok((out, kind))
}

// ---------------------------------------------------------------------------
// Possibly animated rasters (GIF, WebP)
// ---------------------------------------------------------------------------

/// GIFs are walked frame by frame: one frame means static (re-encoded),
/// more means animated (validated, served as received).
fn sanitize_gif(bytes: &[u8], policy: &ContentPolicy) -> Result<Sanitized, ContentError> {
    let mut decoder = GifDecoder::new(Cursor::new(bytes)).map_err(decode_error)?;
    let dimensions = decoder.dimensions();
    check_animation_limits(dimensions, policy)?;
    decoder
        .set_limits(limits(policy, true))
        .map_err(decode_error)?;
    let scan = scan_frames(decoder.into_frames(), dimensions)?;
    finish_animation(bytes, Kind::Gif, scan, policy)
}

/// Static WebP takes the static path (re-encoded as PNG); animated WebP is
/// walked frame by frame like a GIF.
fn sanitize_webp(bytes: &[u8], policy: &ContentPolicy) -> Result<Sanitized, ContentError> {
    let mut decoder = WebPDecoder::new(Cursor::new(bytes)).map_err(decode_error)?;
    if !decoder.has_animation() {
        return sanitize_static(bytes, Kind::WebP, policy);
    }
    let dimensions = decoder.dimensions();
    check_animation_limits(dimensions, policy)?;
    decoder
        .set_limits(limits(policy, true))
        .map_err(decode_error)?;
    let scan = scan_frames(decoder.into_frames(), dimensions)?;
    finish_animation(bytes, Kind::WebP, scan, policy)
}

/// Dimensions, then the worst-case buffers of a frame walk against `max_alloc`
/// (the WebP frame iterator does not honour `Limits`, so this is the guard).
fn check_animation_limits(
    dimensions: (u32, u32),
    policy: &ContentPolicy,
) -> Result<(), ContentError> {
    check_dimensions(dimensions, policy)?;
    let canvas = rgba_bytes(dimensions);
    check_alloc(canvas.saturating_mul(ANIMATION_BUFFERS), policy)
}

/// What a full walk over the frames of an animation found.
#[derive(Default)]
struct FrameScan {
    /// Canvas size from the header.
    dimensions: (u32, u32),
    /// Frames decoded.
    count: u32,
    /// Every pixel of the first frame has alpha 0.
    first_transparent: bool,
    /// The first frame, kept only while it is the only one.
    single: Option<RgbaImage>,
}

impl FrameScan {
    fn push(&mut self, frame: RgbaImage) {
        self.count = self.count.saturating_add(1);
        if self.count == 1 {
            self.first_transparent = alpha_all_zero(&frame);
            self.single = Some(frame);
        } else {
            self.single = None;
        }
    }
}

/// Decodes every frame (that is the validation), within the frame and pixel caps.
fn scan_frames(frames: Frames<'_>, dimensions: (u32, u32)) -> Result<FrameScan, ContentError> {
    let mut scan = FrameScan {
        dimensions,
        ..FrameScan::default()
    };
    for frame in frames {
        let frame = frame.map_err(decode_error)?;
        scan.push(frame.into_buffer());
        // Checked after each frame: at most one frame of work past a cap.
        check_frame_caps(scan.count, dimensions)?;
    }
    if scan.count == 0 {
        return Err(ContentError::Decode("no frames".into()));
    }
    Ok(scan)
}

/// Caps the CPU an animation may cost: frame count and composited pixels.
fn check_frame_caps(count: u32, (width, height): (u32, u32)) -> Result<(), ContentError> {
    let pixels = u64::from(width)
        .saturating_mul(u64::from(height))
        .saturating_mul(u64::from(count));
    if count > MAX_FRAMES {
        return Err(ContentError::Decode(format!(
            "more than {MAX_FRAMES} frames"
        )));
    }
    if pixels > MAX_ANIMATION_PIXELS {
        return Err(ContentError::Decode(format!(
            "animation over {MAX_ANIMATION_PIXELS} pixels"
        )));
    }
    Ok(())
}

/// One frame: handled as a static image. More: the original bytes, validated.
fn finish_animation(
    original: &[u8],
    kind: Kind,
    scan: FrameScan,
    policy: &ContentPolicy,
) -> Result<Sanitized, ContentError> {
    if let Some(frame) = scan.single {
        return finish_static(original, kind, &DynamicImage::ImageRgba8(frame), policy);
    }
    let (width, height) = scan.dimensions;
    Ok(Sanitized {
        body: original.to_vec(),
        kind,
        width: Some(width),
        height: Some(height),
        is_pixel: is_tiny(scan.dimensions) || scan.first_transparent,
    })
}

// ---------------------------------------------------------------------------
// Shared limit helpers
// ---------------------------------------------------------------------------

/// `Limits` is `#[non_exhaustive]`, hence field assignment.
fn limits(policy: &ContentPolicy, with_dimensions: bool) -> Limits {
    let mut limits = Limits::no_limits();
    limits.max_alloc = Some(policy.max_alloc);
    if with_dimensions {
        limits.max_image_width = Some(policy.max_width);
        limits.max_image_height = Some(policy.max_height);
    }
    limits
}

fn check_dimensions(
    (width, height): (u32, u32),
    policy: &ContentPolicy,
) -> Result<(), ContentError> {
    if width > policy.max_width || height > policy.max_height {
        return Err(ContentError::TooLarge { width, height });
    }
    if width == 0 || height == 0 {
        return Err(ContentError::Decode(format!(
            "empty image {width}x{height}"
        )));
    }
    Ok(())
}

fn check_alloc(bytes: u64, policy: &ContentPolicy) -> Result<(), ContentError> {
    if bytes > policy.max_alloc {
        return Err(ContentError::Decode(format!(
            "needs {bytes} bytes, over max_alloc {}",
            policy.max_alloc
        )));
    }
    Ok(())
}

fn rgba_bytes((width, height): (u32, u32)) -> u64 {
    u64::from(width)
        .saturating_mul(u64::from(height))
        .saturating_mul(4)
}

fn decode_error(error: ::image::ImageError) -> ContentError {
    ContentError::Decode(error.to_string())
}

// ---------------------------------------------------------------------------
// Tracking pixels
// ---------------------------------------------------------------------------

/// At most 2x2 pixels, or nothing visible.
fn is_tracking_pixel(image: &DynamicImage) -> bool {
    is_tiny((image.width(), image.height())) || fully_transparent(image)
}

fn is_tiny((width, height): (u32, u32)) -> bool {
    u64::from(width).saturating_mul(u64::from(height)) <= 4
}

/// Only the variants with an alpha channel can be invisible.
fn fully_transparent(image: &DynamicImage) -> bool {
    match image {
        DynamicImage::ImageLumaA8(buffer) => alpha_all_zero(buffer),
        DynamicImage::ImageRgba8(buffer) => alpha_all_zero(buffer),
        DynamicImage::ImageLumaA16(buffer) => alpha_all_zero(buffer),
        DynamicImage::ImageRgba16(buffer) => alpha_all_zero(buffer),
        DynamicImage::ImageRgba32F(buffer) => alpha_all_zero(buffer),
        _ => false,
    }
}

/// Alpha is the last channel of every pixel type that has one.
fn alpha_all_zero<P: Pixel>(buffer: &ImageBuffer<P, Vec<P::Subpixel>>) -> bool {
    buffer.pixels().all(|pixel| {
        pixel
            .channels()
            .last()
            .is_some_and(|&alpha| alpha == <P::Subpixel as Primitive>::DEFAULT_MIN_VALUE)
    })
}

// ---------------------------------------------------------------------------
// Fonts and SVG: passed through unchanged after structural checks
// ---------------------------------------------------------------------------

/// Fonts cannot be re-encoded here, so only their container is checked; the
/// reader's font sanitizer (e.g. OTS in browsers) does the deep validation.
fn sanitize_font(bytes: &[u8], kind: Kind) -> Result<Sanitized, ContentError> {
    let checked = match kind {
        Kind::Woff => check_woff(bytes),
        Kind::Woff2 => check_woff2(bytes),
        _ => check_sfnt(bytes),
    };
    checked.map_err(|why| ContentError::Decode(format!("font: {why}")))?;
    Ok(Sanitized {
        body: bytes.to_vec(),
        kind,
        width: None,
        height: None,
        is_pixel: false,
    })
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

/// SVG is served unchanged when allowed: it is a document, not pixels, and
/// cannot be made safe by re-encoding. The caller must serve it with a
/// restrictive CSP (`default-src 'none'; style-src 'unsafe-inline'; sandbox`).
fn sanitize_svg(bytes: &[u8], policy: &ContentPolicy) -> Result<Sanitized, ContentError> {
    if !policy.allow_svg {
        return Err(ContentError::SvgRefused);
    }
    Ok(Sanitized {
        body: bytes.to_vec(),
        kind: Kind::Svg,
        width: None,
        height: None,
        is_pixel: false,
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use ::image::codecs::gif::{GifEncoder, Repeat};
    use ::image::codecs::ico::IcoEncoder;
    use ::image::codecs::webp::WebPEncoder;
    use ::image::{Delay, Frame, Rgba};
    use std::time::{Duration, Instant};

    /// Runs `f`, returning its result and wall time. (Peak memory was measured once with a
    /// counting allocator, ~150 KB for the bombs below; the crate forbids the unsafe code a
    /// global allocator needs, so the tests bound time, which a large allocation would blow.)
    fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration) {
        let start = Instant::now();
        let out = f();
        (out, start.elapsed())
    }

    // --- sample builders ---------------------------------------------------

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn rgba(width: u32, height: u32, alpha: u8) -> DynamicImage {
        DynamicImage::ImageRgba8(RgbaImage::from_fn(width, height, |x, y| {
            Rgba([(x * 40) as u8, (y * 40) as u8, 128, alpha])
        }))
    }

    fn rgb(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(rgba(width, height, 255).to_rgb8())
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        out
    }

    /// LSB-first bit writer, as DEFLATE wants.
    #[derive(Default)]
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        len: u32,
    }

    impl Bits {
        fn put(&mut self, value: u32, count: u32) {
            self.acc |= u64::from(value) << self.len;
            self.len += count;
            while self.len >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.len -= 8;
            }
        }
        /// Huffman codes are sent most-significant bit first.
        fn put_code(&mut self, code: u32, count: u32) {
            let reversed = code.reverse_bits() >> (32 - count);
            self.put(reversed, count);
        }
        fn finish(mut self) -> Vec<u8> {
            if self.len > 0 {
                self.out.push(self.acc as u8);
            }
            self.out
        }
    }

    /// A complete zlib stream inflating to `n` zero bytes (n >= 1): one fixed
    /// Huffman block, a literal 0 then (length 258, distance 1) copies, so
    /// ~13 bits per 258 bytes — the classic bomb ratio.
    fn zlib_zeros(n: u64) -> Vec<u8> {
        let mut bits = Bits::default();
        bits.put(1, 1); // BFINAL
        bits.put(1, 2); // BTYPE = fixed Huffman
        let literal_zero = |bits: &mut Bits| bits.put_code(0x30, 8);
        literal_zero(&mut bits);
        let rest = n - 1;
        for _ in 0..rest / 258 {
            bits.put_code(0xC5, 8); // length code 285 = 258
            bits.put_code(0, 5); // distance code 0 = 1
        }
        for _ in 0..rest % 258 {
            literal_zero(&mut bits);
        }
        bits.put_code(0, 7); // end of block (256)
        let mut out = vec![0x78, 0x01];
        out.extend(bits.finish());
        let adler = ((n % 65521) as u32) << 16 | 1;
        out.extend_from_slice(&adler.to_be_bytes());
        out
    }

    /// RGBA8 PNG declaring `width`x`height`, with `idat` as its only IDAT.
    fn png_with_idat(width: u32, height: u32, idat: &[u8]) -> Vec<u8> {
        let mut ihdr = width.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(png_chunk(b"IHDR", &ihdr));
        png.extend(png_chunk(b"IDAT", idat));
        png.extend(png_chunk(b"IEND", &[]));
        png
    }

    fn animated_gif(frames: u32, width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut out);
            encoder.set_repeat(Repeat::Infinite).unwrap();
            let frames = (0..frames).map(|i| {
                let buffer =
                    RgbaImage::from_pixel(width, height, Rgba([(i % 4) as u8 * 60, 0, 0, 255]));
                Frame::from_parts(buffer, 0, 0, Delay::from_numer_denom_ms(100, 1))
            });
            encoder.encode_frames(frames).unwrap();
        }
        out
    }

    fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_vec();
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
        out
    }

    fn u24(value: u32) -> [u8; 3] {
        let b = value.to_le_bytes();
        [b[0], b[1], b[2]]
    }

    /// Extended WebP (VP8X + ANIM + ANMF) wrapping lossless frames from the
    /// image crate's encoder, which cannot write animations itself.
    fn animated_webp(frames: u32, width: u32, height: u32) -> Vec<u8> {
        let mut vp8x = vec![0x02 | 0x10, 0, 0, 0]; // animation + alpha
        vp8x.extend(u24(width - 1));
        vp8x.extend(u24(height - 1));
        let mut body = b"WEBP".to_vec();
        body.extend(riff_chunk(b"VP8X", &vp8x));
        body.extend(riff_chunk(b"ANIM", &[0, 0, 0, 0, 0, 0]));
        for i in 0..frames {
            let frame = RgbaImage::from_pixel(width, height, Rgba([0, (i % 4) as u8 * 60, 0, 255]));
            let mut still = Vec::new();
            WebPEncoder::new_lossless(&mut still)
                .encode(
                    frame.as_raw(),
                    width,
                    height,
                    ::image::ExtendedColorType::Rgba8,
                )
                .unwrap();
            let mut anmf = [u24(0), u24(0), u24(width - 1), u24(height - 1), u24(100)].concat();
            anmf.push(0);
            anmf.extend_from_slice(&still[12..]); // the VP8L chunk, RIFF header dropped
            body.extend(riff_chunk(b"ANMF", &anmf));
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend(body);
        out
    }

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

    fn policy() -> ContentPolicy {
        ContentPolicy::default()
    }

    fn assert_decodes(sanitized: &Sanitized) -> DynamicImage {
        let format = sanitized.kind.raster_format().unwrap();
        ::image::load_from_memory_with_format(&sanitized.body, format).unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    // --- sniffing ------------------------------------------------------------

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

    #[test]
    fn content_types() {
        assert_eq!(Kind::Png.content_type(), "image/png");
        assert_eq!(Kind::Ico.content_type(), "image/x-icon");
        assert_eq!(Kind::Woff2.content_type(), "font/woff2");
        assert_eq!(Kind::Otf.content_type(), "font/otf");
        assert_eq!(Kind::Svg.content_type(), "image/svg+xml");
    }

    // --- refusals --------------------------------------------------------------

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
        assert_eq!(sniff(html), None);
        assert_eq!(
            sanitize(html, &policy()).unwrap_err(),
            ContentError::NotAllowed
        );
    }

    #[test]
    fn svg_refused_by_default_and_passed_through_when_allowed() {
        let svg = b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>";
        assert_eq!(
            sanitize(svg, &policy()).unwrap_err(),
            ContentError::SvgRefused
        );
        let allow = ContentPolicy {
            allow_svg: true,
            ..policy()
        };
        let out = sanitize(svg, &allow).unwrap();
        assert_eq!(out.kind, Kind::Svg);
        assert_eq!(out.body, svg);
        assert_eq!((out.width, out.height, out.is_pixel), (None, None, false));
    }

    #[test]
    fn truncated_png_is_a_decode_error() {
        let png = encode(&rgb(32, 32), ImageFormat::Png);
        let cut = &png[..png.len() / 2];
        assert!(matches!(
            sanitize(cut, &policy()),
            Err(ContentError::Decode(_))
        ));
    }

    // --- accepted images -----------------------------------------------------

    #[test]
    fn png_reencoded_as_png() {
        let out = sanitize(&encode(&rgb(5, 4), ImageFormat::Png), &policy()).unwrap();
        assert_eq!(out.kind, Kind::Png);
        assert_eq!((out.width, out.height), (Some(5), Some(4)));
        assert!(!out.is_pixel);
        assert_eq!(assert_decodes(&out).to_rgb8(), rgb(5, 4).to_rgb8());
    }

    #[test]
    fn jpeg_reencoded_as_jpeg() {
        let out = sanitize(&encode(&rgb(16, 8), ImageFormat::Jpeg), &policy()).unwrap();
        assert_eq!(out.kind, Kind::Jpeg);
        assert_eq!((out.width, out.height), (Some(16), Some(8)));
        assert_eq!(assert_decodes(&out).width(), 16);
    }

    #[test]
    fn static_gif_reencoded_as_png() {
        let out = sanitize(&encode(&rgba(6, 6, 255), ImageFormat::Gif), &policy()).unwrap();
        assert_eq!(out.kind, Kind::Png);
        assert_eq!((out.width, out.height), (Some(6), Some(6)));
        assert_decodes(&out);
    }

    #[test]
    fn static_webp_reencoded_as_png() {
        let out = sanitize(&encode(&rgba(7, 3, 200), ImageFormat::WebP), &policy()).unwrap();
        assert_eq!(out.kind, Kind::Png);
        assert_eq!(assert_decodes(&out).to_rgba8(), rgba(7, 3, 200).to_rgba8());
    }

    #[test]
    fn ico_and_bmp_reencoded_as_png() {
        let mut ico = Vec::new();
        rgba(16, 16, 255)
            .write_with_encoder(IcoEncoder::new(&mut ico))
            .unwrap();
        let bmp = encode(&rgb(9, 5), ImageFormat::Bmp);
        for (bytes, size) in [(ico, (16, 16)), (bmp, (9, 5))] {
            let out = sanitize(&bytes, &policy()).unwrap();
            assert_eq!(out.kind, Kind::Png);
            assert_eq!((out.width, out.height), (Some(size.0), Some(size.1)));
            assert_decodes(&out);
        }
    }

    #[test]
    fn reencode_off_serves_original_after_validation() {
        let png = encode(&rgb(5, 5), ImageFormat::Png);
        let keep = ContentPolicy {
            reencode: false,
            ..policy()
        };
        let out = sanitize(&png, &keep).unwrap();
        assert_eq!((out.kind, &out.body), (Kind::Png, &png));
        let cut = &png[..png.len() - 20];
        assert!(matches!(sanitize(cut, &keep), Err(ContentError::Decode(_))));
    }

    // --- metadata ------------------------------------------------------------

    #[test]
    fn png_text_chunk_stripped() {
        let png = encode(&rgb(4, 4), ImageFormat::Png);
        let ihdr_end = 8 + 25;
        let mut tagged = png[..ihdr_end].to_vec();
        tagged.extend(png_chunk(b"tEXt", b"Comment\0secret-tracking-id"));
        tagged.extend_from_slice(&png[ihdr_end..]);
        assert!(contains(&tagged, b"secret-tracking-id"));
        let out = sanitize(&tagged, &policy()).unwrap();
        assert!(!contains(&out.body, b"tEXt"));
        assert!(!contains(&out.body, b"secret-tracking-id"));
        assert_decodes(&out);
    }

    /// APP1 Exif segment: little-endian TIFF with one IFD0 entry, Orientation.
    fn exif_app1(orientation: u16) -> Vec<u8> {
        let mut tiff = b"II*\0".to_vec();
        tiff.extend_from_slice(&8u32.to_le_bytes());
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // pad + next IFD
        tiff.extend_from_slice(b"GPS-secret");
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend(tiff);
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        segment.extend(payload);
        segment
    }

    #[test]
    fn jpeg_exif_stripped_and_orientation_applied() {
        let jpeg = encode(&rgb(16, 8), ImageFormat::Jpeg);
        let mut tagged = jpeg[..2].to_vec();
        tagged.extend(exif_app1(6)); // rotate 90° clockwise to display
        tagged.extend_from_slice(&jpeg[2..]);
        let out = sanitize(&tagged, &policy()).unwrap();
        assert!(!contains(&out.body, b"Exif"));
        assert!(!contains(&out.body, b"GPS-secret"));
        assert_eq!((out.width, out.height), (Some(8), Some(16)));
        assert_eq!(assert_decodes(&out).height(), 16);
    }

    // --- tracking pixels -------------------------------------------------------

    #[test]
    fn one_by_one_is_a_pixel() {
        let out = sanitize(&encode(&rgb(1, 1), ImageFormat::Png), &policy()).unwrap();
        assert!(out.is_pixel);
        let out = sanitize(&encode(&rgb(2, 2), ImageFormat::Gif), &policy()).unwrap();
        assert!(out.is_pixel);
    }

    #[test]
    fn transparent_ten_by_ten_is_a_pixel() {
        let out = sanitize(&encode(&rgba(10, 10, 0), ImageFormat::Png), &policy()).unwrap();
        assert!(out.is_pixel);
        assert_eq!((out.width, out.height), (Some(10), Some(10)));
    }

    #[test]
    fn opaque_three_by_three_is_not_a_pixel() {
        let out = sanitize(&encode(&rgba(3, 3, 255), ImageFormat::Png), &policy()).unwrap();
        assert!(!out.is_pixel);
        let half = sanitize(&encode(&rgba(3, 3, 1), ImageFormat::Png), &policy()).unwrap();
        assert!(!half.is_pixel);
    }

    // --- animations --------------------------------------------------------------

    #[test]
    fn animated_gif_served_as_received() {
        let gif = animated_gif(3, 8, 6);
        let out = sanitize(&gif, &policy()).unwrap();
        assert_eq!(out.kind, Kind::Gif);
        assert_eq!(out.body, gif);
        assert_eq!(
            (out.width, out.height, out.is_pixel),
            (Some(8), Some(6), false)
        );
    }

    #[test]
    fn animated_gif_over_frame_cap_refused() {
        let gif = animated_gif(MAX_FRAMES + 1, 1, 1);
        assert!(matches!(
            sanitize(&gif, &policy()),
            Err(ContentError::Decode(_))
        ));
        assert!(sanitize(&animated_gif(MAX_FRAMES, 1, 1), &policy()).is_ok());
    }

    #[test]
    fn animated_gif_truncated_refused() {
        let gif = animated_gif(3, 8, 6);
        let cut = &gif[..gif.len() - 12];
        assert!(matches!(
            sanitize(cut, &policy()),
            Err(ContentError::Decode(_))
        ));
    }

    #[test]
    fn animated_webp_served_as_received() {
        let webp = animated_webp(3, 5, 4);
        let out = sanitize(&webp, &policy()).unwrap();
        assert_eq!(out.kind, Kind::WebP);
        assert_eq!(out.body, webp);
        assert_eq!((out.width, out.height), (Some(5), Some(4)));
    }

    #[test]
    fn animated_webp_over_alloc_refused_before_decoding() {
        let webp = animated_webp(2, 2000, 2000);
        let tight = ContentPolicy {
            max_alloc: 16 * 1024 * 1024,
            ..policy()
        };
        let (result, elapsed) = measure(|| sanitize(&webp, &tight));
        assert!(matches!(result, Err(ContentError::Decode(_))), "{result:?}");
        eprintln!("animated webp alloc bomb: {result:?} in {elapsed:?}");
    }

    #[test]
    fn gif_claiming_65535_squared_refused() {
        let mut gif = encode(&rgb(2, 2), ImageFormat::Gif);
        gif[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]); // logical screen 65535x65535
        let (result, elapsed) = measure(|| sanitize(&gif, &policy()));
        assert_eq!(
            result.unwrap_err(),
            ContentError::TooLarge {
                width: 65535,
                height: 65535
            }
        );
        assert!(elapsed < Duration::from_secs(1));
    }

    // --- bombs -------------------------------------------------------------------

    #[test]
    fn zlib_generator_is_valid() {
        // The generator itself must be right, or the bomb tests prove nothing.
        let width = 300u32;
        let height = 200u32;
        let raw = u64::from(height) * (1 + u64::from(width) * 4);
        let png = png_with_idat(width, height, &zlib_zeros(raw));
        let out = sanitize(&png, &policy()).unwrap();
        assert_eq!((out.width, out.height), (Some(width), Some(height)));
        assert!(out.is_pixel, "all zeros = fully transparent");
    }

    #[test]
    fn dimension_bomb_refused_from_header() {
        // 100000x100000 RGBA = 40 GB decoded; a few hundred bytes on the wire.
        let png = png_with_idat(100_000, 100_000, &zlib_zeros(64 * 1024));
        assert!(png.len() < 1024, "{} bytes", png.len());
        let (result, elapsed) = measure(|| sanitize(&png, &policy()));
        assert_eq!(
            result.unwrap_err(),
            ContentError::TooLarge {
                width: 100_000,
                height: 100_000
            }
        );
        eprintln!("dimension bomb: {} bytes refused in {elapsed:?}", png.len());
        assert!(elapsed < Duration::from_secs(1));
    }

    #[test]
    fn alloc_bomb_refused_before_pixels() {
        // 8000x8000 RGBA: within the dimension limits, 256 MB decoded, a
        // complete and valid ~1.6 MB zlib stream.
        let raw = 8000u64 * (1 + 8000 * 4);
        let png = png_with_idat(8000, 8000, &zlib_zeros(raw));
        let tight = ContentPolicy {
            max_alloc: 16 * 1024 * 1024,
            ..policy()
        };
        let (result, elapsed) = measure(|| sanitize(&png, &tight));
        assert!(matches!(result, Err(ContentError::Decode(_))), "{result:?}");
        eprintln!("alloc bomb: {result:?}");
        eprintln!("alloc bomb: {} bytes refused in {elapsed:?}", png.len());
        assert!(elapsed < Duration::from_secs(1));
    }

    #[test]
    fn default_policy_refuses_8192_square_rgba() {
        // 8192x8192x4 = 256 MiB > 128 MiB: the alloc cap binds before the dimension cap.
        let png = png_with_idat(8192, 8192, &zlib_zeros(1024));
        assert!(matches!(
            sanitize(&png, &policy()),
            Err(ContentError::Decode(_))
        ));
    }

    #[test]
    fn dimension_limits_follow_policy() {
        let png = encode(&rgb(40, 10), ImageFormat::Png);
        let narrow = ContentPolicy {
            max_width: 32,
            ..policy()
        };
        assert_eq!(
            sanitize(&png, &narrow).unwrap_err(),
            ContentError::TooLarge {
                width: 40,
                height: 10
            }
        );
        let jpeg = encode(&rgb(10, 40), ImageFormat::Jpeg);
        let short = ContentPolicy {
            max_height: 32,
            ..policy()
        };
        assert_eq!(
            sanitize(&jpeg, &short).unwrap_err(),
            ContentError::TooLarge {
                width: 10,
                height: 40
            }
        );
    }

    // --- fonts -----------------------------------------------------------------

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

    #[test]
    fn sanitized_output_sanitizes_again() {
        for bytes in [
            encode(&rgba(12, 9, 128), ImageFormat::Png),
            encode(&rgb(12, 9), ImageFormat::Jpeg),
            encode(&rgba(12, 9, 255), ImageFormat::Bmp),
        ] {
            let once = sanitize(&bytes, &policy()).unwrap();
            let twice = sanitize(&once.body, &policy()).unwrap();
            assert_eq!((once.width, once.kind), (twice.width, twice.kind));
        }
    }
}
