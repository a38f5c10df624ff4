//! The control plane's API and `weft apply`/`weft delete` end to end, one file per theme:
//!
//! - `writes`: every kind created, read, updated and deleted; conflicts; files shadowing stored
//!   resources; dry runs;
//! - `validation`: an invalid write answers 422 with every problem and changes nothing;
//! - `durability`: acknowledged writes survive a restart and `kill -9`;
//! - `proxies`: re-routing under traffic, and how fast a write reaches proxies;
//! - `off_loopback`: the API inside a network namespace, called from outside.
//!
//! Here: what they share, one resource of each kind and the Service of the config file.

#![allow(clippy::unwrap_used)]

mod durability;
mod off_loopback;
mod proxies;
mod validation;
mod writes;

use serde_json::{json, Value};

/// One resource of each kind: (URL plural, namespace, name, created, updated).
fn samples() -> Vec<(&'static str, &'static str, &'static str, Value, Value)> {
    let svc = |port: u16| {
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Service",
               "metadata": {"name": "pay", "namespace": "shop", "labels": {"team": "payments"}},
               "spec": {"ports": [{"port": port}], "endpoints": [{"address": "127.0.0.1:9"}]}})
    };
    let route = |weight: u32| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "pay", "namespace": "shop"},
               "spec": {"parentRefs": [{"kind": "Service", "name": "pay"}],
                        "rules": [{"backendRefs": [{"name": "pay", "weight": weight}]}]}})
    };
    let policy = |timeout: &str| {
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "TrafficPolicy",
               "metadata": {"name": "pay", "namespace": "shop"},
               "spec": {"targetRef": {"name": "pay"}, "timeouts": {"request": timeout}}})
    };
    let authz = |who: &str| {
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "pay", "namespace": "shop"},
               "spec": {"targetRef": {"name": "pay"},
                        "rules": [{"from": {"identities": [who]}}]}})
    };
    let mesh = |log: &str| {
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshConfig",
               "metadata": {"name": "default"},
               "spec": {"accessLog": log}})
    };
    vec![
        ("services", "shop", "pay", svc(8080), svc(9090)),
        ("httproutes", "shop", "pay", route(100), route(50)),
        ("trafficpolicies", "shop", "pay", policy("2s"), policy("3s")),
        (
            "authorizationpolicies",
            "shop",
            "pay",
            authz("spiffe://weft.local/ns/shop/sa/frontend"),
            authz("spiffe://weft.local/ns/shop/sa/checkout"),
        ),
        (
            "meshconfigs",
            "default",
            "default",
            mesh("json"),
            mesh("off"),
        ),
    ]
}

fn version(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {v}"))
}

const FILE_SERVICE: &str = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: orders, namespace: shop}\nspec: {ports: [{port: 8080}]}\n";
