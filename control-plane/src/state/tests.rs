//! The config in force below end to end: a file reload, a refused one and a CA change, each
//! seen by a proxy stream's subscriber on the in-process `watch` channel.

use std::path::PathBuf;

use super::*;

const SERVICE: &str = "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: HTTP}]
  serviceAccount: orders
  endpoints: [{address: \"127.0.0.1:15006\"}]
";

/// A folder of its own holding `services.yaml` with `text`, removed when dropped.
struct Folder(PathBuf);

impl Folder {
    fn with(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "weft-state-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let folder = Self(dir);
        folder.write(text);
        folder
    }

    fn write(&self, text: &str) {
        std::fs::write(self.0.join("services.yaml"), text).unwrap();
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.0.clone()]
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn state() -> State {
    State::open(
        vec![],
        None,
        "test.local".into(),
        Trust::default(),
        Arc::new(Metrics::default()),
    )
    .unwrap()
}

fn names(mesh: &Mesh) -> Vec<String> {
    mesh.resources
        .iter()
        .map(|r| format!("{:?}", r.resource))
        .collect()
}

#[tokio::test]
async fn a_valid_reload_reaches_subscribers_as_the_next_generation() {
    let state = state();
    let mut rx = state.subscribe();
    assert_eq!(state.mesh().generation, 1);
    let folder = Folder::with(SERVICE);
    state.reload(&folder.paths());
    assert!(rx.has_changed().unwrap());
    let mesh = rx.borrow_and_update().clone();
    assert_eq!(mesh.generation, 2);
    assert_eq!(mesh.resources.len(), 1, "{:?}", names(&mesh));
    // The same content again is no new generation.
    state.reload(&folder.paths());
    assert!(!rx.has_changed().unwrap());
    assert!(state.last_error().is_empty());
}

#[tokio::test]
async fn a_refused_reload_keeps_the_generation_in_force_and_says_why() {
    let state = state();
    let folder = Folder::with(SERVICE);
    state.reload(&folder.paths());
    let rx = state.subscribe();
    folder.write(&SERVICE.replace("serviceAccount", "serviceAcount"));
    state.reload(&folder.paths());
    assert!(!rx.has_changed().unwrap());
    assert_eq!(state.mesh().generation, 2);
    let problems = state.last_error();
    assert!(
        problems.iter().any(|p| p.contains("serviceAcount")),
        "{problems:?}"
    );
    folder.write(SERVICE);
    state.reload(&folder.paths());
    assert!(
        state.last_error().is_empty(),
        "a good reload clears the problems"
    );
}

#[tokio::test]
async fn a_trust_change_is_published_once() {
    let state = state();
    let mut rx = state.subscribe();
    let trust = Trust {
        anchors_pem: "roots".into(),
        issuer: "issuer-2".into(),
    };
    state.set_trust(trust.clone());
    assert!(rx.has_changed().unwrap());
    let mesh = rx.borrow_and_update().clone();
    assert_eq!((mesh.generation, &mesh.trust), (2, &trust));
    state.set_trust(trust);
    assert!(
        !rx.has_changed().unwrap(),
        "the same trust again publishes nothing"
    );
}
