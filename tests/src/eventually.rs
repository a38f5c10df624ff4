//! Waiting for a condition instead of sleeping: [`eventually`] polls until it holds or a deadline
//! passes. What to wait for is the caller's.

use std::future::Future;
use std::time::Duration;

/// Waits until `f` returns `Some`, polling every 10 ms; panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
