//! Possibly animated rasters (GIF, WebP): every frame is decoded, under caps on the
//! frame count, the composited pixels and the buffers a frame walk keeps alive.
//!
//! One frame means a static image, handed back to `raster` (re-encoded); more means an
//! animation, validated and served as received. A static WebP takes the `raster` path
//! directly. The decoder limits, the dimension and allocation checks and the pixel test
//! are `raster`'s; sniffing is the parent module's.

use std::io::Cursor;

use ::image::codecs::gif::GifDecoder;
use ::image::codecs::webp::WebPDecoder;
use ::image::{AnimationDecoder, DynamicImage, Frames, ImageDecoder, RgbaImage};

use super::raster::{
    alpha_all_zero, check_alloc, check_dimensions, decode_error, decode_limits, finish_static,
    is_tiny, rgba_bytes, sanitize_static,
};
use super::{ContentError, ContentPolicy, Kind, Sanitized};

/// Frames decoded at most for one animation; a longer one is refused.
const MAX_FRAMES: u32 = 1000;
/// Canvas pixels composited at most over all frames of one animation (CPU bound).
const MAX_ANIMATION_PIXELS: u64 = 100_000_000;
/// Canvas-sized RGBA buffers alive at once while walking an animation
/// (decoder canvas, decoded frame, composited frame, our copy of frame 1).
/// The GIF decoder counts its own, the WebP one does not, so we check up front.
const ANIMATION_BUFFERS: u64 = 4;

/// GIFs are walked frame by frame: one frame means static (re-encoded),
/// more means animated (validated, served as received).
///
/// # Errors
/// [`ContentError::TooLarge`] from the header, [`ContentError::Decode`] when a frame,
/// a limit or a cap fails.
pub(super) fn sanitize_gif(
    bytes: &[u8],
    policy: &ContentPolicy,
) -> Result<Sanitized, ContentError> {
    let decoder = GifDecoder::new(Cursor::new(bytes)).map_err(decode_error)?;
    walk(bytes, Kind::Gif, decoder, policy)
}

/// Static WebP takes the static path (re-encoded as PNG); animated WebP is
/// walked frame by frame like a GIF.
///
/// # Errors
/// As [`sanitize_gif`], or as [`sanitize_static`] for a static WebP.
pub(super) fn sanitize_webp(
    bytes: &[u8],
    policy: &ContentPolicy,
) -> Result<Sanitized, ContentError> {
    let decoder = WebPDecoder::new(Cursor::new(bytes)).map_err(decode_error)?;
    if !decoder.has_animation() {
        return sanitize_static(bytes, Kind::WebP, policy);
    }
    walk(bytes, Kind::WebP, decoder, policy)
}

/// Limits checked from the header, then every frame decoded and the result built.
fn walk<'a, D>(
    bytes: &[u8],
    kind: Kind,
    mut decoder: D,
    policy: &ContentPolicy,
) -> Result<Sanitized, ContentError>
where
    D: ImageDecoder + AnimationDecoder<'a>,
{
    let dimensions = decoder.dimensions();
    check_animation_limits(dimensions, policy)?;
    decoder
        .set_limits(decode_limits(policy))
        .map_err(decode_error)?;
    let scan = scan_frames(decoder.into_frames(), dimensions)?;
    finish_animation(bytes, kind, scan, policy)
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

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // Sample surgery; a panic fails the test.
mod tests {
    use std::time::Duration;

    use ::image::codecs::gif::{GifEncoder, Repeat};
    use ::image::codecs::webp::WebPEncoder;
    use ::image::{Delay, Frame, ImageFormat, Rgba};

    use super::super::sanitize;
    use super::super::testutil::{encode, measure, policy, rgb};
    use super::*;

    // --- sample builders -----------------------------------------------------

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
}
