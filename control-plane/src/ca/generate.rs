//! Making a new CA: a self-signed root and an issuing intermediate under it, written to a
//! folder (keys readable by their owner only, the root certificate last). Used on a managed
//! CA's first start and by `weft ca rotate prepare`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

use super::files::write_file;
use super::{hex, CaError, BACKDATE};

const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);
const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 86400);

fn ca_params(
    trust_domain: &str,
    name: &str,
    lifetime: Duration,
    path_len: u8,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, format!("weft {trust_domain}"));
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(now + lifetime);
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
}

/// Generates a root and an issuing intermediate and writes them (keys readable by owner only).
pub(super) fn create(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    crate::atomic::create_dir(dir, 0o700).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
    let root_key = KeyPair::generate().map_err(sign)?;
    // Each root gets its own name, so that old and new can be told apart in a rotation.
    let tag: [u8; 4] = rand::random();
    let root_params = ca_params(
        trust_domain,
        &format!("weft root CA {}", hex(&tag)),
        ROOT_LIFETIME,
        1,
    );
    let root_cert = root_params.self_signed(&root_key).map_err(sign)?;
    let root = Issuer::new(root_params, &root_key);
    let issuer_key = KeyPair::generate().map_err(sign)?;
    let issuer_cert = ca_params(
        trust_domain,
        &format!("weft issuing CA {}", hex(&tag)),
        ISSUER_LIFETIME,
        0,
    )
    .signed_by(&issuer_key, &root)
    .map_err(sign)?;
    write_file(
        &dir.join("root.key"),
        root_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &dir.join("issuer.key"),
        issuer_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&dir.join("issuer.pem"), issuer_cert.pem().as_bytes(), 0o644)?;
    // The root certificate last: its presence marks a complete CA.
    write_file(&dir.join("root.pem"), root_cert.pem().as_bytes(), 0o644)
}
