//! weft-proxy: the sidecar. See ARCHITECTURE.md for the request path and who owns what.
//!
//! [`start`] takes already-bound listeners, so that tests bind port 0 and run many proxies in
//! one process; `main.rs` hands the command line to [`cli`], which binds the configured
//! addresses and waits for a signal.
//!
//! What the sidecar shares with the control plane — the body type, durations, paths, SPIFFE
//! names, logging, tracing, `/metrics` exposition, the admin guard, TLS configs and
//! verification, the accept loops and limits, and the tasks of a running binary — is the
//! `weft-runtime` crate (`proxy/runtime/`), which this crate imports as `weft_runtime`.
//!
//! # Where does X live
//!
//! | what | where |
//! |---|---|
//! | flags, environment, `/config` dump | `config.rs` (durations: `weft_runtime::duration`) |
//! | start-up: shared handles, tasks, one accept loop per listener | `wiring.rs` ([`start`]), handles bundled in `shared.rs` |
//! | accept loops, connection limits, drain | `weft_runtime::server` |
//! | the app's requests: route, retry, balance, connect | `outbound.rs`, then `routes.rs`, `retry.rs`, `balance.rs`, `breaker.rs` |
//! | peers' requests: mTLS, authorization, rate limit, to the app | `inbound.rs`, `authz.rs`, `ratelimit.rs` |
//! | the hop between proxies (HTTP/2, upgrades, opaque TCP) | `transport.rs`, `upgrade.rs`, `tcp.rs` |
//! | error reasons (`x-weft-error`) and the one rescue | `errors.rs` |
//! | config from the control plane, proto → domain types | `discovery.rs`, `discovery/convert.rs` (+ `convert/policies.rs`), per-endpoint state in `discovery/registry.rs` |
//! | the certificate: obtaining and renewing it | `identity.rs` (key and CSR: `weft_runtime::tls::key_and_csr`) |
//! | TLS configs, peer verification, credentials | `weft_runtime::tls`; SPIFFE ID names in `weft_runtime::spiffe` |
//! | the channel to the control plane | `control.rs` (its TLS: `weft_runtime::control_channel`) |
//! | traces: sampling and spans, trace headers, OTLP export | `weft_runtime::trace` |
//! | metrics | `metrics.rs` (`/metrics` exposition: `weft_runtime::exposition`) |
//! | access log, per-request observation | `access_log.rs`, `observe.rs` |
//! | admin listener, and what it refuses | `admin.rs`, `weft_runtime::admin_guard` |
//! | `weft-proxy init`: the iptables rules of transparent interception | `init.rs`, the rules `init/rules.rs`, running iptables `init/iptables.rs` |
//! | a redirected connection's original destination (`SO_ORIGINAL_DST`) | `original_dst.rs` |
//! | redirected app connections: by original destination, protocol detection, passthrough | `transparent.rs`, `detect.rs`; inbound ones in `inbound.rs` |
//!
//! Modules depend downward only, with no circle: each group below imports from its own group
//! and the groups above it, never from one below, and any of them from `weft_runtime`
//! (ARCHITECTURE.md, "Proxy start-up and module layers", has the order). The control plane
//! does not use this library; only the `weft proxy` entry of its binary runs [`cli::main`].

// Leaves: no imports from this crate.
pub mod authz; // AuthorizationPolicy rules and their evaluation
pub mod detect; // what a connection's first bytes say it speaks
pub mod init; // `weft-proxy init`: iptables rules in the pod's namespace
pub mod original_dst; // where a redirected connection was going

// Foundations: errors, policy, the control-plane channel and the proxy-to-proxy transport.
pub mod breaker; // outlier ejection and concurrency limits
pub mod control; // the verified channel to the control plane
pub mod errors; // request-path errors and the one rescue
pub mod headers; // header rewriting between hops
pub mod policy; // resilience policy types and defaults
pub mod ratelimit; // token buckets and spread percentages
pub mod retry; // retry budget and replayable bodies
pub mod transport; // the hop between proxies

// State and models: routing, metrics, config.
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
pub mod transparent; // redirected outbound connections: original destination, detection

// Start-up: wiring the parts together, and the command line.
pub mod cli; // `weft-proxy run` and `init`
pub mod wiring; // start(): tasks and listeners

// Test fixtures: a fake network for component tests of the parts above.
#[cfg(test)]
mod fake_mesh;

pub use wiring::{start, Listeners, Running};
