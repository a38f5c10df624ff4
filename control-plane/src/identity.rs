//! The `Certify` RPC: checks a proxy's proof of identity and has the CA sign its CSR for exactly
//! that identity.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use weft_proto::identity::{self as pb, certify_request::Proof, identity_server};

use crate::ca::{Ca, CaError};
use crate::kubernetes::{ReviewError, TokenReviewer};
use crate::state::State;
use crate::tokens::{TokenError, Tokens};

pub struct IdentityService {
    pub ca: Arc<Ca>,
    pub tokens: Arc<Tokens>,
    pub state: Arc<State>,
    pub kubernetes: Arc<TokenReviewer>,
}

impl IdentityService {
    pub fn into_server(self) -> identity_server::IdentityServer<Self> {
        identity_server::IdentityServer::new(self)
    }
}

#[tonic::async_trait]
impl identity_server::Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        use weft_runtime::trace::{KeyValue, SpanKind};
        let span = self
            .state
            .tracer
            .start(SpanKind::Server, &http::HeaderMap::new());
        let remote = crate::grpc_tls::peer_info(&request).and_then(|p| p.remote);
        let result = self.certify_one(request).await;
        let outcome = if result.is_ok() { "issued" } else { "refused" };
        self.state
            .metrics
            .certificates
            .get_or_create(&crate::metrics::Outcome { outcome })
            .inc();
        if let Some(span) = span {
            let mut attributes = vec![KeyValue::new("weft.outcome", outcome)];
            if let Some(r) = remote {
                attributes.push(KeyValue::new("client.address", r.ip().to_string()));
            }
            let error = match &result {
                Ok(rsp) => {
                    attributes.push(KeyValue::new(
                        "weft.certificate.serial",
                        rsp.get_ref().serial.clone(),
                    ));
                    None
                }
                Err(status) => Some(status.message().to_string()),
            };
            self.state
                .tracer
                .finish(span, "certify".into(), attributes, error);
        }
        result
    }
}

impl IdentityService {
    async fn certify_one(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let remote = crate::grpc_tls::peer_info(&request).and_then(|p| p.remote);
        let req = request.into_inner();
        let workload = match req.proof {
            Some(Proof::JoinToken(token)) => self.tokens.verify(&token).map_err(|e| match e {
                TokenError::Store(_) => Status::internal(e.to_string()),
                _ => Status::unauthenticated(e.to_string()),
            })?,
            Some(Proof::ServiceAccountToken(token)) => {
                self.kubernetes.review(&token).await.map_err(|e| match e {
                    ReviewError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
                    ReviewError::Unavailable(_) => Status::unavailable(e.to_string()),
                })?
            }
            None => {
                return Err(Status::unauthenticated(
                    "no proof of identity: send a join token or a Kubernetes service-account token",
                ))
            }
        };
        if workload.namespace == crate::ca::SYSTEM_NAMESPACE {
            return Err(Status::permission_denied(format!(
                "namespace {} is reserved for the control plane's own identity; no workload may obtain one in it",
                crate::ca::SYSTEM_NAMESPACE
            )));
        }
        let mesh = self.state.mesh();
        let identity = mesh.identity(&workload.namespace, &workload.service_account);
        let ttl = mesh
            .settings
            .certificate_ttl
            .map_or(Duration::from_secs(24 * 3600), |d| d.0);
        let issued = self
            .ca
            .sign(&req.csr, &identity, ttl)
            .map_err(|e| match e {
                CaError::WrongIdentity { .. } => Status::permission_denied(e.to_string()),
                CaError::BadCsr(_) => Status::invalid_argument(e.to_string()),
                _ => Status::internal(e.to_string()),
            })?;
        tracing::info!(%identity, serial = %issued.serial, ?remote, ?ttl, "certificate issued");
        Ok(Response::new(pb::CertifyResponse {
            certificate_chain: issued.chain_pem,
            trust_anchors: self.ca.trust_anchors_pem(),
            expires_at: issued
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            serial: issued.serial,
        }))
    }
}
