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
//! See `ARCHITECTURE.md` for the data flow and the invariants.

pub mod config;
pub mod daemon;
pub mod delivery;
mod fsutil;
pub mod metrics;
pub mod proxy;
pub mod rewrite;
pub mod sign;
mod urltag;

pub use crate::config::{Config, ConfigError, RawConfig};
pub use crate::delivery::prefetch::{run as run_prefetch, PrefetchConfig};
pub use crate::delivery::spool::Spool;
pub use crate::metrics::Metrics;
pub use crate::proxy::cache::{Cache, CacheConfig};
pub use crate::proxy::content::ContentPolicy;
pub use crate::proxy::fetch::{FetchConfig, Fetcher, IpPolicy, StaticResolver};
pub use crate::proxy::{load_tls, run as run_proxy, ListenerConfig, ProxyState};
pub use crate::rewrite::html::{Engine, Report};
pub use crate::rewrite::message::{filter_message, HEADER_NAME};
pub use crate::rewrite::mime::prepend_header;
pub use crate::rewrite::trackers::{TrackerMode, TrackerRules};
pub use crate::sign::{Key, SignedUrl, Signer};
