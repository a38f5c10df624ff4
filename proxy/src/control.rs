//! The channel to the control plane: gRPC over TLS, verified against the trust anchors.
//!
//! The control plane presents a certificate from the mesh CA whose SPIFFE ID is exactly
//! `spiffe://TRUST_DOMAIN/ns/weft-system/sa/weft-control-plane` (no workload can obtain an
//! identity in `weft-system`), TRUST_DOMAIN being the mesh's: a certificate for the same path in
//! any other trust domain is refused. The proxy starts with the anchors of its `trust-anchors`
//! file and its `trust-domain` setting, and from then on follows the roots and the trust domain
//! the control plane publishes with each config, which arrive over this verified channel: that
//! is how a trust-anchor rotation (or a MeshConfig `trustDomain` change) reaches a running proxy.
//!
//! Once the proxy has a certificate, every new connection presents it as the TLS client
//! certificate: the discovery stream is served only to a proxy that does (`Certify` works
//! without one, which is how the first is obtained). A renewed certificate is presented from the
//! next connection on; a connection already open stays as it was authenticated at its handshake
//! and is not re-established for a renewal (the stream reports the new certificate instead).
//! The proxy asks for its certificate in the trust domain it expects the control plane in
//! ([`ControlPlane::trust_domain`]). A proxy that was away while MeshConfig changed the trust
//! domain no longer recognises the control plane and must be restarted with the new
//! `trust-domain`: an identity in another trust domain is never taken on trust.
//!
//! This file holds the [`ControlPlane`] the proxy follows (roots, client certificate, trust
//! domain) and its gRPC channel; the TLS settings that verify the control plane and the TLS
//! connection are `weft_runtime::control_channel`, which the `weft` CLI dials with too.

use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use weft_runtime::control_channel::{connect_tls, verifying};
use weft_runtime::tls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ControlPlane {
    url: String,
    anchors_pem: ArcSwap<String>,
    anchors: ArcSwap<Vec<TrustAnchor<'static>>>,
    /// The certificate new connections present, once the proxy has one.
    client_cert: ArcSwapOption<ClientCert>,
    /// The trust domain the control plane is expected in.
    trust_domain: ArcSwap<String>,
}

/// A certificate chain and its key, as a TLS client presents them.
struct ClientCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ControlPlane {
    /// `anchors_pem`: the `trust-anchors` file; it must hold at least one certificate.
    /// `trust_domain`: the mesh's, until the control plane says otherwise.
    pub fn new(url: String, anchors_pem: String, trust_domain: String) -> Result<Self, String> {
        let anchors = tls::parse_anchors(&anchors_pem)?;
        Ok(Self {
            url,
            anchors_pem: ArcSwap::from_pointee(anchors_pem),
            anchors: ArcSwap::from_pointee(anchors),
            client_cert: ArcSwapOption::empty(),
            trust_domain: ArcSwap::from_pointee(trust_domain),
        })
    }

    /// The trust domain the control plane's identity is expected in now.
    pub fn trust_domain(&self) -> Arc<String> {
        self.trust_domain.load_full()
    }

    /// Expects the control plane in `trust_domain` from the next connection on (the mesh's, as
    /// published over the verified channel). An empty one changes nothing.
    pub fn set_trust_domain(&self, trust_domain: &str) -> bool {
        if trust_domain.is_empty() || **self.trust_domain.load() == trust_domain {
            return false;
        }
        self.trust_domain.store(Arc::new(trust_domain.to_string()));
        true
    }

    /// Presents `chain_pem` (leaf first) with `key_pem` on every connection made from now on.
    pub fn set_client_cert(&self, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
        if chain.is_empty() {
            return Err("certificate chain: no certificate in the PEM".into());
        }
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("private key: {e}"))?;
        self.client_cert
            .store(Some(Arc::new(ClientCert { chain, key })));
        Ok(())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The roots trusted now, PEM.
    pub fn anchors_pem(&self) -> Arc<String> {
        self.anchors_pem.load_full()
    }

    /// Trusts `pem` from now on (the roots the control plane published). Unusable roots are
    /// refused and the current ones stay.
    pub fn set_anchors(&self, pem: &str) -> Result<bool, String> {
        if pem.is_empty() || **self.anchors_pem.load() == pem {
            return Ok(false);
        }
        let anchors = tls::parse_anchors(pem)?;
        self.anchors.store(Arc::new(anchors));
        self.anchors_pem.store(Arc::new(pem.to_string()));
        Ok(true)
    }

    /// A channel that connects (and reconnects) on first use. Each connection verifies the
    /// control plane against the anchors trusted at that moment.
    pub fn channel(self: &Arc<Self>, keepalive: bool) -> Result<Channel, String> {
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| format!("control-plane URL {}: {e}", self.url))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if keepalive {
            endpoint = endpoint
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
        } else {
            endpoint = endpoint.timeout(Duration::from_secs(10));
        }
        let this = self.clone();
        let connector = tower::service_fn(move |uri: Uri| {
            let this = this.clone();
            async move { this.connect(uri).await }
        });
        Ok(endpoint.connect_with_connector_lazy(connector))
    }

    async fn connect(
        &self,
        uri: Uri,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
        let verifying = verifying(self.anchors.load_full(), &self.trust_domain.load())
            .map_err(std::io::Error::other)?;
        let mut config = match self.client_cert.load_full() {
            Some(c) => verifying
                .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
                .map_err(std::io::Error::other)?,
            None => verifying.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tls = connect_tls(&uri, Arc::new(config)).await?;
        Ok(TokioIo::new(tls))
    }
}
