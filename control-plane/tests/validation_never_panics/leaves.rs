//! Leaf values: hostile strings, numbers at the edges, and junk trees of the real field names.

use super::*;

pub(crate) const STRINGS: &[&str] = &[
    "",
    " ",
    "250ms",
    "5 parsecs",
    "99999999999h",
    "18446744073709551616h",
    "0ms",
    "-1s",
    "1.5s",
    "127.0.0.1:8080",
    "[::1]:0",
    "0.0.0.0:80",
    "::1",
    "default",
    "a",
    "orders",
    "Orders",
    "-a",
    "a-",
    "a_b",
    "Service",
    "Deployment",
    "strict",
    "PERMISSIVE",
    "json",
    "HTTP",
    "GRPC",
    "tcp",
    "Exact",
    "PathPrefix",
    "RegularExpression",
    "ewma",
    "round-robin",
    "random",
    "5xx",
    "retriable-status:503",
    "retriable-status:99999",
    "retriable-status:",
    "spiffe://cluster.local/ns/default/sa/a",
    "*",
    "/",
    "/api",
    "api",
    "GET",
    "get",
    "BREW",
    "GET POST",
    "x-user",
    "bad header",
    "value\nnewline",
    "cluster.local",
    "a..b",
    "http://collector:4318",
    "ftp://x",
    "null",
    "~",
    "true",
    "yes",
    "0x10",
    "1_000",
    ".nan",
    "-.inf",
    "ñame",
    "名前",
    "🦀",
    "\u{0}",
    "\u{7f}",
    "\u{85}",
    "\u{feff}",
    "\u{fffe}",
];

pub(crate) const INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    10,
    11,
    80,
    100,
    101,
    199,
    200,
    399,
    400,
    503,
    599,
    600,
    65_535,
    65_536,
    1_000_000,
    1_000_001,
    4_294_967_295,
    4_294_967_296,
    i64::MAX,
    i64::MIN,
];

pub(crate) const FLOATS: &[f64] = &[
    0.0,
    -0.0,
    0.5,
    1.0,
    1.000_000_1,
    10.0,
    10.5,
    99.9,
    100.0,
    100.5,
    -1.0,
    1e308,
    -1e308,
    f64::MIN_POSITIVE,
    5e-324,
    f64::MAX,
];

/// Every field name in `weft::resources`, for junk objects and stray keys.
pub(crate) const VOCABULARY: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "name",
    "namespace",
    "labels",
    "annotations",
    "resourceVersion",
    "trustDomain",
    "certificateTTL",
    "mtls",
    "tracing",
    "otlpEndpoint",
    "samplingRatio",
    "accessLog",
    "opaquePorts",
    "ports",
    "port",
    "protocol",
    "targetPort",
    "serviceAccount",
    "clusterIPs",
    "endpoints",
    "address",
    "parentRefs",
    "hostnames",
    "group",
    "rules",
    "matches",
    "path",
    "type",
    "value",
    "headers",
    "method",
    "backendRefs",
    "weight",
    "timeouts",
    "request",
    "backendRequest",
    "retry",
    "codes",
    "attempts",
    "backoff",
    "targetRef",
    "connect",
    "idle",
    "retries",
    "on",
    "perTryTimeout",
    "budget",
    "nonIdempotent",
    "base",
    "max",
    "ratio",
    "minPerSecond",
    "circuitBreaker",
    "consecutiveFailures",
    "baseEjectionTime",
    "maxEjectionTime",
    "maxEjectedPercent",
    "maxConnections",
    "maxPendingRequests",
    "maxRequests",
    "loadBalancer",
    "rateLimit",
    "requestsPerSecond",
    "burst",
    "faultInjection",
    "delay",
    "abort",
    "percent",
    "duration",
    "status",
    "from",
    "to",
    "identities",
    "paths",
    "methods",
    "Port",
    "",
];

pub(crate) fn number() -> S {
    prop_oneof![
        3 => select(INTS).prop_map(Value::from),
        1 => Just(Value::from(u64::MAX)),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        2 => select(FLOATS).prop_map(Value::from),
        // NaN and the infinities become null: JSON has no word for them.
        1 => any::<f64>().prop_map(Value::from),
    ]
    .boxed()
}

pub(crate) fn long_string() -> BoxedStrategy<String> {
    (
        64usize..4096,
        select(&["a", "-", "9", "é", "🦀", " ", "\n"][..]),
    )
        .prop_map(|(n, s)| s.repeat(n))
        .boxed()
}

pub(crate) fn string() -> S {
    prop_oneof![
        6 => select(STRINGS).prop_map(Value::from),
        1 => any::<String>().prop_map(Value::from),
        1 => "[a-z0-9-]{0,70}".prop_map(Value::from),
        1 => long_string().prop_map(Value::from),
    ]
    .boxed()
}

pub(crate) fn leaf() -> S {
    prop_oneof![
        3 => number(),
        4 => string(),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!([])),
        1 => Just(json!({})),
    ]
    .boxed()
}

/// Any tree made of the real field names, with hostile leaves.
pub(crate) fn junk_tree() -> S {
    leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                btree_map(select(VOCABULARY), inner, 0..6).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
        .boxed()
}
