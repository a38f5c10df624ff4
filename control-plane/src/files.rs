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
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::resources::{self, Sourced};

const QUIET: Duration = Duration::from_millis(20);
const MAX_DELAY: Duration = Duration::from_millis(100);

/// The YAML and JSON files that `paths` name, folders walked recursively, in a stable order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out, &mut errors);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            errors.push(format!("{}: no such file or folder", p.display()));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return errors.push(format!("{}: {e}", dir.display())),
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

/// Reads, parses and checks every resource the paths hold. Returns every problem, one line each.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Sourced>, Vec<String>> {
    let files = files(paths)?;
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => match resources::parse(&name, &text) {
                Ok(mut r) => all.append(&mut r),
                Err(problems) => errors.extend(problems.iter().map(ToString::to_string)),
            },
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    errors.extend(resources::validate(&all).iter().map(ToString::to_string));
    if errors.is_empty() {
        Ok(all)
    } else {
        Err(errors)
    }
}

/// Watches the paths until `shutdown`, calling `changed` once the files have been quiet after a
/// change (or at most [`MAX_DELAY`] after its first event).
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
        let errors = load(std::slice::from_ref(&file)).unwrap_err();
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
}
