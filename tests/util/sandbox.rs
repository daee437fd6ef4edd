//! A temp dir holding a config file, the test key and the state (cache, spool): the home of
//! the `mailveil` processes a test runs.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Output;

use toml::{Table, Value};

use super::process::{run_binary, Daemon};
use super::proxy::wait_healthy;
use super::{free_port, KEY};

/// A config file and state directory in a temp dir, for running the binary.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// `mailveil.toml` in `dir`.
    pub config: PathBuf,
    /// The port of `server.public_url` (and of `server.listen` when serving).
    pub port: u16,
    /// The config before the `extra` of [`Sandbox::new`] or [`Sandbox::serving`].
    base: Table,
}

impl Sandbox {
    /// A config signing with the test key for [`super::PUBLIC_URL`] (so [`super::signer`]
    /// verifies what it makes), with key, cache and spool in the sandbox, merged with `extra`
    /// (TOML: its keys add to or replace the sandbox's, section by section). It names no
    /// listen address: not for `serve`.
    pub fn new(extra: &str) -> Self {
        Self::create(None, true, extra)
    }

    /// As [`Sandbox::new`], for `serve` on a free loopback port, which `server.public_url`
    /// names too.
    pub fn serving(extra: &str) -> Self {
        Self::create(Some(free_port()), true, extra)
    }

    /// For `serve` on a free loopback port with nothing else configured: key, cache and
    /// spool are the built-in defaults, under the sandbox as HOME.
    pub fn serving_defaults() -> Self {
        Self::create(Some(free_port()), false, "")
    }

    /// `[server]` listening on `127.0.0.1:{listen}` (its `public_url` too), or only
    /// `public_url` = [`super::PUBLIC_URL`]; with `state`, the test key, the cache and the
    /// spool in the sandbox.
    fn create(listen: Option<u16>, state: bool, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut base = Table::new();
        let port = match listen {
            Some(port) => {
                set(&mut base, "server", "listen", format!("127.0.0.1:{port}"));
                port
            }
            // The port of `PUBLIC_URL`, the built-in default, which no test listens on.
            None => 8700,
        };
        set(
            &mut base,
            "server",
            "public_url",
            format!("http://127.0.0.1:{port}"),
        );
        if state {
            let key = format!("{}\n", mailveil::Key::from_bytes(KEY).to_hex());
            std::fs::write(dir.path().join("key"), key).expect("key");
            for (section, name, rel) in [
                ("keys", "key_file", "key"),
                ("cache", "dir", "cache"),
                ("prefetch", "spool_dir", "spool"),
            ] {
                set(
                    &mut base,
                    section,
                    name,
                    dir.path().join(rel).display().to_string(),
                );
            }
        }
        let sandbox = Self {
            config: dir.path().join("mailveil.toml"),
            dir,
            port,
            base,
        };
        sandbox.reconfigure(extra);
        sandbox
    }

    /// Rewrites the config file: the sandbox's own config merged with `extra` (which replaces
    /// the previous `extra`).
    pub fn reconfigure(&self, extra: &str) {
        let mut config = self.base.clone();
        let extra: Table = extra
            .parse()
            .unwrap_or_else(|e| panic!("extra config is TOML: {e}\n{extra}"));
        for (name, section) in extra {
            match (config.get_mut(&name), section) {
                (Some(Value::Table(into)), Value::Table(from)) => into.extend(from),
                (_, section) => {
                    config.insert(name, section);
                }
            }
        }
        std::fs::write(&self.config, config.to_string()).expect("config");
    }

    /// `http://127.0.0.1:{port}`: the configured `public_url`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `MAILVEIL_CONFIG` naming this sandbox's config.
    fn env(&self) -> [(&str, &OsStr); 1] {
        [("MAILVEIL_CONFIG", self.config.as_os_str())]
    }

    /// Runs `mailveil ARGS` with this sandbox's config, `input` on stdin.
    pub fn run(&self, args: &[&str], input: &[u8]) -> Output {
        run_binary(args, input, &self.env(), self.dir.path())
    }

    /// `mailveil sign TARGET`: the proxy URL for `target`.
    pub fn sign(&self, target: &str) -> String {
        let out = self.run(&["sign", target], b"");
        assert!(
            out.status.success(),
            "sign {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// `mailveil serve` with this sandbox's config.
    pub fn serve(&self) -> Daemon {
        self.daemon(&["serve"], &[])
    }

    /// [`Sandbox::serve`], once the daemon answers health checks.
    pub async fn serve_healthy(&self) -> Daemon {
        let daemon = self.serve();
        wait_healthy(&self.base()).await;
        daemon
    }

    /// `mailveil ARGS` as a daemon with this sandbox's config and `env`.
    pub fn daemon(&self, args: &[&str], env: &[(&str, &OsStr)]) -> Daemon {
        let env: Vec<_> = self.env().into_iter().chain(env.iter().copied()).collect();
        Daemon::spawn(args, &env, self.dir.path())
    }

    /// Prefetch jobs waiting in the spool.
    pub fn jobs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("spool"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".job"))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn set(table: &mut Table, section: &str, key: &str, value: impl Into<String>) {
    table
        .entry(section)
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .expect("section")
        .insert(key.to_owned(), Value::String(value.into()));
}
