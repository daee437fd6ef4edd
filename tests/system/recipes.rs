//! The README's local-delivery recipes, run the way the delivery agents run them: the real
//! procmail and maildrop (Debian's packages), and fetchmail's `mda` command line through
//! `sh -c`, as fetchmail itself does.

use std::path::PathBuf;

use crate::util::process::{run, BIN};
use crate::util::recipe::{assert_delivered_unchanged, assert_rewritten, MESSAGE};
use crate::util::sandbox::Sandbox;

/// The mailbox the recipes deliver to.
fn mbox(sandbox: &Sandbox) -> PathBuf {
    sandbox.dir.path().join("inbox")
}

/// Runs `program args` with [`MESSAGE`] on stdin, the sandbox as its home and its config
/// in the environment, and checks that it succeeded.
fn deliver(sandbox: &Sandbox, program: &str, args: &[&str]) {
    let out = run(
        program,
        args,
        MESSAGE.as_bytes(),
        &[("MAILVEIL_CONFIG", sandbox.config.as_os_str())],
        sandbox.dir.path(),
    );
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Delivers through the README's procmail recipe (config named on the command line:
/// procmail does not pass the environment on), with the delivery made explicit for the
/// test; returns the mailbox.
fn through_procmail(sandbox: &Sandbox) -> PathBuf {
    let mbox = mbox(sandbox);
    let rc = sandbox.dir.path().join("procmailrc");
    let recipe = format!(
        "SHELL=/bin/sh\n:0 fw\n| {BIN} --config {} filter\n\n:0:\n{}\n",
        sandbox.config.display(),
        mbox.display()
    );
    std::fs::write(&rc, recipe).expect("rc");
    deliver(sandbox, "procmail", &["-m", rc.to_str().expect("utf-8")]);
    mbox
}

#[test]
fn procmail_fw_recipe() {
    let sandbox = Sandbox::new("");
    assert_rewritten(&through_procmail(&sandbox));
}

#[test]
fn maildrop_xfilter_recipe() {
    let sandbox = Sandbox::new("");
    let mbox = mbox(&sandbox);
    let filter = sandbox.dir.path().join("mailfilter");
    std::fs::write(
        &filter,
        format!(
            "xfilter \"{BIN} --config {} filter\"\nto \"{}\"\n",
            sandbox.config.display(),
            mbox.display()
        ),
    )
    .expect("filter");
    // maildrop refuses filter files that others can write.
    std::fs::set_permissions(&filter, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    deliver(&sandbox, "maildrop", &[filter.to_str().expect("utf-8")]);
    assert_rewritten(&mbox);
}

#[test]
fn fetchmail_mda_command_line() {
    let sandbox = Sandbox::new("");
    let mbox = mbox(&sandbox);
    // fetchmail runs `mda` through /bin/sh with the message on stdin.
    let mda = format!(
        "{BIN} --config {} filter >> {}",
        sandbox.config.display(),
        mbox.display()
    );
    deliver(&sandbox, "/bin/sh", &["-c", &mda]);
    assert_rewritten(&mbox);
}

#[test]
fn a_broken_filter_set_up_still_delivers_through_procmail() {
    let sandbox = Sandbox::new("[trackers]\nmode = \"nonsense\"\n");
    assert_delivered_unchanged(&through_procmail(&sandbox));
}
