//! The config stream from the control plane, and the snapshot of config in force (its types are
//! `discovery/snapshot.rs`; the state snapshots share, `discovery/registry.rs`).
//!
//! [`Discovery`] has exactly one writer, the task in [`Discovery::run`], which swaps in a new
//! immutable [`Snapshot`] for each accepted update and wakes waiters through a `watch` channel.
//! The request path only reads snapshots.
//!
//! A proxy asks only for the services it calls: the `upstream` mappings up front, and any other
//! service the first time the app addresses it (on-demand subscription, [`Discovery::resolve`]).
//! Every update is checked in `convert` before it takes effect; a rejected update is NACKed
//! with the reason and the last-good snapshot stays in force. See docs/protocol.md.

mod convert;
mod registry;
mod snapshot;
mod subscriptions;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use weft_proto::discovery::{
    discovery_client::DiscoveryClient, Certificate, DiscoveryRequest, DiscoveryResponse, Node,
};

use crate::control::ControlPlane;
use crate::errors::ProxyError;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::routes::{LogicalService, ServiceKey};

pub use registry::EndpointRegistry;
pub use snapshot::{AddressTarget, Inbound, MeshSettings, Snapshot};
use subscriptions::{Change, Subscriptions, IDLE_SWEEPS, SWEEP_PERIOD};
pub use subscriptions::{MAX_SUBSCRIPTIONS, MAX_UNRESOLVED};

/// How long a request waits for the control plane to resolve a service it has not seen yet.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The snapshot a proxy builds from `rsp`, or why it refuses it: what tests compare a running
/// proxy's config with.
pub fn snapshot_of(rsp: &DiscoveryResponse) -> Result<Snapshot, String> {
    convert::snapshot(rsp, &EndpointRegistry::default()).map_err(|e| e.to_string())
}

/// What a proxy subscribes to: a Service by name, or an address (where a redirected
/// connection was going). Its `Display` is the subscription's spelling on the wire.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Service(ServiceKey),
    Address(SocketAddr),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Service(k) => k.fmt(f),
            Self::Address(a) => a.fmt(f),
        }
    }
}

/// Where a redirected connection's original destination leads.
#[derive(Debug)]
pub enum Destination {
    /// A port of a Service of the mesh; `endpoint`: to that one endpoint of it only.
    Service {
        service: Arc<LogicalService>,
        port: u16,
        endpoint: Option<SocketAddr>,
    },
    /// Nothing the mesh knows: plain TCP to the original destination.
    Passthrough,
}

pub struct Discovery {
    snapshot: ArcSwap<Snapshot>,
    updates: watch::Sender<u64>,
    subscriptions: Mutex<Subscriptions<Subject>>,
    /// Sweeps so far: a service's `last_used` is the sweep count when a request last found it.
    sweeps: AtomicU64,
    subscribe_tx: mpsc::UnboundedSender<Change<Subject>>,
    subscribe_rx: Mutex<Option<mpsc::UnboundedReceiver<Change<Subject>>>>,
    registry: EndpointRegistry,
    metrics: Arc<Metrics>,
    /// The certificate this proxy serves with, reported to the control plane.
    certificate: watch::Sender<Option<Certificate>>,
    /// Why the last attempt to reach the control plane failed; cleared once a stream is open.
    last_error: Mutex<Option<String>>,
}

impl Discovery {
    /// `initial` services are subscribed from the start (the `upstream` mappings).
    pub fn new(initial: impl IntoIterator<Item = ServiceKey>, metrics: Arc<Metrics>) -> Self {
        let (subscribe_tx, subscribe_rx) = mpsc::unbounded_channel();
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            updates: watch::channel(0).0,
            subscriptions: Mutex::new(Subscriptions::pinned(
                initial.into_iter().map(Subject::Service),
            )),
            sweeps: AtomicU64::new(0),
            subscribe_tx,
            subscribe_rx: Mutex::new(Some(subscribe_rx)),
            registry: EndpointRegistry::default(),
            metrics,
            certificate: watch::channel(None).0,
            last_error: Mutex::new(None),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Whether MeshConfig asks for access log lines (read per request, without a refcount).
    pub fn access_log_on(&self) -> bool {
        self.snapshot.load().mesh.access_log_json
    }

    /// True once a config update has been accepted.
    pub fn has_config(&self) -> bool {
        *self.updates.borrow() > 0
    }

    /// Why the config stream is down, if it is.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok()?.clone()
    }

    fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = e;
        }
    }

    /// Changes with every accepted config.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.updates.subscribe()
    }

    /// Tells the control plane (now, and with every later request) which certificate this proxy
    /// serves with.
    pub fn report_certificate(&self, certificate: Certificate) {
        self.certificate.send_replace(Some(certificate));
    }

    /// Waits until a config is in force.
    pub async fn ready(&self) {
        let mut rx = self.updates.subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// Finds a service, subscribing to it and waiting for the control plane's answer if this
    /// proxy has not asked for it before.
    pub async fn resolve(&self, key: &ServiceKey) -> Result<Arc<LogicalService>, ProxyError> {
        let subject = Subject::Service(key.clone());
        self.resolve_with(&subject, |snap| {
            if let Some(svc) = snap.services.get(key) {
                return Some(Ok(self.used(svc)));
            }
            if snap.unknown.contains(key) {
                return Some(Err(ProxyError::NoRoute(format!(
                    "{key}: no such Service in the mesh"
                ))));
            }
            None
        })
        .await
    }

    /// What a redirected connection's original destination `addr` is to the mesh, asking the
    /// control plane the first time.
    /// While the config stream is down, an address not in the snapshot is not waited for.
    pub async fn resolve_address(&self, addr: SocketAddr) -> Result<Destination, ProxyError> {
        let subject = Subject::Address(addr);
        let lookup = |snap: &Snapshot| {
            if let Some(target) = snap.addresses.get(&addr) {
                return Some(match snap.services.get(&target.service) {
                    Some(svc) => Ok(Destination::Service {
                        service: self.used(svc),
                        port: target.port,
                        endpoint: target.endpoint.then_some(addr),
                    }),
                    None => Err(ProxyError::NoRoute(format!(
                        "{addr}: its Service {} is not in the config",
                        target.service
                    ))),
                });
            }
            snap.unknown_addresses
                .contains(&addr)
                .then_some(Ok(Destination::Passthrough))
        };
        if let Some(e) = self.last_error() {
            if let Some(found) = lookup(&self.snapshot.load()) {
                return found;
            }
            let _ = self.subscribe(&subject);
            return Err(ProxyError::NoEndpoints(format!(
                "{addr} is not known yet and the control plane is unreachable: {e}"
            )));
        }
        self.resolve_with(&subject, lookup).await
    }

    /// Looks `subject` up in the snapshot in force, subscribing to it and waiting (up to
    /// [`RESOLVE_TIMEOUT`]) for the control plane's answer when the snapshot has none.
    async fn resolve_with<T>(
        &self,
        subject: &Subject,
        lookup: impl Fn(&Snapshot) -> Option<Result<T, ProxyError>>,
    ) -> Result<T, ProxyError> {
        let mut updates = self.updates.subscribe();
        if let Some(found) = lookup(&self.snapshot.load()) {
            return found;
        }
        self.subscribe(subject)?;
        let wait = async {
            loop {
                if updates.changed().await.is_err() {
                    return Err(ProxyError::NoEndpoints("proxy is shutting down".into()));
                }
                if let Some(found) = lookup(&self.snapshot.load()) {
                    return found;
                }
            }
        };
        tokio::time::timeout(RESOLVE_TIMEOUT, wait).await.unwrap_or_else(|_| {
            Err(ProxyError::NoEndpoints(format!(
                "the control plane has not resolved {subject} within {RESOLVE_TIMEOUT:?}; is it running?"
            )))
        })
    }

    /// Stamps `svc` as used by a request now (see [`Self::sweep`]).
    fn used(&self, svc: &Arc<LogicalService>) -> Arc<LogicalService> {
        svc.state
            .last_used
            .store(self.sweeps.load(Ordering::Relaxed), Ordering::Relaxed);
        svc.clone()
    }

    fn subscribe(&self, subject: &Subject) -> Result<(), ProxyError> {
        let mut subs = self.subscriptions.lock().map_err(|_| poisoned())?;
        if subs.contains(subject) {
            return Ok(());
        }
        let changes = subs.add(subject).map_err(|e| match e {
            subscriptions::Refused::Full => ProxyError::NoRoute(format!("{subject}: {e}")),
            subscriptions::Refused::TooManyPending => {
                ProxyError::Overloaded(format!("{subject}: {e}"))
            }
        })?;
        self.metrics.subscriptions.set(gauge(subs.len()));
        for change in changes {
            let _ = self.subscribe_tx.send(change);
        }
        Ok(())
    }

    /// How many services this proxy subscribes to now.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.lock().map_or(0, |s| s.len())
    }

    /// Drops unknown names and services no request has found for [`IDLE_SWEEPS`] sweeps;
    /// returns them, to unsubscribe.
    fn sweep(&self) -> Vec<Subject> {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let snap = self.snapshot.load();
        let Ok(mut subs) = self.subscriptions.lock() else {
            return Vec::new();
        };
        let idle = |k: &ServiceKey| {
            snap.services.get(k).is_none_or(|s| {
                now.saturating_sub(s.state.last_used.load(Ordering::Relaxed)) >= IDLE_SWEEPS
            })
        };
        let dropped = subs.sweep(|subject| match subject {
            Subject::Service(k) => idle(k),
            Subject::Address(a) => snap.addresses.get(a).is_none_or(|t| idle(&t.service)),
        });
        self.metrics.subscriptions.set(gauge(subs.len()));
        if !dropped.is_empty() {
            tracing::debug!(dropped = dropped.len(), "unused subscriptions dropped");
        }
        dropped
    }

    /// Runs the config stream until `shutdown`: connects, reconnects with exponential backoff
    /// and jitter, applies updates. Keeps serving the last-good snapshot while disconnected.
    pub async fn run(
        self: Arc<Self>,
        control: Arc<ControlPlane>,
        node: Node,
        shutdown: CancellationToken,
    ) {
        let url = control.url().to_string();
        let Some(mut subscribe_rx) = self.subscribe_rx.lock().ok().and_then(|mut r| r.take())
        else {
            tracing::error!("discovery is already running");
            return;
        };
        let mut failures = 0u32;
        loop {
            let outcome = tokio::select! {
                r = self.stream(&control, &node, &mut subscribe_rx, &mut failures) => r,
                () = shutdown.cancelled() => return,
            };
            self.metrics.control_plane_connected.set(0);
            let err = match outcome {
                Ok(()) => "stream closed by the control plane".to_string(),
                Err(e) => e,
            };
            self.set_last_error(Some(err.clone()));
            failures = failures.saturating_add(1);
            let cap = BACKOFF_BASE
                .saturating_mul(1 << failures.min(16))
                .min(BACKOFF_MAX);
            let delay = rand::rng().random_range(cap / 2..=cap);
            if failures == 1 {
                tracing::warn!(control_plane = %url, error = %err, "config stream lost; serving the last-good config and reconnecting");
            } else {
                tracing::debug!(control_plane = %url, error = %err, ?delay, "reconnecting");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn stream(
        &self,
        control: &Arc<ControlPlane>,
        node: &Node,
        subscribe_rx: &mut mpsc::UnboundedReceiver<Change<Subject>>,
        failures: &mut u32,
    ) -> Result<(), String> {
        let mut client = DiscoveryClient::new(control.channel(true)?);
        let mut certificate = self.certificate.subscribe();
        let (tx, rx) = mpsc::channel(16);
        // Everything subscribed so far goes in the first request: queued notices are redundant.
        while subscribe_rx.try_recv().is_ok() {}
        let subscribe = self
            .subscriptions
            .lock()
            .map_err(|_| "poisoned".to_string())?
            .keys()
            .map(ToString::to_string)
            .collect();
        let hello = DiscoveryRequest {
            node: Some(node.clone()),
            subscribe,
            certificate: certificate.borrow_and_update().clone(),
            ..Default::default()
        };
        tx.send(hello).await.map_err(|_| "request stream closed")?;
        let mut responses = client
            .stream(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("open stream: {}", crate::transport::status_text(&s)))?
            .into_inner();
        self.metrics.control_plane_connected.set(1);
        self.set_last_error(None);
        tracing::info!(control_plane = %control.url(), "config stream open");
        let mut sweeps =
            tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_PERIOD, SWEEP_PERIOD);
        loop {
            tokio::select! {
                msg = responses.message() => {
                    let rsp = msg.map_err(|s| format!("stream: {}", crate::transport::status_text(&s)))?;
                    let Some(rsp) = rsp else { return Ok(()) };
                    *failures = 0;
                    let mut reply = self.apply(rsp);
                    reply.certificate = certificate.borrow_and_update().clone();
                    tx.send(reply).await.map_err(|_| "request stream closed")?;
                }
                Ok(()) = certificate.changed() => {
                    let req = DiscoveryRequest {
                        certificate: certificate.borrow_and_update().clone(),
                        ..Default::default()
                    };
                    tx.send(req).await.map_err(|_| "request stream closed")?;
                }
                Some(change) = subscribe_rx.recv() => {
                    let req = match change {
                        Change::Subscribe(key) => DiscoveryRequest { subscribe: vec![key.to_string()], ..Default::default() },
                        Change::Unsubscribe(key) => DiscoveryRequest { unsubscribe: vec![key.to_string()], ..Default::default() },
                    };
                    tx.send(req).await.map_err(|_| "request stream closed")?;
                }
                _ = sweeps.tick() => {
                    let dropped = self.sweep();
                    if !dropped.is_empty() {
                        let unsubscribe = dropped.iter().map(ToString::to_string).collect();
                        let req = DiscoveryRequest { unsubscribe, ..Default::default() };
                        tx.send(req).await.map_err(|_| "request stream closed")?;
                    }
                }
            }
        }
    }

    /// Checks and applies one update; returns its ACK or NACK.
    fn apply(&self, rsp: DiscoveryResponse) -> DiscoveryRequest {
        let mut reply = DiscoveryRequest {
            version: rsp.version.clone(),
            response_nonce: rsp.nonce.clone(),
            ..Default::default()
        };
        match convert::snapshot(&rsp, &self.registry) {
            Ok(snap) => {
                tracing::debug!(version = %snap.version, services = snap.services.len(), "config applied");
                if let Ok(v) = snap.version.parse::<i64>() {
                    self.metrics.config_version.set(v);
                }
                if let Ok(mut subs) = self.subscriptions.lock() {
                    subs.settle(
                        |subject| match subject {
                            Subject::Service(k) => snap.services.contains_key(k),
                            Subject::Address(a) => snap.addresses.contains_key(a),
                        },
                        |subject| match subject {
                            Subject::Service(k) => snap.unknown.contains(k),
                            Subject::Address(a) => snap.unknown_addresses.contains(a),
                        },
                    );
                }
                self.snapshot.store(Arc::new(snap));
                self.updates.send_modify(|n| *n += 1);
                self.metrics
                    .config_updates
                    .get_or_create(&OutcomeLabels {
                        outcome: "accepted",
                    })
                    .inc();
            }
            Err(e) => {
                tracing::warn!(version = %rsp.version, error = %e, "config update rejected; the last-good config stays in force");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                self.metrics.config_last_rejection.set(now);
                self.metrics
                    .config_updates
                    .get_or_create(&OutcomeLabels {
                        outcome: "rejected",
                    })
                    .inc();
                reply.error_detail = e;
            }
        }
        reply
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn poisoned() -> ProxyError {
    ProxyError::NoEndpoints("internal error: subscription lock poisoned".into())
}
