//! The control plane's config in force: the resources from `--config` files merged with those
//! applied through the API (kept in the [`Store`]), compiled into a [`Mesh`] that each proxy
//! stream reads through a `watch` receiver.
//!
//! Writers — a file reload, an API write, a CA change — take one lock, so that a write is
//! checked against exactly the state it replaces and two writers never lose a change.
//!
//! Precedence: files win. A resource defined in a file cannot be written through the API (the
//! answer names the file); a stored resource that a file defines later is shadowed by the file
//! (and comes back if the file drops it).
//!
//! This file holds the state and its file and CA writers (`reload`, `set_trust`); API writes
//! (`State::write`: checks, the store's commit, publishing) are in [`write`].

mod write;

pub use write::{Action, Write, WriteError, WriteOutcome};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::files::{self, Refusal, RefusedFile};
use crate::mesh::{Mesh, Trust};
use crate::metrics::{Metrics, Outcome};
use crate::resources::{Resource, Sourced};
use crate::store::{AuditEntry, Contents, Store, StoreError};
use weft_runtime::trace::Tracer;

/// The `source` of resources that came through the API.
pub const API_SOURCE: &str = "api";
/// The `source` of the resources in a write request, as its problems name it.
pub const REQUEST_SOURCE: &str = "request";

/// Points the control plane's tracer where the mesh config says.
fn configure_tracing(tracer: &Tracer, mesh: &Mesh) {
    let t = mesh.settings.tracing.as_ref();
    tracer.configure(
        t.and_then(|t| t.otlp_endpoint.as_deref()).unwrap_or(""),
        t.and_then(|t| t.sampling_ratio).unwrap_or(1.0),
    );
}

/// What the mesh is compiled from.
struct Inputs {
    /// The last accepted set of file resources.
    files: Vec<Sourced>,
    /// What the store holds (a copy, updated after each commit).
    stored: Contents,
}

impl Inputs {
    /// File resources, then stored ones that no file defines.
    fn merged(&self) -> Vec<Sourced> {
        let from_files: HashSet<String> = self.files.iter().map(|s| s.resource.id()).collect();
        let mut all = self.files.clone();
        all.extend(
            self.stored
                .resources
                .iter()
                .filter(|(id, _)| !from_files.contains(*id))
                .map(|(_, r)| stored(r.clone())),
        );
        all
    }

    /// Says which stored resources a file shadows (after a start or a file change).
    fn warn_shadowed(&self) {
        for f in &self.files {
            let id = f.resource.id();
            if self.stored.resources.contains_key(&id) {
                tracing::warn!(resource = %id, file = %f.source, "applied through the API but also defined in a config file: the file's definition is in force");
            }
        }
    }

    fn file_defining(&self, id: &str) -> Option<&Sourced> {
        self.files.iter().find(|s| s.resource.id() == id)
    }
}

fn stored(resource: Resource) -> Sourced {
    Sourced {
        resource,
        source: API_SOURCE.into(),
        document: 1,
    }
}

pub struct State {
    mesh: watch::Sender<Arc<Mesh>>,
    trust_domain: String,
    /// Why the last reload of the files was refused; empty once a reload is accepted.
    refusal: Mutex<Refusal>,
    /// Held by whoever computes the next generation.
    inputs: Mutex<Inputs>,
    store: Option<Store>,
    pub metrics: Arc<Metrics>,
    /// Spans of the control plane's own work (config pushes, certificate issuance), sent where
    /// MeshConfig `tracing` says.
    pub tracer: Arc<Tracer>,
}

impl State {
    /// The config from `files` (already checked) and whatever `store` holds.
    pub fn open(
        files: Vec<Sourced>,
        store: Option<Store>,
        trust_domain: String,
        trust: Trust,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let stored = match &store {
            Some(s) => s.load()?,
            None => Contents::default(),
        };
        let inputs = Inputs { files, stored };
        inputs.warn_shadowed();
        let mut mesh = Mesh::compile(inputs.merged(), &trust_domain, 1);
        mesh.trust = trust;
        for w in mesh.dangling_references() {
            tracing::warn!("{w}");
        }
        tracing::info!(
            resources = mesh.resources.len(),
            from_files = inputs.files.len(),
            stored = inputs.stored.resources.len(),
            "config loaded"
        );
        metrics
            .config_generation
            .set(i64::try_from(mesh.generation).unwrap_or(i64::MAX));
        let tracer = Tracer::launch(
            "weft-control-plane".into(),
            "control-plane",
            metrics.trace.clone(),
        );
        configure_tracing(&tracer, &mesh);
        Ok(Self {
            mesh: watch::channel(Arc::new(mesh)).0,
            trust_domain,
            refusal: Mutex::default(),
            inputs: Mutex::new(inputs),
            store,
            metrics,
            tracer,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inputs> {
        self.inputs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compiles `inputs` into the next generation and publishes it, if it differs.
    fn publish(&self, inputs: &Inputs, why: &str) -> Option<u64> {
        let current = self.mesh();
        let mut next = Mesh::compile(inputs.merged(), &self.trust_domain, current.generation + 1);
        next.trust = current.trust.clone();
        if next == *current {
            return None;
        }
        for warning in next.dangling_references() {
            tracing::warn!("{warning}");
        }
        tracing::info!(
            generation = next.generation,
            resources = next.resources.len(),
            "{why}"
        );
        Some(self.replace(next))
    }

    fn replace(&self, next: Mesh) -> u64 {
        let generation = next.generation;
        self.metrics
            .config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        configure_tracing(&self.tracer, &next);
        self.mesh.send_replace(Arc::new(next));
        generation
    }

    pub fn mesh(&self) -> Arc<Mesh> {
        self.mesh.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Mesh>> {
        self.mesh.subscribe()
    }

    /// The last `limit` writes through the API, oldest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, WriteError> {
        Ok(self
            .store
            .as_ref()
            .ok_or(WriteError::NoStore)?
            .audit(limit)?)
    }

    /// Publishes a new CA state (roots, issuer) to every proxy: a new generation with the same
    /// resources. Nothing happens when it is unchanged.
    pub fn set_trust(&self, trust: Trust) {
        let _writer = self.lock();
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
        self.replace(next);
    }

    /// The problems that refused the last reload, if it was refused.
    pub fn last_error(&self) -> Vec<String> {
        self.refusal().problems
    }

    /// The files that refused the last reload, each with its problems; none once a reload is
    /// accepted.
    pub fn refused_files(&self) -> Vec<RefusedFile> {
        self.refusal().files
    }

    fn refusal(&self) -> Refusal {
        self.refusal.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Reads the files again; publishes a new generation if they are valid and changed.
    pub fn reload(&self, paths: &[PathBuf]) {
        let mut inputs = self.lock();
        match files::load(paths) {
            Ok(resources) => {
                let refused = match self.refusal.lock() {
                    Ok(mut r) => std::mem::take(&mut *r).files,
                    Err(_) => Vec::new(),
                };
                for f in refused {
                    if std::path::Path::new(&f.file).is_file() {
                        tracing::info!(file = %f.file, "config file accepted: it was refused before, and is now in force");
                    } else {
                        tracing::info!(file = %f.file, "config file no longer refused: it is gone");
                    }
                }
                inputs.files = resources;
                inputs.warn_shadowed();
                if self.publish(&inputs, "config reloaded").is_none() {
                    tracing::debug!("config files changed on disk but not in content");
                    return;
                }
                self.metrics
                    .reloads
                    .get_or_create(&Outcome {
                        outcome: "accepted",
                    })
                    .inc();
            }
            Err(refusal) => {
                for p in &refusal.problems {
                    tracing::error!("config refused: {p}");
                }
                let generation = self.mesh().generation;
                tracing::error!(
                    generation,
                    "config change refused; generation {generation} stays in force",
                );
                self.metrics
                    .reloads
                    .get_or_create(&Outcome { outcome: "refused" })
                    .inc();
                if let Ok(mut r) = self.refusal.lock() {
                    *r = refusal;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
