//! Traffic policy at the boundary: a TrafficPolicy's request part (timeouts, retries, faults),
//! its endpoint part (connect and idle timeouts, circuit breaker, limits), a route rule's
//! overrides, the inbound rate limit and AuthorizationPolicy rules, each checked and turned into
//! the domain types of `policy` and `authz`. Errors name the field, as the resource spells it.
//!
//! Services, backends and route matches are `convert.rs`.

use std::time::Duration;

use http::Method;
use weft_proto::discovery as pb;

use crate::policy::{
    BackendPolicy, BudgetParams, Conditions, Faults, Limits, Outlier, RateLimit, RequestPolicy,
    RetryPolicy, MAX_RETRIES,
};

type Result<T> = std::result::Result<T, String>;

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

/// The request-level part of a service's TrafficPolicy.
pub(super) fn request_policy(p: Option<&pb::TrafficPolicy>) -> Result<RequestPolicy> {
    let Some(p) = p else {
        return Ok(RequestPolicy::default());
    };
    let mut retry = RetryPolicy::default();
    if let Some(r) = &p.retries {
        retry = RetryPolicy::explicit();
        if r.attempts > 0 {
            retry.max_retries = r.attempts;
        }
        if !r.on.is_empty() {
            retry.on = Conditions::parse(&r.on)?;
        }
        retry.per_try_timeout = ms(r.per_try_timeout_ms);
        if let Some(base) = ms(r.backoff_base_ms) {
            retry.backoff_base = base;
            retry.backoff_max = retry.backoff_max.max(base);
        }
        if let Some(max) = ms(r.backoff_max_ms) {
            retry.backoff_max = max;
        }
        retry.non_idempotent = r.non_idempotent;
        retry.budget = budget(r)?;
    }
    if retry.max_retries > MAX_RETRIES {
        return Err(format!(
            "retries.attempts {} is over {MAX_RETRIES}",
            retry.max_retries
        ));
    }
    let faults = p.fault_injection.as_ref().map(faults).transpose()?;
    Ok(RequestPolicy {
        request_timeout: p.timeouts.as_ref().and_then(|t| ms(t.request_ms)),
        retry,
        faults,
    })
}

fn budget(r: &pb::Retries) -> Result<BudgetParams> {
    let mut b = BudgetParams::default();
    if let Some(ratio) = r.budget_ratio {
        if !(0.0..=10.0).contains(&ratio) {
            return Err(format!("retries.budget.ratio {ratio} is not within 0..10"));
        }
        b.ratio = ratio;
    }
    if let Some(min) = r.budget_min_per_second {
        b.min_per_second = min;
    }
    Ok(b)
}

fn faults(f: &pb::FaultInjection) -> Result<Faults> {
    for (what, pct) in [("delay", f.delay_percent), ("abort", f.abort_percent)] {
        if !(0.0..=100.0).contains(&pct) {
            return Err(format!(
                "faultInjection.{what}.percent {pct} is not within 0..100"
            ));
        }
    }
    if f.abort_percent > 0.0 && !(200..=599).contains(&f.abort_status) {
        return Err(format!(
            "faultInjection.abort.status {} is not an HTTP status",
            f.abort_status
        ));
    }
    Ok(Faults {
        delay_percent: f.delay_percent,
        delay: Duration::from_millis(f.delay_ms),
        abort_percent: f.abort_percent,
        abort_status: u16::try_from(f.abort_status).unwrap_or(503),
    })
}

/// A rule's policy: its service's, with the rule's HTTPRoute `timeouts` and `retry` on top.
pub(super) fn rule_policy(
    service: &RequestPolicy,
    traffic: Option<&pb::TrafficPolicy>,
    r: &pb::RouteRule,
) -> Result<RequestPolicy> {
    let mut p = service.clone();
    if let Some(t) = &r.timeouts {
        if let Some(request) = ms(t.request_ms) {
            p.request_timeout = Some(request);
        }
        if let Some(per_try) = ms(t.backend_request_ms) {
            p.retry.per_try_timeout = Some(per_try);
        }
    }
    if let Some(rr) = &r.retry {
        let explicit = traffic.is_some_and(|t| t.retries.is_some());
        if !explicit {
            let per_try = p.retry.per_try_timeout;
            p.retry = RetryPolicy::explicit();
            p.retry.per_try_timeout = per_try;
        }
        if rr.attempts > 0 {
            if rr.attempts > MAX_RETRIES {
                return Err(format!(
                    "retry.attempts {} is over {MAX_RETRIES}",
                    rr.attempts
                ));
            }
            p.retry.max_retries = rr.attempts;
        }
        if !rr.codes.is_empty() {
            // Gateway API: these codes, and connection errors.
            p.retry.on = Conditions {
                connect_failure: true,
                reset: true,
                statuses: rr
                    .codes
                    .iter()
                    .map(|c| u16::try_from(*c).unwrap_or(0))
                    .collect(),
                ..Conditions::default()
            };
        }
        if let Some(backoff) = ms(rr.backoff_ms) {
            p.retry.backoff_base = backoff;
            p.retry.backoff_max = p.retry.backoff_max.max(backoff);
        }
        p.retry.non_idempotent |= rr.non_idempotent;
    }
    Ok(p)
}

/// The endpoint-level part of a backend's TrafficPolicy.
pub(super) fn backend_policy(p: Option<&pb::TrafficPolicy>) -> Result<BackendPolicy> {
    let mut out = BackendPolicy::default();
    let Some(p) = p else {
        return Ok(out);
    };
    if let Some(t) = &p.timeouts {
        if let Some(c) = ms(t.connect_ms) {
            out.connect_timeout = c;
        }
        out.idle_timeout = ms(t.idle_ms);
    }
    if let Some(c) = &p.circuit_breaker {
        if c.consecutive_failures > 0 {
            let mut o = Outlier {
                consecutive_failures: c.consecutive_failures,
                ..Outlier::default()
            };
            if let Some(base) = ms(c.base_ejection_time_ms) {
                o.base_ejection = base;
                o.max_ejection = o.max_ejection.max(base);
            }
            if let Some(max) = ms(c.max_ejection_time_ms) {
                o.max_ejection = max.max(o.base_ejection);
            }
            if c.max_ejected_percent > 100 {
                return Err(format!(
                    "circuitBreaker.maxEjectedPercent {} is over 100",
                    c.max_ejected_percent
                ));
            }
            if c.max_ejected_percent > 0 {
                o.max_ejected_percent = c.max_ejected_percent;
            }
            out.outlier = Some(o);
        }
        let limit = |v: u32| (v > 0).then_some(v as usize);
        out.limits = Limits {
            max_connections: limit(c.max_connections),
            max_pending_requests: limit(c.max_pending_requests),
            max_requests: limit(c.max_requests),
        };
    }
    Ok(out)
}

pub(super) fn rate_limit(r: &pb::RateLimit) -> Result<RateLimit> {
    let rps = r.requests_per_second;
    if !(rps.is_finite() && rps > 0.0) {
        return Err(format!(
            "rateLimit.requestsPerSecond {rps} must be more than 0"
        ));
    }
    let burst = if r.burst > 0 {
        r.burst
    } else {
        // One second's worth.
        rps.ceil().min(f64::from(u32::MAX)) as u32
    };
    Ok(RateLimit {
        requests_per_second: rps,
        burst: burst.max(1),
    })
}

pub(super) fn authz_rule(r: &pb::AuthorizationRule) -> Result<crate::authz::Rule> {
    let methods = r
        .methods
        .iter()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("method {m:?} is invalid")))
        .collect::<Result<_>>()?;
    for p in &r.paths {
        weft_runtime::path::check_pattern(p).map_err(|e| format!("path {p:?} {e}"))?;
    }
    Ok(crate::authz::Rule {
        identities: r.identities.clone(),
        paths: r.paths.clone(),
        methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_path_that_cannot_match_is_rejected() {
        let rule = |p: &str| {
            authz_rule(&pb::AuthorizationRule {
                paths: vec![p.into()],
                ..Default::default()
            })
        };
        assert!(rule("/public/*").is_ok());
        let err = rule("/public/../admin").unwrap_err();
        assert!(err.contains("write \"/admin\""), "{err}");
    }
}
