//! The inbound rate limit accepts the configured rate.

use std::time::Duration;

use tokio::time::Instant;
use weft_tests::*;

use crate::{policy, Setup, HOST};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_accepts_the_configured_rate() {
    let t = Setup::start(
        1,
        &policy("  rateLimit: {requestsPerSecond: 50, burst: 5}\n"),
    )
    .await;
    let started = Instant::now();
    let load = Load::start(t.client.outbound, HOST, 4, |r| {
        r.status == 200
            || (r.status == 429
                && r.header("x-weft-error") == "rate-limited"
                && r.header("retry-after") == "1")
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, wrong) = load.stop().await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(wrong, 0);
    let accepted = t.apps[0].hits() as f64;
    let rate = accepted / seconds;
    eprintln!("{accepted} accepted in {seconds:.2}s: {rate:.1}/s");
    assert!(
        (45.0..=55.0).contains(&rate),
        "accepted {rate:.1}/s, configured 50/s"
    );
    let m = t.servers[0].running().metrics.encode();
    assert!(metric(&m, "weft_proxy_rate_limited_total", &[]) > 0.0);
}
