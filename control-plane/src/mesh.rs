//! The compiled mesh: accepted resources, indexed, and the view each proxy receives.
//!
//! A [`Mesh`] is immutable and versioned by its generation. [`Mesh::view`] computes one proxy's
//! [`pb::ProxyConfig`]: only the services it subscribed to (with their routes, backends and
//! policies) and its own inbound policy, so what a proxy holds does not grow with the mesh.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use weft_proto::discovery as pb;

use crate::ca::Ca;
use crate::resources::{
    self, AccessLogMode, HttpRouteSpec, MeshConfigSpec, MtlsMode, Object, PathMatchType, Resource,
    ServiceSpec, Sourced, TrafficPolicySpec,
};

/// The CA's part of every proxy's config: the roots to trust and the issuer that signs now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    pub anchors_pem: String,
    pub issuer: String,
}

impl Trust {
    /// What `ca` publishes now: its trust anchors and the fingerprint of the issuer in force.
    pub fn of(ca: &Ca) -> Self {
        let signer = ca.signer();
        Self {
            anchors_pem: signer.anchors_pem.clone(),
            issuer: signer.issuer_id.clone(),
        }
    }
}

/// `(namespace, name)`.
pub type Key = (String, String);

#[derive(Debug, Default)]
pub struct Mesh {
    pub generation: u64,
    pub trust_domain: String,
    pub settings: MeshConfigSpec,
    pub resources: Vec<Sourced>,
    /// What the CA publishes to every proxy ([`Trust::of`]); set through `State::set_trust`.
    pub trust: Trust,
    services: BTreeMap<Key, ServiceSpec>,
    /// Rules attached to each parent service, in precedence order.
    rules: BTreeMap<Key, Vec<pb::RouteRule>>,
    policies: BTreeMap<Key, TrafficPolicySpec>,
    authorization: BTreeMap<Key, Vec<pb::AuthorizationRule>>,
    /// Cluster IPs and ports, and endpoint addresses, to what they reach.
    addresses: HashMap<SocketAddr, Reaches>,
}

/// What an address reaches: a Service port, through its cluster IP or one of its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reaches {
    service: Key,
    port: u16,
    endpoint: bool,
}

impl PartialEq for Mesh {
    /// Two meshes are the same config when their resources are (generation aside).
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain
            && self.trust == other.trust
            && self.resources.len() == other.resources.len()
            && self
                .resources
                .iter()
                .zip(&other.resources)
                .all(|(a, b)| a.resource == b.resource)
    }
}

impl Mesh {
    /// Compiles checked resources. `trust_domain` applies unless MeshConfig sets one.
    pub fn compile(mut resources: Vec<Sourced>, trust_domain: &str, generation: u64) -> Self {
        resources.sort_by_key(|s| s.resource.id());
        let mut mesh = Mesh {
            generation,
            trust_domain: trust_domain.to_string(),
            ..Default::default()
        };
        let mut flat: BTreeMap<Key, Vec<(SortKey, pb::RouteRule)>> = BTreeMap::new();
        for s in &resources {
            let ns = &s.resource.metadata().namespace;
            match &s.resource {
                Resource::MeshConfig(o) => {
                    mesh.settings = o.spec.clone();
                    if let Some(td) = &o.spec.trust_domain {
                        mesh.trust_domain = td.clone();
                    }
                }
                Resource::Service(o) => {
                    mesh.services
                        .insert(key(ns, &o.metadata.name), o.spec.clone());
                }
                Resource::HttpRoute(o) => compile_route(o, &mut flat),
                Resource::TrafficPolicy(o) => {
                    let t = &o.spec.target_ref;
                    mesh.policies.insert(
                        key(t.namespace.as_deref().unwrap_or(ns), &t.name),
                        o.spec.clone(),
                    );
                }
                Resource::AuthorizationPolicy(o) => {
                    let t = &o.spec.target_ref;
                    let rules = mesh
                        .authorization
                        .entry(key(t.namespace.as_deref().unwrap_or(ns), &t.name))
                        .or_default();
                    for r in &o.spec.rules {
                        rules.push(pb::AuthorizationRule {
                            identities: r
                                .from
                                .as_ref()
                                .map(|f| f.identities.clone())
                                .unwrap_or_default(),
                            paths: r.to.as_ref().map(|t| t.paths.clone()).unwrap_or_default(),
                            methods: r.to.as_ref().map(|t| t.methods.clone()).unwrap_or_default(),
                        });
                    }
                }
            }
        }
        for (parent, mut rules) in flat {
            rules.sort_by(|a, b| a.0.cmp(&b.0));
            mesh.rules
                .insert(parent, rules.into_iter().map(|(_, r)| r).collect());
        }
        mesh.addresses = index_addresses(&mesh.services);
        mesh.resources = resources;
        mesh
    }

    /// Routes attached to services that do not exist: worth a warning, not a rejection (the
    /// Service may come later).
    pub fn dangling_references(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (parent, rules) in &self.rules {
            if !self.services.contains_key(parent) {
                out.push(format!(
                    "an HTTPRoute is attached to Service {}/{}, which does not exist",
                    parent.0, parent.1
                ));
            }
            for r in rules {
                for b in &r.backends {
                    if !self.services.contains_key(&key(&b.namespace, &b.name)) {
                        out.push(format!(
                            "HTTPRoute {} sends to Service {}/{}, which does not exist",
                            r.route, b.namespace, b.name
                        ));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn identity(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        )
    }

    /// The service account Service `namespace/name` runs as: its `serviceAccount`, else its name
    /// (also for a Service not declared, which gets that default once it is).
    pub fn service_account_of(&self, namespace: &str, name: &str) -> String {
        self.services
            .get(&key(namespace, name))
            .and_then(|s| s.service_account.clone())
            .unwrap_or_else(|| name.to_string())
    }

    /// The config one proxy receives.
    pub fn view(&self, node: &pb::Node, subscriptions: &BTreeSet<String>) -> pb::ProxyConfig {
        let mut wanted: BTreeSet<Key> = BTreeSet::new();
        let mut unknown = Vec::new();
        let mut addresses = Vec::new();
        for subscription in subscriptions {
            if let Ok(addr) = subscription.parse::<SocketAddr>() {
                match self.addresses.get(&addr) {
                    Some(r) => {
                        wanted.insert(r.service.clone());
                        addresses.push(pb::Address {
                            address: subscription.clone(),
                            service: format!("{}.{}", r.service.1, r.service.0),
                            port: u32::from(r.port),
                            endpoint: r.endpoint,
                        });
                    }
                    None => unknown.push(subscription.clone()),
                }
                continue;
            }
            match subscription.split_once('.') {
                Some((n, ns)) if self.services.contains_key(&key(ns, n)) => {
                    wanted.insert(key(ns, n));
                }
                _ => unknown.push(subscription.clone()),
            }
        }
        let services = wanted
            .iter()
            .filter_map(|(ns, n)| self.service(n, ns))
            .collect();
        let own = key(&node.namespace, &node.service);
        let inbound = pb::Inbound {
            service: node.service.clone(),
            namespace: node.namespace.clone(),
            ports: self.services.get(&own).map(ports).unwrap_or_default(),
            policy: self.policies.get(&own).map(policy),
            authorization: self.authorization.get(&own).cloned().unwrap_or_default(),
            authorization_enforced: self.authorization.contains_key(&own),
        };
        pb::ProxyConfig {
            mesh: Some(self.mesh_settings()),
            services,
            unknown,
            inbound: Some(inbound),
            addresses,
        }
    }

    fn mesh_settings(&self) -> pb::MeshSettings {
        let s = &self.settings;
        pb::MeshSettings {
            trust_domain: self.trust_domain.clone(),
            trust_anchors: self.trust.anchors_pem.clone(),
            issuer: self.trust.issuer.clone(),
            certificate_ttl_ms: s.certificate_ttl.map_or(24 * 3600 * 1000, |d| d.millis()),
            mtls: match s.mtls {
                Some(MtlsMode::Permissive) => pb::Mtls::Permissive.into(),
                _ => pb::Mtls::Strict.into(),
            },
            tracing: Some(pb::Tracing {
                otlp_endpoint: s
                    .tracing
                    .as_ref()
                    .and_then(|t| t.otlp_endpoint.clone())
                    .unwrap_or_default(),
                sampling_ratio: s
                    .tracing
                    .as_ref()
                    .and_then(|t| t.sampling_ratio)
                    .unwrap_or(1.0),
            }),
            access_log: match s.access_log {
                Some(AccessLogMode::Json) => pb::AccessLog::Json.into(),
                _ => pb::AccessLog::Off.into(),
            },
            opaque_ports: s
                .opaque_ports
                .as_deref()
                .unwrap_or(&resources::DEFAULT_OPAQUE_PORTS)
                .iter()
                .map(|p| u32::from(*p))
                .collect(),
        }
    }

    fn service(&self, name: &str, namespace: &str) -> Option<pb::Service> {
        let k = key(namespace, name);
        let spec = self.services.get(&k)?;
        let rules = self.rules.get(&k).cloned().unwrap_or_default();
        let mut backend_keys: BTreeSet<Key> = BTreeSet::from([k.clone()]);
        for r in &rules {
            for b in &r.backends {
                backend_keys.insert(key(&b.namespace, &b.name));
            }
        }
        let backends = backend_keys.iter().map(|bk| self.backend(bk)).collect();
        Some(pb::Service {
            name: name.to_string(),
            namespace: namespace.to_string(),
            ports: ports(spec),
            cluster_ips: spec.cluster_ips.iter().map(ToString::to_string).collect(),
            rules,
            backends,
            policy: self.policies.get(&k).map(policy),
        })
    }

    /// A concrete backend; one that does not exist has no endpoints (its requests get
    /// `no-endpoints`).
    fn backend(&self, k: &Key) -> pb::Backend {
        let spec = self.services.get(k);
        let sa = spec
            .and_then(|s| s.service_account.clone())
            .unwrap_or_else(|| k.1.clone());
        pb::Backend {
            name: k.1.clone(),
            namespace: k.0.clone(),
            identity: self.identity(&k.0, &sa),
            endpoints: spec
                .map(|s| {
                    s.endpoints
                        .iter()
                        .map(|e| pb::Endpoint {
                            address: e.address.to_string(),
                            labels: e.labels.clone().into_iter().collect(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            policy: self.policies.get(k).map(policy),
            ports: spec.map(ports).unwrap_or_default(),
        }
    }
}

/// Every Service's cluster IPs with each of its ports, and every endpoint address. An endpoint
/// reaches the Service port of its own number, or else the Service's first port. An endpoint of
/// several Services goes to the first in (namespace, name) order when they all have one identity
/// (namespace and service account) — the same pod through either. A Service must not take
/// another's traffic by naming its pod or its cluster IP, so an address claimed by two
/// identities, as one Service's cluster IP and port and another's endpoint, or as two Services'
/// cluster IP and port (validation refuses that within one source of config), is left out: a
/// connection to it is passed through, and a meshed pod refuses the plaintext under `strict`.
fn index_addresses(services: &BTreeMap<Key, ServiceSpec>) -> HashMap<SocketAddr, Reaches> {
    let identity = |k: &Key| {
        let sa = services.get(k).and_then(|s| s.service_account.clone());
        (k.0.clone(), sa.unwrap_or_else(|| k.1.clone()))
    };
    let mut index: HashMap<SocketAddr, Reaches> = HashMap::new();
    let mut ambiguous = Vec::new();
    let mut claim = |addr: SocketAddr, reaches: Reaches| match index.get(&addr) {
        None => {
            index.insert(addr, reaches);
        }
        Some(r)
            if r.endpoint
                && reaches.endpoint
                && identity(&r.service) == identity(&reaches.service) => {}
        Some(r) if r.service == reaches.service && !r.endpoint && !reaches.endpoint => {}
        Some(_) => ambiguous.push(addr),
    };
    for (k, spec) in services {
        for ip in &spec.cluster_ips {
            for p in &spec.ports {
                let reaches = Reaches {
                    service: k.clone(),
                    port: p.port,
                    endpoint: false,
                };
                claim(SocketAddr::new(*ip, p.port), reaches);
            }
        }
    }
    for (k, spec) in services {
        let Some(first) = spec.ports.first() else {
            continue;
        };
        for e in &spec.endpoints {
            let port = spec
                .ports
                .iter()
                .find(|p| p.port == e.address.port())
                .unwrap_or(first)
                .port;
            let reaches = Reaches {
                service: k.clone(),
                port,
                endpoint: true,
            };
            claim(e.address, reaches);
            // And the endpoint's IP at each target port, for that Service port.
            for p in spec.ports.iter().filter(|p| p.target_port.is_some()) {
                let target = SocketAddr::new(e.address.ip(), p.target_port.unwrap_or(p.port));
                if target == e.address {
                    continue;
                }
                let reaches = Reaches {
                    service: k.clone(),
                    port: p.port,
                    endpoint: true,
                };
                claim(target, reaches);
            }
        }
    }
    for addr in ambiguous {
        index.remove(&addr);
    }
    index
}

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_string(), name.to_string())
}

fn ports(s: &ServiceSpec) -> Vec<pb::Port> {
    s.ports
        .iter()
        .map(|p| pb::Port {
            name: p.name.clone().unwrap_or_default(),
            port: u32::from(p.port),
            target_port: p.target_port.map_or(0, u32::from),
            protocol: match p.protocol {
                resources::Protocol::Http => pb::Protocol::Http,
                resources::Protocol::Http2 => pb::Protocol::Http2,
                resources::Protocol::Grpc => pb::Protocol::Grpc,
                resources::Protocol::Tcp => pb::Protocol::Tcp,
            }
            .into(),
        })
        .collect()
}

fn policy(p: &TrafficPolicySpec) -> pb::TrafficPolicy {
    let ms = |d: Option<resources::Dur>| d.map_or(0, resources::Dur::millis);
    pb::TrafficPolicy {
        load_balancer: match p.load_balancer {
            Some(resources::LoadBalancer::RoundRobin) => pb::LoadBalancer::RoundRobin,
            Some(resources::LoadBalancer::LeastRequest) => pb::LoadBalancer::LeastRequest,
            _ => pb::LoadBalancer::Ewma,
        }
        .into(),
        timeouts: p.timeouts.as_ref().map(|t| pb::Timeouts {
            connect_ms: ms(t.connect),
            request_ms: ms(t.request),
            idle_ms: ms(t.idle),
        }),
        retries: p.retries.as_ref().map(|r| pb::Retries {
            attempts: r.attempts.unwrap_or(0),
            on: r.on.clone(),
            per_try_timeout_ms: ms(r.per_try_timeout),
            backoff_base_ms: ms(r.backoff.as_ref().and_then(|b| b.base)),
            backoff_max_ms: ms(r.backoff.as_ref().and_then(|b| b.max)),
            budget_ratio: r.budget.as_ref().and_then(|b| b.ratio),
            budget_min_per_second: r.budget.as_ref().and_then(|b| b.min_per_second),
            non_idempotent: r.non_idempotent,
        }),
        circuit_breaker: p.circuit_breaker.as_ref().map(|c| pb::CircuitBreaker {
            consecutive_failures: c.consecutive_failures.unwrap_or(0),
            base_ejection_time_ms: ms(c.base_ejection_time),
            max_ejection_time_ms: ms(c.max_ejection_time),
            max_ejected_percent: c.max_ejected_percent.unwrap_or(0),
            max_connections: c.max_connections.unwrap_or(0),
            max_pending_requests: c.max_pending_requests.unwrap_or(0),
            max_requests: c.max_requests.unwrap_or(0),
        }),
        rate_limit: p.rate_limit.as_ref().map(|r| pb::RateLimit {
            requests_per_second: r.requests_per_second,
            burst: r.burst.unwrap_or(0),
        }),
        fault_injection: p.fault_injection.as_ref().map(|f| pb::FaultInjection {
            delay_percent: f.delay.as_ref().map_or(0.0, |d| d.percent),
            delay_ms: f.delay.as_ref().map_or(0, |d| d.duration.millis()),
            abort_percent: f.abort.as_ref().map_or(0.0, |a| a.percent),
            abort_status: f.abort.as_ref().map_or(0, |a| u32::from(a.status)),
        }),
    }
}

/// Gateway API precedence among matches attached to one parent: exact path before prefix,
/// longer prefix first, then a method match, then more header matches, then route name and
/// rule order.
type SortKey = (u8, Reverse<usize>, u8, Reverse<usize>, String, usize, usize);

/// An HTTPRoute annotation: its rules' retries may repeat non-idempotent requests once sent.
pub const NON_IDEMPOTENT_ANNOTATION: &str = "retry.weft.dev/non-idempotent";

fn compile_route(
    o: &Object<HttpRouteSpec>,
    out: &mut BTreeMap<Key, Vec<(SortKey, pb::RouteRule)>>,
) {
    let ns = &o.metadata.namespace;
    let route = format!("{ns}/{}", o.metadata.name);
    let non_idempotent = o
        .metadata
        .annotations
        .get(NON_IDEMPOTENT_ANNOTATION)
        .is_some_and(|v| v == "true");
    for parent in &o.spec.parent_refs {
        let parent_key = key(parent.namespace.as_deref().unwrap_or(ns), &parent.name);
        for (ri, rule) in o.spec.rules.iter().enumerate() {
            let backends: Vec<pb::BackendRef> = rule
                .backend_refs
                .iter()
                .map(|b| pb::BackendRef {
                    name: b.name.clone(),
                    namespace: b.namespace.clone().unwrap_or_else(|| ns.clone()),
                    port: b.port.map_or(0, u32::from),
                    weight: b.weight,
                })
                .collect();
            // No matches means one match of everything (PathPrefix "/").
            let matches = if rule.matches.is_empty() {
                vec![Default::default()]
            } else {
                rule.matches.clone()
            };
            for (mi, m) in matches.iter().enumerate() {
                let (kind, value) = m
                    .path
                    .as_ref()
                    .map_or((PathMatchType::PathPrefix, "/".to_string()), |p| {
                        (p.kind, p.value.clone())
                    });
                let sort: SortKey = (
                    u8::from(kind != PathMatchType::Exact),
                    Reverse(value.len()),
                    u8::from(m.method.is_none()),
                    Reverse(m.headers.len()),
                    route.clone(),
                    ri,
                    mi,
                );
                let pm = pb::RouteMatch {
                    path: Some(pb::PathMatch {
                        kind: match kind {
                            PathMatchType::Exact => pb::path_match::Kind::Exact,
                            PathMatchType::PathPrefix => pb::path_match::Kind::Prefix,
                        }
                        .into(),
                        value,
                    }),
                    headers: m
                        .headers
                        .iter()
                        .map(|h| pb::HeaderMatch {
                            name: h.name.to_ascii_lowercase(),
                            value: h.value.clone(),
                        })
                        .collect(),
                    method: m.method.clone().unwrap_or_default(),
                };
                let rt = rule.timeouts.as_ref();
                let rr = rule.retry.as_ref();
                out.entry(parent_key.clone()).or_default().push((
                    sort,
                    pb::RouteRule {
                        route: route.clone(),
                        rule_index: u32::try_from(ri).unwrap_or(u32::MAX),
                        port: parent.port.map_or(0, u32::from),
                        matches: vec![pm],
                        backends: backends.clone(),
                        timeouts: rt.map(|t| pb::RouteTimeouts {
                            request_ms: t.request.map_or(0, resources::Dur::millis),
                            backend_request_ms: t.backend_request.map_or(0, resources::Dur::millis),
                        }),
                        retry: rr.map(|r| pb::RouteRetry {
                            codes: r.codes.iter().map(|c| u32::from(*c)).collect(),
                            attempts: r.attempts.unwrap_or(0),
                            backoff_ms: r.backoff.map_or(0, resources::Dur::millis),
                            non_idempotent,
                        }),
                    },
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse;

    const MESH: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec: {ports: [{port: 8080}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders-v1, namespace: shop}
spec: {ports: [{port: 8080}], serviceAccount: orders, endpoints: [{address: "127.0.0.1:4001"}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: unrelated, namespace: shop}
spec: {ports: [{port: 80}], endpoints: [{address: "127.0.0.1:4009"}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  parentRefs: [{name: orders, kind: Service}]
  rules:
  - backendRefs: [{name: orders-v1}]
  - matches: [{path: {type: Exact, value: /health}}]
    backendRefs: [{name: orders-v1}]
  - matches: [{path: {value: /api/v2}}]
    backendRefs: [{name: orders-v2}]
"#;

    fn node() -> pb::Node {
        pb::Node {
            namespace: "shop".into(),
            service: "frontend".into(),
            ..Default::default()
        }
    }

    #[test]
    fn view_holds_only_what_was_subscribed() {
        let mesh = Mesh::compile(parse("m.yaml", MESH).unwrap(), "weft.local", 1);
        let subs = BTreeSet::from(["orders.shop".to_string(), "ghost.shop".to_string()]);
        let view = mesh.view(&node(), &subs);
        assert_eq!(view.services.len(), 1);
        assert_eq!(view.unknown, ["ghost.shop"]);
        let svc = &view.services[0];
        let names: Vec<_> = svc.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["orders", "orders-v1", "orders-v2"]);
        assert_eq!(
            svc.backends[1].identity,
            "spiffe://weft.local/ns/shop/sa/orders"
        );
        assert!(
            svc.backends[2].endpoints.is_empty(),
            "a missing backend has no endpoints"
        );
    }

    #[test]
    fn addresses_resolve_to_cluster_ips_and_endpoints_and_the_rest_is_unknown() {
        let yaml = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: b, namespace: shop}
spec:
  ports: [{port: 80}, {port: 6379, protocol: TCP}]
  clusterIPs: [10.252.0.5, "fd00::5"]
  endpoints: [{address: "10.251.0.3:6379"}, {address: "10.251.0.4:8080"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: c, namespace: shop}
spec:
  ports: [{port: 8080}]
  endpoints: [{address: "10.251.0.3:6379"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: thief, namespace: aaa}
spec:
  ports: [{port: 8080}]
  serviceAccount: b
  clusterIPs: [10.251.0.4]
  endpoints: [{address: "10.251.0.9:8080"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: d, namespace: shop}
spec:
  ports: [{port: 8080}]
  serviceAccount: b
  endpoints: [{address: "10.251.0.9:8080"}]
"#;
        let mesh = Mesh::compile(parse("m.yaml", yaml).unwrap(), "weft.local", 1);
        let subs: BTreeSet<String> = [
            "10.252.0.5:80",
            "[fd00::5]:6379",
            "10.251.0.3:6379",
            "10.251.0.4:8080",
            "10.251.0.9:8080",
            "10.252.0.5:81",
            "10.9.9.9:443",
        ]
        .map(String::from)
        .into();
        let view = mesh.view(&node(), &subs);
        let got: Vec<_> = view
            .addresses
            .iter()
            .map(|a| (a.address.as_str(), a.service.as_str(), a.port, a.endpoint))
            .collect();
        assert_eq!(
            got,
            [
                ("10.252.0.5:80", "b.shop", 80, false),
                ("[fd00::5]:6379", "b.shop", 6379, false),
            ],
            "cluster IPs reach their Service port"
        );
        assert_eq!(
            view.unknown,
            [
                "10.251.0.3:6379",
                "10.251.0.4:8080",
                "10.251.0.9:8080",
                "10.252.0.5:81",
                "10.9.9.9:443"
            ],
            "an endpoint of two identities (service account b in two namespaces), or also another \
             Service's cluster IP, is neither's"
        );
        let only_b = Mesh::compile(
            parse(
                "m.yaml",
                &yaml[..yaml
                    .find("---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: c")
                    .unwrap()],
            )
            .unwrap(),
            "weft.local",
            1,
        );
        let view = only_b.view(&node(), &BTreeSet::from(["10.251.0.4:8080".to_string()]));
        assert_eq!(
            (
                view.addresses[0].service.as_str(),
                view.addresses[0].port,
                view.addresses[0].endpoint
            ),
            ("b.shop", 80, true),
            "an endpoint reaches the Service port of its number, else the first"
        );
        assert_eq!(
            view.mesh.unwrap().opaque_ports,
            [25, 587, 3306, 4444, 5432, 6379, 9300, 11211]
        );
    }

    #[test]
    fn rules_follow_gateway_precedence() {
        let mesh = Mesh::compile(parse("m.yaml", MESH).unwrap(), "weft.local", 1);
        let view = mesh.view(&node(), &BTreeSet::from(["orders.shop".to_string()]));
        let paths: Vec<_> = view.services[0]
            .rules
            .iter()
            .map(|r| r.matches[0].path.as_ref().unwrap().value.as_str())
            .collect();
        assert_eq!(paths, ["/health", "/api/v2", "/"]);
        assert_eq!(mesh.dangling_references().len(), 1);
    }
}
