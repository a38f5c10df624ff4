//! The control plane's Prometheus metrics (docs/metrics.md).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub proxies_connected: Gauge,
    pub pushes: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    pub slow_streams_closed: Counter,
    pub reloads: Family<Outcome, Counter>,
    pub config_generation: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let proxies_connected = Gauge::default();
        registry.register(
            "proxies_connected",
            "Proxies with an open config stream",
            proxies_connected.clone(),
        );
        let pushes = Counter::default();
        registry.register(
            "config_pushes",
            "Config snapshots sent to proxies",
            pushes.clone(),
        );
        let acks = Counter::default();
        registry.register(
            "config_acks",
            "Config snapshots proxies accepted",
            acks.clone(),
        );
        let nacks = Counter::default();
        registry.register(
            "config_nacks",
            "Config snapshots proxies rejected",
            nacks.clone(),
        );
        let slow_streams_closed = Counter::default();
        registry.register(
            "slow_streams_closed",
            "Config streams closed because the proxy did not acknowledge a snapshot in time",
            slow_streams_closed.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "config_reloads",
            "Config file reloads, by outcome (accepted, refused)",
            reloads.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the mesh config in force",
            config_generation.clone(),
        );
        Self {
            registry,
            proxies_connected,
            pushes,
            acks,
            nacks,
            slow_streams_closed,
            reloads,
            config_generation,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
