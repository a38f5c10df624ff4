//! Local rate limiting (inbound, per service) and evenly spread percentages (fault injection).
//! See docs/resilience/rate-limiting.md and docs/resilience/fault-injection.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::RateLimit;

/// A token bucket: `requests_per_second` tokens a second, holding at most `burst`; it starts
/// full.
#[derive(Debug)]
pub struct TokenBucket {
    params: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(params: RateLimit) -> Self {
        Self {
            params,
            state: Mutex::new((f64::from(params.burst), Instant::now())),
        }
    }

    pub fn params(&self) -> &RateLimit {
        &self.params
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&self) -> Result<(), Duration> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let (tokens, last) = *s;
        let rate = self.params.requests_per_second;
        let burst = f64::from(self.params.burst.max(1));
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(burst);
        if tokens >= 1.0 {
            *s = (tokens - 1.0, now);
            Ok(())
        } else {
            *s = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }
}

/// Chooses a given share of events, evenly spread: event n is chosen when the fractional part
/// of n/φ falls below the share (a golden-ratio Weyl sequence), so over any N events the share
/// chosen is within about 1/N of the target. Starts at a random point.
#[derive(Debug)]
pub struct Spread(AtomicU64);

impl Default for Spread {
    fn default() -> Self {
        Self(AtomicU64::new(rand::random()))
    }
}

impl Spread {
    pub fn hit(&self, percent: f64) -> bool {
        if percent <= 0.0 {
            return false;
        }
        if percent >= 100.0 {
            return true;
        }
        const PHI_FRAC: u64 = 0x9E37_79B9_7F4A_7C15; // 2^64 / golden ratio
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        let x = n.wrapping_mul(PHI_FRAC) as f64 / 18_446_744_073_709_551_616.0;
        x < percent / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_then_rate() {
        let b = TokenBucket::new(RateLimit {
            requests_per_second: 10.0,
            burst: 3,
        });
        assert!((0..3).all(|_| b.take().is_ok()));
        let wait = b.take().unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take().is_ok());
        assert!(b.take().is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            (0..10).filter(|_| b.take().is_ok()).count(),
            3,
            "capped at the burst"
        );
    }

    #[test]
    fn spread_hits_the_share_closely() {
        let s = Spread::default();
        for pct in [0.0, 1.0, 12.5, 50.0, 99.0, 100.0] {
            let hits = (0..1000).filter(|_| s.hit(pct)).count() as f64;
            assert!((hits / 10.0 - pct).abs() <= 0.5, "{pct}%: {hits} of 1000");
        }
    }
}
