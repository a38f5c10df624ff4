//! An error and its causes on one line, for logs and refusals that name what failed.
//!
//! A leaf: it knows no error type of its own. Turning a gRPC status into text (the proxy's
//! `transport::status_text`) builds on it and stays with its users.

/// An error and its causes, on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
