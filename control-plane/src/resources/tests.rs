//! Resources as users write them and as the API and the store write them back: names of kinds,
//! and the JSON of every field (absent optional fields stay absent) for each kind.

use super::*;

#[test]
fn kinds_are_named_as_users_write_them() {
    assert_eq!(kind_named("services"), Some("Service"));
    assert_eq!(kind_named("HTTPRoute"), Some("HTTPRoute"));
    assert_eq!(kind_named("httproutes"), Some("HTTPRoute"));
    assert_eq!(kind_named("trafficpolicies"), Some("TrafficPolicy"));
    assert_eq!(kind_named("meshconfig"), Some("MeshConfig"));
    assert_eq!(kind_named("pods"), None);
}

const EVERY_FIELD: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: MeshConfig
metadata: {name: default, namespace: weft-system, labels: {a: b}, annotations: {c: d}, resourceVersion: "7"}
spec:
  trustDomain: example.org
  certificateTTL: 90m
  mtls: permissive
  tracing: {otlpEndpoint: "http://127.0.0.1:4317", samplingRatio: 0.25}
  accessLog: json
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: HTTP2}, {port: 9000, protocol: TCP}]
  serviceAccount: orders
  clusterIPs: [10.0.0.1, "fd00::1"]
  endpoints: [{address: "127.0.0.1:8080", labels: {version: v1}}, {address: "[::1]:8081"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: orders, namespace: shop, port: 8080}]
  hostnames: [orders.shop]
  rules:
  - name: canary
    matches:
    - path: {type: Exact, value: /v2}
      headers: [{type: Exact, name: x-canary, value: "1"}]
      method: GET
    backendRefs:
    - {group: "", kind: Service, name: orders-v2, namespace: shop, port: 8080, weight: 10}
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {codes: [503], attempts: 2, backoff: 100ms}
  - backendRefs: [{name: orders-v1}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: orders, namespace: shop}
spec:
  targetRef: {group: "", kind: Service, name: orders, namespace: shop}
  timeouts: {connect: 1s, request: 10s, idle: 1h}
  retries:
    attempts: 3
    on: [5xx, reset]
    perTryTimeout: 1500ms
    backoff: {base: 25ms, max: 1s}
    budget: {ratio: 0.2, minPerSecond: 10}
    nonIdempotent: true
  circuitBreaker: {consecutiveFailures: 5, baseEjectionTime: 30s, maxEjectionTime: 5m, maxEjectedPercent: 50, maxConnections: 100, maxPendingRequests: 10, maxRequests: 1000}
  loadBalancer: least-request
  rateLimit: {requestsPerSecond: 100.5, burst: 20}
  faultInjection: {delay: {percent: 1.5, duration: 2s}, abort: {percent: 0.5, status: 503}}
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: shop}
spec:
  targetRef: {name: orders}
  rules:
  - from: {identities: ["spiffe://weft.local/ns/shop/sa/frontend"]}
    to: {paths: [/orders/*], methods: [GET]}
  - {}
"#;

/// Each kind with nothing but what it requires: every optional field absent.
const FEWEST_FIELDS: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a}
spec: {parentRefs: [{name: a}], rules: [{matches: [{}], timeouts: {}, retry: {}}]}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: a}
spec: {targetRef: {name: a}, timeouts: {}, retries: {backoff: {}, budget: {}}, circuitBreaker: {}, faultInjection: {}}
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: a}
spec: {targetRef: {name: a}, rules: [{from: {}, to: {}}]}
"#;

/// What the API answers and the store keeps for resources: one JSON line per document.
fn as_json(text: &str) -> String {
    parse("f.yaml", text)
        .unwrap()
        .iter()
        .map(|s| serde_json::to_string(&s.resource).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn resources_serialize_to_the_same_json_and_read_back_the_same() {
    for (text, expected) in [
        (EVERY_FIELD, EVERY_FIELD_JSON),
        (FEWEST_FIELDS, FEWEST_FIELDS_JSON),
    ] {
        let json = as_json(text);
        assert_eq!(json, expected.trim());
        // And back: each line is the same resource again.
        let again = as_json(&json.replace('\n', "\n---\n"));
        assert_eq!(again, json);
    }
}

const EVERY_FIELD_JSON: &str = r#"
{"apiVersion":"weft.dev/v1alpha1","kind":"MeshConfig","metadata":{"name":"default","namespace":"weft-system","labels":{"a":"b"},"annotations":{"c":"d"},"resourceVersion":"7"},"spec":{"trustDomain":"example.org","certificateTTL":"90m","mtls":"permissive","tracing":{"otlpEndpoint":"http://127.0.0.1:4317","samplingRatio":0.25},"accessLog":"json"}}
{"apiVersion":"weft.dev/v1alpha1","kind":"Service","metadata":{"name":"orders","namespace":"shop"},"spec":{"ports":[{"name":"http","port":8080,"protocol":"HTTP2"},{"port":9000,"protocol":"TCP"}],"serviceAccount":"orders","clusterIPs":["10.0.0.1","fd00::1"],"endpoints":[{"address":"127.0.0.1:8080","labels":{"version":"v1"}},{"address":"[::1]:8081"}]}}
{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{"name":"orders","namespace":"shop"},"spec":{"parentRefs":[{"group":"","kind":"Service","name":"orders","namespace":"shop","port":8080}],"hostnames":["orders.shop"],"rules":[{"name":"canary","matches":[{"path":{"type":"Exact","value":"/v2"},"headers":[{"type":"Exact","name":"x-canary","value":"1"}],"method":"GET"}],"backendRefs":[{"group":"","kind":"Service","name":"orders-v2","namespace":"shop","port":8080,"weight":10}],"timeouts":{"request":"2s","backendRequest":"500ms"},"retry":{"codes":[503],"attempts":2,"backoff":"100ms"}},{"backendRefs":[{"name":"orders-v1","weight":1}]}]}}
{"apiVersion":"weft.dev/v1alpha1","kind":"TrafficPolicy","metadata":{"name":"orders","namespace":"shop"},"spec":{"targetRef":{"group":"","kind":"Service","name":"orders","namespace":"shop"},"timeouts":{"connect":"1s","request":"10s","idle":"1h"},"retries":{"attempts":3,"on":["5xx","reset"],"perTryTimeout":"1500ms","backoff":{"base":"25ms","max":"1s"},"budget":{"ratio":0.2,"minPerSecond":10},"nonIdempotent":true},"circuitBreaker":{"consecutiveFailures":5,"baseEjectionTime":"30s","maxEjectionTime":"5m","maxEjectedPercent":50,"maxConnections":100,"maxPendingRequests":10,"maxRequests":1000},"loadBalancer":"least-request","rateLimit":{"requestsPerSecond":100.5,"burst":20},"faultInjection":{"delay":{"percent":1.5,"duration":"2s"},"abort":{"percent":0.5,"status":503}}}}
{"apiVersion":"weft.dev/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"orders","namespace":"shop"},"spec":{"targetRef":{"name":"orders"},"rules":[{"from":{"identities":["spiffe://weft.local/ns/shop/sa/frontend"]},"to":{"paths":["/orders/*"],"methods":["GET"]}},{}]}}
"#;

const FEWEST_FIELDS_JSON: &str = r#"
{"apiVersion":"weft.dev/v1alpha1","kind":"MeshConfig","metadata":{"name":"default","namespace":"default"},"spec":{}}
{"apiVersion":"weft.dev/v1alpha1","kind":"Service","metadata":{"name":"a","namespace":"default"},"spec":{"ports":[{"port":80,"protocol":"HTTP"}],"endpoints":[]}}
{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{"name":"a","namespace":"default"},"spec":{"parentRefs":[{"name":"a"}],"rules":[{"matches":[{}],"backendRefs":[],"timeouts":{},"retry":{}}]}}
{"apiVersion":"weft.dev/v1alpha1","kind":"TrafficPolicy","metadata":{"name":"a","namespace":"default"},"spec":{"targetRef":{"name":"a"},"timeouts":{},"retries":{"backoff":{},"budget":{}},"circuitBreaker":{},"faultInjection":{}}}
{"apiVersion":"weft.dev/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"a","namespace":"default"},"spec":{"targetRef":{"name":"a"},"rules":[{"from":{"identities":[]},"to":{"paths":[],"methods":[]}}]}}
"#;
