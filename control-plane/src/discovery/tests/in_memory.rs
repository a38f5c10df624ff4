//! An in-memory control plane for these tests: the real `DiscoveryService` and `State`
//! behind tonic over `tokio::io::duplex`, connections that carry a `PeerInfo`, and a proxy-side
//! stream to script.

use super::*;

/// Service `orders.shop`, run as service account `orders`, with these endpoints.
pub(super) fn orders(endpoints: &[&str]) -> String {
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
pub(super) struct Dir(PathBuf);

impl Dir {
    pub(super) fn new() -> Self {
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
pub(super) struct ControlPlane {
    pub(super) ca: Ca,
    pub(super) state: Arc<State>,
    pub(super) proxies: Arc<Proxies>,
    pub(super) connections: mpsc::Sender<std::io::Result<Conn>>,
    pub(super) dir: Dir,
    pub(super) _shutdown: tokio_util::sync::DropGuard,
}

impl ControlPlane {
    pub(super) fn start(ack_timeout: Duration) -> Self {
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
    pub(super) fn configure(&self, endpoints: &[&str]) {
        self.apply(&orders(endpoints));
    }

    /// Replaces the config files with `yaml`, and reloads them.
    pub(super) fn apply(&self, yaml: &str) {
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
    pub(super) fn certificate(
        &self,
        identity: &str,
    ) -> (Arc<Vec<CertificateDer<'static>>>, String) {
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
    pub(super) async fn client(
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

    pub(super) fn only_proxy(&self) -> ProxyStatus {
        let list = self.proxies.list();
        assert_eq!(list.len(), 1, "{list:?}");
        list.into_iter().next().unwrap()
    }
}

/// One in-memory connection as the server sees it, with what the TLS listener knew of it.
pub(super) struct Conn {
    pub(super) io: DuplexStream,
    pub(super) peer: PeerInfo,
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
pub(super) struct Connector {
    pub(super) connections: mpsc::Sender<std::io::Result<Conn>>,
    pub(super) peer: PeerInfo,
}

pub(super) type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<DuplexStream>>> + Send>>;

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
pub(super) fn hello(id: &str) -> pb::DiscoveryRequest {
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
pub(super) struct Stream {
    pub(super) requests: mpsc::Sender<pb::DiscoveryRequest>,
    pub(super) responses: Streaming<pb::DiscoveryResponse>,
}

/// Opens a stream that sends `first` (the server answers only once it has read it).
pub(super) async fn open(
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
    pub(super) async fn within(
        &mut self,
        wait: Duration,
    ) -> Result<Result<Option<pb::DiscoveryResponse>, Status>, tokio::time::error::Elapsed> {
        tokio::time::timeout(wait, self.responses.message()).await
    }

    pub(super) async fn next(&mut self) -> pb::DiscoveryResponse {
        match self.within(PATIENCE).await {
            Ok(Ok(Some(rsp))) => rsp,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    pub(super) async fn reply(&self, rsp: &pb::DiscoveryResponse, error_detail: &str) {
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
pub(super) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every endpoint address of `service` in a snapshot.
pub(super) fn endpoints(rsp: &pb::DiscoveryResponse, service: &str) -> Vec<String> {
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
