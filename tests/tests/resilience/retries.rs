//! Retries: transient failures turned into success only where a retry is safe, a retry to
//! another endpoint, gRPC statuses retried, what is retried without a policy, and the budget.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use weft_tests::apps::{Behaviour, FaultyApp};
use weft_tests::*;

use crate::{policy, Setup, HOST};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_transient_failures_into_success_only_where_safe() {
    // Route `/opt-in` comes from an HTTPRoute that opts in to retrying non-idempotent requests.
    let routes = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: opt-in
  namespace: shop
  annotations: {retry.weft.dev/non-idempotent: "true"}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /opt-in}}]
    backendRefs: [{name: orders}]
    retry: {attempts: 2, codes: [503], backoff: 5ms}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rest, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules:
  - backendRefs: [{name: orders}]
"#;
    let yaml = format!(
        "{}{routes}",
        policy("  retries: {attempts: 3, on: [5xx], backoff: {base: 5ms, max: 20ms}}\n")
    );
    let t = Setup::start(1, &yaml).await;
    let app = &t.apps[0];
    let http = http1_client();
    let post = |path: &'static str, body: Bytes| {
        let http = http.clone();
        let addr = t.client.outbound;
        async move {
            send_body(&http, addr, HOST, "POST", path, &[], body)
                .await
                .unwrap()
        }
    };

    // GET: two 503s, then success.
    app.fail_next(2, Behaviour::Status(503));
    let r = t.get("/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(app.hits(), 3, "one request, two retries");
    let m = t.metrics();
    assert_eq!(
        metric(&m, "weft_proxy_retries_total", &["reason=\"status\""]),
        2.0,
        "{m}"
    );

    // POST, sent and answered 503: not retried (not idempotent, no opt-in).
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let r = post("/", Bytes::from_static(b"order-1")).await;
    assert_eq!((r.status, app.hits()), (503, 1), "{r:?}");

    // POST on the route that opts in: retried, and the retry carries the whole body.
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let r = post("/opt-in", Bytes::from_static(b"order-2")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "order-2"), "{r:?}");
    assert_eq!(app.methods(), ["POST", "POST"]);

    // PUT (idempotent) with 32 KiB: replayed byte for byte.
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let body: Vec<u8> = (0..32 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let r = send_body(
        &http,
        t.client.outbound,
        HOST,
        "PUT",
        "/",
        &[],
        body.clone().into(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(app.hits(), 2);
    assert_eq!(
        r.body.as_bytes(),
        &body[..],
        "the retry got the body byte for byte"
    );

    // PUT with a body over 64 KiB: streamed through, never retried.
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    let r = send_body(&http, t.client.outbound, HOST, "PUT", "/", &[], big)
        .await
        .unwrap();
    assert_eq!((r.status, app.hits()), (503, 1), "{r:?}");
    let r = send_body(
        &http,
        t.client.outbound,
        HOST,
        "PUT",
        "/",
        &[],
        vec![b'y'; 100 * 1024].into(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.body.len()),
        (200, 100 * 1024),
        "a big body still gets through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_endpoint_and_grpc_statuses_are_retried() {
    let t = Setup::start(
        2,
        &policy(
            "  loadBalancer: round-robin\n  retries: {attempts: 2, on: [5xx, unavailable], backoff: {base: 1ms}, budget: {minPerSecond: 100}}\n",
        ),
    )
    .await;
    // Endpoint 0 always fails; a retry never goes back to it while another endpoint is left, so
    // every request succeeds.
    t.apps[0].set(Behaviour::Status(500));
    for _ in 0..30 {
        let r = t.get("/").await;
        assert_eq!((r.status, r.header("x-app")), (200, "orders-1"), "{r:?}");
    }
    assert!(t.apps[0].hits() > 0, "the failing endpoint was tried");

    // A gRPC UNAVAILABLE (trailers-only) is retried; the caller sees the good answer.
    t.apps[0].set(Behaviour::GrpcStatus(14));
    t.apps[1].set(Behaviour::GrpcStatus(14));
    let grpc = |path: &'static str| {
        let addr = t.client.upstreams[0];
        async move {
            send(
                &http2_client(),
                addr,
                HOST,
                "POST",
                path,
                &[("content-type", "application/grpc"), ("te", "trailers")],
            )
            .await
            .unwrap()
        }
    };
    let r = grpc("/svc/Method").await;
    assert_eq!(
        r.header("grpc-status"),
        "14",
        "both endpoints unavailable: {r:?}"
    );
    let before = t.hits();
    t.apps[0].set(Behaviour::Healthy);
    t.apps[1].set(Behaviour::Healthy);
    t.apps[0].fail_next(1, Behaviour::GrpcStatus(14));
    t.apps[1].fail_next(1, Behaviour::GrpcStatus(14));
    let r = grpc("/svc/Method").await;
    assert_eq!(
        (r.status, r.header("grpc-status")),
        (200, ""),
        "{r:?} after {} tries; {}",
        t.hits() - before,
        t.metrics()
    );
    assert_eq!(
        t.hits() - before,
        3,
        "UNAVAILABLE from each endpoint, then a retry that succeeds"
    );
    let m = t.metrics();
    assert!(
        metric(&m, "weft_proxy_retries_total", &["reason=\"grpc-status\""]) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_only_requests_that_never_left_are_retried() {
    // Endpoint 1's proxy is never started: nothing listens there, so every try to it fails to
    // connect and is retried on endpoint 0.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut server = Sidecar::builder().bind().await;
    let app = FaultyApp::start("orders-0").await;
    let mut client = Sidecar::builder().bind().await;
    // Round-robin, so the dead endpoint keeps being chosen (EWMA would learn to avoid it).
    let yaml = format!(
        "{}{}",
        service_yaml("shop", "orders", "HTTP", &[server.inbound, dead_addr]),
        policy("  loadBalancer: round-robin\n")
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    server.start(&mesh, "shop", "orders", app.addr);
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let http = http1_client();
    for _ in 0..20 {
        let r = send_body(&http, client.outbound, HOST, "POST", "/", &[], "x".into())
            .await
            .unwrap();
        assert_eq!(
            r.status, 200,
            "a connect failure is retried even for POST: {r:?}"
        );
    }
    let m = client.running().metrics.encode();
    assert!(
        metric(
            &m,
            "weft_proxy_retries_total",
            &["reason=\"connect-failure\""]
        ) >= 1.0,
        "{m}"
    );

    // A 503 from the app is not retried without a policy.
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let r = get(&http, client.outbound, HOST, "/").await.unwrap();
    assert_eq!((r.status, app.hits()), (503, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_upstream_attempts() {
    let t = Setup::start(
        1,
        &policy(
            "  retries:\n    attempts: 3\n    on: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n    budget: {ratio: 0.2, minPerSecond: 5}\n",
        ),
    )
    .await;
    t.apps[0].set(Behaviour::Status(503));
    let started = Instant::now();
    let load = Load::start(t.client.outbound, HOST, 4, |r| {
        // The caller gets the app's own last answer, not one the proxy made up.
        r.status == 503 && r.header("x-weft-error").is_empty() && r.header("x-app") == "orders-0"
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (requests, wrong) = load.stop().await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(wrong, 0);
    let attempts = t.hits() as f64;
    let requests = requests as f64;
    // The reserve starts full: minPerSecond × (seconds + 1).
    let bound = 1.2 * requests + 5.0 * (seconds + 1.0);
    eprintln!("{requests} requests, {attempts} attempts in {seconds:.1}s; bound {bound:.0}");
    assert!(attempts <= bound, "{attempts} attempts > {bound:.0}");
    assert!(
        attempts > requests * 1.1,
        "the budget's ratio is used: {attempts} attempts for {requests} requests"
    );
    let m = t.metrics();
    assert!(metric(&m, "weft_proxy_retry_budget_exhausted_total", &[]) > 0.0);
}
