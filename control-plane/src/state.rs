//! The control plane's config in force, with one writer ([`State::reload`], or `apply` once the
//! API lands) and many readers (each proxy stream holds a `watch` receiver).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::files;
use crate::mesh::{Mesh, Trust};
use crate::metrics::Metrics;
use weft_proxy::trace::Tracer;

/// Points the control plane's tracer where the mesh config says.
fn configure_tracing(tracer: &Tracer, mesh: &Mesh) {
    let t = mesh.settings.tracing.as_ref();
    tracer.configure(
        t.and_then(|t| t.otlp_endpoint.as_deref()).unwrap_or(""),
        t.and_then(|t| t.sampling_ratio).unwrap_or(1.0),
    );
}

pub struct State {
    mesh: watch::Sender<Arc<Mesh>>,
    trust_domain: String,
    last_error: Mutex<Vec<String>>,
    /// Held by whoever computes the next generation, so that two writers never lose a change.
    writer: Mutex<()>,
    pub metrics: Arc<Metrics>,
    /// Spans of the control plane's own work (config pushes, certificate issuance), sent where
    /// MeshConfig `tracing` says.
    pub tracer: Arc<Tracer>,
}

impl State {
    pub fn new(mesh: Mesh, trust_domain: String, metrics: Arc<Metrics>) -> Self {
        metrics
            .config_generation
            .set(i64::try_from(mesh.generation).unwrap_or(i64::MAX));
        let tracer = Tracer::launch(
            "weft-control-plane".into(),
            "control-plane",
            metrics.trace.clone(),
        );
        configure_tracing(&tracer, &mesh);
        Self {
            mesh: watch::channel(Arc::new(mesh)).0,
            trust_domain,
            last_error: Mutex::default(),
            writer: Mutex::default(),
            metrics,
            tracer,
        }
    }

    fn publish(&self, next: Mesh) {
        configure_tracing(&self.tracer, &next);
        self.mesh.send_replace(Arc::new(next));
    }

    pub fn mesh(&self) -> Arc<Mesh> {
        self.mesh.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Mesh>> {
        self.mesh.subscribe()
    }

    /// Publishes a new CA state (roots, issuer) to every proxy: a new generation with the same
    /// resources. Nothing happens when it is unchanged.
    pub fn set_trust(&self, trust: Trust) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.mesh();
        if current.trust == trust {
            return;
        }
        let mut next = Mesh::compile(
            current.resources.clone(),
            &self.trust_domain,
            current.generation + 1,
        );
        next.trust = trust;
        tracing::info!(generation = next.generation, issuer = %next.trust.issuer, "publishing trust anchors and issuer");
        self.metrics
            .config_generation
            .set(i64::try_from(next.generation).unwrap_or(i64::MAX));
        self.publish(next);
    }

    /// The problems that refused the last reload, if it was refused.
    pub fn last_error(&self) -> Vec<String> {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Reads the files again; publishes a new generation if they are valid and changed.
    pub fn reload(&self, paths: &[PathBuf]) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        match files::load(paths) {
            Ok(resources) => {
                if let Ok(mut e) = self.last_error.lock() {
                    e.clear();
                }
                let current = self.mesh();
                let mut next = Mesh::compile(resources, &self.trust_domain, current.generation + 1);
                next.trust = current.trust.clone();
                if next == *current {
                    tracing::debug!("config files changed on disk but not in content");
                    return;
                }
                for warning in next.dangling_references() {
                    tracing::warn!("{warning}");
                }
                tracing::info!(
                    generation = next.generation,
                    resources = next.resources.len(),
                    "config reloaded"
                );
                self.metrics
                    .reloads
                    .get_or_create(&crate::metrics::Outcome {
                        outcome: "accepted",
                    })
                    .inc();
                self.metrics
                    .config_generation
                    .set(i64::try_from(next.generation).unwrap_or(i64::MAX));
                self.publish(next);
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!("config refused: {p}");
                }
                tracing::error!(
                    generation = self.mesh().generation,
                    "config change refused; generation {} stays in force",
                    self.mesh().generation
                );
                self.metrics
                    .reloads
                    .get_or_create(&crate::metrics::Outcome { outcome: "refused" })
                    .inc();
                if let Ok(mut e) = self.last_error.lock() {
                    *e = problems;
                }
            }
        }
    }
}
