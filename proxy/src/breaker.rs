//! Circuit breaking: per-endpoint ejection after consecutive failures (outlier detection), and
//! per-service concurrency limits (the bulkhead).
//!
//! An endpoint is *closed* (takes traffic) until `consecutiveFailures` tries in a row fail; it is
//! then *open* (ejected) for `baseEjectionTime`. When that expires the next request goes to it
//! as a *half-open* probe: success closes it again, failure re-opens it for twice as long (with
//! jitter), up to `maxEjectionTime`. At most `maxEjectedPercent` of a backend's endpoints are
//! open at once. State lives on the endpoint and in the backend's [`BackendState`], both shared
//! across config updates. See docs/resilience/circuit-breaking.md.

use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::{Limits, Outlier};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Health {
    state: AtomicU8,
    consecutive: AtomicU32,
    detail: Mutex<Detail>,
}

#[derive(Debug)]
struct Detail {
    open_until: Instant,
    /// Ejections since the endpoint was last closed by a successful probe.
    ejections: u32,
}

/// What a recorded outcome did to the breaker, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Closed → open.
    Ejected(Duration),
    /// Half-open → open, after a failed probe.
    Reejected(Duration),
    /// Half-open → closed, after a successful probe.
    Restored,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            detail: Mutex::new(Detail {
                open_until: Instant::now(),
                ejections: 0,
            }),
        }
    }
}

impl Health {
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Relaxed) == CLOSED
    }

    /// Open and its ejection time is over: the next request may probe it.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.state.load(Ordering::Relaxed) == OPEN
            && self.detail.lock().is_ok_and(|d| d.open_until <= now)
    }

    /// Makes this endpoint half-open for one probe; false if another request got there first.
    pub fn claim_probe(&self, now: Instant) -> bool {
        let Ok(d) = self.detail.lock() else {
            return false;
        };
        d.open_until <= now
            && self
                .state
                .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// A probe that ended without an outcome (the caller went away): the next request probes.
    pub fn abandon_probe(&self) {
        if let Ok(mut d) = self.detail.lock() {
            if self
                .state
                .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                d.open_until = Instant::now();
            }
        }
    }

    /// Records a try's outcome. `probe`: this try was the half-open probe.
    pub fn record(
        &self,
        ok: bool,
        probe: bool,
        policy: &Outlier,
        backend: &BackendState,
        endpoints: usize,
    ) -> Transition {
        if ok && !probe {
            // The hot path: one load, and a store only after a failure.
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return Transition::None;
        }
        let failures = if ok {
            0
        } else {
            self.consecutive.fetch_add(1, Ordering::Relaxed) + 1
        };
        let Ok(mut d) = self.detail.lock() else {
            return Transition::None;
        };
        let now = Instant::now();
        match self.state.load(Ordering::Relaxed) {
            HALF_OPEN if probe && ok => {
                self.state.store(CLOSED, Ordering::Relaxed);
                self.consecutive.store(0, Ordering::Relaxed);
                d.ejections = 0;
                backend.ejected.fetch_sub(1, Ordering::Relaxed);
                Transition::Restored
            }
            HALF_OPEN if probe => {
                d.ejections = d.ejections.saturating_add(1);
                let t = ejection_time(policy, d.ejections);
                d.open_until = now + t;
                self.state.store(OPEN, Ordering::Relaxed);
                Transition::Reejected(t)
            }
            CLOSED if failures >= policy.consecutive_failures => {
                let open = backend.ejected.load(Ordering::Relaxed);
                let allowed = (open + 1) * 100 <= policy.max_ejected_percent as usize * endpoints;
                if !allowed {
                    return Transition::None;
                }
                d.ejections = d.ejections.saturating_add(1);
                let t = ejection_time(policy, d.ejections);
                d.open_until = now + t;
                self.state.store(OPEN, Ordering::Relaxed);
                backend.ejected.fetch_add(1, Ordering::Relaxed);
                Transition::Ejected(t)
            }
            _ => Transition::None,
        }
    }
}

/// `base × 2^(n-1)`, ±10% jitter, capped at `max`.
fn ejection_time(policy: &Outlier, ejections: u32) -> Duration {
    let t = policy
        .base_ejection
        .saturating_mul(1 << ejections.saturating_sub(1).min(16));
    let jitter = 0.9 + 0.2 * rand::random::<f64>();
    t.mul_f64(jitter).min(policy.max_ejection)
}

/// State shared by every config generation's view of one backend service.
#[derive(Debug, Default)]
pub struct BackendState {
    /// Endpoints open or half-open now.
    pub ejected: AtomicUsize,
    requests: AtomicUsize,
    pending: AtomicUsize,
    connections: AtomicUsize,
}

/// Which concurrency limit a permit counts toward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Pending,
    Connections,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Pending => "pending-requests",
            Self::Connections => "connections",
        }
    }
}

impl BackendState {
    /// Recounts open endpoints (after a config update changed the endpoint set).
    pub fn recount(&self, open: usize) {
        self.ejected.store(open, Ordering::Relaxed);
    }

    fn counter(&self, which: Limit) -> &AtomicUsize {
        match which {
            Limit::Requests => &self.requests,
            Limit::Pending => &self.pending,
            Limit::Connections => &self.connections,
        }
    }

    /// Takes a slot under `which`, or fails at once when the limit is reached (never queues).
    pub fn acquire(self: &Arc<Self>, which: Limit, limits: &Limits) -> Result<Permit, Limit> {
        let max = match which {
            Limit::Requests => limits.max_requests,
            Limit::Pending => limits.max_pending_requests,
            Limit::Connections => limits.max_connections,
        };
        let Some(max) = max else {
            return Ok(Permit(None));
        };
        let counter = self.counter(which);
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(which);
        }
        Ok(Permit(Some((self.clone(), which))))
    }

    pub fn in_use(&self, which: Limit) -> usize {
        self.counter(which).load(Ordering::Relaxed)
    }
}

/// A slot under a concurrency limit, given back on drop.
#[derive(Debug)]
pub struct Permit(Option<(Arc<BackendState>, Limit)>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((state, which)) = &self.0 {
            state.counter(*which).fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Outlier {
        Outlier {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(30),
            max_ejected_percent: 100,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_and_backs_off() {
        let (h, b, p) = (Health::default(), BackendState::default(), policy());
        assert_eq!(h.record(false, false, &p, &b, 3), Transition::None);
        assert_eq!(h.record(true, false, &p, &b, 3), Transition::None);
        assert_eq!(h.record(false, false, &p, &b, 3), Transition::None);
        assert_eq!(h.record(false, false, &p, &b, 3), Transition::None);
        let Transition::Ejected(t) = h.record(false, false, &p, &b, 3) else {
            panic!("three failures in a row eject")
        };
        assert!(
            t >= Duration::from_secs(9) && t <= Duration::from_secs(11),
            "{t:?}"
        );
        assert!(!h.is_closed());
        assert_eq!(b.ejected.load(Ordering::Relaxed), 1);

        // Not before the ejection time is over.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(!h.probe_due(Instant::now()));
        assert!(!h.claim_probe(Instant::now()));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(h.probe_due(Instant::now()));
        assert!(h.claim_probe(Instant::now()));
        assert!(!h.claim_probe(Instant::now()), "one probe at a time");

        // A failed probe: twice as long.
        let Transition::Reejected(t) = h.record(false, true, &p, &b, 3) else {
            panic!("a failed probe re-ejects")
        };
        assert!(
            t >= Duration::from_secs(18) && t <= Duration::from_secs(22),
            "{t:?}"
        );
        tokio::time::advance(Duration::from_secs(23)).await;
        assert!(h.claim_probe(Instant::now()));
        let Transition::Reejected(t) = h.record(false, true, &p, &b, 3) else {
            panic!()
        };
        assert!(t <= Duration::from_secs(30), "capped at the maximum: {t:?}");

        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(h.claim_probe(Instant::now()));
        assert_eq!(h.record(true, true, &p, &b, 3), Transition::Restored);
        assert!(h.is_closed());
        assert_eq!(b.ejected.load(Ordering::Relaxed), 0);

        // Restored: the next ejection starts from the base time again.
        for _ in 0..2 {
            h.record(false, false, &p, &b, 3);
        }
        let Transition::Ejected(t) = h.record(false, false, &p, &b, 3) else {
            panic!()
        };
        assert!(t <= Duration::from_secs(11), "{t:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn never_ejects_more_than_the_allowed_share() {
        let b = BackendState::default();
        let p = Outlier {
            max_ejected_percent: 50,
            consecutive_failures: 1,
            ..policy()
        };
        let hs: Vec<Health> = (0..4).map(|_| Health::default()).collect();
        let ejected = hs
            .iter()
            .filter(|h| matches!(h.record(false, false, &p, &b, 4), Transition::Ejected(_)))
            .count();
        assert_eq!(ejected, 2, "50% of 4 endpoints");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_is_retried() {
        let (h, b, p) = (Health::default(), BackendState::default(), policy());
        for _ in 0..3 {
            h.record(false, false, &p, &b, 1);
        }
        tokio::time::advance(Duration::from_secs(12)).await;
        assert!(h.claim_probe(Instant::now()));
        h.abandon_probe();
        assert!(h.claim_probe(Instant::now()));
    }

    #[test]
    fn limits_fail_fast_and_release_on_drop() {
        let b = Arc::new(BackendState::default());
        let limits = Limits {
            max_requests: Some(2),
            ..Default::default()
        };
        let p1 = b.acquire(Limit::Requests, &limits).unwrap();
        let _p2 = b.acquire(Limit::Requests, &limits).unwrap();
        assert_eq!(
            b.acquire(Limit::Requests, &limits).unwrap_err(),
            Limit::Requests
        );
        drop(p1);
        assert!(b.acquire(Limit::Requests, &limits).is_ok());
        assert!(b.acquire(Limit::Pending, &limits).is_ok(), "unlimited");
    }
}
