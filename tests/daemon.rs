//! `mailveil serve` as a process and as a TLS/HTTP/2 endpoint: a start with the built-in
//! defaults, graceful shutdown on SIGTERM with a request in flight, key reload on SIGHUP,
//! systemd's readiness protocol, TLS with ALPN h2.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mailveil::Fetcher;

use crate::util::process::Daemon;
use crate::util::proxy::{fetch_config, get, png, signed_path, wait_healthy, Proxy};
use crate::util::sandbox::Sandbox;
use crate::util::upstream::{Gate, Route, Upstream};
use crate::util::wait::{until, until_async};
use crate::util::{free_port, listening};

/// Lets `serve` fetch from the loopback upstream.
const ALLOW_LOOPBACK: &str = "[fetch]\nallow_networks = [\"127.0.0.1/32\"]\n";

#[tokio::test]
async fn serve_with_no_config_starts_a_working_proxy_and_stops_on_sigterm() {
    // A config naming only where to listen (a free port: the default, 8700, may be taken):
    // the key, the cache and the spool are the built-in defaults, under the private HOME.
    let sandbox = Sandbox::serving_defaults();
    let mut daemon = sandbox.serve_healthy().await;
    // The key made on first use is the one `sign` uses too.
    let url = sandbox.sign("http://10.1.2.3/pixel.gif");
    let got = get(&url).await;
    assert_eq!(
        got.status, 403,
        "a private target is refused, but the signature was good"
    );
    let base = sandbox.base();
    let bad = get(&format!(
        "{base}/i/AAAAAAAAAAAAAAAAAAAAAA/aHR0cDovL3guZXhhbXBsZS8"
    ))
    .await;
    assert_eq!(bad.status, 403);
    let metrics = String::from_utf8_lossy(&get(&format!("{base}/metrics")).await.body).into_owned();
    assert!(metrics.contains("outcome=\"forbidden\"} 1"), "{metrics}");
    assert!(
        metrics.contains("outcome=\"bad_signature\"} 1"),
        "{metrics}"
    );
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let up = Upstream::start("127.0.0.1:0").await;
    let gate = Gate::default();
    up.route(
        "/held.png",
        Route::Held {
            content_type: "image/png",
            body: png(4, 4).into(),
            gate: gate.clone(),
        },
    );
    let sandbox = Sandbox::serving(ALLOW_LOOPBACK);
    let mut daemon = sandbox.serve_healthy().await;
    let in_flight = tokio::spawn({
        let url = format!("{}{}", sandbox.base(), signed_path(&up.url("/held.png")));
        async move { get(&url).await }
    });
    // In flight: the upstream has the request, and holds its answer.
    assert!(
        until(Duration::from_secs(10), || up.hits("/held.png") == 1).await,
        "the request never reached the upstream"
    );
    daemon.terminate();
    // Shutting down (serve closes its listener first) with the request still in flight.
    assert!(
        until(Duration::from_secs(10), || !listening(sandbox.port)).await,
        "serve did not begin to shut down"
    );
    gate.open();
    let got = in_flight.await.expect("join");
    assert_eq!(got.status, 200, "the in-flight request completed");
    assert!(daemon.wait_exit(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn tls_with_alpn_h2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    let tls = mailveil::load_tls(&cert_path, &key_path).expect("load tls");
    let proxy = Proxy::start_with(
        &dir.path().join("cache"),
        Fetcher::new(fetch_config(&[])),
        Some(tls),
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let client_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https);
    let uri: http::Uri = format!("https://localhost:{}/healthz", proxy.addr.port())
        .parse()
        .expect("uri");
    let resp = client.get(uri).await.expect("https request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2, "ALPN negotiated h2");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"ok\n");
    proxy.stop().await;
}

#[tokio::test]
async fn sighup_reloads_keys_without_a_restart() {
    let up = Upstream::start("127.0.0.1:0").await;
    up.body("/a.png", "image/png", png(3, 3));
    up.body("/b.png", "image/png", png(4, 4));
    let sandbox = Sandbox::serving(ALLOW_LOOPBACK);
    let config = sandbox.config.to_str().expect("utf-8");
    // Named on the command line, the file SIGHUP makes serve read again.
    let mut daemon = Daemon::spawn(&["serve", "--config", config], &[], sandbox.dir.path());
    wait_healthy(&sandbox.base()).await;
    let old_url = sandbox.sign(&up.url("/a.png"));
    assert_eq!(get(&old_url).await.status, 200);

    // Rotate: a new signing key, the old one kept for verifying.
    let old_key = sandbox.dir.path().join("key");
    let new_key = sandbox.dir.path().join("key2");
    std::fs::write(&new_key, format!("{}\n", "ab".repeat(32))).expect("key2");
    let before = std::fs::read_to_string(config).expect("config");
    sandbox.reconfigure(&format!(
        "{ALLOW_LOOPBACK}[keys]\nkey_file = \"{}\"\nprevious_key_files = [\"{}\"]\n",
        new_key.display(),
        old_key.display()
    ));
    assert_ne!(std::fs::read_to_string(config).expect("config"), before);
    let new_url = sandbox.sign(&up.url("/b.png"));
    assert_eq!(
        get(&new_url).await.status,
        403,
        "the daemon does not know the new key yet"
    );
    daemon.signal("HUP");
    let new_url = &new_url;
    assert!(
        until_async(Duration::from_secs(10), || async move {
            get(new_url).await.status == 200
        })
        .await,
        "reload did not take effect"
    );
    assert_eq!(
        get(&old_url).await.status,
        200,
        "mail signed with the previous key still works"
    );
    assert!(daemon.is_running(), "still the same process");
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(15)).success());
}

/// Under systemd (`Type=notify`) READY must mean every listener is open, and SIGTERM must
/// say STOPPING. The test plays systemd's part with its own `NOTIFY_SOCKET`.
#[test]
fn notifies_ready_once_listening_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let api_port = free_port();
    let sandbox = Sandbox::serving(&format!(
        "[api]\nlisten = \"127.0.0.1:{api_port}\"\ntokens = [\"secret-token-for-tests\"]\n"
    ));
    let notify_path = sandbox.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut daemon = sandbox.daemon(&["serve"], &[("NOTIFY_SOCKET", notify_path.as_os_str())]);
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("a notification within 20 s");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "first notification: {message:?}"
    );
    // READY came after the listeners opened: both accept right away, with no retry.
    std::net::TcpStream::connect(("127.0.0.1", sandbox.port))
        .expect("image endpoint listening at READY");
    std::net::TcpStream::connect(("127.0.0.1", api_port)).expect("rewrite API listening at READY");
    daemon.terminate();
    let n = notify.recv(&mut buf).expect("a notification on SIGTERM");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        message.lines().any(|l| l == "STOPPING=1"),
        "on SIGTERM: {message:?}"
    );
    assert!(daemon.wait_exit(Duration::from_secs(15)).success());
}
