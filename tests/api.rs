//! The rewrite API through the real daemon: tokens, size limit, HTML and message round
//! trips, prefetch jobs queued.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::request;
use crate::util::{free_port, leaks, serve_config, spool_jobs};

const TOKEN: &str = "test-token-0123456789abcdef";

struct Api {
    child: Child,
    dir: tempfile::TempDir,
    base: String,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start() -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, api_port) = (free_port(), free_port());
    let d = dir.path();
    let config = serve_config(
        d,
        port,
        &format!(
            "[api]\nlisten = \"127.0.0.1:{api_port}\"\ntokens = [\"{TOKEN}\"]\nmax_body_bytes = 65536\n"
        ),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_mailveil"))
        .args(["serve", "--config", config.to_str().expect("utf-8")])
        .env_clear()
        .env("HOME", d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let api = Api {
        child,
        dir,
        base: format!("http://127.0.0.1:{api_port}"),
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "api never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api
}

fn jobs(api: &Api) -> usize {
    spool_jobs(&api.dir.path().join("spool"))
}

async fn post(
    api: &Api,
    content_type: &str,
    token: Option<&str>,
    body: &str,
) -> crate::server::Got {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", content_type)];
    if let Some(auth) = auth.as_deref() {
        headers.push(("authorization", auth));
    }
    crate::server::request_with_body(
        "POST",
        &format!("{}/api/v1/rewrite", api.base),
        &headers,
        body.as_bytes().to_vec(),
    )
    .await
}

#[tokio::test]
async fn api_requires_a_token_limits_size_and_rewrites() {
    let api = start().await;
    let html = r#"<p>hi</p><img src="https://img.remote.test/a.png"><img src="https://img.remote.test/b.png">"#;
    assert_eq!(post(&api, "text/html", None, html).await.status, 401);
    assert_eq!(
        post(&api, "text/html", Some("wrong-token-0123456789"), html)
            .await
            .status,
        401
    );
    assert_eq!(
        request(
            "GET",
            &format!("{}/api/v1/rewrite", api.base),
            &[("authorization", &format!("Bearer {TOKEN}"))]
        )
        .await
        .status,
        405
    );
    assert_eq!(jobs(&api), 0, "nothing queued for strangers");

    let big = "x".repeat(70_000);
    assert_eq!(post(&api, "text/html", Some(TOKEN), &big).await.status, 413);
    assert_eq!(
        post(&api, "application/json", Some(TOKEN), "{}")
            .await
            .status,
        415
    );

    let got = post(&api, "text/html; charset=utf-8", Some(TOKEN), html).await;
    assert_eq!(got.status, 200);
    let out = String::from_utf8_lossy(&got.body).into_owned();
    assert!(leaks(&out, &[]).is_empty(), "{out}");
    assert_eq!(out.matches("/i/").count(), 2);
    assert_eq!(
        got.headers["x-mailveil"],
        "proxied=2; trackers=0; removed=0"
    );
    assert_eq!(jobs(&api), 1, "a prefetch job was queued");

    let message =
        format!("From: a@b.example\r\nSubject: x\r\nContent-Type: text/html\r\n\r\n{html}\r\n");
    let got = post(&api, "message/rfc822", Some(TOKEN), &message).await;
    assert_eq!(got.status, 200);
    let out = String::from_utf8_lossy(&got.body).into_owned();
    assert!(out.starts_with("X-Mailveil: proxied=2"), "{out}");
    assert!(out.contains("From: a@b.example\r\nSubject: x\r\n"));
    assert!(leaks(&out, &[]).is_empty());
    assert_eq!(jobs(&api), 2);
}
