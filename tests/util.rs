//! Shared test harness: engines with fixed keys, fixtures, the leak checker, and running
//! the `mailveil` binary.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use mailveil::Engine;
use mailveil::TrackerMode;
use mailveil::TrackerRules;
use mailveil::{Key, Signer};
use url::Url;

/// The proxy base every test engine signs for.
pub const PUBLIC_URL: &str = "http://127.0.0.1:8700";
/// The key every test engine signs with.
pub const KEY: [u8; 32] = [42; 32];

pub fn signer() -> Signer {
    let base = Url::parse(PUBLIC_URL).expect("valid url");
    Signer::new(&base, Key::from_bytes(KEY), vec![])
}

pub fn engine(mode: TrackerMode) -> Engine {
    Engine::new(signer(), TrackerRules::builtin(), mode)
}

pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

pub fn read_data(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// Undoes CSS escapes (`\72 `, `\:`) so an escaped host cannot hide from the checker.
fn css_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let mut hex = String::new();
        while hex.len() < 6 && chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
            hex.extend(chars.next());
        }
        if hex.is_empty() {
            out.extend(chars.next());
        } else {
            if chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
        }
    }
    out
}

/// Every place where `needles` (or the fixtures' remote host suffix `remote.test`) still
/// appears after entity and CSS unescaping, with some context. Proxied URLs carry their
/// target in base64, so a surviving host name means a reference escaped the rewrite.
pub fn leaks(html: &str, needles: &[&str]) -> Vec<String> {
    let decoded = css_unescape(&htmlize::unescape(html)).to_ascii_lowercase();
    let mut found = Vec::new();
    for needle in std::iter::once("remote.test").chain(needles.iter().copied()) {
        for (at, _) in decoded.match_indices(needle) {
            let start = decoded.floor_char_boundary(at.saturating_sub(60));
            let end = decoded.ceil_char_boundary((at + needle.len() + 20).min(decoded.len()));
            found.push(decoded[start..end].to_owned());
        }
    }
    found
}

/// Every proxy URL in `text`, each of which must verify.
pub fn proxy_urls(text: &str) -> Vec<String> {
    let prefix = format!("{PUBLIC_URL}/i/");
    text.match_indices(&prefix)
        .map(|(at, _)| {
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "-_/:.".contains(c)))
                .unwrap_or(rest.len());
            rest[..end].to_owned()
        })
        .collect()
}

/// A config file and state directory in a temp dir, for running the binary.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Sandbox {
    pub fn new(extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, format!("{}\n", Key::from_bytes(KEY).to_hex())).expect("key");
        let config = dir.path().join("mailveil.toml");
        let toml = format!(
            "[server]\npublic_url = \"{PUBLIC_URL}\"\n[keys]\nkey_file = \"{}\"\n[cache]\ndir = \"{}\"\n[prefetch]\nspool_dir = \"{}\"\n{extra_toml}",
            key.display(),
            dir.path().join("cache").display(),
            dir.path().join("spool").display(),
        );
        std::fs::write(&config, toml).expect("config");
        Self { dir, config }
    }

    /// Runs `mailveil ARGS` with this sandbox's config, `input` on stdin.
    pub fn run(&self, args: &[&str], input: &[u8]) -> Output {
        run_binary(
            args,
            input,
            &[("MAILVEIL_CONFIG", self.config.as_os_str())],
            self.dir.path(),
        )
    }
}

/// Writes `dir/mailveil.toml` for a `serve` on 127.0.0.1:`port`, with its key, cache and
/// spool inside `dir`, followed by `extra` (more sections).
pub fn serve_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("mailveil.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
             [keys]\nkey_file = \"{}\"\n[cache]\ndir = \"{}\"\n[prefetch]\nspool_dir = \"{}\"\n{extra}",
            dir.join("key").display(),
            dir.join("cache").display(),
            dir.join("spool").display(),
        ),
    )
    .expect("config");
    path
}

/// Prefetch jobs waiting in `spool`.
pub fn spool_jobs(spool: &Path) -> usize {
    std::fs::read_dir(spool)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".job"))
                .count()
        })
        .unwrap_or(0)
}

/// Runs the built binary with a private HOME so nothing outside the test is touched.
pub fn run_binary(
    args: &[&str],
    input: &[u8],
    env: &[(&str, &std::ffi::OsStr)],
    home: &Path,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailveil"));
    cmd.args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn mailveil");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // Write from a thread so a large message cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait");
    let _ = writer.join();
    output
}

/// A port that was free a moment ago, for a daemon started as a separate process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until `{base}/healthz` answers 200.
pub async fn wait_healthy(base: &str) {
    let started = std::time::Instant::now();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    loop {
        let uri: http::Uri = format!("{base}/healthz").parse().expect("uri");
        if let Ok(Ok(resp)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), client.get(uri)).await
        {
            if resp.status() == 200 {
                return;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "daemon not healthy at {base}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
