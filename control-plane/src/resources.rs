//! The mesh's resources as users write them (YAML, Kubernetes-style), and their parsing.
//!
//! Parsing ([`parse`], in `parse.rs`, under hard budgets) rejects unknown fields and malformed
//! values with the field's path (`spec.rules[0].backendRefs[1].weight: ...`); [`validate`] then
//! checks what types cannot (ranges, references, duplicates), again naming each field. Nothing here knows about proxies:
//! `mesh` compiles accepted resources into what proxies receive.
//!
//! Written back (API answers, the store, `weft get`), a resource has the fields its author gave:
//! an absent `Option` is left out (`#[skip_serializing_none]` on each struct that has one), and
//! so is an empty list or map where the field says `skip_serializing_if`; `resources/tests.rs`
//! pins the JSON.

mod parse;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_with::skip_serializing_none;

pub use parse::{
    documents, parse, parse_each, Problem, Sourced, MAX_DEPTH, MAX_NODES, MAX_TEXT_BYTES,
    NO_ANCHORS,
};
pub use validate::{is_dns_label, validate};

pub const WEFT_API: &str = "weft.dev/v1alpha1";
pub const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";

/// One resource of any kind.
// Resources are few and long-lived: boxing the larger specs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    MeshConfig(Object<MeshConfigSpec>),
    Service(Object<ServiceSpec>),
    #[serde(rename = "HTTPRoute")]
    HttpRoute(Object<HttpRouteSpec>),
    TrafficPolicy(Object<TrafficPolicySpec>),
    AuthorizationPolicy(Object<AuthorizationPolicySpec>),
}

/// The kinds, as users write them, with their apiVersion.
pub const KINDS: [(&str, &str); 5] = [
    ("MeshConfig", WEFT_API),
    ("Service", WEFT_API),
    ("HTTPRoute", GATEWAY_API),
    ("TrafficPolicy", WEFT_API),
    ("AuthorizationPolicy", WEFT_API),
];

/// The kinds, comma-separated, for messages that list them.
pub fn known_kinds() -> String {
    KINDS.map(|(k, _)| k).join(", ")
}

/// The kind a name in a URL or on the command line means: the kind itself in any case, or its
/// lowercase plural (`services`, `httproutes`, `trafficpolicies`, ...).
pub fn kind_named(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    KINDS.iter().map(|(k, _)| *k).find(|k| {
        let k = k.to_ascii_lowercase();
        let plural = match k.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{k}s"),
        };
        lower == k || lower == plural
    })
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MeshConfig(_) => "MeshConfig",
            Self::Service(_) => "Service",
            Self::HttpRoute(_) => "HTTPRoute",
            Self::TrafficPolicy(_) => "TrafficPolicy",
            Self::AuthorizationPolicy(_) => "AuthorizationPolicy",
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Self::MeshConfig(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::HttpRoute(o) => &o.metadata,
            Self::TrafficPolicy(o) => &o.metadata,
            Self::AuthorizationPolicy(o) => &o.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        match self {
            Self::MeshConfig(o) => &mut o.metadata,
            Self::Service(o) => &mut o.metadata,
            Self::HttpRoute(o) => &mut o.metadata,
            Self::TrafficPolicy(o) => &mut o.metadata,
            Self::AuthorizationPolicy(o) => &mut o.metadata,
        }
    }

    /// `Kind/namespace/name`.
    pub fn id(&self) -> String {
        let m = self.metadata();
        format!("{}/{}/{}", self.kind(), m.namespace, m.name)
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: S,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub resource_version: Option<String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// A duration written as a string: `250ms`, `2s`, `1m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        weft_runtime::duration::parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&weft_runtime::duration::format_duration(self.0))
    }
}

impl Dur {
    pub fn millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

// ---- MeshConfig ----

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    pub trust_domain: Option<String>,
    #[serde(rename = "certificateTTL")]
    pub certificate_ttl: Option<Dur>,
    pub mtls: Option<MtlsMode>,
    pub tracing: Option<TracingSpec>,
    pub access_log: Option<AccessLogMode>,
    /// Ports whose connections skip protocol detection (server-speaks-first protocols); absent:
    /// [`DEFAULT_OPAQUE_PORTS`], `[]`: none.
    pub opaque_ports: Option<Vec<u16>>,
}

/// MeshConfig `opaquePorts` when it is not set: the usual ports of server-speaks-first
/// protocols (SMTP, submission, MySQL, Galera, PostgreSQL, Redis, Elasticsearch transport,
/// memcached), the list Linkerd users know.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    Strict,
    Permissive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogMode {
    Off,
    Json,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingSpec {
    pub otlp_endpoint: Option<String>,
    pub sampling_ratio: Option<f64>,
}

// ---- Service ----

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
    pub service_account: Option<String>,
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// The pod port it reaches under transparent interception (Kubernetes' `targetPort`): each
    /// endpoint's IP and this port. Absent: the endpoint's own address.
    #[serde(rename = "targetPort")]
    pub target_port: Option<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Http,
    Http2,
    Grpc,
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

// ---- HTTPRoute ----

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    /// Accepted for compatibility with Gateway API manifests; a mesh route matches by parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: Option<RouteTimeouts>,
    pub retry: Option<RouteRetry>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    pub method: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, rename = "type")]
    pub kind: PathMatchType,
    #[serde(default = "root_path")]
    pub value: String,
}

fn root_path() -> String {
    "/".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(default, rename = "type")]
    pub kind: HeaderMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum HeaderMatchType {
    #[default]
    Exact,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTimeouts {
    pub request: Option<Dur>,
    pub backend_request: Option<Dur>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRetry {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    pub attempts: Option<u32>,
    pub backoff: Option<Dur>,
}

// ---- TrafficPolicy ----

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    pub target_ref: TargetRef,
    pub timeouts: Option<Timeouts>,
    pub retries: Option<Retries>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub load_balancer: Option<LoadBalancer>,
    pub rate_limit: Option<RateLimit>,
    pub fault_injection: Option<FaultInjection>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub connect: Option<Dur>,
    pub request: Option<Dur>,
    pub idle: Option<Dur>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
    pub per_try_timeout: Option<Dur>,
    pub backoff: Option<Backoff>,
    pub budget: Option<Budget>,
    /// Retry requests with non-idempotent methods (POST, PATCH, ...) even once sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub base: Option<Dur>,
    pub max: Option<Dur>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Budget {
    pub ratio: Option<f64>,
    pub min_per_second: Option<u32>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    pub consecutive_failures: Option<u32>,
    pub base_ejection_time: Option<Dur>,
    pub max_ejection_time: Option<Dur>,
    pub max_ejected_percent: Option<u32>,
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    Ewma,
    RoundRobin,
    LeastRequest,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: Option<u32>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjection {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    pub percent: f64,
    pub duration: Dur,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    pub percent: f64,
    pub status: u16,
}

// ---- AuthorizationPolicy ----

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    pub from: Option<AuthorizationFrom>,
    pub to: Option<AuthorizationTo>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationFrom {
    #[serde(default)]
    pub identities: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationTo {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
}

#[cfg(test)]
mod tests;
