//! Static raster images (PNG, JPEG, ICO, BMP, static WebP, single-frame GIF): bounded
//! decoding and re-encoding, the decoder limits every raster path shares, and
//! tracking-pixel detection.
//!
//! Walking the frames of GIF and WebP is left to `animation`, which comes back here for
//! the limits, for one-frame results and for the pixel test. Sniffing and dispatch are
//! the parent module's.

use std::io::Cursor;

use ::image::codecs::jpeg::JpegEncoder;
use ::image::codecs::png::PngEncoder;
use ::image::metadata::Orientation;
use ::image::{
    DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Limits, Pixel, Primitive,
};

use super::{ContentError, ContentPolicy, Kind, Sanitized};

/// JPEG re-encoding quality: visually lossless for photos, modest size growth.
const JPEG_QUALITY: u8 = 90;

impl Kind {
    /// The raster decoder for this kind, `None` for fonts and SVG.
    pub(super) fn raster_format(self) -> Option<ImageFormat> {
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

/// Decodes a static image under the limits and re-encodes it if asked.
///
/// # Errors
/// [`ContentError::TooLarge`] from the header, [`ContentError::Decode`] when decoding,
/// a limit or re-encoding fails.
pub(super) fn sanitize_static(
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
    reader.limits(alloc_limits(policy));
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    check_dimensions(decoder.dimensions(), policy)?;
    decoder
        .set_limits(decode_limits(policy))
        .map_err(decode_error)?;
    // Same check `ImageReader::decode` does: refuse before the buffer exists.
    check_alloc(decoder.total_bytes(), policy)?;
    // Metadata is about to be dropped, so its rotation must be baked in.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Builds the result for a decoded static image: re-encoded per policy, or the
/// original bytes now that they decoded.
///
/// # Errors
/// [`ContentError::Decode`] when re-encoding fails.
pub(super) fn finish_static(
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
// Decoder limits, shared with `animation`
// ---------------------------------------------------------------------------

/// Only `max_alloc`: for the reader that parses the header, so that an oversized image
/// is refused by [`check_dimensions`] with its numbers rather than by the decoder.
/// (`Limits` is `#[non_exhaustive]`, hence field assignment.)
fn alloc_limits(policy: &ContentPolicy) -> Limits {
    let mut limits = Limits::no_limits();
    limits.max_alloc = Some(policy.max_alloc);
    limits
}

/// `max_alloc` and the dimension limits: for a decoder whose header already passed.
pub(super) fn decode_limits(policy: &ContentPolicy) -> Limits {
    let mut limits = alloc_limits(policy);
    limits.max_image_width = Some(policy.max_width);
    limits.max_image_height = Some(policy.max_height);
    limits
}

/// Header dimensions against the policy; an empty image is a decode error.
///
/// # Errors
/// [`ContentError::TooLarge`] over the limits, [`ContentError::Decode`] for a zero side.
pub(super) fn check_dimensions(
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

/// Bytes a decode would allocate, against `max_alloc`.
///
/// # Errors
/// [`ContentError::Decode`] when `bytes` is over the limit.
pub(super) fn check_alloc(bytes: u64, policy: &ContentPolicy) -> Result<(), ContentError> {
    if bytes > policy.max_alloc {
        return Err(ContentError::Decode(format!(
            "needs {bytes} bytes, over max_alloc {}",
            policy.max_alloc
        )));
    }
    Ok(())
}

/// Size of one RGBA8 buffer of these dimensions.
pub(super) fn rgba_bytes((width, height): (u32, u32)) -> u64 {
    u64::from(width)
        .saturating_mul(u64::from(height))
        .saturating_mul(4)
}

/// Any decoder failure, as the refusal the caller sees.
pub(super) fn decode_error(error: ::image::ImageError) -> ContentError {
    ContentError::Decode(error.to_string())
}

// ---------------------------------------------------------------------------
// Tracking pixels
// ---------------------------------------------------------------------------

/// At most 2x2 pixels, or nothing visible.
fn is_tracking_pixel(image: &DynamicImage) -> bool {
    is_tiny((image.width(), image.height())) || fully_transparent(image)
}

/// At most 4 pixels in all: too small to show anything.
pub(super) fn is_tiny((width, height): (u32, u32)) -> bool {
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

/// Every pixel has alpha 0. Alpha is the last channel of every pixel type that has one.
pub(super) fn alpha_all_zero<P: Pixel>(buffer: &ImageBuffer<P, Vec<P::Subpixel>>) -> bool {
    buffer.pixels().all(|pixel| {
        pixel
            .channels()
            .last()
            .is_some_and(|&alpha| alpha == <P::Subpixel as Primitive>::DEFAULT_MIN_VALUE)
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // Sample surgery; a panic fails the test.
mod tests {
    use std::time::Duration;

    use ::image::codecs::ico::IcoEncoder;

    use super::super::sanitize;
    use super::super::testutil::{encode, measure, policy, rgb, rgba};
    use super::*;

    // --- sample builders -----------------------------------------------------

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

    fn assert_decodes(sanitized: &Sanitized) -> DynamicImage {
        let format = sanitized.kind.raster_format().unwrap();
        ::image::load_from_memory_with_format(&sanitized.body, format).unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    // --- refusals --------------------------------------------------------------

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
}
