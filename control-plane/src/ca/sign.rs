//! Signing: a workload's CSR for the one identity it proved it owns ([`Ca::sign`]), and the
//! control plane's own serving certificate ([`Ca::serving_cert`]). Lifetime, key usages and
//! `CA:false` are set here, never taken from the CSR.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::pem::Pem;

use super::{hex, Ca, CaError, BACKDATE, CONTROL_PLANE_SA, SYSTEM_NAMESPACE};

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf, then the intermediates: what the workload presents.
    pub chain_pem: String,
    pub serial: String,
    pub not_after: SystemTime,
}

/// A certificate and key made here for the control plane's own listener.
pub struct ServingCert {
    pub chain_der: Vec<Vec<u8>>,
    pub key_der: Vec<u8>,
    pub not_after: SystemTime,
}

impl Ca {
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
        let signer = self.signer();
        let (params, serial, not_after) = leaf_params(identity, &[], ttl)?;
        let leaf = params
            .signed_by(&csr.public_key, &signer.signing)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Issued {
            chain_pem: format!("{}{}", leaf.pem(), signer.chain_pem),
            serial,
            not_after,
        })
    }

    /// A certificate for the control plane's gRPC listener: the SPIFFE ID
    /// `spiffe://TRUST_DOMAIN/ns/weft-system/sa/weft-control-plane` plus `dns_names`. Its key is
    /// made here and never leaves this process.
    pub fn serving_cert(
        &self,
        trust_domain: &str,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<ServingCert, CaError> {
        let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
        let id = format!("spiffe://{trust_domain}/ns/{SYSTEM_NAMESPACE}/sa/{CONTROL_PLANE_SA}");
        let signer = self.signer();
        let key = KeyPair::generate().map_err(sign)?;
        let (params, _, not_after) = leaf_params(&id, dns_names, ttl)?;
        let leaf = params.signed_by(&key, &signer.signing).map_err(sign)?;
        let mut chain_der = vec![leaf.der().to_vec()];
        for pem in Pem::iter_from_buffer(signer.chain_pem.as_bytes()).flatten() {
            chain_der.push(pem.contents);
        }
        Ok(ServingCert {
            chain_der,
            key_der: key.serialize_der(),
            not_after,
        })
    }
}

/// The parameters of a leaf certificate for `identity` (and `dns_names`), valid for `ttl`;
/// with its serial (hex) and expiry.
fn leaf_params(
    identity: &str,
    dns_names: &[String],
    ttl: Duration,
) -> Result<(CertificateParams, String, SystemTime), CaError> {
    let now = SystemTime::now();
    let not_after = now + ttl;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        identity
            .try_into()
            .map_err(|e: rcgen::Error| CaError::BadCsr(e.to_string()))?,
    )];
    for name in dns_names {
        params.subject_alt_names.push(SanType::DnsName(
            name.as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(format!("DNS name {name}: {e}")))?,
        ));
    }
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    // Signing only: the keys are ECDSA, which cannot encipher keys, and TLS 1.3 (the only
    // version the mesh speaks) authenticates by signature whatever the key.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(not_after);
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    Ok((params, hex(&serial), not_after))
}

#[cfg(test)]
mod tests {
    use super::super::temp_dir;
    use super::*;
    use std::fs;
    use x509_parser::prelude::*;

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
        // An ECDSA key signs; it cannot encipher keys, so the leaf does not claim it can.
        let usage = leaf.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature());
        assert!(!usage.key_encipherment(), "{usage:?}");
        assert_eq!(usage.flags, 1, "digitalSignature only: {usage:?}");
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
