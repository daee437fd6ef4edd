//! mailveil ends email read-tracking.
//!
//! Three sides, side by side, meeting only in the daemon's wiring and in config:
//!
//! - the **rewrite** side (`rewrite/`): pure functions from a message or an HTML document to
//!   its rewritten form, every remote reference replaced by a signed proxy URL;
//! - the **proxy** side (`proxy/`): the image endpoint that answers signed URLs from the
//!   cache, fetching upstream (the only outbound code) and vetting what it fetched;
//! - the **delivery** side (`delivery/`): the ways mail comes in (milter, rewrite API, the
//!   `filter` command) and the prefetch work they queue.
//!
//! The modules are private; what the binary, the tests, the benchmarks and the fuzzer use is
//! re-exported here. See `ARCHITECTURE.md` for the data flow and the invariants.

mod activation;
mod config;
mod daemon;
mod delivery;
mod fsutil;
mod http;
mod metrics;
mod pipe;
mod proxy;
mod rewrite;
mod sign;
mod startup;
mod swap;
mod urltag;
mod weburl;

pub use crate::config::{Config, ConfigError, FilterOnError, ParseError, RawConfig};
pub use crate::daemon::run as serve;
pub use crate::delivery::prefetch::{run as run_prefetch, PrefetchConfig};
pub use crate::delivery::spool::{Spool, SpoolError};
pub use crate::http::{load_tls, ListenerConfig, TlsError};
pub use crate::metrics::Metrics;
pub use crate::pipe::{run as filter_stdin, PipeExit};
pub use crate::proxy::cache::{Cache, CacheConfig, CacheError};
pub use crate::proxy::content::{ContentError, ContentPolicy};
pub use crate::proxy::fetch::{
    FetchConfig, FetchError, Fetcher, IpPolicy, Resolve, ResolveFuture, StaticResolver,
};
pub use crate::proxy::{run as run_proxy, OnMiss, ProxyError, ProxyState};
pub use crate::rewrite::html::{Engine, HtmlError, Report, Rewritten};
pub use crate::rewrite::message::{filter_message, FilterError, Filtered, HEADER_NAME};
pub use crate::rewrite::mime::{prepend_header, remove_header_fields};
pub use crate::rewrite::trackers::{TrackerError, TrackerMode, TrackerRules};
pub use crate::sign::{FetchTarget, Key, SignError, SignedUrl, Signer};
pub use crate::startup::{
    build_engine, check_config, load_config, load_raw_config, load_signer, load_trackers,
    StartupError,
};
pub use crate::weburl::WebUrl;

#[cfg(test)]
mod layout_tests;
