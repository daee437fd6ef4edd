//! Running programs: the `mailveil` binary once (`run_binary`) or as a daemon ([`Daemon`]),
//! other programs once ([`run`]) or under a deadline ([`wait_or_kill`]).

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::tail;
use super::wait::poll;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mailveil");

/// `program` with an empty environment but for a private `HOME`, the test's `PATH` and
/// `env`, so nothing outside the test is read or touched.
fn command(program: impl AsRef<OsStr>, env: &[(&str, &OsStr)], home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `program ARGS` to the end (see [`command`] for its environment) with `input` on
/// stdin, and returns what it printed.
pub fn run(
    program: &str,
    args: &[&str],
    input: &[u8],
    env: &[(&str, &OsStr)],
    home: &Path,
) -> Output {
    let mut child = command(program, env, home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program} (is it installed?): {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // Write from a thread so a large message cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait");
    let _ = writer.join();
    output
}

/// Runs `mailveil ARGS` to the end, `input` on stdin.
pub fn run_binary(args: &[&str], input: &[u8], env: &[(&str, &OsStr)], home: &Path) -> Output {
    run(BIN, args, input, env, home)
}

/// The `mailveil` binary running as a daemon: stdin null, stdout discarded, stderr kept (in
/// a temp file, so a chatty daemon never blocks on a full pipe). Killed and reaped on drop,
/// so a failing test leaves no process behind.
pub struct Daemon {
    child: Child,
    stderr: tempfile::NamedTempFile,
}

impl Daemon {
    /// Starts `mailveil ARGS` (see [`command`] for its environment).
    pub fn spawn(args: &[&str], env: &[(&str, &OsStr)], home: &Path) -> Self {
        Self::spawn_via(&[], args, env, home)
    }

    /// Starts `LAUNCHER... mailveil ARGS`: a launcher that ends by executing the binary in its
    /// own place, as `systemd-socket-activate` does, so that the process is the daemon.
    pub fn spawn_via(
        launcher: &[String],
        args: &[&str],
        env: &[(&str, &OsStr)],
        home: &Path,
    ) -> Self {
        let mut cmd = match launcher.split_first() {
            None => command(BIN, env, home),
            Some((program, rest)) => {
                let mut cmd = command(program, env, home);
                cmd.args(rest).arg(BIN);
                cmd
            }
        };
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {launcher:?} mailveil {args:?}: {e}"));
        Self { child, stderr }
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Sends `signal` (a name such as `HUP`) to the daemon.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Asks the daemon to stop (SIGTERM); [`Daemon::wait_exit`] waits for it.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Whether the daemon has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the daemon to exit; fails the test, showing its stderr, after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        assert!(
            poll(limit, || !self.is_running()),
            "mailveil did not exit within {limit:?}; the end of its stderr:\n{}",
            tail(&self.stderr(), 3000)
        );
        self.child.try_wait().expect("try_wait").expect("exited")
    }

    /// Kills the daemon (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Waits for `child`, started in a process group of its own (`process_group(0)`); after
/// `limit`, kills the whole group (helpers, filter programs) and returns None.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    if poll(limit, || child.try_wait().expect("try_wait").is_some()) {
        return child.try_wait().expect("try_wait");
    }
    // The group `process_group(0)` made for this child has the child's id. Best effort
    // (`kill` may be missing); the child itself is killed below in any case.
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    child.kill().ok();
    child.wait().expect("wait");
    None
}
