//! Writes as proxies see them: a route change under traffic re-routes without failures, and a
//! write reaches every connected proxy within 100 ms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_tests::apps::HttpApp;
use weft_tests::*;

use crate::FILE_SERVICE;

/// The two-backend mesh of these tests: `orders` split by an HTTPRoute applied through the API
/// between `orders-v1` and `orders-v2`, and a client sidecar calling it.
async fn canary() -> (Mesh, Sidecar, [Sidecar; 2], [HttpApp; 2]) {
    let (v1, v2) = (HttpApp::start("v1").await, HttpApp::start("v2").await);
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let (mut s1, mut s2) = (
        Sidecar::builder().bind().await,
        Sidecar::builder().bind().await,
    );
    let yaml = format!(
        "{}{}---\n{FILE_SERVICE}",
        service_yaml("shop", "orders-v1", "HTTP", &[s1.inbound]),
        service_yaml("shop", "orders-v2", "HTTP", &[s2.inbound]),
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    let (status, body) = api_call(mesh.api_addr, "POST", "/api/v1/apply", &route(100, 0)).await;
    assert_eq!(status, 200, "{body}");
    s1.start(&mesh, "shop", "orders-v1", v1.addr);
    s1.ready().await;
    s2.start(&mesh, "shop", "orders-v2", v2.addr);
    s2.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    (mesh, client, [s1, s2], [v1, v2])
}

fn route(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: canary, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: orders}}]\n  rules:\n  - backendRefs: [{{name: orders-v1, weight: {v1}}}, {{name: orders-v2, weight: {v2}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_under_traffic_reroutes_within_a_second_without_failures() {
    let (mesh, client, _servers, _apps) = canary().await;
    let upstream = client.upstreams[0];
    // Each response, with when its request was sent.
    let seen = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let load = Load::with(4, {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move {
                let sent = Instant::now();
                let r = get(&http1_client(), upstream, "orders", "/").await?;
                anyhow::ensure!(r.status == 200, "status {}", r.status);
                seen.lock()
                    .unwrap()
                    .push((sent, r.header("x-app").to_string()));
                Ok(())
            }
        }
    });
    eventually("traffic to flow", Duration::from_secs(5), || async {
        (load.ok() > 200).then_some(())
    })
    .await;
    let changed_at = Instant::now();
    let (status, body) = api_call(mesh.api_addr, "POST", "/api/v1/apply", &route(0, 100)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["action"], "configured");
    let acked = Instant::now();
    let before = load.ok();
    eventually(
        "traffic after the change",
        Duration::from_secs(10),
        || async {
            (load.ok() > before + 500 && changed_at.elapsed() > Duration::from_millis(1500))
                .then_some(())
        },
    )
    .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "no request may fail while the route changes");
    let seen = seen.lock().unwrap();
    // The last request that still went to v1 was sent this long after the change was applied.
    let last_v1 = seen
        .iter()
        .filter(|(_, app)| app == "v1")
        .map(|(at, _)| at.saturating_duration_since(changed_at))
        .max()
        .unwrap();
    let after: Vec<_> = seen
        .iter()
        .filter(|(at, _)| *at > changed_at + Duration::from_secs(1))
        .collect();
    eprintln!(
        "{ok} requests; apply answered in {:?}; last request to v1 sent {last_v1:?} after the change; {} sent after 1s",
        acked - changed_at,
        after.len()
    );
    assert!(last_v1 < Duration::from_secs(1), "re-routed in {last_v1:?}");
    assert!(!after.is_empty() && after.iter().all(|(_, app)| app == "v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_write_reaches_connected_proxies_within_100ms() {
    let (mesh, client, servers, _apps) = canary().await;
    let mut delays = Vec::new();
    for i in 0..10u32 {
        let (v1, v2) = if i % 2 == 0 { (10, 90) } else { (90, 10) };
        let sent = Instant::now();
        let (status, _) = api_call(mesh.api_addr, "POST", "/api/v1/apply", &route(v1, v2)).await;
        assert_eq!(status, 200);
        let generation = mesh.generation().to_string();
        // Every proxy: the caller, and both servers (whose views changed only in version).
        let proxies = [&client, &servers[0], &servers[1]];
        while proxies.iter().any(|p| p.version() != generation) {
            assert!(sent.elapsed() < Duration::from_secs(5), "not pushed in 5s");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        delays.push(sent.elapsed());
    }
    delays.sort();
    eprintln!("apply to every proxy holding it: {delays:?}");
    // The median, so that one scheduling hiccup of a loaded CI machine does not decide.
    assert!(
        delays[delays.len() / 2] < Duration::from_millis(100),
        "{delays:?}"
    );
}
