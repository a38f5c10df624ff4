//! A property of the API and the config push together: after any sequence of applies and
//! deletes, the config a connected proxy holds is exactly what the store says it should be.
//!
//! One control plane and one real proxy (`shop/frontend`, calling services `a` and `b`) serve
//! every case. A case applies and deletes resources of every kind through the API, then reads
//! the store back through the API, compiles it as the control plane would, converts that as the
//! proxy would, and compares the result with the proxy's config in force at the same version.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use weft_tests::*;

#[derive(Clone, Debug)]
enum Op {
    Service {
        name: &'static str,
        port: u16,
        endpoints: u8,
    },
    Route {
        parent: &'static str,
        weights: (u32, u32),
        prefix: bool,
    },
    Policy {
        target: &'static str,
        timeout_ms: u32,
        retries: u32,
    },
    Authz {
        target: &'static str,
        allow: &'static str,
    },
    MeshConfig {
        access_log: bool,
        ratio: u8,
    },
    Delete {
        plural: &'static str,
        name: &'static str,
    },
}

const PLURALS: [&str; 5] = [
    "services",
    "httproutes",
    "trafficpolicies",
    "authorizationpolicies",
    "meshconfigs",
];

fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b"])
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            name(),
            prop::sample::select(vec![80u16, 8080, 9090]),
            0u8..3
        )
            .prop_map(|(name, port, endpoints)| Op::Service {
                name,
                port,
                endpoints
            }),
        (name(), (0u32..100, 0u32..100), any::<bool>()).prop_map(|(parent, weights, prefix)| {
            Op::Route {
                parent,
                weights,
                prefix,
            }
        }),
        (name(), 1u32..5000, 0u32..4).prop_map(|(target, timeout_ms, retries)| Op::Policy {
            target,
            timeout_ms,
            retries
        }),
        (
            prop::sample::select(vec!["a", "frontend"]),
            prop::sample::select(vec!["frontend", "checkout"])
        )
            .prop_map(|(target, allow)| Op::Authz { target, allow }),
        (any::<bool>(), 0u8..=10)
            .prop_map(|(access_log, ratio)| Op::MeshConfig { access_log, ratio }),
        (
            prop::sample::select(PLURALS.to_vec()),
            prop::sample::select(vec!["a", "b", "frontend", "default"])
        )
            .prop_map(|(plural, name)| Op::Delete { plural, name }),
    ]
}

/// The resource an apply op writes.
fn resource(op: &Op) -> Value {
    let meta = |name: &str| json!({"name": name, "namespace": "shop"});
    match op {
        Op::Service {
            name,
            port,
            endpoints,
        } => {
            let eps: Vec<Value> = (0..*endpoints)
                .map(|i| json!({"address": format!("127.0.0.{}:{}", i + 2, 15006)}))
                .collect();
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Service", "metadata": meta(name),
                   "spec": {"ports": [{"port": port}], "endpoints": eps}})
        }
        Op::Route {
            parent,
            weights: (wa, wb),
            prefix,
        } => {
            let mut rule =
                json!({"backendRefs": [{"name": "a", "weight": wa}, {"name": "b", "weight": wb}]});
            if *prefix {
                rule["matches"] = json!([{"path": {"type": "PathPrefix", "value": "/v2"}}]);
            }
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": meta(parent),
                   "spec": {"parentRefs": [{"kind": "Service", "name": parent}], "rules": [rule]}})
        }
        Op::Policy {
            target,
            timeout_ms,
            retries,
        } => {
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": meta(target),
                    "spec": {"targetRef": {"name": target},
                             "timeouts": {"request": format!("{timeout_ms}ms")},
                             "retries": {"attempts": retries}}})
        }
        Op::Authz { target, allow } => {
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy", "metadata": meta(target),
                   "spec": {"targetRef": {"name": target},
                            "rules": [{"from": {"identities": [format!("spiffe://weft.local/ns/shop/sa/{allow}")]}}]}})
        }
        Op::MeshConfig { access_log, ratio } => {
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshConfig",
                   "metadata": {"name": "default"},
                   "spec": {"accessLog": if *access_log { "json" } else { "off" },
                            "tracing": {"samplingRatio": f64::from(*ratio) / 10.0}}})
        }
        Op::Delete { .. } => Value::Null,
    }
}

/// A snapshot as JSON, without its version, its sets in a stable order.
fn comparable(snapshot: &weft_proxy::discovery::Snapshot) -> Value {
    let mut v = serde_json::to_value(snapshot).unwrap();
    v.as_object_mut().unwrap().remove("version");
    if let Some(unknown) = v["unknown"].as_array_mut() {
        unknown.sort_by_key(ToString::to_string);
    }
    v
}

/// What the proxy should hold, from what the store holds now (read through the API).
async fn expected(mesh: &Mesh) -> (String, Value) {
    let mut stored = Vec::new();
    for plural in PLURALS {
        let (status, list) = api_call(mesh.api_addr, "GET", &format!("/api/v1/{plural}"), "").await;
        assert_eq!(status, 200);
        for item in list["items"].as_array().unwrap() {
            stored.extend(weft::resources::parse("store", &item.to_string()).unwrap());
        }
    }
    let in_force = mesh.state().mesh();
    let mut compiled = weft::mesh::Mesh::compile(stored, "weft.local", in_force.generation);
    compiled.trust = in_force.trust.clone();
    let node = weft_proto::discovery::Node {
        namespace: "shop".into(),
        service: "frontend".into(),
        ..Default::default()
    };
    let subscriptions: BTreeSet<String> = ["a.shop".to_string(), "b.shop".to_string()].into();
    let rsp = weft_proto::discovery::DiscoveryResponse {
        version: in_force.generation.to_string(),
        nonce: "1".into(),
        config: Some(compiled.view(&node, &subscriptions)),
    };
    let snapshot = weft_proxy::discovery::snapshot_of(&rsp).expect("the proxy accepts it");
    (in_force.generation.to_string(), comparable(&snapshot))
}

#[test]
fn after_any_applies_and_deletes_the_proxy_holds_what_the_store_says() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mesh, mut client) = rt.block_on(async {
        let mut client = Sidecar::builder()
            .upstream("a.shop:8080")
            .upstream("b.shop:8080")
            .bind()
            .await;
        let mesh = Mesh::builder().start().await;
        client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
        client.ready().await;
        (mesh, client)
    });
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..10), |ops| {
        rt.block_on(async {
            // Each case starts from an empty store.
            for plural in PLURALS {
                let (_, list) =
                    api_call(mesh.api_addr, "GET", &format!("/api/v1/{plural}"), "").await;
                for item in list["items"].as_array().unwrap() {
                    let m = &item["metadata"];
                    let path = format!(
                        "/api/v1/{plural}/{}/{}",
                        m["namespace"].as_str().unwrap(),
                        m["name"].as_str().unwrap()
                    );
                    assert_eq!(api_call(mesh.api_addr, "DELETE", &path, "").await.0, 200);
                }
            }
            for op in &ops {
                let (status, body) = match op {
                    Op::Delete { plural, name } => {
                        let ns = if *plural == "meshconfigs" {
                            "default"
                        } else {
                            "shop"
                        };
                        let path = format!("/api/v1/{plural}/{ns}/{name}");
                        api_call(mesh.api_addr, "DELETE", &path, "").await
                    }
                    op => {
                        let body = resource(op).to_string();
                        api_call(mesh.api_addr, "POST", "/api/v1/apply", &body).await
                    }
                };
                prop_assert!(
                    status == 200 || (status == 404 && matches!(op, Op::Delete { .. })),
                    "{op:?}: {status} {body}"
                );
            }
            let (version, want) = expected(&mesh).await;
            let held = eventually(
                &format!("the proxy to hold version {version}"),
                Duration::from_secs(5),
                || {
                    let snapshot = client.running().discovery.snapshot();
                    let version = version.clone();
                    async move { (snapshot.version == version).then_some(snapshot) }
                },
            )
            .await;
            prop_assert_eq!(comparable(&held), want);
            Ok::<(), TestCaseError>(())
        })
    });
    rt.block_on(client.stop());
    drop(mesh);
    if let Err(e) = result {
        panic!("{e}");
    }
}
