//! Load balancing inside one backend: which endpoint takes the next request.
//!
//! The default is power-of-two-choices over a peak-EWMA latency estimate weighted by outstanding
//! requests (as Linkerd and Finagle do): pick two endpoints at random, send to the cheaper.
//! Round-robin and least-request (P2C on outstanding requests alone) are selectable per service
//! through TrafficPolicy `loadBalancer`.
//!
//! Endpoints are shared across config updates (see `discovery::convert`), so their latency
//! estimates and their connections survive a change that does not remove them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::transport::PeerConn;

/// How long a latency sample takes to fade: the EWMA's time constant.
const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed for an endpoint that has not answered yet.
const DEFAULT_RTT: Duration = Duration::from_millis(30);

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

    /// Chooses an endpoint, or `None` when the backend has none.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        let eps = &self.endpoints;
        match eps.len() {
            0 => None,
            1 => eps.first(),
            n => match self.kind {
                LbKind::RoundRobin => eps.get(self.next.fetch_add(1, Ordering::Relaxed) % n),
                LbKind::Ewma | LbKind::LeastRequest => {
                    let (a, b) = two_distinct(n);
                    let now = Instant::now();
                    let cost = |e: &Endpoint| match self.kind {
                        LbKind::LeastRequest => e.pending() as f64,
                        _ => e.cost(now),
                    };
                    let (ea, eb) = (&eps[a], &eps[b]);
                    Some(if cost(eb) < cost(ea) { eb } else { ea })
                }
            },
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
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Peak-EWMA cost: latency estimate times (outstanding requests + 1).
    fn cost(&self, now: Instant) -> f64 {
        let pending = self.pending() as f64 + 1.0;
        let Ok(ewma) = self.ewma.lock() else {
            return f64::MAX;
        };
        let rtt = if ewma.cost == 0.0 {
            DEFAULT_RTT.as_nanos() as f64
        } else {
            let elapsed = now.saturating_duration_since(ewma.stamp).as_secs_f64();
            ewma.cost * (-elapsed / DECAY.as_secs_f64()).exp()
        };
        rtt * pending
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

    /// Marks a request as outstanding on this endpoint until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            start: Instant::now(),
        }
    }
}

/// An outstanding request: counts toward the endpoint's load until dropped.
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    start: Instant,
}

impl InFlight {
    /// Records the latency to the response head as a sample for the estimate.
    pub fn responded(&self) {
        let now = Instant::now();
        self.endpoint.observe(now - self.start, now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
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

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let b = Balancer::new(endpoints(3), LbKind::RoundRobin);
        let ports: Vec<u16> = (0..6).map(|_| b.pick().unwrap().addr.port()).collect();
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
        let slow = (0..1000)
            .filter(|_| b.pick().unwrap().addr.port() == 1002)
            .count();
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

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let eps = endpoints(2);
        let busy: Vec<_> = (0..5).map(|_| eps[0].start()).collect();
        let b = Balancer::new(eps, LbKind::LeastRequest);
        assert!((0..100).all(|_| b.pick().unwrap().addr.port() == 1001));
        drop(busy);
    }
}
