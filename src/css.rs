//! TEMPORARY stub, replaced by the real module.
#![allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind { Image, Font, Import }
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlAction { Keep, Replace(String), Remove }
pub fn rewrite_css(css: &str, _decide: &mut dyn FnMut(&str, UrlKind) -> UrlAction) -> String { css.to_owned() }
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StyleHints { pub hidden: bool, pub width_px: Option<f32>, pub height_px: Option<f32> }
pub fn style_hints(_d: &str) -> StyleHints { StyleHints::default() }
