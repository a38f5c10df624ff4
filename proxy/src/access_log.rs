//! The access log: with MeshConfig `accessLog: json`, one JSON line per request, inbound and
//! outbound, and one per passed-through TCP connection, written to `access-log` (default:
//! standard output).
//!
//! Like spans, lines never hold up a request: they go through a bounded queue to one writer
//! task; a full queue drops the line and counts it (`weft_proxy_access_log_dropped_total`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

const QUEUE: usize = 8192;
/// How often queued lines are written.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// When the request arrived, RFC 3339 with microseconds, UTC.
    pub start: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub protocol: String,
    pub status: u16,
    /// Milliseconds from the request head to the response head.
    pub duration_ms: f64,
    /// Outbound: the service called; inbound: this proxy's own.
    pub service: String,
    /// The HTTPRoute rule that took it (outbound).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub route: String,
    /// Outbound: the endpoint's proxy (last try); inbound: the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Outbound: the identity the endpoint proved; inbound: the caller's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub peer_identity: String,
    /// Inbound: the caller's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    /// `x-weft-error`, when the proxy made the response up.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// The trace this request belongs to, and this proxy's span in it (or, with tracing off,
    /// the caller's span), when there is one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub span_id: String,
}

impl Entry {
    /// A TCP connection the proxy relayed without seeing requests in it (a passed-through
    /// one), logged when it ends: protocol `tcp`, status 0, its whole duration.
    pub fn connection(
        direction: &'static str,
        service: &str,
        upstream: std::net::SocketAddr,
        peer: std::net::SocketAddr,
        start: std::time::SystemTime,
    ) -> Self {
        let duration = start.elapsed().unwrap_or_default();
        Self {
            start: weft_runtime::timestamp::rfc3339(start),
            direction,
            method: String::new(),
            path: String::new(),
            authority: upstream.to_string(),
            protocol: "tcp".into(),
            status: 0,
            duration_ms: duration.as_secs_f64() * 1000.0,
            service: service.to_string(),
            route: String::new(),
            upstream: Some(upstream.to_string()),
            peer_identity: String::new(),
            peer_address: Some(peer.to_string()),
            error: String::new(),
            retries: 0,
            trace_id: String::new(),
            span_id: String::new(),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub struct AccessLog {
    tx: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// The log, with its writer on a thread of its own (writes to a file or standard output
    /// are blocking calls: they stay off the proxy's workers), appending to `path` or writing
    /// to standard output.
    pub fn start(path: Option<PathBuf>, metrics: Arc<Metrics>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write(path, rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer");
        }
        Arc::new(Self { tx, metrics })
    }

    /// Queues an entry; never waits.
    pub fn log(&self, entry: &Entry) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            self.metrics.access_log_dropped.inc();
        }
    }
}

fn write(path: Option<PathBuf>, mut rx: mpsc::Receiver<String>) {
    use std::io::Write;
    let mut out: Box<dyn Write> = match &path {
        None => Box::new(std::io::stdout()),
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "cannot open the access log; lines go to standard output");
                Box::new(std::io::stdout())
            }
        },
    };
    // Drained on a timer, not awaited line by line: a request that queues a line never has to
    // wake this thread.
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        std::thread::sleep(DRAIN_EVERY);
        loop {
            buf.clear();
            while buf.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(line) => buf.extend_from_slice(line.as_bytes()),
                    Err(_) => break,
                }
            }
            if buf.is_empty() {
                break;
            }
            if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                tracing::warn!(error = %e, "access log write failed");
            }
        }
        if rx.is_closed() && rx.is_empty() {
            return;
        }
    }
}
