//! Kubernetes service-account tokens as proof of identity, against answers a real cluster gives
//! only with effort: the control plane's real `kube` client talks to a local stand-in for the
//! API server that answers `POST /apis/authentication.k8s.io/v1/tokenreviews` with recorded
//! responses (`tests/fixtures/tokenreview/`: expired tokens, a user who is no service account,
//! an answer without audiences, RBAC refusing the review), and checks what the control plane
//! asked. The same path against the real API server, with a token the kubelet projected into a
//! pod, is `tests/tests/cluster/tokens.rs`.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use weft_proto::identity::certify_request::Proof;
use weft_tests::*;

const ORDERS: &str = "spiffe://weft.local/ns/shop/sa/orders";

/// What the stand-in API server was asked: (method, path, authorization, body).
type Seen = Arc<Mutex<Vec<(String, String, String, serde_json::Value)>>>;

/// The recorded answer for each token the tests send.
fn fixture(token: &str) -> (StatusCode, &'static str) {
    match token {
        "orders-pod-token" => (
            StatusCode::CREATED,
            include_str!("../fixtures/tokenreview/orders.json"),
        ),
        "expired-token" => (
            StatusCode::CREATED,
            include_str!("../fixtures/tokenreview/expired.json"),
        ),
        "apiserver-audience-token" => (
            StatusCode::CREATED,
            include_str!("../fixtures/tokenreview/wrong-audience.json"),
        ),
        "control-plane-pod-token" => (
            StatusCode::CREATED,
            include_str!("../fixtures/tokenreview/weft-system.json"),
        ),
        "no-audiences-token" => (
            StatusCode::CREATED,
            include_str!("../fixtures/tokenreview/no-audiences.json"),
        ),
        "alice-token" => (
            StatusCode::CREATED,
            include_str!("../fixtures/tokenreview/user.json"),
        ),
        _ => (
            StatusCode::FORBIDDEN,
            include_str!("../fixtures/tokenreview/forbidden.json"),
        ),
    }
}

async fn api_server() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let log = log.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let auth = parts
                        .headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    log.lock().unwrap().push((
                        parts.method.to_string(),
                        parts.uri.path().to_string(),
                        auth,
                        doc.clone(),
                    ));
                    let (status, json) = fixture(doc["spec"]["token"].as_str().unwrap_or(""));
                    let mut rsp = Response::new(Full::new(Bytes::from(json)));
                    *rsp.status_mut() = status;
                    rsp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(rsp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    (addr, seen)
}

/// Points the control plane at the stand-in, authenticating with its own service-account token.
fn write_kubeconfig(mesh: &Mesh, api: SocketAddr) {
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://{api}\"}}\nusers:\n- name: weft-control-plane\n  user: {{token: control-plane-sa-token}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: weft-control-plane}}\ncurrent-context: test\n"
    );
    std::fs::write(mesh.dir.0.join("kubeconfig"), kubeconfig).unwrap();
}

async fn certify(mesh: &Mesh, san: &str, token: &str) -> Result<String, tonic::Status> {
    mesh.certify(csr(san), Proof::ServiceAccountToken(token.to_string()))
        .await
        .map(|r| r.certificate_chain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_is_reviewed_and_entitles_its_own_identity_only() {
    let mesh = Mesh::builder().start().await;
    let (api, seen) = api_server().await;
    write_kubeconfig(&mesh, api);

    let chain = certify(&mesh, ORDERS, "orders-pod-token").await.unwrap();
    assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"));
    {
        let seen = seen.lock().unwrap();
        let (method, path, auth, body) = &seen[0];
        assert_eq!(method, "POST");
        assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(auth, "Bearer control-plane-sa-token");
        assert_eq!(body["kind"], "TokenReview");
        assert_eq!(body["spec"]["token"], "orders-pod-token");
        assert_eq!(body["spec"]["audiences"], serde_json::json!(["weft"]));
    }

    // The same token asking for another identity.
    let err = certify(
        &mesh,
        "spiffe://weft.local/ns/shop/sa/payments",
        "orders-pod-token",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("the proof of identity is for spiffe://weft.local/ns/shop/sa/orders"),
        "{}",
        err.message()
    );

    for (token, says) in [
        ("expired-token", "service account token has expired"),
        (
            "apiserver-audience-token",
            "is invalid for the target audiences [\"weft\"]",
        ),
        // Authenticated, but the answer does not say the token is for weft.
        ("no-audiences-token", "not \"weft\""),
        (
            "alice-token",
            "\"alice@example.com\" is not a service account",
        ),
    ] {
        let err = certify(&mesh, ORDERS, token).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token}: {err:?}");
        assert!(err.message().contains(says), "{token}: {}", err.message());
    }

    // A pod of the control plane's own namespace is authenticated, but no workload may have an
    // identity there: it would be the control plane's, or an admin's.
    for sa in ["weft-control-plane", "ops"] {
        let san = format!("spiffe://weft.local/ns/weft-system/sa/{sa}");
        let err = certify(&mesh, &san, "control-plane-pod-token")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("reserved"), "{}", err.message());
    }

    // The control plane may not create TokenReviews (RBAC): the proxy hears why, and retries.
    let err = certify(&mesh, ORDERS, "any-other-token").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message()
            .contains("cannot create resource \\\"tokenreviews\\\"")
            || err
                .message()
                .contains("cannot create resource \"tokenreviews\""),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_in_a_pod_gets_its_certificate_with_its_token_file() {
    let app = weft_tests::apps::HttpApp::start("orders").await;
    let mut server = Sidecar::builder().bind().await;
    let mesh = Mesh::builder()
        .config(service_yaml("shop", "orders", "HTTP", &[server.inbound]))
        .start()
        .await;
    let (api, _) = api_server().await;
    write_kubeconfig(&mesh, api);
    // Where the kubelet would mount the projected token.
    let token_file = mesh.dir.0.join("token");
    std::fs::write(&token_file, "orders-pod-token\n").unwrap();
    let access = Access {
        token_file: Some(token_file),
        ..mesh.access_with_token("")
    };
    server.start_with(&access, "shop", "orders", app.addr);
    server.ready().await;
    let identity = get(&http1_client(), server.admin, "localhost", "/identity")
        .await
        .unwrap();
    assert!(identity.body.contains(ORDERS), "{}", identity.body);
    // And it serves: a caller reaches the app through it over mTLS.
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let r = get(&http1_client(), client.upstreams[0], "orders", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}
