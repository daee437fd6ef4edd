//! One fixture per remote-load vector family (`tests/data/vectors/*.html`). Each fixture's
//! first line states the expected counts; after rewriting, no fixture host may survive
//! (entity- and CSS-unescaped), every proxy URL must verify, and preserved markup must be
//! byte-identical.

use mailveil::TrackerMode;

use crate::util::{engine, leaks, proxy_urls, read_data, signer, PUBLIC_URL};

struct Expect {
    proxied: usize,
    trackers: usize,
    removed: usize,
    absent: Vec<String>,
    identical: bool,
}

fn parse_expect(first_line: &str) -> Expect {
    let body = first_line
        .trim()
        .strip_prefix("<!-- expect ")
        .and_then(|s| s.strip_suffix("-->"))
        .expect("fixture starts with <!-- expect ... -->");
    let mut e = Expect {
        proxied: 0,
        trackers: 0,
        removed: 0,
        absent: vec![],
        identical: false,
    };
    for word in body.split_whitespace() {
        match word.split_once('=') {
            Some(("proxied", n)) => e.proxied = n.parse().expect("number"),
            Some(("trackers", n)) => e.trackers = n.parse().expect("number"),
            Some(("removed", n)) => e.removed = n.parse().expect("number"),
            Some(("absent", list)) => e.absent = list.split(',').map(String::from).collect(),
            None if word == "identical" => e.identical = true,
            _ => panic!("unknown expectation {word}"),
        }
    }
    e
}

fn check(name: &str) {
    let text = String::from_utf8(read_data(&format!("vectors/{name}.html"))).expect("utf-8");
    let expect = parse_expect(text.lines().next().unwrap_or_default());
    let out = engine(TrackerMode::Block).rewrite(&text).expect("rewrite");
    let absent: Vec<&str> = expect.absent.iter().map(String::as_str).collect();
    let body = out.html.split_once('\n').map_or("", |(_, rest)| rest);
    let leaked = leaks(body, &absent);
    assert!(
        leaked.is_empty(),
        "{name}: remote references survived:\n{leaked:#?}\n--- output ---\n{}",
        out.html
    );
    let r = &out.report;
    assert_eq!(
        (r.proxied, r.trackers, r.removed),
        (expect.proxied, expect.trackers, expect.removed),
        "{name}: (proxied, trackers, removed)\n--- output ---\n{}",
        out.html
    );
    let urls = proxy_urls(&out.html);
    for url in &urls {
        let path = url.strip_prefix(PUBLIC_URL).expect("prefix");
        signer()
            .verify(path)
            .unwrap_or_else(|e| panic!("{name}: {url} does not verify: {e}"));
    }
    assert!(
        urls.len() >= expect.proxied,
        "{name}: fewer proxy URLs than proxied references"
    );
    if expect.identical {
        assert_eq!(out.html, text, "{name}: output should be byte-identical");
    }
}

macro_rules! vector_tests {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { check(stringify!($name)); } )* };
}

vector_tests!(
    img,
    background,
    css_inline,
    css_style,
    svg,
    media,
    link,
    frames,
    meta_refresh,
    base,
    entities,
    mso,
    trackers,
    preserved,
    data_urls,
    scripts_events,
    noscript,
);

#[test]
fn every_fixture_has_a_test() {
    let dir = crate::util::data("vectors");
    let listed = [
        "img",
        "background",
        "css_inline",
        "css_style",
        "svg",
        "media",
        "link",
        "frames",
        "meta_refresh",
        "base",
        "entities",
        "mso",
        "trackers",
        "preserved",
        "data_urls",
        "scripts_events",
        "noscript",
    ];
    for entry in std::fs::read_dir(dir).expect("dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .replace(".html", "");
        assert!(
            listed.contains(&name.as_str()),
            "fixture {name} has no test"
        );
    }
}

#[test]
fn tracker_mode_proxy_keeps_and_counts_trackers() {
    let html = r#"<img src="https://us1.list-manage.com/track/open.php?u=1" width="1" height="1">"#;
    let out = engine(TrackerMode::Proxy).rewrite(html).expect("rewrite");
    assert_eq!((out.report.proxied, out.report.trackers), (1, 1));
    assert!(out.report.tracker_hosts.contains("us1.list-manage.com"));
    assert!(
        leaks(&out.html, &["list-manage.com"]).is_empty(),
        "{}",
        out.html
    );
    assert_eq!(proxy_urls(&out.html).len(), 1);
}

#[test]
fn base_href_makes_relative_links_absolute() {
    let html =
        r##"<base href="https://base.example/dir/"><a href="page.html">x</a><a href="#top">y</a>"##;
    let out = engine(TrackerMode::Block).rewrite(html).expect("rewrite");
    assert!(
        out.html
            .contains(r#"href="https://base.example/dir/page.html""#),
        "{}",
        out.html
    );
    assert!(out.html.contains(r##"href="#top""##), "{}", out.html);
    assert!(!out.html.contains("<base"), "{}", out.html);
}

#[test]
fn already_proxied_urls_are_left_alone() {
    let first = engine(TrackerMode::Block)
        .rewrite(r#"<img src="https://img.example/a.png">"#)
        .expect("rewrite");
    let second = engine(TrackerMode::Block)
        .rewrite(&first.html)
        .expect("rewrite");
    assert_eq!(first.html, second.html);
    assert_eq!(second.report.proxied, 0);
}

#[test]
fn report_collects_distinct_targets_for_prefetch() {
    let html = r#"<img src="https://a.example/x.png"><img src="https://a.example/x.png"><div style="background:url(https://b.example/y.png)"></div>"#;
    let out = engine(TrackerMode::Block).rewrite(html).expect("rewrite");
    assert_eq!(out.report.proxied, 3);
    let targets: Vec<&str> = out.report.targets.iter().map(String::as_str).collect();
    assert_eq!(
        targets,
        ["https://a.example/x.png", "https://b.example/y.png"]
    );
}

#[test]
fn deeply_nested_markup_is_bounded() {
    let depth = 100_000;
    let html = format!(
        "{}<img src=\"https://deep.remote.test/x.png\">{}",
        "<div>".repeat(depth),
        "</div>".repeat(depth)
    );
    match engine(TrackerMode::Block).rewrite(&html) {
        Ok(out) => assert!(leaks(&out.html, &[]).is_empty()),
        Err(e) => eprintln!("refused (the caller keeps the original and says why): {e}"),
    }
}
