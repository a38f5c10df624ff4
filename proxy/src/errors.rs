//! Errors the proxy raises on the request path, and the one place that turns them into responses.
//!
//! Leaf code returns a [`ProxyError`] where it detects the failure; [`rescue`] alone maps it to a
//! status, an `x-weft-error` reason (docs/configuration.md) and, for gRPC callers, a `grpc-status`.

use std::net::SocketAddr;

use http::{HeaderValue, Response, StatusCode};

use weft_runtime::body::{self, Body};

/// The header that marks a response the proxy made up itself.
pub const ERROR_HEADER: &str = "x-weft-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no service matches {0}")]
    NoRoute(String),
    #[error("{0}")]
    NoEndpoints(String),
    #[error("connect to {addr} failed: {reason}")]
    ConnectFailed { addr: SocketAddr, reason: String },
    #[error("connection to {addr} was reset: {reason}")]
    UpstreamReset { addr: SocketAddr, reason: String },
    #[error("TLS with {addr} failed: {reason}")]
    TlsFailed { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Timeout(String),
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout {
        addr: SocketAddr,
        after: std::time::Duration,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A path with no single meaning across servers (`path::normalize`).
    #[error("bad request path: {0}")]
    BadPath(#[from] weft_runtime::path::PathError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    CircuitOpen(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    BudgetExhausted(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("fault injected: {0}")]
    FaultInjected(StatusCode),
}

impl ProxyError {
    /// A connect that ran out of time (rather than being refused).
    pub fn is_connect_timeout(&self) -> bool {
        matches!(self, Self::ConnectTimeout { .. })
    }

    /// The `x-weft-error` reason (docs/configuration.md, "Errors the proxy makes up").
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute(_) => "no-route",
            Self::NoEndpoints(_) => "no-endpoints",
            Self::ConnectFailed { .. } => "connect-failed",
            Self::UpstreamReset { .. } => "upstream-reset",
            Self::TlsFailed { .. } => "tls-failed",
            Self::Timeout(_) | Self::ConnectTimeout { .. } => "timeout",
            Self::BadRequest(_) | Self::BadPath(_) => "bad-request",
            Self::Forbidden(_) => "forbidden",
            Self::CircuitOpen(_) => "circuit-open",
            Self::Overloaded(_) => "overloaded",
            Self::BudgetExhausted(_) => "budget-exhausted",
            Self::RateLimited { .. } => "rate-limited",
            Self::FaultInjected(_) => "fault-injected",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::NoEndpoints(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectFailed { .. } | Self::UpstreamReset { .. } | Self::TlsFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout(_) | Self::ConnectTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest(_) | Self::BadPath(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::CircuitOpen(_) | Self::Overloaded(_) | Self::BudgetExhausted(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::FaultInjected(status) => *status,
        }
    }

    /// The gRPC status code a gRPC caller sees instead of the HTTP status.
    fn grpc_status(&self) -> u16 {
        match self {
            Self::NoRoute(_) => 12,                              // UNIMPLEMENTED
            Self::Timeout(_) | Self::ConnectTimeout { .. } => 4, // DEADLINE_EXCEEDED
            Self::Forbidden(_) => 7,                             // PERMISSION_DENIED
            Self::BadRequest(_) | Self::BadPath(_) => 13,        // INTERNAL
            Self::RateLimited { .. } => 8,                       // RESOURCE_EXHAUSTED
            Self::FaultInjected(status) => grpc_status_of_http(status.as_u16()),
            // Listed, not `_`: a new error must choose its status.
            Self::NoEndpoints(_)
            | Self::ConnectFailed { .. }
            | Self::UpstreamReset { .. }
            | Self::TlsFailed { .. }
            | Self::CircuitOpen(_)
            | Self::Overloaded(_)
            | Self::BudgetExhausted(_) => 14, // UNAVAILABLE
        }
    }
}

/// The gRPC status for an HTTP status, as gRPC's HTTP mapping has it.
fn grpc_status_of_http(status: u16) -> u16 {
    match status {
        200..=299 => 0,
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Turns an error into the response the caller sees.
pub fn rescue(err: &ProxyError, grpc: bool) -> Response<Body> {
    let reason = HeaderValue::from_static(err.reason());
    let message = err.to_string();
    let mut rsp = if grpc {
        // A trailers-only gRPC response: HTTP 200 with the status in the headers.
        let mut rsp = Response::new(body::empty());
        let headers = rsp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(err.grpc_status()));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", v);
        }
        rsp
    } else {
        let mut rsp = Response::new(body::full(format!("{message}\n")));
        *rsp.status_mut() = err.status();
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    };
    rsp.headers_mut().insert(ERROR_HEADER, reason);
    if let ProxyError::RateLimited { retry_after, .. } = err {
        // Whole seconds, rounded up: a caller that waits this long gets a token.
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        rsp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    rsp
}

/// gRPC's percent-encoding of `grpc-message`: everything outside printable ASCII, and `%`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a request is gRPC (its errors are reported as gRPC statuses).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_error_carries_reason_and_status() {
        let rsp = rescue(&ProxyError::NoRoute("nope.default".into()), false);
        assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
        assert_eq!(rsp.headers()[ERROR_HEADER], "no-route");
    }

    #[test]
    fn grpc_error_is_trailers_only() {
        let err = ProxyError::ConnectFailed {
            addr: "127.0.0.1:1".parse().unwrap(),
            reason: "refused".into(),
        };
        let rsp = rescue(&err, true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(rsp.headers()[ERROR_HEADER], "connect-failed");
    }

    #[test]
    fn a_refused_path_is_a_bad_request() {
        let rsp = rescue(
            &ProxyError::from(weft_runtime::path::PathError::EncodedSlash),
            false,
        );
        assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(rsp.headers()[ERROR_HEADER], "bad-request");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }
}
