//! An invalid write answers 422 with every problem, each with its place, and changes nothing.

use std::time::{Duration, Instant};

use serde_json::json;
use weft_tests::*;

use crate::{samples, FILE_SERVICE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_write_answers_422_with_every_problem_and_changes_nothing() {
    let mesh = Mesh::builder().config(FILE_SERVICE).start().await;
    let api = mesh.api_addr;
    let (_, first) = api_call(
        api,
        "PUT",
        "/api/v1/services/shop/pay",
        &samples()[0].3.to_string(),
    )
    .await;
    let generation = mesh.generation();
    let before = api_call(api, "GET", "/api/v1/services", "").await.1;
    let audit = api_call(api, "GET", "/api/v1/audit", "").await.1;

    let bad = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: Bad_Name, namespace: shop}
spec: {ports: [{port: 0}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pay, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: pay}]
  rules: [{backendRefs: [{name: pay, weight: ninety}]}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: valid, namespace: shop}
spec: {targetRef: {name: pay}, timeouts: {request: 2s}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: pay, namespace: shop}
spec: {ports: [{port: 80}], endpoints: [{address: "0.0.0.0:80"}]}
---
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {name: x}
"#;
    let (status, answer) = api_call(api, "POST", "/api/v1/apply", bad).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["reason"], "invalid");
    let problems: Vec<(u64, String)> = answer["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["document"].as_u64().unwrap(),
                p["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        (1, "metadata.name"),
        (1, "spec.ports[0].port"),
        (2, "spec.rules[0].backendRefs[0].weight"),
        (4, "spec.endpoints[0].address"),
        (5, "kind"),
    ] {
        assert!(
            problems.iter().any(|(d, f)| (*d, f.as_str()) == want),
            "{want:?} missing from {problems:?}"
        );
    }
    assert_eq!(problems.len(), 5, "{problems:?}");

    // A PUT of an invalid resource, and one whose body is not the URL's resource.
    let (status, answer) = api_call(
        api,
        "PUT",
        "/api/v1/trafficpolicies/shop/pay",
        r#"{"apiVersion": "weft.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": "pay"}, "spec": {"targetRef": {"name": "pay"}, "retries": {"attempts": 99}, "timeouts": {"request": "5 parsecs"}}}"#,
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["problems"][0]["field"], "spec.timeouts.request");
    let (status, _) = api_call(
        api,
        "PUT",
        "/api/v1/services/shop/other",
        &samples()[0].3.to_string(),
    )
    .await;
    assert_eq!(status, 422);

    // Input built to make the YAML scanner slow (deeply nested flow keys, ~800 KiB) is refused
    // at once, and so is a body over 1 MiB.
    let started = Instant::now();
    let (status, answer) = api_call(api, "POST", "/api/v1/apply", &"{a: ".repeat(200_000)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (status, answer) = api_call(api, "POST", "/api/v1/apply", &"#".repeat(2 << 20)).await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (400, Some("bad-request"))
    );

    // The CLI shows every problem and exits non-zero.
    let server = format!("http://{api}");
    let (code, out, err) = run_weft(None, &["apply", "-f", "-", "--server", &server], bad).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("5 problems; nothing was changed"), "{err}");
    assert!(
        err.contains("document 2 (HTTPRoute/shop/pay): spec.rules[0].backendRefs[0].weight"),
        "{err}"
    );

    // Nothing changed: not the config in force, not the store, not the audit log.
    assert_eq!(mesh.generation(), generation);
    assert_eq!(api_call(api, "GET", "/api/v1/services", "").await.1, before);
    assert_eq!(
        api_call(api, "GET", "/api/v1/trafficpolicies", "").await.1["items"],
        json!([])
    );
    assert_eq!(api_call(api, "GET", "/api/v1/audit", "").await.1, audit);
    assert_eq!(
        api_call(api, "GET", "/api/v1/services/shop/pay", "")
            .await
            .1,
        first
    );
}
