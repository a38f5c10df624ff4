//! Arbitrary text (YAML punctuation and token soup) and every place a duration is written.

use super::*;

pub(crate) const TOKENS: &[&str] = &[
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

pub(crate) fn token_soup() -> impl Strategy<Value = String> {
    vec(select(TOKENS), 0..48).prop_map(|t| t.concat())
}

pub(crate) fn punctuation() -> impl Strategy<Value = String> {
    "[a-z0-9 :\\-\\[\\]{}&*!|>'\"%@`\\\\\n\t\r#,?.~<=\u{0}\u{85}\u{feff}é]{0,256}"
}

// ---- durations ----

/// Where durations are written, as (kind, apiVersion, the field's path, spec with the value in).
pub(crate) type DurationField = (&'static str, &'static str, &'static str, fn(Value) -> Value);

pub(crate) const DURATION_FIELDS: &[DurationField] = &[
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

pub(crate) fn duration_text() -> impl Strategy<Value = String> {
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
