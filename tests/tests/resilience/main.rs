//! Resilience end to end, against upstreams that fail on command, one file per theme:
//! `retries` (and their budget), `ejection` (of failing endpoints), `timeouts` (at every level),
//! `rate_limit` and `faults` (injected delays and aborts).
//!
//! Here: the mesh they share ([`Setup`]) and the TrafficPolicy around a spec ([`policy`]).

#![allow(clippy::unwrap_used)]

mod ejection;
mod faults;
mod rate_limit;
mod retries;
mod timeouts;

use std::net::SocketAddr;

use weft_tests::apps::FaultyApp;
use weft_tests::*;

const HOST: &str = "orders.shop";

/// A service `orders.shop` of `n` endpoints, each a sidecar before a [`FaultyApp`], and a client
/// sidecar; `policy` is more YAML (TrafficPolicy, HTTPRoute) for the mesh.
struct Setup {
    _mesh: Mesh,
    client: Sidecar,
    servers: Vec<Sidecar>,
    apps: Vec<FaultyApp>,
}

impl Setup {
    async fn start(n: usize, policy: &str) -> Self {
        let mut servers = Vec::new();
        let mut apps = Vec::new();
        for i in 0..n {
            servers.push(Sidecar::builder().bind().await);
            apps.push(FaultyApp::start(&format!("orders-{i}")).await);
        }
        let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
        let inbound: Vec<SocketAddr> = servers.iter().map(|s| s.inbound).collect();
        let yaml = format!(
            "{}{policy}",
            service_yaml("shop", "orders", "HTTP", &inbound)
        );
        let mesh = Mesh::builder().config(&yaml).start().await;
        for (s, a) in servers.iter_mut().zip(&apps) {
            s.start(&mesh, "shop", "orders", a.addr);
        }
        for s in &servers {
            s.ready().await;
        }
        client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
        client.ready().await;
        Self {
            _mesh: mesh,
            client,
            servers,
            apps,
        }
    }

    fn metrics(&self) -> String {
        self.client.running().metrics.encode()
    }

    fn hits(&self) -> u64 {
        self.apps.iter().map(FaultyApp::hits).sum()
    }

    async fn get(&self, path: &str) -> Reply {
        get(&http1_client(), self.client.outbound, HOST, path)
            .await
            .unwrap()
    }
}

fn policy(spec: &str) -> String {
    format!(
        "---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  targetRef: {{name: orders}}\n{spec}"
    )
}
