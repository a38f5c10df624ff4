//! The config stream to proxies (gRPC `weft.discovery.v1.Discovery/Stream`).
//!
//! Each stream gets its own task, which owns that proxy's subscriptions and reads the mesh
//! through a `watch` receiver, so a change is published once and never waits for any proxy. A
//! proxy has at most one snapshot it has not acknowledged (changes coalesce meanwhile), so a
//! proxy that stops reading costs one snapshot of memory, and is cut off when its ACK is overdue
//! (`ServeConfig::ack_timeout`); one that NACKs is sent nothing new
//! for a backoff that doubles with each consecutive NACK. See docs/protocol.md.
//!
//! A stream is served only to a proxy that presented its workload certificate; who it is, and
//! which certificate `weft get proxies` shows for it, come from `peer`, never from its claims.

mod peer;
#[cfg(test)]
mod tests;

pub use peer::{
    MAX_ERROR_DETAIL, MAX_NAME_LEN, MAX_REQUEST_BYTES, MAX_STREAMS_PER_CERTIFICATE,
    MAX_STREAMS_PER_IDENTITY,
};

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::discovery::{self as pb, discovery_server};

use crate::state::State;

const NACK_BACKOFF_BASE: Duration = Duration::from_millis(250);
const NACK_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Subscriptions one proxy may hold (it enforces the same limit itself).
const MAX_SUBSCRIPTIONS: usize = 4096;
/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected proxy, as `GET /api/v1/proxies` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub id: String,
    pub identity: String,
    pub service: String,
    pub namespace: String,
    pub address: String,
    pub remote: Option<SocketAddr>,
    pub version: String,
    /// Seconds since the Unix epoch; written as RFC 3339, like every time in the API.
    #[serde(serialize_with = "weft_runtime::timestamp::ser_unix_u64")]
    pub connected_at: u64,
    pub acked_version: Option<String>,
    pub last_nack: Option<String>,
    pub subscriptions: usize,
    /// The certificate the proxy serves with: the one it opened the stream with, or a later one
    /// it reported, verified like the first.
    pub certificate: Option<CertificateStatus>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    pub serial: String,
    /// Seconds since the Unix epoch; written as RFC 3339.
    #[serde(serialize_with = "weft_runtime::timestamp::ser_unix")]
    pub expires_at: i64,
    /// Fingerprint of its issuer (see `weft ca status`).
    pub issuer: String,
}

#[derive(Default)]
pub struct Proxies {
    by_stream: Mutex<BTreeMap<u64, ProxyStatus>>,
}

impl Proxies {
    pub fn list(&self) -> Vec<ProxyStatus> {
        self.by_stream
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn update(&self, stream: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Ok(mut m) = self.by_stream.lock() {
            if let Some(p) = m.get_mut(&stream) {
                f(p);
            }
        }
    }
}

pub struct DiscoveryService {
    state: Arc<State>,
    proxies: Arc<Proxies>,
    shutdown: CancellationToken,
    ack_timeout: Duration,
    next_stream: std::sync::atomic::AtomicU64,
    streams: Arc<peer::Streams>,
}

impl DiscoveryService {
    pub fn new(
        state: Arc<State>,
        proxies: Arc<Proxies>,
        shutdown: CancellationToken,
        ack_timeout: Duration,
    ) -> Self {
        Self {
            state,
            proxies,
            shutdown,
            ack_timeout,
            next_stream: Default::default(),
            streams: Arc::default(),
        }
    }

    /// The gRPC service, refusing request messages over [`MAX_REQUEST_BYTES`].
    pub fn into_server(self) -> discovery_server::DiscoveryServer<Self> {
        discovery_server::DiscoveryServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl discovery_server::Discovery for DiscoveryService {
    type StreamStream = ReceiverStream<Result<pb::DiscoveryResponse, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let info = crate::grpc_tls::peer_info(&request);
        let remote = info.and_then(|p| p.remote);
        // Before anything is read: who is asking, and whether it may open another stream.
        let peer = peer::authenticate(info, &self.state.mesh()).map_err(|e| {
            tracing::debug!(?remote, error = %e, "discovery stream refused");
            Status::from(e)
        })?;
        let slot = self.streams.acquire(&peer)?;
        let mut requests = request.into_inner();
        let mut first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no first request within {FIRST_REQUEST_TIMEOUT:?}"
                ))
            })??
            .ok_or_else(|| Status::invalid_argument("stream closed before its first request"))?;
        peer::check_request(&mut first)?;
        let claimed = first
            .node
            .take()
            .ok_or_else(|| Status::invalid_argument("the first request must carry node"))?;
        let mesh = self.state.mesh();
        let node = peer::node(&claimed, &peer.workload, &mesh).map_err(|e| {
            tracing::info!(?remote, identity = %peer.workload.identity, error = %e, "discovery stream refused");
            Status::from(e)
        })?;
        let stream_id = self
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = ProxyStatus {
            id: node.id.clone(),
            identity: peer.workload.identity.clone(),
            service: node.service.clone(),
            namespace: node.namespace.clone(),
            address: node.inbound_addr.clone(),
            remote,
            version: node.proxy_version.clone(),
            connected_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            acked_version: None,
            last_nack: None,
            subscriptions: 0,
            certificate: Some(peer.status.clone()),
        };
        if let Ok(mut m) = self.proxies.by_stream.lock() {
            m.insert(stream_id, status);
        }
        self.state.metrics.proxies_connected.inc();
        tracing::info!(proxy = %node.id, service = %node.service, namespace = %node.namespace, ?remote, "proxy connected");
        let (tx, rx) = mpsc::channel(4);
        let conn = Connection {
            stream_id,
            node,
            workload: peer.workload,
            _slot: slot,
            state: self.state.clone(),
            proxies: self.proxies.clone(),
            subscriptions: BTreeSet::new(),
            nonce: 0,
            nacks: 0,
            quiet_until: None,
            ack_timeout: self.ack_timeout,
            unacked: None,
            push_span: None,
            push_version: String::new(),
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(conn.run(first, requests, tx, shutdown));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Connection {
    stream_id: u64,
    /// The node as authenticated: namespace and service account from the certificate.
    node: pb::Node,
    workload: peer::Workload,
    /// Released when the stream ends.
    _slot: peer::Slot,
    state: Arc<State>,
    proxies: Arc<Proxies>,
    subscriptions: BTreeSet<String>,
    nonce: u64,
    nacks: u32,
    /// After a NACK: send nothing new before this.
    quiet_until: Option<Instant>,
    ack_timeout: Duration,
    /// The response in flight: its nonce, when its ACK or NACK is overdue, and when it was sent.
    unacked: Option<(u64, Instant, Instant)>,
    /// The span of the push in flight, ended by its ACK or NACK, and its config version.
    push_span: Option<weft_runtime::trace::Span>,
    push_version: String,
}

impl Connection {
    async fn run(
        mut self,
        first: pb::DiscoveryRequest,
        mut requests: Streaming<pb::DiscoveryRequest>,
        tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
        shutdown: CancellationToken,
    ) {
        let mut mesh_rx = self.state.subscribe();
        let mut dirty = true;
        let mut refused = self.handle(first).err();
        let reason = loop {
            if let Some(e) = refused.take() {
                tracing::info!(proxy = %self.node.id, error = %e, "discovery stream ended");
                let _ = tx.send(Err(e.into())).await;
                break "refused a request";
            }
            let quiet = self.quiet_until.filter(|t| *t > Instant::now());
            // One response in flight at a time: changes made meanwhile coalesce into the next.
            if dirty && quiet.is_none() && self.unacked.is_none() {
                let mesh = mesh_rx.borrow_and_update().clone();
                // The Service may have changed its serviceAccount since the stream opened.
                if let Err(e) = peer::check_service(&mesh, &self.workload, &self.node.service) {
                    refused = Some(e);
                    continue;
                }
                self.nonce += 1;
                let rsp = pb::DiscoveryResponse {
                    version: mesh.generation.to_string(),
                    nonce: self.nonce.to_string(),
                    config: Some(mesh.view(&self.node, &self.subscriptions)),
                };
                let version = rsp.version.clone();
                if tx.send(Ok(rsp)).await.is_err() {
                    break "proxy went away";
                }
                dirty = false;
                let now = Instant::now();
                self.unacked = Some((self.nonce, now + self.ack_timeout, now));
                if let Some(stale) = self.push_span.take() {
                    self.end_push(stale, "superseded", None);
                }
                self.push_version = version;
                self.push_span = self.state.tracer.start(
                    weft_runtime::trace::SpanKind::Producer,
                    &http::HeaderMap::new(),
                );
                self.state.metrics.pushes.inc();
            }
            let overdue = self.unacked.map(|(_, deadline, _)| deadline);
            tokio::select! {
                msg = requests.message() => match msg {
                    Ok(Some(req)) => match self.handle(req) {
                        Ok(changed) => dirty |= changed,
                        Err(e) => refused = Some(e),
                    },
                    Ok(None) => break "stream closed by the proxy",
                    Err(_) => break "stream failed",
                },
                changed = mesh_rx.changed() => {
                    if changed.is_err() { break "control plane stopping" }
                    dirty = true;
                }
                () = sleep_until(quiet), if dirty && quiet.is_some() => {}
                () = sleep_until(overdue), if overdue.is_some() => {
                    self.state.metrics.slow_streams_closed.inc();
                    break "proxy did not acknowledge its config in time; stream closed";
                }
                () = shutdown.cancelled() => break "control plane stopping",
            }
        };
        if let Some(span) = self.push_span.take() {
            self.end_push(span, "unacknowledged", Some(reason.to_string()));
        }
        if let Ok(mut m) = self.proxies.by_stream.lock() {
            m.remove(&self.stream_id);
        }
        self.state.metrics.proxies_connected.dec();
        tracing::info!(proxy = %self.node.id, reason, "proxy disconnected");
    }

    /// Ends a push's span: `outcome` is `ack`, `nack`, `superseded` or `unacknowledged`.
    fn end_push(
        &self,
        span: weft_runtime::trace::Span,
        outcome: &'static str,
        error: Option<String>,
    ) {
        use weft_runtime::trace::KeyValue;
        let attributes = vec![
            KeyValue::new("weft.proxy.id", self.node.id.clone()),
            KeyValue::new("weft.proxy.identity", self.workload.identity.clone()),
            KeyValue::new("weft.config.version", self.push_version.clone()),
            KeyValue::new("weft.outcome", outcome),
        ];
        self.state
            .tracer
            .finish(span, "push config".into(), attributes, error);
    }

    /// Applies one request; returns whether the proxy's view changed, or why the request is
    /// refused (which ends the stream).
    fn handle(&mut self, mut req: pb::DiscoveryRequest) -> Result<bool, peer::Refused> {
        peer::check_request(&mut req)?;
        let mut changed = false;
        for s in req.subscribe {
            if self.subscriptions.len() < MAX_SUBSCRIPTIONS && valid_subscription(&s) {
                changed |= self.subscriptions.insert(s);
            }
        }
        for s in &req.unsubscribe {
            changed |= self.subscriptions.remove(s);
        }
        let subs = self.subscriptions.len();
        let certificate = req.certificate.and_then(|c| self.reported(&c.chain));
        self.proxies.update(self.stream_id, |p| {
            p.subscriptions = subs;
            if certificate.is_some() {
                p.certificate = certificate;
            }
        });
        if !req.response_nonce.is_empty() {
            if let Some((nonce, _, sent)) = self.unacked {
                if req.response_nonce == nonce.to_string() {
                    self.state
                        .metrics
                        .push_duration
                        .observe(sent.elapsed().as_secs_f64());
                    self.unacked = None;
                }
            }
            if let Some(span) = self.push_span.take() {
                if req.error_detail.is_empty() {
                    self.end_push(span, "ack", None);
                } else {
                    self.end_push(span, "nack", Some(req.error_detail.clone()));
                }
            }
            if req.error_detail.is_empty() {
                self.nacks = 0;
                self.quiet_until = None;
                self.state.metrics.acks.inc();
                self.proxies.update(self.stream_id, |p| {
                    p.acked_version = Some(req.version.clone())
                });
            } else {
                self.nacks = self.nacks.saturating_add(1);
                let backoff = NACK_BACKOFF_BASE
                    .saturating_mul(1 << self.nacks.min(8))
                    .min(NACK_BACKOFF_MAX);
                self.quiet_until = Some(Instant::now() + backoff);
                self.state.metrics.nacks.inc();
                tracing::warn!(proxy = %self.node.id, version = %req.version, reason = %req.error_detail, ?backoff, "proxy rejected config");
                self.proxies.update(self.stream_id, |p| {
                    p.last_nack = Some(req.error_detail.clone())
                });
            }
        }
        Ok(changed)
    }

    /// A certificate the proxy reports it serves with now (after a renewal), if it verifies as
    /// one of this stream's workload; a report without a chain, or one that does not verify,
    /// changes nothing.
    fn reported(&self, chain: &[Vec<u8>]) -> Option<CertificateStatus> {
        if chain.is_empty() {
            return None;
        }
        let ders: Vec<_> = chain
            .iter()
            .map(|d| rustls::pki_types::CertificateDer::from(d.as_slice()))
            .collect();
        match peer::verify(&ders, &self.state.mesh()) {
            Ok(v)
                if v.workload.namespace == self.workload.namespace
                    && v.workload.service_account == self.workload.service_account =>
            {
                Some(v.status)
            }
            Ok(v) => {
                tracing::warn!(proxy = %self.node.id, identity = %self.workload.identity, reported = %v.workload.identity, "ignoring a certificate report for another identity");
                None
            }
            Err(e) => {
                tracing::warn!(proxy = %self.node.id, error = %e, "ignoring a certificate report that does not verify");
                None
            }
        }
    }
}

/// A Service's `name.namespace`, or an address in its one canonical spelling (so that one
/// address is one subscription).
fn valid_subscription(s: &str) -> bool {
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        return addr.to_string() == s;
    }
    s.split_once('.').is_some_and(|(n, ns)| {
        crate::resources::is_dns_label(n) && crate::resources::is_dns_label(ns)
    })
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
