//! Fault injection: delays and aborts hit their percentages.

use weft_tests::*;

use crate::{policy, Setup, HOST};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_hits_its_percentages() {
    let t = Setup::start(
        1,
        &policy(
            "  faultInjection:\n    abort: {percent: 20, status: 503}\n    delay: {percent: 10, duration: 1ms}\n",
        ),
    )
    .await;
    let http = http1_client();
    let mut aborted = 0;
    for _ in 0..1000 {
        let r = get(&http, t.client.outbound, HOST, "/").await.unwrap();
        match (r.status, r.header("x-weft-error")) {
            (200, "") => {}
            (503, "fault-injected") => aborted += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (170..=230).contains(&aborted),
        "{aborted} of 1000 aborted; 20% asked"
    );
    assert_eq!(
        t.apps[0].hits(),
        1000 - aborted,
        "aborted requests never reach the app"
    );
    let delayed = metric(
        &t.metrics(),
        "weft_proxy_faults_injected_total",
        &["fault=\"delay\""],
    );
    assert!(
        (70.0..=130.0).contains(&delayed),
        "{delayed} of 1000 delayed; 10% asked"
    );
}
