//! The canary: a loopback HTTP/1.1 server that logs every connection it accepts, whether a
//! request came on it or not. Standing in for a sender, it proves that nothing reached the
//! sender (the SSRF suite, the browser tests' tracker); the browser tests also serve their
//! page and their stand-in proxy with it, since the same log is what they check.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::resume_unwind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the canary waits for a request on a connection it accepted.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the canary sends back for one request.
pub struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: "200 OK",
            content_type,
            body: body.into(),
        }
    }

    pub fn not_found() -> Self {
        Self {
            status: "404 Not Found",
            content_type: "text/plain",
            body: b"not found".to_vec(),
        }
    }
}

type Answer = dyn Fn(&str) -> Response + Send + Sync;

/// The server. Each connection gets one answer and is closed; the log has one line per
/// connection: its request line without the version (`GET /x.png`), or a note in angle
/// brackets when no HTTP request came (a preconnect, a TLS handshake).
pub struct Canary {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
    acceptor: JoinHandle<Vec<JoinHandle<()>>>,
}

impl Canary {
    /// Listens on `bind` (such as `127.0.0.1:0`), answering each request target with `answer`.
    pub fn start(
        bind: &str,
        answer: impl Fn(&str) -> Response + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let acceptor = {
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            thread::spawn(move || accept_until_stopped(&listener, &stop, &log, &answer))
        };
        Ok(Self {
            addr,
            stop,
            log,
            acceptor,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Accepts what is still queued, waits until every connection is answered, stops, and
    /// returns the log: complete, once whatever could connect is done.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let handlers = self
            .acceptor
            .join()
            .unwrap_or_else(|panic| resume_unwind(panic));
        for handler in handlers {
            handler.join().unwrap_or_else(|panic| resume_unwind(panic));
        }
        std::mem::take(&mut *lock(&self.log))
    }
}

/// The target of a logged request line (`GET /x.png` gives `/x.png`); None for notes.
pub fn request_target(line: &str) -> Option<&str> {
    let mut parts = line.split(' ');
    parts.next()?;
    parts.next().filter(|t| t.starts_with('/'))
}

/// Accepts connections, one thread each, until asked to stop and nothing is left queued.
fn accept_until_stopped(
    listener: &TcpListener,
    stop: &AtomicBool,
    log: &Arc<Mutex<Vec<String>>>,
    answer: &Arc<Answer>,
) -> Vec<JoinHandle<()>> {
    let mut handlers = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let (log, answer) = (Arc::clone(log), Arc::clone(answer));
                handlers.push(thread::spawn(move || {
                    serve_connection(stream, &log, &*answer)
                }));
            }
            // Stop only on an empty queue: every connection made is logged.
            Err(e) if e.kind() == ErrorKind::WouldBlock && stop.load(Ordering::SeqCst) => {
                return handlers;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                lock(log).push(format!("<accept failed: {e}>"));
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn serve_connection(mut stream: TcpStream, log: &Mutex<Vec<String>>, answer: &Answer) {
    let entry = match read_request_line(&mut stream) {
        Ok(Some(line)) => {
            if let Some(target) = request_target(&line) {
                // The client may have gone already; what it was sent does not matter then.
                let _ = write_response(&mut stream, &answer(target));
            }
            line
        }
        Ok(None) => "<connection closed without a request>".to_owned(),
        Err(e) => format!("<no request: {e}>"),
    };
    lock(log).push(entry);
}

/// Reads a request head and returns its first line without the HTTP version, a note when the
/// bytes are not HTTP, or None when the peer sent nothing.
fn read_request_line(stream: &mut TcpStream) -> io::Result<Option<String>> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    if head.is_empty() {
        return Ok(None);
    }
    let first = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first);
    Ok(Some(match line.rsplit_once(" HTTP/") {
        Some((request, _)) => request.to_owned(),
        None => format!("<not HTTP: {} bytes>", head.len()),
    }))
}

fn write_response(stream: &mut TcpStream, response: &Response) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Access-Control-Allow-Origin: *\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&response.body)?;
    stream.flush()
}

/// Locks a log even if a thread panicked while holding it: the entries are still good.
fn lock(log: &Mutex<Vec<String>>) -> MutexGuard<'_, Vec<String>> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}
