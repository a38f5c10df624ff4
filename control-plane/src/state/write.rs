//! Writes through the API: what a write is ([`Write`]), what it did to each resource
//! ([`WriteOutcome`]) or why it was refused ([`WriteError`]), and how [`State::write`] checks
//! it against the config in force (file-managed resources, `resourceVersion`s, the whole
//! would-be config validated), commits it to the store, and publishes it.

use std::collections::HashSet;

use serde::Serialize;

use super::{stored, Inputs, State, REQUEST_SOURCE};
use crate::metrics::Outcome;
use crate::resources::{self, Problem, Resource, Sourced};
use crate::store::{self, AuditEntry, Contents, StoreError};

/// A write through the API.
pub enum Write {
    /// Create or update each resource (apply, PUT); all or nothing. `problems` are those found
    /// while parsing the request: the write fails with them and any the resources have.
    Apply {
        items: Vec<Sourced>,
        problems: Vec<Problem>,
        /// Check everything and say what would happen; store nothing.
        dry_run: bool,
    },
    /// Delete one resource, if it still has this version when given.
    Delete {
        id: String,
        resource_version: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
        }
    }
}

/// What a write did to one resource.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteOutcome {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub action: Action,
    pub resource_version: String,
    /// The resource as stored (absent for a delete).
    #[serde(skip)]
    pub resource: Option<Resource>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{} problems", .0.len())]
    Invalid(Vec<Problem>),
    #[error("{}", .0.join("; "))]
    Conflict(Vec<String>),
    #[error("{}", .0.join("; "))]
    FileManaged(Vec<String>),
    #[error("{0}")]
    NotFound(String),
    #[error("this control plane has no store: run `weft serve` with a --data-dir")]
    NoStore,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WriteError {
    /// The `reason` the API answers with, and the metric's outcome.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Conflict(_) => "conflict",
            Self::FileManaged(_) => "file-managed",
            Self::NotFound(_) => "not-found",
            Self::NoStore | Self::Store(_) => "failed",
        }
    }
}

impl State {
    /// Checks `write` against the config in force, stores it durably, then publishes it.
    /// `who` is recorded in the audit log. All or nothing: on any error nothing changes.
    pub fn write(&self, write: Write, who: &str) -> Result<Vec<WriteOutcome>, WriteError> {
        let dry_run = matches!(write, Write::Apply { dry_run: true, .. });
        let result = self.write_locked(write, who);
        let outcome = match &result {
            Ok(_) if dry_run => "dry-run",
            Ok(o) if o.iter().all(|o| o.action == Action::Unchanged) => "unchanged",
            Ok(_) => "accepted",
            Err(e) => e.reason(),
        };
        self.metrics
            .api_writes
            .get_or_create(&Outcome { outcome })
            .inc();
        result
    }

    fn write_locked(&self, write: Write, who: &str) -> Result<Vec<WriteOutcome>, WriteError> {
        let store = self.store.as_ref().ok_or(WriteError::NoStore)?;
        let mut inputs = self.lock();
        let mut outcomes = match write {
            Write::Apply {
                items,
                problems,
                dry_run,
            } => {
                let outcomes = plan_apply(&inputs, items, problems)?;
                if dry_run {
                    return Ok(outcomes);
                }
                outcomes
            }
            Write::Delete {
                id,
                resource_version,
            } => plan_delete(&inputs, &id, resource_version.as_deref())?,
        };
        let changed: Vec<&mut WriteOutcome> = outcomes
            .iter_mut()
            .filter(|o| o.action != Action::Unchanged)
            .collect();
        if changed.is_empty() {
            return Ok(outcomes);
        }
        // Each change gets the next revision as its version.
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut revision = inputs.stored.revision;
        let mut changes = Vec::new();
        let mut audit = Vec::new();
        let mut resources = inputs.stored.resources.clone();
        for o in changed {
            revision += 1;
            let id = format!("{}/{}/{}", o.kind, o.namespace, o.name);
            let before = inputs.stored.resources.get(&id);
            let after = o.resource.as_mut().map(|r| {
                r.metadata_mut().resource_version = Some(revision.to_string());
                r.clone()
            });
            o.resource_version = revision.to_string();
            let json = |r: Option<&Resource>| {
                r.and_then(|r| serde_json::to_value(without_version(r)).ok())
            };
            let changed_fields = match (json(before), json(after.as_ref())) {
                (Some(b), Some(a)) => store::changed_fields(&b, &a),
                _ => vec!["spec".to_string()],
            };
            audit.push(AuditEntry {
                seq: 0,
                time: now.clone(),
                who: who.to_string(),
                action: o.action.as_str().to_string(),
                resource: id.clone(),
                resource_version: revision.to_string(),
                previous_resource_version: before
                    .and_then(|b| b.metadata().resource_version.clone()),
                changed: changed_fields,
            });
            match &after {
                Some(r) => resources.insert(id.clone(), r.clone()),
                None => resources.remove(&id),
            };
            changes.push((id, after));
        }
        store.commit(&changes, revision, &audit)?;
        for a in &audit {
            tracing::info!(
                target: "weft::audit",
                who = %a.who,
                action = %a.action,
                resource = %a.resource,
                resource_version = %a.resource_version,
                changed = %a.changed.join(","),
                "API write"
            );
        }
        inputs.stored = Contents {
            resources,
            revision,
        };
        self.publish(&inputs, "config changed through the API");
        Ok(outcomes)
    }
}

fn without_version(r: &Resource) -> Resource {
    let mut r = r.clone();
    r.metadata_mut().resource_version = None;
    r
}

/// Checks an apply against `inputs`: what the store would hold after it, and what happens to each
/// resource. Every problem is reported at once.
fn plan_apply(
    inputs: &Inputs,
    items: Vec<Sourced>,
    mut problems: Vec<Problem>,
) -> Result<Vec<WriteOutcome>, WriteError> {
    // Check the whole would-be config first: the request's resources in place of those they
    // replace (file-managed ones aside: they are refused below).
    let ids: HashSet<String> = items.iter().map(|s| s.resource.id()).collect();
    let mut all = inputs.files.clone();
    all.extend(
        inputs
            .stored
            .resources
            .iter()
            .filter(|(id, _)| !ids.contains(*id))
            .map(|(_, r)| stored(r.clone())),
    );
    all.extend(
        items
            .iter()
            .filter(|s| inputs.file_defining(&s.resource.id()).is_none())
            .cloned(),
    );
    problems.extend(
        resources::validate(&all)
            .into_iter()
            // Only the request's own problems: what is in force was accepted before.
            .filter(|p| p.source == REQUEST_SOURCE),
    );
    if !problems.is_empty() {
        problems.sort_by_key(|p| p.document);
        return Err(WriteError::Invalid(problems));
    }
    let mut file_managed = Vec::new();
    let mut conflicts = Vec::new();
    for item in &items {
        let id = item.resource.id();
        if let Some(f) = inputs.file_defining(&id) {
            file_managed.push(format!(
                "{id} is managed by the config file {} (document {}): change it there, or remove it from the file first",
                f.source, f.document
            ));
            continue;
        }
        let current = inputs.stored.resources.get(&id);
        if let Some(want) = &item.resource.metadata().resource_version {
            match current.and_then(|c| c.metadata().resource_version.as_deref()) {
                Some(have) if have == want => {}
                Some(have) => conflicts.push(format!(
                    "{id}: metadata.resourceVersion {want} is stale: the stored version is {have}; get it again and reapply your change"
                )),
                None => conflicts.push(format!(
                    "{id}: metadata.resourceVersion {want} given, but {id} does not exist (it was deleted)"
                )),
            }
        }
    }
    if !file_managed.is_empty() {
        return Err(WriteError::FileManaged(file_managed));
    }
    if !conflicts.is_empty() {
        return Err(WriteError::Conflict(conflicts));
    }
    let mut outcomes = Vec::new();
    for item in items {
        let id = item.resource.id();
        let m = item.resource.metadata();
        let current = inputs.stored.resources.get(&id);
        let (action, version) = match current {
            Some(c) if without_version(c) == without_version(&item.resource) => (
                Action::Unchanged,
                c.metadata().resource_version.clone().unwrap_or_default(),
            ),
            Some(_) => (Action::Configured, String::new()),
            None => (Action::Created, String::new()),
        };
        outcomes.push(WriteOutcome {
            kind: item.resource.kind(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            action,
            resource_version: version,
            resource: Some(match action {
                Action::Unchanged => current.cloned().unwrap_or(item.resource.clone()),
                _ => item.resource.clone(),
            }),
        });
    }
    Ok(outcomes)
}

fn plan_delete(
    inputs: &Inputs,
    id: &str,
    resource_version: Option<&str>,
) -> Result<Vec<WriteOutcome>, WriteError> {
    if let Some(f) = inputs.file_defining(id) {
        return Err(WriteError::FileManaged(vec![format!(
            "{id} is managed by the config file {} (document {}): remove it from the file to delete it",
            f.source, f.document
        )]));
    }
    let Some(current) = inputs.stored.resources.get(id) else {
        return Err(WriteError::NotFound(format!("{id} not found")));
    };
    let have = current.metadata().resource_version.as_deref();
    if let Some(want) = resource_version {
        if have != Some(want) {
            return Err(WriteError::Conflict(vec![format!(
                "{id}: resourceVersion {want} is stale: the stored version is {}",
                have.unwrap_or("-")
            )]));
        }
    }
    let m = current.metadata();
    Ok(vec![WriteOutcome {
        kind: current.kind(),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        action: Action::Deleted,
        resource_version: String::new(),
        resource: None,
    }])
}
