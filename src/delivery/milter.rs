//! The milter (Postfix `smtpd_milters`, Sendmail `INPUT_MAIL_FILTER`), run inside `serve`.
//!
//! The MTA streams each message to us as header fields and body chunks; at end of message
//! the message is put back together, rewritten by [`crate::rewrite::message::rewrite_parts`] (the
//! same engine and guarantees as `mailveil filter`), and the MTA is told to replace the body
//! and add the `X-Mailveil` header (deleting any that came with the message). The proxied URLs are queued for prefetch, as `filter`
//! does. Framing is `miltr-server`'s; this module is the glue.
//!
//! Never a rejection, never a lost message: a message larger than `milter.max_message_bytes`
//! is not held and goes on unchanged; a message that cannot be rewritten goes on unchanged
//! (`milter.on_error = "accept"`) or gets a temporary failure so the MTA retries
//! (`"tempfail"`). If mailveil is not running at all, the MTA's own default applies, which
//! the README says to set to accept (`milter_default_action = accept` in Postfix).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use miltr_common::actions::{Action, Continue, Tempfail};
use miltr_common::commands::{Body, Header};
use miltr_common::modifications::body::ReplaceBody;
use miltr_common::modifications::headers::{AddHeader, ChangeHeader};
use miltr_common::modifications::ModificationResponse;
use miltr_common::optneg::{Capability, OptNeg, Protocol};
use miltr_server::{Milter, Server};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::spool::Spool;
use crate::delivery::{queue_prefetch, SharedEngine};
use crate::metrics::{Metrics, MilterOutcome};
use crate::rewrite::html::Report;
use crate::rewrite::message::{
    rewrite_parts, FilterError, Filtered, CONTENT_FIELDS, HEADER_NAME, ORIGINAL_FIELD_PREFIX,
    PLAIN_TEXT_FIELDS,
};

/// Where the milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterListen {
    /// A TCP address.
    Inet(SocketAddr),
    /// A Unix-domain socket and the mode it is given.
    Unix(PathBuf, u32),
}

impl std::fmt::Display for MilterListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MilterListen::Inet(addr) => write!(f, "inet:{addr}"),
            MilterListen::Unix(path, _) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What the milter does when it cannot rewrite a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MilterOnError {
    /// Let the message through unchanged.
    Accept,
    /// Answer with a temporary failure; the MTA keeps the message and retries.
    Tempfail,
}

/// Settings of the milter listener.
#[derive(Debug, Clone)]
pub struct MilterConfig {
    /// The socket; `None` when the milter is off.
    pub listen: Option<MilterListen>,
    /// Largest message held in memory and rewritten.
    pub max_message_bytes: usize,
    /// Failure behaviour.
    pub on_error: MilterOnError,
}

/// Largest body piece sent back in one `SMFIR_REPLBODY` frame. The protocol's frames are
/// bounded at 64 KiB (Postfix and `miltr` both refuse larger ones); the rest is headroom
/// for the frame's own bytes.
pub const REPLACE_CHUNK: usize = 64 * 1024 - 64;

/// What every milter session shares.
#[derive(Debug)]
pub struct MilterState {
    engine: Arc<SharedEngine>,
    spool: Spool,
    metrics: Arc<Metrics>,
    max_message_bytes: usize,
    on_error: MilterOnError,
}

impl MilterState {
    /// Shared state; `engine` is the one the rewrite API uses, so SIGHUP reloads both.
    pub fn new(
        engine: Arc<SharedEngine>,
        spool: Spool,
        metrics: Arc<Metrics>,
        settings: &MilterConfig,
    ) -> Self {
        Self {
            engine,
            spool,
            metrics,
            max_message_bytes: settings.max_message_bytes,
            on_error: settings.on_error,
        }
    }
}

/// One MTA connection: the message being received, reset after each one.
struct Session {
    state: Arc<MilterState>,
    /// Header values arrive with their leading space (`SMFIP_HDR_LEADSPC`), so the header
    /// section can be put back together as it was written.
    leading_space: bool,
    /// The header section as received, then the body.
    message: Vec<u8>,
    /// Where the body starts in `message` (`None` until the end of the headers).
    body_start: Option<usize>,
    /// The message outgrew `max_message_bytes`; it will go on unchanged.
    too_large: bool,
    /// `X-Mailveil` fields that came with the message: the sender's, not ours.
    incoming_reports: u32,
    /// The top-level `Content-Type` and `Content-Transfer-Encoding` fields as received:
    /// name, index among the fields of that name (from 1), value. Renamed when a message
    /// whose parts cannot be found is shown as plain text.
    content_fields: Vec<(&'static str, u32, Vec<u8>)>,
}

/// Why a message was not rewritten.
enum Failure {
    /// Its parts cannot be found at all: shown as plain text instead.
    Unsplittable(String),
    /// Anything else: `milter.on_error` decides.
    Other(String),
}

impl Session {
    fn new(state: Arc<MilterState>) -> Self {
        Self {
            state,
            leading_space: false,
            message: Vec::new(),
            body_start: None,
            too_large: false,
            incoming_reports: 0,
            content_fields: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.message = Vec::new();
        self.body_start = None;
        self.too_large = false;
        self.incoming_reports = 0;
        self.content_fields.clear();
    }

    /// Appends to the held message unless that would pass the size bound.
    fn hold(&mut self, parts: &[&[u8]]) {
        if self.too_large {
            return;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.message.len() + len > self.state.max_message_bytes {
            self.too_large = true;
            self.message = Vec::new();
            return;
        }
        for part in parts {
            self.message.extend_from_slice(part);
        }
    }

    /// Decides what the MTA does with the message just received.
    async fn finish(&mut self) -> ModificationResponse {
        if self.too_large {
            self.state.metrics.milter_message(MilterOutcome::TooLarge);
            tracing::info!(
                limit = self.state.max_message_bytes,
                "milter: message too large, passed unchanged"
            );
            return ModificationResponse::empty_continue();
        }
        let Some(body_start) = self.body_start else {
            // End of body without an end of headers: a confused client. Let it go on.
            return self.failure("no end of headers before the end of the body");
        };
        let message = std::mem::take(&mut self.message);
        let state = self.state.clone();
        // Rewriting is CPU work on a whole message: keep it off the async threads. A panic
        // there surfaces as a join error and takes the failure path like any other error.
        let result = tokio::task::spawn_blocking(move || {
            let engine = state.engine.get();
            let filtered = rewrite_parts(&engine, &message).map_err(|e| match e {
                FilterError::Unsplittable(e) => Failure::Unsplittable(e.to_string()),
                e => Failure::Other(e.to_string()),
            })?;
            if filtered.message.get(..body_start) != message.get(..body_start) {
                let reason = "the header section changed while rewriting".to_owned();
                return Err(Failure::Other(reason));
            }
            queue_prefetch(&state.spool, &filtered.report);
            let changed = filtered.message[body_start..] != message[body_start..];
            Ok((filtered, changed))
        })
        .await;
        match result {
            Ok(Ok((filtered, changed))) => self.modifications(&filtered, body_start, changed),
            Ok(Err(Failure::Unsplittable(reason))) => self.as_plain_text(&reason),
            Ok(Err(Failure::Other(reason))) => self.failure(&reason),
            Err(_) => self.failure("internal error while rewriting (contained)"),
        }
    }

    /// A message whose parts cannot be found: its body shown as plain text, as `filter`
    /// does (nothing in plain text loads, every body byte is kept). The top-level
    /// `Content-Type` and `Content-Transfer-Encoding` are renamed `X-Mailveil-Original-…`.
    fn as_plain_text(&self, reason: &str) -> ModificationResponse {
        let mut builder = ModificationResponse::builder();
        for index in (1..=self.incoming_reports).rev() {
            builder.push(ChangeHeader::new(index, HEADER_NAME.as_bytes(), b""));
        }
        for (name, index, value) in self.content_fields.iter().rev() {
            builder.push(ChangeHeader::new(*index, name.as_bytes(), b""));
            let original = format!("{ORIGINAL_FIELD_PREFIX}{name}");
            builder.push(AddHeader::new(original.as_bytes(), value));
        }
        let report = Report {
            neutralised: 1,
            ..Report::default()
        }
        .header_value();
        let ours = [(HEADER_NAME, report.as_str())];
        for (name, value) in PLAIN_TEXT_FIELDS.iter().chain(&ours) {
            let value = self.header_value(value);
            builder.push(AddHeader::new(name.as_bytes(), value.as_bytes()));
        }
        self.state
            .metrics
            .milter_message(MilterOutcome::Neutralised);
        tracing::info!(
            reason,
            "milter: parts not found, message shown as plain text"
        );
        builder.contin()
    }

    /// With SMFIP_HDR_LEADSPC the MTA writes a value exactly as given, so the space after
    /// the colon is ours to send.
    fn header_value(&self, value: &str) -> String {
        if self.leading_space {
            format!(" {value}")
        } else {
            value.to_owned()
        }
    }

    /// What the MTA is told to change: the sender's reports deleted, the body replaced if it
    /// changed, our report added.
    fn modifications(
        &self,
        filtered: &Filtered,
        body_start: usize,
        changed: bool,
    ) -> ModificationResponse {
        let mut builder = ModificationResponse::builder();
        // A report that arrived with the message was written by the sender (or a relay) and
        // would be taken for ours: delete it. Last first, so each index still names the
        // field it named when the message came in.
        for index in (1..=self.incoming_reports).rev() {
            builder.push(ChangeHeader::new(index, HEADER_NAME.as_bytes(), b""));
        }
        if changed {
            for chunk in filtered.message[body_start..].chunks(REPLACE_CHUNK) {
                builder.push(ReplaceBody::new(chunk));
            }
        }
        let value = self.header_value(&filtered.report.header_value());
        builder.push(AddHeader::new(HEADER_NAME.as_bytes(), value.as_bytes()));
        self.state.metrics.milter_message(if changed {
            MilterOutcome::Rewritten
        } else {
            MilterOutcome::Unchanged
        });
        tracing::info!(
            proxied = filtered.report.proxied,
            trackers = filtered.report.trackers,
            removed = filtered.report.removed,
            html_parts = filtered.html_parts,
            fallback = filtered.fallback.as_deref(),
            "milter: message rewritten"
        );
        builder.contin()
    }

    /// Counts the failure and answers as `milter.on_error` says.
    fn failure(&self, reason: &str) -> ModificationResponse {
        self.state.metrics.milter_message(MilterOutcome::Failed);
        match self.state.on_error {
            MilterOnError::Accept => {
                tracing::warn!(reason, "milter: message passed unchanged");
                ModificationResponse::empty_continue()
            }
            MilterOnError::Tempfail => {
                tracing::warn!(
                    reason,
                    "milter: temporary failure returned; the MTA will retry"
                );
                ModificationResponse::builder().build(Tempfail)
            }
        }
    }
}

/// The MTA's header value as it would appear in the message: Postfix hands over folded
/// lines with bare LF between them; the message itself uses CRLF.
fn push_crlf_lines(out: &mut Vec<u8>, value: &[u8]) {
    let mut previous = 0u8;
    for &b in value {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
}

#[async_trait]
impl Milter for Session {
    type Error = std::convert::Infallible;

    async fn option_negotiation(
        &mut self,
        theirs: OptNeg,
    ) -> Result<OptNeg, miltr_server::Error<Self::Error>> {
        // Only the header fields and the body are needed: the MTA skips everything else.
        let wanted = OptNeg {
            capabilities: Capability::SMFIF_ADDHDRS
                | Capability::SMFIF_CHGHDRS
                | Capability::SMFIF_CHGBODY,
            protocol: Protocol::NO_CONNECT
                | Protocol::NO_HELO
                | Protocol::NO_MAIL
                | Protocol::NO_RECIPIENT
                | Protocol::NO_UNKNOWN
                | Protocol::NO_DATA
                | Protocol::SMFIP_HDR_LEADSPC,
            ..OptNeg::default()
        };
        let agreed = wanted
            .merge_compatible(&theirs)
            .map_err(miltr_common::ProtocolError::CompatibilityError)?;
        self.leading_space = agreed.protocol.contains(Protocol::SMFIP_HDR_LEADSPC);
        Ok(agreed)
    }

    async fn header(&mut self, header: Header) -> Result<Action, Self::Error> {
        if header.name().eq_ignore_ascii_case(HEADER_NAME) {
            self.incoming_reports = self.incoming_reports.saturating_add(1);
        }
        if let Some(name) = CONTENT_FIELDS
            .into_iter()
            .find(|n| header.name().eq_ignore_ascii_case(n))
        {
            let seen = self
                .content_fields
                .iter()
                .filter(|(n, ..)| *n == name)
                .count();
            let index = u32::try_from(seen + 1).unwrap_or(u32::MAX);
            self.content_fields
                .push((name, index, header.value().as_bytes().to_vec()));
        }
        let mut line = Vec::with_capacity(header.name().len() + header.value().len() + 4);
        line.extend_from_slice(header.name().as_bytes());
        line.push(b':');
        if !self.leading_space {
            line.push(b' ');
        }
        push_crlf_lines(&mut line, header.value().as_bytes());
        line.extend_from_slice(b"\r\n");
        self.hold(&[&line]);
        Ok(Continue.into())
    }

    async fn end_of_header(&mut self) -> Result<Action, Self::Error> {
        self.hold(&[b"\r\n"]);
        self.body_start = Some(self.message.len());
        Ok(Continue.into())
    }

    async fn body(&mut self, body: Body) -> Result<Action, Self::Error> {
        self.hold(&[body.as_bytes()]);
        Ok(Continue.into())
    }

    async fn end_of_body(&mut self) -> Result<ModificationResponse, Self::Error> {
        let response = self.finish().await;
        self.reset();
        Ok(response)
    }

    async fn abort(&mut self) -> Result<(), Self::Error> {
        self.reset();
        Ok(())
    }
}

/// A bound milter socket.
#[derive(Debug)]
pub enum Listener {
    /// `inet:host:port`.
    Inet(TcpListener),
    /// `unix:/path`; a socket file this process created is removed when the listener is
    /// dropped (one inherited from systemd belongs to systemd and stays).
    Unix(UnixListener, SocketFile),
}

impl Listener {
    /// Opens the socket (inside a tokio runtime). A `unix:` socket left over from an earlier
    /// run is replaced; any other file in the way is an error.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn bind(listen: &MilterListen) -> std::io::Result<Self> {
        match listen {
            MilterListen::Inet(addr) => {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(Self::Inet(TcpListener::from_std(listener)?))
            }
            MilterListen::Unix(path, mode) => {
                let listener = bind_unix(path, *mode)?;
                Ok(Self::Unix(
                    listener,
                    SocketFile {
                        path: path.clone(),
                        remove: true,
                    },
                ))
            }
        }
    }

    /// A listener on a TCP socket someone else opened (systemd socket activation); it must
    /// already be non-blocking.
    ///
    /// # Errors
    /// When tokio cannot take the socket.
    pub fn inherited_tcp(listener: std::net::TcpListener) -> std::io::Result<Self> {
        TcpListener::from_std(listener).map(Self::Inet)
    }

    /// A listener on a unix socket someone else opened at `path` (systemd socket
    /// activation); it must already be non-blocking. The socket file is theirs: it is not
    /// removed when the listener closes.
    ///
    /// # Errors
    /// When tokio cannot take the socket.
    pub fn inherited_unix(
        listener: std::os::unix::net::UnixListener,
        path: &Path,
    ) -> std::io::Result<Self> {
        let file = SocketFile {
            path: path.to_owned(),
            remove: false,
        };
        UnixListener::from_std(listener).map(|l| Self::Unix(l, file))
    }

    async fn accept_session(
        &self,
        tracker: &TaskTracker,
        permit: OwnedSemaphorePermit,
        state: &Arc<MilterState>,
    ) -> std::io::Result<()> {
        match self {
            Self::Inet(l) => spawn_session(tracker, permit, state, l.accept().await?.0),
            Self::Unix(l, _) => spawn_session(tracker, permit, state, l.accept().await?.0),
        }
        Ok(())
    }
}

/// Serves MTA connections until `stop`, then waits for the sessions in flight (each ends
/// when its MTA finishes the current message and hangs up). At most `max_sessions` at once.
///
/// # Errors
/// None today; the signature leaves room for fatal listener errors.
pub async fn run(
    listener: Listener,
    state: Arc<MilterState>,
    max_sessions: usize,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(max_sessions));
    let tracker = TaskTracker::new();
    tracing::info!(listen = %describe(&listener), "milter listening");
    loop {
        // Wait for capacity before accepting: at the bound, new MTA connections wait in the
        // kernel's backlog (the MTA applies its own timeout and default action) rather
        // than us holding unbounded messages.
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept_session(&tracker, permit, &state) => a,
        };
        if let Err(e) = accepted {
            accept_error(&e).await;
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

fn describe(listener: &Listener) -> String {
    match listener {
        Listener::Inet(l) => l
            .local_addr()
            .map_or_else(|_| "inet:?".into(), |a| format!("inet:{a}")),
        Listener::Unix(_, file) => format!("unix:{}", file.path.display()),
    }
}

fn spawn_session<S>(
    tracker: &TaskTracker,
    permit: OwnedSemaphorePermit,
    state: &Arc<MilterState>,
    stream: S,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut session = Session::new(state.clone());
    tracker.spawn(async move {
        let _permit = permit;
        let mut server = Server::default_postfix(&mut session);
        if let Err(e) = server.handle_connection(stream.compat()).await {
            tracing::debug!(error = %e, "milter: connection ended");
        }
    });
}

async fn accept_error(e: &std::io::Error) {
    // Out of descriptors and the like: wait a little instead of spinning.
    tracing::warn!(error = %e, "milter: accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

fn bind_unix(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// A unix socket's path; removed when the listener stops if this process created it.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    remove: bool,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_values_get_crlf() {
        let mut out = Vec::new();
        push_crlf_lines(&mut out, b"a\n\tb\r\n c");
        assert_eq!(out, b"a\r\n\tb\r\n c");
    }

    #[test]
    fn chunks_fit_a_frame() {
        // Length prefix, command byte and data within the 64 KiB frame bound.
        const { assert!(REPLACE_CHUNK + 1 + 4 < 1 << 16) };
    }
}
