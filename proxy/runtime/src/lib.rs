//! weft-runtime: the runtime both weft binaries are built on. It holds what the sidecar
//! (`weft-proxy`) and the control plane (`weft`) each need to run as a process, to serve and to
//! dial over TLS: accept loops with their limits and drain, a binary's tasks and its one
//! shutdown, TLS configs and SPIFFE verification, the key-and-CSR helper, TLS to the control
//! plane, tracing and span export, logging set-up, what a `/metrics` scrape answers, what every
//! local admin listener refuses first, and the leaves under them (the body type, durations as
//! weft writes them, request-path and rule-path rules, SPIFFE ID names). It holds no request
//! routing and no control-plane state: routes, balancing, retries and discovery are the
//! proxy's; resources, the CA and the config in force are the control plane's; each binary's
//! metric families stay in its own crate. It depends on neither binary's crate.
//!
//! # Where does X live
//!
//! | what | where |
//! |---|---|
//! | the one body type of proxied requests and responses | `body.rs` |
//! | durations: parsing, writing back (`1h`, `5m`, `2s`, `250ms`) | `duration.rs` |
//! | points in time: RFC 3339 in UTC, written and read | `timestamp.rs` |
//! | request-path normalization, rule-path patterns | `path.rs` |
//! | SPIFFE ID names (workloads, the control plane) | `spiffe.rs` |
//! | process logging (`WEFT_LOG`, `WEFT_LOG_FORMAT`) | `logging.rs` |
//! | an error and its causes on one line | `error_chain.rs` ([`error_chain()`]) |
//! | traces: sampling and spans, trace headers, OTLP export | `trace.rs`, `trace/propagation.rs`, `trace/export.rs` |
//! | `/metrics` answers: OpenMetrics or the classic text | `exposition.rs` |
//! | refusals every local admin listener applies first | `admin_guard.rs` |
//! | TLS configs, SPIFFE verification, credentials, trust anchors | `tls.rs` |
//! | a new key and its CSR for a SPIFFE ID | `tls/csr.rs` ([`tls::key_and_csr`]) |
//! | TLS to the control plane: settings that verify it, the connection | `control_channel.rs` |
//! | accept loops, connection limits, listener metrics, drain, fd limit | `server.rs` |
//! | a connection's first bytes, read and replayed | `server/prefix.rs` |
//! | a binary's tasks and their one shutdown (both `Running`s hold one) | `tasks.rs` |
//!
//! Modules depend downward only, with no circle: the leaves import nothing from the crate,
//! `tls` imports `spiffe`, `control_channel` imports `tls`, `server` imports `body` and
//! `duration`.

// Leaves: no imports from this crate.
pub mod admin_guard; // refusals every local admin listener applies first
pub mod body; // the one body type of proxied requests
pub mod duration; // durations as weft writes them
mod error_chain; // an error and its causes, on one line
pub mod exposition; // what a `/metrics` scrape answers
pub mod logging; // process logging for both binaries
pub mod path; // request-path normalization and rule-path checks
pub mod spiffe; // SPIFFE ID names
pub mod timestamp; // points in time as weft writes them (RFC 3339)
pub mod trace; // spans, trace headers, OTLP export

// TLS: configs, verification and credentials, then the channel to the control plane.
pub mod control_channel; // TLS to the control plane: verifying settings, connecting
pub mod tls; // TLS configs, SPIFFE verification, credentials, key and CSR

// Serving: accept loops and limits, and a binary's tasks.
pub mod server; // accept loops, limits, listener metrics, drain, fd limit
pub mod tasks; // a binary's tasks and their one shutdown signal

pub use error_chain::error_chain;
