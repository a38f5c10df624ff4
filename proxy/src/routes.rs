//! The routing model: logical services, their HTTPRoute rules, and weighted splits to backends.
//!
//! These are the proxy's domain types, built from the control plane's protobufs by
//! `discovery::convert` and read immutably on the hot path. They own request matching and the
//! choice of backend; choosing an endpoint inside a backend belongs to `balance`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::balance::Balancer;
use crate::breaker::BackendState;
use crate::policy::{BackendPolicy, RequestPolicy};
use crate::ratelimit::Spread;
use crate::retry::Budget;

/// A service's name as `name.namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServiceKey {
    pub name: String,
    pub namespace: String,
}

impl ServiceKey {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
        }
    }

    /// Parses `name.namespace`.
    pub fn parse(s: &str) -> Option<Self> {
        let (name, ns) = s.split_once('.')?;
        (!name.is_empty() && !ns.is_empty() && !ns.contains('.')).then(|| Self::new(name, ns))
    }

    /// Resolves a request authority's host to a service, the way cluster DNS would:
    /// `orders`, `orders.shop`, `orders.shop.svc` and `orders.shop.svc.cluster.local` (any
    /// cluster domain after `svc`). A bare name is in the caller's own namespace.
    ///
    /// Runs per request: it reads the host in place and allocates only the key's two names.
    pub fn from_host(host: &str, own_namespace: &str) -> Option<Self> {
        let host = host.trim_end_matches('.');
        // A DNS name (RFC 1035: labels of at most 63 characters, 253 in all), or it cannot be
        // a Service: nothing a caller writes in `Host` is subscribed to otherwise.
        if host.len() > 253 {
            return None;
        }
        let valid = |l: &str| {
            (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.split('.').all(valid) {
            return None;
        }
        let mut labels = host.split('.');
        let name = labels.next()?;
        let namespace = match (labels.next(), labels.next()) {
            (None, _) => own_namespace.to_string(),
            (Some(ns), None) => ns.to_ascii_lowercase(),
            (Some(ns), Some(svc)) if svc.eq_ignore_ascii_case("svc") => ns.to_ascii_lowercase(),
            _ => return None,
        };
        Some(Self::new(name.to_ascii_lowercase(), namespace))
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

#[derive(Clone, Debug, Serialize)]
pub struct Port {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The pod port it reaches (transparent interception): each endpoint's IP and this port.
    pub target_port: Option<u16>,
}

/// A service as callers address it.
#[derive(Debug, Serialize)]
pub struct LogicalService {
    pub key: ServiceKey,
    pub ports: Vec<Port>,
    pub rules: Vec<Rule>,
    /// The rule used on a port no HTTPRoute attaches to: everything to the service itself.
    pub default_rule: Rule,
    #[serde(skip)]
    pub state: Arc<ServiceState>,
}

/// What a logical service keeps across config updates: its retry budget, fault sequences and
/// metric label.
#[derive(Debug, Default)]
pub struct ServiceState {
    /// `name.namespace`, made once ([`ServiceState::label`]): the request path shares it.
    label: OnceLock<Arc<str>>,
    pub budget: Budget,
    pub delays: Spread,
    pub aborts: Spread,
    /// When a request last found this service, in the discovery's sweep count (unused
    /// subscriptions are dropped).
    pub last_used: std::sync::atomic::AtomicU64,
}

impl ServiceState {
    /// The service's name as its metrics and logs spell it (`name.namespace`). The state is
    /// shared by service key, so the label made for the first request holds for every later
    /// snapshot.
    pub fn label(&self, key: &ServiceKey) -> Arc<str> {
        self.label.get_or_init(|| key.to_string().into()).clone()
    }
}

impl LogicalService {
    /// The service's metric label ([`ServiceState::label`]).
    pub fn label(&self) -> Arc<str> {
        self.state.label(&self.key)
    }

    /// The port a request addressed to `port` uses: that port if the service has it; with no
    /// port in the authority, the service's first port.
    pub fn port(&self, port: Option<u16>) -> Option<&Port> {
        match port {
            Some(p) => self.ports.iter().find(|x| x.port == p),
            None => self.ports.first(),
        }
    }

    /// The rule that takes a request on `port`. Rules arrive in HTTPRoute precedence order;
    /// when routes attach to the port but none matches, there is no route (Gateway API).
    pub fn route(&self, port: u16, req: &Parts) -> Option<&Rule> {
        let mut attached = false;
        for rule in self
            .rules
            .iter()
            .filter(|r| r.port.is_none_or(|p| p == port))
        {
            attached = true;
            if rule.matches(req) {
                return Some(rule);
            }
        }
        (!attached).then_some(&self.default_rule)
    }
}

#[derive(Debug, Serialize)]
pub struct Rule {
    /// `namespace/name#index` of the HTTPRoute rule, or `default`; shared with the metric
    /// label of every request it takes.
    pub name: Arc<str>,
    pub port: Option<u16>,
    /// Empty matches every request.
    pub matches: Vec<Match>,
    pub split: Split,
    /// Timeouts, retries and faults for requests this rule takes.
    pub policy: Arc<RequestPolicy>,
}

impl Rule {
    pub fn matches(&self, req: &Parts) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Match {
    pub path: Option<PathMatch>,
    #[serde(serialize_with = "ser_headers")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_method")]
    pub method: Option<Method>,
}

/// Compared with the request's normalized path (`path::normalize`, done by the outbound side
/// before routing), so a route and the callee's AuthorizationPolicy see the same spelling.
#[derive(Debug, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Matches the path and every path below it, element-wise: `/api` matches `/api` and
    /// `/api/x`, not `/apix`.
    Prefix(String),
}

impl Match {
    pub fn matches(&self, req: &Parts) -> bool {
        if let Some(m) = &self.method {
            if req.method != m {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !p.matches(req.uri.path()) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| req.headers.get_all(name).iter().any(|v| v == value))
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) => {
                let p = p.trim_end_matches('/');
                path.starts_with(p)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/' || p.is_empty())
            }
        }
    }
}

/// A weighted choice among backends.
///
/// Picks follow a golden-ratio (Weyl) sequence over the cumulative weights: lock-free, and the
/// share each backend gets over any N consecutive requests is within about 1/N of its weight.
#[derive(Debug, Serialize)]
pub struct Split {
    pub targets: Vec<WeightedBackend>,
    #[serde(skip)]
    total: u64,
    #[serde(skip)]
    counter: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct WeightedBackend {
    pub weight: u32,
    pub backend: Arc<Backend>,
}

impl Split {
    pub fn new(targets: Vec<WeightedBackend>) -> Self {
        let targets: Vec<_> = targets.into_iter().filter(|t| t.weight > 0).collect();
        let total = targets.iter().map(|t| u64::from(t.weight)).sum();
        // Start at a random point so that proxies restarted together do not move in lockstep.
        Self {
            targets,
            total,
            counter: AtomicU64::new(rand::random()),
        }
    }

    pub fn pick(&self) -> Option<&Arc<Backend>> {
        match self.targets.as_slice() {
            [] => None,
            [only] => Some(&only.backend),
            targets => {
                const PHI_FRAC: u64 = 0x9E37_79B9_7F4A_7C15; // 2^64 / golden ratio
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let x = n.wrapping_mul(PHI_FRAC);
                // Map x in [0, 2^64) onto [0, total).
                let mut point = ((u128::from(x) * u128::from(self.total)) >> 64) as u64;
                for t in targets {
                    let w = u64::from(t.weight);
                    if point < w {
                        return Some(&t.backend);
                    }
                    point -= w;
                }
                targets.last().map(|t| &t.backend)
            }
        }
    }
}

/// A concrete service that receives traffic.
#[derive(Debug, Serialize)]
pub struct Backend {
    pub key: ServiceKey,
    /// The identity its endpoints must present (checked once mTLS is on); shared with the
    /// `peer` metric label of every request it answers.
    pub identity: Arc<str>,
    pub balancer: Balancer,
    /// For each of its ports with a target port, the endpoints' IPs at that port.
    pub targets: Vec<(u16, Balancer)>,
    pub policy: BackendPolicy,
    #[serde(skip)]
    pub state: Arc<BackendState>,
}

impl Backend {
    /// The endpoints that take traffic for Service port `port`: at its target port when it has
    /// one, else at their own addresses.
    pub fn balancer(&self, port: u16) -> &Balancer {
        self.targets
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(&self.balancer, |(_, b)| b)
    }

    /// Records a try's outcome with its endpoint's breaker, and counts any change.
    pub fn record(
        &self,
        inflight: &mut crate::balance::InFlight,
        ok: bool,
        metrics: &crate::metrics::Metrics,
    ) {
        let transition = inflight.record(
            ok,
            self.policy.outlier.as_ref(),
            &self.state,
            self.balancer.endpoints.len(),
        );
        if transition != crate::breaker::Transition::None {
            metrics.breaker(&self.key.to_string(), inflight.endpoint().addr, transition);
        }
    }
}

/// All services a proxy knows, by key.
pub type ServiceMap = HashMap<ServiceKey, Arc<LogicalService>>;

fn ser_headers<S: serde::Serializer>(
    h: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(
        h.iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("<binary>"))),
    )
}

fn ser_method<S: serde::Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_some(m.as_str()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn host_resolution_follows_cluster_dns() {
        let k = |n: &str, ns: &str| Some(ServiceKey::new(n, ns));
        assert_eq!(ServiceKey::from_host("orders", "shop"), k("orders", "shop"));
        assert_eq!(
            ServiceKey::from_host("orders.other", "shop"),
            k("orders", "other")
        );
        assert_eq!(
            ServiceKey::from_host("orders.other.svc", "shop"),
            k("orders", "other")
        );
        assert_eq!(
            ServiceKey::from_host("Orders.other.svc.cluster.local.", "shop"),
            k("orders", "other")
        );
        assert_eq!(ServiceKey::from_host("example.com.au", "shop"), None);
        assert_eq!(ServiceKey::from_host("a b", "shop"), None);
        assert_eq!(ServiceKey::from_host("", "shop"), None);
    }

    #[test]
    fn prefix_matches_whole_path_elements() {
        let p = PathMatch::Prefix("/api".into());
        assert!(p.matches("/api"));
        assert!(p.matches("/api/v1"));
        assert!(!p.matches("/apiv1"));
        assert!(PathMatch::Prefix("/api/".into()).matches("/api/x"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
        assert!(PathMatch::Exact("/a".into()).matches("/a"));
        assert!(!PathMatch::Exact("/a".into()).matches("/a/"));
    }

    #[test]
    fn match_checks_method_path_and_headers() {
        let m = Match {
            path: Some(PathMatch::Prefix("/api".into())),
            headers: vec![(
                HeaderName::from_static("x-canary"),
                HeaderValue::from_static("1"),
            )],
            method: Some(Method::POST),
        };
        assert!(m.matches(&parts("POST", "/api/x", &[("x-canary", "1")])));
        assert!(!m.matches(&parts("GET", "/api/x", &[("x-canary", "1")])));
        assert!(!m.matches(&parts("POST", "/other", &[("x-canary", "1")])));
        assert!(!m.matches(&parts("POST", "/api/x", &[("x-canary", "2")])));
    }

    #[test]
    fn split_follows_weights_closely() {
        let backend = |n: &str| {
            Arc::new(Backend {
                key: ServiceKey::new(n, "ns"),
                identity: "".into(),
                balancer: Balancer::new(vec![], Default::default()),
                targets: Vec::new(),
                policy: Default::default(),
                state: Default::default(),
            })
        };
        let split = Split::new(vec![
            WeightedBackend {
                weight: 90,
                backend: backend("a"),
            },
            WeightedBackend {
                weight: 10,
                backend: backend("b"),
            },
            WeightedBackend {
                weight: 0,
                backend: backend("never"),
            },
        ]);
        let mut counts = HashMap::new();
        for _ in 0..1000 {
            *counts
                .entry(split.pick().unwrap().key.name.clone())
                .or_insert(0) += 1;
        }
        let b = counts.get("b").copied().unwrap_or(0);
        assert!((95..=105).contains(&b), "b got {b} of 1000");
        assert!(!counts.contains_key("never"));
    }
}
