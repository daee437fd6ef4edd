//! Socket activation (`systemd/mailveil.socket`) with systemd's own launcher,
//! `systemd-socket-activate`: it opens the sockets, then starts `mailveil serve` with
//! `LISTEN_FDS` exactly as systemd does for a socket unit.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::milter::{converse_on, newsletter, replacement, Changes, Sent};
use crate::util::{free_port, serve_config, wait_healthy};

/// `systemd-socket-activate -l ... mailveil serve --config ...`, killed on drop.
struct Activated {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Activated {
    fn spawn(dir: &std::path::Path, listen: &[String], config: &std::path::Path) -> Self {
        let log = dir.join("serve.log");
        let mut cmd = Command::new("systemd-socket-activate");
        for l in listen {
            cmd.arg(format!("--listen={l}"));
        }
        cmd.args(["-E", "MAILVEIL_LOG=info", "--"])
            .arg(env!("CARGO_BIN_EXE_mailveil"))
            .args(["serve", "--config", config.to_str().expect("utf-8")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        let child = cmd
            .spawn()
            .expect("systemd-socket-activate (Debian's systemd package) must be installed");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait(Duration::from_secs(20))
            .expect("serve stops on SIGTERM")
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test]
async fn serve_uses_the_sockets_systemd_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (port, api_port) = (free_port(), free_port());
    let milter_sock = d.join("milter.sock");
    let config = serve_config(
        d,
        port,
        &format!(
            "[api]\nlisten = \"127.0.0.1:{api_port}\"\ntokens = [\"secret-token-for-tests\"]\n\
             [milter]\nlisten = \"unix:{}\"\n",
            milter_sock.display()
        ),
    );
    // The order differs from the config's on purpose: sockets are matched by address.
    let mut daemon = Activated::spawn(
        d,
        &[
            milter_sock.display().to_string(),
            format!("127.0.0.1:{api_port}"),
            format!("127.0.0.1:{port}"),
        ],
        &config,
    );
    // The launcher holds every address before mailveil runs; mailveil binding any of them
    // itself would fail with "address in use", so answers prove it took the inherited ones.
    wait_healthy(&format!("http://127.0.0.1:{port}")).await;
    let log = daemon.log();
    assert!(log.contains("using the socket passed by systemd"), "{log}");
    assert!(
        log.contains("rewrite API using the socket passed by systemd"),
        "{log}"
    );
    assert!(
        log.contains("milter using the socket passed by systemd"),
        "{log}"
    );

    // The API answers on its inherited socket (401: no token sent).
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("http://127.0.0.1:{api_port}/api/v1/rewrite"))
        .header("content-type", "text/html")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"<img src=\"http://a.example/x.png\">",
        )))
        .expect("request");
    let resp = client.request(req).await.expect("API answers");
    assert_eq!(resp.status(), 401);

    // The milter rewrites on its inherited unix socket.
    let (message, _, _) = newsletter(3);
    let stream = tokio::net::UnixStream::connect(&milter_sock)
        .await
        .expect("connect to the milter");
    let response = converse_on(stream.compat(), &Sent::parse(&message)).await;
    let Changes { body, added, .. } = replacement(&response);
    assert!(
        body.is_some() && added.len() == 1,
        "milter rewrote the message"
    );

    assert!(daemon.terminate().success(), "{}", daemon.log());
    // The socket file belongs to systemd (the socket unit), which keeps it across restarts.
    assert!(
        milter_sock.exists(),
        "an inherited unix socket is left in place"
    );
}

#[tokio::test]
async fn a_socket_matching_no_listen_address_stops_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (port, stray) = (free_port(), free_port());
    let config = serve_config(d, port, "");
    let mut daemon = Activated::spawn(d, &[format!("127.0.0.1:{stray}")], &config);
    // The launcher starts the daemon on the first connection.
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", stray))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "launcher not listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = daemon.wait(Duration::from_secs(20)).expect("serve exits");
    assert!(!status.success());
    let log = daemon.log();
    assert!(
        log.contains(&format!("127.0.0.1:{stray} matches no listen address")),
        "error names the stray socket: {log}"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "nothing served on server.listen"
    );
}
