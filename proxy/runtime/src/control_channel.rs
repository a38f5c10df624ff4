//! The client side of a TLS connection to the control plane, with nothing of what runs over it:
//! TLS 1.3 settings that verify the control plane's certificate (its chain against the trust
//! anchors, then its SPIFFE ID, exactly the control plane's of the trust domain), and the TLS
//! connection itself.
//!
//! The proxy's `control` builds its gRPC channel on these, with the roots and client
//! certificate it follows; the `weft` CLI and the end-to-end tests dial the control plane's
//! listeners with them.

use std::sync::Arc;

use http::Uri;
use rustls::pki_types::{ServerName, TrustAnchor};
use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::tls::SpiffeVerifier;

/// TLS 1.3 client settings that verify the control plane: its chain against `anchors`, then its
/// SPIFFE ID, exactly [`crate::spiffe::control_plane_id`] of `trust_domain`. The caller chooses whether to
/// present a client certificate.
pub fn verifying(
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    trust_domain: &str,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeVerifier::control_plane(
            anchors,
            trust_domain,
        ))))
}

/// A TLS connection to the host and port of `uri` (443 by default).
pub async fn connect_tls(
    uri: &Uri,
    config: Arc<ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let io = |e: String| std::io::Error::other(e);
    let host = uri
        .host()
        .ok_or_else(|| io(format!("no host in {uri}")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    // The name is not what is verified (the SPIFFE ID is), but rustls needs one.
    let name = ServerName::try_from(host).map_err(|e| io(e.to_string()))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}
