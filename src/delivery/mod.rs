//! The delivery side: the ways mail comes in (the [`milter`], the rewrite [`api`]) and the
//! work it leaves for later (the [`spool`] of prefetch jobs, drained by [`prefetch`]).

pub mod api;
pub mod milter;
pub mod prefetch;
pub mod spool;

use crate::delivery::spool::Spool;
use crate::rewrite::html::{Engine, Report};
use crate::swap::Swap;

/// The engine the long-running fronts (rewrite API, milter) share, swapped whole when
/// `serve` reloads its configuration on SIGHUP.
pub type SharedEngine = Swap<Engine>;

/// Queues the delivery-time fetch of every URL `report` proxied. A failure does not hold the
/// message back (its images are then fetched when first opened): it is logged, and the
/// caller goes on.
pub(crate) fn queue_prefetch(spool: &Spool, report: &Report) {
    let targets: Vec<String> = report.targets.iter().cloned().collect();
    if let Err(e) = spool.enqueue(&targets) {
        tracing::warn!(error = %e, "prefetch not queued; images will be fetched when opened");
    }
}
