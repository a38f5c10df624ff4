//! The cluster's Jaeger receives an OTLP span (OTLP/HTTP, JSON) and returns it from its query
//! API — where the injection issue's tests will look for the proxies' traces.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use weft_tests::{eventually, http1_client, send, send_body, Cluster};

fn authority(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_returns_a_span_sent_over_otlp() {
    let cluster = Cluster::get();
    let client = http1_client();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_id = format!("{:032x}", now ^ (u128::from(std::process::id()) << 64));
    let service = format!("weft-cluster-smoke-{}", std::process::id());
    let spans = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "weft-tests"}, "spans": [{
            "traceId": trace_id, "spanId": "00f067aa0ba902b7", "name": "smoke", "kind": 2,
            "startTimeUnixNano": (now - 1_000_000).to_string(), "endTimeUnixNano": now.to_string()
        }]}]
    }]});
    let otlp = authority(&cluster.jaeger_otlp_http);
    let sent = send_body(
        &client,
        otlp,
        &otlp.to_string(),
        "POST",
        "/v1/traces",
        &[("content-type", "application/json")],
        Bytes::from(spans.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(sent.status, 200, "{sent:?}");

    let query = authority(&cluster.jaeger_query);
    let trace: Value = eventually(
        "the trace in Jaeger's query API",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let path = format!("/api/traces/{trace_id}");
            async move {
                let r = send(&client, query, &query.to_string(), "GET", &path, &[])
                    .await
                    .ok()?;
                (r.status == 200).then(|| serde_json::from_str(&r.body).ok())?
            }
        },
    )
    .await;
    let span = &trace["data"][0]["spans"][0];
    assert_eq!(span["operationName"], "smoke", "{trace}");
    assert_eq!(
        trace["data"][0]["processes"][span["processID"].as_str().unwrap()]["serviceName"],
        service.as_str()
    );
}
