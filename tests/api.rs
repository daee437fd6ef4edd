//! The rewrite API through the real daemon: tokens, size limit, HTML and message round
//! trips, prefetch jobs queued.

use std::time::Duration;

use crate::util::proxy::{request, request_with_body, Got};
use crate::util::sandbox::Sandbox;
use crate::util::wait::until;
use crate::util::{free_port, leaks, listening};

const TOKEN: &str = "test-token-0123456789abcdef";

/// POSTs `body` to the rewrite API at `base`, with `token` if any.
async fn post(base: &str, content_type: &str, token: Option<&str>, body: &str) -> Got {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", content_type)];
    if let Some(auth) = auth.as_deref() {
        headers.push(("authorization", auth));
    }
    request_with_body(
        "POST",
        &format!("{base}/api/v1/rewrite"),
        &headers,
        body.as_bytes().to_vec(),
    )
    .await
}

#[tokio::test]
async fn api_requires_a_token_limits_size_and_rewrites() {
    let api_port = free_port();
    let sandbox = Sandbox::serving(&format!(
        "[api]\nlisten = \"127.0.0.1:{api_port}\"\ntokens = [\"{TOKEN}\"]\nmax_body_bytes = 65536\n"
    ));
    let _daemon = sandbox.serve();
    assert!(
        until(Duration::from_secs(20), || listening(api_port)).await,
        "api never listened"
    );
    let api = &format!("http://127.0.0.1:{api_port}");
    let html = r#"<p>hi</p><img src="https://img.remote.test/a.png"><img src="https://img.remote.test/b.png">"#;
    assert_eq!(post(api, "text/html", None, html).await.status, 401);
    assert_eq!(
        post(api, "text/html", Some("wrong-token-0123456789"), html)
            .await
            .status,
        401
    );
    assert_eq!(
        request(
            "GET",
            &format!("{api}/api/v1/rewrite"),
            &[("authorization", &format!("Bearer {TOKEN}"))]
        )
        .await
        .status,
        405
    );
    assert_eq!(sandbox.jobs(), 0, "nothing queued for strangers");

    let big = "x".repeat(70_000);
    assert_eq!(post(api, "text/html", Some(TOKEN), &big).await.status, 413);
    assert_eq!(
        post(api, "application/json", Some(TOKEN), "{}")
            .await
            .status,
        415
    );

    let got = post(api, "text/html; charset=utf-8", Some(TOKEN), html).await;
    assert_eq!(got.status, 200);
    let out = String::from_utf8_lossy(&got.body).into_owned();
    assert!(leaks(&out, &[]).is_empty(), "{out}");
    assert_eq!(out.matches("/i/").count(), 2);
    assert_eq!(
        got.headers["x-mailveil"],
        "proxied=2; trackers=0; removed=0"
    );
    assert_eq!(sandbox.jobs(), 1, "a prefetch job was queued");

    let message =
        format!("From: a@b.example\r\nSubject: x\r\nContent-Type: text/html\r\n\r\n{html}\r\n");
    let got = post(api, "message/rfc822", Some(TOKEN), &message).await;
    assert_eq!(got.status, 200);
    let out = String::from_utf8_lossy(&got.body).into_owned();
    assert!(out.starts_with("X-Mailveil: proxied=2"), "{out}");
    assert!(out.contains("From: a@b.example\r\nSubject: x\r\n"));
    assert!(leaks(&out, &[]).is_empty());
    assert_eq!(sandbox.jobs(), 2);
}
