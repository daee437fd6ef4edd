//! The command line's shape: the clap definitions, the manual page and shell completions.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Ends email read-tracking.
///
/// mailveil rewrites every remote reference in a message's HTML to a signed URL on its own
/// proxy, fetches those resources anonymously at delivery time and serves them to the
/// reader, so the sender never learns when, where or whether the mail was read. Known
/// tracking pixels are removed and reported in an `X-Mailveil` header.
#[derive(Debug, Parser)]
#[command(name = "mailveil", version, max_term_width = 100)]
pub(crate) struct Cli {
    /// Config file (TOML). Without it and without $MAILVEIL_CONFIG, built-in defaults apply:
    /// listen on 127.0.0.1:8700, state and cache under your data and cache directories.
    #[arg(
        short,
        long,
        global = true,
        env = "MAILVEIL_CONFIG",
        value_name = "FILE"
    )]
    pub(crate) config: Option<PathBuf>,

    /// More log output on stderr (-v debug, -vv trace). $MAILVEIL_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: the image endpoint that answers signed URLs from the cache, the
    /// prefetch workers, and (when configured) the rewrite API and the milter.
    ///
    /// With no config it listens on 127.0.0.1:8700. Stops gracefully on SIGTERM or SIGINT;
    /// SIGHUP reloads the config and keys; tells systemd it is ready when run with
    /// Type=notify.
    Serve,
    /// Rewrite one RFC 5322 message from stdin to stdout (for procmail, maildrop, Sieve, fetchmail).
    ///
    /// Never loses a message: if anything goes wrong the original bytes are written
    /// unchanged, the reason goes to stderr, and the exit status is 0 (or 75 with
    /// `filter.on_error = "tempfail"`).
    Filter,
    /// Rewrite an HTML document from FILE (or stdin) to stdout.
    Rewrite {
        /// HTML file to read; stdin when absent or "-".
        file: Option<PathBuf>,
    },
    /// Print the proxy URL for URL.
    Sign {
        /// An http or https URL.
        url: String,
    },
    /// Print a new random signing key (64 hex digits) for `keys.key_file`.
    Keygen,
    /// Validate the config, print the effective configuration, exit non-zero on error.
    CheckConfig,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) for `man -l -`.
    Man,
}

/// Prints the completion script for `shell`.
pub(crate) fn print_completions(shell: clap_complete::Shell) {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "mailveil", &mut std::io::stdout());
}

/// Prints the manual page (roff), with a section per subcommand.
pub(crate) fn print_man() -> std::io::Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    // One section per subcommand, so `man` shows their options too.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_ascii_uppercase();
        writeln!(out, ".SH \"MAILVEIL {name}\"")?;
        let page = clap_mangen::Man::new(sub.clone());
        page.render_description_section(&mut out)?;
        page.render_options_section(&mut out)?;
    }
    out.flush()?;
    Ok(())
}
