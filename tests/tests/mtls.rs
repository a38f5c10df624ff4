//! Mutual TLS between proxies: SPIFFE identities checked both ways, the caller's identity passed
//! to the app, plaintext refused, certificates renewed under load.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tests::apps::{self, HttpApp};
use weft_tests::*;

const FRONTEND: &str = "spiffe://weft.local/ns/shop/sa/frontend";

fn mesh_config(spec: &str) -> String {
    format!("apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\nspec: {spec}\n")
}

/// frontend → orders, both proxies with certificates. `server_sa` is the identity the orders
/// proxy actually runs as (the Service says `orders`).
async fn pair(
    meshconfig: &str,
    protocol: &str,
    app: std::net::SocketAddr,
    server_sa: &str,
) -> (Mesh, Sidecar, Sidecar) {
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let mut server = Sidecar::builder().bind().await;
    let yaml = format!(
        "{}{}",
        mesh_config(meshconfig),
        service_yaml("shop", "orders", protocol, &[server.inbound])
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    let (_, server_token) = create_token(&mesh, &format!("shop/{server_sa}"), "1h").await;
    let (_, client_token) = create_token(&mesh, "shop/frontend", "1h").await;
    server.start_with(
        &mesh.access_with_token(&server_token),
        "shop",
        server_sa,
        app,
    );
    client.start_with(
        &mesh.access_with_token(&client_token),
        "shop",
        "frontend",
        NO_APP.parse().unwrap(),
    );
    // Certificate first, then config (the stream opens with the certificate): both, on both.
    for s in [&client, &server] {
        tokio::time::timeout(Duration::from_secs(10), s.running().identity.ready())
            .await
            .expect("certificate within 10s");
        s.ready().await;
    }
    (mesh, client, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_the_callers_spiffe_id_and_a_forged_one_is_replaced() {
    let app = HttpApp::start("orders").await;
    let (_mesh, client, server) = pair("{}", "HTTP", app.addr, "orders").await;
    let http = http1_client();
    let r = send(
        &http,
        client.upstreams[0],
        "orders",
        "GET",
        "/",
        &[(
            "x-weft-client-identity",
            "spiffe://weft.local/ns/shop/sa/admin",
        )],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-seen-identity"), FRONTEND);
    let m = server.running().metrics.encode();
    assert!(
        m.contains(r#"weft_proxy_inbound_connections_total{tls="true",outcome="accepted"}"#),
        "{m}"
    );
    // HTTP/2 callers too.
    let r = get(&http2_client(), client.upstreams[0], "orders", "/")
        .await
        .unwrap();
    assert_eq!((r.status, r.header("x-seen-identity")), (200, FRONTEND));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_strict_inbound_is_refused() {
    let app = HttpApp::start("orders").await;
    let (_mesh, _client, server) = pair("{mtls: strict}", "HTTP", app.addr, "orders").await;
    let mut raw = tokio::net::TcpStream::connect(server.inbound)
        .await
        .unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: orders\r\nx-weft-client-identity: spiffe://weft.local/ns/shop/sa/admin\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(
        got.is_empty(),
        "a plaintext caller gets nothing: {}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(app.hits(), 0);
    let m = server.running().metrics.encode();
    assert!(
        m.contains(r#"weft_proxy_inbound_connections_total{tls="false",outcome="refused"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_plaintext_and_says_so_in_metrics() {
    let app = HttpApp::start("orders").await;
    let (_mesh, _client, server) = pair("{mtls: permissive}", "HTTP", app.addr, "orders").await;
    let r = get(&http1_client(), server.inbound, "orders", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-seen-identity"),
        "",
        "no identity for a plaintext caller"
    );
    let m = server.running().metrics.encode();
    assert!(
        m.contains(r#"weft_proxy_inbound_connections_total{tls="false",outcome="accepted"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_another_identity_is_refused_with_tls_failed() {
    let app = HttpApp::start("impostor").await;
    // The Service's identity is orders; its endpoint's proxy holds a certificate for payments.
    let (_mesh, client, _server) = pair("{}", "HTTP", app.addr, "payments").await;
    let r = get(&http1_client(), client.upstreams[0], "orders", "/")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (502, "tls-failed"),
        "{r:?}"
    );
    assert!(
        r.body.contains("spiffe://weft.local/ns/shop/sa/payments"),
        "{}",
        r.body
    );
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_rides_mtls_too() {
    let echo = apps::tcp_echo().await;
    let (_mesh, client, server) = pair("{}", "TCP", echo, "orders").await;
    let mut conn = tokio::net::TcpStream::connect(client.upstreams[0])
        .await
        .unwrap();
    conn.write_all(b"over tls").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"over tls<eof seen>");
    let m = server.running().metrics.encode();
    assert!(
        m.contains(r#"weft_proxy_inbound_connections_total{tls="true",outcome="accepted"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_load_with_no_failed_request() {
    let app = HttpApp::start("orders").await;
    let (_mesh, client, server) = pair("{certificateTTL: 2s}", "HTTP", app.addr, "orders").await;
    let load = Load::start(client.upstreams[0], "orders", 4, |r| {
        r.status == 200 && r.header("x-seen-identity") == FRONTEND
    });
    // Three renewals on each side while the callers run.
    let issued = |s: &Sidecar| {
        let m = s.running().metrics.encode();
        m.lines()
            .find(|l| {
                l.starts_with(r#"weft_proxy_identity_certificate_requests_total{outcome="issued"}"#)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually(
        "three renewals on both proxies",
        Duration::from_secs(15),
        || async { (issued(&client) >= 4 && issued(&server) >= 4).then_some(()) },
    )
    .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "{ok} succeeded");
    assert!(ok > 100);
}
