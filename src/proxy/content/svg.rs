//! SVG documents: served unchanged when the policy allows them, refused otherwise.
//!
//! SVG is a document, not pixels, and cannot be made safe by re-encoding, so the only
//! decision here is the policy's. Recognising SVG (root `<svg>` element, no internal
//! DTD subset) is `sniff`'s job; the headers that keep a served SVG from scripting or
//! loading anything are the proxy's.

use super::{ContentError, ContentPolicy, Kind, Sanitized};

/// SVG is served unchanged when allowed. The caller must serve it under a CSP that
/// forbids script and loads (the proxy sends `default-src 'none'; sandbox` on every
/// response).
///
/// # Errors
/// [`ContentError::SvgRefused`] while `allow_svg` is off.
pub(super) fn sanitize_svg(
    bytes: &[u8],
    policy: &ContentPolicy,
) -> Result<Sanitized, ContentError> {
    if !policy.allow_svg {
        return Err(ContentError::SvgRefused);
    }
    Ok(Sanitized::unchanged(bytes, Kind::Svg))
}

#[cfg(test)]
mod tests {
    use super::super::sanitize;
    use super::super::testutil::policy;
    use super::*;

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
}
