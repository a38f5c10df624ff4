#![allow(clippy::unwrap_used)]
//! Parsing and validating resources never panics, whatever the input.
//!
//! Three families of input: arbitrary text (including YAML punctuation soup), generated
//! documents shaped like the real resources (real field names, hostile leaf values), and
//! arbitrary strings in every kind of duration field. Whatever happens, `parse` and `validate`
//! return problems rather than panicking, and every problem says something.

use std::time::Duration;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};
use weft::resources::{parse, validate, Problem, Resource, Sourced, GATEWAY_API, WEFT_API};
use weft_proxy::config::parse_duration;

type S = BoxedStrategy<Value>;

// ---- leaves ----

const STRINGS: &[&str] = &[
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

const INTS: &[i64] = &[
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

const FLOATS: &[f64] = &[
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
const VOCABULARY: &[&str] = &[
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
    "ports",
    "port",
    "protocol",
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

fn number() -> S {
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

fn long_string() -> BoxedStrategy<String> {
    (
        64usize..4096,
        select(&["a", "-", "9", "é", "🦀", " ", "\n"][..]),
    )
        .prop_map(|(n, s)| s.repeat(n))
        .boxed()
}

fn string() -> S {
    prop_oneof![
        6 => select(STRINGS).prop_map(Value::from),
        1 => any::<String>().prop_map(Value::from),
        1 => "[a-z0-9-]{0,70}".prop_map(Value::from),
        1 => long_string().prop_map(Value::from),
    ]
    .boxed()
}

fn leaf() -> S {
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
fn junk_tree() -> S {
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

// ---- fields shaped like the real ones ----

/// Mostly `s`; now and then anything at all.
fn or_junk(s: S) -> S {
    prop_oneof![60 => s, 1 => leaf(), 1 => junk_tree()].boxed()
}

/// An object with each field present with its probability, and rarely a stray key; now and then
/// anything at all instead.
fn object(fields: Vec<(&'static str, f64, S)>) -> S {
    or_junk(exact_object(fields))
}

/// An object with each field present with its probability, and rarely a stray key.
fn exact_object(fields: Vec<(&'static str, f64, S)>) -> S {
    let parts: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .into_iter()
        .map(|(k, p, s)| prop::option::weighted(p, s.prop_map(move |v| (k.to_string(), v))).boxed())
        .collect();
    let stray = prop::option::weighted(0.02, (select(VOCABULARY), leaf()));
    (parts, stray)
        .prop_map(|(parts, stray)| {
            let mut m: Map<String, Value> = parts.into_iter().flatten().collect();
            if let Some((k, v)) = stray {
                m.entry(k.to_string()).or_insert(v);
            }
            Value::Object(m)
        })
        .boxed()
}

fn list(item: S, max: usize) -> S {
    or_junk(vec(item, 0..=max).prop_map(Value::Array).boxed())
}

/// One of `words`, or sometimes any string.
fn word(words: &'static [&'static str]) -> S {
    or_junk(prop_oneof![12 => select(words).prop_map(Value::from), 1 => string()].boxed())
}

/// An enum's variant: mostly one of `valid`, sometimes one of `invalid`, or any string.
fn variant(valid: &'static [&'static str], invalid: &'static [&'static str]) -> S {
    or_junk(
        prop_oneof![
            20 => select(valid).prop_map(Value::from),
            2 => select(invalid).prop_map(Value::from),
            1 => string(),
        ]
        .boxed(),
    )
}

fn name() -> S {
    or_junk(
        prop_oneof![
            8 => select(&["default", "a", "b", "orders", "orders-v1", "shop", "x1"][..])
                .prop_map(Value::from),
            2 => "[a-z]([a-z0-9-]{0,61}[a-z0-9])?".prop_map(Value::from),
            2 => select(&["", "-a", "a-", "A", "a_b", "a.b", "ñ", "名前", " a"][..])
                .prop_map(Value::from),
            1 => "[a-z]{64,80}".prop_map(Value::from),
            1 => long_string().prop_map(Value::from),
            1 => any::<String>().prop_map(Value::from),
        ]
        .boxed(),
    )
}

fn duration() -> S {
    or_junk(
        prop_oneof![
            8 => select(
                &[
                    "250ms", "1s", "2s", "1m", "1h", "0ms", "0s", "1.5s", ".5s", "5.s", "500ms",
                    "87600h", " 1s ", "0.0000000001ms",
                ][..],
            )
            .prop_map(Value::from),
            4 => "[0-9]{1,4}(\\.[0-9]{1,3})?(ms|s|m|h)".prop_map(Value::from),
            1 => select(
                &[
                    "87601h", "5 parsecs", "99999999999h", "18446744073709551616h", "-1s",
                    "1e3s", "1", "s", "", "1 s",
                ][..],
            )
            .prop_map(Value::from),
            1 => "[0-9]{1,25}(\\.[0-9]{0,5})?(ms|s|m|h|us|d|)".prop_map(Value::from),
            1 => string(),
        ]
        .boxed(),
    )
}

/// Unsigned numbers near the edges the checks care about, and now and then ones the types
/// refuse.
fn uint() -> S {
    or_junk(
        prop_oneof![
            12 => select(
                &[0u32, 1, 2, 3, 10, 11, 80, 100, 101, 199, 200, 399, 400, 503, 599, 600,
                  65_535, 65_536, 1_000_000, 1_000_001, u32::MAX][..],
            )
            .prop_map(Value::from),
            2 => any::<u32>().prop_map(Value::from),
            1 => select(INTS).prop_map(Value::from),
            1 => Just(Value::from(u64::MAX)),
            1 => select(FLOATS).prop_map(Value::from),
        ]
        .boxed(),
    )
}

fn port() -> S {
    or_junk(
        prop_oneof![
            12 => select(&[0u16, 1, 80, 443, 8080, 65_535][..]).prop_map(Value::from),
            4 => any::<u16>().prop_map(Value::from),
            1 => select(&[65_536i64, -1, 4_294_967_296][..]).prop_map(Value::from),
        ]
        .boxed(),
    )
}

fn float() -> S {
    or_junk(
        prop_oneof![
            4 => select(FLOATS).prop_map(Value::from),
            2 => select(INTS).prop_map(Value::from),
            1 => any::<f64>().prop_map(Value::from),
        ]
        .boxed(),
    )
}

fn boolean() -> S {
    or_junk(any::<bool>().prop_map(Value::from).boxed())
}

fn string_map() -> S {
    or_junk(
        btree_map(
            prop_oneof![
                select(&["app", "version", "weft.dev/x", "", "a b"][..]).prop_map(String::from),
                any::<String>()
            ],
            prop_oneof![12 => string(), 1 => leaf()],
            0..4,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect()))
        .boxed(),
    )
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "get", "BREW", "", "G T"];
const REF_KINDS: &[&str] = &["Service", "Gateway", "Deployment", ""];
const GROUPS: &[&str] = &["", "core", "gateway.networking.k8s.io"];

fn metadata() -> S {
    object(vec![
        ("name", 0.95, name()),
        ("namespace", 0.5, name()),
        ("labels", 0.3, string_map()),
        ("annotations", 0.2, string_map()),
        (
            "resourceVersion",
            0.2,
            prop_oneof![4 => "[0-9]{1,6}".prop_map(Value::from), 1 => string(), 1 => number()]
                .boxed(),
        ),
    ])
}

fn target_ref() -> S {
    object(vec![
        ("group", 0.1, word(GROUPS)),
        ("kind", 0.4, word(REF_KINDS)),
        ("name", 0.95, name()),
        ("namespace", 0.3, name()),
    ])
}

fn mesh_config_spec() -> S {
    object(vec![
        (
            "trustDomain",
            0.5,
            word(&[
                "cluster.local",
                "example.org",
                "Cluster.Local",
                "",
                "a..b",
                ".a",
                "a.",
            ]),
        ),
        ("certificateTTL", 0.5, duration()),
        (
            "mtls",
            0.5,
            variant(&["strict", "permissive"], &["STRICT", "off"]),
        ),
        (
            "tracing",
            0.4,
            object(vec![
                (
                    "otlpEndpoint",
                    0.6,
                    word(&["http://collector:4318", "https://x", "ftp://x", "collector"]),
                ),
                ("samplingRatio", 0.6, float()),
            ]),
        ),
        (
            "accessLog",
            0.4,
            variant(&["off", "json"], &["text", "JSON"]),
        ),
    ])
}

fn service_spec() -> S {
    let port_spec = object(vec![
        ("name", 0.3, name()),
        ("port", 0.95, port()),
        (
            "protocol",
            0.5,
            variant(&["HTTP", "HTTP2", "GRPC", "TCP"], &["http", "UDP"]),
        ),
    ]);
    let endpoint = object(vec![
        (
            "address",
            0.95,
            or_junk(
                prop_oneof![
                    12 => variant(
                        &[
                            "127.0.0.1:8080",
                            "10.0.0.1:80",
                            "10.0.0.2:80",
                            "[::1]:0",
                            "[::1]:8080",
                            "0.0.0.0:80",
                            "127.0.0.1:0",
                        ],
                        &[
                            "localhost:80",
                            "127.0.0.1",
                            "1.2.3.4:65536",
                            "[fe80::1%eth0]:80",
                        ],
                    ),
                    2 => "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[0-9]{1,5}"
                        .prop_map(Value::from),
                ]
                .boxed(),
            ),
        ),
        ("labels", 0.3, string_map()),
    ]);
    object(vec![
        ("ports", 0.95, list(port_spec, 4)),
        ("serviceAccount", 0.3, name()),
        (
            "clusterIPs",
            0.3,
            list(
                variant(&["10.96.0.1", "::1", "0.0.0.0"], &["10.96.0.1:80", ""]),
                3,
            ),
        ),
        ("endpoints", 0.7, list(endpoint, 4)),
    ])
}

fn http_route_spec() -> S {
    let parent = object(vec![
        ("group", 0.2, word(GROUPS)),
        ("kind", 0.4, word(REF_KINDS)),
        ("name", 0.95, name()),
        ("namespace", 0.3, name()),
        ("port", 0.3, port()),
    ]);
    let path = object(vec![
        (
            "type",
            0.5,
            variant(&["Exact", "PathPrefix"], &["RegularExpression"]),
        ),
        ("value", 0.7, word(&["/", "/api", "api", ""])),
    ]);
    let header = object(vec![
        ("type", 0.3, variant(&["Exact"], &["RegularExpression"])),
        (
            "name",
            0.95,
            word(&["x-user", "X-User", "bad header", "", ":path"]),
        ),
        ("value", 0.95, word(&["a", "value\nnewline", "", "\u{7f}"])),
    ]);
    let matches = object(vec![
        ("path", 0.6, path),
        ("headers", 0.3, list(header, 3)),
        ("method", 0.3, word(METHODS)),
    ]);
    let backend = object(vec![
        ("group", 0.1, word(GROUPS)),
        ("kind", 0.3, word(REF_KINDS)),
        ("name", 0.95, name()),
        ("namespace", 0.2, name()),
        ("port", 0.4, port()),
        ("weight", 0.5, uint()),
    ]);
    let timeouts = object(vec![
        ("request", 0.6, duration()),
        ("backendRequest", 0.6, duration()),
    ]);
    let retry = object(vec![
        ("codes", 0.5, list(uint(), 4)),
        ("attempts", 0.5, uint()),
        ("backoff", 0.4, duration()),
    ]);
    let rule = object(vec![
        ("name", 0.2, name()),
        ("matches", 0.5, list(matches, 3)),
        ("backendRefs", 0.8, list(backend, 3)),
        ("timeouts", 0.3, timeouts),
        ("retry", 0.3, retry),
    ]);
    object(vec![
        ("parentRefs", 0.95, list(parent, 3)),
        ("hostnames", 0.2, list(string(), 2)),
        ("rules", 0.8, list(rule, 3)),
    ])
}

fn traffic_policy_spec() -> S {
    let timeouts = object(vec![
        ("connect", 0.5, duration()),
        ("request", 0.5, duration()),
        ("idle", 0.5, duration()),
    ]);
    let retries = object(vec![
        ("attempts", 0.5, uint()),
        (
            "on",
            0.5,
            list(
                word(&[
                    "5xx",
                    "gateway-error",
                    "connect-failure",
                    "unavailable",
                    "retriable-status:503",
                    "retriable-status:200",
                    "retriable-status:",
                    "retriable-status:70000",
                    "sometimes",
                ]),
                4,
            ),
        ),
        ("perTryTimeout", 0.4, duration()),
        (
            "backoff",
            0.3,
            object(vec![("base", 0.6, duration()), ("max", 0.6, duration())]),
        ),
        (
            "budget",
            0.3,
            object(vec![("ratio", 0.6, float()), ("minPerSecond", 0.5, uint())]),
        ),
        ("nonIdempotent", 0.2, boolean()),
    ]);
    let circuit_breaker = object(vec![
        ("consecutiveFailures", 0.5, uint()),
        ("baseEjectionTime", 0.4, duration()),
        ("maxEjectionTime", 0.4, duration()),
        ("maxEjectedPercent", 0.4, uint()),
        ("maxConnections", 0.3, uint()),
        ("maxPendingRequests", 0.3, uint()),
        ("maxRequests", 0.3, uint()),
    ]);
    let rate_limit = object(vec![
        ("requestsPerSecond", 0.9, float()),
        ("burst", 0.5, uint()),
    ]);
    let fault_injection = object(vec![
        (
            "delay",
            0.5,
            object(vec![
                ("percent", 0.9, float()),
                ("duration", 0.9, duration()),
            ]),
        ),
        (
            "abort",
            0.5,
            object(vec![("percent", 0.9, float()), ("status", 0.9, uint())]),
        ),
    ]);
    object(vec![
        ("targetRef", 0.95, target_ref()),
        ("timeouts", 0.4, timeouts),
        ("retries", 0.4, retries),
        ("circuitBreaker", 0.3, circuit_breaker),
        (
            "loadBalancer",
            0.3,
            variant(
                &["ewma", "round-robin", "least-request"],
                &["random", "RoundRobin"],
            ),
        ),
        ("rateLimit", 0.3, rate_limit),
        ("faultInjection", 0.3, fault_injection),
    ])
}

fn authorization_policy_spec() -> S {
    let from = object(vec![(
        "identities",
        0.9,
        list(
            word(&[
                "*",
                "spiffe://cluster.local/ns/default/sa/a",
                "spiffe://",
                "cluster.local/ns/a",
            ]),
            3,
        ),
    )]);
    let to = object(vec![
        ("paths", 0.7, list(word(&["/", "/api", "*", "api", ""]), 3)),
        ("methods", 0.7, list(word(METHODS), 3)),
    ]);
    let rule = object(vec![("from", 0.6, from), ("to", 0.6, to)]);
    object(vec![
        ("targetRef", 0.95, target_ref()),
        ("rules", 0.7, list(rule, 3)),
    ])
}

const API_VERSIONS: &[&str] = &[
    WEFT_API,
    GATEWAY_API,
    "weft.dev/v1",
    "v1",
    "",
    "weft.dev/v1alpha1 ",
    "WEFT.DEV/V1ALPHA1",
];

const JUNK_KINDS: &[&str] = &[
    "Mesh",
    "service",
    "HttpRoute",
    "Pod",
    "",
    "TrafficPolicy ",
    "Ŝervice",
];

/// A whole document: usually the right apiVersion for the kind, and a spec of the kind's shape.
fn document(kind: &'static str, api: &'static str, spec: S) -> S {
    exact_object(vec![
        (
            "apiVersion",
            0.97,
            prop_oneof![12 => Just(Value::from(api)), 1 => word(API_VERSIONS)].boxed(),
        ),
        (
            "kind",
            0.97,
            prop_oneof![12 => Just(Value::from(kind)), 1 => word(JUNK_KINDS)].boxed(),
        ),
        ("metadata", 0.97, metadata()),
        ("spec", 0.95, spec),
    ])
}

fn any_document() -> S {
    prop_oneof![
        4 => document("MeshConfig", WEFT_API, mesh_config_spec()),
        4 => document("Service", WEFT_API, service_spec()),
        4 => document("HTTPRoute", GATEWAY_API, http_route_spec()),
        4 => document("TrafficPolicy", WEFT_API, traffic_policy_spec()),
        4 => document("AuthorizationPolicy", WEFT_API, authorization_policy_spec()),
        1 => exact_object(vec![
            ("apiVersion", 0.9, word(API_VERSIONS)),
            ("kind", 0.9, word(JUNK_KINDS)),
            ("metadata", 0.9, metadata()),
            ("spec", 0.9, junk_tree()),
        ]),
        1 => junk_tree(),
    ]
    .boxed()
}

/// Documents, each written as YAML or as JSON (which is YAML too).
fn stream() -> impl Strategy<Value = Vec<String>> {
    vec((any_document(), any::<bool>()), 1..6).prop_map(|docs| {
        docs.into_iter()
            .map(|(doc, as_json)| {
                if as_json {
                    serde_json::to_string(&doc).unwrap()
                } else {
                    serde_saphyr::to_string(&doc).unwrap()
                }
            })
            .collect()
    })
}

// ---- checks ----

fn check_problems(problems: &[Problem], documents: usize) {
    for p in problems {
        assert!(
            !p.message.trim().is_empty(),
            "problem without a message: {p:?}"
        );
        assert!(
            (1..=documents).contains(&p.document),
            "problem in document {} of {documents}: {p:?}",
            p.document
        );
        if let Some(r) = &p.resource {
            assert!(!r.is_empty(), "empty resource: {p:?}");
        }
        let shown = p.to_string();
        assert!(shown.contains(&p.message), "{shown:?} lacks the message");
    }
}

fn check_accepted(items: &[Sourced], documents: usize) {
    assert!(items.len() <= documents);
    let problems = validate(items);
    check_problems(&problems, documents);
    if problems.is_empty() {
        for r in items {
            let id = r.resource.id();
            let kind = r.resource.kind();
            assert!(id.starts_with(&format!("{kind}/")), "{id} is not a {kind}");
        }
    }
    // What was accepted can be written back out.
    for r in items {
        serde_saphyr::to_string(&r.resource).unwrap();
    }
}

/// Parses (and, when that succeeds, validates) `text`, checking everything said about it.
fn check_text(text: &str, documents: usize) {
    match parse("gen.yaml", text) {
        Ok(items) => check_accepted(&items, documents),
        Err(problems) => {
            assert!(!problems.is_empty(), "Err without problems");
            check_problems(&problems, documents);
        }
    }
}

// ---- arbitrary text ----

const TOKENS: &[&str] = &[
    "---\n",
    "...\n",
    "\n",
    "  ",
    "- ",
    ": ",
    "? ",
    "{",
    "}",
    "[",
    "]",
    ", ",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: *a\n",
    "!!str ",
    "!!binary ",
    "!!int ",
    "!!float ",
    "!!map ",
    "!tag ",
    "!<tag:yaml.org,2002:str> ",
    "%YAML 1.2\n",
    "%TAG ! tag:x:\n",
    "|\n",
    ">-\n",
    "'",
    "\"",
    "\\",
    "# ",
    "apiVersion: weft.dev/v1alpha1\n",
    "apiVersion: gateway.networking.k8s.io/v1\n",
    "kind: Service\n",
    "kind: HTTPRoute\n",
    "kind: TrafficPolicy\n",
    "kind: MeshConfig\n",
    "kind: AuthorizationPolicy\n",
    "metadata: {name: a}\n",
    "metadata:\n  name: default\n",
    "spec:\n",
    "  ports: [{port: 80}]\n",
    "  endpoints: [{address: 127.0.0.1:8080}]\n",
    "  targetRef: {name: a}\n",
    "  timeouts: {request: ",
    "  parentRefs: [{name: a}]\n",
    "  rules:\n",
    "  - backendRefs: [{name: b, weight: ",
    "250ms",
    "99999999999h",
    "18446744073709551616h",
    "5 parsecs",
    "4294967296",
    "-1",
    ".nan",
    ".inf",
    "~",
    "null",
    "true",
    "0x1F",
    "1e308",
    "\t",
    "\r\n",
    "\u{feff}",
    "\u{85}",
    "é",
    "🦀",
    "\u{0}",
];

fn token_soup() -> impl Strategy<Value = String> {
    vec(select(TOKENS), 0..48).prop_map(|t| t.concat())
}

fn punctuation() -> impl Strategy<Value = String> {
    "[a-z0-9 :\\-\\[\\]{}&*!|>'\"%@`\\\\\n\t\r#,?.~<=\u{0}\u{85}\u{feff}é]{0,256}"
}

// ---- durations ----

/// Where durations are written, as (kind, apiVersion, the field's path, spec with the value in).
type DurationField = (&'static str, &'static str, &'static str, fn(Value) -> Value);

const DURATION_FIELDS: &[DurationField] = &[
    (
        "TrafficPolicy",
        WEFT_API,
        "spec.timeouts.request",
        |d| json!({"targetRef": {"name": "a"}, "timeouts": {"request": d}}),
    ),
    (
        "TrafficPolicy",
        WEFT_API,
        "spec.retries.backoff.max",
        |d| json!({"targetRef": {"name": "a"}, "retries": {"backoff": {"max": d}}}),
    ),
    (
        "TrafficPolicy",
        WEFT_API,
        "spec.faultInjection.delay.duration",
        |d| json!({"targetRef": {"name": "a"}, "faultInjection": {"delay": {"percent": 1, "duration": d}}}),
    ),
    (
        "MeshConfig",
        WEFT_API,
        "spec.certificateTTL",
        |d| json!({"certificateTTL": d}),
    ),
    (
        "HTTPRoute",
        GATEWAY_API,
        "spec.rules[0].timeouts.backendRequest",
        |d| json!({"parentRefs": [{"name": "a"}], "rules": [{"timeouts": {"backendRequest": d}}]}),
    ),
];

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => "[0-9]{1,40}(\\.[0-9]{0,40})?(ms|s|m|h|us|ns|d|)",
        1 => "[ \t]{0,2}[0-9.]{0,12}[ \t]{0,2}(ms|s|m|h)?[ \t]{0,2}",
        1 => "[-+]?[0-9]{0,5}(\\.[0-9]{0,3})?([eE][-+]?[0-9]{1,4})?(ms|s|m|h)",
        1 => (300usize..400).prop_map(|n| format!("{}h", "9".repeat(n))),
        2 => select(
            &[
                "18446744073709551616h",
                "18446744073709551615ms",
                "99999999999h",
                "315360000s",
                "315360001s",
                "87600h",
                "87601h",
                "5256000m",
                ".",
                ".s",
                "..5s",
                "1..5s",
                "5.s",
                ".5ms",
                "0ms",
                "-1s",
                "5 parsecs",
                "",
                " ",
                "h",
                "ms",
                "1e400h",
                "1",
                "NaNs",
                "infh",
                "+1s",
                "0.0000000001ms",
                "0.000000000000000000000000000001s",
            ][..],
        )
        .prop_map(String::from),
    ]
}

const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        check_text(&text, usize::MAX);
    }

    #[test]
    fn yaml_punctuation_never_panics(text in punctuation()) {
        check_text(&text, usize::MAX);
    }

    #[test]
    fn yaml_token_soup_never_panics(text in token_soup()) {
        check_text(&text, usize::MAX);
    }

    #[test]
    fn any_duration_string_never_panics(
        text in duration_text(),
        field in 0..DURATION_FIELDS.len(),
    ) {
        let direct = parse_duration(&text);
        if let Ok(d) = direct {
            prop_assert!(d <= TEN_YEARS, "{text:?} parsed to {d:?}");
        }
        let (kind, api, path, spec) = DURATION_FIELDS[field];
        let doc = json!({
            "apiVersion": api,
            "kind": kind,
            "metadata": {"name": "default"},
            "spec": spec(Value::from(text.as_str())),
        });
        let yaml = serde_saphyr::to_string(&doc).unwrap();
        match parse("d.yaml", &yaml) {
            Ok(items) => {
                prop_assert!(direct.is_ok(), "{text:?} accepted in a resource, refused alone");
                prop_assert_eq!(items.len(), 1);
                check_accepted(&items, 1);
                if let Resource::TrafficPolicy(tp) = &items[0].resource {
                    if let Some(t) = &tp.spec.timeouts {
                        prop_assert_eq!(t.request.map(|d| d.0), direct.ok());
                    }
                }
            }
            Err(problems) => {
                prop_assert!(direct.is_err(), "{text:?} refused in a resource: {problems:?}");
                prop_assert_eq!(problems.len(), 1, "{:?}", problems);
                prop_assert_eq!(&problems[0].field, path);
                check_problems(&problems, 1);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn resource_shaped_documents_never_panic(docs in stream()) {
        check_text(&docs.join("\n---\n"), docs.len());
        // Each document alone too, and whichever of them parse validated together: a stream
        // with one bad document never reaches `validate`.
        let mut accepted = Vec::new();
        for doc in &docs {
            if let Ok(items) = parse("one.yaml", doc) {
                check_accepted(&items, 1);
                accepted.extend(items);
            }
        }
        check_accepted(&accepted, docs.len());
    }
}

/// Inputs random generation is unlikely to reach: deep nesting and alias bombs.
#[test]
fn deep_and_self_referential_documents_are_refused_not_crashed_on() {
    let deep = [
        "[".repeat(2_000),
        "{a: ".repeat(2_000),
        "- ".repeat(2_000),
        (0..1_000).map(|i| format!("{}k:\n", " ".repeat(i))).collect(),
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: a}}\nspec: {{ports: [{{port: 80, name: {}1{}}}]}}\n",
            "[".repeat(1_000),
            "]".repeat(1_000)
        ),
    ];
    for text in &deep {
        let problems = parse("deep.yaml", text).unwrap_err();
        check_problems(&problems, 1);
    }
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..20 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let problems = parse("bomb.yaml", &bomb).unwrap_err();
    check_problems(&problems, 1);
}
