//! Traffic from peer proxies to the local app.
//!
//! A connection that opens with a TLS record is mutual TLS: the caller's chain is verified
//! against the trust anchors and its SPIFFE ID is passed to the app in `x-weft-client-identity`.
//! A plaintext connection is refused when MeshConfig `mtls` is `strict` (the default) and this
//! proxy has a certificate. Inside, each connection is classified by its first bytes
//! (`transport::detect`): opaque TCP is relayed to the app (`inbound/opaque.rs` decides which
//! may be); HTTP/2 and HTTP/1.1 are served, and each request goes to the app in the HTTP version
//! the calling app used (restored from `weft-orig-proto`), over a pooled connection
//! (`inbound/app.rs`).
//!
//! A connection iptables redirected here (transparent interception) goes to the app at the
//! address its caller dialled — this pod's own IP and that port — rather than `app-addr`; one to
//! an address that is not this pod's is refused. A redirected plaintext connection under
//! `permissive` comes from outside the mesh: its protocol is detected (`detect.rs`), HTTP is
//! served like a peer's requests with no identity, anything else relayed as opaque TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::Connect;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::access_log::AccessLog;
use crate::discovery::Discovery;
use crate::errors::{self, ProxyError};
use crate::headers;
use crate::metrics::ConnectionLabels;
use crate::metrics::{no_label, Metrics, RequestLabels, ServiceLabels, INBOUND};
use crate::observe::{Info, RequestLine};
use crate::outbound::error_label;
use crate::ratelimit::TokenBucket;
use crate::routes::Protocol;
use crate::shared::Shared;
use crate::transport::{self, AppAt, AppConnector, Detected, ORIG_PROTO_HEADER};
use crate::upgrade::{self, Switch, Upgrades};
use tokio::io::{AsyncRead, AsyncWrite};
use weft_runtime::body::{self, Body};
use weft_runtime::server::Accepted;
use weft_runtime::server::Http;
use weft_runtime::server::Prefixed;
use weft_runtime::tls::Tls;
use weft_runtime::trace::{self, SpanKind, Tracer};

mod app;
mod opaque;

use app::{AppClients, Apps};
use opaque::AppTarget;

/// Removed from every request arriving at the inbound listener: only the proxy sets it, and only
/// for callers it authenticated.
pub const CLIENT_IDENTITY_HEADER: &str = "x-weft-client-identity";
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The inbound side of the proxy. `C` connects it to the app: [`AppConnector`] (TCP to
/// `app-addr`) in production, an in-memory stream in component tests.
pub struct Inbound<C = AppConnector> {
    /// `name.namespace`, shared with the metric labels of every request.
    service: Arc<str>,
    metrics: Arc<Metrics>,
    apps: Apps<C>,
    tls: Arc<Tls>,
    discovery: Arc<Discovery>,
    /// The rate limit's bucket, replaced when its settings change.
    limiter: std::sync::Mutex<Option<Arc<TokenBucket>>>,
    tracer: Arc<Tracer>,
    access_log: Arc<AccessLog>,
    upgrades: Upgrades,
}

/// The app behind an inbound: where it listens, which Service it is, and how to reach it.
pub struct App<C> {
    pub addr: SocketAddr,
    /// `name.namespace`.
    pub service: String,
    /// The protocols its callers' requests may upgrade to.
    pub upgrades: Upgrades,
    pub connector: C,
}

impl Inbound {
    /// The inbound side of the proxy configured by `config`.
    pub fn new(config: &crate::config::Config, shared: &Shared) -> Self {
        let app = App {
            addr: config.app_addr,
            service: format!("{}.{}", config.service, config.namespace),
            upgrades: config.allowed_upgrades.clone(),
            connector: AppConnector::new(config.app_addr),
        };
        Self::with_app(app, shared)
    }
}

impl<C> Inbound<C>
where
    C: Connect + AppAt + Clone + Send + Sync + 'static,
{
    /// The inbound side of the proxy in front of `app`.
    pub fn with_app(app: App<C>, shared: &Shared) -> Self {
        let Shared {
            metrics,
            tls,
            discovery,
            tracer,
            access_log,
        } = shared.clone();
        Self {
            service: app.service.into(),
            metrics,
            apps: Apps::new(app.addr, app.connector, is_own_address(app.addr.ip())),
            tls,
            discovery,
            limiter: std::sync::Mutex::new(None),
            tracer,
            access_log,
            upgrades: app.upgrades,
        }
    }

    /// Takes a token from this service's rate limit, if it has one.
    fn rate_limit(&self) -> Result<(), ProxyError> {
        let snapshot = self.discovery.snapshot();
        let Some(params) = snapshot.inbound.as_ref().and_then(|i| i.rate_limit) else {
            return Ok(());
        };
        let bucket = {
            let Ok(mut slot) = self.limiter.lock() else {
                return Ok(());
            };
            match slot.as_ref() {
                Some(b) if *b.params() == params => b.clone(),
                _ => slot.insert(Arc::new(TokenBucket::new(params))).clone(),
            }
        };
        bucket.take().map_err(|retry_after| {
            self.metrics
                .rate_limited
                .get_or_create(&ServiceLabels {
                    service: self.service.to_string(),
                })
                .inc();
            ProxyError::RateLimited {
                message: format!(
                    "{} accepts {} requests a second (burst {})",
                    self.service, params.requests_per_second, params.burst
                ),
                retry_after,
            }
        })
    }

    /// Serves one connection from a peer. Everything before its first request (TLS handshake,
    /// detection, the opaque header) shares the listener's first-request deadline.
    pub async fn accept(self: Arc<Self>, conn: Accepted) {
        let Accepted { stream, peer, http } = conn;
        let target = match self.app_target(&stream) {
            Ok(target) => target,
            Err(reason) => {
                self.metrics.interception.redirected(INBOUND, reason);
                return tracing::info!(%peer, "redirected inbound connection closed: {}", match reason {
                    "not-local" => "it was going to an address that is not this pod's",
                    _ => "its original destination cannot be read",
                });
            }
        };
        if let AppTarget::Redirected(_) = target {
            self.metrics.interception.redirected(INBOUND, "app");
        }
        let deadline = http.deadline();
        // A peer proxy speaks first (its TLS ClientHello). A redirected client from outside the
        // mesh that says nothing may be waiting for a server that speaks first: under
        // `permissive` it is taken as plaintext TCP after the detection timeout.
        let silent_is_plaintext = matches!(target, AppTarget::Redirected(_))
            && self.discovery.snapshot().mesh.mtls_permissive;
        let wait = if silent_is_plaintext {
            deadline.min(Instant::now() + crate::detect::DETECT_TIMEOUT)
        } else {
            deadline
        };
        let mut first = [0u8; 1];
        let is_tls = match tokio::time::timeout_at(wait, stream.peek(&mut first)).await {
            Ok(Ok(1)) => first[0] == TLS_HANDSHAKE_RECORD,
            Ok(_) => return,
            Err(_) if silent_is_plaintext => {
                if let AppTarget::Redirected(dst) = target {
                    self.count_connection("false", "accepted");
                    let counts = &self.metrics.interception;
                    counts.decided(
                        INBOUND,
                        "tcp",
                        "timeout",
                        Some(crate::detect::DETECT_TIMEOUT),
                    );
                    self.serve_plaintext_tcp(stream, peer, dst).await;
                }
                return;
            }
            Err(_) => {
                http.first_request_timed_out();
                return tracing::debug!(%peer, "inbound connection sent nothing; closed");
            }
        };
        if is_tls {
            let Some(config) = self.tls.server() else {
                self.count_connection("true", "refused");
                return tracing::info!(%peer, "TLS connection refused: this proxy has no certificate yet");
            };
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            let tls = match tokio::time::timeout_at(deadline, accept).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    self.count_connection("true", "refused");
                    return tracing::info!(%peer, error = %e, "TLS handshake failed; connection refused");
                }
                Err(_) => {
                    http.first_request_timed_out();
                    return self.count_connection("true", "refused");
                }
            };
            let client = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(weft_runtime::tls::spiffe_id);
            self.count_connection("true", "accepted");
            self.serve(tls, peer, client.map(Arc::from), http, target)
                .await;
        } else {
            if !self.plaintext_allowed(target) {
                self.count_connection("false", "refused");
                return tracing::info!(%peer, "plaintext connection refused: mTLS is strict");
            }
            self.count_connection("false", "accepted");
            match target {
                AppTarget::Default(_) => self.serve(stream, peer, None, http, target).await,
                AppTarget::Redirected(dst) => {
                    self.serve_plaintext(stream, peer, http, dst).await;
                }
            }
        }
    }

    /// Where this connection's traffic goes: `app-addr`, or — redirected by iptables — the
    /// address its caller dialled, which must be one of this pod's (any other would make the
    /// proxy a relay to wherever a packet's destination said). Errs with the metric's reason.
    fn app_target(&self, stream: &TcpStream) -> Result<AppTarget, &'static str> {
        let local = stream.local_addr().map_err(|_| "no-original-dst")?;
        match crate::original_dst::original_dst(stream, local) {
            // To this listener's own port on another of the pod's addresses: the proxy's own
            // connection to its pod's inbound (standalone endpoints), not an app's port.
            Ok(Some(dst)) if dst.port() == local.port() && is_local(dst, local) => {
                Ok(AppTarget::Default(self.apps.default().addr))
            }
            Ok(None) => Ok(AppTarget::Default(self.apps.default().addr)),
            Ok(Some(dst)) if is_local(dst, local) => Ok(AppTarget::Redirected(dst)),
            Ok(Some(_)) => Err("not-local"),
            Err(_) => Err("no-original-dst"),
        }
    }

    /// Whether a plaintext connection may reach the app: under `mtls: permissive`, or before
    /// this proxy has a certificate on a connection not redirected. The seam for exceptions by
    /// port (the kubelet's probes, when injection rewrites them) is here.
    fn plaintext_allowed(&self, target: AppTarget) -> bool {
        let permissive = self.discovery.snapshot().mesh.mtls_permissive;
        let _ = target;
        permissive
    }

    /// A redirected plaintext connection, from outside the mesh, to a permissive proxy: HTTP
    /// is served with no caller identity; anything else is relayed as opaque TCP.
    async fn serve_plaintext(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        http: Http,
        dst: SocketAddr,
    ) {
        let counts = &self.metrics.interception;
        let snapshot = self.discovery.snapshot();
        let opaque_port = snapshot.mesh.opaque_ports.contains(&dst.port());
        let tcp_port = snapshot.inbound.as_ref().is_some_and(|i| {
            i.ports.iter().any(|p| {
                p.target_port.unwrap_or(p.port) == dst.port() && p.protocol == Protocol::Tcp
            })
        });
        drop(snapshot);
        let (protocol, prefix) = if tcp_port || opaque_port {
            let decided = if tcp_port { "tcp-port" } else { "opaque-port" };
            counts.decided(INBOUND, "tcp", decided, None);
            (crate::detect::Protocol::Tcp, bytes::Bytes::new())
        } else {
            match crate::detect::detect(&mut stream, crate::detect::DETECT_TIMEOUT).await {
                Ok(d) => {
                    let decided = if d.timed_out { "timeout" } else { "detected" };
                    counts.decided(INBOUND, d.protocol.label(), decided, Some(d.elapsed));
                    (d.protocol, d.prefix)
                }
                Err(e) => {
                    return tracing::debug!(%peer, error = %e, "inbound connection failed before its first bytes")
                }
            }
        };
        let io = Prefixed::new(prefix, stream);
        match protocol {
            crate::detect::Protocol::Tcp => self.serve_plaintext_tcp(io, peer, dst).await,
            _ => {
                let app = self.apps.at(dst);
                let svc = hyper::service::service_fn(move |req| {
                    self.clone().handle(None, peer, app.clone(), req)
                });
                http.serve(io, svc).await;
            }
        }
    }

    /// Applies this service's AuthorizationPolicy, if any, and counts the decision.
    /// Returns whether the traffic is allowed (always, without a policy).
    fn authorize(&self, check: impl FnOnce(&crate::authz::Policy) -> bool) -> bool {
        let snapshot = self.discovery.snapshot();
        let Some(policy) = snapshot
            .inbound
            .as_ref()
            .and_then(|i| i.authorization.as_ref())
        else {
            return true;
        };
        let allowed = check(policy);
        let decision = if allowed { "allow" } else { "deny" };
        self.metrics
            .authorization
            .get_or_create(&crate::metrics::DecisionLabels { decision })
            .inc();
        allowed
    }

    fn count_connection(&self, tls: &'static str, outcome: &'static str) {
        self.metrics
            .inbound_connections
            .get_or_create(&ConnectionLabels { tls, outcome })
            .inc();
    }

    /// Serves one (decrypted) connection: opaque TCP or HTTP.
    async fn serve<I>(
        self: Arc<Self>,
        mut io: I,
        peer: SocketAddr,
        client: Option<Arc<str>>,
        http: Http,
        target: AppTarget,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let deadline = http.deadline();
        let (kind, prefix) = match tokio::time::timeout_at(deadline, transport::detect(&mut io))
            .await
        {
            Ok(Ok(detected)) => detected,
            Ok(Err(e)) => {
                return tracing::debug!(%peer, error = %e, "inbound connection failed before its first bytes")
            }
            Err(_) => {
                http.first_request_timed_out();
                return tracing::debug!(%peer, "inbound connection sent nothing; closed");
            }
        };
        match kind {
            Detected::Opaque => {
                self.serve_opaque(io, peer, client.as_deref(), &http, target)
                    .await;
            }
            Detected::Http1 | Detected::Http2 => {
                let app = match target {
                    AppTarget::Default(_) => self.apps.default().clone(),
                    AppTarget::Redirected(dst) => self.apps.at(dst),
                };
                let svc = hyper::service::service_fn(move |req| {
                    self.clone().handle(client.clone(), peer, app.clone(), req)
                });
                http.serve(Prefixed::new(prefix, io), svc).await;
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        client: Option<Arc<str>>,
        peer: SocketAddr,
        app: Arc<AppClients<C>>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        let grpc = errors::is_grpc(&req);
        let span = self.tracer.start(SpanKind::Server, req.headers());
        if let Some(s) = &span {
            // The app's spans become children of this one.
            trace::inject(req.headers_mut(), s);
        }
        let log = self.discovery.access_log_on().then_some(&*self.access_log);
        let line = (span.is_some() || log.is_some()).then(|| RequestLine::of(&req, INBOUND, span));
        let rsp = match self.forward(client.as_deref(), &app, req).await {
            Ok(rsp) => rsp,
            Err(e) => {
                tracing::debug!(error = %e, "inbound request failed");
                errors::rescue(&e, grpc)
            }
        };
        let error = error_label(&rsp);
        if let Some(line) = line {
            let info = Info {
                service: self.service.clone(),
                upstream: Some(app.addr),
                peer_identity: client.clone().unwrap_or_else(no_label),
                peer: Some(peer),
                ..Info::default()
            };
            line.finish(&rsp, &info, &error, &self.tracer, log);
        }
        let labels = RequestLabels {
            direction: INBOUND,
            service: self.service.clone(),
            route: no_label(),
            peer: client.unwrap_or_else(no_label),
            status_class: crate::metrics::status_class(rsp.status().as_u16()),
            grpc_status: String::new(),
            error,
        };
        let rsp = crate::observe::record_on_end(rsp, self.metrics.clone(), labels, grpc, start);
        Ok(rsp)
    }

    async fn forward(
        &self,
        client: Option<&str>,
        app: &AppClients<C>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        let caller_upgrade = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        // The one spelling of the path that the policy checks and the app receives.
        weft_runtime::path::normalize_uri(&mut parts.uri)?;
        if !self.authorize(|p| p.allows(client, &parts.method, parts.uri.path())) {
            return Err(ProxyError::Forbidden(format!(
                "{} may not {} {}",
                client.unwrap_or("an unauthenticated caller"),
                parts.method,
                parts.uri.path()
            )));
        }
        self.rate_limit()?;
        // Only this proxy vouches for a caller, and only for one it authenticated.
        headers::remove_with_lookalikes(&mut parts.headers, CLIENT_IDENTITY_HEADER);
        if let Some(id) = client.and_then(|c| HeaderValue::from_str(c).ok()) {
            parts.headers.insert(CLIENT_IDENTITY_HEADER, id);
        }
        let authority = headers::authority(&parts).ok_or_else(|| {
            ProxyError::BadRequest("request has no Host header or authority".into())
        })?;

        if self.upgrades.check(&mut parts)? == Switch::Upgrade {
            let req = Request::from_parts(parts, body::boxed(body));
            return upgrade::forward(
                app.addr,
                req,
                caller_upgrade,
                None,
                transport::DEFAULT_CONNECT_TIMEOUT,
                (),
                app.from,
            )
            .await;
        }

        let orig_proto = parts.headers.remove(ORIG_PROTO_HEADER);
        let client = match (parts.version, orig_proto) {
            (Version::HTTP_2, None) => &app.http2,
            (_, proto) => {
                parts.version = if proto.is_some_and(|p| p == "HTTP/1.0") {
                    Version::HTTP_10
                } else {
                    Version::HTTP_11
                };
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| ProxyError::BadRequest("authority is not a valid Host".into()))?;
                parts.headers.insert(header::HOST, host);
                &app.http1
            }
        };
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.uri = headers::absolute_uri(&parts, &authority)?;
        let addr = app.addr;
        let rsp = client
            .request(Request::from_parts(parts, body::boxed(body)))
            .await
            .map_err(|e| {
                let reason = weft_runtime::error_chain(&e);
                if e.is_connect() {
                    ProxyError::ConnectFailed { addr, reason }
                } else {
                    ProxyError::UpstreamReset { addr, reason }
                }
            })?;
        let (mut parts, body) = rsp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body::boxed(body)))
    }
}

/// Whether `dst`, where a redirected connection was going, is an address of this network
/// namespace: the address it arrived on (iptables' `REDIRECT` answers on the primary address
/// of the interface it came in on, the pod IP), or another one a socket can bind to.
///
/// Never a loopback, unspecified or multicast address: a packet crafted to arrive for
/// `127.0.0.1` would otherwise reach what listens only on the pod's loopback (its outbound and
/// admin listeners, an app bound to `localhost`).
fn is_local(dst: SocketAddr, local: SocketAddr) -> bool {
    may_be_own(dst.ip()) && (dst.ip() == local.ip() || can_bind(dst.ip()))
}

/// Whether `ip` is one of this namespace's own addresses, other than loopback.
fn is_own_address(ip: std::net::IpAddr) -> bool {
    may_be_own(ip) && can_bind(ip)
}

fn may_be_own(ip: std::net::IpAddr) -> bool {
    let v4_broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    let v4_mapped = matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || v4_broadcast || v4_mapped)
}

fn can_bind(ip: std::net::IpAddr) -> bool {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests;
