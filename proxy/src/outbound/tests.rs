//! The outbound request path as a component: a real `Outbound` with discovery from a snapshot
//! and peers that are scripted servers over in-memory streams (`fake_mesh`). Each test scripts
//! its endpoints, sends requests as the app would, and checks what the caller got and what
//! reached each endpoint: retries and their budget, limits, ejection, timeouts, connect
//! failures, error reasons and routing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use weft_proto::discovery as pb;

use super::*;
use crate::fake_mesh::{self, backend, get, respond, service, update, Answer, FakePeers};
use crate::metrics::{EndpointLabels, LimitLabels, ServiceLabels, TimeoutLabels};

const A: &str = "10.0.0.1:15006";
const B: &str = "10.0.0.2:15006";

async fn send(outbound: &Arc<Outbound>, req: Request<Body>) -> Answer {
    let o = outbound.clone();
    let svc = hyper::service::service_fn(move |req| o.clone().handle(Target::Authority, req));
    fake_mesh::call(svc, req).await
}

/// `orders.shop` with endpoints `addrs` and `policy` on both the service and its backend.
fn orders(addrs: &[&str], policy: Option<pb::TrafficPolicy>) -> pb::DiscoveryResponse {
    let mut b = backend("orders", "shop", addrs);
    b.policy.clone_from(&policy);
    let mut s = service("orders", "shop", vec![b]);
    s.policy = policy;
    update(vec![s])
}

fn retries(on: &[&str]) -> pb::TrafficPolicy {
    pb::TrafficPolicy {
        retries: Some(pb::Retries {
            attempts: 2,
            on: on.iter().map(|s| (*s).into()).collect(),
            backoff_base_ms: 1,
            backoff_max_ms: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Both endpoints answer 503 to the first request either of them sees, then 200.
fn first_fails(peers: &FakePeers) {
    let n = Arc::new(AtomicUsize::new(0));
    for addr in [A, B] {
        let n = n.clone();
        peers.0.serve(addr, move |_| {
            let first = n.fetch_add(1, Ordering::Relaxed) == 0;
            async move { respond(if first { 503 } else { 200 }) }
        });
    }
}

fn timeouts(outbound: &Outbound, kind: &'static str) -> u64 {
    outbound
        .metrics
        .timeouts
        .get_or_create(&TimeoutLabels {
            direction: OUTBOUND,
            service: "orders.shop".into(),
            kind,
        })
        .get()
}

fn hang(peers: &FakePeers, addr: &str) {
    peers
        .0
        .serve(addr, |_| std::future::pending::<Response<Body>>());
}

#[tokio::test]
async fn a_503_is_retried_on_the_other_endpoint() {
    let peers = FakePeers::default();
    first_fails(&peers);
    let outbound = fake_mesh::outbound(orders(&[A, B], Some(retries(&["5xx"]))), &peers);
    let rsp = send(&outbound, get("http://orders.shop/x")).await;
    assert_eq!(rsp.status, 200);
    let seen = peers.0.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0].addr, seen[1].addr,
        "the retry avoids the endpoint tried"
    );
    let retried = outbound
        .metrics
        .retries
        .get_or_create(&RetryLabels {
            service: "orders.shop".into(),
            reason: "status",
        })
        .get();
    assert_eq!(retried, 1);
}

#[tokio::test]
async fn without_a_policy_a_503_is_not_retried() {
    let peers = FakePeers::default();
    first_fails(&peers);
    let outbound = fake_mesh::outbound(orders(&[A, B], None), &peers);
    let rsp = send(&outbound, get("http://orders.shop/x")).await;
    assert_eq!(rsp.status, 503);
    assert_eq!(rsp.reason(), "", "the endpoint's own 503");
    assert_eq!(peers.0.seen().len(), 1);
}

#[tokio::test]
async fn an_exhausted_budget_stops_retries() {
    let peers = FakePeers::default();
    peers.0.status(A, 503);
    peers.0.status(B, 503);
    let mut policy = retries(&["5xx"]);
    if let Some(r) = policy.retries.as_mut() {
        r.budget_ratio = Some(0.0);
        r.budget_min_per_second = Some(0);
    }
    let outbound = fake_mesh::outbound(orders(&[A, B], Some(policy)), &peers);
    let rsp = send(&outbound, get("http://orders.shop/x")).await;
    assert_eq!(rsp.status, 503);
    assert_eq!(
        rsp.reason(),
        "",
        "the caller gets the endpoint's answer as it is"
    );
    assert_eq!(peers.0.seen().len(), 1, "no try after the budget refused");
    let exhausted = outbound
        .metrics
        .retry_budget_exhausted
        .get_or_create(&ServiceLabels {
            service: "orders.shop".into(),
        })
        .get();
    assert_eq!(exhausted, 1);
}

#[tokio::test]
async fn a_sent_post_is_not_retried() {
    let peers = FakePeers::default();
    first_fails(&peers);
    let outbound = fake_mesh::outbound(orders(&[A, B], Some(retries(&["5xx"]))), &peers);
    let req = Request::post("http://orders.shop/x")
        .body(body::full("order"))
        .unwrap();
    assert_eq!(send(&outbound, req).await.status, 503);
    let seen = peers.0.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (&seen[0].method, &seen[0].body[..]),
        (&Method::POST, &b"order"[..])
    );
}

#[tokio::test]
async fn a_put_body_is_replayed_to_the_retry() {
    let peers = FakePeers::default();
    first_fails(&peers);
    let outbound = fake_mesh::outbound(orders(&[A, B], Some(retries(&["5xx"]))), &peers);
    let req = Request::put("http://orders.shop/x")
        .body(body::full("state"))
        .unwrap();
    assert_eq!(send(&outbound, req).await.status, 200);
    let seen = peers.0.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body == "state"));
}

#[tokio::test]
async fn a_body_over_the_replay_limit_is_not_retried() {
    let peers = FakePeers::default();
    first_fails(&peers);
    let outbound = fake_mesh::outbound(orders(&[A, B], Some(retries(&["5xx"]))), &peers);
    let big = vec![b'x'; MAX_REPLAY_BODY + 1];
    let req = Request::put("http://orders.shop/x")
        .body(body::full(big))
        .unwrap();
    assert_eq!(send(&outbound, req).await.status, 503);
    assert_eq!(peers.0.seen().len(), 1);
}

#[tokio::test]
async fn max_requests_answers_overloaded() {
    let peers = FakePeers::default();
    hang(&peers, A);
    let policy = pb::TrafficPolicy {
        circuit_breaker: Some(pb::CircuitBreaker {
            max_requests: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let outbound = fake_mesh::outbound(orders(&[A], Some(policy)), &peers);
    let held = tokio::spawn({
        let o = outbound.clone();
        async move { send(&o, get("http://orders.shop/hang")).await }
    });
    while peers.0.seen().is_empty() {
        tokio::task::yield_now().await;
    }
    let second = send(&outbound, get("http://orders.shop/x"));
    let rsp = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("refused at once, not queued behind the first");
    assert_eq!(rsp.status, 503);
    assert_eq!(rsp.reason(), "overloaded");
    assert_eq!(
        peers.0.seen().len(),
        1,
        "the refused request reached no endpoint"
    );
    let refused = outbound
        .metrics
        .overloaded
        .get_or_create(&LimitLabels {
            service: "orders.shop".into(),
            limit: "requests",
        })
        .get();
    assert_eq!(refused, 1);
    held.abort();
}

#[tokio::test(start_paused = true)]
async fn the_request_timeout_answers_504_timeout() {
    let peers = FakePeers::default();
    hang(&peers, A);
    let policy = pb::TrafficPolicy {
        timeouts: Some(pb::Timeouts {
            request_ms: 300,
            ..Default::default()
        }),
        ..Default::default()
    };
    let outbound = fake_mesh::outbound(orders(&[A], Some(policy)), &peers);
    let started = tokio::time::Instant::now();
    let rsp = send(&outbound, get("http://orders.shop/x")).await;
    assert_eq!(rsp.status, 504);
    assert_eq!(rsp.reason(), "timeout");
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(timeouts(&outbound, "request"), 1);
}

#[tokio::test]
async fn a_refused_connect_answers_502_connect_failed_after_its_retries() {
    let peers = FakePeers::default();
    peers.0.refuse(A);
    let outbound = fake_mesh::outbound(orders(&[A], None), &peers);
    let rsp = send(&outbound, get("http://orders.shop/x")).await;
    assert_eq!(rsp.status, 502);
    assert_eq!(rsp.reason(), "connect-failed");
    let text = String::from_utf8_lossy(&rsp.body);
    assert!(text.contains("is the peer's sidecar running?"), "{text}");
    // Never sent: retried at once, twice, without a policy.
    assert_eq!(peers.0.connects(), 3);
}

#[tokio::test]
async fn a_refused_endpoint_costs_the_caller_nothing_when_another_answers() {
    let peers = FakePeers::default();
    peers.0.refuse(A);
    peers.0.status(B, 200);
    let outbound = fake_mesh::outbound(orders(&[A, B], None), &peers);
    for _ in 0..10 {
        assert_eq!(
            send(&outbound, get("http://orders.shop/x")).await.status,
            200
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_connect_timeout_answers_504_timeout() {
    let peers = FakePeers::default();
    peers.0.hang(A);
    let policy = pb::TrafficPolicy {
        timeouts: Some(pb::Timeouts {
            connect_ms: 200,
            ..Default::default()
        }),
        ..Default::default()
    };
    let outbound = fake_mesh::outbound(orders(&[A], Some(policy)), &peers);
    let rsp = send(&outbound, get("http://orders.shop/x")).await;
    assert_eq!(rsp.status, 504);
    assert_eq!(rsp.reason(), "timeout");
    assert_eq!(
        timeouts(&outbound, "connect"),
        3,
        "each try's connect timed out"
    );
}

#[tokio::test]
async fn an_unknown_host_is_no_route() {
    let peers = FakePeers::default();
    let outbound = fake_mesh::outbound(orders(&[A], None), &peers);
    let rsp = send(&outbound, get("http://example.com.au/x")).await;
    assert_eq!(rsp.status, 404);
    assert_eq!(rsp.reason(), "no-route");
}

#[tokio::test]
async fn consecutive_failures_eject_an_endpoint() {
    let peers = FakePeers::default();
    peers.0.status(A, 503);
    peers.0.status(B, 200);
    let policy = pb::TrafficPolicy {
        circuit_breaker: Some(pb::CircuitBreaker {
            consecutive_failures: 2,
            base_ejection_time_ms: 60_000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let outbound = fake_mesh::outbound(orders(&[A, B], Some(policy)), &peers);
    // Until A has failed twice, some requests reach it.
    while peers.0.count(A) < 2 {
        send(&outbound, get("http://orders.shop/x")).await;
    }
    for _ in 0..20 {
        assert_eq!(
            send(&outbound, get("http://orders.shop/x")).await.status,
            200
        );
    }
    assert_eq!(peers.0.count(A), 2, "an ejected endpoint gets nothing");
    let ejections = outbound
        .metrics
        .ejections
        .get_or_create(&EndpointLabels {
            service: "orders.shop".into(),
            endpoint: A.into(),
        })
        .get();
    assert_eq!(ejections, 1);
}

/// `orders.shop` with rules: `x-canary: 1` → `canary`, prefix `/api` → `api`, and `/split`
/// split 3:1 between `blue` and `green`.
fn routed() -> pb::DiscoveryResponse {
    let rule = |index: u32, m: pb::RouteMatch, backends: &[(&str, u32)]| pb::RouteRule {
        route: "shop/orders".into(),
        rule_index: index,
        matches: vec![m],
        backends: backends
            .iter()
            .map(|(name, weight)| pb::BackendRef {
                name: (*name).into(),
                namespace: "shop".into(),
                weight: *weight,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let prefix = |p: &str| pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: pb::path_match::Kind::Prefix.into(),
            value: p.into(),
        }),
        ..Default::default()
    };
    let canary = pb::RouteMatch {
        headers: vec![pb::HeaderMatch {
            name: "x-canary".into(),
            value: "1".into(),
        }],
        ..Default::default()
    };
    let mut s = service(
        "orders",
        "shop",
        vec![
            backend("canary", "shop", &["10.0.1.1:15006"]),
            backend("api", "shop", &["10.0.2.1:15006"]),
            backend("blue", "shop", &["10.0.3.1:15006"]),
            backend("green", "shop", &["10.0.4.1:15006"]),
        ],
    );
    s.rules = vec![
        rule(0, canary, &[("canary", 1)]),
        rule(1, prefix("/api"), &[("api", 1)]),
        rule(2, prefix("/split"), &[("blue", 3), ("green", 1)]),
    ];
    update(vec![s])
}

fn routed_peers() -> FakePeers {
    let peers = FakePeers::default();
    for addr in [
        "10.0.1.1:15006",
        "10.0.2.1:15006",
        "10.0.3.1:15006",
        "10.0.4.1:15006",
    ] {
        peers.0.status(addr, 200);
    }
    peers
}

#[tokio::test]
async fn header_and_path_matches_pick_their_backend() {
    let peers = routed_peers();
    let outbound = fake_mesh::outbound(routed(), &peers);
    let canary = Request::get("http://orders.shop/api/x")
        .header("x-canary", "1")
        .body(body::empty())
        .unwrap();
    assert_eq!(send(&outbound, canary).await.status, 200);
    assert_eq!(
        peers.0.count("10.0.1.1:15006"),
        1,
        "the header rule comes first"
    );
    assert_eq!(
        send(&outbound, get("http://orders.shop/api/x"))
            .await
            .status,
        200
    );
    assert_eq!(peers.0.count("10.0.2.1:15006"), 1);
    // Matched after normalization, as the callee's proxy will see it.
    let dotted = get("http://orders.shop/other/../api/y");
    assert_eq!(send(&outbound, dotted).await.status, 200);
    assert_eq!(peers.0.count("10.0.2.1:15006"), 2);
    assert_eq!(peers.0.seen()[2].uri.path(), "/api/y");
    let rsp = send(&outbound, get("http://orders.shop/apix")).await;
    assert_eq!((rsp.status.as_u16(), rsp.reason()), (404, "no-route"));
}

#[tokio::test]
async fn a_weighted_split_follows_its_weights() {
    let peers = routed_peers();
    let outbound = fake_mesh::outbound(routed(), &peers);
    for _ in 0..200 {
        send(&outbound, get("http://orders.shop/split")).await;
    }
    let blue = peers.0.count("10.0.3.1:15006");
    let green = peers.0.count("10.0.4.1:15006");
    assert_eq!(blue + green, 200);
    assert!((145..=155).contains(&blue), "blue got {blue} of 200");
}

#[tokio::test]
async fn the_peer_gets_an_http2_stream_marked_with_the_callers_version() {
    let peers = FakePeers::default();
    peers.0.status(A, 200);
    let outbound = fake_mesh::outbound(orders(&[A], None), &peers);
    send(&outbound, get("http://orders.shop/x")).await;
    send(&outbound, get("http://orders.shop/y")).await;
    let seen = peers.0.seen();
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].headers[ORIG_PROTO_HEADER], "HTTP/1.1");
    assert_eq!(
        peers.0.connects(),
        1,
        "both requests ride one pooled connection"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_is_counted_under_its_service_route_and_peer() {
    let peers = FakePeers::default();
    peers.0.status(A, 200);
    let outbound = fake_mesh::outbound(orders(&[A], None), &peers);
    send(&outbound, get("http://orders.shop/x")).await;
    // Not in the snapshot: it waits for the control plane, then gives up.
    send(&outbound, get("http://ghost/x")).await;
    let ok = r#"weft_proxy_requests_total{direction="outbound",service="orders.shop",route="default",peer="spiffe://test.local/ns/shop/sa/orders",status_class="2xx",grpc_status="",error=""} 1"#;
    let unknown = r#"weft_proxy_requests_total{direction="outbound",service="unknown",route="",peer="",status_class="5xx",grpc_status="",error="no-endpoints"} 1"#;
    // Recorded when the response body ends, which the caller may see first.
    for _ in 0..1000 {
        let text = outbound.metrics.encode();
        if text.contains(ok) && text.contains(unknown) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("not counted as expected:\n{}", outbound.metrics.encode());
}
