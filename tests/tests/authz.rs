//! AuthorizationPolicy on the inbound side, by the caller's SPIFFE ID (from mTLS), path and
//! method: allowed requests reach the app, denied ones get 403 `forbidden`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weft_tests::apps::HttpApp;
use weft_tests::*;

const POLICY: &str = r#"
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: shop}
spec:
  targetRef: {kind: Service, name: orders}
  rules:
  - from: {identities: ["spiffe://weft.local/ns/shop/sa/frontend"]}
    to: {paths: ["/public/*"], methods: [GET]}
  - from: {identities: ["spiffe://weft.local/ns/shop/sa/adm*"]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_by_identity_path_and_method() {
    let app = HttpApp::start("orders").await;
    let mut server = Sidecar::bind(&[]).await;
    let mut frontend = Sidecar::bind(&["orders.shop:8080"]).await;
    let mut admin = Sidecar::bind(&["orders.shop:8080"]).await;
    let mesh = Mesh::start(&format!(
        "{}{POLICY}",
        service_yaml("shop", "orders", "HTTP", &[server.inbound])
    ))
    .await;
    for (sidecar, sa, app_addr) in [
        (&mut server, "orders", app.addr),
        (&mut frontend, "frontend", NO_APP.parse().unwrap()),
        (&mut admin, "admin", NO_APP.parse().unwrap()),
    ] {
        let (_, token) = create_token(&mesh, &format!("shop/{sa}"), "1h").await;
        sidecar.start_with(&mesh.access_with_token(&token), "shop", sa, app_addr);
    }
    for s in [&server, &frontend, &admin] {
        tokio::time::timeout(Duration::from_secs(10), s.running().identity.ready())
            .await
            .unwrap();
        s.ready().await;
    }
    let http = http1_client();
    let call = |from: &Sidecar, method: &'static str, path: &'static str| {
        let (http, addr) = (http.clone(), from.upstreams[0]);
        async move {
            send(&http, addr, "orders", method, path, &[])
                .await
                .unwrap()
        }
    };

    assert_eq!(call(&frontend, "GET", "/public/menu").await.status, 200);
    for (method, path) in [("POST", "/public/menu"), ("GET", "/private")] {
        let r = call(&frontend, method, path).await;
        assert_eq!(
            (r.status, r.header("x-weft-error")),
            (403, "forbidden"),
            "{method} {path}: {r:?}"
        );
        assert!(
            r.body
                .contains("spiffe://weft.local/ns/shop/sa/frontend may not"),
            "{}",
            r.body
        );
    }
    assert_eq!(call(&admin, "GET", "/private").await.status, 200);
    assert_eq!(call(&admin, "DELETE", "/anything").await.status, 200);
    assert_eq!(app.hits(), 3, "denied requests never reach the app");

    let m = server.running().metrics.encode();
    assert!(
        m.contains(r#"weft_proxy_authorization_total{decision="allow"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"weft_proxy_authorization_total{decision="deny"} 2"#),
        "{m}"
    );

    // gRPC-style callers get PERMISSION_DENIED rather than an HTTP 403.
    let r = send(
        &http,
        frontend.upstreams[0],
        "orders",
        "POST",
        "/pkg.Svc/Call",
        &[("content-type", "application/grpc")],
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.header("grpc-status"), r.header("x-weft-error")),
        (200, "7", "forbidden")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_policy_opens_the_service_again() {
    let app = HttpApp::start("orders").await;
    let mut server = Sidecar::bind(&[]).await;
    let mut frontend = Sidecar::bind(&["orders.shop:8080"]).await;
    let svc = service_yaml("shop", "orders", "HTTP", &[server.inbound]);
    let mesh = Mesh::start(&format!("{svc}{POLICY}")).await;
    for (sidecar, sa, app_addr) in [
        (&mut server, "orders", app.addr),
        (&mut frontend, "frontend", NO_APP.parse().unwrap()),
    ] {
        let (_, token) = create_token(&mesh, &format!("shop/{sa}"), "1h").await;
        sidecar.start_with(&mesh.access_with_token(&token), "shop", sa, app_addr);
    }
    tokio::time::timeout(Duration::from_secs(10), frontend.running().identity.ready())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.running().identity.ready())
        .await
        .unwrap();
    // The server's config (with the policy) follows its certificate.
    server.ready().await;
    frontend.ready().await;
    let http = http1_client();
    assert_eq!(
        get(&http, frontend.upstreams[0], "orders", "/private")
            .await
            .unwrap()
            .status,
        403
    );
    mesh.write_config(&svc);
    eventually("the policy to go away", Duration::from_secs(5), || async {
        (get(&http, frontend.upstreams[0], "orders", "/private")
            .await
            .unwrap()
            .status
            == 200)
            .then_some(())
    })
    .await;
}
