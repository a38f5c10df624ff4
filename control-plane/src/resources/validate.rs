//! Checks that types cannot express: names, ranges, duplicates, and references between kinds.
//! Every problem names its resource and field; all are reported at once. The control plane's
//! namespace (`weft-system`) is off limits to every resource but MeshConfig.

use std::collections::{HashMap, HashSet};

use crate::ca::SYSTEM_NAMESPACE;
use weft_runtime::path::{self, PatternError};

use super::{
    AuthorizationPolicySpec, HttpRouteSpec, MeshConfigSpec, Problem, Resource, ServiceSpec,
    Sourced, TargetRef, TrafficPolicySpec,
};

/// Retry conditions (TrafficPolicy `retries.on`), besides `retriable-status:CODE`; the last five
/// are gRPC statuses, as Envoy names them.
const RETRY_ON: [&str; 9] = [
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];
/// The most retries a policy may ask for (the proxy enforces the same).
const MAX_RETRIES: u32 = 10;
const MAX_WEIGHT: u32 = 1_000_000;

struct Checker<'a> {
    item: &'a Sourced,
    problems: &'a mut Vec<Problem>,
}

impl Checker<'_> {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            source: self.item.source.clone(),
            document: self.item.document,
            resource: Some(self.item.resource.id()),
            field: field.into(),
            message: message.into(),
        });
    }

    fn name(&mut self, field: &str, v: &str) {
        if !is_dns_label(v) {
            self.fail(
                field,
                format!(
                    "{v:?} is not a valid name (lowercase letters, digits and '-', at most 63)"
                ),
            );
        }
    }

    fn percent(&mut self, field: &str, v: f64) {
        if !(0.0..=100.0).contains(&v) {
            self.fail(field, format!("{v} is not a percentage (0 to 100)"));
        }
    }

    /// The control plane's namespace holds its own identity and the admins'
    /// (`spiffe://TD/ns/weft-system/sa/NAME`): a Service there would let a proxy dial an
    /// endpoint that proves one of those, such as the control plane's own API, and relay its
    /// local callers to it. Nothing in the mesh may live there or point there.
    fn not_reserved(&mut self, field: &str, namespace: Option<&str>) {
        if namespace == Some(SYSTEM_NAMESPACE) {
            self.fail(
                field,
                format!("{SYSTEM_NAMESPACE} is reserved for the control plane; mesh resources cannot be in it or refer to it"),
            );
        }
    }

    fn target(&mut self, field: &str, t: &TargetRef) {
        self.not_reserved(&format!("{field}.namespace"), t.namespace.as_deref());
        if let Some(k) = t.kind.as_deref().filter(|k| *k != "Service") {
            self.fail(
                format!("{field}.kind"),
                format!("{k:?} is not supported; a policy targets a Service"),
            );
        }
        self.name(&format!("{field}.name"), &t.name);
    }
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a whole set of resources; returns every problem.
pub fn validate(items: &[Sourced]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen: HashMap<String, (String, usize)> = HashMap::new();
    let mut addresses = Addresses::default();
    for item in items {
        let mut c = Checker {
            item,
            problems: &mut problems,
        };
        let id = item.resource.id();
        if let Some((src, doc)) = seen.get(&id) {
            c.fail(
                "metadata.name",
                format!("defined twice: also in {src}, document {doc}"),
            );
        } else {
            seen.insert(id.clone(), (item.source.clone(), item.document));
        }
        let meta = item.resource.metadata();
        c.name("metadata.name", &meta.name);
        c.name("metadata.namespace", &meta.namespace);
        // MeshConfig is cluster-wide: its namespace means nothing.
        if !matches!(item.resource, Resource::MeshConfig(_)) {
            c.not_reserved("metadata.namespace", Some(&meta.namespace));
        }
        match &item.resource {
            Resource::MeshConfig(o) => mesh_config(&mut c, &o.metadata.name, &o.spec),
            Resource::Service(o) => {
                service(&mut c, &o.spec);
                addresses.check(&mut c, &id, &o.spec);
            }
            Resource::HttpRoute(o) => http_route(&mut c, &o.spec),
            Resource::TrafficPolicy(o) => traffic_policy(&mut c, &o.spec),
            Resource::AuthorizationPolicy(o) => authorization(&mut c, &o.spec),
        }
    }
    problems
}

/// The cluster IPs Services claim: each is one Service's, as in Kubernetes — else a Service
/// could take another's traffic to it (transparent interception routes by address).
#[derive(Default)]
struct Addresses {
    cluster_ips: HashMap<std::net::IpAddr, String>,
}

impl Addresses {
    fn check(&mut self, c: &mut Checker<'_>, id: &str, s: &ServiceSpec) {
        for (i, ip) in s.cluster_ips.iter().enumerate() {
            match self.cluster_ips.get(ip) {
                Some(other) if other != id => c.fail(
                    format!("spec.clusterIPs[{i}]"),
                    format!("{ip} is already the cluster IP of {other}"),
                ),
                _ => {
                    self.cluster_ips.insert(*ip, id.to_string());
                }
            }
        }
    }
}

fn mesh_config(c: &mut Checker<'_>, name: &str, s: &MeshConfigSpec) {
    if name != "default" {
        c.fail(
            "metadata.name",
            format!("{name:?}: the mesh has one MeshConfig, named \"default\""),
        );
    }
    if let Some(td) = &s.trust_domain {
        let ok = !td.is_empty()
            && td.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !ok {
            c.fail(
                "spec.trustDomain",
                format!("{td:?} is not a valid trust domain (a DNS name)"),
            );
        }
    }
    for (i, port) in s.opaque_ports.iter().flatten().enumerate() {
        if *port == 0 {
            c.fail(format!("spec.opaquePorts[{i}]"), "port 0 is not a port");
        }
    }
    if let Some(ttl) = s.certificate_ttl {
        if ttl.0.as_secs() < 1 {
            c.fail("spec.certificateTTL", "must be at least 1s");
        }
    }
    if let Some(t) = &s.tracing {
        if let Some(r) = t.sampling_ratio {
            if !(0.0..=1.0).contains(&r) {
                c.fail(
                    "spec.tracing.samplingRatio",
                    format!("{r} is not within 0 and 1"),
                );
            }
        }
        if let Some(e) = &t.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                c.fail(
                    "spec.tracing.otlpEndpoint",
                    format!("{e:?} is not an http:// or https:// URL"),
                );
            }
        }
    }
}

fn service(c: &mut Checker<'_>, s: &ServiceSpec) {
    if s.ports.is_empty() {
        c.fail("spec.ports", "a Service needs at least one port");
    }
    let mut ports = HashSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        if p.port == 0 {
            c.fail(format!("spec.ports[{i}].port"), "must be 1 to 65535");
        }
        if p.target_port == Some(0) {
            c.fail(format!("spec.ports[{i}].targetPort"), "must be 1 to 65535");
        }
        if !ports.insert(p.port) {
            c.fail(
                format!("spec.ports[{i}].port"),
                format!("port {} is listed twice", p.port),
            );
        }
    }
    if let Some(sa) = &s.service_account {
        c.name("spec.serviceAccount", sa);
    }
    let mut addrs = HashSet::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        if e.address.port() == 0 || e.address.ip().is_unspecified() {
            c.fail(
                format!("spec.endpoints[{i}].address"),
                format!("{} cannot be dialed", e.address),
            );
        }
        if !addrs.insert(e.address) {
            c.fail(
                format!("spec.endpoints[{i}].address"),
                format!("{} is listed twice", e.address),
            );
        }
    }
}

fn http_route(c: &mut Checker<'_>, s: &HttpRouteSpec) {
    if s.parent_refs.is_empty() {
        c.fail("spec.parentRefs", "a mesh route needs a parent Service");
    }
    for (i, p) in s.parent_refs.iter().enumerate() {
        if let Some(k) = p.kind.as_deref().filter(|k| *k != "Service") {
            c.fail(
                format!("spec.parentRefs[{i}].kind"),
                format!("{k:?} is not supported; a mesh route's parent is a Service"),
            );
        }
        c.name(&format!("spec.parentRefs[{i}].name"), &p.name);
        c.not_reserved(
            &format!("spec.parentRefs[{i}].namespace"),
            p.namespace.as_deref(),
        );
    }
    for (r, rule) in s.rules.iter().enumerate() {
        for (m, mat) in rule.matches.iter().enumerate() {
            let at = format!("spec.rules[{r}].matches[{m}]");
            if let Some(p) = &mat.path {
                // Without `*` as a special case: a route has no globs.
                let checked = match p.value.as_str() {
                    "*" => Err(PatternError::NotAbsolute),
                    v => path::check_pattern(v),
                };
                if let Err(e) = checked {
                    c.fail(format!("{at}.path.value"), format!("{:?} {e}", p.value));
                }
            }
            for (h, hm) in mat.headers.iter().enumerate() {
                if http::HeaderName::from_bytes(hm.name.as_bytes()).is_err() {
                    c.fail(
                        format!("{at}.headers[{h}].name"),
                        format!("{:?} is not a valid header name", hm.name),
                    );
                }
                if http::HeaderValue::from_str(&hm.value).is_err() {
                    c.fail(
                        format!("{at}.headers[{h}].value"),
                        "not a valid header value",
                    );
                }
            }
            if let Some(method) = &mat.method {
                if http::Method::from_bytes(method.as_bytes()).is_err()
                    || method.chars().any(|ch| ch.is_ascii_lowercase())
                {
                    c.fail(
                        format!("{at}.method"),
                        format!("{method:?} is not an HTTP method (GET, POST, ...)"),
                    );
                }
            }
        }
        for (b, br) in rule.backend_refs.iter().enumerate() {
            let at = format!("spec.rules[{r}].backendRefs[{b}]");
            if let Some(k) = br.kind.as_deref().filter(|k| *k != "Service") {
                c.fail(
                    format!("{at}.kind"),
                    format!("{k:?} is not supported; a backend is a Service"),
                );
            }
            c.name(&format!("{at}.name"), &br.name);
            c.not_reserved(&format!("{at}.namespace"), br.namespace.as_deref());
            if br.weight > MAX_WEIGHT {
                c.fail(
                    format!("{at}.weight"),
                    format!("{} is over the maximum of {MAX_WEIGHT}", br.weight),
                );
            }
        }
        if let Some(retry) = &rule.retry {
            if retry.attempts.is_some_and(|a| a > MAX_RETRIES) {
                c.fail(
                    format!("spec.rules[{r}].retry.attempts"),
                    format!("at most {MAX_RETRIES}"),
                );
            }
            for (i, code) in retry.codes.iter().enumerate() {
                if !(400..600).contains(code) {
                    c.fail(
                        format!("spec.rules[{r}].retry.codes[{i}]"),
                        format!("{code} is not a 4xx or 5xx status"),
                    );
                }
            }
        }
    }
}

fn traffic_policy(c: &mut Checker<'_>, s: &TrafficPolicySpec) {
    c.target("spec.targetRef", &s.target_ref);
    if let Some(r) = &s.retries {
        if r.attempts.is_some_and(|a| a > MAX_RETRIES) {
            c.fail("spec.retries.attempts", format!("at most {MAX_RETRIES}"));
        }
        for (i, on) in r.on.iter().enumerate() {
            let ok = RETRY_ON.contains(&on.as_str())
                || on
                    .strip_prefix("retriable-status:")
                    .and_then(|c| c.parse::<u16>().ok())
                    .is_some_and(|c| (400..600).contains(&c));
            if !ok {
                c.fail(
                    format!("spec.retries.on[{i}]"),
                    format!(
                        "{on:?}: expected one of {}, or retriable-status:CODE",
                        RETRY_ON.join(", ")
                    ),
                );
            }
        }
        if let Some(b) = &r.backoff {
            if let (Some(base), Some(max)) = (b.base, b.max) {
                if base > max {
                    c.fail("spec.retries.backoff", "base is longer than max");
                }
            }
        }
        if let Some(ratio) = r.budget.as_ref().and_then(|b| b.ratio) {
            if !(0.0..=10.0).contains(&ratio) {
                c.fail(
                    "spec.retries.budget.ratio",
                    format!("{ratio} is not within 0 and 10"),
                );
            }
        }
    }
    if let Some(cb) = &s.circuit_breaker {
        if let Some(p) = cb.max_ejected_percent {
            c.percent("spec.circuitBreaker.maxEjectedPercent", f64::from(p));
        }
        if let (Some(base), Some(max)) = (cb.base_ejection_time, cb.max_ejection_time) {
            if base > max {
                c.fail(
                    "spec.circuitBreaker",
                    "baseEjectionTime is longer than maxEjectionTime",
                );
            }
        }
    }
    if let Some(rl) = &s.rate_limit {
        if !(rl.requests_per_second > 0.0 && rl.requests_per_second.is_finite()) {
            c.fail("spec.rateLimit.requestsPerSecond", "must be above 0");
        }
    }
    if let Some(f) = &s.fault_injection {
        if let Some(d) = &f.delay {
            c.percent("spec.faultInjection.delay.percent", d.percent);
        }
        if let Some(a) = &f.abort {
            c.percent("spec.faultInjection.abort.percent", a.percent);
            if !(200..600).contains(&a.status) {
                c.fail(
                    "spec.faultInjection.abort.status",
                    format!("{} is not an HTTP status", a.status),
                );
            }
        }
    }
}

fn authorization(c: &mut Checker<'_>, s: &AuthorizationPolicySpec) {
    c.target("spec.targetRef", &s.target_ref);
    for (r, rule) in s.rules.iter().enumerate() {
        if let Some(from) = &rule.from {
            for (i, id) in from.identities.iter().enumerate() {
                if !(id == "*" || id.starts_with("spiffe://")) {
                    c.fail(
                        format!("spec.rules[{r}].from.identities[{i}]"),
                        format!("{id:?} is not a SPIFFE ID (spiffe://...) or \"*\""),
                    );
                }
            }
        }
        if let Some(to) = &rule.to {
            for (i, p) in to.paths.iter().enumerate() {
                // The proxy matches normalized paths only: a pattern that is not one never
                // matches, and the rule would silently allow less than it says.
                if let Err(e) = path::check_pattern(p) {
                    c.fail(
                        format!("spec.rules[{r}].to.paths[{i}]"),
                        format!("{p:?} {e}"),
                    );
                }
            }
            for (i, m) in to.methods.iter().enumerate() {
                if http::Method::from_bytes(m.as_bytes()).is_err() {
                    c.fail(
                        format!("spec.rules[{r}].to.methods[{i}]"),
                        format!("{m:?} is not an HTTP method"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        validate(&parse("f.yaml", text).unwrap())
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect()
    }

    #[test]
    fn a_cluster_ip_is_one_services() {
        let svc = |name: &str, ip: &str| {
            format!("apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{port: 80}}], clusterIPs: [{ip}]}}\n")
        };
        let ok = format!("{}---\n{}", svc("a", "10.0.0.1"), svc("b", "10.0.0.2"));
        assert_eq!(problems(&ok), Vec::<String>::new());
        let p = problems(&format!(
            "{}---\n{}",
            svc("a", "10.0.0.1"),
            svc("b", "10.0.0.1")
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("spec.clusterIPs[0]")
                && p[0].contains("already the cluster IP of Service/shop/a"),
            "{p:?}"
        );
    }

    #[test]
    fn duplicate_resources_are_refused() {
        let svc = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n";
        let p = problems(&format!("{svc}---\n{svc}"));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("defined twice"), "{p:?}");
    }

    #[test]
    fn every_problem_is_listed() {
        let p = problems(
            "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: Bad}\nspec:\n  targetRef: {name: a, kind: Deployment}\n  retries: {on: [sometimes]}\n  faultInjection: {abort: {percent: 120, status: 503}}\n",
        );
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("metadata.name")));
        assert!(p.iter().any(|p| p.starts_with("spec.targetRef.kind")));
        assert!(p.iter().any(|p| p.starts_with("spec.retries.on[0]")));
        assert!(p
            .iter()
            .any(|p| p.starts_with("spec.faultInjection.abort.percent")));
    }

    #[test]
    fn paths_in_rules_must_be_normalized() {
        let p = problems(
            "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  targetRef: {kind: Service, name: a}\n  rules:\n  - to: {paths: [\"/public/*\", \"/public/../admin\", \"admin\", \"/a%2fb\", \"*\", \"/api/**/x\"]}\n",
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("spec.rules[0].to.paths[1]: \"/public/../admin\" can never match: request paths are normalized before matching; write \"/admin\""), "{p:?}");
        assert!(
            p[1].starts_with("spec.rules[0].to.paths[2]: \"admin\" must start with '/'"),
            "{p:?}"
        );
        assert!(p[2].starts_with("spec.rules[0].to.paths[3]: \"/a%2fb\" can never match: requests whose path has this are refused"), "{p:?}");

        let p = problems(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: a}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: \"/api//v1\"}}, {path: {value: \"*\"}}]\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("spec.rules[0].matches[0].path.value: \"/api//v1\" can never match"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("spec.rules[0].matches[1].path.value: \"*\" must start with '/'"),
            "{p:?}"
        );
    }

    #[test]
    fn mesh_config_is_named_default() {
        let p = problems("apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mine}\nspec: {tracing: {samplingRatio: 2}}\n");
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn the_control_planes_namespace_is_not_for_resources() {
        // A Service there would carry the control plane's identity (or an admin's) and could
        // point at its API: a proxy would then relay callers to it from loopback.
        let p = problems("apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: api, namespace: weft-system}\nspec:\n  ports: [{port: 15080}]\n  serviceAccount: weft-control-plane\n  endpoints: [{address: \"127.0.0.1:15080\"}]\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("metadata.namespace: weft-system is reserved"),
            "{p:?}"
        );
        for (kind, spec) in [
            ("HTTPRoute", "{parentRefs: [{name: a, namespace: weft-system}], rules: [{backendRefs: [{name: b, namespace: weft-system}]}]}"),
            ("TrafficPolicy", "{targetRef: {name: a, namespace: weft-system}}"),
            ("AuthorizationPolicy", "{targetRef: {name: a, namespace: weft-system}}"),
        ] {
            let api = if kind == "HTTPRoute" { "gateway.networking.k8s.io/v1" } else { "weft.dev/v1alpha1" };
            let p = problems(&format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: a, namespace: shop}}\nspec: {spec}\n"));
            assert!(!p.is_empty() && p.iter().all(|p| p.contains("weft-system is reserved")), "{kind}: {p:?}");
        }
    }
}
