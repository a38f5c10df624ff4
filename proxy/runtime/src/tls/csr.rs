//! A new key pair and a certificate signing request for a SPIFFE ID: how the proxy asks the
//! control plane for its certificate, and how `weft admin-cert` asks for an admin's.
//!
//! It only makes the request; sending it and checking what comes back belong to the callers
//! (the proxy's `identity`, the control plane's CLI).

/// A new key pair, made here, and a CSR whose only SAN is the SPIFFE ID `id`.
pub fn key_and_csr(id: &str) -> Result<(rcgen::KeyPair, rcgen::CertificateSigningRequest), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    let uri = id
        .try_into()
        .map_err(|e: rcgen::Error| format!("identity {id}: {e}"))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok((key, csr))
}
