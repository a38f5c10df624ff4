//! The proxy's admin listener: liveness, readiness before and after config, the config in
//! force, metrics, and drain (when enabled). What it refuses: tests/tests/local_admin.rs.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weft_tests::apps::HttpApp;
use weft_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_config_and_config_shows_what_is_in_force() {
    let app = HttpApp::start("orders").await;
    let mut server = Sidecar::builder().bind().await;
    let mut client = Sidecar::builder()
        .upstream("orders.shop:8080")
        .admin_shutdown(true)
        .bind()
        .await;
    let yaml = service_yaml("shop", "orders", "HTTP", &[server.inbound]);
    // A first start creates the mesh CA and publishes its trust anchors in the data dir; the
    // token and the anchors outlive a restart.
    let mut mesh = Mesh::builder().config(&yaml).start().await;
    let anchors = std::fs::read_to_string(mesh.anchors()).unwrap();
    assert!(
        anchors.starts_with("-----BEGIN CERTIFICATE-----"),
        "{anchors}"
    );
    let access = mesh.access("shop", "frontend");
    mesh.stop().await;
    // The proxy starts while the control plane is down.
    client.start_with(&access, "shop", "frontend", NO_APP.parse().unwrap());
    let http = http1_client();

    let live = get(&http, client.admin, "localhost", "/live")
        .await
        .unwrap();
    assert_eq!(live.status, 200);
    // The certificate comes first: the config stream needs it.
    let ready = get(&http, client.admin, "localhost", "/ready")
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready
            .body
            .contains("waiting for a certificate from the control plane at https://"),
        "{}",
        ready.body
    );

    // Now the control plane comes up where the proxy is dialing.
    mesh.restart().await;
    server.start(&mesh, "shop", "orders", app.addr);
    eventually("readiness", Duration::from_secs(10), || async {
        get(&http, client.admin, "localhost", "/ready")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;

    // The proxy subscribes to its upstream's service at start: /config shows it, with version.
    let config = get(&http, client.admin, "localhost", "/config")
        .await
        .unwrap();
    assert_eq!(config.header("content-type"), "application/json");
    let doc: serde_json::Value = serde_json::from_str(&config.body).unwrap();
    assert_eq!(doc["version"], "1");
    assert_eq!(doc["services"][0]["key"]["name"], "orders");
    assert_eq!(doc["proxy"]["namespace"], "shop");
    assert!(doc["proxy"].to_string().contains("frontend"));

    let metrics = get(&http, client.admin, "localhost", "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.body.contains("weft_proxy_config_version 1"),
        "{}",
        metrics.body
    );
    assert_eq!(
        metrics.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8",
        "the classic text format by default"
    );
    let om = send(
        &http,
        client.admin,
        "admin",
        "GET",
        "/metrics",
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await
    .unwrap();
    assert!(om.body.ends_with("# EOF\n"), "OpenMetrics when asked for");

    // Enabled (`admin-shutdown`), POST /shutdown drains, but never for a browser's request.
    let r = send(
        &http,
        client.admin,
        "localhost",
        "POST",
        "/shutdown",
        &[("origin", "http://evil.example")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    let r = send(&http, client.admin, "localhost", "POST", "/shutdown", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    eventually(
        "the outbound listener to close",
        Duration::from_secs(5),
        || async {
            tokio::net::TcpStream::connect(client.upstreams[0])
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}
