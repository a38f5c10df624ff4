//! Endpoint ejection: a failing endpoint ejected, probed and restored; every endpoint ejected
//! fails fast with `circuit-open`.

use std::time::Duration;

use tokio::time::Instant;
use weft_tests::apps::Behaviour;
use weft_tests::*;

use crate::{policy, Setup, HOST};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_probed_and_restored() {
    let t = Setup::start(
        3,
        &policy(
            "  retries: {attempts: 2, on: [gateway-error]}\n  circuitBreaker: {consecutiveFailures: 3, baseEjectionTime: 1s, maxEjectionTime: 10s, maxEjectedPercent: 50}\n",
        ),
    )
    .await;
    let bad = &t.apps[0];
    let bad_ep = format!("endpoint=\"{}\"", t.servers[0].inbound);
    bad.set(Behaviour::Status(503));
    let load = Load::start(t.client.outbound, HOST, 2, |r| r.status == 200);
    let ejected = |t: &Setup| metric(&t.metrics(), "weft_proxy_endpoint_ejected", &[&bad_ep]);

    eventually(
        "the failing endpoint is ejected",
        Duration::from_secs(10),
        || async { (ejected(&t) == 1.0).then_some(()) },
    )
    .await;
    let at_ejection = bad.hits();
    // While ejected it gets nothing (one try may have been on its way).
    let others = t.apps[1].hits() + t.apps[2].hits();
    eventually(
        "traffic flows to the others",
        Duration::from_secs(5),
        || async { (t.apps[1].hits() + t.apps[2].hits() > others + 50).then_some(()) },
    )
    .await;
    assert!(
        bad.hits() <= at_ejection + 1,
        "ejected endpoint got traffic"
    );

    // After the ejection time, one probe: it fails, and the endpoint is ejected again.
    eventually("a failed probe", Duration::from_secs(5), || async {
        (metric(
            &t.metrics(),
            "weft_proxy_endpoint_probes_total",
            &[&bad_ep, "outcome=\"failure\""],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(ejected(&t), 1.0);

    // Healthy again: the next probe restores it and it takes traffic.
    bad.set(Behaviour::Healthy);
    eventually("a successful probe", Duration::from_secs(10), || async {
        (metric(
            &t.metrics(),
            "weft_proxy_endpoint_probes_total",
            &[&bad_ep, "outcome=\"success\""],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(ejected(&t), 0.0);
    let restored = bad.hits();
    eventually(
        "the restored endpoint takes traffic",
        Duration::from_secs(5),
        || async { (bad.hits() > restored + 20).then_some(()) },
    )
    .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "callers kept succeeding throughout ({ok} ok)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_ejected_fails_fast_with_circuit_open() {
    let t = Setup::start(
        1,
        &policy(
            "  circuitBreaker: {consecutiveFailures: 2, baseEjectionTime: 30s, maxEjectedPercent: 100}\n",
        ),
    )
    .await;
    t.apps[0].set(Behaviour::Status(500));
    for _ in 0..2 {
        assert_eq!(t.get("/").await.status, 500);
    }
    let started = Instant::now();
    let r = t.get("/").await;
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (503, "circuit-open"),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(t.apps[0].hits(), 2);
}
