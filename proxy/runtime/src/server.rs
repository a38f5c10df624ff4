//! Accept loops, connection limits and draining, shared by every listener of the proxy and by
//! the control plane's gRPC and API listeners; and the process's file-descriptor limit.
//! Reading a connection's first bytes and replaying them is `server/prefix.rs`. What a
//! connection carries beyond HTTP (the proxy's TLS and opaque TCP) is the caller's.
//!
//! Each listener holds at most [`Limits::max_connections`] connections: one past the cap is
//! accepted and closed at once, and counted, so that a flood of connections to one listener
//! cannot take the file descriptors another needs. Each HTTP connection must bring its first
//! request within [`Limits::first_request`] of being accepted (its TLS handshake, its first
//! bytes, the HTTP/2 preface and the request's headers included), and is closed — GOAWAY for
//! HTTP/2 — once it has had no request in flight for [`Limits::idle`] (looked at only at its
//! deadlines, never per request: so between one and two idle periods after its last request). HTTP/1 also keeps hyper's
//! header read timeout ([`HTTP1_HEADER_TIMEOUT`]) for each later request's headers, which is
//! what closes an idle HTTP/1 keep-alive connection.
//!
//! A listener runs until its shutdown token fires; then it stops accepting, asks each HTTP
//! connection to finish its in-flight requests (HTTP/2 GOAWAY, HTTP/1 close after the current
//! response), and waits for them and for every other connection task up to the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{self, Body, Guarded};

mod prefix;

pub use prefix::{read_prefix, Prefixed};

/// hyper's timeout for an HTTP/1 request's headers, from when the connection is ready for them.
pub const HTTP1_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle connection told to close (GOAWAY) may take before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What one listener allows each connection, and how many.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// From accept to the first request's headers.
    #[serde(serialize_with = "crate::duration::ser_duration")]
    pub first_request: Duration,
    /// An HTTP connection with no request in flight this long is closed.
    #[serde(serialize_with = "crate::duration::ser_duration")]
    pub idle: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(3600),
            max_connections: 10_000,
        }
    }
}

impl Limits {
    /// An operator's listener (admin, API): few callers, so few connections.
    pub fn operator() -> Self {
        Self {
            max_connections: 128,
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerTimeoutLabels {
    pub listener: &'static str,
    /// `first-request` or `idle`.
    pub timeout: &'static str,
}

/// Per-listener connection metrics; the proxy and the control plane each register one.
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    pub open: Family<ListenerLabels, Gauge>,
    pub refused: Family<ListenerLabels, Counter>,
    pub timeouts: Family<ListenerTimeoutLabels, Counter>,
}

impl ListenerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "listener_connections_open",
            "Connections open on each listener",
            self.open.clone(),
        );
        registry.register(
            "listener_connections_refused",
            "Connections closed at once because the listener was at its connection cap",
            self.refused.clone(),
        );
        registry.register(
            "listener_timeouts",
            "Connections closed for sending no request in time (first-request) or none for too long (idle)",
            self.timeouts.clone(),
        );
    }
}

/// One listener: its name (the metrics' `listener` label), limits and drain grace period.
#[derive(Clone, Debug)]
pub struct Listener {
    pub name: &'static str,
    pub limits: Limits,
    pub grace: Duration,
    pub metrics: ListenerMetrics,
}

/// An HTTP/1.1 + HTTP/2 (prior knowledge) server for one connection, with its listener's
/// limits, first-request deadline and drain signal.
#[derive(Clone)]
pub struct Http {
    builder: Arc<auto::Builder<TokioExecutor>>,
    name: &'static str,
    idle: Duration,
    /// When the first request's headers must have arrived.
    deadline: Instant,
    drain: CancellationToken,
    metrics: ListenerMetrics,
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP1_HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(20));
    builder
}

impl Http {
    /// When this connection's first request is due: earlier steps (TLS, detection) share it.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Counts a connection closed for having sent nothing in time before it reached [`serve`].
    ///
    /// [`serve`]: Http::serve
    pub fn first_request_timed_out(&self) {
        self.timed_out("first-request");
    }

    fn timed_out(&self, timeout: &'static str) {
        self.metrics
            .timeouts
            .get_or_create(&ListenerTimeoutLabels {
                listener: self.name,
                timeout,
            })
            .inc();
    }

    /// Serves one connection until it closes, it times out, or a drain finishes it.
    pub async fn serve<I, S>(self, mut io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                Request<Incoming>,
                Response = Response<Body>,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        // The auto builder waits for the first bytes (to tell HTTP/1 from HTTP/2) with no
        // timeout of its own: read them here, within the first-request deadline.
        let prefix = match tokio::time::timeout_at(self.deadline, read_preface(&mut io)).await {
            Ok(Ok(prefix)) => prefix,
            Ok(Err(e)) => {
                return tracing::debug!(error = %e, "connection failed before its first request")
            }
            Err(_) => return self.first_request_timed_out(),
        };
        let activity = Arc::new(Activity::default());
        let service = Tracked {
            inner: service,
            activity: activity.clone(),
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(Prefixed::new(prefix, io)), service);
        tokio::pin!(conn);
        let mut closing = false;
        // After an idle close has begun: when to stop waiting for the peer to take it.
        let mut hard_stop = None;
        // The watchdog wakes only at deadlines, never per request: a request in flight then
        // puts the next look one idle period later, so a connection is closed between `idle`
        // and twice that after its last request ended.
        let mut due = self.deadline;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.drain.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(due), if !closing => {
                    let now = Instant::now();
                    match activity.idle_deadline(self.deadline, self.idle) {
                        None => due = now + self.idle,
                        Some(at) if at > now => due = at,
                        Some(_) if !activity.requested() => {
                            // Nothing to finish: a first request not in by now is refused.
                            return self.first_request_timed_out();
                        }
                        Some(_) => {
                            self.timed_out("idle");
                            tracing::debug!(listener = self.name, "idle connection closed");
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                            hard_stop = Some(now + IDLE_CLOSE_GRACE);
                        }
                    }
                }
                () = sleep_until(hard_stop) => return,
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads a connection's first bytes: the HTTP/2 preface, or as soon as they cannot be one.
async fn read_preface<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Bytes> {
    let mut buf = [0u8; 24];
    let n = read_prefix(io, &mut buf, &[H2_PREFACE]).await?;
    Ok(Bytes::copy_from_slice(&buf[..n]))
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    requested: AtomicBool,
    /// When the connection was accepted (near enough): `last_end` counts from it.
    base: Instant,
    /// Nanoseconds after `base` when the last request in flight ended.
    last_end: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
            base: Instant::now(),
            last_end: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// When the connection is due to close if nothing happens: `None` while a request is in
    /// flight.
    fn idle_deadline(&self, first: Instant, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.requested() {
            return Some(first);
        }
        let last = self.base + Duration::from_nanos(self.last_end.load(Ordering::Relaxed));
        Some(last + idle)
    }
}

/// Holds a request's place in its connection's [`Activity`] until its response body ends.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let since = u64::try_from(self.0.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.last_end.store(since, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's service, counting requests in flight.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Guarded<Body, Option<InFlight>>>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        self.activity.requested.store(true, Ordering::Relaxed);
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(InFlight(self.activity.clone())),
        }
    }
}

pin_project_lite::pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Guarded<Body, Option<InFlight>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Poll::Ready(Ok(rsp)) = this.inner.poll(cx) else {
            return Poll::Pending;
        };
        let guard = this.guard.take();
        Poll::Ready(Ok(rsp.map(|b| body::guarded(b, guard))))
    }
}

/// One accepted connection, with what its handler needs to serve it.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub http: Http,
}

/// Accepts connections until `shutdown`, runs `on_conn`'s future for each (within the
/// listener's limits), then drains for up to the grace period.
pub async fn accept_loop<F, Fut>(
    spec: Listener,
    listener: TcpListener,
    shutdown: CancellationToken,
    mut on_conn: F,
) where
    F: FnMut(Accepted) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let drain = CancellationToken::new();
    let builder = Arc::new(builder());
    let open = Arc::new(AtomicUsize::new(0));
    let labels = ListenerLabels {
        listener: spec.name,
    };
    let gauge = spec.metrics.open.get_or_create(&labels).clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                if open.load(Ordering::Relaxed) >= spec.limits.max_connections {
                    spec.metrics.refused.get_or_create(&labels).inc();
                    tracing::debug!(listener = spec.name, %peer, cap = spec.limits.max_connections, "connection cap reached; closed");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let http = Http {
                    builder: builder.clone(),
                    name: spec.name,
                    idle: spec.limits.idle,
                    deadline: Instant::now() + spec.limits.first_request,
                    drain: drain.clone(),
                    metrics: spec.metrics.clone(),
                };
                let slot = Slot::take(open.clone(), gauge.clone());
                let conn = on_conn(Accepted { stream, peer, http });
                tracker.spawn(async move {
                    conn.await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = spec.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    tracing::debug!(listener = spec.name, open = tracker.len(), "draining");
    drain.cancel();
    if tokio::time::timeout(spec.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = spec.name,
            grace = ?spec.grace,
            "drain timed out; closing remaining connections"
        );
    }
}

/// A connection's place under its listener's cap.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Slot {
    fn take(open: Arc<AtomicUsize>, gauge: Gauge) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        Self { open, gauge }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// Raises this process's open-file limit to its hard limit: every connection is a descriptor,
/// and the default soft limit (often 1024) is far below what the listeners' caps allow.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!(limit = ?limit.current, "open-file limit raised"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
}
