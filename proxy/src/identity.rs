//! The proxy's workload identity: a private key made here (it never leaves this process), a
//! certificate for it from the control plane, and renewal before it expires.
//!
//! One writer, [`Identity::run`], swaps in new [`Credentials`] (a `tls` type); readers (admin, the TLS
//! configs) load the current ones. Renewal starts at about 70% of the
//! certificate's lifetime; a failed attempt is retried with jittered exponential backoff while
//! the current certificate keeps serving.
//!
//! The certificate comes first: the control plane serves the discovery stream only to a proxy
//! that presents one (see [`crate::control`]). The proxy asks for an identity in the trust domain
//! the control plane's own certificate names (its config names the same one, but a proxy has
//! none at first, and a stale one after being away during a change), and renews when a config or
//! a handshake shows the trust domain moved.

use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_proto::discovery::Certificate;
use weft_proto::identity::{
    certify_request::Proof as PbProof, identity_client::IdentityClient, CertifyRequest,
};

use crate::config::Proof;
use crate::control::ControlPlane;
use crate::discovery::Discovery;
use crate::metrics::{Metrics, OutcomeLabels};
use weft_runtime::spiffe;
use weft_runtime::tls::{Credentials, Tls};

const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// After the CA changes issuer, proxies renew within this many milliseconds (uniformly spread).
const RENEW_SPREAD_MS: u64 = 1000;

pub struct Identity {
    current: ArcSwapOption<Credentials>,
    /// Why the last certificate request failed; cleared by the next success.
    last_error: std::sync::Mutex<Option<String>>,
    updates: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    tls: Arc<Tls>,
}

impl Identity {
    /// `tls` is rebuilt from every new certificate.
    pub fn new(metrics: Arc<Metrics>, tls: Arc<Tls>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            last_error: std::sync::Mutex::new(None),
            updates: watch::channel(0).0,
            metrics,
            tls,
        }
    }

    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// Why the last certificate request failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok()?.clone()
    }

    fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = e;
        }
    }

    /// Fingerprints (hex SHA-256) of the roots peers are verified against now.
    pub fn trust_anchors(&self) -> Vec<String> {
        self.tls.anchors_pem().map_or_else(Vec::new, |pem| {
            rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .flatten()
                .map(|der| fingerprint(&der))
                .collect()
        })
    }

    /// Resolves once the first certificate is in hand.
    pub async fn ready(&self) {
        let _ = self.updates.subscribe().wait_for(|n| *n > 0).await;
    }

    /// Obtains a certificate, then renews it, until `shutdown`. Also follows the CA as the
    /// control plane publishes it: new roots are trusted at once (for peers and for the control
    /// plane itself), and a certificate from an issuer the CA no longer uses is renewed within
    /// a second or so (with jitter, so that a whole mesh does not ask at the same instant).
    pub async fn run(
        self: Arc<Self>,
        control: Arc<ControlPlane>,
        proof: Proof,
        namespace: String,
        service_account: String,
        discovery: Arc<Discovery>,
        shutdown: CancellationToken,
    ) {
        let mut changes = discovery.changes();
        let mut failures = 0u32;
        loop {
            let obtained = async {
                // The trust domain the control plane is expected in: the `trust-domain`
                // setting, then the mesh's as each config says.
                let trust_domain = control.trust_domain();
                let id = spiffe::workload_id(&trust_domain, &namespace, &service_account);
                let creds = self.certify(&control, &proof, &id).await?;
                // Roots that came back with the certificate, over the verified channel.
                let _ = control.set_anchors(&creds.trust_anchors_pem);
                self.tls
                    .refresh(&creds, &control.anchors_pem())
                    .map_err(|e| format!("unusable certificate: {e}"))?;
                control
                    .set_client_cert(&creds.chain_pem, &creds.key_pem)
                    .map_err(|e| format!("unusable certificate: {e}"))?;
                Ok::<_, String>(creds)
            }
            .await;
            let wait = match obtained {
                Ok(creds) => {
                    failures = 0;
                    self.set_last_error(None);
                    let wait = renew_after(
                        creds.issued_at,
                        creds.expiry(),
                        SystemTime::now(),
                        rand::rng().random_range(-0.05..0.05),
                    );
                    tracing::info!(identity = %creds.identity, serial = %creds.serial, renew_in = ?wait, "certificate obtained");
                    self.metrics.identity_expiry.set(creds.not_after);
                    self.metrics
                        .renewals
                        .get_or_create(&OutcomeLabels { outcome: "issued" })
                        .inc();
                    discovery.report_certificate(Certificate {
                        serial: creds.serial.clone(),
                        expires_at: creds.not_after,
                        issuer: creds.issuer.clone(),
                        // What the control plane believes: it verifies the chain itself.
                        chain: rustls::pki_types::CertificateDer::pem_slice_iter(
                            creds.chain_pem.as_bytes(),
                        )
                        .flatten()
                        .map(|der| der.to_vec())
                        .collect(),
                    });
                    self.current.store(Some(Arc::new(creds)));
                    self.updates.send_modify(|n| *n += 1);
                    wait
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics
                        .renewals
                        .get_or_create(&OutcomeLabels { outcome: "failed" })
                        .inc();
                    let cap = RETRY_BASE
                        .saturating_mul(1 << failures.min(16))
                        .min(RETRY_MAX);
                    let wait = rand::rng().random_range(cap / 2..=cap);
                    self.set_last_error(Some(e.clone()));
                    match self.current() {
                        Some(c) => {
                            tracing::warn!(error = %e, retry_in = ?wait, serving = %c.serial, "certificate request failed; the current certificate keeps serving")
                        }
                        None => {
                            tracing::warn!(error = %e, retry_in = ?wait, "certificate request failed; no certificate yet, so nothing is served until one is issued")
                        }
                    }
                    wait
                }
            };
            let mut renew_at = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(renew_at) => break,
                    r = changes.changed() => {
                        if r.is_err() { return }
                        if let Some(soon) = self.follow_ca(&control, &discovery) {
                            renew_at = renew_at.min(tokio::time::Instant::now() + soon);
                        }
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Applies the CA state of a new config: trusts its roots, and returns how soon to renew
    /// when the certificate in hand no longer fits (another issuer or trust domain).
    fn follow_ca(&self, control: &ControlPlane, discovery: &Discovery) -> Option<Duration> {
        let snapshot = discovery.snapshot();
        let mesh = &snapshot.mesh;
        if control.set_trust_domain(&mesh.trust_domain) {
            tracing::info!(trust_domain = %mesh.trust_domain, "the control plane is expected in the mesh's trust domain");
        }
        match control.set_anchors(&mesh.trust_anchors) {
            Ok(true) => {
                tracing::info!("trust anchors updated by the control plane");
                if let Some(creds) = self.current() {
                    if let Err(e) = self.tls.refresh(&creds, &control.anchors_pem()) {
                        tracing::warn!(error = %e, "cannot use the new trust anchors");
                    }
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring unusable trust anchors"),
        }
        let creds = self.current()?;
        let stale_issuer = !mesh.issuer.is_empty() && creds.issuer != mesh.issuer;
        if stale_issuer {
            tracing::info!(identity = %creds.identity, "the CA changed; renewing the certificate");
            return Some(renew_spread());
        }
        self.moved(&mesh.trust_domain)
    }

    /// How soon to renew when the certificate in hand is not of `trust_domain`.
    fn moved(&self, trust_domain: &str) -> Option<Duration> {
        let creds = self.current()?;
        let moved = !creds
            .identity
            .starts_with(&format!("spiffe://{trust_domain}/"));
        moved.then(|| {
            tracing::info!(identity = %creds.identity, %trust_domain, "the trust domain changed; renewing the certificate");
            renew_spread()
        })
    }

    async fn certify(
        &self,
        control: &Arc<ControlPlane>,
        proof: &Proof,
        id: &str,
    ) -> Result<Credentials, String> {
        let proof = match proof {
            Proof::JoinToken(t) => PbProof::JoinToken(t.clone()),
            Proof::TokenFile(path) => PbProof::ServiceAccountToken(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("token-file {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            ),
        };
        // A fresh key for every certificate: nothing to leak from an old one.
        let (key, csr) = weft_runtime::tls::key_and_csr(id)?;
        let issued_at = SystemTime::now();
        let rsp = IdentityClient::new(control.channel(false)?)
            .certify(CertifyRequest {
                csr: csr.der().to_vec(),
                proof: Some(proof),
            })
            .await
            .map_err(|s| crate::transport::status_text(&s))?
            .into_inner();
        Ok(Credentials {
            identity: id.to_string(),
            serial: rsp.serial,
            not_after: rsp.expires_at,
            issuer: issuer_of(&rsp.certificate_chain)?,
            chain_pem: rsp.certificate_chain,
            key_pem: key.serialize_pem(),
            trust_anchors_pem: rsp.trust_anchors,
            issued_at,
        })
    }
}

/// A delay spread over [`RENEW_SPREAD_MS`], so that a whole mesh does not renew at one instant.
fn renew_spread() -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=RENEW_SPREAD_MS))
}

/// The fingerprint (hex SHA-256) of the certificate that issued the leaf: the second of the
/// chain.
fn issuer_of(chain_pem: &str) -> Result<String, String> {
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .nth(1)
        .ok_or("the certificate chain has no issuer")?
        .map_err(|e| format!("certificate chain: {e}"))?;
    Ok(fingerprint(&der))
}

/// Hex SHA-256 of a certificate's DER, as the control plane names issuers and roots.
fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// When to renew: at `0.7 + jitter` of the way from issue to expiry (never before now).
pub fn renew_after(
    issued: SystemTime,
    expiry: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    let lifetime = expiry.duration_since(issued).unwrap_or_default();
    let at = issued + lifetime.mul_f64((0.7 + jitter).clamp(0.1, 0.95));
    at.duration_since(now).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn renewal_is_at_seventy_percent_of_the_lifetime() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let expiry = t0 + Duration::from_secs(100);
        assert_eq!(renew_after(t0, expiry, t0, 0.0), Duration::from_secs(70));
        assert_eq!(
            renew_after(t0, expiry, t0 + Duration::from_secs(50), 0.0),
            Duration::from_secs(20)
        );
        assert_eq!(
            renew_after(t0, expiry, t0 + Duration::from_secs(90), 0.0),
            Duration::ZERO,
            "overdue: now"
        );
        assert_eq!(renew_after(t0, expiry, t0, 0.05), Duration::from_secs(75));
        assert_eq!(
            renew_after(t0, t0, t0, 0.0),
            Duration::ZERO,
            "a zero lifetime renews at once"
        );
    }
}
