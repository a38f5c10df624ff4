//! The discovery stream below end to end: the real `DiscoveryService` served by tonic over
//! in-memory streams, each connection carrying the [`PeerInfo`] the TLS listener would put on
//! its requests (a chain issued by a real `Ca`, or none), with the real `State` behind it. No
//! sockets and no TLS handshake; authentication, node claims, versions, ACK/NACK and their
//! timing, the caps and `Proxies` are the production code's.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tonic::transport::{Channel, Endpoint, Server};
use weft_proto::discovery::discovery_client::DiscoveryClient;

use super::*;
use crate::ca::Ca;
use crate::grpc_tls::PeerInfo;
use crate::mesh::Trust;
use crate::metrics::Metrics;

const TRUST_DOMAIN: &str = "test.local";
const ORDERS: &str = "spiffe://test.local/ns/shop/sa/orders";
const REMOTE: &str = "10.0.0.7:40000";
/// Longer than any wait in these tests but the ACK deadline's own.
const PATIENCE: Duration = Duration::from_secs(60);

/// Service `orders.shop`, run as service account `orders`, with these endpoints.
fn orders(endpoints: &[&str]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: orders, namespace: shop}}
spec:
  ports: [{{name: http, port: 8080, protocol: HTTP}}]
  serviceAccount: orders
  endpoints: [{}]
",
        endpoints.join(", ")
    )
}

/// A fresh folder, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "weft-discovery-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(dir.join("config")).unwrap();
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A control plane's discovery side: a CA, the config in force (`orders.shop` with one
/// endpoint, generation 2), and the `DiscoveryService` serving every connection sent to it.
struct ControlPlane {
    ca: Ca,
    state: Arc<State>,
    proxies: Arc<Proxies>,
    connections: mpsc::Sender<std::io::Result<Conn>>,
    dir: Dir,
    _shutdown: tokio_util::sync::DropGuard,
}

impl ControlPlane {
    fn start(ack_timeout: Duration) -> Self {
        let dir = Dir::new();
        let ca = Ca::load_or_create(&dir.0, TRUST_DOMAIN).unwrap();
        let state = State::open(
            vec![],
            None,
            TRUST_DOMAIN.into(),
            Trust::of(&ca),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let proxies = Arc::new(Proxies::default());
        let shutdown = CancellationToken::new();
        let cp = Self {
            ca,
            state: Arc::new(state),
            proxies: proxies.clone(),
            connections: mpsc::channel(16).0,
            dir,
            _shutdown: shutdown.clone().drop_guard(),
        };
        cp.configure(&["127.0.0.1:15006"]);
        assert_eq!(cp.state.mesh().generation, 2);
        let service =
            DiscoveryService::new(cp.state.clone(), proxies, shutdown.clone(), ack_timeout);
        let (connections, incoming) = mpsc::channel(16);
        tokio::spawn(
            Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
                    shutdown.cancelled().await
                }),
        );
        Self { connections, ..cp }
    }

    /// Replaces the config files with `orders.shop` at these endpoints, and reloads them.
    fn configure(&self, endpoints: &[&str]) {
        self.apply(&orders(endpoints));
    }

    /// Replaces the config files with `yaml`, and reloads them.
    fn apply(&self, yaml: &str) {
        let folder = self.dir.0.join("config");
        std::fs::write(folder.join("services.yaml"), yaml).unwrap();
        self.state.reload(&[folder]);
        assert!(
            self.state.last_error().is_empty(),
            "{:?}",
            self.state.last_error()
        );
    }

    /// A workload certificate for `identity` from the CA (leaf, then issuer) and its serial.
    fn certificate(&self, identity: &str) -> (Arc<Vec<CertificateDer<'static>>>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap();
        let issued = self
            .ca
            .sign(csr.der(), identity, Duration::from_secs(3600))
            .unwrap();
        let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(chain.len(), 2, "leaf and issuer");
        (Arc::new(chain), issued.serial)
    }

    /// A client whose connections present `certificates` (none: connected without one).
    async fn client(
        &self,
        certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> DiscoveryClient<Channel> {
        let connector = Connector {
            connections: self.connections.clone(),
            peer: PeerInfo {
                remote: Some(REMOTE.parse().unwrap()),
                certificates,
            },
        };
        let channel = Endpoint::from_static("http://weft-control-plane.test")
            .connect_with_connector(connector)
            .await
            .unwrap();
        DiscoveryClient::new(channel)
    }

    fn only_proxy(&self) -> ProxyStatus {
        let list = self.proxies.list();
        assert_eq!(list.len(), 1, "{list:?}");
        list.into_iter().next().unwrap()
    }
}

/// One in-memory connection as the server sees it, with what the TLS listener knew of it.
struct Conn {
    io: DuplexStream,
    peer: PeerInfo,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The client's connector: each connection is a fresh duplex pipe whose other end is handed
/// to the server with `peer`.
#[derive(Clone)]
struct Connector {
    connections: mpsc::Sender<std::io::Result<Conn>>,
    peer: PeerInfo,
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<DuplexStream>>> + Send>>;

impl tonic::codegen::Service<http::Uri> for Connector {
    type Response = TokioIo<DuplexStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Connecting {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let connections = self.connections.clone();
        let peer = self.peer.clone();
        Box::pin(async move {
            connections
                .send(Ok(Conn { io: server, peer }))
                .await
                .map_err(|_| std::io::Error::other("the test's control plane has stopped"))?;
            Ok(TokioIo::new(client))
        })
    }
}

/// A proxy's first request: node `id` with no claims beyond the certificate's, subscribed to
/// `orders.shop`.
fn hello(id: &str) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest {
        node: Some(pb::Node {
            id: id.into(),
            inbound_addr: "127.0.0.1:15006".into(),
            proxy_version: "test".into(),
            ..Default::default()
        }),
        subscribe: vec!["orders.shop".into()],
        ..Default::default()
    }
}

/// One open stream, from the proxy's side.
struct Stream {
    requests: mpsc::Sender<pb::DiscoveryRequest>,
    responses: Streaming<pb::DiscoveryResponse>,
}

/// Opens a stream that sends `first` (the server answers only once it has read it).
async fn open(
    client: &mut DiscoveryClient<Channel>,
    first: pb::DiscoveryRequest,
) -> Result<Stream, Status> {
    let (requests, rx) = mpsc::channel(8);
    requests.send(first).await.unwrap();
    let responses = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Stream {
        requests,
        responses,
    })
}

impl Stream {
    /// The next response, or whatever ended the stream (`Ok(None)`: ended without an error);
    /// `Err(Elapsed)` when nothing came within `wait`.
    async fn within(
        &mut self,
        wait: Duration,
    ) -> Result<Result<Option<pb::DiscoveryResponse>, Status>, tokio::time::error::Elapsed> {
        tokio::time::timeout(wait, self.responses.message()).await
    }

    async fn next(&mut self) -> pb::DiscoveryResponse {
        match self.within(PATIENCE).await {
            Ok(Ok(Some(rsp))) => rsp,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    async fn reply(&self, rsp: &pb::DiscoveryResponse, error_detail: &str) {
        self.requests
            .send(pb::DiscoveryRequest {
                version: rsp.version.clone(),
                response_nonce: rsp.nonce.clone(),
                error_detail: error_detail.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// Waits (in paused time: without taking real time) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every endpoint address of `service` in a snapshot.
fn endpoints(rsp: &pb::DiscoveryResponse, service: &str) -> Vec<String> {
    let config = rsp.config.as_ref().expect("a snapshot carries config");
    let found = config
        .services
        .iter()
        .find(|s| format!("{}.{}", s.name, s.namespace) == service)
        .unwrap_or_else(|| panic!("{service} not in {:?}", config.services));
    let mut addresses: Vec<String> = found
        .backends
        .iter()
        .flat_map(|b| b.endpoints.iter().map(|e| e.address.clone()))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_a_client_certificate_is_unauthenticated() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let mut client = cp.client(None).await;
    let refused = open(&mut client, hello("orders-1"))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("Identity/Certify"),
        "says how to get one: {refused:?}"
    );
    assert!(cp.proxies.list().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_node_claiming_another_identity_than_its_certificate_is_refused_naming_both() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    for (field, claim) in [("service_account", "payments"), ("namespace", "billing")] {
        let mut first = hello("orders-1");
        let node = first.node.as_mut().unwrap();
        match field {
            "service_account" => node.service_account = claim.into(),
            _ => node.namespace = claim.into(),
        }
        let refused = open(&mut client, first).await.err().expect("refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let msg = refused.message();
        assert!(
            msg.contains(&format!("node.{field}"))
                && msg.contains(&format!("{claim:?}"))
                && msg.contains(ORDERS),
            "names the claim and the certificate's identity: {msg}"
        );
    }
    assert!(cp.proxies.list().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_carries_the_generation_and_its_ack_shows_in_proxies() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, serial) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut stream = open(&mut client, hello("orders-1")).await.unwrap();
    let rsp = stream.next().await;
    assert_eq!(rsp.version, "2", "the generation in force");
    assert!(!rsp.nonce.is_empty());
    assert_eq!(endpoints(&rsp, "orders.shop"), ["127.0.0.1:15006"]);

    // Who the proxy is comes from its certificate; empty claims are filled from it.
    let status = cp.only_proxy();
    assert_eq!(
        (
            status.id.as_str(),
            status.identity.as_str(),
            status.namespace.as_str(),
            status.service.as_str()
        ),
        ("orders-1", ORDERS, "shop", "orders")
    );
    assert_eq!(status.remote, Some(REMOTE.parse().unwrap()));
    assert_eq!(status.certificate.map(|c| c.serial), Some(serial));
    assert_eq!(status.acked_version, None, "not acknowledged yet");

    stream.reply(&rsp, "").await;
    eventually("the ACK is recorded", || {
        cp.only_proxy().acked_version.as_deref() == Some("2")
    })
    .await;
    assert_eq!(cp.only_proxy().last_nack, None);
    assert_eq!(cp.state.metrics.acks.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_nack_is_recorded_and_holds_back_the_next_push() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut stream = open(&mut client, hello("orders-1")).await.unwrap();
    let rsp = stream.next().await;

    let nacked = Instant::now();
    stream.reply(&rsp, "endpoint address \"x\": invalid").await;
    eventually("the NACK is recorded", || {
        cp.only_proxy().last_nack.is_some()
    })
    .await;
    let status = cp.only_proxy();
    assert_eq!(
        status.last_nack.as_deref(),
        Some("endpoint address \"x\": invalid")
    );
    assert_eq!(status.acked_version, None);
    assert_eq!(cp.state.metrics.nacks.get(), 1);

    // A change made at once reaches the proxy only after the first backoff step (500 ms).
    cp.configure(&["127.0.0.1:15006", "127.0.0.2:15006"]);
    let next = stream.next().await;
    let waited = nacked.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(1),
        "sent {waited:?} after the NACK"
    );
    assert_eq!(next.version, "3");
    assert_eq!(endpoints(&next, "orders.shop").len(), 2);

    // Without a change, a NACKed version is never sent again.
    stream.reply(&next, "still invalid").await;
    assert!(
        stream.within(PATIENCE).await.is_err(),
        "nothing is re-sent after a NACK"
    );
    assert_eq!(cp.only_proxy().last_nack.as_deref(), Some("still invalid"));
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_not_acknowledged_in_time_closes_the_stream() {
    let ack_timeout = Duration::from_secs(2);
    let cp = ControlPlane::start(ack_timeout);
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut healthy = open(&mut client, hello("healthy")).await.unwrap();
    let rsp = healthy.next().await;
    healthy.reply(&rsp, "").await;

    let mut stalled = open(&mut client, hello("stalled")).await.unwrap();
    stalled.next().await;
    let sent = Instant::now();
    let end = stalled
        .within(PATIENCE)
        .await
        .expect("the stream is closed");
    let waited = sent.elapsed();
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(
        waited >= ack_timeout && waited < ack_timeout + Duration::from_millis(100),
        "closed {waited:?} after its snapshot"
    );
    assert_eq!(cp.state.metrics.slow_streams_closed.get(), 1);
    eventually("the stalled proxy is no longer listed", || {
        cp.proxies.list().len() == 1
    })
    .await;
    assert_eq!(
        cp.only_proxy().id,
        "healthy",
        "an acknowledged stream stays"
    );
    assert!(healthy.within(Duration::from_secs(1)).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn streams_beyond_the_cap_per_certificate_are_refused() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, serial) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut held = Vec::new();
    for i in 0..MAX_STREAMS_PER_CERTIFICATE {
        let mut stream = open(&mut client, hello(&format!("orders-{i}")))
            .await
            .unwrap();
        let rsp = stream.next().await;
        stream.reply(&rsp, "").await;
        held.push(stream);
    }
    let refused = open(&mut client, hello("one-too-many"))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains(&serial), "{refused:?}");
    assert_eq!(cp.proxies.list().len(), MAX_STREAMS_PER_CERTIFICATE);

    // Another replica of the workload, with a certificate of its own, is not held up.
    let (other, _) = cp.certificate(ORDERS);
    let mut other = cp.client(Some(other)).await;
    open(&mut other, hello("replica"))
        .await
        .unwrap()
        .next()
        .await;

    // A stream that ends gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while open(&mut client, hello("again")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_over_the_size_cap_is_refused() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let with_detail = |bytes: usize| pb::DiscoveryRequest {
        error_detail: "x".repeat(bytes),
        ..hello("orders-1")
    };
    let refused = open(&mut client, with_detail(MAX_REQUEST_BYTES + 1))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(cp.proxies.list().is_empty());
    // The same request under the cap is served.
    let mut stream = open(&mut client, with_detail(MAX_REQUEST_BYTES - 1024))
        .await
        .unwrap();
    stream.next().await;
}

#[tokio::test(start_paused = true)]
async fn a_config_change_pushes_the_newest_version_once_the_last_is_acknowledged() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut stream = open(&mut client, hello("orders-1")).await.unwrap();
    let first = stream.next().await;
    stream.reply(&first, "").await;

    cp.configure(&["127.0.0.1:15006", "127.0.0.2:15006"]);
    let pushed = stream.next().await;
    assert_eq!(pushed.version, "3");
    assert_ne!(pushed.nonce, first.nonce);
    assert_eq!(
        endpoints(&pushed, "orders.shop"),
        ["127.0.0.1:15006", "127.0.0.2:15006"]
    );

    // One response in flight: changes made before its ACK coalesce into the newest.
    cp.configure(&["127.0.0.3:15006"]);
    cp.configure(&["127.0.0.4:15006"]);
    assert!(
        stream.within(Duration::from_secs(1)).await.is_err(),
        "nothing new before the ACK"
    );
    stream.reply(&pushed, "").await;
    let newest = stream.next().await;
    assert_eq!(newest.version, "5");
    assert_eq!(endpoints(&newest, "orders.shop"), ["127.0.0.4:15006"]);
}

#[tokio::test(start_paused = true)]
async fn a_service_that_moves_to_another_service_account_ends_its_streams() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut stream = open(&mut client, hello("orders-1")).await.unwrap();
    let rsp = stream.next().await;
    stream.reply(&rsp, "").await;

    cp.apply(
        &orders(&["127.0.0.1:15006"]).replace("serviceAccount: orders", "serviceAccount: billing"),
    );
    let end = stream.within(PATIENCE).await.expect("the stream ends");
    let refused = end.expect_err("ended with a refusal, not a snapshot");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("\"billing\"") && refused.message().contains(ORDERS),
        "names the Service's service account and the certificate's identity: {refused:?}"
    );
    eventually("the proxy is no longer listed", || {
        cp.proxies.list().is_empty()
    })
    .await;
    // And it is refused when it comes back.
    let again = open(&mut client, hello("orders-1"))
        .await
        .err()
        .expect("refused");
    assert_eq!(again.code(), tonic::Code::PermissionDenied, "{again:?}");
}
