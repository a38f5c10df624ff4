//! The control plane's config in force, with one writer ([`State::reload`], or `apply` once the
//! API lands) and many readers (each proxy stream holds a `watch` receiver).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::files;
use crate::mesh::Mesh;
use crate::metrics::Metrics;

pub struct State {
    mesh: watch::Sender<Arc<Mesh>>,
    trust_domain: String,
    last_error: Mutex<Vec<String>>,
    pub metrics: Arc<Metrics>,
}

impl State {
    pub fn new(mesh: Mesh, trust_domain: String, metrics: Arc<Metrics>) -> Self {
        metrics
            .config_generation
            .set(i64::try_from(mesh.generation).unwrap_or(i64::MAX));
        Self {
            mesh: watch::channel(Arc::new(mesh)).0,
            trust_domain,
            last_error: Mutex::default(),
            metrics,
        }
    }

    pub fn mesh(&self) -> Arc<Mesh> {
        self.mesh.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Mesh>> {
        self.mesh.subscribe()
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
        match files::load(paths) {
            Ok(resources) => {
                if let Ok(mut e) = self.last_error.lock() {
                    e.clear();
                }
                let current = self.mesh();
                let next = Mesh::compile(resources, &self.trust_domain, current.generation + 1);
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
                self.mesh.send_replace(Arc::new(next));
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
