//! A real browser shows that a rewritten message contacts nobody but the proxy.
//!
//! Each fixture in `tests/data/chromium/` is shown twice in headless Chromium, each time with
//! three fresh loopback servers: a page server serving the document, a tracker server standing
//! in for every remote host the fixture names (it logs every connection it accepts), and a
//! proxy server at the engine's `public_url` answering `/i/...` with a 1x1 PNG.
//!
//! 1. The original document must reach the tracker, through at least the fixture's core
//!    vectors: this proves the fixture and the harness can see a leak.
//! 2. The rewritten document must not reach the tracker at all, and must reach the proxy, with
//!    nothing but validly signed URLs.
//!
//! Fixtures write the tracker as `TRACKER` (replaced by its `127.0.0.1:PORT`) or as a name
//! under `tracker.test` (mapped to it by Chromium's host resolver rules). Every path names its
//! vector, so a failure says which markup leaked.
//!
//! Chromium is Debian's `chromium` package, run as `/usr/lib/chromium/chromium` or as the
//! binary named by `MAILVEIL_CHROMIUM`. Without it these tests fail; CI installs it in
//! `.ci/run`.

use std::collections::BTreeSet;
use std::error::Error;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use mailveil::{Signer, TrackerMode};
use url::Url;

use crate::util::canary::{request_target, Canary, Response};
use crate::util::process::wait_or_kill;
use crate::util::{engine_for, signer_for, tail};

type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// Where Debian's `chromium` package puts the browser itself (not the `/usr/bin` wrapper).
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
/// Names another Chromium binary, for machines that are not Debian.
const CHROMIUM_ENV: &str = "MAILVEIL_CHROMIUM";
/// A run is killed after this long, so a hung browser fails the test instead of stalling it.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
/// Fixtures write the tracker's address as this.
const TRACKER_PLACEHOLDER: &str = "TRACKER";
/// Fixtures may also name the tracker as this host or a subdomain of it.
const TRACKER_DOMAIN: &str = "tracker.test";
/// A valid 1x1 transparent PNG.
const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// Browsers run one at a time: two cores do not take several well, and virtual time is
/// only as reliable as the machine is idle.
static CHROMIUM_TURN: Mutex<()> = Mutex::new(());

#[test]
fn chromium_attribute_vectors_reach_only_the_proxy() -> TestResult {
    check(&Fixture {
        name: "attributes",
        html: include_str!("../data/chromium/attributes.html"),
        scripting: Scripting::On,
        core_vectors: &[
            "/link-stylesheet.css",
            "/script-src.js",
            "/inline-script.png",
            "/body-background.png",
            "/body-onload",
            "/img-src.png",
            "/img-src-named-host.png",
            "/img-srcset-1x.png",
            "/img-srcset-w.png",
            "/picture-source.png",
            "/picture-source-media.png",
            "/table-background.png",
            "/td-background.png",
            "/svg-image-href.png",
            "/svg-image-xlink-href.png",
            "/svg-feimage.png",
            "/svg-feimage-xlink.png",
            "/video-poster.png",
            "/iframe.html",
            "/iframe-srcdoc.png",
            "/object.html",
            "/embed.html",
            "/input-image.png",
            "/base/rel-under-base.png",
            "/protocol-relative.png",
            "/entity-decimal.png",
            "/entity-hex.png",
            "/odd-case-upper.png",
            "/odd-case-mixed.png",
            "/whitespace-around.png",
            "/tab-in-scheme.png",
            "/backslashes.png",
            "/entity-no-semicolon.png",
            "/entity-named-colon.png",
            "/entity-newline-in-scheme.png",
            "/image-element.png",
            "/track/open?id=42",
            "/mso-not-revealed.png",
            "/onerror-fetch",
            "/svg-onload",
            "/lazy-far-down.png",
        ],
    })
}

#[test]
fn chromium_css_vectors_reach_only_the_proxy() -> TestResult {
    check(&Fixture {
        name: "css",
        html: include_str!("../data/chromium/css.html"),
        scripting: Scripting::On,
        core_vectors: &[
            "/style-import-url.css",
            "/style-import-string.css",
            "/font-face.woff2",
            "/font-face-fallback.woff",
            "/style-background.png",
            "/style-image-set.png",
            "/style-webkit-image-set.png",
            "/style-escaped-function.png",
            "/style-escaped-url.png",
            "/style-list-style-image.png",
            "/style-content-before.png",
            "/style-border-image.png",
            "/style-mask-image.png",
            "/style-media.png",
            "/style-supports.png",
            "/style-protocol-relative.png",
            "/style-upper-case.png",
            "/style-escaped-r.png",
            "/style-custom-property.png",
            "/style-nesting.png",
            "/style-layer.png",
            "/style-container.png",
            "/svg-style-cdata.png",
            "/svg-style-plain.png",
            "/inline-url.png",
            "/inline-url-quoted.png",
            "/inline-image-set-1x.png",
            "/inline-webkit-image-set.png",
            "/inline-entity.png",
            "/inline-entity-quote.png",
            "/inline-escaped-function.png",
            "/inline-no-space.png",
            "/inline-upper-protocol-relative.png",
            "/inline-td.png",
            "/inline-custom-property.png",
            "/inline-entity-function.png",
            "/inline-far-down.png",
        ],
    })
}

#[test]
fn chromium_noscript_content_reaches_only_the_proxy_with_scripting_off() -> TestResult {
    check(&Fixture {
        name: "noscript",
        html: include_str!("../data/chromium/noscript.html"),
        scripting: Scripting::Off,
        core_vectors: &[
            "/noscript-img.png",
            "/noscript-style.png",
            "/outside-noscript.png",
        ],
    })
}

#[test]
fn chromium_meta_refresh_reaches_only_the_proxy() -> TestResult {
    check(&Fixture {
        name: "refresh",
        html: include_str!("../data/chromium/refresh.html"),
        scripting: Scripting::On,
        core_vectors: &["/meta-refresh"],
    })
}

#[test]
fn chromium_frameset_reaches_only_the_proxy() -> TestResult {
    check(&Fixture {
        name: "frameset",
        html: include_str!("../data/chromium/frameset.html"),
        scripting: Scripting::On,
        core_vectors: &["/frame.html", "/frame-named-host.html"],
    })
}

/// Issue 11: each message that used to make the filter step aside (or that it could not
/// decode as clients do) is filtered in process, and every part a client renders as HTML
/// is shown in Chromium: the tracker sees nothing. The original of each part is shown first
/// and must reach the tracker, so the check can see a leak.
#[test]
fn chromium_messages_that_used_to_switch_the_filter_off_load_nothing() -> TestResult {
    let html = "<p>Hello</p><img src=\"http://TRACKER/trigger.gif\">\
                <div style=\"background-image:url(http://TRACKER/trigger-bg.png)\">x</div>";
    let base64 = |text: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    };
    let single = |headers: &str, body: &str| {
        format!("From: a@b.example\r\nMIME-Version: 1.0\r\n{headers}\r\n\r\n{body}\r\n")
    };
    let mentions = "message/rfc822 ".repeat(65);
    let stray = {
        let encoded = base64(html);
        format!("{}!{}", &encoded[..8], &encoded[8..])
    };
    let triggers: Vec<(&str, String, String)> = vec![
        (
            "mentions",
            format!("<!-- {mentions} -->{html}"),
            single(
                "Content-Type: text/html",
                &format!("<!-- {mentions} -->{html}"),
            ),
        ),
        (
            "midline-boundary",
            format!("<p>a --x b</p>{html}"),
            format!(
                "From: a@b.example\r\nContent-Type: multipart/alternative; boundary=x\r\n\r\n\
                 --x\r\nContent-Type: text/html\r\n\r\n<p>a --x b</p>{html}\r\n--x--\r\n"
            ),
        ),
        (
            // The original shown is without the 300,000 elements, which Chromium takes
            // minutes over; its references are the same.
            "deep-markup",
            html.to_owned(),
            single(
                "Content-Type: text/html",
                &format!("{}{html}", "<b>".repeat(300_000)),
            ),
        ),
        (
            "stray-base64",
            html.to_owned(),
            single(
                "Content-Type: text/html\r\nContent-Transfer-Encoding: base64",
                &stray,
            ),
        ),
        (
            "made-up-encoding",
            html.to_owned(),
            single(
                "Content-Type: text/html\r\nContent-Transfer-Encoding: 8bit+",
                html,
            ),
        ),
        (
            "watch-html",
            html.to_owned(),
            single("Content-Type: text/watch-html", html),
        ),
    ];
    for (name, original, message) in triggers {
        let fixture = Fixture {
            name,
            html: "",
            scripting: Scripting::Off,
            core_vectors: &["/trigger.gif"],
        };
        let tracker = Canary::start("127.0.0.1:0", answer_as_tracker)?;
        let proxy = Canary::start("127.0.0.1:0", answer_as_proxy)?;
        let shown = visit(
            &fixture,
            original.replace(TRACKER_PLACEHOLDER, &tracker.host()),
            tracker,
            proxy,
        )?;
        assert_reaches_tracker(&fixture, &shown);

        let tracker = Canary::start("127.0.0.1:0", answer_as_tracker)?;
        let proxy = Canary::start("127.0.0.1:0", answer_as_proxy)?;
        let engine = engine_for(&proxy.url("/"), TrackerMode::Block);
        let message = message.replace(TRACKER_PLACEHOLDER, &tracker.host());
        let filtered = mailveil::filter_message(&engine, message.as_bytes())?;
        let parts = html_parts(&String::from_utf8(filtered.message)?);
        assert_eq!(parts.len(), 1, "{name}: one HTML part comes out");
        let shown = visit(&fixture, parts[0].clone(), tracker, proxy)?;
        assert!(
            shown.tracker.is_empty(),
            "{name}: the filtered message reached the tracker: {:?}\n{}",
            shown.tracker,
            shown.diagnostics()
        );
    }
    Ok(())
}

/// The decoded bodies of the parts of a filtered test message that a client renders as
/// HTML. The test messages are one part, or one multipart level with the boundary `x`.
fn html_parts(message: &str) -> Vec<String> {
    let (head, body) = message.split_once("\r\n\r\n").unwrap_or((message, ""));
    let parts: Vec<(&str, &str)> = if head.contains("boundary=x") {
        body.split("\r\n--x")
            .filter_map(|p| p.trim_start_matches("--x").split_once("\r\n\r\n"))
            .collect()
    } else {
        vec![(head, body)]
    };
    parts
        .into_iter()
        .filter(|(h, _)| {
            h.contains("Content-Type: text/html") || h.contains("Content-Type: text/watch-html")
        })
        .map(|(h, b)| {
            if h.contains("Content-Transfer-Encoding: base64") {
                use base64::Engine as _;
                let compact: String = b.split_whitespace().collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .expect("our own base64");
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                b.to_owned()
            }
        })
        .collect()
}

/// One document under `tests/data/chromium/` and what showing it must prove.
struct Fixture {
    name: &'static str,
    /// The document, with the tracker written as [`TRACKER_PLACEHOLDER`].
    html: &'static str,
    scripting: Scripting,
    /// Tracker request targets the original must produce: vectors every Chromium loads, so
    /// that a fixture or harness that stopped working fails instead of passing vacuously.
    core_vectors: &'static [&'static str],
}

impl Fixture {
    /// The document as sent to a client when the tracker listens at `tracker`.
    fn html_for(&self, tracker: &Canary) -> String {
        self.html.replace(TRACKER_PLACEHOLDER, &tracker.host())
    }
}

/// Whether the document may run scripts. Most mail clients forbid them, and then
/// `<noscript>` holds markup, not text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scripting {
    /// Shown as the top-level page.
    On,
    /// Shown in an `<iframe sandbox>` without `allow-scripts`, as webmail shows messages.
    Off,
}

/// A page showing `document` in a sandboxed frame, where scripting is disabled. (Chromium's
/// own switch, `--blink-settings=scriptEnabled=false`, makes headless mode load nothing.)
fn sandbox_page(document: &str) -> String {
    format!(
        "<!DOCTYPE html><title>sandbox</title>\
         <iframe sandbox=\"allow-same-origin\" src=\"{document}\" width=\"1200\" height=\"3800\"></iframe>"
    )
}

/// Shows the original and then the rewritten document, asserting what each must prove.
fn check(fixture: &Fixture) -> TestResult {
    let original = show_original(fixture)?;
    assert_reaches_tracker(fixture, &original);
    let (rewritten, signer) = show_rewritten(fixture)?;
    assert_reaches_only_proxy(fixture, &rewritten, &signer);
    Ok(())
}

/// What the servers saw while Chromium showed one document.
struct Visit {
    /// The tracker's address, the only upstream a signed URL may name.
    tracker_addr: SocketAddr,
    tracker: Vec<String>,
    proxy: Vec<String>,
    page: Vec<String>,
    chromium: ChromiumRun,
}

impl Visit {
    /// Everything worth reading when an assertion fails.
    fn diagnostics(&self) -> String {
        format!(
            "page server saw: {:?}\nproxy saw {} requests\nchromium exited with {}; the end of its stderr:\n{}\nits DOM:\n{}",
            self.page,
            self.proxy.len(),
            self.chromium.status,
            tail(&self.chromium.stderr, 1500),
            tail(&self.chromium.dom, 3000),
        )
    }
}

fn show_original(fixture: &Fixture) -> TestResult<Visit> {
    let tracker = Canary::start("127.0.0.1:0", answer_as_tracker)?;
    let proxy = Canary::start("127.0.0.1:0", answer_as_proxy)?;
    let html = fixture.html_for(&tracker);
    visit(fixture, html, tracker, proxy)
}

/// Rewrites the document for a proxy at a fresh server and shows the result. Also returns the
/// signer, to check what the proxy was asked for.
fn show_rewritten(fixture: &Fixture) -> TestResult<(Visit, Signer)> {
    let tracker = Canary::start("127.0.0.1:0", answer_as_tracker)?;
    let proxy = Canary::start("127.0.0.1:0", answer_as_proxy)?;
    let public_url = proxy.url("/");
    let engine = engine_for(&public_url, TrackerMode::Block);
    let html = engine.rewrite(&fixture.html_for(&tracker))?.html;
    let signer = signer_for(&public_url);
    Ok((visit(fixture, html, tracker, proxy)?, signer))
}

/// Serves `html` from a page server, shows it in Chromium and collects the servers' logs.
fn visit(fixture: &Fixture, html: String, tracker: Canary, proxy: Canary) -> TestResult<Visit> {
    let document = format!("/{}.html", fixture.name);
    let sandboxed = format!("/{}-sandboxed.html", fixture.name);
    let shown = match fixture.scripting {
        Scripting::On => document.clone(),
        Scripting::Off => sandboxed.clone(),
    };
    let pages = [(sandbox_page(&document), sandboxed), (html, document)];
    let page = Canary::start("127.0.0.1:0", move |target| {
        match pages.iter().find(|(_, path)| path == target) {
            Some((html, _)) => Response::ok("text/html; charset=utf-8", html.clone()),
            None => Response::not_found(),
        }
    })?;
    let tracker_addr = tracker.addr;
    let chromium = run_chromium(&page.url(&shown), tracker_addr)?;
    Ok(Visit {
        tracker_addr,
        tracker: tracker.finish(),
        proxy: proxy.finish(),
        page: page.finish(),
        chromium,
    })
}

fn assert_reaches_tracker(fixture: &Fixture, visit: &Visit) {
    let seen: BTreeSet<&str> = visit
        .tracker
        .iter()
        .filter_map(|l| request_target(l))
        .collect();
    let missing: Vec<&str> = fixture
        .core_vectors
        .iter()
        .copied()
        .filter(|v| !seen.contains(v))
        .collect();
    eprintln!(
        "original {} fixture: the tracker saw {} connections: {:#?}",
        fixture.name,
        visit.tracker.len(),
        visit.tracker
    );
    assert!(
        !visit.tracker.is_empty() && missing.is_empty(),
        "the ORIGINAL {} fixture must reach the tracker, or this test could not see a leak;\n\
         core vectors that did not: {missing:?}\ntracker saw: {:#?}\n{}",
        fixture.name,
        visit.tracker,
        visit.diagnostics()
    );
}

fn assert_reaches_only_proxy(fixture: &Fixture, visit: &Visit, signer: &Signer) {
    assert!(
        visit.tracker.is_empty(),
        "the REWRITTEN {} fixture reached the tracker ({} connections); leaked vectors:\n  {}\n{}",
        fixture.name,
        visit.tracker.len(),
        visit.tracker.join("\n  "),
        visit.diagnostics()
    );
    assert!(
        !visit.proxy.is_empty(),
        "the REWRITTEN {} fixture never reached the proxy\n{}",
        fixture.name,
        visit.diagnostics()
    );
    for line in &visit.proxy {
        let verified = request_target(line).map(|target| signer.verify(target));
        let upstream = match &verified {
            Some(Ok(signed)) => signed.target(),
            _ => panic!("the proxy was asked for {line:?}, not a signed URL: {verified:?}"),
        };
        assert!(
            names_tracker(upstream, visit.tracker_addr),
            "the proxy was asked to fetch {upstream}, which the fixture never named"
        );
    }
}

/// Whether `url` points at the tracker, by address or by a name under [`TRACKER_DOMAIN`].
fn names_tracker(url: &Url, tracker: SocketAddr) -> bool {
    let by_name = url
        .host_str()
        .is_some_and(|h| h == TRACKER_DOMAIN || h.ends_with(&format!(".{TRACKER_DOMAIN}")));
    let by_address = url.host_str() == Some(&tracker.ip().to_string())
        && url.port_or_known_default() == Some(tracker.port());
    by_name || by_address
}

// ---------------------------------------------------------------------------------------------
// The browser

/// How one Chromium run ended and what it printed.
struct ChromiumRun {
    status: ExitStatus,
    /// The DOM after loading (`--dump-dom`).
    dom: String,
    stderr: String,
}

/// The Chromium binary; fails the test, saying how to install it, when there is none.
fn chromium_binary() -> PathBuf {
    let path =
        std::env::var_os(CHROMIUM_ENV).map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    assert!(
        path.is_file(),
        "Chromium not found at {}: these tests need a real browser. Install Debian's package \
         (`apt-get install chromium`, as .ci/run does) or set {CHROMIUM_ENV} to a Chromium binary",
        path.display()
    );
    path
}

/// Loads `url` in a fresh headless Chromium, resolving [`TRACKER_DOMAIN`] names to `tracker`,
/// and waits for it to finish (killing it after [`CHROMIUM_TIMEOUT`]).
fn run_chromium(url: &str, tracker: SocketAddr) -> TestResult<ChromiumRun> {
    let binary = chromium_binary();
    let work = tempfile::tempdir()?;
    let (stdout_path, stderr_path) = (work.path().join("stdout"), work.path().join("stderr"));
    let mut command = Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
            "--virtual-time-budget=5000",
            "--window-size=1280,4000",
            "--run-all-compositor-stages-before-draw",
        ])
        .arg(format!(
            "--user-data-dir={}",
            work.path().join("profile").display()
        ))
        .arg(format!(
            "--host-resolver-rules=MAP {TRACKER_DOMAIN} {tracker}, MAP *.{TRACKER_DOMAIN} {tracker}"
        ));
    // Its own process group, so that a timeout kills the renderers and helpers too.
    command
        .arg(url)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path)?)
        .stderr(File::create(&stderr_path)?);
    let status = {
        let _turn = CHROMIUM_TURN.lock().unwrap_or_else(PoisonError::into_inner);
        let mut child = command.spawn()?;
        wait_or_kill(&mut child, CHROMIUM_TIMEOUT)
    };
    let stderr = std::fs::read_to_string(&stderr_path)?;
    let Some(status) = status else {
        panic!(
            "chromium did not finish within {CHROMIUM_TIMEOUT:?} and was killed; the end of its stderr:\n{}",
            tail(&stderr, 2000)
        );
    };
    Ok(ChromiumRun {
        status,
        dom: std::fs::read_to_string(&stdout_path)?,
        stderr,
    })
}

// ---------------------------------------------------------------------------------------------
// What the stand-ins answer

/// The tracker answers like the remote host it stands in for: a valid resource of the type
/// the path suggests, so that chains (stylesheets, frames) behave as they would for real.
fn answer_as_tracker(target: &str) -> Response {
    let path = target.split('?').next().unwrap_or(target);
    let extension = path.rsplit_once('.').map_or("", |(_, e)| e);
    match extension {
        "css" => Response::ok("text/css", "p { color: black; }"),
        "js" => Response::ok("text/javascript", "void 0;"),
        "html" => Response::ok("text/html", "<!DOCTYPE html><p>remote document</p>"),
        "svg" => Response::ok(
            "image/svg+xml",
            r#"<svg xmlns="http://www.w3.org/2000/svg"><rect id="shape" width="5" height="5"/><filter id="f"/><linearGradient id="p"/></svg>"#,
        ),
        "vtt" => Response::ok("text/vtt", "WEBVTT\n\n00:00.000 --> 00:01.000\ncaption\n"),
        _ => Response::ok("image/png", PNG_1X1),
    }
}

/// The stand-in proxy answers every signed-looking URL with an image; checking signatures
/// is left to the assertions, which see the log.
fn answer_as_proxy(target: &str) -> Response {
    if target.starts_with("/i/") {
        Response::ok("image/png", PNG_1X1)
    } else {
        Response::not_found()
    }
}
