//! The proxy's Prometheus metrics. See docs/metrics.md for the catalog.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, LazyLock};

pub const INBOUND: &str = "inbound";
pub const OUTBOUND: &str = "outbound";

/// The empty label value, shared: an `Arc<str>` of its own would be an allocation per request.
pub fn no_label() -> Arc<str> {
    static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

/// Labels of every request. The names (`service`, `route`, `peer`) come from the snapshot in
/// force, shared (`Arc<str>`), so that recording a request copies no string.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    /// Outbound: the logical service called (`name.namespace`); inbound: this proxy's service.
    pub service: Arc<str>,
    /// Outbound: the HTTPRoute rule that took the request (`namespace/name#index`, `default`);
    /// empty inbound and when no route matched.
    pub route: Arc<str>,
    /// The SPIFFE ID at the other end: outbound, the one the callee proved; inbound, the
    /// caller's. Empty when none was authenticated.
    pub peer: Arc<str>,
    /// `1xx` … `5xx`.
    pub status_class: &'static str,
    /// The gRPC status (from the trailers, or a trailers-only response); empty for non-gRPC.
    pub grpc_status: String,
    /// The `x-weft-error` reason when the proxy made the response up; empty otherwise.
    pub error: String,
}

/// The `status_class` label of an HTTP status.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: &'static str,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `true` for mutual TLS, `false` for plaintext.
    pub tls: &'static str,
    /// `accepted` or `refused`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny`.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub service: String,
    /// What the retried try came to: `connect-failure`, `reset`, `timeout`, `status`,
    /// `grpc-status`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub direction: &'static str,
    pub service: String,
    /// `connect`, `request`, `per-try` or `idle`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The backend service, `name.namespace`.
    pub service: String,
    /// The endpoint's address.
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub service: String,
    pub endpoint: String,
    /// `success` or `failure`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub service: String,
    /// `requests`, `pending-requests` or `connections`.
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub service: String,
    /// `delay` or `abort`.
    pub fault: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedirectLabels {
    pub direction: &'static str,
    /// Outbound: `service` (a cluster IP), `endpoint` (a pod IP), `passthrough`, `unresolved`
    /// (passed through: no control plane); inbound: `app`; or the failure: `refused` (not
    /// resolved otherwise), `loop` (the proxy's own traffic), `no-original-dst`, `not-local`.
    pub destination: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectionLabels {
    pub direction: &'static str,
    /// `http1`, `http2` or `tcp`.
    pub protocol: &'static str,
    /// `detected` (from its first bytes), `timeout` (too little within the detection
    /// timeout), `tcp-port` (the Service port is TCP), `opaque-port` (MeshConfig `opaquePorts`).
    pub decided: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

/// The metrics of transparent interception.
pub struct InterceptionMetrics {
    pub redirected: Family<RedirectLabels, Counter>,
    pub detections: Family<DetectionLabels, Counter>,
    pub detection_seconds: Family<DirectionLabels, Histogram, fn() -> Histogram>,
}

/// Detection buckets, in seconds: 10 µs to the detection timeout and past it.
fn detection_histogram() -> Histogram {
    Histogram::new([0.00001, 0.0001, 0.001, 0.01, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0])
}

impl InterceptionMetrics {
    fn new(registry: &mut Registry) -> Self {
        let this = Self {
            redirected: Family::default(),
            detections: Family::default(),
            detection_seconds: Family::new_with_constructor(detection_histogram),
        };
        registry.register(
            "redirected_connections",
            "Connections redirected to the proxy by iptables, by direction and where they went (or why they went nowhere)",
            this.redirected.clone(),
        );
        registry.register(
            "protocol_detections",
            "Protocols of redirected connections, by how they were decided",
            this.detections.clone(),
        );
        registry.register(
            "protocol_detection_seconds",
            "Time spent reading a redirected connection's first bytes to detect its protocol",
            this.detection_seconds.clone(),
        );
        this
    }

    /// Counts a redirected connection by where it went.
    pub fn redirected(&self, direction: &'static str, destination: &'static str) {
        self.redirected
            .get_or_create(&RedirectLabels {
                direction,
                destination,
            })
            .inc();
    }

    /// Counts a protocol decision, and the time detection took when it read bytes for it.
    pub fn decided(
        &self,
        direction: &'static str,
        protocol: &'static str,
        decided: &'static str,
        took: Option<std::time::Duration>,
    ) {
        self.detections
            .get_or_create(&DetectionLabels {
                direction,
                protocol,
                decided,
            })
            .inc();
        if let Some(t) = took {
            self.detection_seconds
                .get_or_create(&DirectionLabels { direction })
                .observe(t.as_secs_f64());
        }
    }
}

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_open: Family<TcpLabels, Gauge>,
    pub tcp_bytes_sent: Family<TcpLabels, Counter>,
    pub tcp_bytes_received: Family<TcpLabels, Counter>,
    pub config_updates: Family<OutcomeLabels, Counter>,
    pub config_version: Gauge,
    pub subscriptions: Gauge,
    pub config_last_rejection: Gauge,
    pub control_plane_connected: Gauge,
    pub identity_expiry: Gauge,
    pub inbound_connections: Family<ConnectionLabels, Counter>,
    pub authorization: Family<DecisionLabels, Counter>,
    pub opaque_refused: Family<ReasonLabels, Counter>,
    pub listeners: weft_runtime::server::ListenerMetrics,
    pub renewals: Family<OutcomeLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub retry_budget_exhausted: Family<ServiceLabels, Counter>,
    pub timeouts: Family<TimeoutLabels, Counter>,
    pub ejections: Family<EndpointLabels, Counter>,
    pub endpoint_ejected: Family<EndpointLabels, Gauge>,
    pub probes: Family<ProbeLabels, Counter>,
    pub overloaded: Family<LimitLabels, Counter>,
    pub rate_limited: Family<ServiceLabels, Counter>,
    pub faults: Family<FaultLabels, Counter>,
    pub trace: weft_runtime::trace::TraceCounters,
    pub access_log_dropped: Counter,
    pub interception: InterceptionMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft_proxy");
        let requests = Family::default();
        registry.register("requests", "HTTP requests handled", requests.clone());
        let request_duration =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response",
            request_duration.clone(),
        );
        let tcp_opened = Family::default();
        registry.register(
            "tcp_connections_opened",
            "Opaque TCP connections opened",
            tcp_opened.clone(),
        );
        let tcp_closed = Family::default();
        registry.register(
            "tcp_connections_closed",
            "Opaque TCP connections closed",
            tcp_closed.clone(),
        );
        let tcp_open = Family::default();
        registry.register(
            "tcp_connections_open",
            "Opaque TCP connections open now",
            tcp_open.clone(),
        );
        let tcp_bytes_sent = Family::default();
        registry.register(
            "tcp_sent_bytes",
            "Bytes sent toward the destination on opaque TCP connections",
            tcp_bytes_sent.clone(),
        );
        let tcp_bytes_received = Family::default();
        registry.register(
            "tcp_received_bytes",
            "Bytes received from the destination on opaque TCP connections",
            tcp_bytes_received.clone(),
        );
        let config_updates = Family::default();
        registry.register(
            "config_updates",
            "Config updates from the control plane, by outcome (accepted, rejected)",
            config_updates.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "config_version",
            "Mesh config generation of the config in force (0 before the first)",
            config_version.clone(),
        );
        let subscriptions = Gauge::default();
        registry.register(
            "discovery_subscriptions",
            "Services this proxy asks the control plane for now (upstream mappings, services in use, names waiting for an answer)",
            subscriptions.clone(),
        );
        let config_last_rejection = Gauge::default();
        registry.register(
            "config_last_rejection_timestamp_seconds",
            "When this proxy last rejected (NACKed) a config update, in seconds since the Unix epoch (0: never)",
            config_last_rejection.clone(),
        );
        let control_plane_connected = Gauge::default();
        registry.register(
            "control_plane_connected",
            "1 while the config stream to the control plane is up",
            control_plane_connected.clone(),
        );
        let identity_expiry = Gauge::default();
        registry.register(
            "identity_certificate_expiry_timestamp_seconds",
            "When this proxy's certificate expires, in seconds since the Unix epoch (0: none yet)",
            identity_expiry.clone(),
        );
        let renewals = Family::default();
        registry.register(
            "identity_certificate_requests",
            "Certificate requests to the control plane, by outcome (issued, failed)",
            renewals.clone(),
        );
        let inbound_connections = Family::default();
        registry.register(
            "inbound_connections",
            "Connections to the inbound listener, by whether they were mutual TLS and their outcome",
            inbound_connections.clone(),
        );
        let authorization = Family::default();
        registry.register(
            "authorization",
            "Inbound requests and TCP connections checked against AuthorizationPolicy, by decision",
            authorization.clone(),
        );
        let listeners = weft_runtime::server::ListenerMetrics::default();
        listeners.register(&mut registry);
        let opaque_refused = Family::default();
        registry.register(
            "inbound_opaque_refused",
            "Opaque TCP connections closed before reaching the app, by reason",
            opaque_refused.clone(),
        );
        let retries = Family::default();
        registry.register(
            "retries",
            "Retries sent, by service and what the retried try came to",
            retries.clone(),
        );
        let retry_budget_exhausted = Family::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries the policy allowed but the retry budget refused",
            retry_budget_exhausted.clone(),
        );
        let timeouts = Family::default();
        registry.register(
            "timeouts",
            "Timeouts that expired, by kind (connect, request, per-try, idle)",
            timeouts.clone(),
        );
        let ejections = Family::default();
        registry.register(
            "endpoint_ejections",
            "Times an endpoint's breaker opened (ejections, including after a failed probe)",
            ejections.clone(),
        );
        let endpoint_ejected = Family::default();
        registry.register(
            "endpoint_ejected",
            "1 while an endpoint's breaker is open or half-open, 0 while closed",
            endpoint_ejected.clone(),
        );
        let probes = Family::default();
        registry.register(
            "endpoint_probes",
            "Half-open probes of ejected endpoints, by outcome",
            probes.clone(),
        );
        let overloaded = Family::default();
        registry.register(
            "overloaded",
            "Requests and connections refused at once by a concurrency limit",
            overloaded.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Inbound requests and connections refused by the rate limit",
            rate_limited.clone(),
        );
        let faults = Family::default();
        registry.register(
            "faults_injected",
            "Faults injected into outbound requests, by kind (delay, abort)",
            faults.clone(),
        );
        let trace = weft_runtime::trace::TraceCounters::default();
        trace.register(&mut registry);
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let interception = InterceptionMetrics::new(&mut registry);
        Self {
            interception,
            registry,
            requests,
            request_duration,
            tcp_opened,
            tcp_closed,
            tcp_open,
            tcp_bytes_sent,
            tcp_bytes_received,
            config_updates,
            config_version,
            subscriptions,
            config_last_rejection,
            control_plane_connected,
            identity_expiry,
            inbound_connections,
            authorization,
            opaque_refused,
            listeners,
            renewals,
            retries,
            retry_budget_exhausted,
            timeouts,
            ejections,
            endpoint_ejected,
            probes,
            overloaded,
            rate_limited,
            faults,
            trace,
            access_log_dropped,
        }
    }

    /// Counts an expired timeout.
    pub fn timeout(&self, direction: &'static str, service: &str, kind: &'static str) {
        self.timeouts
            .get_or_create(&TimeoutLabels {
                direction,
                service: service.to_string(),
                kind,
            })
            .inc();
    }

    /// Records a breaker transition of `endpoint` of backend `service`.
    pub fn breaker(
        &self,
        service: &str,
        endpoint: std::net::SocketAddr,
        t: crate::breaker::Transition,
    ) {
        use crate::breaker::Transition;
        let labels = EndpointLabels {
            service: service.to_string(),
            endpoint: endpoint.to_string(),
        };
        let probe = |outcome| {
            self.probes
                .get_or_create(&ProbeLabels {
                    service: labels.service.clone(),
                    endpoint: labels.endpoint.clone(),
                    outcome,
                })
                .inc();
        };
        match t {
            Transition::None => {}
            Transition::Ejected(d) => {
                tracing::warn!(%service, %endpoint, ejected_for = ?d, "endpoint ejected after consecutive failures");
                self.ejections.get_or_create(&labels).inc();
                self.endpoint_ejected.get_or_create(&labels).set(1);
            }
            Transition::Reejected(d) => {
                tracing::info!(%service, %endpoint, ejected_for = ?d, "probe failed; endpoint ejected again");
                probe("failure");
                self.ejections.get_or_create(&labels).inc();
            }
            Transition::Restored => {
                tracing::info!(%service, %endpoint, "probe succeeded; endpoint restored");
                probe("success");
                self.endpoint_ejected.get_or_create(&labels).set(0);
            }
        }
    }

    pub fn record_request(&self, labels: RequestLabels, seconds: f64) {
        self.request_duration
            .get_or_create(&labels)
            .observe(seconds);
        self.requests.get_or_create(&labels).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
