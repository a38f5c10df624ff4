//! The access log: with MeshConfig `accessLog: json`, one JSON line per request, inbound and
//! outbound, written to `access-log` (default: standard output).
//!
//! Like spans, lines never hold up a request: they go through a bounded queue to one writer
//! task; a full queue drops the line and counts it (`weft_proxy_access_log_dropped_total`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

const QUEUE: usize = 8192;

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

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// RFC 3339 in UTC with microseconds, without a date library: days from the civil calendar
/// algorithm (Howard Hinnant's `civil_from_days`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

pub struct AccessLog {
    tx: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// The log and its writer task, writing to `path` (appending) or standard output.
    pub fn new(
        path: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Arc::new(Self { tx, metrics }), write(path, rx))
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

async fn write(path: Option<PathBuf>, mut rx: mpsc::Receiver<String>) {
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &path {
        None => Box::new(tokio::io::stdout()),
        Some(p) => match tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .await
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "cannot open the access log; lines go to standard output");
                Box::new(tokio::io::stdout())
            }
        },
    };
    while let Some(line) = rx.recv().await {
        let mut buf = line.into_bytes();
        // Take whatever else is queued, for one write.
        while let Ok(more) = rx.try_recv() {
            buf.extend_from_slice(more.as_bytes());
            if buf.len() > 64 * 1024 {
                break;
            }
        }
        if let Err(e) = out.write_all(&buf).await {
            tracing::warn!(error = %e, "access log write failed");
        }
        let _ = out.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_979_698_702_772);
        assert_eq!(rfc3339(t), "2026-11-29T19:14:58.702772Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339(leap).starts_with("2000-02-29T00:00:00"));
    }
}
