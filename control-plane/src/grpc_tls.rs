//! TLS for the control plane's gRPC listener.
//!
//! The control plane serves proxies with a certificate from its own CA for
//! `spiffe://TRUST_DOMAIN/ns/weft-system/sa/weft-control-plane` (plus the DNS names of its
//! Kubernetes Service), so a proxy verifies it with nothing but the trust anchors. The key is
//! made in this process; the certificate is re-issued when the CA changes and at half its
//! lifetime, or when MeshConfig changes the trust domain (a proxy without a certificate learns the
//! trust domain from it). Handshakes run one task per connection, so that a slow client delays
//! nobody else.
//!
//! The listener asks every client for a certificate but lets it connect without one, because
//! `Certify` is how a proxy gets its first: one that is presented must chain to the mesh's trust
//! anchors as they are at that handshake ([`GrpcAcceptor`] follows a rotation), and the
//! discovery stream refuses a connection that presented none (`discovery::peer`).

use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::ca::{Ca, CaError};
use crate::mesh::Mesh;

/// How long the control plane's own certificate lives; it is re-issued at half of it.
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The DNS names in the serving certificate, besides its SPIFFE ID: `localhost` and the
/// control plane's Service in `deploy/`.
pub fn dns_names() -> Vec<String> {
    [
        "localhost",
        "weft-control-plane",
        "weft-control-plane.weft-system",
        "weft-control-plane.weft-system.svc",
        "weft-control-plane.weft-system.svc.cluster.local",
    ]
    .map(String::from)
    .to_vec()
}

/// The control plane's serving certificate, swapped in place when re-issued.
#[derive(Debug)]
pub struct ServingIdentity {
    current: ArcSwap<CertifiedKey>,
}

impl ServingIdentity {
    /// Issues the first certificate from `ca`.
    pub fn new(ca: &Ca, trust_domain: &str) -> Result<Arc<Self>, CaError> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(issue(ca, trust_domain)?),
        }))
    }

    /// Issues a new certificate; on failure the current one stays.
    pub fn refresh(&self, ca: &Ca, trust_domain: &str) -> Result<(), CaError> {
        self.current.store(Arc::new(issue(ca, trust_domain)?));
        Ok(())
    }

    /// The gRPC listener's acceptor: the current certificate, TLS 1.3, ALPN `h2`, and a client
    /// certificate asked for, optional, verified against the CA's trust anchors at each
    /// handshake.
    pub fn grpc_acceptor(self: &Arc<Self>, ca: Arc<Ca>) -> Arc<GrpcAcceptor> {
        Arc::new(GrpcAcceptor {
            serving: self.clone(),
            ca,
            cached: ArcSwapOption::empty(),
        })
    }

    /// A TLS acceptor for the API listener: the same certificate, HTTP/2 or HTTP/1.1, and a
    /// client certificate asked for but optional. One that is presented must chain to
    /// `anchors_pem` (the mesh's trust anchors now); the API then decides what its SPIFFE ID may
    /// do.
    pub fn api_acceptor(self: &Arc<Self>, anchors_pem: &str) -> Result<TlsAcceptor, String> {
        self.optional_client_auth(anchors_pem, &[b"h2", b"http/1.1"])
    }

    /// TLS 1.3 with the current certificate, asking for a client certificate that, when
    /// presented, must chain to `anchors_pem`.
    fn optional_client_auth(
        self: &Arc<Self>,
        anchors_pem: &str,
        alpn: &[&[u8]],
    ) -> Result<TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(anchors_pem.as_bytes()) {
            let der = der.map_err(|e| format!("trust anchors: {e}"))?;
            roots.add(der).map_err(|e| format!("trust anchor: {e}"))?;
        }
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(clients)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Re-issues the certificate whenever the CA changes, when `mesh` changes the trust
    /// domain, and at half its lifetime.
    pub async fn keep_fresh(
        self: Arc<Self>,
        ca: Arc<Ca>,
        mut mesh: watch::Receiver<Arc<Mesh>>,
        shutdown: CancellationToken,
    ) {
        let mut changes = ca.subscribe();
        let mut trust_domain = mesh.borrow_and_update().trust_domain.clone();
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                r = mesh.changed() => {
                    if r.is_err() { return }
                    let now = mesh.borrow_and_update().trust_domain.clone();
                    if now == trust_domain { continue }
                }
                () = tokio::time::sleep(SERVING_TTL / 2) => {}
                () = shutdown.cancelled() => return,
            }
            trust_domain = mesh.borrow().trust_domain.clone();
            match self.refresh(&ca, &trust_domain) {
                Ok(()) => tracing::info!("control plane serving certificate re-issued"),
                Err(e) => {
                    tracing::error!(error = %e, "could not re-issue the control plane's serving certificate; the current one stays")
                }
            }
        }
    }
}

impl ResolvesServerCert for ServingIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn issue(ca: &Ca, trust_domain: &str) -> Result<CertifiedKey, CaError> {
    let cert = ca.serving_cert(trust_domain, &dns_names(), SERVING_TTL)?;
    let chain = cert
        .chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der));
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| CaError::Sign(format!("serving certificate: {e}")))
}

/// The gRPC listener's TLS settings, rebuilt when the CA's trust anchors change (a rotation
/// step, replaced files) so that client certificates are verified against the roots in force.
pub struct GrpcAcceptor {
    serving: Arc<ServingIdentity>,
    ca: Arc<Ca>,
    /// The acceptor for the anchors it was built from.
    cached: ArcSwapOption<(String, TlsAcceptor)>,
}

impl GrpcAcceptor {
    /// The acceptor for the trust anchors in force now.
    pub fn current(&self) -> Result<TlsAcceptor, String> {
        let anchors = self.ca.trust_anchors_pem();
        if let Some(cached) = self.cached.load().as_ref() {
            if cached.0 == anchors {
                return Ok(cached.1.clone());
            }
        }
        let acceptor = self.serving.optional_client_auth(&anchors, &[b"h2"])?;
        self.cached
            .store(Some(Arc::new((anchors, acceptor.clone()))));
        Ok(acceptor)
    }
}

/// A TLS connection to the gRPC listener. Every request on it carries its [`PeerInfo`] in its
/// extensions (see [`peer_info`]).
pub struct GrpcConn(TlsStream<TcpStream>);

/// What a gRPC handler knows of the connection a request came on.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The client's certificate chain (leaf first), verified at the handshake; `None` when it
    /// presented none.
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// The [`PeerInfo`] of a request's connection (none for a request not from [`incoming`]).
pub fn peer_info<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
    request.extensions().get::<PeerInfo>()
}

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let (tcp, session) = self.0.get_ref();
        PeerInfo {
            remote: tcp.peer_addr().ok(),
            certificates: session
                .peer_certificates()
                .filter(|c| !c.is_empty())
                .map(|c| Arc::new(c.to_vec())),
        }
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Serves one connection accepted by the gRPC listener's accept loop: the TLS handshake by the
/// connection's first-request deadline, then `routes` over HTTP/2 with the listener's limits
/// (`weft_runtime::server`), each request carrying the connection's [`PeerInfo`].
pub async fn serve(
    acceptor: Arc<GrpcAcceptor>,
    routes: tonic::service::Routes,
    conn: weft_runtime::server::Accepted,
) {
    let weft_runtime::server::Accepted { stream, peer, http } = conn;
    let acceptor = match acceptor.current() {
        Ok(a) => a,
        Err(e) => return tracing::error!(error = %e, "gRPC listener TLS settings"),
    };
    let tls = match tokio::time::timeout_at(http.deadline(), acceptor.accept(stream)).await {
        Ok(Ok(tls)) => GrpcConn(tls),
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            http.first_request_timed_out();
            return tracing::debug!(%peer, "TLS handshake timed out");
        }
    };
    let svc = WithPeer {
        info: tonic::transport::server::Connected::connect_info(&tls),
        routes,
    };
    http.serve(tls, svc).await;
}

/// The gRPC services, handed each request with its connection's [`PeerInfo`].
struct WithPeer {
    info: PeerInfo,
    routes: tonic::service::Routes,
}

type GrpcResponse = http::Response<weft_runtime::body::Body>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WithPeer {
    type Response = GrpcResponse;
    type Error = std::convert::Infallible;
    type Future = Pin<
        Box<
            dyn std::future::Future<Output = Result<GrpcResponse, std::convert::Infallible>> + Send,
        >,
    >;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.info.clone());
        let mut routes = self.routes.clone();
        Box::pin(async move {
            let rsp = tonic::codegen::Service::call(&mut routes, req).await?;
            Ok(rsp.map(weft_runtime::body::boxed))
        })
    }
}

/// Accepted TLS connections from `listener`, until `shutdown`, for a tonic server (the
/// control plane serves with [`serve`]; scripted control planes in tests use this). A failed handshake is logged
/// and costs only that connection.
pub fn incoming(
    listener: TcpListener,
    acceptor: Arc<GrpcAcceptor>,
    shutdown: CancellationToken,
) -> ReceiverStream<std::io::Result<GrpcConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer): (TcpStream, SocketAddr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = match acceptor.current() {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "gRPC listener TLS settings");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(GrpcConn(tls))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
