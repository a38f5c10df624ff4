//! Span export: the queue between the request path and the collector, the export task on a
//! thread of its own that drains it in batches over OTLP/gRPC, and the counters of what was
//! exported or dropped.
//!
//! Knows nothing of requests or headers: it takes finished [`SpanData`] and [`Settings`].

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};

/// Where spans go, as the mesh config says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    /// OTLP/gRPC endpoint (`http://host:4317`); `None`: tracing off.
    pub endpoint: Option<String>,
    /// Share of new traces sampled (requests that arrive with a decision keep it).
    pub ratio: f64,
}

/// The `reason` a span was dropped for (`queue-full`, `export-failed`, `no-collector`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

/// The counters of a tracer's export, registered by whoever owns the tracer (the proxy's and the
/// control plane's metrics).
#[derive(Clone, Debug, Default)]
pub struct TraceCounters {
    pub exported: Counter,
    pub dropped: Family<DropLabels, Counter>,
}

impl TraceCounters {
    /// Registers `trace_spans_exported` and `trace_spans_dropped` under the registry's prefix.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "trace_spans_exported",
            "Spans the collector accepted",
            self.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Sampled spans dropped instead of exported, by reason (queue-full, export-failed, no-collector)",
            self.dropped.clone(),
        );
    }
}

/// Spans waiting for export; beyond this, new spans are dropped.
pub(super) const QUEUE: usize = 4096;
/// Spans per export call.
const BATCH: usize = 256;
/// How often the queue is drained and exported.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn dropped(counters: &TraceCounters, reason: &'static str, n: u64) {
    counters
        .dropped
        .get_or_create(&DropLabels { reason })
        .inc_by(n);
}

/// The export task: batches spans and sends them to the configured collector, rebuilding the
/// exporter when the endpoint changes.
pub(super) async fn export(
    service: String,
    component: &'static str,
    mut rx: mpsc::Receiver<SpanData>,
    mut settings: watch::Receiver<Settings>,
    counters: TraceCounters,
) {
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(service)
        .with_attributes([KeyValue::new("weft.component", component)])
        .build();
    let build = |endpoint: &Option<String>| -> Option<opentelemetry_otlp::SpanExporter> {
        use opentelemetry_otlp::WithExportConfig;
        let endpoint = endpoint.as_ref()?;
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
        {
            Ok(mut e) => {
                e.set_resource(&resource);
                Some(e)
            }
            Err(e) => {
                tracing::warn!(%endpoint, error = %e, "cannot export spans to this endpoint");
                None
            }
        }
    };
    let mut exporter = build(&settings.borrow_and_update().endpoint);
    // The queue is drained on a timer rather than awaited span by span: a request that queues
    // a span then never has to wake this thread.
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Ok(()) = settings.changed() => {
                exporter = build(&settings.borrow_and_update().endpoint);
                continue;
            }
        }
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            match &exporter {
                None => dropped(&counters, "no-collector", n),
                Some(e) => match tokio::time::timeout(EXPORT_TIMEOUT, e.export(batch)).await {
                    Ok(Ok(())) => {
                        counters.exported.inc_by(n);
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, spans = n, "span export failed; dropped");
                        dropped(&counters, "export-failed", n);
                    }
                    Err(_) => dropped(&counters, "export-failed", n),
                },
            }
        }
        if rx.is_closed() && rx.is_empty() {
            return;
        }
    }
}
