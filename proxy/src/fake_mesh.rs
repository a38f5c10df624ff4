//! An in-memory mesh for component tests (docs/testing.md, "Component tests"): peer proxies
//! and an app that are scripted hyper servers over `tokio::io::duplex` streams, behind the
//! transport's connector seam (`transport::Connect` for the outbound, a hyper connector for the
//! inbound), discovery snapshots built from `weft_proto` messages through the proxy's own
//! conversion, and a caller that sends one request through a proxy's service over a duplex.
//! No sockets, no TLS, no control plane. Test code only.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use weft_proto::discovery as pb;

use crate::access_log::AccessLog;
use crate::discovery::Discovery;
use crate::errors::ProxyError;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::transport::{Connect, Connecting};
use weft_runtime::body::{self, Body};
use weft_runtime::trace::Tracer;

/// What one scripted server answers: the request with its whole body, to a response.
type Handler = Arc<
    dyn Fn(Request<Bytes>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A request as a scripted server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub addr: SocketAddr,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How a fake peer takes a connection.
#[derive(Clone)]
enum Peer {
    Serve(Handler),
    /// Refused, as by a closed port.
    Refuse,
    /// Never answers: the connect times out.
    Hang,
}

/// Scripted servers by address, and every request they received, in order.
#[derive(Default)]
pub struct Scripted {
    peers: Mutex<HashMap<SocketAddr, Peer>>,
    seen: Mutex<Vec<Seen>>,
    connects: AtomicUsize,
}

impl Scripted {
    /// `addr` answers each request with what `f` makes of it.
    pub fn serve<F, Fut>(&self, addr: &str, f: F)
    where
        F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(f(req)));
        self.set(addr, Peer::Serve(handler));
    }

    /// `addr` answers every request with `status`.
    pub fn status(&self, addr: &str, status: u16) {
        self.serve(addr, move |_| async move { respond(status) });
    }

    /// A connection to `addr` is refused.
    pub fn refuse(&self, addr: &str) {
        self.set(addr, Peer::Refuse);
    }

    /// A connection to `addr` never completes.
    pub fn hang(&self, addr: &str) {
        self.set(addr, Peer::Hang);
    }

    fn set(&self, addr: &str, peer: Peer) {
        let addr = addr.parse().expect("a test address");
        self.peers.lock().expect("not poisoned").insert(addr, peer);
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// How many requests `addr` received.
    pub fn count(&self, addr: &str) -> usize {
        let addr: SocketAddr = addr.parse().expect("a test address");
        self.seen().iter().filter(|s| s.addr == addr).count()
    }

    /// How many connections were opened (refused and hung ones included).
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::Relaxed)
    }

    /// Opens a connection to `addr`: the client's half of a duplex whose other half the
    /// scripted server serves (HTTP/1.1 or HTTP/2, as the client speaks).
    async fn open(
        self: &Arc<Self>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<DuplexStream, ProxyError> {
        self.connects.fetch_add(1, Ordering::Relaxed);
        let peer = self.peers.lock().expect("not poisoned").get(&addr).cloned();
        let handler = match peer {
            Some(Peer::Serve(h)) => h,
            Some(Peer::Hang) => {
                tokio::time::sleep(timeout).await;
                return Err(ProxyError::ConnectTimeout {
                    addr,
                    after: timeout,
                });
            }
            Some(Peer::Refuse) | None => {
                return Err(ProxyError::ConnectFailed {
                    addr,
                    reason: "Connection refused (os error 111)".into(),
                })
            }
        };
        let (client, server) = tokio::io::duplex(1 << 16);
        let this = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (this, handler) = (this.clone(), handler.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                this.seen.lock().expect("not poisoned").push(Seen {
                    addr,
                    method: parts.method.clone(),
                    uri: parts.uri.clone(),
                    version: parts.version,
                    headers: parts.headers.clone(),
                    body: body.clone(),
                });
                Ok::<_, std::convert::Infallible>(handler(Request::from_parts(parts, body)).await)
            }
        });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        Ok(client)
    }
}

/// Peer proxies for the outbound: each connection is a duplex to a scripted server, through
/// the same HTTP/2 handshake as a real one.
#[derive(Clone, Default)]
pub struct FakePeers(pub Arc<Scripted>);

impl Connect for FakePeers {
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        _identity: &'a str,
        timeout: Duration,
    ) -> Connecting<'a, Result<http2::SendRequest<Body>, ProxyError>> {
        Box::pin(async move {
            let io = self.0.open(addr, timeout).await?;
            crate::transport::handshake(io, addr).await
        })
    }
}

/// The app behind an inbound: a scripted server at `app-addr`, as a hyper connector.
#[derive(Clone)]
pub struct FakeApp {
    pub scripted: Arc<Scripted>,
    pub addr: SocketAddr,
}

impl crate::transport::AppAt for FakeApp {
    fn at(&self, addr: SocketAddr) -> Self {
        Self {
            scripted: self.scripted.clone(),
            addr,
        }
    }
}

impl tower::Service<Uri> for FakeApp {
    type Response = TokioIo<AppStream>;
    type Error = ProxyError;
    type Future = Connecting<'static, Result<Self::Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (scripted, addr) = (self.scripted.clone(), self.addr);
        Box::pin(async move {
            let io = scripted.open(addr, Duration::from_secs(1)).await?;
            Ok(TokioIo::new(AppStream(io)))
        })
    }
}

/// A duplex that hyper's pooled client can hold as a connection.
pub struct AppStream(DuplexStream);

impl Connection for AppStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for AppStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A response with `status` and an empty body.
pub fn respond(status: u16) -> Response<Body> {
    let mut rsp = Response::new(body::empty());
    *rsp.status_mut() = StatusCode::from_u16(status).expect("a test status");
    rsp
}

/// A response as the caller received it, body read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The `x-weft-error` reason, or "" for a response the proxy did not make up.
    pub fn reason(&self) -> &str {
        self.headers
            .get(crate::errors::ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// Sends `req` to a proxy's service `svc` over a fresh duplex connection, in HTTP/2 when the
/// request says so and HTTP/1.1 otherwise, as an app or a peer proxy would.
pub async fn call<S>(svc: S, req: Request<Body>) -> Answer
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server), svc)
            .await;
    });
    let rsp = if req.version() == Version::HTTP_2 {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender.send_request(req).await
    }
    .expect("the proxy answers");
    let (parts, body) = rsp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("a whole body").to_bytes(),
    }
}

/// A request to `uri` (its authority names the service, as `HTTP_PROXY` clients send it).
pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .body(body::empty())
        .expect("a test request")
}

/// A discovery response carrying `services`.
pub fn update(services: Vec<pb::Service>) -> pb::DiscoveryResponse {
    pb::DiscoveryResponse {
        version: "1".into(),
        nonce: "n1".into(),
        config: Some(pb::ProxyConfig {
            mesh: Some(pb::MeshSettings::default()),
            services,
            ..Default::default()
        }),
    }
}

/// Service `name` in namespace `ns`, HTTP on port 80, routed to its own backend `backend`
/// (whose name must be `name.ns`) unless rules say otherwise.
pub fn service(name: &str, ns: &str, backends: Vec<pb::Backend>) -> pb::Service {
    pb::Service {
        name: name.into(),
        namespace: ns.into(),
        ports: vec![pb::Port {
            name: "http".into(),
            port: 80,
            protocol: pb::Protocol::Http.into(),
            ..Default::default()
        }],
        backends,
        ..Default::default()
    }
}

/// Backend `name.ns` with endpoints at `addrs`.
pub fn backend(name: &str, ns: &str, addrs: &[&str]) -> pb::Backend {
    pb::Backend {
        name: name.into(),
        namespace: ns.into(),
        identity: format!("spiffe://test.local/ns/{ns}/sa/{name}"),
        endpoints: addrs
            .iter()
            .map(|a| pb::Endpoint {
                address: (*a).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A discovery whose snapshot is `rsp`, accepted as the config stream would accept it.
pub fn discovery(rsp: pb::DiscoveryResponse, metrics: &Arc<Metrics>) -> Arc<Discovery> {
    let discovery = Arc::new(Discovery::new([], metrics.clone()));
    let reply = discovery.apply_update(rsp);
    assert!(reply.error_detail.is_empty(), "{}", reply.error_detail);
    discovery
}

/// An outbound proxy in namespace `shop` with `rsp` in force, whose peers are `peers`.
pub fn outbound(rsp: pb::DiscoveryResponse, peers: &FakePeers) -> Arc<Outbound> {
    let metrics = Arc::new(Metrics::new());
    Arc::new(Outbound {
        discovery: discovery(rsp, &metrics),
        metrics: metrics.clone(),
        namespace: "shop".into(),
        tls: Arc::default(),
        connect: Arc::new(peers.clone()),
        tracer: tracer(&metrics),
        access_log: AccessLog::start(None, metrics),
        upgrades: Default::default(),
        own_traffic: Default::default(),
    })
}

/// A tracer that records nothing (no endpoint, unless the environment names one).
pub fn tracer(metrics: &Metrics) -> Arc<Tracer> {
    Tracer::launch("test.shop".into(), "proxy", metrics.trace.clone())
}
