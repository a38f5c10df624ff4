//! Traffic from the local app: find the service, pick a route, a backend and an endpoint, and
//! carry the request to the endpoint's proxy.
//!
//! The request path, in order: target (`upstream` listener, or the request's authority) →
//! discovery ([`Discovery::resolve`]) → port → HTTPRoute rule → weighted split → load balancer →
//! peer connection (`transport`). Errors from any step reach the caller through
//! [`errors::rescue`] only.

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{self, Body};
use crate::discovery::Discovery;
use crate::errors::{self, ProxyError};
use crate::headers;
use crate::metrics::{Metrics, RequestLabels, OUTBOUND};
use crate::routes::ServiceKey;
use crate::transport::{self, ORIG_PROTO_HEADER};
use crate::upgrade;

/// Where an outbound listener sends its traffic.
#[derive(Clone, Debug)]
pub enum Target {
    /// By the request's authority (the outbound listener; `HTTP_PROXY`).
    Authority,
    /// Always one service port (an `upstream` listener).
    Fixed { service: ServiceKey, port: u16 },
}

pub struct Outbound {
    pub discovery: Arc<Discovery>,
    pub metrics: Arc<Metrics>,
    pub namespace: String,
    pub tls: Arc<crate::tls::Tls>,
}

impl Outbound {
    pub async fn handle(
        self: Arc<Self>,
        target: Target,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        let grpc = errors::is_grpc(&req);
        let mut service = String::new();
        let rsp = match self.proxy(&target, req, &mut service).await {
            Ok(rsp) => rsp,
            Err(e) => {
                tracing::debug!(%service, error = %e, "outbound request failed");
                errors::rescue(&e, grpc)
            }
        };
        let labels = RequestLabels {
            direction: OUTBOUND,
            service,
            code: rsp.status().as_u16(),
            error: error_label(&rsp),
        };
        self.metrics
            .record_request(labels, start.elapsed().as_secs_f64());
        Ok(rsp)
    }

    async fn proxy(
        &self,
        target: &Target,
        mut req: Request<Incoming>,
        service_label: &mut String,
    ) -> Result<Response<Body>, ProxyError> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        let authority = headers::authority(&parts).ok_or_else(|| {
            ProxyError::BadRequest("request has no Host header or authority".into())
        })?;
        let (key, port) = match target {
            Target::Fixed { service, port } => (service.clone(), Some(*port)),
            Target::Authority => {
                let key = ServiceKey::from_host(authority.host(), &self.namespace)
                    .ok_or_else(|| ProxyError::NoRoute(format!("host {:?}", authority.host())))?;
                (key, authority.port_u16())
            }
        };
        *service_label = key.to_string();
        let service = self.discovery.resolve(&key).await?;
        let port = service.port(port).ok_or_else(|| {
            ProxyError::NoRoute(format!(
                "{key} on port {}",
                port.map_or("(none)".into(), |p| p.to_string())
            ))
        })?;
        let rule = service.route(port.port, &parts).ok_or_else(|| {
            ProxyError::NoRoute(format!(
                "{key}: no HTTPRoute rule matches {} {}",
                parts.method,
                parts.uri.path()
            ))
        })?;
        let backend = rule.split.pick().ok_or_else(|| {
            ProxyError::NoEndpoints(format!("{key}: rule {} has no backend", rule.name))
        })?;
        let endpoint = backend
            .balancer
            .pick()
            .ok_or_else(|| ProxyError::NoEndpoints(format!("{} has no endpoints", backend.key)))?
            .clone();

        if headers::is_upgrade(&parts) {
            let req = Request::from_parts(parts, body::boxed(body));
            let tls = Some(endpoint.conn.tls_config(&self.tls)?);
            return upgrade::forward(endpoint.addr, req, client_upgrade, tls).await;
        }

        // HTTP/1.x travels as an HTTP/2 stream, marked so the peer restores it.
        match parts.version {
            Version::HTTP_2 => {}
            Version::HTTP_10 => {
                parts
                    .headers
                    .insert(ORIG_PROTO_HEADER, HeaderValue::from_static("HTTP/1.0"));
            }
            _ => {
                parts
                    .headers
                    .insert(ORIG_PROTO_HEADER, HeaderValue::from_static("HTTP/1.1"));
            }
        }
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        parts.uri = headers::absolute_uri(&parts, &authority)?;
        parts.version = Version::HTTP_2;
        let req = Request::from_parts(parts, body::boxed(body));

        let inflight = endpoint.start();
        let rsp = endpoint
            .conn
            .send(req, transport::DEFAULT_CONNECT_TIMEOUT, &self.tls)
            .await?;
        inflight.responded();
        let (mut parts, body) = rsp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        tracing::trace!(service = %service.key, endpoint = %endpoint.addr, status = %parts.status, "forwarded");
        Ok(Response::from_parts(
            parts,
            body::boxed(body::guarded(body, inflight)),
        ))
    }
}

/// The `error` metric label: the proxy's own error reason, if it made the response up.
pub fn error_label<B>(rsp: &Response<B>) -> String {
    rsp.headers()
        .get(errors::ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
