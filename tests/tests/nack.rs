//! A proxy checks every update: one it cannot accept is NACKed with the reason, and the
//! last-good config stays in force. The control plane here is scripted, to send what the real
//! one never would.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::discovery::{self as pb, discovery_server};
use weft_tests::apps::HttpApp;
use weft_tests::*;

/// Sends `updates` one at a time, each after the previous one's reply and a permit from `gate`,
/// and reports every reply.
struct Scripted {
    updates: Vec<pb::ProxyConfig>,
    replies: mpsc::UnboundedSender<pb::DiscoveryRequest>,
    gate: Arc<Semaphore>,
}

#[tonic::async_trait]
impl discovery_server::Discovery for Scripted {
    type StreamStream = ReceiverStream<Result<pb::DiscoveryResponse, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let (updates, replies, gate) = (
            self.updates.clone(),
            self.replies.clone(),
            self.gate.clone(),
        );
        tokio::spawn(async move {
            let _hello = inbound.message().await;
            for (i, config) in updates.into_iter().enumerate() {
                let Ok(permit) = gate.acquire().await else {
                    return;
                };
                permit.forget();
                let version = (i + 1).to_string();
                let rsp = pb::DiscoveryResponse {
                    version: version.clone(),
                    nonce: version,
                    config: Some(config),
                };
                if tx.send(Ok(rsp)).await.is_err() {
                    return;
                }
                // The next message with a nonce is this update's ACK or NACK.
                loop {
                    match inbound.message().await {
                        Ok(Some(m)) if !m.response_nonce.is_empty() => {
                            let _ = replies.send(m);
                            break;
                        }
                        Ok(Some(_)) => continue,
                        _ => return,
                    }
                }
            }
            std::future::pending::<()>().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn orders(endpoint: &str) -> pb::ProxyConfig {
    pb::ProxyConfig {
        mesh: Some(mesh_settings()),
        services: vec![pb::Service {
            name: "orders".into(),
            namespace: "shop".into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: pb::Protocol::Http.into(),
                ..Default::default()
            }],
            backends: vec![pb::Backend {
                name: "orders".into(),
                namespace: "shop".into(),
                identity: "spiffe://weft.local/ns/shop/sa/orders".into(),
                endpoints: vec![pb::Endpoint {
                    address: endpoint.into(),
                    labels: Default::default(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn mesh_settings() -> pb::MeshSettings {
    pb::MeshSettings {
        trust_domain: "weft.local".into(),
        ..Default::default()
    }
}

/// A scripted discovery service beside the real identity service of `mesh` (its CA and join
/// tokens), over TLS as the real control plane serves: proxies get real certificates.
async fn scripted(
    mesh: &Mesh,
    updates: Vec<pb::ProxyConfig>,
    gate: Arc<Semaphore>,
) -> (SocketAddr, mpsc::UnboundedReceiver<pb::DiscoveryRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = discovery_server::DiscoveryServer::new(Scripted {
        updates,
        replies: tx,
        gate,
    });
    let running = mesh.running();
    let identity = weft::identity::IdentityService {
        ca: running.ca.clone(),
        tokens: running.tokens.clone(),
        state: running.state.clone(),
        kubernetes: std::sync::Arc::new(weft::kubernetes::TokenReviewer::new(None)),
    }
    .into_server();
    let serving = weft::grpc_tls::ServingIdentity::new(&running.ca, "weft.local").unwrap();
    let incoming = weft::grpc_tls::incoming(
        listener,
        serving.grpc_acceptor(running.ca.clone()),
        tokio_util::sync::CancellationToken::new(),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .add_service(identity)
            .serve_with_incoming(incoming),
    );
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_update_is_nacked_and_the_last_good_config_keeps_serving() {
    init_logging();
    let app = HttpApp::start("orders").await;
    let mut server = Sidecar::builder().bind().await;
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let good = orders(&server.inbound.to_string());
    // Updates 1 and 2 go at once; 3 waits until the test has checked the NACK.
    let gate = Arc::new(Semaphore::new(2));
    let mesh = Mesh::builder().start().await;
    let (cp, mut replies) = scripted(
        &mesh,
        vec![good.clone(), orders("not-an-address"), good],
        gate.clone(),
    )
    .await;
    let (server_cp, _server_replies) = scripted(
        &mesh,
        vec![pb::ProxyConfig {
            mesh: Some(mesh_settings()),
            ..Default::default()
        }],
        Arc::new(Semaphore::new(1)),
    )
    .await;
    let via = |cp: SocketAddr, sa: &str| Access {
        url: format!("https://{cp}"),
        ..mesh.access("shop", sa)
    };
    server.start_with(&via(server_cp, "orders"), "shop", "orders", app.addr);
    client.start_with(
        &via(cp, "frontend"),
        "shop",
        "frontend",
        NO_APP.parse().unwrap(),
    );
    server.ready().await;

    let ack = tokio::time::timeout(Duration::from_secs(10), replies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ack.version.as_str(), ack.error_detail.as_str()),
        ("1", ""),
        "update 1 is ACKed"
    );

    let nack = tokio::time::timeout(Duration::from_secs(10), replies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nack.version, "2");
    assert!(
        nack.error_detail.contains(
            "service orders.shop: backend orders.shop: endpoint address \"not-an-address\""
        ),
        "{}",
        nack.error_detail
    );
    assert_eq!(client.version(), "1", "the last-good config stays in force");
    client.ready().await;
    let r = get(&http1_client(), client.upstreams[0], "orders", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "and serves: {r:?}");
    let m = client.running().metrics.encode();
    assert!(m.contains(r#"weft_proxy_config_updates_total{outcome="rejected"} 1"#));
    assert!(
        metric(
            &m,
            "weft_proxy_config_last_rejection_timestamp_seconds",
            &[]
        ) > 1.7e9,
        "the last NACK's time: {m}"
    );

    gate.add_permits(1);
    let ack = tokio::time::timeout(Duration::from_secs(10), replies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ack.version.as_str(), ack.error_detail.as_str()),
        ("3", ""),
        "a good update after a bad one is taken"
    );
}

/// The real control plane, facing a proxy that rejects everything while the config changes
/// fast: it backs off instead of pushing every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_backs_off_a_proxy_that_keeps_nacking() {
    use weft_proto::discovery::discovery_client::DiscoveryClient;

    let svc = |n: u32| {
        service_yaml(
            "shop",
            "orders",
            "HTTP",
            &[format!("127.0.0.1:{}", 1000 + n).parse().unwrap()],
        )
    };
    let mesh = Mesh::builder().config(svc(0)).start().await;
    let mut client = DiscoveryClient::new(mesh.channel_as("shop", "rejecter").0);
    let (tx, rx) = mpsc::channel(16);
    let node = pb::Node {
        id: "rejecter".into(),
        namespace: "shop".into(),
        service_account: "rejecter".into(),
        service: "rejecter".into(),
        inbound_addr: "127.0.0.1:1".into(),
        ..Default::default()
    };
    tx.send(pb::DiscoveryRequest {
        node: Some(node),
        subscribe: vec!["orders.shop".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    let first = responses.message().await.unwrap().unwrap();
    let nack = |r: &pb::DiscoveryResponse| pb::DiscoveryRequest {
        version: r.version.clone(),
        response_nonce: r.nonce.clone(),
        error_detail: "rejected by test".into(),
        ..Default::default()
    };
    tx.send(nack(&first)).await.unwrap();

    // 20 changes over about a second, each NACKed as soon as it arrives.
    let (received_tx, mut received_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(Some(r)) = responses.message().await {
            let _ = tx.send(nack(&r)).await;
            let _ = received_tx.send(r.version);
        }
    });
    let started = std::time::Instant::now();
    for n in 1..=20 {
        mesh.write_config(&svc(n));
        let want = u64::from(n) + 1;
        eventually("the change to load", Duration::from_secs(5), || async {
            (mesh.generation() >= want).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let mut pushed = Vec::new();
    while let Ok(v) = received_rx.try_recv() {
        pushed.push(v);
    }
    // Backoff 500 ms, then 1 s, 2 s...: in about a second, at most a few pushes, not 20.
    assert!(
        pushed.len() <= 3,
        "{} pushes in {elapsed:?}: {pushed:?}",
        pushed.len()
    );
    let proxies = mesh.proxies();
    assert_eq!(proxies[0].last_nack.as_deref(), Some("rejected by test"));
    assert!(mesh
        .state()
        .metrics
        .encode()
        .contains("weft_config_nacks_total"));
    reader.abort();
}
