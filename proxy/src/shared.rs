//! The handles every part of a running proxy shares: its metrics, its TLS configs, the discovery
//! snapshot, the tracer and the access log. `wiring` makes them once; the outbound and inbound
//! sides, the TCP path and the admin listener take them together as one [`Shared`].
//!
//! Only the bundle lives here. Each handle's writer is its own module (see ARCHITECTURE.md,
//! "shared state and its writers"); cloning a `Shared` clones five `Arc`s.

use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use weft_runtime::tls::Tls;
use weft_runtime::trace::Tracer;

/// The shared handles of one proxy.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// The TLS configs made from this proxy's credentials.
    pub tls: Arc<Tls>,
    pub discovery: Arc<Discovery>,
    /// Follows MeshConfig `tracing` a moment after each config.
    pub tracer: Arc<Tracer>,
    pub access_log: Arc<AccessLog>,
}
