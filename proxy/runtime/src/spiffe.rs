//! SPIFFE IDs: the names mesh certificates carry as their only SAN, and the naming rules for
//! them (`spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT` for a workload, the control
//! plane's fixed identity in `weft-system`).
//!
//! A leaf: it builds and reads names; verifying a certificate chain belongs to `tls`, asking for
//! a certificate to `identity`.

use rustls::pki_types::CertificateDer;

/// A workload's SPIFFE ID: its service account in `namespace`, in `trust_domain`.
pub fn workload_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The control plane's SPIFFE ID in `trust_domain`.
pub fn control_plane_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/ns/weft-system/sa/weft-control-plane")
}

/// The SPIFFE ID in a certificate's URI SAN.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some((*u).to_string())
        }
        _ => None,
    })
}
