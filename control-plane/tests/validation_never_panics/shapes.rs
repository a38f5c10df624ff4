//! Documents shaped like the real resources: real field names and enums, hostile leaves.

use super::*;

/// Mostly `s`; now and then anything at all.
pub(crate) fn or_junk(s: S) -> S {
    prop_oneof![60 => s, 1 => leaf(), 1 => junk_tree()].boxed()
}

/// An object with each field present with its probability, and rarely a stray key; now and then
/// anything at all instead.
pub(crate) fn object(fields: Vec<(&'static str, f64, S)>) -> S {
    or_junk(exact_object(fields))
}

/// An object with each field present with its probability, and rarely a stray key.
pub(crate) fn exact_object(fields: Vec<(&'static str, f64, S)>) -> S {
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

pub(crate) fn list(item: S, max: usize) -> S {
    or_junk(vec(item, 0..=max).prop_map(Value::Array).boxed())
}

/// One of `words`, or sometimes any string.
pub(crate) fn word(words: &'static [&'static str]) -> S {
    or_junk(prop_oneof![12 => select(words).prop_map(Value::from), 1 => string()].boxed())
}

/// An enum's variant: mostly one of `valid`, sometimes one of `invalid`, or any string.
pub(crate) fn variant(valid: &'static [&'static str], invalid: &'static [&'static str]) -> S {
    or_junk(
        prop_oneof![
            20 => select(valid).prop_map(Value::from),
            2 => select(invalid).prop_map(Value::from),
            1 => string(),
        ]
        .boxed(),
    )
}

pub(crate) fn name() -> S {
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

pub(crate) fn duration() -> S {
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
pub(crate) fn uint() -> S {
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

pub(crate) fn port() -> S {
    or_junk(
        prop_oneof![
            12 => select(&[0u16, 1, 80, 443, 8080, 65_535][..]).prop_map(Value::from),
            4 => any::<u16>().prop_map(Value::from),
            1 => select(&[65_536i64, -1, 4_294_967_296][..]).prop_map(Value::from),
        ]
        .boxed(),
    )
}

pub(crate) fn float() -> S {
    or_junk(
        prop_oneof![
            4 => select(FLOATS).prop_map(Value::from),
            2 => select(INTS).prop_map(Value::from),
            1 => any::<f64>().prop_map(Value::from),
        ]
        .boxed(),
    )
}

pub(crate) fn boolean() -> S {
    or_junk(any::<bool>().prop_map(Value::from).boxed())
}

pub(crate) fn string_map() -> S {
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

pub(crate) const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "get", "BREW", "", "G T"];
pub(crate) const REF_KINDS: &[&str] = &["Service", "Gateway", "Deployment", ""];
pub(crate) const GROUPS: &[&str] = &["", "core", "gateway.networking.k8s.io"];

pub(crate) fn metadata() -> S {
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

pub(crate) fn target_ref() -> S {
    object(vec![
        ("group", 0.1, word(GROUPS)),
        ("kind", 0.4, word(REF_KINDS)),
        ("name", 0.95, name()),
        ("namespace", 0.3, name()),
    ])
}

pub(crate) fn mesh_config_spec() -> S {
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
        ("opaquePorts", 0.3, list(port(), 4)),
    ])
}

pub(crate) fn service_spec() -> S {
    let port_spec = object(vec![
        ("name", 0.3, name()),
        ("port", 0.95, port()),
        (
            "protocol",
            0.5,
            variant(&["HTTP", "HTTP2", "GRPC", "TCP"], &["http", "UDP"]),
        ),
        ("targetPort", 0.3, port()),
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

pub(crate) fn http_route_spec() -> S {
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

pub(crate) fn traffic_policy_spec() -> S {
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

pub(crate) fn authorization_policy_spec() -> S {
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

pub(crate) const API_VERSIONS: &[&str] = &[
    WEFT_API,
    GATEWAY_API,
    "weft.dev/v1",
    "v1",
    "",
    "weft.dev/v1alpha1 ",
    "WEFT.DEV/V1ALPHA1",
];

pub(crate) const JUNK_KINDS: &[&str] = &[
    "Mesh",
    "service",
    "HttpRoute",
    "Pod",
    "",
    "TrafficPolicy ",
    "Ŝervice",
];

/// A whole document: usually the right apiVersion for the kind, and a spec of the kind's shape.
pub(crate) fn document(kind: &'static str, api: &'static str, spec: S) -> S {
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

pub(crate) fn any_document() -> S {
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
pub(crate) fn stream() -> impl Strategy<Value = Vec<String>> {
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
