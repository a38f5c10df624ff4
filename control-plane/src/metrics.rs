//! The control plane's Prometheus metrics (docs/metrics.md).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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
    pub push_duration: Histogram,
    pub certificates: Family<Outcome, Counter>,
    pub api_writes: Family<Outcome, Counter>,
    pub trace: weft_runtime::trace::TraceCounters,
    pub listeners: weft_runtime::server::ListenerMetrics,
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
        let push_duration = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "config_push_duration_seconds",
            "Time from sending a config snapshot to the proxy's ACK or NACK",
            push_duration.clone(),
        );
        let certificates = Family::default();
        registry.register(
            "certificates",
            "Certificate requests (Certify), by outcome (issued, refused)",
            certificates.clone(),
        );
        let api_writes = Family::default();
        registry.register(
            "api_writes",
            "Writes through the API (apply, PUT, DELETE), by outcome (accepted, unchanged, dry-run, invalid, conflict, file-managed, not-found, failed)",
            api_writes.clone(),
        );
        let trace = weft_runtime::trace::TraceCounters::default();
        trace.register(&mut registry);
        let listeners = weft_runtime::server::ListenerMetrics::default();
        listeners.register(&mut registry);
        Self {
            registry,
            proxies_connected,
            pushes,
            acks,
            nacks,
            slow_streams_closed,
            reloads,
            config_generation,
            push_duration,
            certificates,
            api_writes,
            trace,
            listeners,
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
