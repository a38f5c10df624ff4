//! The control plane's HTTP listener (`api-addr`): admin endpoints under `/admin`, and the API
//! under `/api/v1` (docs/api.md; its OpenAPI document at `/api/v1/openapi.json`).
//!
//! This file is the router and the resource endpoints. Every request but the probes,
//! `/admin/metrics` and the OpenAPI document first passes `weft_runtime::admin_guard` (allowed
//! Hosts, no browser requests, JSON or YAML bodies), then `auth` (who calls, and whether they
//! may); join tokens are in `tokens`, the CA in `ca`; each connection is accepted (plain or
//! TLS) in `listener`.

mod auth;
mod ca;
mod listener;
#[cfg(test)]
mod tests;
mod tokens;

pub use listener::serve;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio_util::sync::CancellationToken;
use weft_runtime::body::{self, Body};

pub use self::auth::{AdminToken, AdminTokenError, ADMIN_TOKEN_FILE};
use self::auth::{Caller, Denied};
use crate::ca::Ca;
use crate::discovery::Proxies;
use crate::resources;
use crate::state::{Action, State, Write, WriteError, WriteOutcome, REQUEST_SOURCE};
use crate::tokens::Tokens;

/// What the API reads requests from: hyper's `Incoming`, or any body in tests.
pub trait RequestBody:
    http_body::Body<Data = bytes::Bytes, Error: std::error::Error + Send + Sync + 'static> + Send
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: std::error::Error + Send + Sync + 'static>
        + Send
{
}

/// The largest request body the API reads.
const MAX_BODY: usize = 1 << 20;

pub struct Api {
    pub state: Arc<State>,
    pub ca: Arc<Ca>,
    pub proxies: Arc<Proxies>,
    pub tokens: Arc<Tokens>,
    pub shutdown: CancellationToken,
    /// The admin token (`DATA_DIR/admin-token`).
    pub admin_token: AdminToken,
    /// Bearer tokens for other callers (`weft serve --api-token-file`), re-read on use so
    /// that a token can be added or revoked without a restart.
    pub api_tokens: Option<PathBuf>,
    /// Host names callers may reach the API by, besides IP literals and `localhost`
    /// (`weft serve --api-host`, and the control plane's Service names).
    pub hosts: Vec<String>,
}

/// The connection a request came on.
#[derive(Clone, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    /// The SPIFFE ID of the client certificate, on a TLS connection that presented one (it
    /// chains to the mesh's trust anchors: the handshake checked).
    pub client_identity: Option<String>,
}

impl Conn {
    pub fn plain(peer: SocketAddr) -> Self {
        Self {
            peer,
            client_identity: None,
        }
    }
}

impl Api {
    pub async fn handle<B: RequestBody>(
        self: Arc<Self>,
        conn: Conn,
        req: Request<B>,
    ) -> Result<Response<Body>, Infallible> {
        if let Some(rsp) = self.open(&req) {
            return Ok(rsp);
        }
        let caller = match self.admit(&conn, &req) {
            Ok(c) => c,
            Err(denied) => return Ok(denied.response()),
        };
        Ok(self.route(&caller, req).await)
    }

    /// The endpoints that answer anyone, whatever the Host: probes, Prometheus, and the OpenAPI
    /// document (the same for everyone, and in the source).
    fn open<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        if req.method() != Method::GET {
            return None;
        }
        Some(match req.uri().path() {
            "/admin/live" => text(StatusCode::OK, "live"),
            "/admin/ready" if self.shutdown.is_cancelled() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            }
            "/admin/ready" => text(StatusCode::OK, "ready"),
            "/admin/metrics" => {
                let accept = req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let (body, content_type) =
                    weft_runtime::exposition::exposition(self.state.metrics.encode(), accept);
                typed(StatusCode::OK, body, content_type)
            }
            "/api/v1/openapi.json" => typed(
                StatusCode::OK,
                crate::openapi::DOCUMENT.to_string(),
                "application/json",
            ),
            _ => return None,
        })
    }

    /// Checks the request's shape, then who sends it and whether they may.
    fn admit<B: RequestBody>(&self, conn: &Conn, req: &Request<B>) -> Result<Caller, Denied> {
        weft_runtime::admin_guard::check(
            req,
            &self.hosts,
            ", or start weft serve with --api-host NAME for a name callers use",
        )?;
        let caller = self.authenticate(conn, req)?;
        auth::authorize(&caller, req.method(), req.uri().path())?;
        Ok(caller)
    }

    async fn route<B: RequestBody>(&self, caller: &Caller, req: Request<B>) -> Response<Body> {
        let path = req.uri().path();
        if path.starts_with("/api/v1/tokens") {
            return self.tokens_api(caller, req).await;
        }
        if path.starts_with("/api/v1/ca") {
            return self.ca_api(caller, req).await;
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/admin/config") => {
                let mesh = self.state.mesh();
                let resources: Vec<_> = mesh.resources.iter().map(|s| &s.resource).collect();
                json(&serde_json::json!({
                    "version": mesh.generation.to_string(),
                    "trustDomain": mesh.trust_domain,
                    "lastRefusal": self.state.last_error(),
                    "refusedFiles": self.state.refused_files(),
                    "resources": resources,
                }))
            }
            (&Method::POST, "/admin/shutdown") => {
                tracing::info!(by = %caller.who, "shutdown requested through the API");
                self.shutdown.cancel();
                text(StatusCode::OK, "draining")
            }
            (&Method::GET, "/api/v1/proxies") => {
                json(&serde_json::json!({ "items": self.proxies.list() }))
            }
            (&Method::GET, "/api/v1/audit") => {
                let limit = query(&req, "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(100);
                let state = self.state.clone();
                match tokio::task::spawn_blocking(move || state.audit(limit)).await {
                    Ok(Ok(items)) => json(&serde_json::json!({ "items": items })),
                    Ok(Err(e)) => write_error(&e),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (&Method::POST, "/api/v1/apply") => self.apply(req, caller).await,
            (_, p) if p.starts_with("/api/v1/") => self.resources_api(req, caller).await,
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// `GET /api/v1/{kind}[?namespace=NS]`, and `GET`, `PUT` and `DELETE
    /// /api/v1/{kind}/{namespace}/{name}`: the resources in force, and writes of one. `{kind}` is
    /// the kind in any case or its lowercase plural.
    async fn resources_api<B: RequestBody>(
        &self,
        req: Request<B>,
        caller: &Caller,
    ) -> Response<Body> {
        let path = req.uri().path().trim_start_matches("/api/v1/").to_string();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some(kind) = parts.first().and_then(|k| resources::kind_named(k)) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!(
                    "unknown kind {:?}; the API serves proxies, {}",
                    parts.first().unwrap_or(&""),
                    resources::known_kinds()
                ),
            );
        };
        match (req.method().clone(), parts.as_slice()) {
            (Method::GET, _) => {}
            (Method::PUT, [_, ns, name]) => {
                let (ns, name) = (ns.to_string(), name.to_string());
                return self.put(req, kind, &ns, &name, caller).await;
            }
            (Method::DELETE, [_, ns, name]) => {
                let write = Write::Delete {
                    id: format!("{kind}/{ns}/{name}"),
                    resource_version: query(&req, "resourceVersion").map(str::to_string),
                };
                return match self.write(write, caller).await {
                    Ok(_) => json(&serde_json::json!({ "deleted": format!("{kind}/{ns}/{name}") })),
                    Err(e) => write_error(&e),
                };
            }
            _ => {
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use GET /api/v1/{kind}, GET, PUT or DELETE /api/v1/{kind}/{namespace}/{name}, POST /api/v1/apply",
                )
            }
        }
        let mesh = self.state.mesh();
        let mut of_kind = mesh
            .resources
            .iter()
            .map(|s| &s.resource)
            .filter(|r| r.kind() == kind);
        match parts.as_slice() {
            [_] => {
                let ns = query(&req, "namespace");
                let items: Vec<_> = of_kind
                    .filter(|r| ns.is_none_or(|ns| r.metadata().namespace == ns))
                    .collect();
                json(&serde_json::json!({ "kind": kind, "items": items }))
            }
            [_, ns, name] => match of_kind.find(|r| {
                let m = r.metadata();
                m.namespace == *ns && m.name == *name
            }) {
                Some(r) => match serde_json::to_value(r) {
                    Ok(v) => json(&v),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                },
                None => text(
                    StatusCode::NOT_FOUND,
                    &format!("{kind} {ns}/{name} not found"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "expected /api/v1/{kind} or /api/v1/{kind}/{namespace}/{name}",
            ),
        }
    }
    /// Runs a write off the async threads: it waits for the store's fsync.
    async fn write(&self, write: Write, caller: &Caller) -> Result<Vec<WriteOutcome>, WriteError> {
        let (state, who) = (self.state.clone(), caller.who.clone());
        tokio::task::spawn_blocking(move || state.write(write, &who))
            .await
            .unwrap_or_else(|e| Err(WriteError::Store(crate::store::StoreError::other(e))))
    }

    /// `POST /api/v1/apply`: multi-document YAML or JSON, all or nothing.
    /// With `?dryRun=true` (or `All`, as Kubernetes spells it), everything is checked and the
    /// results say what would happen, but nothing is stored.
    async fn apply<B: RequestBody>(&self, req: Request<B>, caller: &Caller) -> Response<Body> {
        let dry_run = query(&req, "dryRun").is_some_and(|v| v == "true" || v == "All");
        let body = match read_text(req).await {
            Ok(t) => t,
            Err(rsp) => return rsp,
        };
        // Parsing up to 1 MiB of YAML is CPU work: off the async threads.
        let Ok((items, problems)) =
            tokio::task::spawn_blocking(move || resources::parse_each(REQUEST_SOURCE, &body)).await
        else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "the parser failed");
        };
        if items.is_empty() && problems.is_empty() {
            return error_json(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "the request holds no resources",
                &[],
            );
        }
        let write = Write::Apply {
            items,
            problems,
            dry_run,
        };
        match self.write(write, caller).await {
            Ok(outcomes) => json(&serde_json::json!({ "results": outcomes, "dryRun": dry_run })),
            Err(e) => write_error(&e),
        }
    }

    /// `PUT /api/v1/{kind}/{namespace}/{name}`: one resource, created or replaced. A body
    /// without `metadata.namespace` takes the URL's.
    async fn put<B: RequestBody>(
        &self,
        req: Request<B>,
        kind: &str,
        ns: &str,
        name: &str,
        caller: &Caller,
    ) -> Response<Body> {
        let body = match read_text(req).await {
            Ok(t) => t,
            Err(rsp) => return rsp,
        };
        let url_ns = ns.to_string();
        let parsed = tokio::task::spawn_blocking(move || {
            let body = with_namespace(&body, &url_ns).unwrap_or(body);
            resources::parse(REQUEST_SOURCE, &body)
        })
        .await;
        let mut items = match parsed {
            Ok(Ok(items)) => items,
            Ok(Err(problems)) => return write_error(&WriteError::Invalid(problems)),
            Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "the parser failed"),
        };
        let url_id = format!("{kind}/{ns}/{name}");
        let item = match items.len() {
            1 => items.remove(0),
            n => {
                return error_json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    &format!("PUT takes one resource, the request holds {n}; use POST /api/v1/apply for several"),
                    &[],
                )
            }
        };
        if item.resource.id() != url_id {
            return error_json(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                &format!("the body is {}, the URL names {url_id}", item.resource.id()),
                &[],
            );
        }
        let write = Write::Apply {
            items: vec![item],
            problems: Vec::new(),
            dry_run: false,
        };
        match self.write(write, caller).await {
            Ok(mut outcomes) => {
                let Some(o) = outcomes.pop() else {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the write had no outcome",
                    );
                };
                let mut rsp = match serde_json::to_value(&o.resource) {
                    Ok(v) => json(&v),
                    Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                };
                if o.action == Action::Created {
                    *rsp.status_mut() = StatusCode::CREATED;
                }
                rsp
            }
            Err(e) => write_error(&e),
        }
    }
}

/// Reads a JSON request body, or the response that says why it cannot be.
async fn read_json<T: serde::de::DeserializeOwned, B: RequestBody>(
    req: Request<B>,
) -> Result<T, Response<Body>> {
    let body = read_body(req).await.map_err(|e| {
        text(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request: {e}"),
        )
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, &format!("body: {e}")))
}

/// The request body, at most [`MAX_BODY`] bytes.
async fn read_body<B: RequestBody>(req: Request<B>) -> Result<bytes::Bytes, String> {
    Ok(Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes())
}

/// The value of `name` in the request's query string.
fn query<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    })
}

/// Reads a request body as text (YAML or JSON), or the response that says why it cannot be.
async fn read_text<B: RequestBody>(req: Request<B>) -> Result<String, Response<Body>> {
    let bad = |m: &str| error_json(StatusCode::BAD_REQUEST, "bad-request", m, &[]);
    let body = read_body(req).await.map_err(|e| {
        bad(&format!(
            "cannot read the request (at most {MAX_BODY} bytes): {e}"
        ))
    })?;
    String::from_utf8(body.to_vec()).map_err(|_| bad("the request is not UTF-8 text"))
}

/// `text` with `metadata.namespace: ns` added when it is one document that has none, as JSON
/// (which is YAML). It is read under the parser's budgets: a text they refuse is left as it is,
/// for `parse` to say what is wrong with it.
fn with_namespace(text: &str, ns: &str) -> Option<String> {
    let mut docs = resources::documents(text);
    if docs.len() != 1 {
        return None;
    }
    let mut doc = docs.pop()?.ok()?;
    let meta = doc.get_mut("metadata")?.as_object_mut()?;
    if meta.contains_key("namespace") {
        return None;
    }
    meta.insert("namespace".into(), ns.into());
    serde_json::to_string(&doc).ok()
}

fn error_json(
    status: StatusCode,
    reason: &str,
    message: &str,
    problems: &[resources::Problem],
) -> Response<Body> {
    let problems: Vec<_> = problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "document": p.document,
                "resource": p.resource,
                "field": p.field,
                "message": p.message,
            })
        })
        .collect();
    let mut rsp = json(&serde_json::json!({
        "reason": reason,
        "message": message,
        "problems": problems,
    }));
    *rsp.status_mut() = status;
    rsp
}

fn write_error(e: &WriteError) -> Response<Body> {
    let status = match e {
        WriteError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        WriteError::Conflict(_) | WriteError::FileManaged(_) => StatusCode::CONFLICT,
        WriteError::NotFound(_) => StatusCode::NOT_FOUND,
        WriteError::NoStore | WriteError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    match e {
        WriteError::Invalid(problems) => error_json(
            status,
            e.reason(),
            &format!(
                "{} problem{}; nothing was changed",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
            problems,
        ),
        e => error_json(status, e.reason(), &e.to_string(), &[]),
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
