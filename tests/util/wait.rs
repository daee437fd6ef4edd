//! Waiting for a condition instead of sleeping: every wait polls the condition itself (a
//! request logged, a file gone, a port answering) until it holds or a deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

/// Time between two looks at a condition.
const INTERVAL: Duration = Duration::from_millis(50);

/// Polls `done` until it holds (true) or `limit` has passed (false), blocking the thread in
/// between: for synchronous tests and for conditions that no task of the test's runtime
/// has to bring about.
pub fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if done() {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(INTERVAL);
    }
}

/// [`poll`] for async tests: the runtime keeps running its tasks (a fake upstream, say)
/// between two looks.
pub async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    until_async(limit, || std::future::ready(done())).await
}

/// [`until`] with a check that awaits (a request, say).
pub async fn until_async<F, Fut>(limit: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if done().await {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
