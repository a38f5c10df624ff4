//! Names a caller chooses never become lasting state: an app (or anyone who can reach the
//! outbound listener) sending ten thousand made-up `Host` names leaves the proxy's
//! subscriptions, memory and `/metrics` bounded, and a real Service it never called before still
//! answers, during the flood and after it.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_tests::apps::HttpApp;
use weft_tests::*;

const NAMES: u64 = 10_000;
const CALLERS: u64 = 32;

/// The proxy's resident memory, from the test process (the proxy runs in it).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_made_up_names_leave_the_proxy_bounded_and_real_services_reachable() {
    let (orders_app, inventory_app) = (
        HttpApp::start("orders").await,
        HttpApp::start("inventory").await,
    );
    let mut orders = Sidecar::builder().bind().await;
    let mut inventory = Sidecar::builder().bind().await;
    let mut client = Sidecar::builder().bind().await;
    let mesh = Mesh::builder()
        .config(format!(
            "{}{}",
            service_yaml("shop", "orders", "HTTP", &[orders.inbound]),
            service_yaml("shop", "inventory", "HTTP", &[inventory.inbound]),
        ))
        .start()
        .await;
    orders.start(&mesh, "shop", "orders", orders_app.addr);
    inventory.start(&mesh, "shop", "inventory", inventory_app.addr);
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    for s in [&orders, &inventory, &client] {
        s.ready().await;
    }
    let http = http1_client();
    let rss_before = rss_kib();

    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (http, sent, addr) = (http.clone(), sent.clone(), client.outbound);
        callers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            loop {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if n >= NAMES || started.elapsed() > Duration::from_secs(120) {
                    return statuses;
                }
                let host = format!("made-up-{n}-{:08x}.shop", rand_u32(n));
                let r = get(&http, addr, &host, "/").await.unwrap();
                statuses.push((r.status, r.header("x-weft-error").to_string()));
            }
        }));
    }
    // A Service nobody called yet, in the middle of the flood.
    eventually(
        "the flood to be under way",
        Duration::from_secs(30),
        || async { (sent.load(Ordering::Relaxed) > NAMES / 4).then_some(()) },
    )
    .await;
    let during = get(&http, client.outbound, "orders.shop", "/")
        .await
        .unwrap();
    assert_eq!(during.status, 200, "{during:?}");

    let mut answered = 0;
    for c in callers {
        for (status, reason) in c.await.unwrap() {
            answered += 1;
            assert!(
                (status, reason.as_str()) == (404, "no-route")
                    || (status, reason.as_str()) == (503, "overloaded"),
                "{status} {reason}"
            );
        }
    }
    assert_eq!(
        answered, NAMES,
        "every made-up name got an answer within 120 s"
    );
    let flood = started.elapsed();

    // After it: a Service never called before is found at once.
    let after = get(&http, client.outbound, "inventory.shop", "/")
        .await
        .unwrap();
    assert_eq!(after.status, 200, "{after:?}");

    let running = client.running();
    let subscriptions = running.discovery.subscription_count();
    assert!(
        subscriptions <= weft_proxy::discovery::MAX_UNRESOLVED + 2,
        "{subscriptions} subscriptions"
    );
    let metrics = running.metrics.encode();
    assert!(
        !metrics.contains("made-up-"),
        "a made-up name became a label"
    );
    assert!(
        metrics.len() < 64 * 1024,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert_eq!(
        metric(
            &metrics,
            "weft_proxy_requests_total",
            &[r#"service="unknown""#]
        ),
        NAMES as f64,
    );
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "resident memory grew by {grown} KiB");
    eprintln!(
        "{NAMES} made-up names in {flood:?}: {subscriptions} subscriptions left, /metrics {} bytes, RSS +{grown} KiB",
        metrics.len()
    );
}

/// A cheap, repeatable scramble, so that names do not share a suffix.
fn rand_u32(n: u64) -> u32 {
    let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 32) as u32
}
