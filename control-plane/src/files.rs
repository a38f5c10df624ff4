//! Config from files: `--config` files and folders, loaded, checked and watched.
//!
//! A change is picked up through inotify, debounced (quiet for 20 ms, at most 100 ms after the
//! first event), then the whole set is read and checked again. A set with any problem is
//! refused, every problem is logged with its file and field, and the config in force stays.
//!
//! This module reads and watches; it does not know what the resources are for: [`watch`] calls
//! back on each settled change, and the caller (`State::reload`, wired in `lib.rs`) loads them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::resources::{self, Sourced};

const QUIET: Duration = Duration::from_millis(20);
const MAX_DELAY: Duration = Duration::from_millis(100);

/// The YAML and JSON files that `paths` name, folders walked recursively, in a stable order; or
/// each path that cannot be read, with the problem.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out, &mut errors);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            let path = p.display().to_string();
            errors.push((path.clone(), format!("{path}: no such file or folder")));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<(String, String)>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            let path = dir.display().to_string();
            return errors.push((path.clone(), format!("{path}: {e}")));
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue; // editors' swap files, `..data` symlink farms of mounted ConfigMaps
        } else if p.is_dir() {
            walk(&p, out, errors);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(p);
        }
    }
}

/// Why a set of files was refused: every problem, and the files they are in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    /// Every problem, one line each (naming its file), in the order found.
    pub problems: Vec<String>,
    /// The files with problems, in the order found, each with its own lines.
    pub files: Vec<RefusedFile>,
}

/// A file (or a `--config` path that is not there) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusedFile {
    pub file: String,
    pub problems: Vec<String>,
}

impl Refusal {
    fn add(&mut self, file: &str, problem: String) {
        match self.files.iter_mut().find(|f| f.file == file) {
            Some(f) => f.problems.push(problem.clone()),
            None => self.files.push(RefusedFile {
                file: file.to_string(),
                problems: vec![problem.clone()],
            }),
        }
        self.problems.push(problem);
    }
}

/// A refusal is its problems, for callers that print them (`weft serve` at start-up).
impl From<Refusal> for Vec<String> {
    fn from(r: Refusal) -> Self {
        r.problems
    }
}

/// Reads, parses and checks every resource the paths hold, and returns every problem: the
/// documents of a file that parse are checked even when others in it do not, so that one pass
/// lists everything to fix.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Sourced>, Refusal> {
    let mut refusal = Refusal::default();
    let files = files(paths).map_err(|missing| {
        let mut r = Refusal::default();
        for (path, problem) in missing {
            r.add(&path, problem);
        }
        r
    })?;
    let mut all = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => {
                let (mut parsed, problems) = resources::parse_each(&name, &text);
                all.append(&mut parsed);
                for p in problems {
                    refusal.add(&p.source, p.to_string());
                }
            }
            Err(e) => refusal.add(&name, format!("{name}: {e}")),
        }
    }
    for p in resources::validate(&all) {
        refusal.add(&p.source, p.to_string());
    }
    if refusal.problems.is_empty() {
        Ok(all)
    } else {
        Err(refusal)
    }
}

/// Watches the paths until `shutdown`, calling `changed` once the files have been quiet after a
/// change (or at most `MAX_DELAY` after its first event).
pub async fn watch(paths: Vec<PathBuf>, changed: impl Fn(), shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            return tracing::error!(error = %e, "cannot watch config files; changes need a restart")
        }
    };
    for p in &paths {
        // Watch a file's folder, not the file: editors and ConfigMaps replace files by rename.
        let (target, mode) = if p.is_dir() {
            (p.clone(), RecursiveMode::Recursive)
        } else {
            (
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
                RecursiveMode::NonRecursive,
            )
        };
        if let Err(e) = watcher.watch(&target, mode) {
            tracing::error!(path = %target.display(), error = %e, "cannot watch");
        }
    }
    loop {
        tokio::select! {
            ev = rx.recv() => if ev.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        let deadline = Instant::now() + MAX_DELAY;
        while let Ok(Some(())) =
            tokio::time::timeout_at(deadline.min(Instant::now() + QUIET), rx.recv()).await
        {}
        changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_an_alias_bomb_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("weft-files-test-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mesh.yaml");
        let bomb = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata:\n  name: orders\n  annotations: {{a: &a [{}], b: [{}]}}\nspec: {{ports: [{{port: 80}}]}}\n",
            vec!["x"; 1000].join(","),
            vec!["*a"; 3000].join(",")
        );
        std::fs::write(&file, bomb).unwrap();
        let started = std::time::Instant::now();
        let errors = load(std::slice::from_ref(&file)).unwrap_err().problems;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&file.display().to_string()),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].contains("anchors and aliases are not supported"),
            "{}",
            errors[0]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_document_of_every_file_is_checked_and_each_file_named() {
        let dir = std::env::temp_dir().join(format!("weft-files-test-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let service = |name: &str, spec: &str| {
            format!("apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {spec}\n")
        };
        // A type error, then a value only validation refuses, then an unknown field: the
        // first does not hide the other two.
        let a = dir.join("a.yaml");
        let text = [
            service("one", "{ports: [{port: eighty}]}"),
            service("two", "{ports: [{port: 0}]}"),
            service("three", "{ports: [{port: 80}], endpoint: []}"),
        ]
        .join("---\n");
        std::fs::write(&a, text).unwrap();
        let b = dir.join("b.yaml");
        std::fs::write(&b, service("four", "{ports: [{port: 70000}]}")).unwrap();
        let good = dir.join("c.yaml");
        std::fs::write(&good, service("five", "{ports: [{port: 80}]}")).unwrap();
        let refusal = load(std::slice::from_ref(&dir)).unwrap_err();
        let (a, b) = (a.display().to_string(), b.display().to_string());
        let files: Vec<&str> = refusal.files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(files, [a.as_str(), b.as_str()], "{refusal:?}");
        let in_a = &refusal.files[0].problems;
        for (document, field) in [
            (1, "spec.ports[0].port"),
            (2, "spec.ports[0].port"),
            (3, "spec.endpoint"),
        ] {
            let place = format!("{a}: document {document} (Service/default/");
            assert!(
                in_a.iter()
                    .any(|p| p.starts_with(&place) && p.contains(field)),
                "document {document}: {in_a:?}"
            );
        }
        assert_eq!(in_a.len(), 3, "{in_a:?}");
        assert_eq!(refusal.files[1].problems.len(), 1, "{refusal:?}");
        assert_eq!(refusal.problems.len(), 4, "{refusal:?}");
        // What is printed at start-up: the same lines.
        assert_eq!(Vec::<String>::from(refusal.clone()), refusal.problems);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
