//! The control plane's HTTP listener (`api-addr`): admin endpoints under `/admin`, and the API
//! under `/api/v1` (docs/api.md; its OpenAPI document at `/api/v1/openapi.json`).
//!
//! Callers on loopback need no credentials. Off loopback, everything but the probes and
//! `/admin/metrics` needs a bearer token from `--api-token-file`; join tokens and the CA stay
//! loopback-only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio_util::sync::CancellationToken;
use weft_proxy::body::{self, Body};

use crate::ca::{Ca, CaError, Phase, Step};
use crate::discovery::Proxies;
use crate::resources;
use crate::state::{Action, State, Write, WriteError, WriteOutcome, REQUEST_SOURCE};
use crate::tokens::{Record, Tokens, Workload};

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
    /// Bearer tokens for callers off loopback (`weft serve --api-token-file`), re-read on use so
    /// that a token can be added or revoked without a restart.
    pub api_tokens: Option<PathBuf>,
}

/// Who made a request, as the audit log names them.
struct Caller(String);

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

/// The name of an admin identity: `spiffe://TRUST_DOMAIN/ns/weft-system/sa/NAME`, any name
/// but the control plane's own. Only `weft admin-cert` (on the control plane's host) can obtain
/// one: workloads are refused identities in that namespace.
fn admin_name<'a>(identity: &'a str, trust_domain: &str) -> Option<&'a str> {
    let name = identity
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix("/ns/")?
        .strip_prefix(crate::ca::SYSTEM_NAMESPACE)?
        .strip_prefix("/sa/")?;
    (crate::resources::is_dns_label(name) && name != crate::ca::CONTROL_PLANE_SA).then_some(name)
}

impl Api {
    pub async fn handle<B: RequestBody>(
        self: Arc<Self>,
        conn: Conn,
        req: Request<B>,
    ) -> Result<Response<Body>, Infallible> {
        let peer = conn.peer;
        let path = req.uri().path();
        // Probes and Prometheus need no credentials; everything else off loopback does.
        let open = req.method() == Method::GET
            && matches!(path, "/admin/live" | "/admin/ready" | "/admin/metrics");
        let caller = if peer.ip().is_loopback() {
            Caller(format!("loopback {peer}"))
        } else if open {
            Caller(format!("anonymous {peer}"))
        } else if let Some(id) = &conn.client_identity {
            let trust_domain = self.state.mesh().trust_domain.clone();
            match admin_name(id, &trust_domain) {
                Some(name) => Caller(format!("admin {name} (client certificate) from {peer}")),
                None => {
                    return Ok(error_json(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        &format!("{id} is not an admin identity: the API takes client certificates for spiffe://{trust_domain}/ns/{}/sa/NAME, made with `weft admin-cert`", crate::ca::SYSTEM_NAMESPACE),
                        &[],
                    ))
                }
            }
        } else {
            match self.authenticate(peer, &req) {
                Ok(c) => c,
                Err(why) => return Ok(unauthorized(why)),
            }
        };
        // Tokens grant identities and the CA decides what is trusted: callers on the control
        // plane's own host only, whatever their credentials.
        let privileged = path.starts_with("/api/v1/tokens") || path.starts_with("/api/v1/ca");
        if privileged && !peer.ip().is_loopback() {
            return Ok(text(
                StatusCode::FORBIDDEN,
                "join tokens and the CA can be managed only from the control plane's own host (loopback)",
            ));
        }
        if path.starts_with("/api/v1/tokens") {
            return Ok(self.tokens_api(peer, req).await);
        }
        if path.starts_with("/api/v1/ca") {
            return Ok(self.ca_api(peer, req).await);
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
            (&Method::GET, "/admin/metrics") => {
                let accept = req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let (body, content_type) =
                    weft_proxy::metrics::exposition(self.state.metrics.encode(), accept);
                typed(StatusCode::OK, body, content_type)
            }
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
            (&Method::GET, "/api/v1/openapi.json") => typed(
                StatusCode::OK,
                crate::openapi::DOCUMENT.to_string(),
                "application/json",
            ),
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
            (&Method::POST, "/api/v1/apply") => self.apply(req, &caller).await,
            (_, p) if p.starts_with("/api/v1/") => self.resources_api(req, &caller).await,
            _ => text(StatusCode::NOT_FOUND, "not found"),
        })
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
    /// Checks `Authorization: Bearer TOKEN` against `--api-token-file`; the error says why not.
    fn authenticate<B>(&self, peer: SocketAddr, req: &Request<B>) -> Result<Caller, &'static str> {
        let Some(file) = &self.api_tokens else {
            return Err("this API accepts no credentials (weft serve has no --api-token-file)");
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or("no bearer token")?;
        let tokens = std::fs::read_to_string(file).map_err(|e| {
            tracing::error!(file = %file.display(), error = %e, "cannot read the API token file");
            "the token file cannot be read"
        })?;
        match crate::tokens::check_api_token(&tokens, presented) {
            Some(user) => Ok(Caller(format!("user {user} (bearer token) from {peer}"))),
            None => {
                tracing::warn!(%peer, "API request with an unknown bearer token");
                Err("unknown bearer token")
            }
        }
    }

    /// Runs a write off the async threads: it waits for the store's fsync.
    async fn write(&self, write: Write, caller: &Caller) -> Result<Vec<WriteOutcome>, WriteError> {
        let (state, who) = (self.state.clone(), caller.0.clone());
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
    async fn tokens_api<B: RequestBody>(
        &self,
        peer: SocketAddr,
        req: Request<B>,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.trim_end_matches('/')) {
            (Method::GET, "/api/v1/tokens") => {
                let items: Vec<_> = self.tokens.list().iter().map(token_view).collect();
                json(&serde_json::json!({ "items": items }))
            }
            (Method::POST, "/api/v1/tokens") => {
                let create: CreateToken = match read_json(req).await {
                    Ok(c) => c,
                    Err(rsp) => return rsp,
                };
                let workload: Workload = match create.workload.parse() {
                    Ok(Workload { namespace, .. }) if namespace == crate::ca::SYSTEM_NAMESPACE => {
                        return text(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            &format!(
                                "workload: namespace {namespace} is reserved for the control plane"
                            ),
                        )
                    }
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
    async fn ca_api<B: RequestBody>(&self, peer: SocketAddr, req: Request<B>) -> Response<Body> {
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
                        tracing::info!(step = ?rotate.step, %peer, "CA rotation step");
                        // Proxies hear of it with the next config; do not wait for the watcher.
                        self.state.set_trust(crate::trust_of(&self.ca));
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
                self.admin_certificate(peer, req)
            }
            _ => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET /api/v1/ca, POST /api/v1/ca/rotate or POST /api/v1/ca/admin-certificates",
            ),
        }
    }

    /// Signs a CSR for the admin identity `spiffe://TD/ns/weft-system/sa/NAME`: a client
    /// certificate for the API off loopback. Loopback callers only, like the rest of `/ca`.
    fn admin_certificate(&self, peer: SocketAddr, req: AdminCertificate) -> Response<Body> {
        let unprocessable = |m: String| text(StatusCode::UNPROCESSABLE_ENTITY, &m);
        if !resources::is_dns_label(&req.name) || req.name == crate::ca::CONTROL_PLANE_SA {
            return unprocessable(format!(
                "name: {:?} is not a valid admin name (a DNS label, not {})",
                req.name,
                crate::ca::CONTROL_PLANE_SA
            ));
        }
        let ttl = match req.ttl.as_deref().map(weft_proxy::config::parse_duration) {
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
                tracing::info!(%identity, serial = %issued.serial, %peer, "admin certificate issued");
                json(&serde_json::json!({
                    "identity": identity,
                    "certificateChain": issued.chain_pem,
                    "trustAnchors": self.ca.trust_anchors_pem(),
                    "serial": issued.serial,
                    "expiresAt": issued.not_after
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
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

/// 401, and how to authenticate.
fn unauthorized(why: &str) -> Response<Body> {
    let mut rsp = error_json(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &format!("{why}: callers off loopback need `Authorization: Bearer TOKEN` with a token from the control plane's --api-token-file (`weft --token-file`)"),
        &[],
    );
    rsp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"weft\""),
    );
    rsp
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api(dir: &std::path::Path) -> Arc<Api> {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let ca = Arc::new(Ca::load_or_create(dir, "weft.local").unwrap());
        let store = crate::store::Store::open(dir).unwrap();
        let state = State::open(
            Vec::new(),
            Some(store),
            "weft.local".into(),
            crate::trust_of(&ca),
            metrics,
        )
        .unwrap();
        Arc::new(Api {
            state: Arc::new(state),
            ca,
            proxies: Arc::default(),
            tokens: Arc::new(Tokens::open(dir).unwrap()),
            shutdown: CancellationToken::new(),
            api_tokens: None,
        })
    }

    async fn call(
        api: &Arc<Api>,
        peer: &str,
        method: Method,
        path: &str,
        body: &str,
    ) -> (u16, String) {
        call_as(api, peer, "", method, path, body).await
    }

    async fn call_as(
        api: &Arc<Api>,
        peer: &str,
        token: &str,
        method: Method,
        path: &str,
        body: &str,
    ) -> (u16, String) {
        let mut req = Request::builder().method(method).uri(path);
        if !token.is_empty() {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let rsp = api
            .clone()
            .handle(Conn::plain(peer.parse().unwrap()), req)
            .await
            .unwrap();
        let status = rsp.status().as_u16();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn tokens_and_the_ca_are_refused_to_callers_off_loopback() {
        let dir = std::env::temp_dir().join(format!("weft-api-test-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = dir.join("api-tokens");
        std::fs::write(&tokens, "s3cret,ops\n").unwrap();
        let mut api = api(&dir);
        Arc::get_mut(&mut api).unwrap().api_tokens = Some(tokens);
        let create = r#"{"workload": "shop/orders"}"#;
        for (method, path, body) in [
            (Method::POST, "/api/v1/tokens", create),
            (Method::GET, "/api/v1/tokens", ""),
            (Method::DELETE, "/api/v1/tokens/abc", ""),
            (Method::GET, "/api/v1/ca", ""),
            (Method::POST, "/api/v1/ca/rotate", r#"{"step": "prepare"}"#),
        ] {
            // Even with a valid API token.
            let (status, text) =
                call_as(&api, "10.1.2.3:40000", "s3cret", method.clone(), path, body).await;
            assert_eq!(status, 403, "{method} {path}: {text}");
            assert!(text.contains("loopback"), "{text}");
            let (status, _) = call(&api, "10.1.2.3:40000", method.clone(), path, body).await;
            assert_eq!(status, 401, "{method} {path}");
        }
        assert!(api.tokens.list().is_empty(), "nothing was created");
        assert_eq!(api.ca.phase(), Some(Phase::Steady), "nothing was rotated");
        // The same calls from loopback work.
        let (status, text) = call(
            &api,
            "127.0.0.1:40000",
            Method::POST,
            "/api/v1/tokens",
            create,
        )
        .await;
        assert_eq!(status, 201, "{text}");
        let (status, text) = call(&api, "[::1]:40000", Method::GET, "/api/v1/ca", "").await;
        assert_eq!(status, 200, "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    const SERVICE: &str = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: orders, namespace: shop}\nspec: {ports: [{port: 80}]}\n";

    #[tokio::test]
    async fn writes_off_loopback_need_a_bearer_token() {
        let dir = std::env::temp_dir().join(format!("weft-api-test-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = dir.join("api-tokens");
        std::fs::write(&tokens, "# ops team\ns3cret,ops\n").unwrap();
        let mut api = api(&dir);
        let off = "10.1.2.3:40000";
        // No --api-token-file: nothing but probes and metrics off loopback.
        for (method, path, body) in [
            (Method::POST, "/api/v1/apply", SERVICE),
            (Method::PUT, "/api/v1/services/shop/orders", SERVICE),
            (Method::DELETE, "/api/v1/services/shop/orders", ""),
            (Method::GET, "/api/v1/services", ""),
            (Method::POST, "/admin/shutdown", ""),
        ] {
            let (status, text) = call(&api, off, method.clone(), path, body).await;
            assert_eq!(status, 401, "{method} {path}: {text}");
            assert!(text.contains("--api-token-file"), "{text}");
        }
        assert!(!api.shutdown.is_cancelled());
        for path in ["/admin/ready", "/admin/live", "/admin/metrics"] {
            assert_eq!(
                call(&api, off, Method::GET, path, "").await.0,
                200,
                "{path}"
            );
        }
        Arc::get_mut(&mut api).unwrap().api_tokens = Some(tokens);
        for token in ["", "wrong", "ops", "# ops team"] {
            let (status, text) =
                call_as(&api, off, token, Method::POST, "/api/v1/apply", SERVICE).await;
            assert_eq!(status, 401, "token {token:?}: {text}");
        }
        assert!(api.state.mesh().resources.is_empty(), "nothing was written");
        let (status, text) =
            call_as(&api, off, "s3cret", Method::POST, "/api/v1/apply", SERVICE).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(api.state.mesh().resources.len(), 1);
        let (_, audit) = call(&api, "127.0.0.1:1", Method::GET, "/api/v1/audit", "").await;
        assert!(
            audit.contains("user ops (bearer token) from 10.1.2.3:40000"),
            "{audit}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn only_admin_identities_may_use_the_api_with_a_client_certificate() {
        let dir = std::env::temp_dir().join(format!("weft-api-test-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let api = api(&dir);
        let as_identity = |id: &str| {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/api/v1/apply")
                .body(http_body_util::Full::new(bytes::Bytes::from(SERVICE)))
                .unwrap();
            let conn = Conn {
                peer: "10.1.2.3:40000".parse().unwrap(),
                client_identity: Some(id.to_string()),
            };
            let api = api.clone();
            async move { api.handle(conn, req).await.unwrap().status().as_u16() }
        };
        for id in [
            "spiffe://weft.local/ns/shop/sa/orders",
            "spiffe://weft.local/ns/weft-system/sa/weft-control-plane",
            "spiffe://other.domain/ns/weft-system/sa/ops",
            "spiffe://weft.local/ns/weft-system/sa/",
        ] {
            assert_eq!(as_identity(id).await, 403, "{id}");
        }
        assert!(api.state.mesh().resources.is_empty());
        assert_eq!(
            as_identity("spiffe://weft.local/ns/weft-system/sa/ops").await,
            200
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn alias_bombs_are_refused_on_every_write_path() {
        let dir = std::env::temp_dir().join(format!("weft-api-test-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let api = api(&dir);
        // One anchor of 1000 scalars aliased 3000 times: 9 KB that used to expand to 3 million
        // nodes before any field was looked at.
        let bomb = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata:\n  name: orders\n  annotations: {{a: &a [{}], b: [{}]}}\nspec: {{ports: [{{port: 80}}]}}\n",
            vec!["x"; 1000].join(","),
            vec!["*a"; 3000].join(",")
        );
        for (method, path) in [
            (Method::POST, "/api/v1/apply?dryRun=true"),
            (Method::POST, "/api/v1/apply"),
            (Method::PUT, "/api/v1/services/shop/orders"),
        ] {
            let started = std::time::Instant::now();
            let (status, text) = call(&api, "127.0.0.1:1", method.clone(), path, &bomb).await;
            assert_eq!(status, 422, "{method} {path}: {text}");
            assert!(
                text.contains("anchors and aliases are not supported"),
                "{method} {path}: {text}"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_millis(500),
                "{method} {path}: {:?}",
                started.elapsed()
            );
        }
        assert!(api.state.mesh().resources.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "api",
                "v1",
                "services",
                "httproutes",
                "Service",
                "meshconfigs",
                "apply",
                "audit",
                "proxies",
                "tokens",
                "ca",
                "rotate",
                "admin-certificates",
                "admin",
                "config",
                "shop",
                "default",
                "pay",
                "..",
                "",
                "%00",
                "openapi.json",
            ])
            .prop_map(String::from),
            "[a-zA-Z0-9%._~-]{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the method, path, body and caller, the API answers (no panic) and never with
        /// a server error: bad input is the caller's problem, named in a 4xx.
        #[test]
        fn any_request_gets_an_answer_that_is_not_a_server_error(
            method in prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "PATCH"]),
            segments in prop::collection::vec(segment(), 0..6),
            query in "[a-zA-Z=&0-9]{0,16}",
            body in prop_oneof![
                any::<String>(),
                Just(SERVICE.to_string()),
                "[{}\\[\\]:, a-z0-9\"\n-]{0,200}",
            ],
            loopback in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = std::env::temp_dir().join(format!("weft-api-prop-{:x}", rand::random::<u64>()));
            std::fs::create_dir_all(&dir).unwrap();
            let api = api(&dir);
            let path = format!("/{}?{query}", segments.join("/"));
            let peer = if loopback { "127.0.0.1:1" } else { "10.0.0.1:1" };
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let (status, text) = rt.block_on(async {
                let Ok(req) = Request::builder()
                    .method(method)
                    .uri(&path)
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                else {
                    return (400, String::new()); // not a URI hyper would have accepted
                };
                let rsp = api.clone().handle(Conn::plain(peer.parse().unwrap()), req).await.unwrap();
                let status = rsp.status().as_u16();
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            });
            drop(api);
            std::fs::remove_dir_all(&dir).unwrap();
            prop_assert!(status < 500, "{path}: {status} {text}");
        }
    }
}
