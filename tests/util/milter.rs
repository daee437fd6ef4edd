//! Talking to the milter as an MTA does (with `miltr-client`: option negotiation, header
//! fields, body chunks, end of body), the daemon that runs it, and the newsletter sent to it.

use std::path::Path;
use std::time::Duration;

use miltr_client::Client;
use miltr_common::actions::Action;
use miltr_common::commands::{Body, Header};
use miltr_common::modifications::{ModificationAction, ModificationResponse};
use miltr_common::optneg::OptNeg;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::free_port;
use super::process::Daemon;
use super::proxy::wait_healthy;
use super::sandbox::Sandbox;

/// `mailveil serve` with a milter, in a sandbox, logging at debug level.
pub struct Milter {
    // Declared first so that it is dropped (killed) before the sandbox is removed.
    pub daemon: Daemon,
    pub sandbox: Sandbox,
    /// The milter's `host:port` (meaningless when it listens on a unix socket).
    pub addr: String,
}

impl Milter {
    /// Starts serve with `[milter]` holding `milter_toml` plus a `listen` (inet on a free
    /// port unless `milter_toml` names one), and waits until it is healthy.
    pub async fn start(milter_toml: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let listen = if milter_toml.contains("listen") {
            String::new()
        } else {
            format!("listen = \"inet:{addr}\"\n")
        };
        let sandbox = Sandbox::serving(&format!("[milter]\n{listen}{milter_toml}"));
        let daemon = sandbox.daemon(&["serve"], &[("MAILVEIL_LOG", "mailveil=debug".as_ref())]);
        wait_healthy(&sandbox.base()).await;
        Self {
            daemon,
            sandbox,
            addr,
        }
    }
}

/// One message as the MTA sends it: header fields, then the body in chunks.
pub struct Sent {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the end of the headers is announced; a confused client does not, and the
    /// milter cannot tell where the body starts.
    pub end_of_header: bool,
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
            end_of_header: true,
        }
    }
}

/// Sends `sent` through the milter at `addr` (`host:port`) and returns its answer.
pub async fn converse(addr: &str, sent: &Sent) -> ModificationResponse {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to milter");
    converse_on(stream.compat(), sent).await
}

/// Sends `sent` through the milter on the unix socket at `path` and returns its answer.
pub async fn converse_unix(path: &Path, sent: &Sent) -> ModificationResponse {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect to the milter");
    converse_on(stream.compat(), sent).await
}

/// Sends `sent` through the milter on `stream` and returns its answer.
async fn converse_on<RW>(stream: RW, sent: &Sent) -> ModificationResponse
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
    if sent.end_of_header {
        connection.end_of_header().await.expect("end of header");
    }
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

/// Whether the milter let the message go on.
pub fn is_continue(response: &ModificationResponse) -> bool {
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
