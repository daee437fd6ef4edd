//! `mailveil serve` as a process and as a TLS/HTTP/2 endpoint: zero-config start, graceful
//! shutdown on SIGTERM with a request in flight, TLS with ALPN h2.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mailveil::ContentPolicy;
use mailveil::Fetcher;
use mailveil::Metrics;
use mailveil::{Cache, CacheConfig};
use mailveil::{ListenerConfig, ProxyState};

use crate::server::{fetch_config, get, png};
use crate::upstream::{Route, Upstream};
use crate::util::{free_port, signer, wait_healthy, Sandbox};

/// Kills the child on drop so a failing test leaves no daemon behind.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    fn spawn(args: &[&str], home: &std::path::Path, config: Option<&std::path::Path>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailveil"));
        cmd.args(args)
            .env_clear()
            .env("HOME", home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(config) = config {
            cmd.env("MAILVEIL_CONFIG", config);
        }
        Daemon(cmd.spawn().expect("spawn mailveil serve"))
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "daemon did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test]
async fn serve_with_no_config_starts_a_working_proxy_and_stops_on_sigterm() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::spawn(&["serve"], home.path(), None);
    wait_healthy("http://127.0.0.1:8700").await;
    // The key made on first use is the one `sign` uses too.
    let signed = Command::new(env!("CARGO_BIN_EXE_mailveil"))
        .args(["sign", "http://10.1.2.3/pixel.gif"])
        .env_clear()
        .env("HOME", home.path())
        .output()
        .expect("sign");
    let url = String::from_utf8(signed.stdout).expect("utf-8");
    let got = get(url.trim()).await;
    assert_eq!(
        got.status, 403,
        "a private target is refused, but the signature was good"
    );
    let bad = get("http://127.0.0.1:8700/i/AAAAAAAAAAAAAAAAAAAAAA/aHR0cDovL3guZXhhbXBsZS8").await;
    assert_eq!(bad.status, 403);
    let metrics =
        String::from_utf8_lossy(&get("http://127.0.0.1:8700/metrics").await.body).into_owned();
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
    up.route(
        "/slow.png",
        Route::Body {
            content_type: "image/png",
            body: png(4, 4).into(),
            delay: Duration::from_millis(1500),
        },
    );
    let port = free_port();
    let sandbox = Sandbox::new("[fetch]\nallow_networks = [\"127.0.0.1/32\"]\n");
    let config = sandbox.dir.path().join("serve.toml");
    let text = std::fs::read_to_string(&sandbox.config)
        .expect("config")
        .replace(
            "[server]\n",
            &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        );
    std::fs::write(&config, text).expect("write");
    let mut daemon = Daemon::spawn(&["serve"], sandbox.dir.path(), Some(&config));
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let path = signer().sign(&url::Url::parse(&up.url("/slow.png")).expect("url"));
    let path = path
        .strip_prefix(crate::util::PUBLIC_URL)
        .expect("prefix")
        .to_owned();
    let in_flight = tokio::spawn({
        let url = format!("{base}{path}");
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.terminate();
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

    let cache = Cache::open(CacheConfig {
        dir: dir.path().join("cache"),
        max_disk_bytes: 1 << 20,
        memory_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
    })
    .expect("cache");
    let state = Arc::new(ProxyState::new(
        signer(),
        cache,
        Fetcher::new(fetch_config(&[])),
        ContentPolicy::default(),
        Arc::new(Metrics::new()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ListenerConfig {
        max_connections: 16,
        header_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        tls: Some(tls),
    };
    let task = tokio::spawn(mailveil::run_proxy(listener, state, config, async {
        let _ = stopped.await;
    }));

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
    let uri: http::Uri = format!("https://localhost:{port}/healthz")
        .parse()
        .expect("uri");
    let resp = client.get(uri).await.expect("https request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2, "ALPN negotiated h2");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"ok\n");
    let _ = stop.send(());
    let _ = task.await;
}

#[tokio::test]
async fn sighup_reloads_keys_without_a_restart() {
    let up = Upstream::start("127.0.0.1:0").await;
    up.body("/a.png", "image/png", png(3, 3));
    up.body("/b.png", "image/png", png(4, 4));
    let port = free_port();
    let sandbox = Sandbox::new("[fetch]\nallow_networks = [\"127.0.0.1/32\"]\n");
    let base_config = std::fs::read_to_string(&sandbox.config)
        .expect("config")
        .replace(
            "[server]\n",
            &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        );
    let config = sandbox.dir.path().join("serve.toml");
    std::fs::write(&config, &base_config).expect("write");
    let sign = |target: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_mailveil"))
            .args(["sign", "--config", config.to_str().expect("utf-8"), target])
            .env_clear()
            .env("HOME", sandbox.dir.path())
            .output()
            .expect("sign");
        let url = String::from_utf8(out.stdout).expect("utf-8");
        format!(
            "http://127.0.0.1:{port}{}",
            url.trim()
                .strip_prefix(crate::util::PUBLIC_URL)
                .expect("prefix")
        )
    };
    let mut daemon = Daemon::spawn(
        &["serve", "--config", config.to_str().expect("utf-8")],
        sandbox.dir.path(),
        None,
    );
    wait_healthy(&format!("http://127.0.0.1:{port}")).await;
    let old_url = sign(&up.url("/a.png"));
    assert_eq!(get(&old_url).await.status, 200);

    // Rotate: a new signing key, the old one kept for verifying.
    let old_key = sandbox.dir.path().join("key");
    let new_key = sandbox.dir.path().join("key2");
    std::fs::write(&new_key, format!("{}\n", "ab".repeat(32))).expect("key2");
    let rotated = base_config.replace(
        &format!("key_file = \"{}\"", old_key.display()),
        &format!(
            "key_file = \"{}\"\nprevious_key_files = [\"{}\"]",
            new_key.display(),
            old_key.display()
        ),
    );
    assert_ne!(rotated, base_config);
    std::fs::write(&config, &rotated).expect("rotate");
    let new_url = sign(&up.url("/b.png"));
    assert_eq!(
        get(&new_url).await.status,
        403,
        "the daemon does not know the new key yet"
    );
    let hup = Command::new("kill")
        .args(["-HUP", &daemon.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let started = Instant::now();
    while get(&new_url).await.status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "reload did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&old_url).await.status,
        200,
        "mail signed with the previous key still works"
    );
    assert!(
        daemon.0.try_wait().expect("try_wait").is_none(),
        "still the same process"
    );
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(15)).success());
}

/// Under systemd (`Type=notify`) READY must mean every listener is open, and SIGTERM must
/// say STOPPING. The test plays systemd's part with its own `NOTIFY_SOCKET`.
#[test]
fn notifies_ready_once_listening_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let (port, api_port) = (free_port(), free_port());
    let sandbox = Sandbox::new(&format!(
        "[api]\nlisten = \"127.0.0.1:{api_port}\"\ntokens = [\"secret-token-for-tests\"]\n"
    ));
    let config = sandbox.dir.path().join("serve.toml");
    let text = std::fs::read_to_string(&sandbox.config)
        .expect("config")
        .replace(
            "[server]\n",
            &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        );
    std::fs::write(&config, text).expect("write");
    let notify_path = sandbox.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let child = Command::new(env!("CARGO_BIN_EXE_mailveil"))
        .args(["serve", "--config", config.to_str().expect("utf-8")])
        .env_clear()
        .env("HOME", sandbox.dir.path())
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut daemon = Daemon(child);
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("a notification within 20 s");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "first notification: {message:?}"
    );
    // READY came after the listeners opened: both accept right away, with no retry.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("image endpoint listening at READY");
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
