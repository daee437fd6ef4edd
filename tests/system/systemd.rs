//! The systemd units: they must verify, and the service's exposure score must stay at or
//! below 2.0.

use std::process::Command;

use crate::util::data;
use crate::util::process::BIN;

/// The unit with `ExecStart` pointing at the binary under test, since `verify` checks that
/// the command exists.
fn unit_under_test(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(data("../../systemd/mailveil.service")).expect("unit");
    let unit = unit.replace("/usr/local/bin/mailveil", BIN);
    let path = dir.join("mailveil.service");
    std::fs::write(&path, unit).expect("write unit");
    path
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (Debian's systemd package) must be installed")
}

#[test]
fn unit_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_under_test(dir.path());
    let out = systemd_analyze(&["verify", unit.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn socket_unit_verifies_with_the_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = unit_under_test(dir.path());
    let socket = dir.path().join("mailveil.socket");
    std::fs::copy(data("../../systemd/mailveil.socket"), &socket).expect("copy socket unit");
    let out = systemd_analyze(&[
        "verify",
        socket.to_str().expect("utf-8"),
        service.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("mailveil.socket"),
        "warnings about the socket unit: {stderr}"
    );
}

#[test]
fn unit_exposure_is_at_most_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_under_test(dir.path());
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        unit.to_str().expect("utf-8"),
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}
