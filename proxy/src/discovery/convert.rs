//! Checks a control-plane update and turns it into a [`Snapshot`]: the boundary where protobuf
//! types end. Any problem rejects the whole update with a message naming what was wrong.
//!
//! This file converts the snapshot's frame, services, backends and route matches; policies
//! (traffic, rate limit, authorization rules) are `convert/policies.rs`, and the state a
//! snapshot shares with the one before it comes from the [`EndpointRegistry`] (`registry.rs`).

mod policies;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use weft_proto::discovery as pb;

use super::registry::EndpointRegistry;
use super::snapshot::{AddressTarget, Inbound, MeshSettings, Snapshot};
use crate::balance::{Balancer, LbKind};
use crate::routes::{
    Backend, LogicalService, Match, PathMatch, Port, Protocol, Rule, ServiceKey, ServiceMap, Split,
    WeightedBackend,
};
use policies::{authz_rule, backend_policy, rate_limit, request_policy, rule_policy};

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
    let mut unknown_addresses = HashSet::new();
    for name in &config.unknown {
        if let Ok(addr) = name.parse::<SocketAddr>() {
            unknown_addresses.insert(addr);
            continue;
        }
        unknown.insert(ServiceKey::parse(name).ok_or_else(|| {
            format!("unknown name {name:?} is neither NAME.NAMESPACE nor IP:PORT")
        })?);
    }
    let mut addresses = HashMap::new();
    for a in &config.addresses {
        let (addr, target) =
            address(a, &services).map_err(|e| format!("address {:?}: {e}", a.address))?;
        addresses.insert(addr, target);
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
        addresses,
        unknown_addresses,
    })
}

/// One subscribed address the mesh knows; its Service must be in the same update.
fn address(a: &pb::Address, services: &ServiceMap) -> Result<(SocketAddr, AddressTarget)> {
    let addr: SocketAddr = a.address.parse().map_err(|_| "not IP:PORT".to_string())?;
    let service = ServiceKey::parse(&a.service)
        .ok_or_else(|| format!("service {:?} is not NAME.NAMESPACE", a.service))?;
    if !services.contains_key(&service) {
        return Err(format!("service {service} is not in the update"));
    }
    let port = u16::try_from(a.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {} is not a port", a.port))?;
    let target = AddressTarget {
        service,
        port,
        endpoint: a.endpoint,
    };
    Ok((addr, target))
}

fn mesh_settings(m: &pb::MeshSettings) -> Result<MeshSettings> {
    let ratio = m.tracing.as_ref().map_or(0.0, |t| t.sampling_ratio);
    if !(0.0..=1.0).contains(&ratio) {
        return Err(format!(
            "mesh: tracing sampling ratio {ratio} is not within 0..1"
        ));
    }
    if !m.trust_anchors.is_empty() {
        weft_runtime::tls::parse_anchors(&m.trust_anchors).map_err(|e| format!("mesh: {e}"))?;
    }
    let opaque_ports = m
        .opaque_ports
        .iter()
        .map(|p| {
            u16::try_from(*p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("mesh: opaque port {p} is not a port"))
        })
        .collect::<Result<Vec<u16>>>()?;
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
        opaque_ports,
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
            let target_port = match p.target_port {
                0 => None,
                t => Some(
                    u16::try_from(t)
                        .map_err(|_| format!("port {port}: target port {t} is out of range"))?,
                ),
            };
            Ok(Port {
                name: p.name.clone(),
                port,
                protocol,
                target_port,
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
    let state = registry.service(&key);
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
        endpoints.push(registry.endpoint(addr, &b.identity, labels));
    }
    let kind = match b.policy.as_ref().map(|p| p.load_balancer()) {
        None | Some(pb::LoadBalancer::Ewma) => LbKind::Ewma,
        Some(pb::LoadBalancer::RoundRobin) => LbKind::RoundRobin,
        Some(pb::LoadBalancer::LeastRequest) => LbKind::LeastRequest,
    };
    let key = ServiceKey::new(&b.name, &b.namespace);
    let policy = backend_policy(b.policy.as_ref())?;
    let state = registry.backend(&key);
    let mut targets = Vec::new();
    for p in ports(&b.ports)? {
        let Some(target) = p.target_port else {
            continue;
        };
        let at_target = endpoints
            .iter()
            .map(|e| {
                let addr = SocketAddr::new(e.addr.ip(), target);
                registry.endpoint(addr, &b.identity, e.labels.clone())
            })
            .collect();
        targets.push((p.port, Balancer::new(at_target, kind)));
    }
    let balancer = Balancer::new(endpoints, kind);
    let open = balancer.open_endpoints()
        + targets
            .iter()
            .map(|(_, b)| b.open_endpoints())
            .sum::<usize>();
    state.recount(open);
    Ok(Backend {
        key,
        identity: b.identity.as_str().into(),
        balancer,
        targets,
        policy,
        state,
    })
}

fn route_match(m: &pb::RouteMatch) -> Result<Match> {
    let path = match &m.path {
        None => None,
        Some(p) => {
            if p.value == "*" || !p.value.starts_with('/') {
                return Err(format!("path {:?} does not start with '/'", p.value));
            }
            weft_runtime::path::check_pattern(&p.value)
                .map_err(|e| format!("path {:?} {e}", p.value))?;
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
    use crate::policy::BudgetParams;

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
                ..Default::default()
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
