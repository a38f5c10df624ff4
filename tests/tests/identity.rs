//! Identity: join tokens and the `Certify` RPC against a real control plane. The control plane
//! signs only the identity a caller proved it owns.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weft_proto::identity::{
    certify_request::Proof, identity_client::IdentityClient, CertifyRequest,
};
use weft_tests::*;

use x509_parser::prelude::*;

const MESH: &str = "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\nspec: {certificateTTL: 1h}\n";
const ORDERS: &str = "spiffe://weft.local/ns/shop/sa/orders";

async fn certify(
    mesh: &Mesh,
    csr: Vec<u8>,
    token: &str,
) -> Result<weft_proto::identity::CertifyResponse, tonic::Status> {
    mesh.certify(csr, Proof::JoinToken(token.to_string())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_gets_a_certificate_for_its_identity_only() {
    let mesh = Mesh::builder().config(MESH).start().await;
    let (_, token) = create_token(&mesh, "shop/orders", "1h").await;

    let issued = certify(&mesh, csr(ORDERS), &token).await.unwrap();
    let anchors = std::fs::read_to_string(mesh.dir.0.join("data/trust-anchors.pem")).unwrap();
    assert_eq!(issued.trust_anchors, anchors);
    let chain: Vec<_> = Pem::iter_from_buffer(issued.certificate_chain.as_bytes())
        .map(|p| p.unwrap())
        .collect();
    let root = Pem::iter_from_buffer(anchors.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (leaf, intermediate, root) = (
        chain[0].parse_x509().unwrap(),
        chain[1].parse_x509().unwrap(),
        root.parse_x509().unwrap(),
    );
    leaf.verify_signature(Some(intermediate.public_key()))
        .unwrap();
    intermediate
        .verify_signature(Some(root.public_key()))
        .unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, [GeneralName::URI(ORDERS)]);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(
        lifetime,
        3600 + 60,
        "MeshConfig certificateTTL, plus a minute of backdating"
    );
    assert_eq!(issued.expires_at, leaf.validity().not_after.timestamp());

    // A CSR for another identity is refused, with both identities named.
    let err = certify(
        &mesh,
        csr("spiffe://weft.local/ns/shop/sa/payments"),
        &token,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("payments") && err.message().contains(ORDERS),
        "{}",
        err.message()
    );
    // So is a CSR that is not one.
    let err = certify(&mesh, b"garbage".to_vec(), &token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_revoked_expired_and_missing_proofs_are_refused() {
    let mesh = Mesh::builder().config(MESH).start().await;
    let err = certify(&mesh, csr(ORDERS), "weft.0011223344556677.deadbeef")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("unknown join token"),
        "{}",
        err.message()
    );

    let (id, token) = create_token(&mesh, "shop/orders", "1h").await;
    let path = format!("/api/v1/tokens/{id}");
    assert_eq!(api_call(mesh.api_addr, "DELETE", &path, "").await.0, 200);
    let err = certify(&mesh, csr(ORDERS), &token).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());

    let (_, short) = create_token(&mesh, "shop/orders", "1s").await;
    let err = eventually("the token to expire", Duration::from_secs(5), || async {
        certify(&mesh, csr(ORDERS), &short).await.err()
    })
    .await;
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("expired")
            && err.message().contains("weft token create shop/orders"),
        "{}",
        err.message()
    );

    let mut client = IdentityClient::new(mesh.channel());
    let err = client
        .certify(CertifyRequest {
            csr: csr(ORDERS),
            proof: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_and_revokes_tokens() {
    let mesh = Mesh::builder().config(MESH).start().await;
    let server = format!("http://{}", mesh.api_addr);
    let weft = |args: &[&str]| {
        let out = std::process::Command::new(binary("weft"))
            .args(args)
            .args(["--server", &server])
            .env("WEFT_DATA_DIR", mesh.data_dir())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, token, err) = weft(&["token", "create", "shop/orders", "--ttl", "10m"]);
    assert_eq!(code, Some(0), "{err}");
    let token = token.trim().to_string();
    assert!(token.starts_with("weft."), "{token}");
    assert!(certify(&mesh, csr(ORDERS), &token).await.is_ok());

    let id = token.split('.').nth(1).unwrap();
    let (code, list, _) = weft(&["token", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        list.contains(id)
            && list.contains("shop/orders")
            && !list.contains(token.rsplit('.').next().unwrap()),
        "{list}"
    );
    // Time left, not epoch seconds: a 10m token shows 10m0s or a few seconds less.
    assert!(
        list.lines()
            .any(|l| l.contains("shop/orders") && (l.contains(" 10m0s ") || l.contains(" 9m5"))),
        "{list}"
    );
    // The API writes its times in RFC 3339, ten minutes apart.
    let (_, answer) = api_call(mesh.api_addr, "GET", "/api/v1/tokens", "").await;
    let at = |field: &str| {
        let text = answer["items"][0][field]
            .as_str()
            .unwrap_or_default()
            .to_string();
        weft_runtime::timestamp::parse_rfc3339(&text).unwrap_or_else(|| panic!("{field}: {answer}"))
    };
    assert_eq!(at("expiresAt") - at("createdAt"), 600, "{answer}");

    let (code, _, err) = weft(&["token", "revoke", id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(certify(&mesh, csr(ORDERS), &token).await.is_err());

    let (code, _, err) = weft(&["token", "create", "shop"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("expected NAMESPACE/SERVICEACCOUNT"), "{err}");

    let out = std::process::Command::new(binary("weft"))
        .args(["token", "list", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("is `weft serve` running?"), "{err}");
}

fn short_ttl(ttl: &str) -> String {
    format!("apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\nspec: {{certificateTTL: {ttl}}}\n")
}

async fn admin_json(addr: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    let r = get(&http1_client(), addr, "localhost", path).await.ok()?;
    (r.status == 200).then(|| serde_json::from_str(&r.body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_its_certificate_and_renews_it() {
    let mesh = Mesh::builder().config(short_ttl("2s")).start().await;
    let (_, token) = create_token(&mesh, "shop/orders", "1h").await;
    let mut proxy = Sidecar::builder().bind().await;
    proxy.start_with(
        &mesh.access_with_token(&token),
        "shop",
        "orders",
        NO_APP.parse().unwrap(),
    );

    let first = eventually("the first certificate", Duration::from_secs(10), || {
        admin_json(proxy.admin, "/identity")
    })
    .await;
    assert_eq!(first["identity"], ORDERS);
    // Its expiry in RFC 3339, within the 2 s lifetime (give or take the clock's second).
    let not_after = first["notAfter"].as_str().expect("notAfter is a string");
    let not_after = weft_runtime::timestamp::parse_rfc3339(not_after).expect("RFC 3339");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - 2..=now + 4).contains(&not_after),
        "{not_after} vs now {now}"
    );
    // The config stream opens with the certificate, so readiness follows it.
    eventually("readiness", Duration::from_secs(10), || async {
        let r = get(&http1_client(), proxy.admin, "localhost", "/ready")
            .await
            .ok()?;
        (r.status == 200).then_some(())
    })
    .await;

    // Renewal at about 70% of a 2 s lifetime: three renewals, each a new serial, within seconds.
    let mut serials = vec![first["serial"].as_str().unwrap().to_string()];
    while serials.len() < 4 {
        let next = eventually("a renewal", Duration::from_secs(5), || async {
            let doc = admin_json(proxy.admin, "/identity").await?;
            let serial = doc["serial"].as_str()?.to_string();
            (!serials.contains(&serial)).then_some(serial)
        })
        .await;
        serials.push(next);
    }
    let metrics = proxy.running().metrics.encode();
    assert!(
        metrics.contains("weft_proxy_identity_certificate_expiry_timestamp_seconds"),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"outcome="failed""#),
        "no request failed: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_certificate_and_survives_the_control_plane() {
    let mut mesh = Mesh::builder().config(short_ttl("1h")).start().await;
    // A bad token: the certificate never comes, so neither does config (the stream needs the
    // certificate), and the proxy is not ready.
    let mut refused = Sidecar::builder().bind().await;
    refused.start_with(
        &mesh.access_with_token("weft.00.00"),
        "shop",
        "orders",
        NO_APP.parse().unwrap(),
    );
    eventually(
        "a refused certificate request",
        Duration::from_secs(10),
        || async {
            let m = refused.running().metrics.encode();
            m.contains(r#"weft_proxy_identity_certificate_requests_total{outcome="failed"}"#)
                .then_some(())
        },
    )
    .await;
    let ready = get(&http1_client(), refused.admin, "localhost", "/ready")
        .await
        .unwrap();
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.contains("waiting for a certificate")
            && ready.body.contains("unknown join token"),
        "{}",
        ready.body
    );
    assert!(!refused.running().discovery.has_config());
    assert!(mesh.proxies().is_empty(), "no stream without a certificate");

    // A good one, then the control plane goes away: the certificate stays, and so does readiness.
    let (_, token) = create_token(&mesh, "shop/orders", "1h").await;
    let mut proxy = Sidecar::builder().bind().await;
    proxy.start_with(
        &mesh.access_with_token(&token),
        "shop",
        "orders",
        NO_APP.parse().unwrap(),
    );
    let before = eventually("a certificate", Duration::from_secs(10), || {
        admin_json(proxy.admin, "/identity")
    })
    .await;
    mesh.stop().await;
    for _ in 0..20 {
        assert_eq!(
            get(&http1_client(), proxy.admin, "localhost", "/ready")
                .await
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            admin_json(proxy.admin, "/identity").await.unwrap()["serial"],
            before["serial"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_verifies_the_control_plane_against_its_trust_anchors() {
    let mesh = Mesh::builder().config(MESH).start().await;
    let other = Mesh::builder().config(MESH).start().await;
    // Anchors of another mesh: the control plane's certificate does not verify, so the proxy
    // gets neither config nor certificate, and says why.
    let mut proxy = Sidecar::builder().bind().await;
    let access = Access {
        anchors: other.anchors(),
        ..mesh.access("shop", "orders")
    };
    proxy.start_with(&access, "shop", "orders", NO_APP.parse().unwrap());
    let body = eventually(
        "the proxy to report the failed handshake",
        Duration::from_secs(10),
        || async {
            let r = get(&http1_client(), proxy.admin, "localhost", "/ready")
                .await
                .ok()?;
            assert_eq!(r.status, 503);
            r.body.contains("last attempt").then_some(r.body)
        },
    )
    .await;
    assert!(
        body.contains("waiting for a certificate") && body.contains("UnknownIssuer"),
        "{body}"
    );
    assert!(mesh.proxies().is_empty(), "it never got a stream open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_workload_gets_an_identity_in_the_control_planes_namespace() {
    let mesh = Mesh::builder().config(MESH).start().await;
    // The API refuses to make such a token...
    let body = serde_json::json!({ "workload": "weft-system/weft-control-plane" }).to_string();
    let (status, answer) = api_call(mesh.api_addr, "POST", "/api/v1/tokens", &body).await;
    assert_eq!(status, 422, "{answer}");
    // ...also through the CLI...
    let server = format!("http://{}", mesh.api_addr);
    let (code, _, err) = run_weft(
        None,
        &["token", "create", "weft-system/ops", "--server", &server],
        "",
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("reserved for the control plane"), "{err}");
    assert!(mesh.running().tokens.list().is_empty());
    // ...and the CA refuses to sign for one even with a token that names it.
    let (_, token) = mesh
        .running()
        .tokens
        .create(
            "weft-system/weft-control-plane".parse().unwrap(),
            Duration::from_secs(60),
        )
        .unwrap();
    let err = certify(
        &mesh,
        csr("spiffe://weft.local/ns/weft-system/sa/weft-control-plane"),
        &token,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("reserved"), "{}", err.message());
}
