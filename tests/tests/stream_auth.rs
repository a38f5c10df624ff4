//! The discovery stream is authenticated by the proxy's certificate: without one it is refused;
//! the namespace, service account and certificate a stream is shown with come from that
//! certificate, whatever the proxy claims; a claimed Service must be one the certificate's
//! service account runs; fields and streams per certificate are capped.

#![allow(clippy::unwrap_used)]

use rustls::pki_types::pem::PemObject;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use weft_proto::discovery::{self as pb, discovery_client::DiscoveryClient};
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
"#;

async fn mesh() -> Mesh {
    let orders = service_yaml("shop", "orders", "HTTP", &["127.0.0.1:1".parse().unwrap()]);
    Mesh::builder()
        .config(format!("{orders}{POLICY}"))
        .start()
        .await
}

fn node(id: &str, namespace: &str, service_account: &str, service: &str) -> pb::Node {
    pb::Node {
        id: id.into(),
        namespace: namespace.into(),
        service_account: service_account.into(),
        service: service.into(),
        inbound_addr: "127.0.0.1:15006".into(),
        proxy_version: "test".into(),
    }
}

/// An open stream: the sender of its requests and its responses.
struct Open {
    tx: mpsc::Sender<pb::DiscoveryRequest>,
    responses: Streaming<pb::DiscoveryResponse>,
    first: pb::DiscoveryResponse,
}

/// Opens a stream with `hello` and reads the first response, or the status it was refused with.
async fn open(channel: Channel, hello: pb::DiscoveryRequest) -> Result<Open, Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(hello).await.unwrap();
    let mut responses = DiscoveryClient::new(channel)
        .stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("an answer within 10s")?
        .ok_or_else(|| Status::unknown("stream ended without a response"))?;
    Ok(Open {
        tx,
        responses,
        first,
    })
}

fn hello(node: pb::Node) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest {
        node: Some(node),
        subscribe: vec!["orders.shop".into()],
        ..Default::default()
    }
}

fn refused(r: Result<Open, Status>) -> Status {
    match r {
        Ok(o) => panic!("the stream was served: {:?}", o.first.config),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_client_certificate_is_refused_and_never_listed() {
    let mesh = mesh().await;
    let status = refused(
        open(
            mesh.channel(),
            hello(node("fake", "shop", "orders", "orders")),
        )
        .await,
    );
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("certificate") && status.message().contains("Certify"),
        "says what to present: {status:?}"
    );
    let (code, proxies) = api_call(mesh.api_addr, "GET", "/api/v1/proxies", "").await;
    assert_eq!(code, 200);
    assert!(
        !proxies.to_string().contains("fake"),
        "a stream without a certificate is not a proxy: {proxies}"
    );
    assert!(mesh.proxies().is_empty());

    // Certify still works on the same listener without a client certificate.
    let (_, token) = create_token(&mesh, "shop/orders", "1h").await;
    let (_, csr) = weft_runtime::tls::key_and_csr("spiffe://weft.local/ns/shop/sa/orders").unwrap();
    let issued = weft_proto::identity::identity_client::IdentityClient::new(mesh.channel())
        .certify(weft_proto::identity::CertifyRequest {
            csr: csr.der().to_vec(),
            proof: Some(weft_proto::identity::certify_request::Proof::JoinToken(
                token,
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!issued.serial.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_takes_its_identity_from_the_certificate_not_the_claim() {
    let mesh = mesh().await;
    let (as_attacker, _) = mesh.channel_as("shop", "attacker");

    // Claiming another workload's namespace or service account: refused.
    for (ns, sa) in [("shop", "orders"), ("bank", "attacker")] {
        let status =
            refused(open(as_attacker.clone(), hello(node("liar", ns, sa, "attacker"))).await);
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{ns}/{sa}: {status:?}"
        );
        assert!(
            status
                .message()
                .contains("spiffe://weft.local/ns/shop/sa/attacker"),
            "names the certificate's identity: {status:?}"
        );
    }
    // Claiming a Service whose serviceAccount is another: refused, so its inbound
    // authorization policy is not shown to it.
    let status = refused(
        open(
            as_attacker.clone(),
            hello(node("liar", "shop", "attacker", "orders")),
        )
        .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("orders") && status.message().contains("attacker"),
        "names both: {status:?}"
    );

    // Its own service: served, with its own inbound view.
    let own = open(
        as_attacker.clone(),
        hello(node("honest", "shop", "attacker", "attacker")),
    )
    .await
    .unwrap();
    let inbound = own.first.config.unwrap().inbound.unwrap();
    assert_eq!(
        (inbound.service.as_str(), inbound.namespace.as_str()),
        ("attacker", "shop")
    );
    assert!(inbound.authorization.is_empty() && !inbound.authorization_enforced);

    // Empty claims are filled in from the certificate.
    let (as_orders, _) = mesh.channel_as("shop", "orders");
    let served = open(as_orders, hello(node("orders-1", "", "", "")))
        .await
        .unwrap();
    let inbound = served.first.config.unwrap().inbound.unwrap();
    assert_eq!(
        (inbound.service.as_str(), inbound.namespace.as_str()),
        ("orders", "shop")
    );
    assert!(
        inbound.authorization_enforced,
        "the real orders proxy gets its policy"
    );
    let listed = eventually("both proxies listed", Duration::from_secs(5), || async {
        let list = mesh.proxies();
        (list.len() == 2).then_some(list)
    })
    .await;
    let ids: Vec<_> = listed
        .iter()
        .map(|p| (p.id.as_str(), p.identity.as_str()))
        .collect();
    assert!(
        ids.contains(&("orders-1", "spiffe://weft.local/ns/shop/sa/orders")),
        "{ids:?}"
    );
    assert!(
        ids.contains(&("honest", "spiffe://weft.local/ns/shop/sa/attacker")),
        "{ids:?}"
    );
    drop((own.tx, own.responses, served.tx, served.responses));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_shown_is_the_one_presented_not_the_one_claimed() {
    let mesh = mesh().await;
    let (channel, issued) = mesh.channel_as("shop", "orders");
    let forged = pb::Certificate {
        serial: "1".into(),
        expires_at: 4_102_444_800,
        issuer: "00".repeat(32),
        ..Default::default()
    };
    let o = open(
        channel,
        pb::DiscoveryRequest {
            certificate: Some(forged.clone()),
            ..hello(node("orders-1", "shop", "orders", "orders"))
        },
    )
    .await
    .unwrap();
    // The ACK carries the forged report again.
    o.tx.send(pb::DiscoveryRequest {
        version: o.first.version.clone(),
        response_nonce: o.first.nonce.clone(),
        certificate: Some(forged),
        ..Default::default()
    })
    .await
    .unwrap();
    let issuer = mesh.running().ca.signer().issuer_id.clone();
    let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let shown = eventually("the ACK to be seen", Duration::from_secs(5), || async {
        let p = mesh.proxies().into_iter().next()?;
        p.acked_version.is_some().then_some(p)
    })
    .await;
    let c = shown.certificate.expect("a certificate is shown");
    assert_eq!(c.issuer, issuer, "the issuer of the presented certificate");
    assert_eq!(c.serial, issued.serial, "the serial Certify reports");
    assert_eq!(c.expires_at, cert.validity().not_after.timestamp());
    let (_, status) = api_call(mesh.api_addr, "GET", "/api/v1/ca", "").await;
    assert_eq!(status["proxies"]["currentIssuer"], 1, "{status}");
    assert_eq!(status["proxies"]["otherIssuer"], 0, "{status}");

    // A renewed certificate is reported with its chain, verified, and shown; one of another
    // workload is not.
    let chain = |pem: &str| -> Vec<Vec<u8>> {
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect()
    };
    let report = |pem: &str| pb::DiscoveryRequest {
        certificate: Some(pb::Certificate {
            chain: chain(pem),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (_, other) = mesh.channel_as("shop", "other");
    o.tx.send(report(&other.chain_pem)).await.unwrap();
    let (_, renewed) = mesh.channel_as("shop", "orders");
    o.tx.send(report(&renewed.chain_pem)).await.unwrap();
    let shown = eventually(
        "the renewal to be shown",
        Duration::from_secs(5),
        || async {
            let c = mesh.proxies().into_iter().next()?.certificate?;
            (c.serial != issued.serial).then_some(c)
        },
    )
    .await;
    assert_eq!(shown.serial, renewed.serial, "not {}", other.serial);
    drop(o.responses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_refused_and_a_long_nack_is_truncated() {
    let mesh = mesh().await;
    let (channel, _) = mesh.channel_as("shop", "orders");
    let long = "x".repeat(300);
    let cases = [
        ("id", hello(node(&long, "shop", "orders", "orders"))),
        ("proxy_version", {
            let mut n = node("p", "shop", "orders", "orders");
            n.proxy_version = long.clone();
            hello(n)
        }),
        ("inbound_addr", {
            let mut n = node("p", "shop", "orders", "orders");
            n.inbound_addr = long.clone();
            hello(n)
        }),
        ("inbound_addr", {
            let mut n = node("p", "shop", "orders", "orders");
            n.inbound_addr = "not an address".into();
            hello(n)
        }),
        (
            "subscribe",
            pb::DiscoveryRequest {
                subscribe: vec![format!("{long}.shop")],
                ..hello(node("p", "shop", "orders", "orders"))
            },
        ),
        (
            "subscribe",
            pb::DiscoveryRequest {
                subscribe: (0..5000).map(|i| format!("s{i}.shop")).collect(),
                ..hello(node("p", "shop", "orders", "orders"))
            },
        ),
        (
            "certificate",
            pb::DiscoveryRequest {
                certificate: Some(pb::Certificate {
                    serial: long.clone(),
                    ..Default::default()
                }),
                ..hello(node("p", "shop", "orders", "orders"))
            },
        ),
    ];
    for (field, req) in cases {
        let status = refused(open(channel.clone(), req).await);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    // A message over the size limit is refused before it is decoded.
    let huge = pb::DiscoveryRequest {
        error_detail: "x".repeat(weft::discovery::MAX_REQUEST_BYTES + 1),
        ..hello(node("p", "shop", "orders", "orders"))
    };
    let status = refused(open(channel.clone(), huge).await);
    assert!(status.message().contains("too large"), "{status:?}");
    assert!(mesh.proxies().is_empty(), "none was registered");

    // A later request with an oversized field ends the stream.
    let mut o = open(
        channel.clone(),
        hello(node("p", "shop", "orders", "orders")),
    )
    .await
    .unwrap();
    o.tx.send(pb::DiscoveryRequest {
        unsubscribe: vec![long.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), o.responses.message())
        .await
        .unwrap();
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A NACK's reason is kept, cut to 1 KiB.
    let o = open(channel, hello(node("q", "shop", "orders", "orders")))
        .await
        .unwrap();
    o.tx.send(pb::DiscoveryRequest {
        version: o.first.version.clone(),
        response_nonce: o.first.nonce.clone(),
        error_detail: "é".repeat(4000),
        ..Default::default()
    })
    .await
    .unwrap();
    let nack = eventually("the NACK to be seen", Duration::from_secs(5), || async {
        mesh.proxies().into_iter().find_map(|p| p.last_nack)
    })
    .await;
    assert!(nack.len() <= 1024 && nack.len() > 1000, "{}", nack.len());
    drop(o.responses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_certificate_are_capped() {
    let mesh = mesh().await;
    let (channel, _) = mesh.channel_as("shop", "orders");
    let mut open_streams = Vec::new();
    for i in 0..weft::discovery::MAX_STREAMS_PER_CERTIFICATE {
        let o = open(
            channel.clone(),
            hello(node(&format!("p{i}"), "shop", "orders", "orders")),
        )
        .await
        .unwrap_or_else(|s| panic!("stream {i}: {s:?}"));
        open_streams.push(o);
    }
    let status = refused(
        open(
            channel.clone(),
            hello(node("one-too-many", "shop", "orders", "orders")),
        )
        .await,
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Another certificate of the same workload (another replica) is not held up.
    let (replica, _) = mesh.channel_as("shop", "orders");
    open(replica, hello(node("replica", "shop", "orders", "orders")))
        .await
        .unwrap();
    // A stream that ends frees its slot.
    drop(open_streams.pop());
    eventually("a slot to free up", Duration::from_secs(5), || async {
        open(
            channel.clone(),
            hello(node("again", "shop", "orders", "orders")),
        )
        .await
        .ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_service_moves_to_another_service_account() {
    let mut mesh = mesh().await;
    let (channel, _) = mesh.channel_as("shop", "orders");
    let mut o = open(channel, hello(node("orders-1", "shop", "orders", "orders")))
        .await
        .unwrap();
    o.tx.send(pb::DiscoveryRequest {
        version: o.first.version.clone(),
        response_nonce: o.first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let moved = format!(
        "{}  serviceAccount: orders-v2\n{POLICY}",
        service_yaml("shop", "orders", "HTTP", &["127.0.0.1:1".parse().unwrap()])
    );
    mesh.write_config(&moved);
    let end = tokio::time::timeout(Duration::from_secs(10), o.responses.message())
        .await
        .expect("the stream ends within 10s");
    let status = end.expect_err("with a status, not another config");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("orders-v2"), "{status:?}");
    mesh.stop().await;
}

/// A proxy away while MeshConfig changes the trust domain does not take the control plane's
/// identity in the new one on trust: it keeps serving its last config and certificate and says
/// why it cannot connect; a proxy started with the new `trust-domain` is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_away_during_a_trust_domain_change_needs_the_new_trust_domain() {
    let app = weft_tests::apps::HttpApp::start("orders").await;
    let mut server = Sidecar::builder().bind().await;
    let orders = service_yaml("shop", "orders", "HTTP", &[server.inbound]);
    let mut mesh = Mesh::builder().config(&orders).start().await;
    server.start(&mesh, "shop", "orders", app.addr);
    server.ready().await;
    let identity = |s: &Sidecar| s.running().identity.current().unwrap().identity.clone();
    assert_eq!(identity(&server), "spiffe://weft.local/ns/shop/sa/orders");

    mesh.stop().await;
    mesh.write_config(&format!(
        "{orders}---\napiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\nspec: {{trustDomain: other.local}}\n"
    ));
    mesh.restart().await;
    let why = eventually(
        "the proxy to refuse the control plane in another trust domain",
        Duration::from_secs(20),
        || async {
            let e = server.running().discovery.last_error()?;
            e.contains("expected spiffe://weft.local/ns/weft-system/sa/weft-control-plane")
                .then_some(e)
        },
    )
    .await;
    assert!(why.contains("spiffe://other.local/"), "{why}");
    assert!(mesh.proxies().is_empty(), "{:?}", mesh.proxies());
    assert_eq!(identity(&server), "spiffe://weft.local/ns/shop/sa/orders");

    let mut again = Sidecar::builder().trust_domain("other.local").bind().await;
    again.start(&mesh, "shop", "orders", app.addr);
    again.ready().await;
    assert_eq!(identity(&again), "spiffe://other.local/ns/shop/sa/orders");
    let listed = mesh.proxies();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].identity, "spiffe://other.local/ns/shop/sa/orders");
}
