//! Who is at the other end of a discovery stream, and what it may send.
//!
//! A stream is served only over a connection that presented a workload certificate at its TLS
//! handshake (the listener verified its chain against the mesh's trust anchors; client
//! certificates are optional there only so that `Certify` works without one). The stream's
//! namespace and service account are that certificate's; a `Node` that claims others is refused,
//! and a claimed Service must be one whose `serviceAccount` is the certificate's. The
//! certificate shown for a proxy (`weft get proxies`, `weft ca status`, the veto of `weft ca
//! rotate retire`) is always one verified here, never the proxy's own account of it. Every
//! string a proxy sends is capped, and so are the streams one certificate, and one identity, may
//! hold open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use tonic::Status;
use weft_proto::discovery as pb;

use super::CertificateStatus;
use crate::grpc_tls::PeerInfo;
use crate::mesh::Mesh;

/// The longest name, version, nonce, id or serial a proxy may send (a DNS name's limit).
pub const MAX_NAME_LEN: usize = 253;
/// The longest inbound address (an IPv6 address with a zone and a port fits well within it).
pub const MAX_ADDR_LEN: usize = 64;
/// A NACK's reason is kept up to this many bytes, and cut there.
pub const MAX_ERROR_DETAIL: usize = 1024;
/// The most names one request may subscribe or unsubscribe (a proxy's own subscription cap).
pub const MAX_NAMES_PER_REQUEST: usize = 4096;
/// The most certificates, and bytes of each, in a reported chain.
pub const MAX_CHAIN_CERTS: usize = 4;
pub const MAX_CERT_BYTES: usize = 8 * 1024;
/// The largest request message: a first request with 4096 subscriptions of the longest valid
/// service name (two DNS labels) is about 0.5 MiB.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Streams one certificate may hold open: a proxy opens one, and may briefly have a second
/// while the control plane has not yet noticed that the old one is dead.
pub const MAX_STREAMS_PER_CERTIFICATE: usize = 8;
/// Streams one identity (all the replicas of a workload) may hold open.
pub const MAX_STREAMS_PER_IDENTITY: usize = 1024;

/// Why a stream, or a request on it, is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "the discovery stream requires the proxy's certificate: present the workload \
         certificate obtained with Identity/Certify as the TLS client certificate"
    )]
    NoCertificate,
    #[error("the client certificate is not usable: {0}")]
    BadCertificate(String),
    #[error(
        "the client certificate is for {0}, which is not a workload identity of trust domain \
         {1} (spiffe://{1}/ns/NAMESPACE/sa/SERVICE_ACCOUNT)"
    )]
    NotWorkload(String, String),
    #[error("node.{field} is {claimed:?}, but the certificate presented is for {identity}")]
    WrongClaim {
        field: &'static str,
        claimed: String,
        identity: String,
    },
    #[error(
        "node.service {service:?}: Service {service}.{namespace} runs as service account \
         {expected:?} (spiffe://{trust_domain}/ns/{namespace}/sa/{expected}), but the certificate \
         presented is for {identity}"
    )]
    WrongService {
        service: String,
        namespace: String,
        expected: String,
        trust_domain: String,
        identity: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(
        "{what} already has {limit} discovery streams open; close one (or wait for a dead one to \
         time out) before opening another"
    )]
    TooManyStreams { what: String, limit: usize },
}

impl From<Refused> for Status {
    fn from(r: Refused) -> Self {
        let msg = r.to_string();
        match r {
            Refused::NoCertificate | Refused::BadCertificate(_) | Refused::NotWorkload(..) => {
                Status::unauthenticated(msg)
            }
            Refused::WrongClaim { .. } | Refused::WrongService { .. } => {
                Status::permission_denied(msg)
            }
            Refused::Invalid { .. } => Status::invalid_argument(msg),
            Refused::TooManyStreams { .. } => Status::resource_exhausted(msg),
        }
    }
}

/// The workload a verified certificate is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its SPIFFE ID.
    pub identity: String,
    pub namespace: String,
    pub service_account: String,
}

/// A verified certificate: whose it is and what `weft get proxies` shows of it.
#[derive(Clone, Debug)]
pub struct Verified {
    pub workload: Workload,
    pub status: CertificateStatus,
}

/// The certificate `peer`'s connection presented, verified.
pub fn authenticate(peer: Option<&PeerInfo>, mesh: &Mesh) -> Result<Verified, Refused> {
    let certs = peer
        .and_then(|p| p.certificates.as_ref())
        .ok_or(Refused::NoCertificate)?;
    verify(certs, mesh)
}

/// Verifies `chain` (leaf first) against the mesh's trust anchors now, as a TLS client
/// certificate for a workload identity of the mesh's trust domain.
pub fn verify(chain: &[CertificateDer<'_>], mesh: &Mesh) -> Result<Verified, Refused> {
    let bad = |e: &dyn std::fmt::Display| Refused::BadCertificate(e.to_string());
    let (leaf, intermediates) = chain.split_first().ok_or(Refused::NoCertificate)?;
    let anchors = anchors(&mesh.trust.anchors_pem).map_err(|e| bad(&e))?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| bad(&e))?;
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let path = cert
        .verify_for_usage(
            algorithms.all,
            &anchors,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| bad(&e))?;
    // The issuer is the certificate that signed the leaf on the verified path, whatever else
    // the chain carries: what `weft ca rotate retire` counts cannot be made up.
    let issuer = path
        .intermediate_certificates()
        .next()
        .map(|c| crate::ca::fingerprint(&c.der()))
        .ok_or_else(|| bad(&"signed by a root itself, not by the mesh's issuer"))?;
    let identity =
        weft_runtime::tls::spiffe_id(leaf).ok_or_else(|| bad(&"it carries no SPIFFE ID"))?;
    let workload = workload(&identity, &mesh.trust_domain)
        .ok_or_else(|| Refused::NotWorkload(identity.clone(), mesh.trust_domain.clone()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(&e))?;
    Ok(Verified {
        workload,
        status: CertificateStatus {
            serial: serial_hex(parsed.raw_serial()),
            expires_at: parsed.validity().not_after.timestamp(),
            issuer,
        },
    })
}

fn anchors(pem: &str) -> Result<Vec<TrustAnchor<'static>>, String> {
    weft_runtime::tls::parse_anchors(pem)
}

/// `spiffe://TRUST_DOMAIN/ns/NS/sa/SA` with valid names, outside the control plane's namespace.
fn workload(id: &str, trust_domain: &str) -> Option<Workload> {
    let rest = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
    let mut parts = rest.strip_prefix('/')?.split('/');
    let (ns_tag, namespace, sa_tag, service_account) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let ok = ns_tag == "ns"
        && sa_tag == "sa"
        && parts.next().is_none()
        && crate::resources::is_dns_label(namespace)
        && crate::resources::is_dns_label(service_account)
        && namespace != crate::ca::SYSTEM_NAMESPACE;
    ok.then(|| Workload {
        identity: id.to_string(),
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
    })
}

/// A serial as `Certify` reports it: the CA's 16 random bytes in hex. DER writes the number in
/// as few bytes as it takes (leading zero bytes dropped), plus a zero byte when its top bit is
/// set; both are undone here.
fn serial_hex(raw: &[u8]) -> String {
    let digits = match raw {
        [0, next, ..] if next & 0x80 != 0 => &raw[1..],
        _ => raw,
    };
    let pad = SERIAL_BYTES.saturating_sub(digits.len());
    std::iter::repeat_n(&0u8, pad)
        .chain(digits)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The length of the serials the CA makes (`ca::leaf_params`).
const SERIAL_BYTES: usize = 16;

/// The node this stream serves: the certificate's namespace and service account, the claimed
/// service (the service account when none is claimed) once [`check_service`] allows it, and the
/// proxy's id, inbound address and version, checked.
pub fn node(claimed: &pb::Node, workload: &Workload, mesh: &Mesh) -> Result<pb::Node, Refused> {
    name("node.id", &claimed.id, true)?;
    name("node.proxy_version", &claimed.proxy_version, false)?;
    for (field, value, own) in [
        ("namespace", &claimed.namespace, &workload.namespace),
        (
            "service_account",
            &claimed.service_account,
            &workload.service_account,
        ),
    ] {
        if value.len() > MAX_NAME_LEN {
            return Err(too_long(field, value.len(), MAX_NAME_LEN));
        }
        if !value.is_empty() && value != own {
            return Err(Refused::WrongClaim {
                field,
                claimed: value.clone(),
                identity: workload.identity.clone(),
            });
        }
    }
    let service = if claimed.service.is_empty() {
        workload.service_account.clone()
    } else {
        claimed.service.clone()
    };
    if !crate::resources::is_dns_label(&service) {
        return Err(Refused::Invalid {
            field: "node.service",
            reason: format!("{:?} is not a valid name", truncated(&service, 64)),
        });
    }
    check_service(mesh, workload, &service)?;
    if claimed.inbound_addr.len() > MAX_ADDR_LEN {
        return Err(too_long(
            "node.inbound_addr",
            claimed.inbound_addr.len(),
            MAX_ADDR_LEN,
        ));
    }
    claimed
        .inbound_addr
        .parse::<SocketAddr>()
        .map_err(|e| Refused::Invalid {
            field: "node.inbound_addr",
            reason: format!("{:?}: {e}", claimed.inbound_addr),
        })?;
    Ok(pb::Node {
        id: claimed.id.clone(),
        namespace: workload.namespace.clone(),
        service_account: workload.service_account.clone(),
        service,
        inbound_addr: claimed.inbound_addr.clone(),
        proxy_version: claimed.proxy_version.clone(),
    })
}

/// A workload serves Service `service` of its namespace only if that Service runs as its service
/// account: the Service's `serviceAccount`, or its name when it sets none or is not declared
/// (yet), the same default the mesh gives its endpoints' identity. Checked when the stream opens
/// and again with every config, since a Service may change its `serviceAccount`.
pub fn check_service(mesh: &Mesh, workload: &Workload, service: &str) -> Result<(), Refused> {
    let expected = mesh.service_account_of(&workload.namespace, service);
    if expected == workload.service_account {
        return Ok(());
    }
    Err(Refused::WrongService {
        service: service.to_string(),
        namespace: workload.namespace.clone(),
        expected,
        trust_domain: mesh.trust_domain.clone(),
        identity: workload.identity.clone(),
    })
}

/// Checks the size of every field of `req` except `node` (see [`node`]), and cuts its
/// `error_detail` to [`MAX_ERROR_DETAIL`].
pub fn check_request(req: &mut pb::DiscoveryRequest) -> Result<(), Refused> {
    for (field, names) in [
        ("subscribe", &req.subscribe),
        ("unsubscribe", &req.unsubscribe),
    ] {
        if names.len() > MAX_NAMES_PER_REQUEST {
            return Err(Refused::Invalid {
                field,
                reason: format!(
                    "{} names in one request; at most {MAX_NAMES_PER_REQUEST}",
                    names.len()
                ),
            });
        }
        if let Some(long) = names.iter().find(|n| n.len() > MAX_NAME_LEN) {
            return Err(too_long(field, long.len(), MAX_NAME_LEN));
        }
    }
    name("version", &req.version, false)?;
    name("response_nonce", &req.response_nonce, false)?;
    if req.error_detail.len() > MAX_ERROR_DETAIL {
        let cut = truncated(&req.error_detail, MAX_ERROR_DETAIL).len();
        req.error_detail.truncate(cut);
    }
    if let Some(c) = &req.certificate {
        name("certificate.serial", &c.serial, false)?;
        name("certificate.issuer", &c.issuer, false)?;
        if c.chain.len() > MAX_CHAIN_CERTS {
            return Err(Refused::Invalid {
                field: "certificate.chain",
                reason: format!("{} certificates; at most {MAX_CHAIN_CERTS}", c.chain.len()),
            });
        }
        if let Some(big) = c.chain.iter().find(|d| d.len() > MAX_CERT_BYTES) {
            return Err(too_long("certificate.chain", big.len(), MAX_CERT_BYTES));
        }
    }
    Ok(())
}

/// A short printable string: at most [`MAX_NAME_LEN`] bytes, no control characters; `required`
/// ones not empty.
fn name(field: &'static str, value: &str, required: bool) -> Result<(), Refused> {
    if value.len() > MAX_NAME_LEN {
        return Err(too_long(field, value.len(), MAX_NAME_LEN));
    }
    if required && value.is_empty() {
        return Err(Refused::Invalid {
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(Refused::Invalid {
            field,
            reason: "must not contain control characters".into(),
        });
    }
    Ok(())
}

fn too_long(field: &'static str, len: usize, max: usize) -> Refused {
    Refused::Invalid {
        field,
        reason: format!("{len} bytes; at most {max}"),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Counts the streams open per certificate and per identity.
#[derive(Default)]
pub struct Streams {
    open: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    by_certificate: HashMap<String, usize>,
    by_identity: HashMap<String, usize>,
}

impl Streams {
    /// Takes a slot for a stream of `peer`, released when the [`Slot`] is dropped.
    pub fn acquire(self: &Arc<Self>, peer: &Verified) -> Result<Slot, Refused> {
        self.acquire_within(peer, MAX_STREAMS_PER_CERTIFICATE, MAX_STREAMS_PER_IDENTITY)
    }

    fn acquire_within(
        self: &Arc<Self>,
        peer: &Verified,
        per_certificate: usize,
        per_identity: usize,
    ) -> Result<Slot, Refused> {
        let certificate = format!("{}/{}", peer.status.issuer, peer.status.serial);
        let identity = peer.workload.identity.clone();
        // A poisoned lock only means another stream panicked while counting; the counts are
        // still whole numbers, so go on with them.
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let on_cert = open.by_certificate.get(&certificate).copied().unwrap_or(0);
        if on_cert >= per_certificate {
            return Err(Refused::TooManyStreams {
                what: format!("certificate {}", peer.status.serial),
                limit: per_certificate,
            });
        }
        let on_identity = open.by_identity.get(&identity).copied().unwrap_or(0);
        if on_identity >= per_identity {
            return Err(Refused::TooManyStreams {
                what: identity,
                limit: per_identity,
            });
        }
        *open.by_certificate.entry(certificate.clone()).or_default() += 1;
        *open.by_identity.entry(identity.clone()).or_default() += 1;
        Ok(Slot {
            streams: self.clone(),
            certificate,
            identity,
        })
    }
}

/// One open stream's place in [`Streams`].
pub struct Slot {
    streams: Arc<Streams>,
    certificate: String,
    identity: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Poisoned or not, the counts are whole: see `acquire_within`.
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Counts {
            by_certificate,
            by_identity,
        } = &mut *open;
        for (map, key) in [
            (by_certificate, &self.certificate),
            (by_identity, &self.identity),
        ] {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(identity: &str, serial: &str) -> Verified {
        Verified {
            workload: workload(identity, "weft.local").unwrap(),
            status: CertificateStatus {
                serial: serial.into(),
                expires_at: 0,
                issuer: "i".into(),
            },
        }
    }

    #[test]
    fn only_workload_identities_of_the_trust_domain_are_workloads() {
        let w = workload("spiffe://weft.local/ns/shop/sa/orders", "weft.local").unwrap();
        assert_eq!(
            (w.namespace.as_str(), w.service_account.as_str()),
            ("shop", "orders")
        );
        for id in [
            "spiffe://other.local/ns/shop/sa/orders",
            "spiffe://weft.local.evil/ns/shop/sa/orders",
            "spiffe://weft.local/ns/weft-system/sa/admin",
            "spiffe://weft.local/ns/shop/sa/orders/extra",
            "spiffe://weft.local/ns/shop/orders",
            "spiffe://weft.local/ns/Shop/sa/orders",
            "spiffe://weft.local/sa/shop/ns/orders",
        ] {
            assert!(workload(id, "weft.local").is_none(), "{id}");
        }
    }

    #[test]
    fn serials_read_as_certify_writes_them() {
        let sixteen = |first: u8| {
            let mut v = vec![first];
            v.extend([0x01; 15]);
            v
        };
        let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let high = sixteen(0x9f);
        let with_sign = [&[0u8][..], &high].concat();
        assert_eq!(
            serial_hex(&with_sign),
            hex(&high),
            "the sign byte is dropped"
        );
        assert_eq!(serial_hex(&sixteen(0x7f)), hex(&sixteen(0x7f)));
        // A serial whose first random byte is 0 is written in 15 bytes.
        assert_eq!(serial_hex(&sixteen(0)[1..]), hex(&sixteen(0)));
        assert_eq!(
            serial_hex(&[&[0u8][..], &sixteen(0)[1..]].concat()),
            hex(&sixteen(0))
        );
    }

    #[test]
    fn error_detail_is_cut_on_a_character_boundary() {
        let mut req = pb::DiscoveryRequest {
            error_detail: "é".repeat(1000),
            ..Default::default()
        };
        check_request(&mut req).unwrap();
        assert_eq!(req.error_detail.len(), 1024);
        assert!(req.error_detail.chars().all(|c| c == 'é'));
    }

    #[test]
    fn streams_are_capped_per_certificate_and_per_identity() {
        let streams = Arc::new(Streams::default());
        let a1 = verified("spiffe://weft.local/ns/shop/sa/a", "1");
        let a2 = verified("spiffe://weft.local/ns/shop/sa/a", "2");
        let b = verified("spiffe://weft.local/ns/shop/sa/b", "3");
        let first = streams.acquire_within(&a1, 2, 3).unwrap();
        let _second = streams.acquire_within(&a1, 2, 3).unwrap();
        assert!(matches!(
            streams.acquire_within(&a1, 2, 3),
            Err(Refused::TooManyStreams { limit: 2, .. })
        ));
        let _third = streams.acquire_within(&a2, 2, 3).unwrap();
        assert!(
            matches!(
                streams.acquire_within(&a2, 2, 3),
                Err(Refused::TooManyStreams { limit: 3, .. })
            ),
            "the identity's cap counts every certificate"
        );
        let _other = streams.acquire_within(&b, 2, 3).unwrap();
        drop(first);
        streams.acquire_within(&a1, 2, 3).unwrap();
    }
}
