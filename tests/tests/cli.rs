//! The operator CLI against a running control plane: `weft get`.

#![allow(clippy::unwrap_used)]

use weft_tests::apps::HttpApp;
use weft_tests::*;

/// Runs `weft ARGS --server URL`; returns (exit code, stdout, stderr).
async fn weft(server: &str, args: &[&str]) -> (i32, String, String) {
    run_weft(None, &[args, &["--server", server]].concat(), "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_get_shows_resources_and_proxies() {
    let app = HttpApp::start("orders").await;
    let (mesh, _client, server) = pair("HTTP", app.addr).await;
    let url = format!("http://{}", mesh.api_addr);

    let (code, out, err) = weft(&url, &["get", "services"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("KIND") && lines[0].contains("NAMESPACE"),
        "{out}"
    );
    assert!(
        lines[1].contains("Service") && lines[1].contains("orders"),
        "{out}"
    );
    assert!(lines[1].contains("ports 8080/HTTP; endpoints: 1"), "{out}");

    let (code, out, _) = weft(
        &url,
        &["get", "Service", "orders", "-n", "shop", "-o", "yaml"],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.contains("kind: Service") && out.contains(&server.inbound.to_string()),
        "{out}"
    );

    let (code, out, _) = weft(&url, &["get", "services", "-o", "json"]).await;
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["items"][0]["metadata"]["name"], "orders");

    let (code, _, err) = weft(&url, &["get", "pods"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown kind \"pods\"") && err.contains("HTTPRoute"),
        "{err}"
    );

    let (code, _, err) = weft(&url, &["get", "service", "nope", "-n", "shop"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Service shop/nope not found"), "{err}");

    let (code, out, err) = weft(&url, &["get", "proxies"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("spiffe://weft.local/ns/shop/sa/orders"),
        "{out}"
    );
    assert!(
        out.contains("spiffe://weft.local/ns/shop/sa/frontend"),
        "{out}"
    );
    assert!(out.starts_with("SERVICE "), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("orders.shop ")),
        "each proxy's Service: {out}"
    );
    // MeshConfig's default certificate lifetime, 24h, as hours and minutes left.
    assert!(
        out.lines()
            .skip(1)
            .all(|l| l.ends_with("24h0m") || l.ends_with("23h59m")),
        "certificate lifetime left: {out}"
    );

    let (code, _, err) = weft("http://127.0.0.1:9", &["get", "services"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("is `weft serve` running?"), "{err}");
}
