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
use crate::routes::{
    Backend, LogicalService, Match, PathMatch, Port, Protocol, Rule, ServiceKey, Split,
    WeightedBackend,
};

/// Endpoints by address and the identity they must present, shared across snapshots so that an
/// endpoint that stays keeps its connection and its latency estimate.
#[derive(Default)]
pub struct EndpointRegistry {
    endpoints: Mutex<HashMap<(SocketAddr, String), Weak<Endpoint>>>,
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
            Ok(Inbound {
                service: ServiceKey::new(&i.service, &i.namespace),
                ports: ports(&i.ports).map_err(|e| format!("inbound: {e}"))?,
                authorization,
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
        rules.push(Rule {
            name,
            port,
            matches,
            split,
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
    };
    Ok(LogicalService {
        key,
        ports,
        rules,
        default_rule,
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
    Ok(Backend {
        key: ServiceKey::new(&b.name, &b.namespace),
        identity: b.identity.clone(),
        balancer: Balancer::new(endpoints, kind),
    })
}

fn authz_rule(r: &pb::AuthorizationRule) -> Result<crate::authz::Rule> {
    let methods = r
        .methods
        .iter()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("method {m:?} is invalid")))
        .collect::<Result<_>>()?;
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
            if !p.value.starts_with('/') {
                return Err(format!("path {:?} does not start with '/'", p.value));
            }
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
