//! The README's local-delivery recipes, run the way the delivery agents run them: the real
//! procmail and maildrop (Debian's packages), and fetchmail's `mda` command line through
//! `sh -c`, as fetchmail itself does.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{leaks, Sandbox};

/// The message every recipe delivers: HTML with one remote image.
pub(crate) const MESSAGE: &str =
    "From: news@sender.example\nTo: reader@example.org\nSubject: recipe\n\
Content-Type: text/html; charset=utf-8\n\n<p>Hi</p><img src=\"https://img.remote.test/a.png\">\n";

fn mailveil() -> &'static str {
    env!("CARGO_BIN_EXE_mailveil")
}

/// Runs `program args` with `input` on stdin and the sandbox's config in the environment.
fn deliver(sandbox: &Sandbox, program: &str, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(program)
        .args(args)
        .env("HOME", sandbox.dir.path())
        .env("MAILVEIL_CONFIG", &sandbox.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} must be installed (Debian package): {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

/// The README's procmail recipe (config named on the command line: procmail does not pass
/// the environment on), with the delivery made explicit for the test.
fn procmailrc(sandbox: &Sandbox, mbox: &Path) -> String {
    format!(
        "SHELL=/bin/sh\n:0 fw\n| {} --config {} filter\n\n:0:\n{}\n",
        mailveil(),
        sandbox.config.display(),
        mbox.display()
    )
}

/// Checks that the message delivered to `mbox` was rewritten and reported.
pub(crate) fn assert_rewritten(mbox: &Path) {
    let text = std::fs::read_to_string(mbox).unwrap_or_else(|e| panic!("{}: {e}", mbox.display()));
    assert!(text.contains("X-Mailveil: proxied=1"), "{text}");
    assert!(text.contains("Subject: recipe"), "{text}");
    assert!(leaks(&text, &[]).is_empty(), "{text}");
}

/// Checks that the message delivered to `mbox` is the original.
pub(crate) fn assert_delivered_unchanged(mbox: &Path) {
    let text = std::fs::read_to_string(mbox).unwrap_or_else(|e| panic!("{}: {e}", mbox.display()));
    assert!(
        text.contains("<img src=\"https://img.remote.test/a.png\">"),
        "{text}"
    );
    assert!(!text.contains("X-Mailveil"), "{text}");
}

#[test]
fn procmail_fw_recipe() {
    let sandbox = Sandbox::new("");
    let mbox = sandbox.dir.path().join("inbox");
    let rc = sandbox.dir.path().join("procmailrc");
    std::fs::write(&rc, procmailrc(&sandbox, &mbox)).expect("rc");
    let out = deliver(
        &sandbox,
        "procmail",
        &["-m", rc.to_str().expect("utf-8")],
        MESSAGE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_rewritten(&mbox);
}

#[test]
fn maildrop_xfilter_recipe() {
    let sandbox = Sandbox::new("");
    let mbox = sandbox.dir.path().join("inbox");
    let filter = sandbox.dir.path().join("mailfilter");
    std::fs::write(
        &filter,
        format!(
            "xfilter \"{} --config {} filter\"\nto \"{}\"\n",
            mailveil(),
            sandbox.config.display(),
            mbox.display()
        ),
    )
    .expect("filter");
    // maildrop refuses filter files that others can write.
    std::fs::set_permissions(&filter, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let out = deliver(
        &sandbox,
        "maildrop",
        &[filter.to_str().expect("utf-8")],
        MESSAGE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_rewritten(&mbox);
}

#[test]
fn fetchmail_mda_command_line() {
    let sandbox = Sandbox::new("");
    let mbox = sandbox.dir.path().join("inbox");
    // fetchmail runs `mda` through /bin/sh with the message on stdin.
    let mda = format!(
        "{} --config {} filter >> {}",
        mailveil(),
        sandbox.config.display(),
        mbox.display()
    );
    let out = deliver(&sandbox, "/bin/sh", &["-c", &mda], MESSAGE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_rewritten(&mbox);
}

#[test]
fn a_broken_filter_set_up_still_delivers_through_procmail() {
    let sandbox = Sandbox::new("[trackers]\nmode = \"nonsense\"\n");
    let mbox = sandbox.dir.path().join("inbox");
    let rc = sandbox.dir.path().join("procmailrc");
    std::fs::write(&rc, procmailrc(&sandbox, &mbox)).expect("rc");
    let out = deliver(
        &sandbox,
        "procmail",
        &["-m", rc.to_str().expect("utf-8")],
        MESSAGE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_delivered_unchanged(&mbox);
}
