//! The mesh's certificate authority: a root (the trust anchor) and an issuing intermediate,
//! kept in the data dir, and the signing of workload certificates.
//!
//! The CA signs a CSR only for the one identity the caller proved it owns (`sign`): the CSR
//! must carry exactly one SAN, the SPIFFE ID of that identity. Everything else in the
//! certificate — lifetime, key usages, that it is not a CA — is set here, never taken from the
//! CSR. Workload private keys never reach the control plane: it sees CSRs only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);
const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 86400);
/// Certificates start this long before they are issued, for clocks slightly behind ours.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("the CSR could not be read: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {asked}, but the proof of identity is for {entitled}")]
    WrongIdentity { asked: String, entitled: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf, then the intermediate: what the workload presents.
    pub chain_pem: String,
    pub serial: String,
    pub not_after: SystemTime,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    issuer_pem: String,
    anchors_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `DATA_DIR/ca/`, creating a new root and intermediate on first start,
    /// and (re)writes `DATA_DIR/trust-anchors.pem`.
    pub fn load_or_create(data_dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let dir = data_dir.join("ca");
        let files = ["root.pem", "root.key", "issuer.pem", "issuer.key"].map(|f| dir.join(f));
        if !files.iter().any(|f| f.exists()) {
            create(&dir, trust_domain)?;
            tracing::info!(dir = %dir.display(), "created a new mesh CA (root and issuing intermediate)");
        }
        let read = |p: &PathBuf| {
            fs::read_to_string(p).map_err(|source| CaError::Io {
                path: p.clone(),
                source,
            })
        };
        let [root_pem, _root_key, issuer_pem, issuer_key] = files.clone().map(|f| read(&f));
        let (root_pem, issuer_pem, issuer_key) = (root_pem?, issuer_pem?, issuer_key?);
        let bad = |i: usize, reason: String| CaError::BadFile {
            path: files[i].clone(),
            reason,
        };
        let key = KeyPair::from_pem(&issuer_key).map_err(|e| bad(3, e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(&issuer_pem, key).map_err(|e| bad(2, e.to_string()))?;
        let anchors = data_dir.join("trust-anchors.pem");
        write_file(&anchors, root_pem.as_bytes(), 0o644)?;
        Ok(Self {
            issuer,
            issuer_pem,
            anchors_pem: root_pem,
        })
    }

    /// The trust anchors, PEM: what every proxy verifies peers against.
    pub fn trust_anchors_pem(&self) -> &str {
        &self.anchors_pem
    }

    /// Signs `csr_der` for `identity` (a SPIFFE ID the caller proved it owns), valid for `ttl`.
    pub fn sign(&self, csr_der: &[u8], identity: &str, ttl: Duration) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [identity] {
            return Err(CaError::WrongIdentity {
                asked: if asked.is_empty() {
                    "no identity".into()
                } else {
                    asked.join(", ")
                },
                entitled: identity.to_string(),
            });
        }
        let now = SystemTime::now();
        let not_after = now + ttl;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            identity
                .try_into()
                .map_err(|e: rcgen::Error| CaError::BadCsr(e.to_string()))?,
        )];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = OffsetDateTime::from(now - BACKDATE);
        params.not_after = OffsetDateTime::from(not_after);
        let serial: [u8; 16] = rand::random();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Issued {
            chain_pem: format!("{}{}", leaf.pem(), self.issuer_pem),
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
            not_after,
        })
    }
}

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
fn create(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
    let root_key = KeyPair::generate().map_err(sign)?;
    let root_params = ca_params(trust_domain, "weft root CA", ROOT_LIFETIME, 1);
    let root_cert = root_params.self_signed(&root_key).map_err(sign)?;
    let root = Issuer::new(root_params, &root_key);
    let issuer_key = KeyPair::generate().map_err(sign)?;
    let issuer_cert = ca_params(trust_domain, "weft issuing CA", ISSUER_LIFETIME, 0)
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

/// Writes a file atomically (temp file, then rename) with the given mode.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn temp_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "weft-ca-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn csr(sans: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::URI((*s).try_into().unwrap()))
            .collect();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    const ID: &str = "spiffe://weft.local/ns/shop/sa/orders";

    #[test]
    fn created_once_then_loaded() {
        let dir = temp_dir();
        let a = Ca::load_or_create(&dir, "weft.local").unwrap();
        let b = Ca::load_or_create(&dir, "weft.local").unwrap();
        assert_eq!(a.trust_anchors_pem(), b.trust_anchors_pem());
        assert_eq!(
            fs::read_to_string(dir.join("trust-anchors.pem")).unwrap(),
            a.trust_anchors_pem()
        );
        let mode = fs::metadata(dir.join("ca/issuer.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn signs_the_entitled_identity_only() {
        let dir = temp_dir();
        let ca = Ca::load_or_create(&dir, "weft.local").unwrap();
        let issued = ca.sign(&csr(&[ID]), ID, Duration::from_secs(3600)).unwrap();
        let pems: Vec<_> = Pem::iter_from_buffer(issued.chain_pem.as_bytes())
            .map(|p| p.unwrap())
            .collect();
        assert_eq!(pems.len(), 2, "leaf and intermediate");
        let leaf = pems[0].parse_x509().unwrap();
        let issuer = pems[1].parse_x509().unwrap();
        assert_eq!(leaf.issuer(), issuer.subject());
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            format!("{:?}", [GeneralName::URI(ID)])
        );
        assert!(!leaf.is_ca());
        let lifetime =
            leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 60);

        let other = "spiffe://weft.local/ns/shop/sa/payments";
        let err = ca
            .sign(&csr(&[other]), ID, Duration::from_secs(60))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("asks for spiffe://weft.local/ns/shop/sa/payments"),
            "{err}"
        );
        assert!(matches!(
            ca.sign(&csr(&[ID, other]), ID, Duration::from_secs(60)),
            Err(CaError::WrongIdentity { .. })
        ));
        assert!(matches!(
            ca.sign(&csr(&[]), ID, Duration::from_secs(60)),
            Err(CaError::WrongIdentity { .. })
        ));
        assert!(matches!(
            ca.sign(b"not a csr", ID, Duration::from_secs(60)),
            Err(CaError::BadCsr(_))
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
