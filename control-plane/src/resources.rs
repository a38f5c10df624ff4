//! The mesh's resources as users write them (YAML, Kubernetes-style), and their parsing.
//!
//! Parsing rejects unknown fields and malformed values with the field's path
//! (`spec.rules[0].backendRefs[1].weight: ...`); [`validate`] then checks what types cannot
//! (ranges, references, duplicates), again naming each field. Nothing here knows about proxies:
//! `mesh` compiles accepted resources into what proxies receive.

mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
        weft_proxy::config::parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl Dur {
    pub fn millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

// ---- MeshConfig ----

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    #[serde(
        default,
        rename = "certificateTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_ttl: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogMode>,
}

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

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_ratio: Option<f64>,
}

// ---- Service ----

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Dur>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRetry {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Dur>,
}

// ---- TrafficPolicy ----

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_injection: Option<FaultInjection>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Dur>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Retry requests with non-idempotent methods (POST, PATCH, ...) even once sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Dur>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    Ewma,
    RoundRobin,
    LeastRequest,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<AuthorizationFrom>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

// ---- parsing ----

/// A problem with a resource, placed as exactly as we can: source, document, field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// File name, or `request` for the API.
    pub source: String,
    /// 1-based document number within the source.
    pub document: usize,
    /// The resource, `Kind/namespace/name`, when known.
    pub resource: Option<String>,
    /// Dotted field path, e.g. `spec.rules[0].backendRefs[0].weight`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// A parsed resource and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced {
    pub resource: Resource,
    pub source: String,
    pub document: usize,
}

/// Parses every document of a multi-document YAML (or JSON) text. Returns every problem found.
pub fn parse(source: &str, text: &str) -> Result<Vec<Sourced>, Vec<Problem>> {
    let (out, problems) = parse_each(source, text);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Parses every document it can: the resources that parsed, and the problems of those that did
/// not (so that they can still be checked, and every problem reported at once).
pub fn parse_each(source: &str, text: &str) -> (Vec<Sourced>, Vec<Problem>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    if let Some(line) = too_deep(text) {
        problems.push(Problem {
            source: source.to_string(),
            document: 1,
            resource: None,
            field: String::new(),
            message: format!(
                "line {line}: flow collections ([...], {{...}}) nested deeper than {MAX_FLOW_DEPTH}"
            ),
        });
        return (out, problems);
    }
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let problem = |resource: Option<String>, field: String, message: String| Problem {
            source: source.to_string(),
            document,
            resource,
            field,
            message,
        };
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue, // an empty document, e.g. after a trailing ---
            Ok(v) => v,
            Err(e) => {
                problems.push(problem(None, String::new(), format!("not valid YAML: {e}")));
                // A syntax error ends the stream: nothing after it can be read reliably.
                break;
            }
        };
        match parse_value(value) {
            Ok(resource) => out.push(Sourced {
                resource,
                source: source.to_string(),
                document,
            }),
            Err((resource, field, message)) => problems.push(problem(resource, field, message)),
        }
    }
    (out, problems)
}

/// How deep `[` and `{` may nest. Resources need a handful of levels; the YAML scanner takes time
/// quadratic in the depth of nested flow keys (`{a: {a: {a: ...`), so deeper input is refused
/// before it is scanned: a 1 MiB request would otherwise hold a thread for minutes.
pub const MAX_FLOW_DEPTH: usize = 64;

/// The line where flow collections nest deeper than [`MAX_FLOW_DEPTH`], if they do. Every `[` and
/// `{` counts, even in quotes (so nothing can hide one); a `]` or `}` counts only outside quoted
/// scalars and comments (so none can be faked). A plain scalar with an apostrophe may make this
/// count more than the parser would: the error is on the safe side.
pub fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let (mut comment, mut escaped) = (false, false);
    let mut prev = b'\n';
    for &b in text.as_bytes() {
        if b == b'\n' {
            line += 1;
            comment = false;
            if quote == Some(b'\'') {
                quote = None;
            }
        }
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(line);
                }
            }
            _ if comment => {}
            _ if escaped => escaped = false,
            b'\\' if quote == Some(b'"') => escaped = true,
            b'"' | b'\'' if quote == Some(b) => quote = None,
            _ if quote.is_some() => {}
            b'"' | b'\'' => quote = Some(b),
            b'#' if prev.is_ascii_whitespace() => comment = true,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = b;
    }
    None
}

type ParseError = (Option<String>, String, String);

fn parse_value(value: serde_yaml::Value) -> Result<Resource, ParseError> {
    let get = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let kind = get("kind").ok_or_else(|| {
        (
            None,
            "kind".into(),
            format!("missing; expected one of {}", known_kinds()),
        )
    })?;
    let api_version = get("apiVersion").ok_or((None, "apiVersion".into(), "missing".into()))?;
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("?");
    let ns = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    let id = Some(format!("{kind}/{ns}/{name}"));
    let Some((_, want_api)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        return Err((
            None,
            "kind".into(),
            format!("unknown kind {kind:?}; expected one of {}", known_kinds()),
        ));
    };
    if api_version != *want_api {
        return Err((
            id,
            "apiVersion".into(),
            format!("{kind} is {want_api}, not {api_version:?}"),
        ));
    }
    fn typed<S: serde::de::DeserializeOwned>(
        value: serde_yaml::Value,
        id: &Option<String>,
    ) -> Result<Object<S>, ParseError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            (id.clone(), field, e.into_inner().to_string())
        })
    }
    Ok(match kind.as_str() {
        "MeshConfig" => Resource::MeshConfig(typed(value, &id)?),
        "Service" => Resource::Service(typed(value, &id)?),
        "HTTPRoute" => Resource::HttpRoute(typed(value, &id)?),
        "TrafficPolicy" => Resource::TrafficPolicy(typed(value, &id)?),
        _ => Resource::AuthorizationPolicy(typed(value, &id)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  parentRefs: [{name: orders, kind: Service}]
  rules:
  - backendRefs:
    - {name: orders-v1, weight: 90}
    - {name: orders-v2, weight: ninety}
"#;

    fn one_problem(text: &str) -> Problem {
        let mut p = parse("f.yaml", text).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        p.remove(0)
    }

    #[test]
    fn weight_that_does_not_parse_names_the_field() {
        let p = one_problem(ROUTE);
        assert_eq!(p.field, "spec.rules[0].backendRefs[1].weight");
        assert_eq!(p.resource.as_deref(), Some("HTTPRoute/shop/orders"));
        assert!(
            p.to_string()
                .starts_with("f.yaml: document 1 (HTTPRoute/shop/orders): spec.rules"),
            "{p}"
        );
    }

    #[test]
    fn unknown_field_names_the_field() {
        let p = one_problem("apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80}]\n  endpoint: []\n");
        assert_eq!(p.field, "spec.endpoint");
        assert!(
            p.message.contains("unknown field `endpoint`"),
            "{}",
            p.message
        );
    }

    #[test]
    fn bad_duration_names_the_field() {
        let p = one_problem("apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: a}\nspec:\n  targetRef: {name: a}\n  timeouts: {request: 5 parsecs}\n");
        assert_eq!(p.field, "spec.timeouts.request");
        assert!(p.message.contains("unknown unit"), "{}", p.message);
    }

    #[test]
    fn kinds_are_named_as_users_write_them() {
        assert_eq!(kind_named("services"), Some("Service"));
        assert_eq!(kind_named("HTTPRoute"), Some("HTTPRoute"));
        assert_eq!(kind_named("httproutes"), Some("HTTPRoute"));
        assert_eq!(kind_named("trafficpolicies"), Some("TrafficPolicy"));
        assert_eq!(kind_named("meshconfig"), Some("MeshConfig"));
        assert_eq!(kind_named("pods"), None);
    }

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        let p = one_problem(
            "apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {name: a}\nspec: {}\n",
        );
        assert!(
            p.message.contains("MeshConfig, Service, HTTPRoute"),
            "{}",
            p.message
        );
    }

    #[test]
    fn multi_document_reports_each_bad_document() {
        let text = format!("{ROUTE}---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: ok}}\nspec: {{ports: [{{port: 80}}]}}\n---\nkind: Nope\napiVersion: x\n");
        let problems = parse("f.yaml", &text).unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.document).collect::<Vec<_>>(),
            [1, 3]
        );
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_it_is_scanned() {
        let deep = "{a: ".repeat(100_000);
        let started = std::time::Instant::now();
        let p = one_problem(&deep);
        assert!(p.message.contains("nested deeper than 64"), "{p}");
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        // Closing brackets in quotes or comments cannot hide the depth.
        let hidden = "{a: \"]]\", b: # ]]\n".repeat(70);
        assert!(one_problem(&hidden).message.contains("deeper than"));
        // Shallow flow collections, brackets in strings and comments are fine.
        let text = "apiVersion: weft.dev/v1alpha1 # [[[[\nkind: Service\nmetadata: {name: a, annotations: {note: \"[{[{\", other: 'it''s [x]'}}\nspec: {ports: [{port: 80}]}\n";
        assert_eq!(parse("f.yaml", text).unwrap().len(), 1);
    }

    #[test]
    fn valid_documents_parse_with_defaults() {
        let text = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n";
        let r = parse("f.yaml", text).unwrap();
        assert_eq!(r.len(), 1);
        let Resource::Service(s) = &r[0].resource else {
            panic!()
        };
        assert_eq!(s.metadata.namespace, "default");
        assert_eq!(s.spec.ports[0].protocol, Protocol::Http);
    }
}
