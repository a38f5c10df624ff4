//! weft-proxy: the sidecar. See ARCHITECTURE.md for the request path and who owns what.
//!
//! [`start`] takes already-bound listeners, so that tests bind port 0 and run many proxies in
//! one process; `main.rs` hands the command line to [`cli`], which binds the configured
//! addresses and waits for a signal.
//!
//! # Where does X live
//!
//! | what | where |
//! |---|---|
//! | flags, environment, `/config` dump | `config.rs` (durations: `duration.rs`) |
//! | start-up: shared handles, tasks, one accept loop per listener | `wiring.rs` ([`start`]), handles bundled in `shared.rs` |
//! | accept loops, connection limits, drain | `server.rs` |
//! | the app's requests: route, retry, balance, connect | `outbound.rs`, then `routes.rs`, `retry.rs`, `balance.rs`, `breaker.rs` |
//! | peers' requests: mTLS, authorization, rate limit, to the app | `inbound.rs`, `authz.rs`, `ratelimit.rs` |
//! | the hop between proxies (HTTP/2, upgrades, opaque TCP) | `transport.rs`, `upgrade.rs`, `tcp.rs` |
//! | error reasons (`x-weft-error`) and the one rescue | `errors.rs` |
//! | config from the control plane, proto → domain types | `discovery.rs`, `discovery/convert.rs` (+ `convert/policies.rs`), per-endpoint state in `discovery/registry.rs` |
//! | the certificate: key, CSR, renewal | `identity.rs` |
//! | TLS configs, peer verification, credentials | `tls.rs`; SPIFFE ID names in `spiffe.rs` |
//! | the channel to the control plane | `control.rs` |
//! | traces: sampling and spans, trace headers, OTLP export | `trace.rs`, `trace/propagation.rs`, `trace/export.rs` |
//! | metrics and `/metrics` exposition | `metrics.rs` |
//! | access log, per-request observation | `access_log.rs`, `observe.rs` |
//! | admin listener, and what it refuses | `admin.rs`, `admin_guard.rs` |
//!
//! Modules depend downward only, with no circle: each group below imports from its own group
//! and the groups above it, never from one below (ARCHITECTURE.md, "Proxy start-up and module
//! layers", has the order). The control plane uses this library too: the leaves, `server`,
//! `tls`, `control`, `transport`, `metrics::exposition`, `identity::key_and_csr` and `config`.

// Leaves: no imports from this crate.
pub mod authz; // AuthorizationPolicy rules and their evaluation

// Foundations: errors, policy, TLS and the proxy-to-proxy transport.
pub mod breaker; // outlier ejection and concurrency limits
pub mod control; // the verified channel to the control plane
pub mod errors; // request-path errors and the one rescue
pub mod headers; // header rewriting between hops
pub mod policy; // resilience policy types and defaults
pub mod ratelimit; // token buckets and spread percentages
pub mod retry; // retry budget and replayable bodies
pub mod transport; // the hop between proxies

// State and models: listeners, routing, metrics, config.
pub mod access_log; // one JSON line per request
pub mod balance; // which endpoint takes the next request
pub mod config; // the proxy's settings
pub mod discovery; // the config stream and the snapshot in force
pub mod metrics; // Prometheus metrics
pub mod observe; // a request's span attributes and access-log entry
pub mod routes; // logical services, rules, splits, backends
pub mod upgrade; // HTTP/1.1 upgrades, spliced

// The parts of a running proxy.
pub mod admin; // the admin listener
pub mod identity; // the workload certificate and its renewal
pub mod inbound; // peers to the local app
pub mod outbound; // the local app to peers
pub mod shared; // the handles every part shares
pub mod tcp; // opaque TCP forwarding

// Start-up: wiring the parts together, and the command line.
pub mod cli; // `weft-proxy run`
pub mod wiring; // start(): tasks and listeners

// Test fixtures: a fake network for component tests of the parts above.
#[cfg(test)]
mod fake_mesh;

pub use wiring::{start, Listeners, Running};
