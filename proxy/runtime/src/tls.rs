//! Mutual TLS between proxies: rustls configs built from the proxy's current credentials, and
//! the verifiers, trust-anchor parsing and key-and-CSR making that the control plane and its CLI
//! use too (`tls/csr.rs`). Obtaining and renewing the credentials is the proxy's `identity`.
//!
//! Mesh certificates carry a SPIFFE ID as their only SAN and no DNS name, so a client verifies a
//! peer in two steps: the chain against the trust anchors (webpki), then the SPIFFE ID against
//! the identity the control plane gave that endpoint's Service. A server verifies a client's
//! chain and reads its SPIFFE ID for `x-weft-client-identity`. TLS 1.3 only.
//!
//! Configs are rebuilt when the credentials change ([`Tls::refresh`]): new handshakes use the new
//! certificate, connections already open keep theirs.

use rustls::pki_types::pem::PemObject;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::Serialize;

use crate::spiffe;

mod csr;

pub use crate::spiffe::spiffe_id;
pub use csr::key_and_csr;

/// A certificate and the key it certifies: what the configs are built from. `identity` obtains
/// and renews them; this module only reads them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub identity: String,
    pub serial: String,
    /// Seconds since the Unix epoch; `/identity` writes it as RFC 3339.
    #[serde(serialize_with = "crate::timestamp::ser_unix")]
    pub not_after: i64,
    /// Fingerprint of the issuing certificate.
    pub issuer: String,
    #[serde(skip)]
    pub chain_pem: String,
    #[serde(skip)]
    pub key_pem: String,
    #[serde(skip)]
    pub trust_anchors_pem: String,
    /// When it was asked for: renewal is scheduled from it.
    #[serde(skip)]
    pub issued_at: SystemTime,
}

impl Credentials {
    pub fn expiry(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(self.not_after).unwrap_or(0))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// The configs for one set of credentials and trust anchors.
struct Configs {
    serial: String,
    anchors_pem: String,
    server: Arc<ServerConfig>,
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Client configs by the peer identity they accept.
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

/// The TLS state of a proxy: none until it has a certificate.
#[derive(Default)]
pub struct Tls {
    configs: ArcSwapOption<Configs>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Rebuilds the configs if `creds` or `anchors_pem` (the roots to verify peers against) are
    /// new. Called by the credentials' one writer.
    pub fn refresh(&self, creds: &Credentials, anchors_pem: &str) -> Result<(), String> {
        if self
            .configs
            .load()
            .as_ref()
            .is_some_and(|c| c.serial == creds.serial && c.anchors_pem == anchors_pem)
        {
            return Ok(());
        }
        let chain: Vec<CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_slice_iter(creds.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("certificate chain: {e}"))?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
            .map_err(|e| format!("private key: {e}"))?;
        let anchors = parse_anchors(anchors_pem)?;
        let mut roots = RootCertStore::empty();
        roots.extend(anchors.iter().cloned());
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("client verifier: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("server config: {e}"))?;
        self.configs.store(Some(Arc::new(Configs {
            serial: creds.serial.clone(),
            anchors_pem: anchors_pem.to_string(),
            server: Arc::new(server),
            anchors: Arc::new(anchors),
            chain,
            key,
            clients: Mutex::default(),
        })));
        Ok(())
    }

    /// Whether this proxy has a certificate (one atomic load: cheap enough for every request).
    pub fn has_certificate(&self) -> bool {
        self.configs.load().is_some()
    }

    /// The roots peers are verified against now, PEM.
    pub fn anchors_pem(&self) -> Option<String> {
        self.configs.load().as_ref().map(|c| c.anchors_pem.clone())
    }

    /// The server config for the inbound listener, once the proxy has a certificate.
    pub fn server(&self) -> Option<Arc<ServerConfig>> {
        self.configs.load().as_ref().map(|c| c.server.clone())
    }

    /// A client config that accepts only a peer presenting `identity`, once the proxy has a
    /// certificate.
    pub fn client(&self, identity: &str) -> Option<Arc<ClientConfig>> {
        let configs = self.configs.load_full()?;
        let mut clients = configs.clients.lock().ok()?;
        if let Some(c) = clients.get(identity) {
            return Some(c.clone());
        }
        let verifier = SpiffeVerifier {
            anchors: configs.anchors.clone(),
            expected: identity.to_string(),
            algorithms: provider().signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(configs.chain.clone(), configs.key.clone_key())
            .ok()?;
        let config = Arc::new(config);
        clients.insert(identity.to_string(), config.clone());
        Some(config)
    }
}

/// Reads PEM trust anchors; at least one is required.
pub fn parse_anchors(pem: &str) -> Result<Vec<TrustAnchor<'static>>, String> {
    let mut anchors = Vec::new();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| format!("trust anchors: {e}"))?;
        anchors.push(
            webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| format!("trust anchor: {e}"))?
                .to_owned(),
        );
    }
    if anchors.is_empty() {
        return Err("trust anchors: no certificate in the PEM".into());
    }
    Ok(anchors)
}

/// The SPIFFE ID a server must present.
/// Verifies a server's chain against the trust anchors, then that its SPIFFE ID is exactly the
/// one expected.
#[derive(Debug)]
pub struct SpiffeVerifier {
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    /// A peer proxy: the identity the control plane gave the endpoint's Service; the control
    /// plane: its own identity in the mesh's trust domain ([`spiffe::control_plane_id`]).
    expected: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeVerifier {
    /// Verifies the control plane's certificate: its chain, then its identity in `trust_domain`
    /// ([`spiffe::control_plane_id`]), exactly.
    pub fn control_plane(anchors: Arc<Vec<TrustAnchor<'static>>>, trust_domain: &str) -> Self {
        Self {
            anchors,
            expected: spiffe::control_plane_id(trust_domain),
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let found = spiffe_id(end_entity);
        if found.as_deref() == Some(self.expected.as_str()) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "peer presented {}, expected {}",
            found.as_deref().unwrap_or("no SPIFFE ID"),
            self.expected,
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    rustls::Error::General(format!("certificate: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    /// A root, and a leaf it signed for each SPIFFE ID.
    fn chain(ids: &[&str]) -> (String, Vec<CertificateDer<'static>>) {
        let root_key = KeyPair::generate().unwrap();
        let mut root = CertificateParams::default();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_cert = root.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root, &root_key);
        let leaves = ids
            .iter()
            .map(|id| {
                let mut params = CertificateParams::default();
                params.subject_alt_names = vec![SanType::URI((*id).try_into().unwrap())];
                let key = KeyPair::generate().unwrap();
                params.signed_by(&key, &issuer).unwrap().der().clone()
            })
            .collect();
        (root_cert.pem(), leaves)
    }

    #[test]
    fn the_control_plane_is_its_exact_identity_in_the_trust_domain() {
        let good = "spiffe://weft.local/ns/weft-system/sa/weft-control-plane";
        let (root, leaves) = chain(&[
            good,
            "spiffe://evil.example/ns/weft-system/sa/weft-control-plane",
            "spiffe://weft.local/x/ns/weft-system/sa/weft-control-plane",
        ]);
        let anchors = Arc::new(parse_anchors(&root).unwrap());
        let verifier = SpiffeVerifier::control_plane(anchors, "weft.local");
        let name = ServerName::try_from("localhost").unwrap();
        let verify = |leaf: &CertificateDer<'_>| {
            verifier.verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
        };
        assert!(verify(&leaves[0]).is_ok(), "{:?}", verify(&leaves[0]));
        for leaf in &leaves[1..] {
            let err = verify(leaf).unwrap_err().to_string();
            assert!(err.contains(&format!("expected {good}")), "{err}");
        }
    }
}
