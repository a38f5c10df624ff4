//! `/api/v1/ca`: the CA's state, trust-anchor rotation, and admin client certificates
//! (docs/identity.md). Admin callers only (the router checks); admin certificates only for the
//! holder of the admin token.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use weft_runtime::body::Body;

use super::auth::Caller;
use super::{json, read_json, text, Api, RequestBody};
use crate::ca::{CaError, Phase, Step};
use crate::resources;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    step: Step,
    #[serde(default)]
    force: bool,
}

/// `POST /api/v1/ca/admin-certificates`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminCertificate {
    name: String,
    /// PEM `CERTIFICATE REQUEST` whose only SAN is the admin identity.
    csr: String,
    #[serde(default)]
    ttl: Option<String>,
}

const MAX_ADMIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Api {
    /// `GET /api/v1/ca`: roots, issuer, rotation phase, and which proxies hold certificates
    /// from which issuer. `POST /api/v1/ca/rotate {"step": "prepare|activate|retire"}`.
    pub(super) async fn ca_api<B: RequestBody>(
        &self,
        caller: &Caller,
        req: Request<B>,
    ) -> Response<Body> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/api/v1/ca") => json(&self.ca_status()),
            (Method::POST, "/api/v1/ca/rotate") => {
                let rotate: Rotate = match read_json(req).await {
                    Ok(r) => r,
                    Err(rsp) => return rsp,
                };
                if rotate.step == Step::Retire && !rotate.force {
                    let behind = self.proxies_on_other_issuers();
                    if !behind.is_empty() {
                        return text(
                            StatusCode::CONFLICT,
                            &format!(
                                "{} connected proxies still hold certificates from the previous issuer ({}); \
                                 retiring the old root now would cut them off. Wait for them to renew \
                                 (`weft ca status`), or pass --force",
                                behind.len(),
                                behind.join(", ")
                            ),
                        );
                    }
                }
                match self.ca.rotate(rotate.step) {
                    Ok(()) => {
                        tracing::info!(step = ?rotate.step, by = %caller.who, "CA rotation step");
                        // Proxies hear of it with the next config; do not wait for the watcher.
                        self.state.set_trust(crate::mesh::Trust::of(&self.ca));
                        json(&self.ca_status())
                    }
                    Err(e @ CaError::Rotation(_)) => text(StatusCode::CONFLICT, &e.to_string()),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (Method::POST, "/api/v1/ca/admin-certificates") => {
                let req: AdminCertificate = match read_json(req).await {
                    Ok(r) => r,
                    Err(rsp) => return rsp,
                };
                self.admin_certificate(caller, req)
            }
            _ => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET /api/v1/ca, POST /api/v1/ca/rotate or POST /api/v1/ca/admin-certificates",
            ),
        }
    }

    /// Signs a CSR for the admin identity `spiffe://TD/ns/weft-system/sa/NAME`: a client
    /// certificate for the API.
    fn admin_certificate(&self, caller: &Caller, req: AdminCertificate) -> Response<Body> {
        let unprocessable = |m: String| text(StatusCode::UNPROCESSABLE_ENTITY, &m);
        if !resources::is_dns_label(&req.name) || req.name == crate::ca::CONTROL_PLANE_SA {
            return unprocessable(format!(
                "name: {:?} is not a valid admin name (a DNS label, not {})",
                req.name,
                crate::ca::CONTROL_PLANE_SA
            ));
        }
        let ttl = match req
            .ttl
            .as_deref()
            .map(weft_runtime::duration::parse_duration)
        {
            None => Duration::from_secs(24 * 3600),
            Some(Ok(d)) if (Duration::from_secs(60)..=MAX_ADMIN_TTL).contains(&d) => d,
            Some(Ok(_)) => return unprocessable("ttl: must be 1m to 30d".into()),
            Some(Err(e)) => return unprocessable(format!("ttl: {e}")),
        };
        let csr = match pem::parse(&req.csr) {
            Ok(p) if p.tag() == "CERTIFICATE REQUEST" => p,
            _ => return unprocessable("csr: not a PEM CERTIFICATE REQUEST".into()),
        };
        let identity = format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.state.mesh().trust_domain,
            crate::ca::SYSTEM_NAMESPACE,
            req.name
        );
        match self.ca.sign(csr.contents(), &identity, ttl) {
            Ok(issued) => {
                tracing::info!(%identity, serial = %issued.serial, by = %caller.who, "admin certificate issued");
                json(&serde_json::json!({
                    "identity": identity,
                    "certificateChain": issued.chain_pem,
                    "trustAnchors": self.ca.trust_anchors_pem(),
                    "serial": issued.serial,
                    "expiresAt": weft_runtime::timestamp::rfc3339_seconds(
                        weft_runtime::timestamp::unix_seconds(issued.not_after),
                    ),
                }))
            }
            Err(e @ (CaError::WrongIdentity { .. } | CaError::BadCsr(_))) => {
                unprocessable(format!("csr: {e}"))
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    /// Connected proxies whose certificate came from an issuer other than the current one.
    fn proxies_on_other_issuers(&self) -> Vec<String> {
        let issuer = self.ca.signer().issuer_id.clone();
        self.proxies
            .list()
            .into_iter()
            .filter(|p| p.certificate.as_ref().is_some_and(|c| c.issuer != issuer))
            .map(|p| format!("{} ({})", p.id, p.identity))
            .collect()
    }

    fn ca_status(&self) -> serde_json::Value {
        let signer = self.ca.signer();
        let proxies = self.proxies.list();
        let with_cert: Vec<_> = proxies
            .iter()
            .filter_map(|p| p.certificate.as_ref())
            .collect();
        let current = with_cert
            .iter()
            .filter(|c| c.issuer == signer.issuer_id)
            .count();
        let phase = self.ca.phase();
        let next = match phase {
            Some(Phase::Steady) => "to rotate the trust anchors: weft ca rotate prepare",
            Some(Phase::Prepared) => {
                "once every proxy has the new root (it is pushed with the config): weft ca rotate activate"
            }
            Some(Phase::Activated) => {
                "once no proxy is left on the previous issuer: weft ca rotate retire"
            }
            None => "the CA comes from --ca-cert/--ca-key files; replace them to rotate",
        };
        serde_json::json!({
            "source": match self.ca.source() {
                crate::ca::Source::Managed { .. } => "managed",
                crate::ca::Source::Files { .. } => "files",
            },
            "phase": phase,
            "issuer": signer.issuer,
            "trustAnchors": signer.anchors,
            "proxies": {
                "currentIssuer": current,
                "otherIssuer": with_cert.len() - current,
                "withoutCertificate": proxies.len() - with_cert.len(),
                "onOtherIssuer": self.proxies_on_other_issuers(),
            },
            "next": next,
        })
    }
}
