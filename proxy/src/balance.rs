//! Load balancing inside one backend: which endpoint takes the next request.
//!
//! The default is power-of-two-choices over a peak-EWMA latency estimate weighted by outstanding
//! requests (as Linkerd and Finagle do): pick two endpoints at random, send to the cheaper.
//! Round-robin and least-request (P2C on outstanding requests alone) are selectable per service
//! through TrafficPolicy `loadBalancer`.
//!
//! Endpoints are shared across config updates (see `discovery::convert`), so their latency
//! estimates, breaker state and connections survive a change that does not remove them.
//!
//! With outlier detection on, ejected endpoints are skipped (`breaker`), an endpoint whose
//! ejection is over takes the next request as its probe, and a retry avoids the endpoints its
//! request already tried when there are others.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::breaker::{BackendState, Health, Transition};
use crate::policy::Outlier;
use crate::transport::PeerConn;

/// How long a latency sample takes to fade: the EWMA's time constant.
const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed for each request outstanding on an endpoint that has not answered yet.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The latency charged to an endpoint a request could not reach (connect or TLS failure): it
/// is avoided, then tried again as the penalty decays.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbKind {
    #[default]
    Ewma,
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Serialize)]
pub struct Balancer {
    pub kind: LbKind,
    pub endpoints: Vec<Arc<Endpoint>>,
    #[serde(skip)]
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(endpoints: Vec<Arc<Endpoint>>, kind: LbKind) -> Self {
        Self {
            kind,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// Chooses an endpoint for a try, or `None` when none can take it (every endpoint is
    /// ejected, or there are none). `tried`: endpoints this request already tried, avoided
    /// while another is available.
    pub fn pick(&self, tried: &[SocketAddr], state: &BackendState) -> Option<Pick> {
        let eps = &self.endpoints;
        if tried.is_empty() && state.ejected.load(Ordering::Relaxed) == 0 {
            // The hot path: every endpoint is a candidate.
            return self.choose(eps.len(), |i| &eps[i]).map(Pick::regular);
        }
        let now = Instant::now();
        // An endpoint whose ejection is over gets the next request as its probe.
        if let Some(ep) = eps.iter().find(|e| {
            !tried.contains(&e.addr) && e.health.probe_due(now) && e.health.claim_probe(now)
        }) {
            return Some(Pick {
                endpoint: ep.clone(),
                probe: true,
            });
        }
        let mut candidates: Vec<&Arc<Endpoint>> = eps
            .iter()
            .filter(|e| e.health.is_closed() && !tried.contains(&e.addr))
            .collect();
        if candidates.is_empty() {
            // Every untried endpoint is ejected: a retry may go back to one it tried.
            candidates = eps.iter().filter(|e| e.health.is_closed()).collect();
        }
        self.choose(candidates.len(), |i| candidates[i])
            .map(Pick::regular)
    }

    fn choose<'a>(
        &self,
        n: usize,
        get: impl Fn(usize) -> &'a Arc<Endpoint>,
    ) -> Option<Arc<Endpoint>> {
        match n {
            0 => None,
            1 => Some(get(0).clone()),
            n => Some(
                match self.kind {
                    LbKind::RoundRobin => get(self.next.fetch_add(1, Ordering::Relaxed) % n),
                    LbKind::Ewma | LbKind::LeastRequest => {
                        let (a, b) = two_distinct(n);
                        let now = Instant::now();
                        let cost = |e: &Endpoint| match self.kind {
                            LbKind::LeastRequest => e.pending() as f64,
                            _ => e.cost(now),
                        };
                        let (ea, eb) = (get(a), get(b));
                        if cost(eb) < cost(ea) {
                            eb
                        } else {
                            ea
                        }
                    }
                }
                .clone(),
            ),
        }
    }

    /// The endpoint at `addr`, whatever its load or health: a caller that addressed one
    /// endpoint directly (a pod IP) gets that endpoint or none.
    pub fn pick_pinned(&self, addr: SocketAddr) -> Option<Pick> {
        self.endpoints
            .iter()
            .find(|e| e.addr == addr)
            .cloned()
            .map(Pick::regular)
    }

    /// Endpoints open (ejected) or half-open now.
    pub fn open_endpoints(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| !e.health.is_closed())
            .count()
    }
}

/// An endpoint chosen for one try.
pub struct Pick {
    pub endpoint: Arc<Endpoint>,
    /// This try is the endpoint's half-open probe.
    pub probe: bool,
}

impl Pick {
    fn regular(endpoint: Arc<Endpoint>) -> Self {
        Self {
            endpoint,
            probe: false,
        }
    }

    /// Marks the try as outstanding on the endpoint until the returned guard is dropped.
    pub fn start(self) -> InFlight {
        self.endpoint.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.endpoint,
            start: Instant::now(),
            probe: self.probe,
        }
    }
}

fn two_distinct(n: usize) -> (usize, usize) {
    let mut rng = rand::rng();
    let a = rng.random_range(0..n);
    let b = (a + rng.random_range(1..n)) % n;
    (a, b)
}

/// One instance of a backend: its address, its load, and its pooled connection.
#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    #[serde(skip)]
    pending: AtomicUsize,
    #[serde(skip)]
    ewma: Mutex<Ewma>,
    #[serde(skip)]
    pub conn: PeerConn,
    #[serde(skip)]
    pub health: Health,
}

#[derive(Debug)]
struct Ewma {
    /// Estimated latency in nanoseconds.
    cost: f64,
    stamp: Instant,
}

impl Endpoint {
    /// An endpoint whose proxy must present `identity`.
    pub fn new(addr: SocketAddr, identity: String, labels: BTreeMap<String, String>) -> Self {
        Self {
            addr,
            labels,
            pending: AtomicUsize::new(0),
            ewma: Mutex::new(Ewma {
                cost: 0.0,
                stamp: Instant::now(),
            }),
            conn: PeerConn::new(addr, identity),
            health: Health::default(),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Peak-EWMA cost: latency estimate times (outstanding requests + 1). An endpoint that has
    /// not answered yet costs nothing while idle, so a new endpoint is tried (and measured) at
    /// once, and [`DEFAULT_RTT`] per outstanding request, so it is not flooded before its first
    /// answer.
    fn cost(&self, now: Instant) -> f64 {
        let pending = self.pending() as f64;
        let Ok(ewma) = self.ewma.lock() else {
            return f64::MAX;
        };
        if ewma.cost == 0.0 {
            return DEFAULT_RTT.as_nanos() as f64 * pending;
        }
        let elapsed = now.saturating_duration_since(ewma.stamp).as_secs_f64();
        ewma.cost * (-elapsed / DECAY.as_secs_f64()).exp() * (pending + 1.0)
    }

    fn observe(&self, rtt: Duration, now: Instant) {
        let Ok(mut ewma) = self.ewma.lock() else {
            return;
        };
        let sample = rtt.as_nanos() as f64;
        if sample > ewma.cost {
            // Peak sensitivity: a slower answer takes effect at once.
            ewma.cost = sample;
        } else {
            let elapsed = now.saturating_duration_since(ewma.stamp).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            ewma.cost = ewma.cost * w + sample * (1.0 - w);
        }
        ewma.stamp = now;
    }

    /// Marks a request as outstanding on this endpoint (not a probe).
    pub fn start(self: &Arc<Self>) -> InFlight {
        Pick::regular(self.clone()).start()
    }
}

/// An outstanding request: counts toward the endpoint's load until dropped.
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    start: Instant,
    /// Set while this try is a half-open probe whose outcome is not recorded yet.
    probe: bool,
}

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Records the try's outcome with the endpoint's breaker (when `outlier` is on).
    pub fn record(
        &mut self,
        ok: bool,
        outlier: Option<&Outlier>,
        state: &BackendState,
        endpoints: usize,
    ) -> Transition {
        let probe = std::mem::take(&mut self.probe);
        match outlier {
            Some(policy) => self
                .endpoint
                .health
                .record(ok, probe, policy, state, endpoints),
            None => Transition::None,
        }
    }

    /// Records the latency to the response head as a sample for the estimate.
    pub fn responded(&self) {
        let now = Instant::now();
        self.endpoint.observe(now - self.start, now);
    }

    /// The request could not reach the endpoint: it is charged `FAILURE_PENALTY`, so the
    /// balancer steers away from it until that decays.
    pub fn unreachable(&self) {
        self.endpoint.observe(FAILURE_PENALTY, Instant::now());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            self.endpoint.health.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    ([127, 0, 0, 1], 1000 + i).into(),
                    String::new(),
                    BTreeMap::new(),
                ))
            })
            .collect()
    }

    fn pick(b: &Balancer) -> Arc<Endpoint> {
        b.pick(&[], &BackendState::default()).unwrap().endpoint
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_are_skipped_then_probed() {
        let eps = endpoints(3);
        let state = BackendState::default();
        let policy = Outlier {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(5),
            max_ejected_percent: 100,
        };
        let b = Balancer::new(eps.clone(), LbKind::RoundRobin);
        let mut bad = eps[0].start();
        assert!(matches!(
            bad.record(false, Some(&policy), &state, 3),
            Transition::Ejected(_)
        ));
        drop(bad);
        for _ in 0..10 {
            assert_ne!(b.pick(&[], &state).unwrap().endpoint.addr.port(), 1000);
        }
        // A retry avoids what it tried.
        let tried = [eps[1].addr];
        assert_eq!(b.pick(&tried, &state).unwrap().endpoint.addr.port(), 1002);
        tokio::time::advance(Duration::from_secs(6)).await;
        let probe = b.pick(&[], &state).unwrap();
        assert!(probe.probe);
        assert_eq!(probe.endpoint.addr.port(), 1000);
        let mut inflight = probe.start();
        assert_eq!(
            inflight.record(true, Some(&policy), &state, 3),
            Transition::Restored
        );
        assert_eq!(b.open_endpoints(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_to_pick_when_every_endpoint_is_ejected() {
        let eps = endpoints(1);
        let state = BackendState::default();
        let policy = Outlier {
            consecutive_failures: 1,
            max_ejected_percent: 100,
            ..Outlier::default()
        };
        let b = Balancer::new(eps.clone(), LbKind::Ewma);
        eps[0].start().record(false, Some(&policy), &state, 1);
        assert!(b.pick(&[], &state).is_none());
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let b = Balancer::new(endpoints(3), LbKind::RoundRobin);
        let ports: Vec<u16> = (0..6).map(|_| pick(&b).addr.port()).collect();
        assert_eq!(ports, [1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[tokio::test(start_paused = true)]
    async fn ewma_avoids_the_slow_endpoint() {
        let eps = endpoints(3);
        let now = Instant::now();
        eps[0].observe(Duration::from_millis(1), now);
        eps[1].observe(Duration::from_millis(1), now);
        eps[2].observe(Duration::from_millis(50), now);
        let b = Balancer::new(eps, LbKind::Ewma);
        let slow = (0..1000).filter(|_| pick(&b).addr.port() == 1002).count();
        assert_eq!(
            slow, 0,
            "P2C never prefers the slow endpoint over a fast one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ewma_decays_toward_faster_samples() {
        let ep = &endpoints(1)[0];
        let t0 = Instant::now();
        ep.observe(Duration::from_millis(100), t0);
        tokio::time::advance(Duration::from_secs(20)).await;
        ep.observe(Duration::from_millis(1), Instant::now());
        let cost_ms = ep.cost(Instant::now()) / 1e6;
        assert!(
            cost_ms < 20.0,
            "cost {cost_ms}ms should have decayed toward 1ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_endpoint_is_tried_and_an_unreachable_one_avoided() {
        let eps = endpoints(3);
        let now = Instant::now();
        eps[0].observe(Duration::from_millis(1), now);
        eps[1].observe(Duration::from_millis(1), now);
        let b = Balancer::new(eps.clone(), LbKind::Ewma);
        let new = (0..100).filter(|_| pick(&b).addr.port() == 1002).count();
        assert!(new > 0, "a new endpoint gets traffic while idle");
        let busy: Vec<_> = (0..2).map(|_| eps[2].start()).collect();
        assert!(
            (0..100).all(|_| pick(&b).addr.port() != 1002),
            "but not a flood before its first answer"
        );
        for f in busy {
            f.unreachable();
        }
        assert!(
            (0..100).all(|_| pick(&b).addr.port() != 1002),
            "an unreachable endpoint is avoided"
        );
    }

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let eps = endpoints(2);
        let busy: Vec<_> = (0..5).map(|_| eps[0].start()).collect();
        let b = Balancer::new(eps, LbKind::LeastRequest);
        assert!((0..100).all(|_| pick(&b).addr.port() == 1001));
        drop(busy);
    }
}
