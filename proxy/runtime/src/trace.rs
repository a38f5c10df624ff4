//! Distributed tracing: a SERVER span for each inbound request and a CLIENT span for each
//! outbound one, propagated with W3C Trace Context or B3, exported over OTLP/gRPC.
//!
//! Requests never wait for tracing: a finished span is handed to a bounded queue with
//! `try_send` (a full queue drops it, counted), and an export task on a thread of its own
//! drains the queue every 200 ms and exports batches with `opentelemetry-otlp` (a failed export
//! drops its batch, counted). With no
//! collector configured (MeshConfig `tracing.otlpEndpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`),
//! no span is made at all. See docs/observability.md.
//!
//! This file holds the [`Tracer`]: it decides sampling, starts spans and hands finished ones to
//! the export queue. Reading and writing trace headers is `trace/propagation.rs`; the queue,
//! the export task and its counters are `trace/export.rs`. Nothing here knows the proxy's
//! other modules: the control plane traces with the same code.

mod export;
mod propagation;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderMap;
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::InstrumentationScope;
pub use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use tokio::sync::{mpsc, watch};

pub use export::{DropLabels, Settings, TraceCounters};
pub use propagation::{extract, inject, strip, Format, Parent, Span, HEADER_NAMES};

pub struct Tracer {
    settings: ArcSwap<Settings>,
    changes: watch::Sender<Settings>,
    queue: mpsc::Sender<SpanData>,
    counters: TraceCounters,
    scope: InstrumentationScope,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, used when the mesh config names no endpoint.
    env_endpoint: Option<String>,
}

impl Tracer {
    /// A tracer whose spans carry `service.name` = `service` and `weft.component` =
    /// `component`, with its exporter running on a thread of its own (so that encoding and
    /// sending batches never holds up the caller's workers); the thread ends when the tracer is
    /// dropped.
    pub fn launch(service: String, component: &'static str, counters: TraceCounters) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(export::QUEUE);
        let env_endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty());
        let initial = Settings {
            endpoint: env_endpoint.clone(),
            ratio: 1.0,
        };
        let (changes, settings_rx) = watch::channel(initial.clone());
        let tracer = Arc::new(Self {
            settings: ArcSwap::from_pointee(initial),
            changes,
            queue: tx,
            counters: counters.clone(),
            scope: InstrumentationScope::builder(format!("weft-{component}"))
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            env_endpoint,
        });
        let task = export::export(service, component, rx, settings_rx, counters);
        let spawned = std::thread::Builder::new()
            .name("trace-export".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(task),
                    Err(e) => tracing::error!(error = %e, "cannot start the span exporter"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the span exporter");
        }
        tracer
    }

    /// Applies the mesh config's tracing settings (an empty endpoint falls back to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn configure(&self, endpoint: &str, ratio: f64) {
        let endpoint = match endpoint {
            "" => self.env_endpoint.clone(),
            e => Some(e.to_string()),
        };
        let next = Settings { endpoint, ratio };
        if **self.settings.load() != next {
            tracing::info!(endpoint = ?next.endpoint, ratio = next.ratio, "tracing settings changed");
            self.settings.store(Arc::new(next.clone()));
            self.changes.send_replace(next);
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        Settings::clone(&self.settings.load())
    }

    /// Starts a span of `kind` for a request with these headers, or `None` when tracing is
    /// off. Parent-based sampling: a caller's decision stands; a new trace is sampled at the
    /// configured ratio.
    pub fn start(&self, kind: SpanKind, headers: &HeaderMap) -> Option<Span> {
        let settings = self.settings.load();
        settings.endpoint.as_ref()?;
        let parent = extract(headers);
        let sampled = parent
            .as_ref()
            .and_then(|p| p.sampled)
            .unwrap_or_else(|| rand::random::<f64>() < settings.ratio);
        let (trace_id, parent_span_id) = match parent.as_ref().and_then(|p| p.ids) {
            Some((t, s)) => (t, s),
            None => (
                TraceId::from(rand::random::<u128>().max(1)),
                SpanId::INVALID,
            ),
        };
        Some(Span {
            trace_id,
            span_id: SpanId::from(rand::random::<u64>().max(1)),
            parent_span_id,
            parent_remote: parent_span_id != SpanId::INVALID,
            sampled,
            kind,
            format: parent.as_ref().map(|p| p.format).unwrap_or_default(),
            tracestate: parent.and_then(|p| p.tracestate),
            start: SystemTime::now(),
        })
    }

    /// Ends a span and queues it for export (if sampled). Never waits.
    pub fn finish(
        &self,
        span: Span,
        name: String,
        attributes: Vec<KeyValue>,
        error: Option<String>,
    ) {
        if !span.sampled {
            return;
        }
        let data = SpanData {
            span_context: SpanContext::new(
                span.trace_id,
                span.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: span.parent_span_id,
            parent_span_is_remote: span.parent_remote,
            span_kind: span.kind,
            name: Cow::Owned(name),
            start_time: span.start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(e) => Status::error(e),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        };
        if self.queue.try_send(data).is_err() {
            self.dropped("queue-full", 1);
        }
    }

    fn dropped(&self, reason: &'static str, n: u64) {
        export::dropped(&self.counters, reason, n);
    }
}
