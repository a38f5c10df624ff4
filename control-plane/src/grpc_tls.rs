//! TLS for the control plane's gRPC listener.
//!
//! The control plane serves proxies with a certificate from its own CA for
//! `spiffe://TRUST_DOMAIN/ns/weft-system/sa/weft-control-plane` (plus the DNS names of its
//! Kubernetes Service), so a proxy verifies it with nothing but the trust anchors. The key is
//! made in this process; the certificate is re-issued when the CA changes and at half its
//! lifetime. Handshakes run one task per connection, so that a slow client delays nobody else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::ca::{Ca, CaError};

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

    /// A TLS acceptor that always presents the current certificate. TLS 1.3, ALPN `h2`.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by the ring provider")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// A TLS acceptor for the API listener: the same certificate, HTTP/2 or HTTP/1.1, and a
    /// client certificate asked for but optional. One that is presented must chain to
    /// `anchors_pem` (the mesh's trust anchors now); the API then decides what its SPIFFE ID may
    /// do.
    pub fn api_acceptor(self: &Arc<Self>, anchors_pem: &str) -> Result<TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls_pemfile::certs(&mut anchors_pem.as_bytes()) {
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
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Re-issues the certificate whenever the CA changes and at half its lifetime.
    pub async fn keep_fresh(
        self: Arc<Self>,
        ca: Arc<Ca>,
        trust_domain: impl Fn() -> String + Send,
        shutdown: CancellationToken,
    ) {
        let mut changes = ca.subscribe();
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(SERVING_TTL / 2) => {}
                () = shutdown.cancelled() => return,
            }
            match self.refresh(&ca, &trust_domain()) {
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

/// Accepted TLS connections from `listener`, until `shutdown`. A failed handshake is logged
/// and costs only that connection.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
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
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
