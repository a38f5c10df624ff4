//! Routing end to end: by authority and by `upstream` mapping, HTTPRoute matches, weighted
//! splits, load balancing, and the errors the proxy makes up.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use weft_tests::apps::HttpApp;
use weft_tests::*;

const ROUTE: &str = r#"
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec: {ports: [{port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: orders-v2}]
  - matches: [{headers: [{name: x-canary, value: "yes"}]}, {method: DELETE}]
    backendRefs: [{name: orders-v2}]
  - matches: [{path: {type: Exact, value: /gone}}]
    backendRefs: [{name: nonexistent}]
  - backendRefs: [{name: orders-v1}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_authority_and_by_upstream_mapping() {
    let app = HttpApp::start("orders").await;
    let (_mesh, client, _server) = pair("HTTP", app.addr).await;
    let http = http1_client();

    let r = get(&http, client.upstreams[0], "localhost:1234", "/by-mapping")
        .await
        .unwrap();
    assert_eq!((r.status, r.header("x-app")), (200, "orders"), "{r:?}");
    assert_eq!(
        r.header("x-seen-host"),
        "localhost:1234",
        "the Host header reaches the app unchanged"
    );

    for host in [
        "orders",
        "orders.shop",
        "orders.shop:8080",
        "orders.shop.svc",
        "orders.shop.svc.cluster.local:8080",
    ] {
        let r = get(&http, client.outbound, host, "/by-authority")
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.header("x-app")),
            (200, "orders"),
            "host {host}: {r:?}"
        );
    }

    let r = get(&http, client.outbound, "nothing.shop", "/")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (404, "no-route"),
        "{r:?}"
    );
    let r = get(&http, client.outbound, "orders.shop:9999", "/")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (404, "no-route"),
        "an unknown port is no route: {r:?}"
    );
    let r = get(&http, client.outbound, "not_a.valid.host.name", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_matches_path_headers_and_method() {
    let (v1, v2) = (HttpApp::start("v1").await, HttpApp::start("v2").await);
    let mut client = Sidecar::builder().bind().await;
    let (mut s1, mut s2) = (
        Sidecar::builder().bind().await,
        Sidecar::builder().bind().await,
    );
    let yaml = format!(
        "{}{}{ROUTE}",
        service_yaml("shop", "orders-v1", "HTTP", &[s1.inbound]),
        service_yaml("shop", "orders-v2", "HTTP", &[s2.inbound])
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    s1.start(&mesh, "shop", "orders-v1", v1.addr);
    s1.ready().await;
    s2.start(&mesh, "shop", "orders-v2", v2.addr);
    s2.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let http = http1_client();
    let app = |method: &'static str,
               path: &'static str,
               headers: &'static [(&'static str, &'static str)]| {
        let http = http.clone();
        let addr = client.outbound;
        async move {
            send(&http, addr, "orders.shop", method, path, headers)
                .await
                .unwrap()
        }
    };

    assert_eq!(app("GET", "/", &[]).await.header("x-app"), "v1");
    assert_eq!(app("GET", "/v2", &[]).await.header("x-app"), "v2");
    assert_eq!(app("GET", "/v2/items", &[]).await.header("x-app"), "v2");
    assert_eq!(
        app("GET", "/v2items", &[]).await.header("x-app"),
        "v1",
        "a prefix matches whole path segments"
    );
    // Routes match the normalized path, the one the callee's proxy checks and its app receives.
    for (path, to, seen) in [
        ("/x/../v2/items", "v2", "/v2/items"),
        ("//v2//items", "v2", "/v2/items"),
        ("/%76%32/items", "v2", "/v2/items"),
        ("/v2/../items", "v1", "/items"),
    ] {
        let r = app("GET", path, &[]).await;
        assert_eq!(
            (r.header("x-app"), r.header("x-seen-path")),
            (to, seen),
            "{path}"
        );
    }
    assert_eq!(
        app("GET", "/", &[("x-canary", "yes")])
            .await
            .header("x-app"),
        "v2"
    );
    assert_eq!(
        app("GET", "/", &[("x-canary", "no")]).await.header("x-app"),
        "v1"
    );
    assert_eq!(app("DELETE", "/", &[]).await.header("x-app"), "v2");
    let r = app("GET", "/gone", &[]).await;
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (503, "no-endpoints"),
        "a backend that does not exist: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_lands_within_three_points() {
    let (v1, v2) = (HttpApp::start("v1").await, HttpApp::start("v2").await);
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let (mut s1, mut s2) = (
        Sidecar::builder().bind().await,
        Sidecar::builder().bind().await,
    );
    let yaml = format!(
        "{}{}{}",
        service_yaml("shop", "orders-v1", "HTTP", &[s1.inbound]),
        service_yaml("shop", "orders-v2", "HTTP", &[s2.inbound]),
        r#"
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec: {ports: [{port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules:
  - backendRefs: [{name: orders-v1, weight: 90}, {name: orders-v2, weight: 10}]
"#
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    s1.start(&mesh, "shop", "orders-v1", v1.addr);
    s1.ready().await;
    s2.start(&mesh, "shop", "orders-v2", v2.addr);
    s2.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let http = http1_client();
    let mut counts: HashMap<String, u32> = HashMap::new();
    const N: u32 = 2000;
    for _ in 0..N {
        let r = get(&http, client.upstreams[0], "orders", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        *counts.entry(r.header("x-app").to_string()).or_default() += 1;
    }
    let v2_share = f64::from(counts.get("v2").copied().unwrap_or(0)) / f64::from(N) * 100.0;
    assert!(
        (7.0..=13.0).contains(&v2_share),
        "v2 got {v2_share:.1}% ({counts:?}); want 10 ± 3"
    );
    assert_eq!(v1.hits() + v2.hits(), u64::from(N));
    // The caller's proxy holds the one service it calls (its backends inside it), not the mesh.
    let snapshot = client.running().discovery.snapshot();
    assert_eq!(
        snapshot
            .services
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["orders.shop"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_balancer_steers_away_from_a_slow_endpoint() {
    let fast1 = HttpApp::start("fast1").await;
    let fast2 = HttpApp::start("fast2").await;
    let slow = HttpApp::with_delay("slow", Duration::from_millis(50)).await;
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let mut sidecars = [
        Sidecar::builder().bind().await,
        Sidecar::builder().bind().await,
        Sidecar::builder().bind().await,
    ];
    let eps: Vec<_> = sidecars.iter().map(|s| s.inbound).collect();
    let mesh = Mesh::builder()
        .config(service_yaml("shop", "orders", "HTTP", &eps))
        .start()
        .await;
    for (s, app) in sidecars.iter_mut().zip([&fast1, &fast2, &slow]) {
        s.start(&mesh, "shop", "orders", app.addr);
        s.ready().await;
    }
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let http = http1_client();
    // Four concurrent callers, 100 requests each.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, addr) = (http.clone(), client.upstreams[0]);
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                assert_eq!(get(&http, addr, "orders", "/").await.unwrap().status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = fast1.hits() + fast2.hits() + slow.hits();
    let share = slow.hits() as f64 / total as f64 * 100.0;
    assert_eq!(total, 400);
    assert!(
        share < 15.0,
        "the slow endpoint got {share:.1}% of requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_are_marked_and_counted() {
    // The endpoint's sidecar runs, but its app does not: the peer answers 502 connect-failed.
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let mut server = Sidecar::builder().bind().await;
    let mesh = Mesh::builder()
        .config(service_yaml("shop", "orders", "HTTP", &[server.inbound]))
        .start()
        .await;
    server.start(&mesh, "shop", "orders", NO_APP.parse().unwrap());
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let http = http1_client();
    let r = get(&http, client.upstreams[0], "orders", "/")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (502, "connect-failed"),
        "{r:?}"
    );

    // No sidecar at the endpoint at all: the caller's proxy says so itself.
    server.stop().await;
    let r = get(&http, client.upstreams[0], "orders", "/")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (502, "connect-failed"),
        "{r:?}"
    );

    // Counted when each response has ended.
    eventually("both failures counted", Duration::from_secs(5), || async {
        let m = client.running().metrics.encode();
        let n = metric(
            &m,
            "weft_proxy_requests_total",
            &[
                "direction=\"outbound\"",
                "service=\"orders.shop\"",
                "status_class=\"5xx\"",
                "error=\"connect-failed\"",
            ],
        );
        (n == 2.0).then_some(())
    })
    .await;
}
