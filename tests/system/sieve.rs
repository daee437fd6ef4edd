//! The README's Dovecot Sieve recipe (Pigeonhole's `vnd.dovecot.filter`, from the
//! `sieve_extprograms` plugin), run the way Dovecot runs it: Debian's real `dovecot-lda`
//! with a private config file in a temp dir, delivering to a maildir there. No Dovecot
//! daemon is started or needed, nothing outside the temp dir is written, and nothing leaves
//! the machine.
//!
//! The LDA runs as an ordinary user, as in a personal set-up where the MTA starts it as the
//! recipient (Postfix's `mailbox_command`, for one). It cannot deliver as root: it refuses
//! mail access as root ("Mail access not allowed for root"), and `-d USER`, root's way to
//! name the recipient, looks the user up through the auth socket of a running Dovecot. So
//! when the tests run as root (as in CI) the LDA runs as `nobody`, in a temp dir handed to
//! `nobody`.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::util::process::{wait_or_kill, BIN};
use crate::util::recipe::{assert_delivered_unchanged, assert_rewritten, MESSAGE};
use crate::util::sandbox::Sandbox;
use crate::util::{proxy_urls, signer, PUBLIC_URL};

/// Debian's Dovecot LDA (package dovecot-core).
const LDA: &str = "/usr/lib/dovecot/dovecot-lda";
/// Pigeonhole's plugin for `vnd.dovecot.filter` (package dovecot-sieve).
const EXTPROGRAMS: &str = "/usr/lib/dovecot/modules/sieve/lib90_sieve_extprograms_plugin.so";
/// Debian's `nobody` and `nogroup`, whom the LDA runs as when the tests run as root.
const NOBODY: u32 = 65534;
/// The LDA is killed after this long. Pigeonhole itself stops a filter program after 10 s
/// (`sieve_filter_exec_timeout`), so a healthy run is far below it.
const LDA_TIMEOUT: Duration = Duration::from_secs(60);

/// The README's Dovecot settings, word for word (checked); the test moves the wrapper directory.
const RECIPE_CONF: &str = "\
protocol lda {
  mail_plugins = $mail_plugins sieve
}
plugin {
  sieve = file:~/sieve;active=~/.dovecot.sieve
  sieve_plugins = sieve_extprograms
  sieve_extensions = +vnd.dovecot.filter
  sieve_filter_bin_dir = /usr/local/lib/dovecot/sieve-filter
}
";
/// The README's wrapper script (checked); the test names its own binary.
const WRAPPER: &str = "\
#!/bin/sh
exec /usr/local/bin/mailveil --config \"$HOME/.config/mailveil.toml\" filter
";
/// The README's `~/.dovecot.sieve` (checked).
const SCRIPT: &str = "require [\"vnd.dovecot.filter\"];\nfilter \"mailveil\";\n";

/// What one LDA run left behind.
struct Delivery {
    status: ExitStatus,
    /// The LDA's log (`log_path = /dev/stderr`) and the filter program's stderr.
    log: String,
    /// The messages in the maildir's `new/`.
    delivered: Vec<PathBuf>,
}

impl Delivery {
    /// The one delivered message, after checking that the LDA succeeded.
    fn message(&self) -> &Path {
        assert!(
            self.status.success(),
            "dovecot-lda failed ({}):\n{}",
            self.status,
            self.log
        );
        match self.delivered.as_slice() {
            [one] => one,
            other => panic!(
                "expected one delivered message, found {other:?}; log:\n{}",
                self.log
            ),
        }
    }
}

/// Fails with the package to install when Debian's Dovecot or Pigeonhole is missing.
fn require_dovecot() {
    for (path, package) in [(LDA, "dovecot-core"), (EXTPROGRAMS, "dovecot-sieve")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: install Debian's {package} (.ci/run does)"
        );
    }
}

/// `text` with `from` replaced by `to`, which must occur (so the README text cannot drift
/// away from what the test substitutes).
fn substitute(text: &str, from: &str, to: &Path) -> String {
    assert!(text.contains(from), "{from} not in {text}");
    text.replace(from, &to.display().to_string())
}

fn write_executable(path: &Path, contents: &[u8]) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Whether the test runs as root, and so delivers as `nobody`: the sandbox belongs to
/// whoever created it.
fn running_as_root(sandbox: &Sandbox) -> bool {
    fs::metadata(sandbox.dir.path()).expect("stat").uid() == 0
}

/// The `mailveil` binary for the wrapper to run: the build's own, unless the delivery runs
/// as `nobody` and the build directory is out of its reach (a checkout under `/root`), in
/// which case a copy in the sandbox.
fn installed_binary(sandbox: &Sandbox) -> PathBuf {
    let built = Path::new(BIN);
    // Others need execute permission on the binary and on every directory above it.
    let reachable = built
        .ancestors()
        .all(|p| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable || !running_as_root(sandbox) {
        return built.to_owned();
    }
    let copy = sandbox.dir.path().join("mailveil");
    fs::copy(built, &copy).expect("copy the binary");
    copy
}

/// Installs the recipe in the sandbox, which is the mail user's home, and returns the
/// Dovecot config file.
fn install_recipe(sandbox: &Sandbox) -> PathBuf {
    let home = sandbox.dir.path();
    fs::create_dir(home.join(".config")).expect("mkdir");
    fs::copy(&sandbox.config, home.join(".config/mailveil.toml")).expect("config");
    let binary = installed_binary(sandbox);
    let bin_dir = home.join("sieve-filter");
    fs::create_dir(&bin_dir).expect("mkdir");
    let wrapper = substitute(WRAPPER, "/usr/local/bin/mailveil", &binary);
    write_executable(&bin_dir.join("mailveil"), wrapper.as_bytes());
    fs::write(home.join(".dovecot.sieve"), SCRIPT).expect("sieve script");
    // The recipe, plus what keeps the run private: Dovecot's runtime directory and the
    // mailbox inside the temp dir, the log on stderr.
    let conf = format!(
        "base_dir = {}\nlog_path = /dev/stderr\nmail_location = maildir:~/Maildir\n{}",
        home.join("run").display(),
        substitute(RECIPE_CONF, "/usr/local/lib/dovecot/sieve-filter", &bin_dir),
    );
    let path = home.join("dovecot.conf");
    fs::write(&path, conf).expect("dovecot.conf");
    path
}

/// Gives `path` and everything under it to `uid`:`uid`.
fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
    if fs::symlink_metadata(path).expect("stat").is_dir() {
        for entry in fs::read_dir(path).expect("read_dir") {
            chown_tree(&entry.expect("entry").path(), uid);
        }
    }
}

/// Delivers [`MESSAGE`] to the sandbox's maildir with `dovecot-lda`, as an MTA would, as
/// `nobody` when the test runs as root.
fn deliver(sandbox: &Sandbox, conf: &Path) -> Delivery {
    let home = sandbox.dir.path();
    let io = tempfile::tempdir().expect("tempdir");
    let (input, log) = (io.path().join("message"), io.path().join("log"));
    fs::write(&input, MESSAGE).expect("message");
    let log_file = File::create(&log).expect("log");
    let mut command = Command::new(LDA);
    command
        .args(["-c", conf.to_str().expect("utf-8")])
        .args(["-f", "news@sender.example", "-a", "reader@example.org"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", home)
        .env("USER", "reader")
        .current_dir(home)
        .stdin(File::open(&input).expect("message"))
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        // Its own process group, so that a timeout also kills the filter program.
        .process_group(0);
    if running_as_root(sandbox) {
        chown_tree(home, NOBODY);
        command.uid(NOBODY).gid(NOBODY);
    }
    let mut child = command.spawn().expect("spawn dovecot-lda");
    let status = wait_or_kill(&mut child, LDA_TIMEOUT);
    let log = fs::read_to_string(&log).expect("log");
    let Some(status) = status else {
        panic!("dovecot-lda did not finish within {LDA_TIMEOUT:?} and was killed; log:\n{log}");
    };
    let delivered = match fs::read_dir(home.join("Maildir/new")) {
        Ok(entries) => entries.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    Delivery {
        status,
        log,
        delivered,
    }
}

#[test]
fn readme_shows_the_sieve_recipe_the_tests_run() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    for text in [RECIPE_CONF, WRAPPER, SCRIPT] {
        assert!(readme.contains(text), "README.md lacks:\n{text}");
    }
}

#[test]
fn sieve_filter_recipe_rewrites_at_delivery() {
    require_dovecot();
    let sandbox = Sandbox::new("");
    let conf = install_recipe(&sandbox);
    let delivery = deliver(&sandbox, &conf);
    assert_rewritten(delivery.message());
    let text = fs::read_to_string(delivery.message()).expect("message");
    let urls = proxy_urls(&text);
    assert_eq!(urls.len(), 1, "{text}");
    let path = urls[0].strip_prefix(PUBLIC_URL).expect("prefix");
    let signed = signer()
        .verify(path)
        .unwrap_or_else(|e| panic!("{path} does not verify: {e}"));
    assert_eq!(signed.target().as_str(), "https://img.remote.test/a.png");
}

#[test]
fn a_broken_filter_set_up_still_delivers_through_sieve() {
    require_dovecot();
    // mailveil cannot load this config: it passes the message through and exits 0.
    let sandbox = Sandbox::new("[trackers]\nmode = \"nonsense\"\n");
    // The filter did run: the unchanged message is its output, not a skipped filter.
    delivers_the_original(
        &sandbox,
        "mailveil filter: passing the message through unchanged",
    );
}

#[test]
fn a_failing_filter_program_still_delivers_through_sieve() {
    require_dovecot();
    // With on_error = "tempfail" and a key that does not load, mailveil exits 75. Pigeonhole
    // logs the exit code, discards the program's output and leaves the message as it was,
    // which the implicit keep delivers: Sieve does not defer the message.
    let sandbox = Sandbox::new("[filter]\non_error = \"tempfail\"\n");
    fs::write(sandbox.dir.path().join("key"), "not a key\n").expect("key");
    delivers_the_original(&sandbox, "Terminated with non-zero exit code 75");
}

/// Delivers through the recipe with `sandbox`'s config, checks that the message arrives as
/// it was sent, and that the log says `why`.
fn delivers_the_original(sandbox: &Sandbox, why: &str) {
    let conf = install_recipe(sandbox);
    let delivery = deliver(sandbox, &conf);
    assert_delivered_unchanged(delivery.message());
    assert!(delivery.log.contains(why), "{}", delivery.log);
}
