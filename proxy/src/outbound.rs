//! Traffic from the local app: find the service, pick a route, a backend and an endpoint, and
//! carry the request to the endpoint's proxy, retrying within policy.
//!
//! The request path, in order: path normalization (`path::normalize`, the spelling routes match
//! and the callee's proxy checks) → target (`upstream` listener, or the request's authority) →
//! discovery ([`Discovery::resolve`]) → port → HTTPRoute rule → injected faults → then, for
//! each try: weighted split → concurrency limit → load balancer (skipping ejected endpoints) →
//! peer connection (`transport`) → breaker bookkeeping → retry decision. The whole exchange runs
//! under the request timeout. Errors from any step reach the caller through
//! [`errors::rescue`] only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::request::Parts;
use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::AccessLog;
use crate::balance::{InFlight, Pick};
use crate::breaker::{Limit, Permit};
use crate::discovery::Discovery;
use crate::errors::{self, ProxyError};
use crate::headers;
use crate::metrics::{
    FaultLabels, LimitLabels, Metrics, RequestLabels, RetryLabels, ServiceLabels, OUTBOUND,
};
use crate::observe::{Info, RequestLine};
use crate::policy::MAX_REPLAY_BODY;
use crate::retry::{self, Outcome, Replay};
use crate::routes::{Backend, LogicalService, Rule, ServiceKey};
use crate::transport::{Connect, SendError, ORIG_PROTO_HEADER};
use crate::upgrade::{self, Switch, Upgrades};
use weft_runtime::body::{self, Body};
use weft_runtime::trace::{self, SpanKind, Tracer};

/// Where an outbound listener sends its traffic.
#[derive(Clone, Debug)]
pub enum Target {
    /// By the request's authority (the outbound listener; `HTTP_PROXY`).
    Authority,
    /// Always one service port: an `upstream` listener, or a redirected connection's original
    /// destination. `endpoint`: to that one endpoint of the service (it was dialled by its own
    /// address), past HTTPRoute rules.
    Fixed {
        service: ServiceKey,
        port: u16,
        endpoint: Option<SocketAddr>,
    },
}

/// The `service` of a request whose name is no Service of the mesh.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// [`UNKNOWN_SERVICE`] as a shared label.
fn unknown_service() -> Arc<str> {
    static UNKNOWN: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from(UNKNOWN_SERVICE));
    UNKNOWN.clone()
}

pub struct Outbound {
    pub discovery: Arc<Discovery>,
    pub metrics: Arc<Metrics>,
    pub namespace: String,
    /// This proxy's credentials, for the connections of their own that upgrades make.
    pub tls: Arc<weft_runtime::tls::Tls>,
    /// Opens the pooled connection to an endpoint's proxy (`transport::PeerConnector` in
    /// production), once per new connection.
    pub connect: Arc<dyn Connect>,
    pub tracer: Arc<Tracer>,
    pub access_log: Arc<AccessLog>,
    /// The protocols the app's requests may upgrade to.
    pub upgrades: Upgrades,
    /// Whether redirected connections are this proxy's own (`transparent::OwnTraffic`).
    pub own_traffic: crate::transparent::OwnTraffic,
}

impl Outbound {
    pub async fn handle(
        self: Arc<Self>,
        target: Target,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        let grpc = errors::is_grpc(&req);
        let span = self.tracer.start(SpanKind::Client, req.headers());
        if let Some(s) = &span {
            trace::inject(req.headers_mut(), s);
        }
        let log = self.discovery.access_log_on().then_some(&*self.access_log);
        let line = (span.is_some() || log.is_some()).then(|| RequestLine::of(&req, OUTBOUND, span));
        let mut info = Info::default();
        let rsp = match self.proxy(&target, req, &mut info).await {
            Ok(rsp) => rsp,
            Err(e) => {
                if info.service.is_empty() {
                    info.service = unknown_service();
                }
                tracing::debug!(service = %info.service, error = %e, "outbound request failed");
                errors::rescue(&e, grpc)
            }
        };
        let error = error_label(&rsp);
        if let Some(line) = line {
            line.finish(&rsp, &info, &error, &self.tracer, log);
        }
        let labels = RequestLabels {
            direction: OUTBOUND,
            status_class: crate::metrics::status_class(rsp.status().as_u16()),
            service: info.service,
            route: info.route,
            peer: info.peer_identity,
            grpc_status: String::new(),
            error,
        };
        let rsp = crate::observe::record_on_end(rsp, self.metrics.clone(), labels, grpc, start);
        Ok(rsp)
    }

    async fn proxy(
        &self,
        target: &Target,
        mut req: Request<Incoming>,
        info: &mut Info,
    ) -> Result<Response<Body>, ProxyError> {
        let start = Instant::now();
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        // Routes match the spelling the callee's proxy will check and its app receive.
        weft_runtime::path::normalize_uri(&mut parts.uri)?;
        let authority = headers::authority(&parts).ok_or_else(|| {
            ProxyError::BadRequest("request has no Host header or authority".into())
        })?;
        let (key, port, pin) = match target {
            Target::Fixed {
                service,
                port,
                endpoint,
            } => (service.clone(), Some(*port), *endpoint),
            Target::Authority => {
                let key = ServiceKey::from_host(authority.host(), &self.namespace)
                    .ok_or_else(|| ProxyError::NoRoute(format!("host {:?}", authority.host())))?;
                (key, authority.port_u16(), None)
            }
        };
        // Labelled by the name only once it is a Service of the mesh: a caller's made-up
        // names stay `unknown` (metrics, spans and log lines are bounded by the mesh's config).
        let service = self.discovery.resolve(&key).await?;
        info.service = service.label();
        let port = service.port(port).ok_or_else(|| {
            ProxyError::NoRoute(format!(
                "{key} on port {}",
                port.map_or("(none)".into(), |p| p.to_string())
            ))
        })?;
        // One endpoint addressed directly takes the service's own policy, not its routes.
        let rule = match pin {
            Some(_) => Some(&service.default_rule),
            None => service.route(port.port, &parts),
        }
        .ok_or_else(|| {
            ProxyError::NoRoute(format!(
                "{key}: no HTTPRoute rule matches {} {}",
                parts.method,
                parts.uri.path()
            ))
        })?;
        info.route.clone_from(&rule.name);
        let aim = Aim {
            port: port.port,
            pin,
        };

        if self.upgrades.check(&mut parts)? == Switch::Upgrade {
            let req = Request::from_parts(parts, body::boxed(body));
            return self.upgrade(rule, req, client_upgrade, aim).await;
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

        // The request timeout, or the gRPC caller's deadline if sooner.
        let timeout = match (
            rule.policy.request_timeout,
            headers::grpc_timeout(&parts.headers),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = timeout.map(|t| start + t);
        let exchange = async {
            self.inject_faults(&service, rule).await?;
            self.exchange(&service, rule, parts, body, aim, info).await
        };
        let (rsp, idle) = match deadline {
            None => exchange.await?,
            Some(deadline) => match tokio::time::timeout_at(deadline, exchange).await {
                Ok(result) => result?,
                Err(_) => {
                    self.metrics.timeout(OUTBOUND, &key.to_string(), "request");
                    return Err(ProxyError::Timeout(format!(
                        "{key}: no response within the request timeout of {:?}",
                        timeout.unwrap_or_default()
                    )));
                }
            },
        };
        if deadline.is_none() && idle.is_none() {
            return Ok(rsp);
        }
        let (metrics, label) = (self.metrics.clone(), info.service.clone());
        Ok(rsp.map(|b| {
            body::boxed(body::Timed::new(b, deadline, idle, move |kind| {
                metrics.timeout(OUTBOUND, &label, kind);
            }))
        }))
    }

    /// Delays or aborts a share of requests, as TrafficPolicy `faultInjection` asks.
    async fn inject_faults(&self, service: &LogicalService, rule: &Rule) -> Result<(), ProxyError> {
        let Some(f) = &rule.policy.faults else {
            return Ok(());
        };
        let count = |fault| {
            self.metrics
                .faults
                .get_or_create(&FaultLabels {
                    service: service.key.to_string(),
                    fault,
                })
                .inc();
        };
        if service.state.delays.hit(f.delay_percent) {
            count("delay");
            tokio::time::sleep(f.delay).await;
        }
        if service.state.aborts.hit(f.abort_percent) {
            count("abort");
            let status = http::StatusCode::from_u16(f.abort_status)
                .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
            return Err(ProxyError::FaultInjected(status));
        }
        Ok(())
    }

    /// Sends the request, retrying as the rule's policy and the service's budget allow.
    /// Returns the response and the stream idle timeout of the backend that answered.
    async fn exchange(
        &self,
        service: &LogicalService,
        rule: &Rule,
        mut parts: Parts,
        body: Incoming,
        aim: Aim,
        info: &mut Info,
    ) -> Result<(Response<Body>, Option<std::time::Duration>), ProxyError> {
        use http_body::Body as _;
        let policy = &rule.policy.retry;
        let budget = &service.state.budget;
        budget.deposit(&policy.budget);
        let may_repeat = retry::may_repeat(&parts.method, policy);
        // A request without a body (most GETs) needs nothing kept for a retry.
        let replay =
            (!body.is_end_stream()).then(|| Replay::new(body::boxed(body), MAX_REPLAY_BODY));
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut retries = 0u32;
        loop {
            let backend = rule.split.pick().ok_or_else(|| {
                ProxyError::NoEndpoints(format!(
                    "{}: rule {} has no backend",
                    service.key, rule.name
                ))
            })?;
            let req_body = match &replay {
                None => body::empty(),
                Some(r) => body::boxed(r.body(retries)),
            };
            // The head is kept for another try only while the policy allows one.
            let head = if retries < policy.max_retries {
                parts.clone()
            } else {
                std::mem::replace(&mut parts, Request::new(()).into_parts().0)
            };
            let req = Request::from_parts(head, req_body);
            let (result, outcome, guard) = self.try_once(backend, req, policy, &tried, aim).await?;
            info.upstream = Some(guard.inflight.endpoint().addr);
            info.peer_identity.clone_from(&backend.identity);
            info.retries = retries;
            let replayable = replay.as_ref().is_none_or(Replay::replayable);
            let again = retries < policy.max_retries
                && retry::decide(outcome, policy, may_repeat, replayable);
            if !again {
                return finish(result, guard, backend);
            }
            if !budget.withdraw(&policy.budget) {
                self.metrics
                    .retry_budget_exhausted
                    .get_or_create(&ServiceLabels {
                        service: service.key.to_string(),
                    })
                    .inc();
                return match result {
                    // A real response: the caller gets it as it is.
                    Ok(rsp) => finish(Ok(rsp), guard, backend),
                    Err(e) => Err(ProxyError::BudgetExhausted(format!(
                        "{}: retry budget exhausted; last try: {e}",
                        service.key
                    ))),
                };
            }
            let addr = guard.inflight.endpoint().addr;
            drop((result, guard));
            self.metrics
                .retries
                .get_or_create(&RetryLabels {
                    service: service.key.to_string(),
                    reason: outcome.label(),
                })
                .inc();
            tried.push(addr);
            retries += 1;
            let backoff = policy.backoff(retries);
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
        }
    }

    /// One try: limits, endpoint choice, send, breaker bookkeeping.
    async fn try_once(
        &self,
        backend: &Backend,
        req: Request<Body>,
        policy: &crate::policy::RetryPolicy,
        tried: &[SocketAddr],
        aim: Aim,
    ) -> Result<(Result<Response<Incoming>, ProxyError>, Outcome, Guard), ProxyError> {
        let limits = &backend.policy.limits;
        let permit = backend
            .state
            .acquire(Limit::Requests, limits)
            .map_err(|l| self.overloaded(backend, l))?;
        let pick = self.pick(backend, tried, aim)?;
        let pending = if pick.endpoint.conn.is_connected() {
            None
        } else {
            Some(
                backend
                    .state
                    .acquire(Limit::Pending, limits)
                    .map_err(|l| self.overloaded(backend, l))?,
            )
        };
        let mut inflight = pick.start();
        let addr = inflight.endpoint().addr;
        let send =
            inflight
                .endpoint()
                .conn
                .send(req, backend.policy.connect_timeout, &*self.connect);
        let sent = match policy.per_try_timeout {
            None => send.await,
            Some(t) => tokio::time::timeout(t, send).await.unwrap_or_else(|_| {
                self.metrics
                    .timeout(OUTBOUND, &backend.key.to_string(), "per-try");
                Err(SendError {
                    error: ProxyError::Timeout(format!(
                        "no response from {addr} within the per-try timeout of {t:?}"
                    )),
                    sent: true,
                })
            }),
        };
        drop(pending);
        let (result, outcome) = match sent {
            Ok(rsp) => {
                let outcome = Outcome::Response {
                    status: rsp.status().as_u16(),
                    grpc: grpc_status(&rsp),
                };
                (Ok(rsp), outcome)
            }
            Err(SendError { error, sent }) => {
                if error.is_connect_timeout() {
                    self.metrics
                        .timeout(OUTBOUND, &backend.key.to_string(), "connect");
                }
                let outcome = match (&error, sent) {
                    (_, false) => Outcome::NotSent,
                    (ProxyError::Timeout(_), true) => Outcome::TimedOut,
                    (_, true) => Outcome::Reset,
                };
                (Err(error), outcome)
            }
        };
        if outcome == Outcome::NotSent {
            inflight.unreachable();
        }
        backend.record(&mut inflight, !outcome.is_failure(), &self.metrics);
        Ok((
            result,
            outcome,
            Guard {
                inflight,
                _permit: permit,
            },
        ))
    }

    /// The endpoint for a try, among those of the Service port aimed at: `circuit-open` when
    /// every endpoint is ejected; the pinned one, when the caller addressed one endpoint, or
    /// `no-endpoints` when it is no longer one.
    fn pick(&self, backend: &Backend, tried: &[SocketAddr], aim: Aim) -> Result<Pick, ProxyError> {
        let balancer = backend.balancer(aim.port);
        if let Some(addr) = aim.pin {
            return balancer.pick_pinned(addr).ok_or_else(|| {
                ProxyError::NoEndpoints(format!(
                    "{addr} is no longer an endpoint of {}",
                    backend.key
                ))
            });
        }
        balancer.pick(tried, &backend.state).ok_or_else(|| {
            if balancer.endpoints.is_empty() {
                ProxyError::NoEndpoints(format!("{} has no endpoints", backend.key))
            } else {
                ProxyError::CircuitOpen(format!(
                    "every endpoint of {} is ejected after failures",
                    backend.key
                ))
            }
        })
    }

    fn overloaded(&self, backend: &Backend, limit: Limit) -> ProxyError {
        self.metrics
            .overloaded
            .get_or_create(&LimitLabels {
                service: backend.key.to_string(),
                limit: limit.name(),
            })
            .inc();
        ProxyError::Overloaded(format!(
            "{}: concurrency limit reached ({} at most {})",
            backend.key,
            limit.name(),
            backend.state.in_use(limit)
        ))
    }

    /// A request that upgrades (WebSocket): its own connection, counted under
    /// `maxConnections` while it lasts. Not retried.
    async fn upgrade(
        &self,
        rule: &Rule,
        req: Request<Body>,
        client_upgrade: hyper::upgrade::OnUpgrade,
        aim: Aim,
    ) -> Result<Response<Body>, ProxyError> {
        let backend = rule
            .split
            .pick()
            .ok_or_else(|| ProxyError::NoEndpoints(format!("rule {} has no backend", rule.name)))?;
        let permit = backend
            .state
            .acquire(Limit::Connections, &backend.policy.limits)
            .map_err(|l| self.overloaded(backend, l))?;
        let pick = self.pick(backend, &[], aim)?;
        let tls = Some(pick.endpoint.conn.tls_config(&self.tls)?);
        let addr = pick.endpoint.addr;
        let mut inflight = pick.start();
        let result = upgrade::forward(
            addr,
            req,
            client_upgrade,
            tls,
            backend.policy.connect_timeout,
            permit,
            None,
        )
        .await;
        let ok = result.as_ref().is_ok_and(|r| r.status().as_u16() < 500);
        backend.record(&mut inflight, ok, &self.metrics);
        result
    }
}

/// Which endpoints a request may go to: those of Service port `port` (`Backend::balancer`), or
/// the one the caller addressed (`pin`).
#[derive(Clone, Copy, Debug)]
struct Aim {
    port: u16,
    pin: Option<SocketAddr>,
}

/// What keeps a try's endpoint and limit slot counted until its response body is done.
struct Guard {
    inflight: InFlight,
    _permit: Permit,
}

/// Hands the caller a try's response, its body keeping the guard.
fn finish(
    result: Result<Response<Incoming>, ProxyError>,
    guard: Guard,
    backend: &Backend,
) -> Result<(Response<Body>, Option<std::time::Duration>), ProxyError> {
    let rsp = result?;
    guard.inflight.responded();
    let (mut parts, body) = rsp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    tracing::trace!(backend = %backend.key, endpoint = %guard.inflight.endpoint().addr, status = %parts.status, "forwarded");
    Ok((
        Response::from_parts(parts, body::boxed(body::guarded(body, guard))),
        backend.policy.idle_timeout,
    ))
}

/// The gRPC status of a trailers-only response (an error without a body), if it is one.
fn grpc_status<B>(rsp: &Response<B>) -> Option<u16> {
    rsp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The `error` metric label: the proxy's own error reason, if it made the response up.
pub fn error_label<B>(rsp: &Response<B>) -> String {
    rsp.headers()
        .get(errors::ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests;
