//! The milter through the real daemon, driven by `miltr-client` the way an MTA drives it:
//! option negotiation, header fields, body chunks, end of body. Postfix itself is in
//! `system/postfix.rs`.

use std::time::Duration;

use miltr_common::actions::Action;

use crate::util::milter::{
    converse, converse_unix, is_continue, newsletter, replacement, Changes, Milter, Sent,
};
use crate::util::proxy::get;
use crate::util::sandbox::Sandbox;
use crate::util::{leaks, proxy_urls};

/// A message with more attached messages (70) than the parser is trusted with, without
/// its closing boundary line.
fn too_many_parts() -> Vec<u8> {
    // More parts than the line-anchored split follows: the parts cannot be found, so the
    // milter cannot rewrite the message.
    let mut message =
        b"From: a@sender.example\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n".to_vec();
    for _ in 0..10_001 {
        message.extend_from_slice(b"--x\r\n\r\n");
    }
    message.extend_from_slice(b"--x--\r\n");
    message
}

/// A message from a confused client that never announces the end of its headers: the
/// milter cannot tell its body from its header section and cannot rewrite it.
fn without_end_of_header() -> Sent {
    let mut sent = Sent::parse(b"From: a@sender.example\r\nSubject: x\r\n\r\nbody\r\n");
    sent.end_of_header = false;
    sent
}

#[tokio::test]
async fn milter_rewrites_html_in_chunks_and_keeps_the_rest() {
    let milter = Milter::start("").await;
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
    let response = converse(&milter.addr, &sent).await;
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
    assert!(
        body.matches(&format!("{}/i/", milter.sandbox.base()))
            .count()
            >= 2_000
    );
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
    assert_eq!(milter.sandbox.jobs(), 1, "prefetch queued");
    let metrics = get(&format!("{}/metrics", milter.sandbox.base())).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("mailveil_milter_messages_total{outcome=\"rewritten\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn milter_passes_plain_large_and_broken_messages() {
    let milter = Milter::start("max_message_bytes = 100000\n").await;

    // Nothing to rewrite: only the header is added.
    let plain = Sent::parse(
        b"From: a@sender.example\r\nTo: reader@test.example\r\nSubject: hi\r\n\r\nJust text.\r\n",
    );
    let response = converse(&milter.addr, &plain).await;
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
    let response = converse(&milter.addr, &Sent::parse(&big)).await;
    assert!(
        is_continue(&response) && response.modifications().is_empty(),
        "{response:?}"
    );

    // Cannot be rewritten (no end of the header section).
    let response = converse(&milter.addr, &without_end_of_header()).await;
    assert!(
        is_continue(&response) && response.modifications().is_empty(),
        "{response:?}"
    );

    // Issue 11: its parts cannot be found (more than can be followed); passing it on
    // would leave any HTML live, so it is shown as plain text, every body byte kept.
    let unsplittable = too_many_parts();
    let response = converse(&milter.addr, &Sent::parse(&unsplittable)).await;
    let Changes { body, added, .. } = replacement(&response);
    assert!(is_continue(&response) && body.is_none(), "{response:?}");
    let added: Vec<(&str, &str)> = added
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        added,
        vec![
            (
                "X-Mailveil-Original-Content-Type",
                "multipart/mixed; boundary=x"
            ),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Transfer-Encoding", "8bit"),
            (
                "X-Mailveil",
                "proxied=0; trackers=0; removed=0; neutralised=1"
            ),
        ]
    );
    assert_eq!(milter.sandbox.jobs(), 0);

    let metrics = get(&format!("{}/metrics", milter.sandbox.base())).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for outcome in ["unchanged", "too_large", "failed", "neutralised"] {
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
    let milter = Milter::start("on_error = \"tempfail\"\n").await;
    let response = converse(&milter.addr, &without_end_of_header()).await;
    assert!(
        matches!(response.final_action(), Action::Tempfail(_)),
        "{response:?}"
    );
    // A good message on the same daemon still goes through.
    let (message, _, _) = newsletter(3);
    let response = converse(&milter.addr, &Sent::parse(&message)).await;
    assert!(is_continue(&response) && replacement(&response).body.is_some());
}

#[tokio::test]
async fn milter_on_a_unix_socket() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sockdir = tempfile::tempdir().expect("tempdir");
    let path = sockdir.path().join("milter.sock");
    // A socket left over from a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    let mut milter = Milter::start(&format!("listen = \"unix:{}\"\n", path.display())).await;
    let meta = std::fs::metadata(&path).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let (message, _, _) = newsletter(5);
    let response = converse_unix(&path, &Sent::parse(&message)).await;
    let Changes { body, added, .. } = replacement(&response);
    assert!(body.is_some() && added.len() == 1);
    milter.daemon.terminate();
    milter.daemon.wait_exit(Duration::from_secs(20));
    assert!(!path.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn milter_refuses_a_non_socket_in_the_way() {
    let sockdir = tempfile::tempdir().expect("tempdir");
    let path = sockdir.path().join("milter.sock");
    std::fs::write(&path, "not a socket").expect("file");
    let sandbox = Sandbox::serving(&format!("[milter]\nlisten = \"unix:{}\"\n", path.display()));
    let out = sandbox.run(&["serve"], b"");
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
