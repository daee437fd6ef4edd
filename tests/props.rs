//! Property test: random HTML assembled from every vector family, in random spellings;
//! no remote reference may survive the rewrite.

use mailveil::TrackerMode;
use proptest::prelude::*;

use crate::util::{engine, leaks};

/// A remote URL in one of the spellings a sender might use.
fn remote_url() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just("https://"),
        Just("http://"),
        Just("HTTPS://"),
        Just("//"),
        Just("HtTp://"),
    ];
    (scheme, "[a-z]{1,8}", "[a-zA-Z0-9_/.-]{0,20}")
        .prop_map(|(s, host, path)| format!("{s}{host}.remote.test/{path}"))
}

/// One snippet that loads `url`, picked from the vector families.
fn snippet(url: String, pick: u8, quote: bool) -> String {
    let q = if quote { "\"" } else { "" };
    let css_q = if quote { "'" } else { "" };
    match pick % 20 {
        0 => format!("<img src={q}{url}{q}>"),
        1 => format!("<IMG SRCSET=\"{url} 1x, {url}2 2x\">"),
        2 => format!("<picture><source srcset=\"{url} 600w\"><img src=\"cid:x\"></picture>"),
        3 => format!("<td background={q}{url}{q}>x</td>"),
        4 => format!("<div style=\"background:URL({css_q}{url}{css_q})\">x</div>"),
        5 => format!("<style>.a{{background-image:url({css_q}{url}{css_q})}}</style>"),
        6 => format!("<style>@import {css_q}{url}{css_q};</style>"),
        7 => format!("<style>@font-face{{src:url({url}) format('woff')}}</style>"),
        8 => format!("<svg><image href=\"{url}\"/><use xlink:href=\"{url}#a\"/></svg>"),
        9 => format!("<video poster=\"{url}\" src=\"{url}\"><source src=\"{url}\"></video>"),
        10 => format!("<link rel=\"stylesheet\" href=\"{url}\">"),
        11 => format!("<link rel=\"icon\" href=\"{url}\">"),
        12 => format!("<iframe src=\"{url}\"></iframe><embed src=\"{url}\">"),
        13 => format!("<meta http-equiv=\"refresh\" content=\"0;url={url}\">"),
        14 => {
            format!("<!--[if mso]><v:fill src=\"{url}\"/><v:imagedata src=\"{url}\"/><![endif]-->")
        }
        15 => format!("<input type=image src=\"{url}\">"),
        16 => format!("<div style=\"background-image:image-set('{url}' 1x)\">x</div>"),
        17 => format!("<noscript><img src=\"{url}\"></noscript>"),
        18 => format!("<object data=\"{url}\"><img src=\"{url}\"></object>"),
        _ => format!("<img src=\"{}\">", entity_encode(&url)),
    }
}

/// `&#NN;` for every character: the browser decodes it before loading.
fn entity_encode(s: &str) -> String {
    s.chars().map(|c| format!("&#{};", c as u32)).collect()
}

fn document() -> impl Strategy<Value = String> {
    let part = (remote_url(), any::<u8>(), any::<bool>()).prop_map(|(u, p, q)| snippet(u, p, q));
    let filler = prop_oneof![
        Just("<p>text</p>".to_owned()),
        Just("<a href=\"https://keep.example/x\">link</a>".to_owned()),
        Just("<table><tr><td>cell</td></tr></table>".to_owned()),
        Just("<img src=\"cid:logo\">".to_owned()),
    ];
    prop::collection::vec(prop_oneof![3 => part, 1 => filler], 1..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_remote_reference_survives(html in document(), base in any::<bool>()) {
        let html = if base {
            format!("<base href=\"https://base.remote.test/d/\">{html}<img src=\"rel.png\">")
        } else {
            html
        };
        let out = engine(TrackerMode::Block).rewrite(&html).expect("rewrite");
        let leaked = leaks(&out.html, &[]);
        prop_assert!(leaked.is_empty(), "leaked {:?}\ninput: {}\noutput: {}", leaked, html, out.html);
    }
}
