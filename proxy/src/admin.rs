//! The admin listener: liveness, readiness, the config in force, metrics, and drain.
//!
//! The probes and metrics answer anyone. Everything else is for an operator on this host:
//! `admin_guard` refuses other Hosts than IP literals and `localhost`, and any request a
//! browser makes for another site. `POST /shutdown` is off unless the `admin-shutdown` setting
//! turns it on, and then answers loopback callers only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::discovery::Discovery;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::shared::Shared;
use weft_runtime::body::{self, Body};

pub struct Admin {
    pub config: Arc<Config>,
    pub discovery: Arc<Discovery>,
    pub identity: Arc<Identity>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

impl Admin {
    /// The admin endpoints over this proxy's config, shared handles and identity; `shutdown`
    /// is what `POST /shutdown` cancels.
    pub fn new(
        config: Arc<Config>,
        shared: &Shared,
        identity: Arc<Identity>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            config,
            discovery: shared.discovery.clone(),
            identity,
            metrics: shared.metrics.clone(),
            shutdown,
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        Ok(self.answer(peer, &req))
    }

    fn answer<B: http_body::Body>(&self, peer: SocketAddr, req: &Request<B>) -> Response<Body> {
        let open = req.method() == Method::GET
            && matches!(req.uri().path(), "/live" | "/ready" | "/metrics");
        if !open {
            if let Err(e) = weft_runtime::admin_guard::check(req, &[], "") {
                return text(e.status(), &e.to_string());
            }
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live"),
            (&Method::GET, "/ready") => {
                if self.shutdown.is_cancelled() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else if self.discovery.has_config() && self.has_identity() {
                    text(StatusCode::OK, "ready")
                } else if !self.has_identity() {
                    // The config stream opens only once the proxy has a certificate.
                    let msg = format!(
                        "not ready: waiting for a certificate from the control plane at {} (the config stream opens once there is one){}",
                        self.config.control_plane,
                        last_attempt(self.identity.last_error())
                    );
                    text(StatusCode::SERVICE_UNAVAILABLE, &msg)
                } else {
                    let msg = format!(
                        "not ready: waiting for config from the control plane at {}{}",
                        self.config.control_plane,
                        last_attempt(self.discovery.last_error())
                    );
                    text(StatusCode::SERVICE_UNAVAILABLE, &msg)
                }
            }
            (&Method::GET, "/config") => {
                let snapshot = self.discovery.snapshot();
                // The snapshot's own fields (version, mesh, services, unknown, inbound, addresses,
                // unknownAddresses), plus this proxy's settings.
                let mut doc = serde_json::to_value(&*snapshot).unwrap_or_default();
                if let Some(obj) = doc.as_object_mut() {
                    obj.insert(
                        "proxy".into(),
                        serde_json::to_value(&*self.config).unwrap_or_default(),
                    );
                }
                match serde_json::to_string_pretty(&doc) {
                    Ok(json) => with_type(StatusCode::OK, json, "application/json"),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (&Method::GET, "/identity") => match self.identity.current() {
                Some(creds) => {
                    let mut doc = serde_json::to_value(&*creds).unwrap_or_default();
                    doc["trustAnchors"] = self.identity.trust_anchors().into();
                    match serde_json::to_string_pretty(&doc) {
                        Ok(json) => with_type(StatusCode::OK, json, "application/json"),
                        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                    }
                }
                None => text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet"),
            },
            (&Method::GET, "/metrics") => {
                let accept = req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let (body, content_type) =
                    weft_runtime::exposition::exposition(self.metrics.encode(), accept);
                with_type(StatusCode::OK, body, content_type)
            }
            (&Method::POST, "/shutdown") if !self.config.admin_shutdown => text(
                StatusCode::FORBIDDEN,
                "POST /shutdown is disabled: start the proxy with --admin-shutdown (WEFT_PROXY_ADMIN_SHUTDOWN=true) to allow it, or send SIGTERM",
            ),
            // admin-addr may be bound off loopback for probes and scrapes; a drain stays the
            // host's business.
            (&Method::POST, "/shutdown") if !peer.ip().is_loopback() => text(
                StatusCode::FORBIDDEN,
                "POST /shutdown answers callers on this host (loopback) only",
            ),
            (&Method::POST, "/shutdown") => {
                tracing::info!(%peer, "drain requested through the admin listener");
                self.shutdown.cancel();
                text(StatusCode::OK, "draining")
            }
            (_, "/live" | "/ready" | "/config" | "/identity" | "/metrics" | "/shutdown") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready, /config, /identity, /metrics, POST /shutdown",
            ),
        }
    }
}

impl Admin {
    /// A proxy is ready only with a certificate.
    fn has_identity(&self) -> bool {
        self.identity.current().is_some()
    }
}

fn last_attempt(error: Option<String>) -> String {
    error.map_or_else(String::new, |e| format!(" (last attempt: {e})"))
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    with_type(status, format!("{msg}\n"), "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut rsp = Response::new(body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    rsp
}
