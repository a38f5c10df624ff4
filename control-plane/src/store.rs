//! The embedded store in `--data-dir`: the resources applied through the API, and the audit log
//! of every write, in `DATA_DIR/store.redb`.
//!
//! It is a [redb](https://www.redb.org) database: pure Rust (nothing to add to the build but
//! one crate; SQLite would bring a C compiler into CI for two tables of JSON), ACID transactions
//! over copy-on-write B-trees, and every commit fsynced before it returns. A write the API has
//! acknowledged therefore survives `kill -9` and power loss, and a crash mid-commit leaves the
//! previous state. redb locks the file: a second `weft serve` on the same data dir is refused.
//!
//! Resources are stored as JSON, keyed `Kind/namespace/name`, with their `resourceVersion`: the
//! store's revision when they were last written. The revision counts every write, so versions
//! only grow, also across deletes. The audit log (table `audit`) is written in the same
//! transaction as the change it records.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::resources::{self, Resource};

const RESOURCES: TableDefinition<&str, &str> = TableDefinition::new("resources");
const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// The store's file in the data dir.
pub const FILE: &str = "store.redb";

#[derive(Debug, thiserror::Error)]
#[error("store {path}: {message}")]
pub struct StoreError {
    path: String,
    message: String,
}

impl StoreError {
    /// A failure outside the database (a write task that died).
    pub fn other(e: impl std::fmt::Display) -> Self {
        Self {
            path: FILE.into(),
            message: e.to_string(),
        }
    }
}

/// One write, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Position in the log, from 1.
    #[serde(default)]
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// The caller: `loopback 127.0.0.1:50412`, or `user ci (bearer token) from 10.0.0.7:3312`.
    pub who: String,
    /// `created`, `configured` or `deleted`.
    pub action: String,
    /// `Kind/namespace/name`.
    pub resource: String,
    /// The version written (for a delete: the revision of the delete).
    pub resource_version: String,
    pub previous_resource_version: Option<String>,
    /// The fields that changed, as paths (`spec.rules[0].backendRefs[1].weight`); for a create or
    /// a delete, `spec`.
    pub changed: Vec<String>,
}

/// What is in the store: resources by id, and the revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    pub resources: BTreeMap<String, Resource>,
    pub revision: u64,
}

/// One committed change: what to write (`Some`) or delete (`None`) under an id.
pub type Change = (String, Option<Resource>);

pub struct Store {
    db: Database,
    path: String,
}

impl Store {
    /// Opens the store in `dir`, creating it on first start.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let file = dir.join(FILE);
        let path = file.display().to_string();
        let fail = |message: String| StoreError {
            path: path.clone(),
            message,
        };
        // The store holds every applied resource and who wrote it: for the owner only. redb
        // would create it with the umask's mode, so it is created (empty, which redb takes as
        // new) here; a store from before is tightened.
        restrict(&file).map_err(|e| fail(e.to_string()))?;
        let db = Database::create(&file).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                fail("already in use: another `weft serve` runs with this --data-dir".into())
            }
            e => fail(e.to_string()),
        })?;
        // Create the tables, so that readers find them.
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        {
            txn.open_table(RESOURCES).map_err(|e| fail(e.to_string()))?;
            txn.open_table(AUDIT).map_err(|e| fail(e.to_string()))?;
            txn.open_table(META).map_err(|e| fail(e.to_string()))?;
        }
        txn.commit().map_err(|e| fail(e.to_string()))?;
        Ok(Self { db, path })
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Everything stored. A resource that no longer parses (written by another version of weft)
    /// is an error naming it: the control plane does not start on a store it cannot read whole.
    pub fn load(&self) -> Result<Contents, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(RESOURCES).map_err(|e| self.fail(e))?;
        let mut contents = Contents {
            revision: txn
                .open_table(META)
                .map_err(|e| self.fail(e))?
                .get(REVISION)
                .map_err(|e| self.fail(e))?
                .map_or(0, |v| v.value()),
            ..Contents::default()
        };
        for row in table.iter().map_err(|e| self.fail(e))? {
            let (id, json) = row.map_err(|e| self.fail(e))?;
            let (id, json) = (id.value().to_string(), json.value());
            let mut parsed = resources::parse(&format!("stored {id}"), json).map_err(|p| {
                let p: Vec<String> = p.iter().map(ToString::to_string).collect();
                self.fail(p.join("; "))
            })?;
            match parsed.pop() {
                Some(s) if parsed.is_empty() && s.resource.id() == id => {
                    contents.resources.insert(id, s.resource);
                }
                _ => return Err(self.fail(format!("{id}: not one resource of that id"))),
            }
        }
        Ok(contents)
    }

    /// Writes `changes`, the new `revision` and their audit entries in one transaction, durable
    /// when this returns `Ok`. On error nothing was written.
    pub fn commit(
        &self,
        changes: &[Change],
        revision: u64,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut table = txn.open_table(RESOURCES).map_err(|e| self.fail(e))?;
            for (id, resource) in changes {
                match resource {
                    Some(r) => {
                        let json = serde_json::to_string(r).map_err(|e| self.fail(e))?;
                        table
                            .insert(id.as_str(), json.as_str())
                            .map_err(|e| self.fail(e))?;
                    }
                    None => {
                        table.remove(id.as_str()).map_err(|e| self.fail(e))?;
                    }
                }
            }
            let mut log = txn.open_table(AUDIT).map_err(|e| self.fail(e))?;
            let mut seq = log
                .last()
                .map_err(|e| self.fail(e))?
                .map_or(0, |(k, _)| k.value());
            for entry in audit {
                seq += 1;
                let entry = AuditEntry {
                    seq,
                    ..entry.clone()
                };
                let json = serde_json::to_string(&entry).map_err(|e| self.fail(e))?;
                log.insert(seq, json.as_str()).map_err(|e| self.fail(e))?;
            }
            txn.open_table(META)
                .map_err(|e| self.fail(e))?
                .insert(REVISION, revision)
                .map_err(|e| self.fail(e))?;
        }
        txn.commit().map_err(|e| self.fail(e))
    }

    /// The last `limit` audit entries, oldest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let log = txn.open_table(AUDIT).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for row in log.iter().map_err(|e| self.fail(e))?.rev().take(limit) {
            let (_, json) = row.map_err(|e| self.fail(e))?;
            out.push(serde_json::from_str(json.value()).map_err(|e| self.fail(e))?);
        }
        out.reverse();
        Ok(out)
    }
}

/// The paths at which two JSON documents differ: `spec.rules[0].backendRefs[1].weight`.
pub fn changed_fields(before: &serde_json::Value, after: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match (a.get(k), b.get(k)) {
                        (Some(x), Some(y)) => walk(&p, x, y, out),
                        _ => out.push(p),
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    walk(&format!("{path}[{i}]"), x, y, out);
                }
            }
            (a, b) if a == b => {}
            _ => out.push(path.to_string()),
        }
    }
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

/// Makes `file` exist with mode 0600.
fn restrict(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(yaml: &str) -> Resource {
        resources::parse("t", yaml).unwrap().remove(0).resource
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("weft-store-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_store_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |d: &Path| {
            std::fs::metadata(d.join(FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        let d = dir();
        drop(Store::open(&d).unwrap());
        assert_eq!(mode(&d), 0o600);
        // A store left world-readable by an earlier version is tightened, and still opens.
        std::fs::set_permissions(d.join(FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(&d).unwrap());
        assert_eq!(mode(&d), 0o600);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn writes_survive_reopening_and_deletes_remove() {
        let d = dir();
        let svc = resource("apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a, namespace: shop, resourceVersion: \"1\"}\nspec: {ports: [{port: 80}]}\n");
        let entry = AuditEntry {
            seq: 0,
            time: "2026-01-01T00:00:00Z".into(),
            who: "test".into(),
            action: "created".into(),
            resource: svc.id(),
            resource_version: "1".into(),
            previous_resource_version: None,
            changed: vec!["spec".into()],
        };
        {
            let store = Store::open(&d).unwrap();
            store
                .commit(
                    &[(svc.id(), Some(svc.clone()))],
                    1,
                    std::slice::from_ref(&entry),
                )
                .unwrap();
            // The file is locked while open.
            let again = Store::open(&d).err().unwrap().to_string();
            assert!(again.contains("another `weft serve`"), "{again}");
        }
        let store = Store::open(&d).unwrap();
        let c = store.load().unwrap();
        assert_eq!(c.revision, 1);
        assert_eq!(c.resources.get(&svc.id()), Some(&svc));
        assert_eq!(store.audit(10).unwrap()[0].seq, 1);
        store.commit(&[(svc.id(), None)], 2, &[entry]).unwrap();
        let c = store.load().unwrap();
        assert!(c.resources.is_empty());
        assert_eq!(c.revision, 2);
        let log = store.audit(1).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].seq, 2, "the newest entry");
        drop(store);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn changed_fields_name_the_paths() {
        let a = serde_json::json!({"spec": {"rules": [{"backendRefs": [{"weight": 90}, {"weight": 10}]}], "x": 1}});
        let b = serde_json::json!({"spec": {"rules": [{"backendRefs": [{"weight": 50}, {"weight": 50}]}], "y": 1}});
        assert_eq!(
            changed_fields(&a, &b),
            [
                "spec.rules[0].backendRefs[0].weight",
                "spec.rules[0].backendRefs[1].weight",
                "spec.x",
                "spec.y"
            ]
        );
    }
}
