//! `mailveil filter` end to end, through the real binary: MIME walking and re-encoding,
//! byte-identity of everything that is not HTML, and never losing a message.

use base64::Engine as _;

use crate::util::leaks;
use crate::util::sandbox::Sandbox;

const TEXT_PART: &str = "Hello in plain text.\r\nSecond line with =3D and trailing space \r\n";

fn qp(html: &str) -> String {
    quoted_printable::encode_to_str(html.as_bytes())
}

fn b64_lines(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    encoded
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned() + "\r\n")
        .collect()
}

fn alternative_message(html_part: &str) -> String {
    format!(
        "From: News <news@sender.example>\r\nTo: reader@example.org\r\nSubject: Weekly\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\nThis is a preamble.\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{TEXT_PART}--b1\r\n{html_part}--b1--\r\nAn epilogue.\r\n"
    )
}

fn run_filter(input: &[u8]) -> (Vec<u8>, String, i32) {
    let sandbox = Sandbox::new("");
    let out = sandbox.run(&["filter"], input);
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn assert_contains(haystack: &[u8], needle: &[u8], what: &str) {
    assert!(
        haystack.windows(needle.len().max(1)).any(|w| w == needle),
        "{what} not found byte-identical in output"
    );
}

fn html_doc(n: usize) -> String {
    let imgs: String = (0..n)
        .map(|i| format!("<img src=\"https://img.remote.test/{i}.png\" alt=\"\u{e9}\">\n"))
        .collect();
    format!("<html><body><p>Caf\u{e9} \u{2014} news</p>\n{imgs}<a href=\"https://keep.example/\">read</a></body></html>\n")
}

#[test]
fn quoted_printable_html_part_is_rewritten_and_the_rest_is_identical() {
    let html_part = format!(
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n",
        qp(&html_doc(3)).replace('\n', "\r\n")
    );
    let input = alternative_message(&html_part);
    let (out, err, code) = run_filter(input.as_bytes());
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("X-Mailveil: proxied=3; trackers=0; removed=0"),
        "{text}"
    );
    assert_eq!(text.matches("X-Mailveil:").count(), 1);
    let decoded = quoted_printable::decode(&out, quoted_printable::ParseMode::Robust).expect("qp");
    let decoded = String::from_utf8_lossy(&decoded);
    assert!(leaks(&decoded, &[]).is_empty(), "{decoded}");
    assert!(
        decoded.contains("Caf\u{e9} \u{2014} news"),
        "charset preserved"
    );
    let original_headers = input.split("\r\n\r\n").next().expect("headers");
    assert_contains(&out, original_headers.as_bytes(), "headers");
    assert_contains(&out, format!("This is a preamble.\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{TEXT_PART}--b1\r\n").as_bytes(), "text part");
    assert!(text.ends_with("--b1--\r\nAn epilogue.\r\n"), "epilogue");
}

#[test]
fn base64_html_part_in_latin1_is_rewritten() {
    let doc = html_doc(2);
    let (latin1, _, _) = encoding_rs::WINDOWS_1252.encode(&doc);
    let html_part = format!(
        "Content-Type: text/html; charset=\"ISO-8859-1\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        b64_lines(&latin1)
    );
    let (out, err, code) = run_filter(alternative_message(&html_part).as_bytes());
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out).into_owned();
    let body = text
        .split("Content-Transfer-Encoding: base64\r\n\r\n")
        .nth(1)
        .expect("part");
    let b64: String = body
        .split("--b1")
        .next()
        .expect("body")
        .split_whitespace()
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let (html, _, malformed) = encoding_rs::WINDOWS_1252.decode(&bytes);
    assert!(!malformed);
    assert!(html.contains("Caf\u{e9}"), "{html}");
    assert!(leaks(&html, &[]).is_empty(), "{html}");
    assert_eq!(html.matches("/i/").count(), 2);
    for line in body.split("\r\n").take_while(|l| !l.starts_with("--")) {
        assert!(line.len() <= 76, "base64 lines wrapped at 76: {line:?}");
    }
}

#[test]
fn html_inside_an_attached_message_is_rewritten() {
    let inner = format!(
        "From: a@b.example\r\nSubject: inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{}",
        html_doc(1).replace('\n', "\r\n")
    );
    let input = format!(
        "From: x@y.example\r\nSubject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--outer--\r\n"
    );
    let (out, err, code) = run_filter(input.as_bytes());
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out);
    assert!(leaks(&text, &[]).is_empty(), "{text}");
    assert!(text.contains("proxied=1"), "{text}");
    assert_contains(
        &out,
        b"From: a@b.example\r\nSubject: inner\r\n",
        "inner headers",
    );
}

#[test]
fn lf_only_messages_keep_lf() {
    let input = format!(
        "From: a@b.example\nSubject: lf\nContent-Type: text/html; charset=utf-8\n\n{}",
        html_doc(1)
    );
    let (out, err, code) = run_filter(input.as_bytes());
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&b'\r'), "no CR introduced");
    assert!(String::from_utf8_lossy(&out).starts_with("X-Mailveil: proxied=1"));
}

#[test]
fn unknown_charset_keeps_unknown_bytes() {
    let mut input = b"From: a@b.example\r\nContent-Type: text/html; charset=x-no-such-charset\r\n\r\n<p>\xff\xfe\x80 bytes</p><img src=\"https://img.remote.test/a.png\">\r\n".to_vec();
    let (out, err, code) = run_filter(&input);
    assert_eq!(code, 0, "{err}");
    assert_contains(&out, b"<p>\xff\xfe\x80 bytes</p>", "undecodable bytes");
    assert!(leaks(&String::from_utf8_lossy(&out), &[]).is_empty());
    input.clear();
}

#[test]
fn empty_input_passes_through() {
    let (out, err, code) = run_filter(b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
}

#[test]
fn binary_junk_passes_through_unchanged() {
    let junk: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (out, err, code) = run_filter(&junk);
    assert_eq!(code, 0, "{err}");
    assert!(
        out == junk || out.ends_with(&junk),
        "junk must come out whole"
    );
}

#[test]
fn truncated_messages_are_never_lost() {
    let html_part = format!(
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        b64_lines(html_doc(5).as_bytes())
    );
    let full = alternative_message(&html_part);
    for cut in [
        10,
        50,
        full.len() / 3,
        full.len() / 2,
        full.len() * 3 / 4,
        full.len() - 5,
    ] {
        let input = &full.as_bytes()[..cut];
        let (out, err, code) = run_filter(input);
        assert_eq!(code, 0, "cut at {cut}: {err}");
        assert!(!out.is_empty(), "cut at {cut}: nothing written");
        let head = input
            .iter()
            .position(|&b| b == b'\n')
            .map_or(input, |p| &input[..p]);
        assert_contains(&out, head, "first line of the input");
    }
}

#[test]
fn multipart_nested_1000_deep_is_handled() {
    let depth = 1000;
    let mut body = String::from(
        "Content-Type: text/html; charset=utf-8\r\n\r\n<img src=\"https://deep.remote.test/x.png\">\r\n",
    );
    for i in (0..depth).rev() {
        body = format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n{body}\r\n--b{i}--\r\n"
        );
    }
    let input = format!("From: a@b.example\r\nSubject: deep\r\nMIME-Version: 1.0\r\n{body}");
    let (out, err, code) = run_filter(input.as_bytes());
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out);
    // Rewritten (issue 11: passing it through whole would leave its image live).
    assert!(text.starts_with("X-Mailveil:"), "{err}");
    assert!(leaks(&text, &[]).is_empty());
    assert!(text.contains("proxied=1"), "{}", &text[..200]);
}

#[test]
fn fifty_megabyte_message_keeps_its_attachment() {
    let attachment: Vec<u8> = (0..(50u32 << 20) / 4 * 3)
        .map(|i| (i % 251) as u8)
        .collect();
    let encoded = b64_lines(&attachment);
    let input = format!(
        "From: a@b.example\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"big\"\r\n\r\n--big\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{}\r\n--big\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}--big--\r\n",
        html_doc(2)
    );
    assert!(input.len() > 50_000_000);
    let (out, err, code) = run_filter(input.as_bytes());
    assert_eq!(code, 0, "{err}");
    assert!(leaks(&String::from_utf8_lossy(&out[..4096.min(out.len())]), &[]).is_empty());
    assert!(
        out.ends_with(format!("{encoded}--big--\r\n").as_bytes()),
        "attachment identical"
    );
}

#[test]
fn oversized_messages_stream_through_unchanged() {
    let sandbox = Sandbox::new("[filter]\nmax_message_bytes = 4096\n");
    let input = format!(
        "From: a@b.example\r\nContent-Type: text/html\r\n\r\n{}",
        "<img src=\"https://img.remote.test/a.png\">\r\n".repeat(1000)
    );
    let out = sandbox.run(&["filter"], input.as_bytes());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, input.as_bytes());
}

#[test]
fn broken_config_still_delivers_the_message() {
    let sandbox = Sandbox::new("[trackers]\nmode = \"sometimes\"\n");
    let input = b"From: a@b.example\r\nContent-Type: text/html\r\n\r\n<img src=\"https://x.example/a.png\">\r\n";
    let out = sandbox.run(&["filter"], input);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, input);
    assert!(String::from_utf8_lossy(&out.stderr).contains("trackers.mode"));
}

#[test]
fn tempfail_mode_exits_75_with_the_original() {
    let sandbox = Sandbox::new("[filter]\non_error = \"tempfail\"\n");
    // Make the key unusable: the engine cannot be built.
    std::fs::write(sandbox.dir.path().join("key"), "garbage").expect("key");
    let input = b"From: a@b.example\r\nContent-Type: text/html\r\n\r\n<img src=\"https://x.example/a.png\">\r\n";
    let out = sandbox.run(&["filter"], input);
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(out.stdout, input);
    let pass = Sandbox::new("");
    std::fs::write(pass.dir.path().join("key"), "garbage").expect("key");
    let out = pass.run(&["filter"], input);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, input);
}

#[test]
fn attached_messages_nested_10000_deep_are_shown_as_plain_text() {
    // Issue 11: deeper than the parts can be found. Passing it on would leave the HTML
    // live; shown as plain text, nothing loads and every byte is still there.
    let mut message = String::from(
        "Content-Type: text/html\r\n\r\n<img src=\"https://deep.remote.test/x.png\">\r\n",
    );
    for _ in 0..10_000 {
        message = format!("From: a@b.example\r\nContent-Type: message/rfc822\r\n\r\n{message}");
    }
    let (out, err, code) = run_filter(message.as_bytes());
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).expect("utf-8");
    let (head, body) = out.split_once("\r\n\r\n").expect("header section");
    assert!(
        head.starts_with("X-Mailveil: proxied=0; trackers=0; removed=0; neutralised=1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Content-Type: text/plain; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(
        head.contains("X-Mailveil-Original-Content-Type: message/rfc822"),
        "{head}"
    );
    assert_eq!(body, message.split_once("\r\n\r\n").expect("original").1);
    assert!(err.contains("neutralised"), "{err}");
}

#[test]
fn mentions_of_attached_messages_do_not_switch_the_filter_off() {
    // Issue 11: `message/rfc822` written 65 times in a comment and the subject used to
    // make the filter pass the message on untouched, trackers live.
    let mentions = "message/rfc822 ".repeat(65);
    let html = format!("<!-- {mentions} --><img src=\"https://pixel.remote.test/open.gif\">");
    let message = format!(
        "From: a@b.example\r\nSubject: {mentions}\r\nContent-Type: text/html\r\n\r\n{html}\r\n"
    );
    let (out, err, code) = run_filter(message.as_bytes());
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).expect("utf-8");
    assert!(!out.contains("pixel.remote.test"), "{out}");
    assert!(out.starts_with("X-Mailveil: proxied=1"), "{out}");
}

#[test]
fn a_forged_report_is_replaced_by_ours() {
    let message = "X-Mailveil: proxied=0; trackers=0; removed=0\r\nFrom: a@b.example\r\n\
                   Content-Type: text/html\r\n\r\n<img src=\"https://t.remote.test/p.gif\">\r\n";
    let (out, err, code) = run_filter(message.as_bytes());
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).expect("utf-8");
    assert_eq!(out.matches("X-Mailveil:").count(), 1, "{out}");
    assert!(out.starts_with("X-Mailveil: proxied=1"), "{out}");
}

/// Issue 11: the HTML a neutralised part carries has only mailveil's own frame tags, so
/// nothing in it can load, whatever the sender wrote.
fn assert_inert(html: &str) {
    let allowed = [
        "!DOCTYPE html",
        "html",
        "/html",
        "body",
        "/body",
        "p",
        "/p",
        "b",
        "/b",
        "div",
        "/div",
        "br",
    ];
    for tag in html.split('<').skip(1) {
        let name = tag.split('>').next().unwrap_or_default();
        assert!(allowed.contains(&name), "a live tag <{name}> in {html}");
    }
    assert!(html.contains("nothing in it was loaded"), "{html}");
}

/// The bodies of the `text/html` parts of an LF or CRLF message split at `--boundary`
/// (the test messages have one level).
fn html_bodies<'a>(message: &'a str, boundary: &str) -> Vec<&'a str> {
    message
        .split(&format!("--{boundary}"))
        .filter(|p| p.contains("Content-Type: text/html"))
        .filter_map(|p| p.split_once("\r\n\r\n").map(|(_, body)| body))
        .collect()
}

#[test]
fn more_html_parts_than_the_limit_are_neutralised_not_passed() {
    // Issue 11: the 257th text/html part used to make the filter pass the whole message.
    let mut message =
        String::from("From: a@b.example\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n");
    message.push_str(&format!(
        "--x\r\nContent-Type: text/plain\r\n\r\n{TEXT_PART}"
    ));
    for i in 0..257 {
        message.push_str(&format!(
            "--x\r\nContent-Type: text/html\r\n\r\n<img src=\"https://p{i}.remote.test/o.gif\">\r\n"
        ));
    }
    message.push_str("--x--\r\n");
    let (out, err, code) = run_filter(message.as_bytes());
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).expect("utf-8");
    assert!(
        out.starts_with("X-Mailveil: proxied=0; trackers=0; removed=0; neutralised=257"),
        "{}",
        &out[..120]
    );
    let bodies = html_bodies(&out, "x");
    assert_eq!(bodies.len(), 257);
    bodies.iter().for_each(|b| assert_inert(b));
    assert_contains(out.as_bytes(), TEXT_PART.as_bytes(), "the text part");
}

#[test]
fn an_image_after_a_mid_line_boundary_is_not_left_live() {
    // Issue 11: mail-parser ended the part at a `--x` in the middle of a line, clients do
    // not; the <img> after it was never rewritten and the client loaded it.
    for hiding in ["text --x more", "<!--x-->"] {
        let message = format!(
            "From: a@b.example\r\nContent-Type: multipart/alternative; boundary=x\r\n\r\n\
             --x\r\nContent-Type: text/plain\r\n\r\n{TEXT_PART}\
             --x\r\nContent-Type: text/html\r\n\r\n<p>{hiding}</p><img src=\"https://hidden.remote.test/o.gif\">\r\n\
             --x--\r\n"
        );
        let (out, err, code) = run_filter(message.as_bytes());
        assert_eq!(code, 0, "{err}");
        let out = String::from_utf8(out).expect("utf-8");
        let bodies = html_bodies(&out, "x");
        assert_eq!(bodies.len(), 1, "{out}");
        let body = bodies[0];
        // Rewritten (the image proxied) or neutralised: never the sender's live URL.
        if body.contains("nothing in it was loaded") {
            assert_inert(body);
        } else {
            assert!(leaks(body, &[]).is_empty(), "{hiding}: {body}");
        }
        assert_contains(out.as_bytes(), TEXT_PART.as_bytes(), "the text part");
    }
}

#[test]
fn html_past_the_rewriters_memory_limit_is_neutralised() {
    // Issue 11: ~300,000 nested inline elements exceeded lol_html's memory limit and the
    // message went on untouched.
    let html = format!(
        "{}<img src=\"https://deep.remote.test/o.gif\">",
        "<b>".repeat(300_000)
    );
    let message = format!("From: a@b.example\r\nContent-Type: text/html\r\n\r\n{html}\r\n");
    let (out, err, code) = run_filter(message.as_bytes());
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).expect("utf-8");
    let (head, body) = out.split_once("\r\n\r\n").expect("headers");
    if head.contains("neutralised=1") {
        assert_inert(body);
    } else {
        assert!(
            leaks(body, &[]).is_empty(),
            "rewritten, then, with no live reference"
        );
    }
}

#[test]
fn apple_watch_and_amp_alternatives_are_rewritten_too() {
    for media_type in [
        "text/watch-html",
        "text/x-amp-html",
        "application/xhtml+xml",
    ] {
        let message = format!(
            "From: a@b.example\r\nContent-Type: multipart/alternative; boundary=x\r\n\r\n\
             --x\r\nContent-Type: {media_type}\r\n\r\n<img src=\"https://watch.remote.test/o.gif\">\r\n\
             --x--\r\n"
        );
        let (out, err, code) = run_filter(message.as_bytes());
        assert_eq!(code, 0, "{err}");
        let out = String::from_utf8(out).expect("utf-8");
        assert!(leaks(&out, &[]).is_empty(), "{media_type}: {out}");
        assert!(
            out.starts_with("X-Mailveil: proxied=1"),
            "{media_type}: {out}"
        );
    }
}
