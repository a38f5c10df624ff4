//! The bulkhead: while one service hangs, the concurrency limit on it keeps the proxy's other
//! traffic as fast as before. (Its own test binary: latency is measured with nothing else
//! running; see .config/nextest.toml.)

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use weft_tests::apps::{Behaviour, FaultyApp};
use weft_tests::*;

/// Sends `GET /` to `addr` with `host` at a constant `rate` for `duration` (open loop: a request
/// starts on schedule whether or not earlier ones finished); returns the latencies of those that
/// got `want`, and how many got something else.
async fn paced(
    addr: SocketAddr,
    host: &'static str,
    rate: u32,
    duration: Duration,
    want: u16,
) -> (Vec<Duration>, usize) {
    let http = http1_client();
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        tick.tick().await;
        let http = http.clone();
        tasks.spawn(async move {
            let start = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(5), get(&http, addr, host, "/")).await;
            match r {
                Ok(Ok(r)) if r.status == want => Ok(start.elapsed()),
                other => Err(format!("{other:?}")),
            }
        });
    }
    let (mut ok, mut other) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(d) => ok.push(d),
            Err(_) => other += 1,
        }
    }
    (ok, other)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_service_does_not_slow_the_others() {
    let (fast_app, slow_app) = (
        FaultyApp::start("fast").await,
        FaultyApp::start("slow").await,
    );
    slow_app.set(Behaviour::Hang);
    let mut fast = Sidecar::builder().bind().await;
    let mut slow = Sidecar::builder().bind().await;
    let mut client = Sidecar::builder().bind().await;
    let yaml = format!(
        "{}{}---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: slow, namespace: shop}}\nspec:\n  targetRef: {{name: slow}}\n  circuitBreaker: {{maxRequests: 20, maxPendingRequests: 20}}\n",
        service_yaml("shop", "fast", "HTTP", &[fast.inbound]),
        service_yaml("shop", "slow", "HTTP", &[slow.inbound]),
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    fast.start(&mesh, "shop", "fast", fast_app.addr);
    slow.start(&mesh, "shop", "slow", slow_app.addr);
    fast.ready().await;
    slow.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let out = client.outbound;
    // Warm up connections and discovery for both services.
    let http = http1_client();
    assert_eq!(get(&http, out, "fast.shop", "/").await.unwrap().status, 200);

    // A round: the fast service alone, then while the hanging one is flooded at 300 requests a
    // second. A noisy neighbour on a small machine can spoil a round, so up to three are run;
    // a proxy that let the hanging service slow the others would fail every one.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let (base, failed) = paced(out, "fast.shop", 200, Duration::from_secs(2), 200).await;
        assert_eq!(failed, 0);
        let flood = tokio::spawn(paced(out, "slow.shop", 300, Duration::from_secs(3), 503));
        let (during, failed) = paced(out, "fast.shop", 200, Duration::from_secs(2), 200).await;
        assert_eq!(failed, 0);
        flood.abort();
        let (base, during) = (p99(base), p99(during));
        eprintln!("fast p99: {base:?} alone, {during:?} while slow hangs");
        rounds.push((base, during));
        if during <= base + Duration::from_millis(2) {
            break;
        }
    }
    assert!(
        rounds
            .iter()
            .any(|(base, during)| *during <= *base + Duration::from_millis(2)),
        "p99 while the other service hangs vs before, per round: {rounds:?}"
    );

    let m = client.running().metrics.encode();
    assert!(
        metric(
            &m,
            "weft_proxy_overloaded_total",
            &["service=\"slow.shop\"", "limit=\"requests\""]
        ) > 500.0,
        "{m}"
    );
    assert!(
        slow_app.hits() <= 20 * rounds.len() as u64,
        "at most maxRequests reach the hanging service in each round: {} in {} rounds",
        slow_app.hits(),
        rounds.len()
    );
}
