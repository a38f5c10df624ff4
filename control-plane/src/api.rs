//! The control plane's HTTP listener (`api-addr`): admin endpoints under `/admin`, and the
//! read-only part of the API that exists so far (`GET /api/v1/proxies`).

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use weft_proxy::body::{self, Body};

use crate::discovery::Proxies;
use crate::state::State;

pub struct Api {
    pub state: Arc<State>,
    pub proxies: Arc<Proxies>,
    pub shutdown: CancellationToken,
}

impl Api {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        Ok(match (req.method(), req.uri().path()) {
            (&Method::GET, "/admin/live") => text(StatusCode::OK, "live"),
            (&Method::GET, "/admin/ready") => {
                if self.shutdown.is_cancelled() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else {
                    text(StatusCode::OK, "ready")
                }
            }
            (&Method::GET, "/admin/metrics") => typed(
                StatusCode::OK,
                self.state.metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            (&Method::GET, "/admin/config") => {
                let mesh = self.state.mesh();
                let resources: Vec<_> = mesh.resources.iter().map(|s| &s.resource).collect();
                json(&serde_json::json!({
                    "version": mesh.generation.to_string(),
                    "trustDomain": mesh.trust_domain,
                    "lastRefusal": self.state.last_error(),
                    "resources": resources,
                }))
            }
            (&Method::POST, "/admin/shutdown") => {
                self.shutdown.cancel();
                text(StatusCode::OK, "draining")
            }
            (&Method::GET, "/api/v1/proxies") => {
                json(&serde_json::json!({ "items": self.proxies.list() }))
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        })
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    typed(status, format!("{msg}\n"), "text/plain; charset=utf-8")
}

fn json(v: &serde_json::Value) -> Response<Body> {
    match serde_json::to_string_pretty(v) {
        Ok(s) => typed(StatusCode::OK, s, "application/json"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn typed(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut rsp = Response::new(body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    rsp
}
