//! Socket activation (`systemd/mailveil.socket`) with systemd's own launcher,
//! `systemd-socket-activate`: it opens the sockets, then starts `mailveil serve` with
//! `LISTEN_FDS` exactly as systemd does for a socket unit.

use std::time::Duration;

use crate::util::milter::{converse_unix, newsletter, replacement, Changes, Sent};
use crate::util::process::Daemon;
use crate::util::proxy::{request_with_body, wait_healthy};
use crate::util::sandbox::Sandbox;
use crate::util::wait::until;
use crate::util::{free_port, listening};

/// `systemd-socket-activate --listen=... mailveil serve` with `sandbox`'s config: the
/// launcher holds the sockets and executes serve in its own place on the first connection.
fn activate(sandbox: &Sandbox, listen: &[String]) -> Daemon {
    let mut launcher = vec!["systemd-socket-activate".to_owned()];
    launcher.extend(listen.iter().map(|l| format!("--listen={l}")));
    // The launcher passes on HOME, PATH and what -E names, not the rest of its environment.
    launcher.extend(["-E", "MAILVEIL_LOG=info", "--"].map(String::from));
    let config = sandbox.config.to_str().expect("utf-8");
    Daemon::spawn_via(
        &launcher,
        &["serve", "--config", config],
        &[],
        sandbox.dir.path(),
    )
}

#[tokio::test]
async fn serve_uses_the_sockets_systemd_opened() {
    let sockdir = tempfile::tempdir().expect("tempdir");
    let api_port = free_port();
    let milter_sock = sockdir.path().join("milter.sock");
    let sandbox = Sandbox::serving(&format!(
        "[api]\nlisten = \"127.0.0.1:{api_port}\"\ntokens = [\"secret-token-for-tests\"]\n\
         [milter]\nlisten = \"unix:{}\"\n",
        milter_sock.display()
    ));
    // The order differs from the config's on purpose: sockets are matched by address.
    let mut daemon = activate(
        &sandbox,
        &[
            milter_sock.display().to_string(),
            format!("127.0.0.1:{api_port}"),
            format!("127.0.0.1:{}", sandbox.port),
        ],
    );
    // The launcher holds every address before mailveil runs; mailveil binding any of them
    // itself would fail with "address in use", so answers prove it took the inherited ones.
    wait_healthy(&sandbox.base()).await;
    let log = daemon.stderr();
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
    let resp = request_with_body(
        "POST",
        &format!("http://127.0.0.1:{api_port}/api/v1/rewrite"),
        &[("content-type", "text/html")],
        b"<img src=\"http://a.example/x.png\">".to_vec(),
    )
    .await;
    assert_eq!(resp.status, 401);

    // The milter rewrites on its inherited unix socket.
    let (message, _, _) = newsletter(3);
    let response = converse_unix(&milter_sock, &Sent::parse(&message)).await;
    let Changes { body, added, .. } = replacement(&response);
    assert!(
        body.is_some() && added.len() == 1,
        "milter rewrote the message"
    );

    daemon.terminate();
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{}", daemon.stderr());
    // The socket file belongs to systemd (the socket unit), which keeps it across restarts.
    assert!(
        milter_sock.exists(),
        "an inherited unix socket is left in place"
    );
}

#[tokio::test]
async fn a_socket_matching_no_listen_address_stops_serve() {
    let stray = free_port();
    let sandbox = Sandbox::serving("");
    let mut daemon = activate(&sandbox, &[format!("127.0.0.1:{stray}")]);
    // The launcher starts the daemon on the first connection.
    assert!(
        until(Duration::from_secs(10), || listening(stray)).await,
        "launcher not listening"
    );
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = daemon.stderr();
    assert!(
        log.contains(&format!("127.0.0.1:{stray} matches no listen address")),
        "error names the stray socket: {log}"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", sandbox.port))
            .await
            .is_err(),
        "nothing served on server.listen"
    );
}
