//! The milter through the real daemon, driven by `miltr-client` the way an MTA drives it:
//! option negotiation, header fields, body chunks, end of body. Postfix itself is in
//! `tests/postfix.rs`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use miltr_client::Client;
use miltr_common::actions::Action;
use miltr_common::commands::{Body, Header};
use miltr_common::modifications::{ModificationAction, ModificationResponse};
use miltr_common::optneg::OptNeg;
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::util::{free_port, leaks, proxy_urls, serve_config, spool_jobs};

/// `mailveil serve` with a milter on loopback (or a Unix socket), in a temp dir.
pub struct MilterDaemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub milter: String,
    pub base: String,
}

impl Drop for MilterDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MilterDaemon {
    /// Starts serve with `[milter]` holding `milter_toml` plus a `listen` (inet on a free
    /// port unless `milter_toml` names one).
    pub async fn start(milter_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, milter_port) = (free_port(), free_port());
        let d = dir.path();
        let listen = if milter_toml.contains("listen") {
            String::new()
        } else {
            format!("listen = \"inet:127.0.0.1:{milter_port}\"\n")
        };
        let config = serve_config(d, port, &format!("[milter]\n{listen}{milter_toml}\n"));
        let child = Command::new(env!("CARGO_BIN_EXE_mailveil"))
            .args(["serve", "--config", config.to_str().expect("utf-8")])
            .env_clear()
            .env("HOME", d)
            .env("RUST_LOG", "mailveil=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("serve.log")).expect("log"))
            .spawn()
            .expect("spawn serve");
        let daemon = Self {
            child,
            milter: format!("127.0.0.1:{milter_port}"),
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        crate::util::wait_healthy(&daemon.base).await;
        daemon
    }

    pub fn jobs(&self) -> usize {
        spool_jobs(&self.dir.path().join("spool"))
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One message as the MTA sends it: header fields, then the body in chunks.
pub struct Sent {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Sent {
    /// Splits a CRLF message into header fields (unfolded lines kept as the MTA sends them)
    /// and body.
    pub fn parse(message: &[u8]) -> Self {
        let split = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("header end")
            + 2;
        let head = std::str::from_utf8(&message[..split]).expect("ascii headers");
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split_inclusive("\r\n") {
            if line.starts_with([' ', '\t']) {
                let last = headers.last_mut().expect("continuation after a field");
                last.1
                    .push_str(&format!("\n{}", line.trim_end_matches("\r\n")));
            } else if let Some((name, value)) = line.trim_end_matches("\r\n").split_once(':') {
                headers.push((name.to_owned(), value.trim_start().to_owned()));
            }
        }
        Self {
            headers,
            body: message[split + 2..].to_vec(),
        }
    }
}

/// Sends `sent` through the milter at `addr` and returns its answer.
pub async fn converse(addr: &str, sent: &Sent) -> ModificationResponse {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to milter");
    converse_on(stream.compat(), sent).await
}

pub async fn converse_on<RW>(stream: RW, sent: &Sent) -> ModificationResponse
where
    RW: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
{
    let client = Client::new(OptNeg::default());
    let mut connection = client
        .connect_via(stream)
        .await
        .expect("option negotiation");
    for (name, value) in &sent.headers {
        connection
            .header(Header::new(name.as_bytes(), value.as_bytes()))
            .await
            .expect("header");
    }
    connection.end_of_header().await.expect("end of header");
    for chunk in sent.body.chunks(60_000) {
        connection
            .body(Body::from(chunk))
            .await
            .expect("body chunk");
    }
    let response = tokio::time::timeout(Duration::from_secs(30), connection.end_of_body())
        .await
        .expect("milter answers within 30 s")
        .expect("end of body");
    let _ = connection.quit().await;
    response
}

/// What the milter asked the MTA to change.
pub struct Changes {
    /// The concatenated `ReplaceBody` chunks, if any.
    pub body: Option<Vec<u8>>,
    /// Header fields added.
    pub added: Vec<(String, String)>,
    /// Header fields deleted (changed to an empty value): name and index.
    pub deleted: Vec<(String, u32)>,
    /// Size of each `ReplaceBody` chunk.
    pub chunks: Vec<usize>,
}

pub fn replacement(response: &ModificationResponse) -> Changes {
    let mut changes = Changes {
        body: None,
        added: Vec::new(),
        deleted: Vec::new(),
        chunks: Vec::new(),
    };
    for m in response.modifications() {
        match m {
            ModificationAction::ReplaceBody(b) => {
                let text = b.body();
                changes.chunks.push(text.len());
                changes
                    .body
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(text.as_bytes());
            }
            ModificationAction::AddHeader(h) => changes
                .added
                .push((h.name().into_owned(), h.value().into_owned())),
            ModificationAction::ChangeHeader(h) if h.value().is_empty() => {
                changes.deleted.push((h.name().into_owned(), h.index()));
            }
            other => panic!("unexpected modification {other:?}"),
        }
    }
    changes
}

fn is_continue(response: &ModificationResponse) -> bool {
    matches!(response.final_action(), Action::Continue(_))
}

/// A multipart newsletter: a text part, an HTML part with `images` remote images (large
/// enough to need several replacement frames), and a base64 attachment.
pub fn newsletter(images: usize) -> (Vec<u8>, String, String) {
    let text_part =
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHello reader,\r\nthe plain version.\r\n";
    let attachment = "Content-Type: application/octet-stream; name=\"data.bin\"\r\n\
Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n\
AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4\r\n\
OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3Bx\r\n";
    let mut html = String::from("<html><body><p>News</p>\r\n");
    for i in 0..images {
        html.push_str(&format!(
            "<p>Item {i}: some words about it.</p><img src=\"https://img{}.remote.test/pic/{i}.png?u=reader\" width=\"600\" alt=\"item {i}\">\r\n",
            i % 7
        ));
    }
    html.push_str("<img src=\"https://list-manage.com/track/open.php?u=1&id=2\" width=\"1\" height=\"1\">\r\n</body></html>\r\n");
    let message = format!(
        "From: News <news@sender.example>\r\nTo: reader@test.example\r\nSubject: Weekly\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n\tboundary=\"b1\"\r\n\r\n\
preamble\r\n--b1\r\n{text_part}--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}--b1\r\n{attachment}--b1--\r\nepilogue\r\n"
    );
    (
        message.into_bytes(),
        text_part.to_owned(),
        attachment.to_owned(),
    )
}

#[tokio::test]
async fn milter_rewrites_html_in_chunks_and_keeps_the_rest() {
    let daemon = MilterDaemon::start("").await;
    let (message, text_part, attachment) = newsletter(2_000);
    assert!(
        message.len() > 3 * 65_536,
        "big enough to need several frames"
    );
    let mut sent = Sent::parse(&message);
    // Reports forged by the sender are deleted, last first.
    sent.headers.insert(
        1,
        (
            "X-Mailveil".into(),
            "proxied=999; trackers=0; removed=0".into(),
        ),
    );
    sent.headers.push(("x-mailveil".into(), "forged".into()));
    let response = converse(&daemon.milter, &sent).await;
    assert!(is_continue(&response), "{:?}", response.final_action());
    let Changes {
        body,
        added,
        deleted,
        chunks: sizes,
    } = replacement(&response);
    assert_eq!(
        deleted,
        vec![("X-Mailveil".to_owned(), 2), ("X-Mailveil".to_owned(), 1)]
    );
    let body = body.expect("the body is replaced");
    assert!(
        sizes.len() >= 3 && sizes.iter().all(|&n| n < 65_536),
        "chunks: {sizes:?}"
    );
    let body = String::from_utf8(body).expect("utf-8");
    assert_eq!(leaks(&body, &["list-manage.com"]), Vec::<String>::new());
    assert_eq!(
        proxy_urls(&body).len(),
        0,
        "the daemon's public_url, not the test one, is used"
    );
    assert!(body.matches(&format!("{}/i/", daemon.base)).count() >= 2_000);
    assert!(
        body.contains(&text_part) && body.contains(&attachment),
        "non-HTML parts byte-identical"
    );
    assert!(body.starts_with("preamble\r\n--b1\r\n") && body.ends_with("--b1--\r\nepilogue\r\n"));
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].0, "X-Mailveil");
    assert!(
        added[0].1.contains("proxied=2000") && added[0].1.contains("trackers=1"),
        "{}",
        added[0].1
    );
    assert_eq!(daemon.jobs(), 1, "prefetch queued");
    let metrics = crate::server::request("GET", &format!("{}/metrics", daemon.base), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("mailveil_milter_messages_total{outcome=\"rewritten\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn milter_passes_plain_large_and_broken_messages() {
    let daemon = MilterDaemon::start("max_message_bytes = 100000\n").await;

    // Nothing to rewrite: only the header is added.
    let plain = Sent::parse(
        b"From: a@sender.example\r\nTo: reader@test.example\r\nSubject: hi\r\n\r\nJust text.\r\n",
    );
    let response = converse(&daemon.milter, &plain).await;
    let Changes { body, added, .. } = replacement(&response);
    assert!(is_continue(&response) && body.is_none());
    assert_eq!(
        added,
        vec![(
            "X-Mailveil".to_owned(),
            "proxied=0; trackers=0; removed=0".to_owned()
        )]
    );

    // Over the bound: not held, not changed.
    let (big, _, _) = newsletter(1_000);
    let response = converse(&daemon.milter, &Sent::parse(&big)).await;
    assert!(
        is_continue(&response) && response.modifications().is_empty(),
        "{response:?}"
    );

    // Cannot be rewritten (more attached messages than the parser is trusted with).
    let mut nested =
        b"From: a@sender.example\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n".to_vec();
    for _ in 0..70 {
        nested.extend_from_slice(
            b"--x\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody\r\n",
        );
    }
    nested.extend_from_slice(b"--x--\r\n");
    let response = converse(&daemon.milter, &Sent::parse(&nested)).await;
    assert!(
        is_continue(&response) && response.modifications().is_empty(),
        "{response:?}"
    );
    assert_eq!(daemon.jobs(), 0);

    let metrics = crate::server::request("GET", &format!("{}/metrics", daemon.base), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for outcome in ["unchanged", "too_large", "failed"] {
        assert!(
            text.contains(&format!(
                "mailveil_milter_messages_total{{outcome=\"{outcome}\"}} 1"
            )),
            "{outcome}: {text}"
        );
    }
}

#[tokio::test]
async fn milter_tempfails_when_configured() {
    let daemon = MilterDaemon::start("on_error = \"tempfail\"\n").await;
    let mut nested =
        b"From: a@sender.example\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n".to_vec();
    for _ in 0..70 {
        nested.extend_from_slice(
            b"--x\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody\r\n",
        );
    }
    let response = converse(&daemon.milter, &Sent::parse(&nested)).await;
    assert!(
        matches!(response.final_action(), Action::Tempfail(_)),
        "{response:?}"
    );
    // A good message on the same daemon still goes through.
    let (message, _, _) = newsletter(3);
    let response = converse(&daemon.milter, &Sent::parse(&message)).await;
    assert!(is_continue(&response) && replacement(&response).body.is_some());
}

#[tokio::test]
async fn milter_on_a_unix_socket() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sockdir = tempfile::tempdir().expect("tempdir");
    let path = sockdir.path().join("milter.sock");
    // A socket left over from a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    let mut daemon = MilterDaemon::start(&format!("listen = \"unix:{}\"\n", path.display())).await;
    let meta = std::fs::metadata(&path).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let (message, _, _) = newsletter(5);
    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .expect("connect");
    let response = converse_on(stream.compat(), &Sent::parse(&message)).await;
    let Changes { body, added, .. } = replacement(&response);
    assert!(body.is_some() && added.len() == 1);
    daemon.terminate();
    assert!(!path.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn milter_refuses_a_non_socket_in_the_way() {
    let sockdir = tempfile::tempdir().expect("tempdir");
    let path = sockdir.path().join("milter.sock");
    std::fs::write(&path, "not a socket").expect("file");
    let config = serve_config(
        sockdir.path(),
        free_port(),
        &format!("[milter]\nlisten = \"unix:{}\"\n", path.display()),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mailveil"))
        .args(["serve", "--config", config.to_str().expect("utf-8")])
        .env_clear()
        .env("HOME", sockdir.path())
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("milter.listen") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("left alone"),
        "not a socket"
    );
}
