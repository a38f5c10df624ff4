//! The CA's files: which files a [`Source`] is read from, reading and checking them into a
//! [`Signer`] (the key matches the issuing certificate, which is a CA, in date, and chains to a
//! root), and writing them atomically with their modes. What the files hold is made in
//! `generate`; which files a rotation moves is `rotate`'s.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{Issuer, KeyPair};
use x509_parser::pem::Pem;

use super::{fingerprint, CaError, CertSummary, Signer, Source};

/// The files a source is read from: (issuer chain, issuer key, roots).
fn files(source: &Source) -> (PathBuf, PathBuf, Vec<PathBuf>) {
    match source {
        Source::Managed { dir } => (
            dir.join("issuer.pem"),
            dir.join("issuer.key"),
            ["root.pem", "next/root.pem", "previous-root.pem"]
                .iter()
                .map(|f| dir.join(f))
                .filter(|p| p.exists())
                .collect(),
        ),
        Source::Files { cert, key, roots } => {
            (cert.clone(), key.clone(), roots.iter().cloned().collect())
        }
    }
}

/// A digest of the CA files' contents; `None` when one cannot be read.
pub(super) fn input_digest(source: &Source) -> Option<Vec<u8>> {
    let (cert, key, roots) = files(source);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for path in std::iter::once(&cert).chain([&key]).chain(&roots) {
        let data = fs::read(path).ok()?;
        ctx.update(path.as_os_str().as_encoded_bytes());
        ctx.update(&(data.len() as u64).to_le_bytes());
        ctx.update(&data);
    }
    Some(ctx.finish().as_ref().to_vec())
}

fn read_text(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and checks a CA: the key matches the issuing certificate, which is a CA, in date, and
/// chains to one of the roots.
pub(super) fn read(source: &Source) -> Result<Signer, CaError> {
    let inputs = input_digest(source).unwrap_or_default();
    let (cert_path, key_path, root_paths) = files(source);
    let bad = |path: &Path, reason: String| CaError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let cert_text = read_text(&cert_path)?;
    let key_text = read_text(&key_path)?;
    let mut chain: Vec<Pem> = Pem::iter_from_buffer(cert_text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&cert_path, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad(&cert_path, "no certificate in it".into()));
    }
    let mut roots: Vec<Pem> = Vec::new();
    for path in &root_paths {
        let text = read_text(path)?;
        let pems = Pem::iter_from_buffer(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(path, format!("not PEM: {e}")))?;
        if pems.is_empty() {
            return Err(bad(path, "no certificate in it".into()));
        }
        roots.extend(pems);
    }
    let self_signed = |pem: &Pem| {
        pem.parse_x509()
            .is_ok_and(|c| c.subject() == c.issuer() && c.verify_signature(None).is_ok())
    };
    if root_paths.is_empty() {
        // Files without --ca-roots: the root is the self-signed certificate ending the chain.
        match chain.last() {
            Some(last) if chain.len() > 1 && self_signed(last) => {
                roots.push(chain.pop().expect("checked"));
            }
            _ => {
                return Err(bad(
                    &cert_path,
                    "no trust anchors: end the chain with the self-signed root, or give --ca-roots"
                        .into(),
                ))
            }
        }
    }
    // The chain must not carry a root: proxies are sent roots separately.
    chain.retain(|p| !self_signed(p));
    if chain.is_empty() {
        return Err(bad(
            &cert_path,
            "the issuing certificate is a self-signed root; weft signs with an intermediate".into(),
        ));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut parsed = Vec::new();
    for pem in chain.iter().chain(&roots) {
        let cert = pem
            .parse_x509()
            .map_err(|e| bad(&cert_path, format!("not a certificate: {e}")))?;
        parsed.push(cert);
    }
    let (chain_certs, root_certs) = parsed.split_at(chain.len());
    let issuer_cert = &chain_certs[0];
    if !issuer_cert.is_ca() {
        return Err(bad(
            &cert_path,
            "the issuing certificate is not a CA (basicConstraints cA is false)".into(),
        ));
    }
    let validity = issuer_cert.validity();
    if validity.not_after.timestamp() <= now || validity.not_before.timestamp() > now + 60 {
        return Err(bad(
            &cert_path,
            format!(
                "the issuing certificate is not valid now (valid {} to {})",
                validity.not_before, validity.not_after
            ),
        ));
    }
    // Each certificate of the chain is signed by the next; the last by one of the roots.
    for (i, cert) in chain_certs.iter().enumerate() {
        let ok = match chain_certs.get(i + 1) {
            Some(up) => cert.verify_signature(Some(up.public_key())).is_ok(),
            None => root_certs
                .iter()
                .any(|r| cert.verify_signature(Some(r.public_key())).is_ok()),
        };
        if !ok {
            return Err(bad(
                &cert_path,
                format!(
                    "certificate {} of the chain ({}) is not signed by {}",
                    i + 1,
                    cert.subject(),
                    if i + 1 < chain_certs.len() {
                        "the next one"
                    } else {
                        "any trust anchor"
                    }
                ),
            ));
        }
    }
    let key = KeyPair::from_pem(&key_text).map_err(|e| bad(&key_path, e.to_string()))?;
    if issuer_cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(
            &key_path,
            format!(
                "this key does not belong to the issuing certificate in {}",
                cert_path.display()
            ),
        ));
    }
    let summary = |c: &x509_parser::certificate::X509Certificate<'_>, der: &[u8]| CertSummary {
        subject: c.subject().to_string(),
        fingerprint: fingerprint(der),
        not_after: c.validity().not_after.timestamp(),
    };
    let issuer_summary = summary(issuer_cert, &chain[0].contents);
    let anchors: Vec<CertSummary> = root_certs
        .iter()
        .zip(&roots)
        .map(|(c, p)| summary(c, &p.contents))
        .collect();
    let to_pem = |p: &Pem| pem_encode(&p.contents);
    let chain_pem: String = chain.iter().map(to_pem).collect();
    let anchors_pem: String = roots.iter().map(to_pem).collect();
    let issuer = Issuer::from_ca_cert_der(&chain[0].contents.clone().into(), key)
        .map_err(|e| bad(&cert_path, e.to_string()))?;
    Ok(Signer {
        signing: issuer,
        chain_pem,
        anchors_pem,
        issuer_id: issuer_summary.fingerprint.clone(),
        issuer: issuer_summary,
        anchors,
        inputs,
    })
}

/// PEM text of one certificate.
pub(super) fn pem_encode(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

pub(super) fn copy(from: &Path, to: &Path) -> Result<(), CaError> {
    let data = fs::read(from).map_err(|source| CaError::Io {
        path: from.to_path_buf(),
        source,
    })?;
    write_file(to, &data, 0o644)
}

pub(super) fn rename(from: &Path, to: &Path) -> Result<(), CaError> {
    fs::rename(from, to).map_err(|source| CaError::Io {
        path: from.to_path_buf(),
        source,
    })
}

/// Writes a file atomically with the given mode (a new temporary file, then rename).
pub(super) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    crate::atomic::write(path, data, mode).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{generate::create, temp_dir, Ca, Step};
    use super::*;

    #[test]
    fn a_leftover_world_readable_temp_file_does_not_make_a_key_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir();
        fs::create_dir_all(dir.join("ca")).unwrap();
        // Where an earlier write (of any version) may have left its temporary file.
        for leftover in ["root.tmp", "issuer.tmp", "root.key.tmp", "issuer.key.tmp"] {
            let path = dir.join("ca").join(leftover);
            fs::write(&path, "").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        }
        Ca::load_or_create(&dir, "weft.local").unwrap();
        for key in ["root.key", "issuer.key"] {
            let mode = fs::metadata(dir.join("ca").join(key))
                .unwrap()
                .permissions();
            assert_eq!(mode.mode() & 0o777, 0o600, "{key}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn files_must_hold_a_ca_its_key_and_a_way_to_the_roots() {
        let dir = temp_dir();
        create(&dir, "weft.local").unwrap();
        let source = |cert: &str, roots: Option<&str>| Source::Files {
            cert: dir.join(cert),
            key: dir.join("issuer.key"),
            roots: roots.map(|r| dir.join(r)),
        };
        // Issuer + root in one file: the root is found at the end.
        let bundle = format!(
            "{}{}",
            fs::read_to_string(dir.join("issuer.pem")).unwrap(),
            fs::read_to_string(dir.join("root.pem")).unwrap()
        );
        fs::write(dir.join("bundle.pem"), bundle).unwrap();
        let out = dir.join("out");
        fs::create_dir_all(&out).unwrap();
        let ca = Ca::open(&out, "weft.local", source("bundle.pem", None)).unwrap();
        assert_eq!(ca.signer().anchors.len(), 1);
        assert_eq!(ca.phase(), None);
        assert!(ca.rotate(Step::Prepare).is_err());
        // Issuer alone, roots beside it.
        Ca::open(&out, "weft.local", source("issuer.pem", Some("root.pem"))).unwrap();
        // Issuer alone without roots: nothing to trust.
        let err = Ca::open(&out, "weft.local", source("issuer.pem", None)).unwrap_err();
        assert!(err.to_string().contains("no trust anchors"), "{err}");
        // The root as issuer: refused.
        let err = Ca::open(&out, "weft.local", source("root.pem", Some("root.pem"))).unwrap_err();
        assert!(err.to_string().contains("self-signed root"), "{err}");
        // Roots that did not sign the issuer.
        let other = temp_dir();
        create(&other, "weft.local").unwrap();
        fs::copy(other.join("root.pem"), dir.join("other-root.pem")).unwrap();
        let err = Ca::open(
            &out,
            "weft.local",
            source("issuer.pem", Some("other-root.pem")),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not signed by any trust anchor"),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
        fs::remove_dir_all(other).unwrap();
    }
}
