//! The control plane's HTTP listener (`api-addr`): admin endpoints under `/admin`, and the
//! read-only part of the API that exists so far (`GET /api/v1/proxies`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use weft_proxy::body::{self, Body};

use crate::discovery::Proxies;
use crate::state::State;
use crate::tokens::{Record, Tokens, Workload};

/// The largest request body the API reads.
const MAX_BODY: usize = 1 << 20;

pub struct Api {
    pub state: Arc<State>,
    pub proxies: Arc<Proxies>,
    pub tokens: Arc<Tokens>,
    pub shutdown: CancellationToken,
}

impl Api {
    pub async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        if req.uri().path().starts_with("/api/v1/tokens") {
            return Ok(self.tokens_api(peer, req).await);
        }
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    workload: String,
    #[serde(default)]
    ttl: Option<String>,
}

/// A token as the API shows it: never its secret or the secret's hash.
fn token_view(r: &Record) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "workload": r.workload.to_string(),
        "createdAt": r.created_at,
        "expiresAt": r.expires_at,
        "revoked": r.revoked,
    })
}

impl Api {
    /// `POST /api/v1/tokens`, `GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`. Join tokens
    /// grant identities, so they are served to loopback callers only until the API has
    /// authentication.
    async fn tokens_api(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        if !peer.ip().is_loopback() {
            return text(
                StatusCode::FORBIDDEN,
                "join tokens can be managed only from the control plane's own host (loopback)",
            );
        }
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.trim_end_matches('/')) {
            (Method::GET, "/api/v1/tokens") => {
                let items: Vec<_> = self.tokens.list().iter().map(token_view).collect();
                json(&serde_json::json!({ "items": items }))
            }
            (Method::POST, "/api/v1/tokens") => {
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            &format!("cannot read the request: {e}"),
                        )
                    }
                };
                let create: CreateToken = match serde_json::from_slice(&body) {
                    Ok(c) => c,
                    Err(e) => return text(StatusCode::UNPROCESSABLE_ENTITY, &format!("body: {e}")),
                };
                let workload: Workload = match create.workload.parse() {
                    Ok(w) => w,
                    Err(e) => {
                        return text(StatusCode::UNPROCESSABLE_ENTITY, &format!("workload: {e}"))
                    }
                };
                let ttl = match create
                    .ttl
                    .as_deref()
                    .map(weft_proxy::config::parse_duration)
                {
                    None => Duration::from_secs(24 * 3600),
                    Some(Ok(d)) if d >= Duration::from_secs(1) => d,
                    Some(Ok(_)) => {
                        return text(StatusCode::UNPROCESSABLE_ENTITY, "ttl: must be at least 1s")
                    }
                    Some(Err(e)) => {
                        return text(StatusCode::UNPROCESSABLE_ENTITY, &format!("ttl: {e}"))
                    }
                };
                match self.tokens.create(workload, ttl) {
                    Ok((record, token)) => {
                        tracing::info!(id = %record.id, workload = %record.workload, %peer, "join token created");
                        let mut view = token_view(&record);
                        view["token"] = serde_json::Value::String(token);
                        let mut rsp = json(&view);
                        *rsp.status_mut() = StatusCode::CREATED;
                        rsp
                    }
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (Method::DELETE, p) if p.starts_with("/api/v1/tokens/") => {
                let id = &p["/api/v1/tokens/".len()..];
                match self.tokens.revoke(id) {
                    Ok(true) => {
                        tracing::info!(%id, %peer, "join token revoked");
                        json(&serde_json::json!({ "revoked": id }))
                    }
                    Ok(false) => text(StatusCode::NOT_FOUND, &format!("no join token {id}")),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            _ => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET or POST /api/v1/tokens, DELETE /api/v1/tokens/ID",
            ),
        }
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
