//! Config from the control plane: live changes under load, outages of the control plane,
//! invalid config, and NACKs.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use weft_tests::apps::HttpApp;
use weft_tests::*;

fn route_to(backend: &str) -> String {
    format!(
        r#"
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: orders, namespace: shop}}
spec: {{ports: [{{port: 8080}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: orders, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, name: orders}}]
  rules:
  - backendRefs: [{{name: {backend}}}]
"#
    )
}

struct TwoVersions {
    mesh: Mesh,
    client: Sidecar,
    _servers: Vec<Sidecar>,
    _apps: Vec<HttpApp>,
    base: String,
}

async fn two_versions() -> TwoVersions {
    let (v1, v2) = (HttpApp::start("v1").await, HttpApp::start("v2").await);
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let (mut s1, mut s2) = (
        Sidecar::builder().bind().await,
        Sidecar::builder().bind().await,
    );
    let base = format!(
        "{}{}",
        service_yaml("shop", "orders-v1", "HTTP", &[s1.inbound]),
        service_yaml("shop", "orders-v2", "HTTP", &[s2.inbound])
    );
    let mesh = Mesh::builder()
        .config(format!("{base}{}", route_to("orders-v1")))
        .start()
        .await;
    s1.start(&mesh, "shop", "orders-v1", v1.addr);
    s1.ready().await;
    s2.start(&mesh, "shop", "orders-v2", v2.addr);
    s2.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    TwoVersions {
        mesh,
        client,
        _servers: vec![s1, s2],
        _apps: vec![v1, v2],
        base,
    }
}

async fn app_behind(client: &Sidecar) -> String {
    let r = get(&http1_client(), client.upstreams[0], "orders", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.header("x-app").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_reroutes_within_a_second_with_no_failed_request() {
    let t = two_versions().await;
    assert_eq!(app_behind(&t.client).await, "v1");

    // A steady stream of requests from four callers for the whole test.
    let load = Load::start(t.client.upstreams[0], "orders", 4, |r| r.status == 200);
    eventually("traffic to flow", Duration::from_secs(5), || async {
        (load.ok() > 50).then_some(())
    })
    .await;

    let changed = Instant::now();
    t.mesh
        .write_config(&format!("{}{}", t.base, route_to("orders-v2")));
    eventually("requests to reach v2", Duration::from_secs(5), || async {
        (app_behind(&t.client).await == "v2").then_some(())
    })
    .await;
    let took = changed.elapsed();
    // Keep the load on a little longer after the switch.
    let after = load.ok();
    eventually(
        "more traffic after the change",
        Duration::from_secs(5),
        || async { (load.ok() > after + 100).then_some(()) },
    )
    .await;
    let (ok, failed) = load.stop().await;
    assert!(took < Duration::from_secs(1), "re-route took {took:?}");
    assert_eq!(failed, 0, "{ok} requests succeeded");
    assert_eq!(t.client.version(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_the_control_plane_and_follows_it_after_restart() {
    let mut t = two_versions().await;
    t.mesh.stop().await;
    let metrics = || t.client.running().metrics.encode();
    eventually("the proxy to notice", Duration::from_secs(5), || async {
        metrics()
            .contains("weft_proxy_control_plane_connected 0")
            .then_some(())
    })
    .await;
    for _ in 0..50 {
        assert_eq!(
            app_behind(&t.client).await,
            "v1",
            "the last-good config keeps serving"
        );
    }

    // A change made while the control plane is down is picked up when it returns.
    t.mesh
        .write_config(&format!("{}{}", t.base, route_to("orders-v2")));
    t.mesh.restart().await;
    eventually(
        "all three proxies to reconnect",
        Duration::from_secs(10),
        || async { (t.mesh.proxies().len() == 3).then_some(()) },
    )
    .await;
    eventually("the new route", Duration::from_secs(5), || async {
        (app_behind(&t.client).await == "v2").then_some(())
    })
    .await;

    // And a later change too.
    t.mesh
        .write_config(&format!("{}{}", t.base, route_to("orders-v1")));
    eventually("the later change", Duration::from_secs(5), || async {
        (app_behind(&t.client).await == "v1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused_by_file_and_field_and_the_last_good_stays() {
    let t = two_versions().await;
    let good = format!("{}{}", t.base, route_to("orders-v2"));
    let cases = [
        ("an unknown field", good.replace("parentRefs:", "parentRef:"), "spec.parentRef: unknown field `parentRef`"),
        ("a bad duration", format!("{good}  - timeouts: {{request: 5 parsecs}}\n    backendRefs: [{{name: orders-v1}}]\n"), "spec.rules[1].timeouts.request: unknown unit"),
        ("a weight that does not parse", good.replace("{name: orders-v2}", "{name: orders-v2, weight: lots}"), "spec.rules[0].backendRefs[0].weight: invalid type"),
    ];
    let generation = t.mesh.generation();
    for (what, yaml, expected) in cases {
        t.mesh.write_config(&yaml);
        let problems = eventually(
            &format!("{what} to be refused"),
            Duration::from_secs(5),
            || async {
                let e = t.mesh.state().last_error();
                (!e.is_empty()).then_some(e)
            },
        )
        .await;
        let text = problems.join("\n");
        assert!(
            text.contains("mesh.yaml: document") && text.contains(expected),
            "{what}: {text}"
        );
        assert_eq!(
            t.mesh.generation(),
            generation,
            "{what} changed the config in force"
        );
        assert_eq!(
            app_behind(&t.client).await,
            "v1",
            "{what}: the last-good route stays"
        );
        // Back to a valid file before the next case, so each refusal is its own.
        t.mesh
            .write_config(&format!("{}{}", t.base, route_to("orders-v1")));
        eventually("the refusal to clear", Duration::from_secs(5), || async {
            t.mesh.state().last_error().is_empty().then_some(())
        })
        .await;
    }
    t.mesh.write_config(&good);
    eventually("the valid change", Duration::from_secs(5), || async {
        (app_behind(&t.client).await == "v2").then_some(())
    })
    .await;
}
