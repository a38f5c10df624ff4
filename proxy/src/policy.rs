//! Resilience policy, as the request path reads it: timeouts, retries, circuit breaking,
//! concurrency limits, rate limits and fault injection, with their defaults.
//!
//! Built from TrafficPolicy and HTTPRoute `timeouts`/`retry` by `discovery::convert`. Policy
//! that concerns a whole request (its deadline, retries, injected faults) comes from the
//! logical service the caller addressed, overridden per HTTPRoute rule; policy that concerns
//! endpoints (connect timeout, ejection, limits) comes from each backend's own TrafficPolicy.
//! See docs/resilience/.

use std::time::Duration;

use http::Method;
use serde::Serialize;

/// How long a connection to a peer may take, unless TrafficPolicy says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an opaque TCP connection may carry nothing before it is closed, unless
/// TrafficPolicy `timeouts.idle` says otherwise.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Retries without a retry policy: only of requests that never reached an upstream.
pub const DEFAULT_RETRIES: u32 = 2;
/// The most retries a policy may ask for.
pub const MAX_RETRIES: u32 = 10;
/// Request bodies up to this size are kept for replay; a larger body is streamed and the
/// request is not retried once sent.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// Policy for a whole request: one per HTTPRoute rule (or the service's default rule).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPolicy {
    /// The whole exchange, retries included, up to the end of the response body.
    #[serde(serialize_with = "weft_runtime::duration::ser_opt_duration")]
    pub request_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub faults: Option<Faults>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: u32,
    pub on: Conditions,
    /// Each try, to its response head.
    #[serde(serialize_with = "weft_runtime::duration::ser_opt_duration")]
    pub per_try_timeout: Option<Duration>,
    #[serde(serialize_with = "weft_runtime::duration::ser_duration")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "weft_runtime::duration::ser_duration")]
    pub backoff_max: Duration,
    /// Retry a request that was sent even if its method is not idempotent.
    pub non_idempotent: bool,
    pub budget: BudgetParams,
}

impl Default for RetryPolicy {
    /// Without a retry policy: a request that never reached an upstream (connect failure,
    /// refused stream) is retried at once on another endpoint, at most twice, within budget.
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_RETRIES,
            on: Conditions {
                connect_failure: true,
                ..Conditions::default()
            },
            per_try_timeout: None,
            backoff_base: Duration::ZERO,
            backoff_max: Duration::ZERO,
            non_idempotent: false,
            budget: BudgetParams::default(),
        }
    }
}

impl RetryPolicy {
    /// The defaults of an explicit retry policy (TrafficPolicy `retries`, HTTPRoute `retry`).
    pub fn explicit() -> Self {
        Self {
            on: Conditions {
                connect_failure: true,
                reset: true,
                gateway_error: true,
                ..Conditions::default()
            },
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            ..Self::default()
        }
    }

    /// The delay before retry number `retry` (1-based): exponential from `backoff_base`, capped
    /// at `backoff_max`, with "equal jitter" (between half and all of it) so that callers that
    /// failed together do not retry together.
    pub fn backoff(&self, retry: u32) -> Duration {
        if self.backoff_base.is_zero() {
            return Duration::ZERO;
        }
        let cap = self
            .backoff_base
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.backoff_max.max(self.backoff_base));
        let half = cap / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// What makes a try worth retrying.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conditions {
    /// The request never reached an upstream: connect failure, TLS failure, refused stream.
    pub connect_failure: bool,
    /// The connection or stream broke, or the try timed out, after the request was sent.
    pub reset: bool,
    /// Any 5xx response, and `reset`.
    pub server_error: bool,
    /// 502, 503 and 504 responses, and `reset`.
    pub gateway_error: bool,
    /// These response statuses.
    pub statuses: Vec<u16>,
    /// These gRPC statuses, in a trailers-only response.
    pub grpc: Vec<u16>,
}

impl Conditions {
    /// Parses a TrafficPolicy `retries.on` list.
    pub fn parse(on: &[String]) -> Result<Self, String> {
        let mut c = Self::default();
        for item in on {
            match item.as_str() {
                "5xx" => c.server_error = true,
                "gateway-error" => c.gateway_error = true,
                "connect-failure" => c.connect_failure = true,
                "reset" => c.reset = true,
                s => {
                    if let Some(code) = s.strip_prefix("retriable-status:") {
                        match code.parse::<u16>() {
                            Ok(n) if (100..=599).contains(&n) => c.statuses.push(n),
                            _ => return Err(format!("retries.on {s:?}: not an HTTP status")),
                        }
                    } else if let Some(code) = grpc_status_by_name(s) {
                        c.grpc.push(code);
                    } else {
                        return Err(format!(
                            "retries.on {s:?}: expected 5xx, gateway-error, connect-failure, reset, retriable-status:CODE, cancelled, deadline-exceeded, internal, resource-exhausted or unavailable"
                        ));
                    }
                }
            }
        }
        Ok(c)
    }

    pub fn retries_status(&self, status: u16) -> bool {
        (self.server_error && (500..600).contains(&status))
            || (self.gateway_error && matches!(status, 502..=504))
            || self.statuses.contains(&status)
    }

    /// Whether a broken or timed-out try is retried.
    pub fn retries_reset(&self) -> bool {
        self.reset || self.server_error || self.gateway_error
    }
}

/// gRPC statuses a retry policy may name, as Envoy names them.
fn grpc_status_by_name(name: &str) -> Option<u16> {
    Some(match name {
        "cancelled" => 1,
        "deadline-exceeded" => 4,
        "resource-exhausted" => 8,
        "internal" => 13,
        "unavailable" => 14,
        _ => return None,
    })
}

/// Whether a method may be repeated without changing the outcome (RFC 9110, 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Retries allowed as a share of requests, plus a floor per second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetParams {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for BudgetParams {
    /// As Linkerd: retries may add 20% to the load, plus 10 a second.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

/// Injected faults (outbound), each applied to an evenly spread share of requests.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// Percent of requests delayed, and by how long.
    pub delay_percent: f64,
    #[serde(serialize_with = "weft_runtime::duration::ser_duration")]
    pub delay: Duration,
    /// Percent of requests answered with `abort_status` without reaching an upstream.
    pub abort_percent: f64,
    pub abort_status: u16,
}

/// Policy for the endpoints of one backend.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicy {
    #[serde(serialize_with = "weft_runtime::duration::ser_duration")]
    pub connect_timeout: Duration,
    /// Opaque TCP connections, and HTTP streams when set.
    #[serde(serialize_with = "weft_runtime::duration::ser_opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// Endpoint ejection after consecutive failures; `None`: never ejected.
    pub outlier: Option<Outlier>,
    pub limits: Limits,
}

impl Default for BackendPolicy {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: None,
            outlier: None,
            limits: Limits::default(),
        }
    }
}

impl BackendPolicy {
    pub fn tcp_idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT)
    }
}

/// Circuit breaking per endpoint (outlier detection).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    pub consecutive_failures: u32,
    #[serde(serialize_with = "weft_runtime::duration::ser_duration")]
    pub base_ejection: Duration,
    #[serde(serialize_with = "weft_runtime::duration::ser_duration")]
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Per-service concurrency limits (the bulkhead); `None`: unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Opaque TCP and upgraded (WebSocket) connections open to the service.
    pub max_connections: Option<usize>,
    /// Requests waiting for a connection to an endpoint.
    pub max_pending_requests: Option<usize>,
    /// Requests outstanding to the service.
    pub max_requests: Option<usize>,
}

/// Inbound rate limit for this proxy's service.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_every_documented_name() {
        let on: Vec<String> = [
            "5xx",
            "gateway-error",
            "connect-failure",
            "reset",
            "retriable-status:409",
            "unavailable",
            "cancelled",
        ]
        .map(String::from)
        .into();
        let c = Conditions::parse(&on).unwrap();
        assert!(c.server_error && c.gateway_error && c.connect_failure && c.reset);
        assert_eq!(c.statuses, [409]);
        assert_eq!(c.grpc, [14, 1]);
        assert!(Conditions::parse(&["5xxx".into()]).is_err());
        assert!(Conditions::parse(&["retriable-status:99".into()]).is_err());
    }

    #[test]
    fn gateway_error_is_502_to_504() {
        let c = Conditions {
            gateway_error: true,
            ..Default::default()
        };
        assert!(!c.retries_status(500));
        assert!(c.retries_status(503));
        assert!(c.retries_reset());
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let p = RetryPolicy::explicit();
        for retry in 1..8 {
            let d = p.backoff(retry);
            let cap = (p.backoff_base * (1 << (retry - 1))).min(p.backoff_max);
            assert!(
                d >= cap / 2 && d <= cap,
                "retry {retry}: {d:?} vs cap {cap:?}"
            );
        }
        assert_eq!(RetryPolicy::default().backoff(1), Duration::ZERO);
    }
}
