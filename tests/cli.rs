//! The command line as a user meets it: help, keygen, sign, check-config, rewrite.

use crate::util::process::run_binary;
use crate::util::sandbox::Sandbox;
use crate::util::{data, signer, PUBLIC_URL};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `check-config`, which must fail, and returns what it printed on stderr.
fn check_config_error(sandbox: &Sandbox) -> String {
    let out = sandbox.run(&["check-config"], b"");
    assert!(!out.status.success());
    stderr(&out)
}

#[test]
fn help_lists_every_subcommand() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = run_binary(&["--help"], b"", &[], home.path());
    assert!(out.status.success());
    for cmd in ["filter", "rewrite", "sign", "keygen", "check-config"] {
        assert!(
            stdout(&out).contains(cmd),
            "--help lacks {cmd}:\n{}",
            stdout(&out)
        );
    }
}

#[test]
fn keygen_prints_a_fresh_key() {
    let home = tempfile::tempdir().expect("tempdir");
    let a = stdout(&run_binary(&["keygen"], b"", &[], home.path()));
    let b = stdout(&run_binary(&["keygen"], b"", &[], home.path()));
    assert_eq!(a.trim().len(), 64);
    assert!(a.trim().bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

#[test]
fn sign_prints_a_verifiable_url() {
    let sandbox = Sandbox::new("");
    let out = sandbox.run(&["sign", "https://img.example/a.png?x=1"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let url = stdout(&out).trim().to_owned();
    let signed = signer()
        .verify(url.strip_prefix(PUBLIC_URL).expect("prefix"))
        .expect("verifies");
    assert_eq!(signed.target().as_str(), "https://img.example/a.png?x=1");
    let bad = sandbox.run(&["sign", "file:///etc/passwd"], b"");
    assert!(!bad.status.success());
}

#[test]
fn defaults_create_the_key_on_first_use_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("tempdir");
    let out = run_binary(&["sign", "https://a.example/x.png"], b"", &[], home.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("http://127.0.0.1:8700/i/"));
    let key = home.path().join(".local/share/mailveil/key");
    let mode = std::fs::metadata(&key)
        .expect("key created")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let again = run_binary(&["sign", "https://a.example/x.png"], b"", &[], home.path());
    assert_eq!(stdout(&out), stdout(&again), "the key is kept between runs");
}

#[test]
fn example_config_loads() {
    let home = tempfile::tempdir().expect("tempdir");
    let example = data("../../config.example.toml");
    let out = run_binary(
        &[
            "check-config",
            "--config",
            example.to_str().expect("utf-8 path"),
        ],
        b"",
        &[],
        home.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("[server]"));
}

#[test]
fn check_config_names_the_bad_key() {
    let sandbox = Sandbox::new("[trackers]\nmode = \"sometimes\"\n");
    let err = check_config_error(&sandbox);
    assert!(err.contains("trackers.mode"), "{err}");
    assert!(err.contains("sometimes"), "{err}");
}

#[test]
fn check_config_reports_a_missing_tracker_list() {
    let sandbox = Sandbox::new("[trackers]\nlists = [\"/nonexistent/list.txt\"]\n");
    let err = check_config_error(&sandbox);
    assert!(err.contains("trackers.lists[0]"), "{err}");
}

#[test]
fn tracker_list_from_config_is_applied() {
    let sandbox = Sandbox::new("");
    let list = sandbox.dir.path().join("list.txt");
    std::fs::write(&list, "! Title: test list\n||pixel.tracker.example^\n").expect("list");
    sandbox.reconfigure(&format!("[trackers]\nlists = [\"{}\"]\n", list.display()));
    let out = sandbox.run(
        &["rewrite"],
        br#"<img src="https://pixel.tracker.example/o.gif"><img src="https://ok.example/a.png">"#,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("pixel.tracker.example"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&out).matches("/i/").count(), 1, "{}", stdout(&out));
}

#[test]
fn rewrite_reads_a_file_and_stdin() {
    let sandbox = Sandbox::new("");
    let file = data("vectors/img.html");
    let from_file = sandbox.run(&["rewrite", file.to_str().expect("utf-8")], b"");
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    let from_stdin = sandbox.run(&["rewrite"], &std::fs::read(&file).expect("read"));
    assert_eq!(stdout(&from_file), stdout(&from_stdin));
    assert!(!stdout(&from_file).contains("remote.test"));
}

#[test]
fn example_config_documents_every_key_with_its_default() {
    let example: toml::Table = std::fs::read_to_string(data("../../config.example.toml"))
        .expect("read example")
        .parse()
        .expect("example is TOML");
    let defaults: toml::Table = mailveil::RawConfig::default()
        .to_toml()
        .parse()
        .expect("defaults");
    // Paths depend on the user's directories; the example shows the system-wide ones.
    let computed = ["key_file", "dir", "spool_dir"];
    for (section, keys) in &defaults {
        let keys = keys.as_table().expect("section");
        let documented = example
            .get(section)
            .and_then(|s| s.as_table())
            .unwrap_or_else(|| panic!("[{section}] missing"));
        for (key, value) in keys {
            let shown = documented
                .get(key)
                .unwrap_or_else(|| panic!("{section}.{key} not documented"));
            if !computed.contains(&key.as_str()) {
                assert_eq!(
                    shown, value,
                    "{section}.{key}: example shows a value that is not the default"
                );
            }
        }
        for key in documented.keys() {
            assert!(
                keys.contains_key(key),
                "{section}.{key} documented but not a key"
            );
        }
    }
}

#[test]
fn man_page_and_completions_are_generated_from_the_cli() {
    let home = tempfile::tempdir().expect("tempdir");
    let man = run_binary(&["man"], b"", &[], home.path());
    assert!(man.status.success());
    let page = stdout(&man);
    assert!(page.contains(".TH mailveil"), "{page}");
    for cmd in [
        "SERVE",
        "FILTER",
        "REWRITE",
        "SIGN",
        "KEYGEN",
        "CHECK-CONFIG",
    ] {
        assert!(
            page.contains(&format!(".SH \"MAILVEIL {cmd}\"")),
            "man page lacks {cmd}"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = run_binary(&["completions", shell], b"", &[], home.path());
        assert!(out.status.success(), "{shell}");
        assert!(
            stdout(&out).contains("check-config"),
            "{shell} completions lack check-config"
        );
    }
}

#[test]
fn filter_does_not_need_the_api_token_file() {
    let sandbox = Sandbox::new("[api]\ntoken_file = \"/nonexistent/api-tokens\"\n");
    let message = b"From: a@b.example\r\nContent-Type: text/html\r\n\r\n<img src=\"https://img.remote.test/a.png\">\r\n";
    let out = sandbox.run(&["filter"], message);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).starts_with("X-Mailveil: proxied=1"),
        "{}",
        stderr(&out)
    );
    let err = check_config_error(&sandbox);
    assert!(err.contains("api.token_file"), "{err}");
}
