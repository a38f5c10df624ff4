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
    let mut server = Sidecar::builder().bind().await;
    let mut frontend = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let mut admin = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let mesh = Mesh::builder()
        .config(format!(
            "{}{POLICY}",
            service_yaml("shop", "orders", "HTTP", &[server.inbound])
        ))
        .start()
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
    let mut server = Sidecar::builder().bind().await;
    let mut frontend = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let svc = service_yaml("shop", "orders", "HTTP", &[server.inbound]);
    let mesh = Mesh::builder()
        .config(format!("{svc}{POLICY}"))
        .start()
        .await;
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

/// Requests that spell a denied path in a way a lenient app (`apps::lenient_path`) resolves to
/// it: dot segments, encoded dots and slashes, backslashes, double slashes, `;` parameters,
/// case. The policy allows only `/public/*`.
const PATH_CORPUS: &[&str] = &[
    "/public/../admin",
    "/public/./../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "/public/..%2fadmin",
    "/public/..%2Fadmin",
    "/public%2f..%2fadmin",
    "/public/%2e%2e%2fadmin",
    "//admin",
    "///admin",
    "/public//../admin",
    "/public/x//../../admin",
    r"/public/..\admin",
    r"/public\..\admin",
    "/public/%5c..%5cadmin",
    "/public/%5C..%5Cadmin",
    "/admin;x=1",
    "/admin;",
    "/admin%3bx=1",
    "/public/..;/admin",
    "/public/;/../admin",
    "/public;x/../admin",
    "/./admin",
    "/public/%2e/../../admin",
    "/ADMIN",
    "/Admin/",
    "/public/../ADMIN",
    "/public/%61dmin",
    "/%61dmin",
    "/public/..%00/admin",
    "/public/%zz/../../admin",
    "/public/..%",
];

const PATH_POLICY: &str = r#"
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: shop}
spec:
  targetRef: {kind: Service, name: orders}
  rules:
  - to: {paths: ["/public/*"]}
"#;

/// The class of finding "path rules match the raw path": whatever the spelling, the app never
/// serves a path the policy did not allow; it gets a path inside `/public/`, or a proxy answers
/// 400 `bad-request` or 403 `forbidden`. Allowed requests reach the app already normalized: what
/// it sees is what the policy checked. Over HTTP/1.1 and HTTP/2, through the caller's proxy and
/// straight to the callee's inbound listener (a caller that skips its own proxy; plaintext, as
/// `mtls: permissive` lets it, so the test can write raw paths).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_path_reaches_what_the_policy_denies() {
    let app = HttpApp::start("orders").await;
    let mut server = Sidecar::builder().bind().await;
    let mut frontend = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let mesh = Mesh::builder().config(format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\nspec: {{mtls: permissive}}\n{}{PATH_POLICY}",
        service_yaml("shop", "orders", "HTTP", &[server.inbound])
    )).start()
    .await;
    for (sidecar, sa, app_addr) in [
        (&mut server, "orders", app.addr),
        (&mut frontend, "frontend", NO_APP.parse().unwrap()),
    ] {
        let (_, token) = create_token(&mesh, &format!("shop/{sa}"), "1h").await;
        sidecar.start_with(&mesh.access_with_token(&token), "shop", sa, app_addr);
    }
    for s in [&server, &frontend] {
        tokio::time::timeout(Duration::from_secs(10), s.running().identity.ready())
            .await
            .unwrap();
        s.ready().await;
    }
    let mut failures = Vec::new();
    for (entrance, addr) in [
        ("via the caller's proxy", frontend.upstreams[0]),
        ("straight to the inbound", server.inbound),
    ] {
        for (version, http) in [("HTTP/1.1", http1_client()), ("HTTP/2", http2_client())] {
            let at = format!("{entrance}, {version}");
            // The policy is in force: a plain denied path is refused, an allowed one served.
            let r = get(&http, addr, "orders", "/admin").await.unwrap();
            assert_eq!(r.status, 403, "{at}: {r:?}");
            let r = get(&http, addr, "orders", "/public/menu").await.unwrap();
            assert_eq!(
                (r.status, r.header("x-seen-path")),
                (200, "/public/menu"),
                "{at}"
            );
            // The app receives the normalized path.
            for (path, seen) in [
                ("/public/a/../menu", "/public/menu"),
                ("/public//%7Emenu/.", "/public/~menu/"),
                ("/public/%61dmin", "/public/admin"),
            ] {
                let r = get(&http, addr, "orders", path).await.unwrap();
                if (r.status, r.header("x-seen-path")) != (200, seen) {
                    failures.push(format!("{at} {path}: app should see {seen:?}: {r:?}"));
                }
            }
            let r = get(&http, addr, "orders", "/public/../admin%2f")
                .await
                .unwrap();
            if (r.status, r.header("x-weft-error")) != (400, "bad-request")
                || !r.body.contains("encoded slash")
            {
                failures.push(format!("{at}: an encoded slash should be refused: {r:?}"));
            }

            for path in PATH_CORPUS {
                let r = match get(&http, addr, "orders", path).await {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("{at} {path}: no answer: {e}"));
                        continue;
                    }
                };
                let outcome = match (r.status, r.header("x-weft-error")) {
                    (200, "") if r.header("x-served-path").starts_with("/public/") => {
                        if r.header("x-seen-path") == r.header("x-served-path") {
                            continue;
                        }
                        "served inside /public/, but not normalized"
                    }
                    (200, "") => "SERVED OUTSIDE /public/",
                    (400, "bad-request") | (403, "forbidden") => continue,
                    _ => "unexpected answer",
                };
                failures.push(format!(
                    "{at} {path}: {outcome}: {} {:?}, app saw {:?}, serves {:?}",
                    r.status,
                    r.header("x-weft-error"),
                    r.header("x-seen-path"),
                    r.header("x-served-path"),
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
