//! Checks a control-plane update and turns it into a [`Snapshot`]: the boundary where protobuf
//! types end. Any problem rejects the whole update with a message naming what was wrong.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use weft_proto::discovery as pb;

use super::{Inbound, MeshSettings, Snapshot};
use crate::balance::{Balancer, Endpoint, LbKind};
use crate::breaker::BackendState;
use crate::policy::{
    BackendPolicy, BudgetParams, Conditions, Faults, Limits, Outlier, RateLimit, RequestPolicy,
    RetryPolicy, MAX_RETRIES,
};
use crate::routes::{
    Backend, LogicalService, Match, PathMatch, Port, Protocol, Rule, ServiceKey, ServiceState,
    Split, WeightedBackend,
};

/// State that outlives one snapshot, shared by every snapshot that still has its owner: each
/// endpoint (by address and the identity it must present) keeps its connection, latency
/// estimate and breaker; each service keeps its retry budget and fault sequences; each backend
/// its concurrency counters.
#[derive(Default)]
pub struct EndpointRegistry {
    endpoints: Mutex<HashMap<(SocketAddr, String), Weak<Endpoint>>>,
    services: Mutex<HashMap<ServiceKey, Weak<ServiceState>>>,
    backends: Mutex<HashMap<ServiceKey, Weak<BackendState>>>,
}

fn shared<T: Default>(map: &Mutex<HashMap<ServiceKey, Weak<T>>>, key: &ServiceKey) -> Arc<T> {
    let Ok(mut map) = map.lock() else {
        return Arc::default();
    };
    if let Some(found) = map.get(key).and_then(Weak::upgrade) {
        return found;
    }
    let made = Arc::new(T::default());
    map.insert(key.clone(), Arc::downgrade(&made));
    made
}

impl EndpointRegistry {
    fn get(
        &self,
        addr: SocketAddr,
        identity: &str,
        labels: BTreeMap<String, String>,
    ) -> Arc<Endpoint> {
        let Ok(mut map) = self.endpoints.lock() else {
            return Arc::new(Endpoint::new(addr, identity.to_string(), labels));
        };
        let key = (addr, identity.to_string());
        if let Some(ep) = map.get(&key).and_then(Weak::upgrade) {
            if ep.labels == labels {
                return ep;
            }
        }
        let ep = Arc::new(Endpoint::new(addr, identity.to_string(), labels));
        map.insert(key, Arc::downgrade(&ep));
        ep
    }

    fn prune(&self) {
        if let Ok(mut map) = self.endpoints.lock() {
            map.retain(|_, ep| ep.strong_count() > 0);
        }
        if let Ok(mut map) = self.services.lock() {
            map.retain(|_, s| s.strong_count() > 0);
        }
        if let Ok(mut map) = self.backends.lock() {
            map.retain(|_, s| s.strong_count() > 0);
        }
    }
}

type Result<T> = std::result::Result<T, String>;

pub(super) fn snapshot(
    rsp: &pb::DiscoveryResponse,
    registry: &EndpointRegistry,
) -> Result<Snapshot> {
    if rsp.version.is_empty() {
        return Err("update has no version".into());
    }
    let config = rsp.config.as_ref().ok_or("update has no config")?;
    let mesh = config
        .mesh
        .as_ref()
        .map(mesh_settings)
        .transpose()?
        .unwrap_or_default();

    let mut services = HashMap::new();
    for svc in &config.services {
        let built = service(svc, registry)
            .map_err(|e| format!("service {}.{}: {e}", svc.name, svc.namespace))?;
        if services
            .insert(built.key.clone(), Arc::new(built))
            .is_some()
        {
            return Err(format!("service {}.{} sent twice", svc.name, svc.namespace));
        }
    }
    let mut unknown = HashSet::new();
    for name in &config.unknown {
        unknown.insert(
            ServiceKey::parse(name)
                .ok_or_else(|| format!("unknown service name {name:?} is not NAME.NAMESPACE"))?,
        );
    }
    let inbound = config
        .inbound
        .as_ref()
        .map(|i| -> Result<Inbound> {
            let authorization = if i.authorization_enforced {
                let rules = i
                    .authorization
                    .iter()
                    .enumerate()
                    .map(|(n, r)| {
                        authz_rule(r).map_err(|e| format!("inbound authorization rule {n}: {e}"))
                    })
                    .collect::<Result<_>>()?;
                Some(crate::authz::Policy { rules })
            } else {
                None
            };
            let rate_limit = i
                .policy
                .as_ref()
                .and_then(|p| p.rate_limit.as_ref())
                .map(rate_limit)
                .transpose()
                .map_err(|e| format!("inbound: {e}"))?;
            Ok(Inbound {
                service: ServiceKey::new(&i.service, &i.namespace),
                ports: ports(&i.ports).map_err(|e| format!("inbound: {e}"))?,
                authorization,
                rate_limit,
            })
        })
        .transpose()?;
    registry.prune();
    Ok(Snapshot {
        version: rsp.version.clone(),
        mesh,
        services,
        unknown,
        inbound,
    })
}

fn mesh_settings(m: &pb::MeshSettings) -> Result<MeshSettings> {
    let ratio = m.tracing.as_ref().map_or(0.0, |t| t.sampling_ratio);
    if !(0.0..=1.0).contains(&ratio) {
        return Err(format!(
            "mesh: tracing sampling ratio {ratio} is not within 0..1"
        ));
    }
    if !m.trust_anchors.is_empty() {
        crate::tls::parse_anchors(&m.trust_anchors).map_err(|e| format!("mesh: {e}"))?;
    }
    Ok(MeshSettings {
        trust_domain: m.trust_domain.clone(),
        certificate_ttl: Duration::from_millis(m.certificate_ttl_ms),
        mtls_permissive: m.mtls() == pb::Mtls::Permissive,
        otlp_endpoint: m
            .tracing
            .as_ref()
            .map(|t| t.otlp_endpoint.clone())
            .unwrap_or_default(),
        sampling_ratio: ratio,
        access_log_json: m.access_log() == pb::AccessLog::Json,
        trust_anchors: m.trust_anchors.clone(),
        issuer: m.issuer.clone(),
    })
}

fn ports(ps: &[pb::Port]) -> Result<Vec<Port>> {
    ps.iter()
        .map(|p| {
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {} is out of range", p.port))?;
            let protocol = match pb::Protocol::try_from(p.protocol) {
                Ok(pb::Protocol::Http) => Protocol::Http,
                Ok(pb::Protocol::Http2) => Protocol::Http2,
                Ok(pb::Protocol::Grpc) => Protocol::Grpc,
                Ok(pb::Protocol::Tcp) => Protocol::Tcp,
                Err(_) => return Err(format!("port {port}: unknown protocol {}", p.protocol)),
            };
            Ok(Port {
                name: p.name.clone(),
                port,
                protocol,
            })
        })
        .collect()
}

fn service(svc: &pb::Service, registry: &EndpointRegistry) -> Result<LogicalService> {
    let key = ServiceKey::new(&svc.name, &svc.namespace);
    let ports = ports(&svc.ports)?;
    let mut backends = HashMap::new();
    for b in &svc.backends {
        let built =
            backend(b, registry).map_err(|e| format!("backend {}.{}: {e}", b.name, b.namespace))?;
        backends.insert(built.key.clone(), Arc::new(built));
    }
    let split = |refs: &[pb::BackendRef]| -> Result<Split> {
        let mut targets = Vec::with_capacity(refs.len());
        for r in refs {
            let k = ServiceKey::new(&r.name, &r.namespace);
            let backend = backends
                .get(&k)
                .ok_or_else(|| format!("backendRef {k} was not sent"))?;
            targets.push(WeightedBackend {
                weight: r.weight,
                backend: backend.clone(),
            });
        }
        Ok(Split::new(targets))
    };
    let service_policy = request_policy(svc.policy.as_ref())?;
    let mut rules = Vec::with_capacity(svc.rules.len());
    for r in &svc.rules {
        let name = format!("{}#{}", r.route, r.rule_index);
        let port = match r.port {
            0 => None,
            p => Some(
                u16::try_from(p).map_err(|_| format!("rule {name}: port {p} is out of range"))?,
            ),
        };
        let matches = r
            .matches
            .iter()
            .map(route_match)
            .collect::<Result<_>>()
            .map_err(|e| format!("rule {name}: {e}"))?;
        let split = split(&r.backends).map_err(|e| format!("rule {name}: {e}"))?;
        let policy = rule_policy(&service_policy, svc.policy.as_ref(), r)
            .map_err(|e| format!("rule {name}: {e}"))?;
        rules.push(Rule {
            name: name.into(),
            port,
            matches,
            split,
            policy: Arc::new(policy),
        });
    }
    let own = backends.get(&key).cloned();
    let default_rule = Rule {
        name: "default".into(),
        port: None,
        matches: vec![],
        split: Split::new(
            own.into_iter()
                .map(|backend| WeightedBackend { weight: 1, backend })
                .collect(),
        ),
        policy: Arc::new(service_policy),
    };
    let state = shared(&registry.services, &key);
    Ok(LogicalService {
        key,
        ports,
        rules,
        default_rule,
        state,
    })
}

fn backend(b: &pb::Backend, registry: &EndpointRegistry) -> Result<Backend> {
    let mut endpoints = Vec::with_capacity(b.endpoints.len());
    for ep in &b.endpoints {
        let addr: SocketAddr = ep
            .address
            .parse()
            .map_err(|e| format!("endpoint address {:?}: {e}", ep.address))?;
        let labels = ep
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        endpoints.push(registry.get(addr, &b.identity, labels));
    }
    let kind = match b.policy.as_ref().map(|p| p.load_balancer()) {
        None | Some(pb::LoadBalancer::Ewma) => LbKind::Ewma,
        Some(pb::LoadBalancer::RoundRobin) => LbKind::RoundRobin,
        Some(pb::LoadBalancer::LeastRequest) => LbKind::LeastRequest,
    };
    let key = ServiceKey::new(&b.name, &b.namespace);
    let policy = backend_policy(b.policy.as_ref())?;
    let state = shared(&registry.backends, &key);
    let balancer = Balancer::new(endpoints, kind);
    state.recount(balancer.open_endpoints());
    Ok(Backend {
        key,
        identity: b.identity.as_str().into(),
        balancer,
        policy,
        state,
    })
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

/// The request-level part of a service's TrafficPolicy.
fn request_policy(p: Option<&pb::TrafficPolicy>) -> Result<RequestPolicy> {
    let Some(p) = p else {
        return Ok(RequestPolicy::default());
    };
    let mut retry = RetryPolicy::default();
    if let Some(r) = &p.retries {
        retry = RetryPolicy::explicit();
        if r.attempts > 0 {
            retry.max_retries = r.attempts;
        }
        if !r.on.is_empty() {
            retry.on = Conditions::parse(&r.on)?;
        }
        retry.per_try_timeout = ms(r.per_try_timeout_ms);
        if let Some(base) = ms(r.backoff_base_ms) {
            retry.backoff_base = base;
            retry.backoff_max = retry.backoff_max.max(base);
        }
        if let Some(max) = ms(r.backoff_max_ms) {
            retry.backoff_max = max;
        }
        retry.non_idempotent = r.non_idempotent;
        retry.budget = budget(r)?;
    }
    if retry.max_retries > MAX_RETRIES {
        return Err(format!(
            "retries.attempts {} is over {MAX_RETRIES}",
            retry.max_retries
        ));
    }
    let faults = p.fault_injection.as_ref().map(faults).transpose()?;
    Ok(RequestPolicy {
        request_timeout: p.timeouts.as_ref().and_then(|t| ms(t.request_ms)),
        retry,
        faults,
    })
}

fn budget(r: &pb::Retries) -> Result<BudgetParams> {
    let mut b = BudgetParams::default();
    if let Some(ratio) = r.budget_ratio {
        if !(0.0..=10.0).contains(&ratio) {
            return Err(format!("retries.budget.ratio {ratio} is not within 0..10"));
        }
        b.ratio = ratio;
    }
    if let Some(min) = r.budget_min_per_second {
        b.min_per_second = min;
    }
    Ok(b)
}

fn faults(f: &pb::FaultInjection) -> Result<Faults> {
    for (what, pct) in [("delay", f.delay_percent), ("abort", f.abort_percent)] {
        if !(0.0..=100.0).contains(&pct) {
            return Err(format!(
                "faultInjection.{what}.percent {pct} is not within 0..100"
            ));
        }
    }
    if f.abort_percent > 0.0 && !(200..=599).contains(&f.abort_status) {
        return Err(format!(
            "faultInjection.abort.status {} is not an HTTP status",
            f.abort_status
        ));
    }
    Ok(Faults {
        delay_percent: f.delay_percent,
        delay: Duration::from_millis(f.delay_ms),
        abort_percent: f.abort_percent,
        abort_status: u16::try_from(f.abort_status).unwrap_or(503),
    })
}

/// A rule's policy: its service's, with the rule's HTTPRoute `timeouts` and `retry` on top.
fn rule_policy(
    service: &RequestPolicy,
    traffic: Option<&pb::TrafficPolicy>,
    r: &pb::RouteRule,
) -> Result<RequestPolicy> {
    let mut p = service.clone();
    if let Some(t) = &r.timeouts {
        if let Some(request) = ms(t.request_ms) {
            p.request_timeout = Some(request);
        }
        if let Some(per_try) = ms(t.backend_request_ms) {
            p.retry.per_try_timeout = Some(per_try);
        }
    }
    if let Some(rr) = &r.retry {
        let explicit = traffic.is_some_and(|t| t.retries.is_some());
        if !explicit {
            let per_try = p.retry.per_try_timeout;
            p.retry = RetryPolicy::explicit();
            p.retry.per_try_timeout = per_try;
        }
        if rr.attempts > 0 {
            if rr.attempts > MAX_RETRIES {
                return Err(format!(
                    "retry.attempts {} is over {MAX_RETRIES}",
                    rr.attempts
                ));
            }
            p.retry.max_retries = rr.attempts;
        }
        if !rr.codes.is_empty() {
            // Gateway API: these codes, and connection errors.
            p.retry.on = Conditions {
                connect_failure: true,
                reset: true,
                statuses: rr
                    .codes
                    .iter()
                    .map(|c| u16::try_from(*c).unwrap_or(0))
                    .collect(),
                ..Conditions::default()
            };
        }
        if let Some(backoff) = ms(rr.backoff_ms) {
            p.retry.backoff_base = backoff;
            p.retry.backoff_max = p.retry.backoff_max.max(backoff);
        }
        p.retry.non_idempotent |= rr.non_idempotent;
    }
    Ok(p)
}

/// The endpoint-level part of a backend's TrafficPolicy.
fn backend_policy(p: Option<&pb::TrafficPolicy>) -> Result<BackendPolicy> {
    let mut out = BackendPolicy::default();
    let Some(p) = p else {
        return Ok(out);
    };
    if let Some(t) = &p.timeouts {
        if let Some(c) = ms(t.connect_ms) {
            out.connect_timeout = c;
        }
        out.idle_timeout = ms(t.idle_ms);
    }
    if let Some(c) = &p.circuit_breaker {
        if c.consecutive_failures > 0 {
            let mut o = Outlier {
                consecutive_failures: c.consecutive_failures,
                ..Outlier::default()
            };
            if let Some(base) = ms(c.base_ejection_time_ms) {
                o.base_ejection = base;
                o.max_ejection = o.max_ejection.max(base);
            }
            if let Some(max) = ms(c.max_ejection_time_ms) {
                o.max_ejection = max.max(o.base_ejection);
            }
            if c.max_ejected_percent > 100 {
                return Err(format!(
                    "circuitBreaker.maxEjectedPercent {} is over 100",
                    c.max_ejected_percent
                ));
            }
            if c.max_ejected_percent > 0 {
                o.max_ejected_percent = c.max_ejected_percent;
            }
            out.outlier = Some(o);
        }
        let limit = |v: u32| (v > 0).then_some(v as usize);
        out.limits = Limits {
            max_connections: limit(c.max_connections),
            max_pending_requests: limit(c.max_pending_requests),
            max_requests: limit(c.max_requests),
        };
    }
    Ok(out)
}

fn rate_limit(r: &pb::RateLimit) -> Result<RateLimit> {
    let rps = r.requests_per_second;
    if !(rps.is_finite() && rps > 0.0) {
        return Err(format!(
            "rateLimit.requestsPerSecond {rps} must be more than 0"
        ));
    }
    let burst = if r.burst > 0 {
        r.burst
    } else {
        // One second's worth.
        rps.ceil().min(f64::from(u32::MAX)) as u32
    };
    Ok(RateLimit {
        requests_per_second: rps,
        burst: burst.max(1),
    })
}

fn authz_rule(r: &pb::AuthorizationRule) -> Result<crate::authz::Rule> {
    let methods = r
        .methods
        .iter()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("method {m:?} is invalid")))
        .collect::<Result<_>>()?;
    for p in &r.paths {
        crate::path::check_pattern(p).map_err(|e| format!("path {p:?} {e}"))?;
    }
    Ok(crate::authz::Rule {
        identities: r.identities.clone(),
        paths: r.paths.clone(),
        methods,
    })
}

fn route_match(m: &pb::RouteMatch) -> Result<Match> {
    let path = match &m.path {
        None => None,
        Some(p) => {
            if p.value == "*" || !p.value.starts_with('/') {
                return Err(format!("path {:?} does not start with '/'", p.value));
            }
            crate::path::check_pattern(&p.value).map_err(|e| format!("path {:?} {e}", p.value))?;
            Some(match p.kind() {
                pb::path_match::Kind::Exact => PathMatch::Exact(p.value.clone()),
                pb::path_match::Kind::Prefix => PathMatch::Prefix(p.value.clone()),
            })
        }
    };
    let headers = m
        .headers
        .iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?} is invalid", h.name))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| format!("header {} value {:?} is invalid", h.name, h.value))?;
            Ok((name, value))
        })
        .collect::<Result<_>>()?;
    let method = match m.method.as_str() {
        "" => None,
        s => {
            Some(Method::from_bytes(s.as_bytes()).map_err(|_| format!("method {s:?} is invalid"))?)
        }
    };
    Ok(Match {
        path,
        headers,
        method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(services: Vec<pb::Service>) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version: "7".into(),
            nonce: "1".into(),
            config: Some(pb::ProxyConfig {
                services,
                ..Default::default()
            }),
        }
    }

    fn orders(address: &str) -> pb::Service {
        pb::Service {
            name: "orders".into(),
            namespace: "shop".into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: 0,
            }],
            backends: vec![pb::Backend {
                name: "orders".into(),
                namespace: "shop".into(),
                endpoints: vec![pb::Endpoint {
                    address: address.into(),
                    labels: Default::default(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn valid_update_builds_a_snapshot() {
        let reg = EndpointRegistry::default();
        let snap = snapshot(&response(vec![orders("127.0.0.1:4143")]), &reg).unwrap();
        let svc = &snap.services[&ServiceKey::new("orders", "shop")];
        assert_eq!(svc.default_rule.split.targets.len(), 1);
    }

    #[test]
    fn bad_endpoint_address_is_rejected_with_its_place() {
        let reg = EndpointRegistry::default();
        let err = snapshot(&response(vec![orders("not-an-address")]), &reg).unwrap_err();
        assert!(
            err.contains("service orders.shop: backend orders.shop: endpoint address"),
            "{err}"
        );
    }

    #[test]
    fn endpoints_survive_updates_that_keep_them() {
        let reg = EndpointRegistry::default();
        let a = snapshot(&response(vec![orders("127.0.0.1:4143")]), &reg).unwrap();
        let b = snapshot(&response(vec![orders("127.0.0.1:4143")]), &reg).unwrap();
        let ep = |s: &Snapshot| {
            s.services[&ServiceKey::new("orders", "shop")]
                .default_rule
                .split
                .targets[0]
                .backend
                .balancer
                .endpoints[0]
                .clone()
        };
        assert!(Arc::ptr_eq(&ep(&a), &ep(&b)));
    }

    fn with_policy(policy: pb::TrafficPolicy) -> pb::Service {
        let mut svc = orders("127.0.0.1:4143");
        svc.policy = Some(policy.clone());
        svc.backends[0].policy = Some(policy);
        svc
    }

    #[test]
    fn an_invalid_policy_is_rejected_with_its_field() {
        let bad = |p: pb::TrafficPolicy| {
            snapshot(
                &response(vec![with_policy(p)]),
                &EndpointRegistry::default(),
            )
            .unwrap_err()
        };
        let e = bad(pb::TrafficPolicy {
            fault_injection: Some(pb::FaultInjection {
                abort_percent: 150.0,
                abort_status: 503,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(e.contains("faultInjection.abort.percent 150"), "{e}");
        let e = bad(pb::TrafficPolicy {
            retries: Some(pb::Retries {
                on: vec!["sometimes".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(e.contains("retries.on \"sometimes\""), "{e}");
        // A rate limit applies to the proxy's own inbound side.
        let mut rsp = response(vec![]);
        if let Some(c) = rsp.config.as_mut() {
            c.inbound = Some(pb::Inbound {
                service: "orders".into(),
                namespace: "shop".into(),
                policy: Some(pb::TrafficPolicy {
                    rate_limit: Some(pb::RateLimit {
                        requests_per_second: -1.0,
                        burst: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let e = snapshot(&rsp, &EndpointRegistry::default()).unwrap_err();
        assert!(e.contains("rateLimit.requestsPerSecond"), "{e}");
    }

    #[test]
    fn policy_defaults_and_route_overrides() {
        let policy = pb::TrafficPolicy {
            timeouts: Some(pb::Timeouts {
                connect_ms: 250,
                request_ms: 2000,
                idle_ms: 0,
            }),
            retries: Some(pb::Retries {
                attempts: 3,
                ..Default::default()
            }),
            circuit_breaker: Some(pb::CircuitBreaker {
                max_requests: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut svc = with_policy(policy);
        svc.rules.push(pb::RouteRule {
            route: "shop/orders".into(),
            backends: vec![pb::BackendRef {
                name: "orders".into(),
                namespace: "shop".into(),
                port: 0,
                weight: 1,
            }],
            timeouts: Some(pb::RouteTimeouts {
                request_ms: 500,
                backend_request_ms: 100,
            }),
            retry: Some(pb::RouteRetry {
                codes: vec![409],
                attempts: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        let snap = snapshot(&response(vec![svc]), &EndpointRegistry::default()).unwrap();
        let s = &snap.services[&ServiceKey::new("orders", "shop")];
        let default = &s.default_rule.policy;
        assert_eq!(default.request_timeout, Some(Duration::from_secs(2)));
        assert_eq!(default.retry.max_retries, 3);
        assert!(default.retry.on.gateway_error && default.retry.on.reset);
        assert_eq!(default.retry.budget, BudgetParams::default());
        let rule = &s.rules[0].policy;
        assert_eq!(rule.request_timeout, Some(Duration::from_millis(500)));
        assert_eq!(rule.retry.per_try_timeout, Some(Duration::from_millis(100)));
        assert_eq!(
            (rule.retry.max_retries, &rule.retry.on.statuses[..]),
            (1, &[409][..])
        );
        let backend = &s.rules[0].split.targets[0].backend.policy;
        assert_eq!(backend.connect_timeout, Duration::from_millis(250));
        assert!(
            backend.outlier.is_none(),
            "ejection only with consecutiveFailures"
        );
        assert_eq!(backend.limits.max_requests, Some(10));
        assert_eq!(backend.limits.max_connections, None);
    }

    #[test]
    fn a_rule_path_that_cannot_match_is_rejected() {
        let rule = |p: &str| {
            authz_rule(&pb::AuthorizationRule {
                paths: vec![p.into()],
                ..Default::default()
            })
        };
        assert!(rule("/public/*").is_ok());
        let err = rule("/public/../admin").unwrap_err();
        assert!(err.contains("write \"/admin\""), "{err}");
    }

    #[test]
    fn rule_with_unsent_backend_is_rejected() {
        let mut svc = orders("127.0.0.1:4143");
        svc.rules.push(pb::RouteRule {
            route: "shop/orders".into(),
            backends: vec![pb::BackendRef {
                name: "ghost".into(),
                namespace: "shop".into(),
                port: 0,
                weight: 1,
            }],
            ..Default::default()
        });
        let err = snapshot(&response(vec![svc]), &EndpointRegistry::default()).unwrap_err();
        assert!(err.contains("backendRef ghost.shop was not sent"), "{err}");
    }
}
