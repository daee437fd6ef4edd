//! Test-only sample builders that more than one content checker's tests use: encoded
//! images, the default policy and a timer. Builders for one checker's samples stay in
//! that checker's own tests.

use std::io::Cursor;
use std::time::{Duration, Instant};

use ::image::{DynamicImage, ImageFormat, Rgba, RgbaImage};

use super::ContentPolicy;

/// Runs `f`, returning its result and wall time. (Peak memory was measured once with a
/// counting allocator, ~150 KB for the bombs in the tests; the crate forbids the unsafe
/// code a global allocator needs, so the tests bound time, which a large allocation
/// would blow.)
pub(super) fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// `image` written in `format` by the image crate.
pub(super) fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A gradient with every pixel at `alpha`.
pub(super) fn rgba(width: u32, height: u32, alpha: u8) -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x * 40) as u8, (y * 40) as u8, 128, alpha])
    }))
}

/// The same gradient without an alpha channel.
pub(super) fn rgb(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(rgba(width, height, 255).to_rgb8())
}

/// The default policy.
pub(super) fn policy() -> ContentPolicy {
    ContentPolicy::default()
}
