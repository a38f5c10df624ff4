//! The real single-node Kubernetes cluster of `scripts/cluster`, for the tests that need one.
//!
//! [`Cluster::get`] reuses a running cluster or starts one (once per test binary); each test
//! takes a [`TestNamespace`] of its own, applies YAML into it with server-side apply, and waits
//! for conditions with bounds. A namespace is deleted when its test ends, pass or fail; when a
//! test fails, the namespace's pods, events and logs are printed first. Starting and stopping
//! the cluster itself is the test command's job (`scripts/test` takes it down at the end);
//! a cluster this module starts for a lone `cargo test` is left running for the next one.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, Scope};
use kube::Client;
use serde_json::{json, Value};

/// The image of the test apps (`weft-test-app`), imported into the cluster by `scripts/cluster up`.
pub const TEST_APP_IMAGE: &str = "localhost/weft/test-app:dev";
/// weft's image (`weft`, `weft-proxy` and what `weft-proxy init` calls).
pub const WEFT_IMAGE: &str = "localhost/weft/weft:dev";

/// A running cluster: where its API server is and the addresses `scripts/cluster env` names.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    /// The host's end of the veth to the node: host processes that pods or the API server must
    /// reach (a webhook, a control plane outside the cluster) bind here or on loopback.
    pub host_ip: Ipv4Addr,
    /// The node's address: Jaeger and CoreDNS listen here.
    pub node_ip: Ipv4Addr,
    pub jaeger_otlp_http: String,
    pub jaeger_query: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn script() -> PathBuf {
    repo_root().join("scripts/cluster")
}

impl Cluster {
    /// The cluster, started by `scripts/cluster up` unless `scripts/cluster status` says one
    /// runs. Panics, with what `up` printed, when it cannot be started.
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let running = Command::new(script())
                .arg("status")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !running {
                eprintln!("cluster: not running; starting it with scripts/cluster up");
                let up = Command::new(script())
                    .arg("up")
                    .status()
                    .expect("run scripts/cluster up");
                assert!(
                    up.success(),
                    "scripts/cluster up failed (its output is above); the cluster tests need it"
                );
            }
            let out = Command::new(script())
                .arg("env")
                .output()
                .expect("run scripts/cluster env");
            let env: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let var = |k: &str| {
                env.get(k)
                    .unwrap_or_else(|| panic!("scripts/cluster env names no {k}"))
                    .clone()
            };
            Cluster {
                kubeconfig: var("KUBECONFIG").into(),
                host_ip: var("WEFT_CLUSTER_HOST_IP").parse().expect("host IP"),
                node_ip: var("WEFT_CLUSTER_NODE_IP").parse().expect("node IP"),
                jaeger_otlp_http: var("WEFT_CLUSTER_JAEGER_OTLP_HTTP"),
                jaeger_query: var("WEFT_CLUSTER_JAEGER_QUERY"),
            }
        })
    }

    /// A client for the cluster as its administrator. One per test: a client's connection
    /// tasks live on the runtime that made it, and each test has its own.
    pub async fn client(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .expect("read the cluster's kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("the cluster's kubeconfig is usable");
        Client::try_from(config).expect("a client for the cluster")
    }

    /// Runs kubectl (the cluster's own build) with `args`; its output, or what it said on failure.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(script())
            .arg("kubectl")
            .arg("--request-timeout=20s")
            .args(args)
            .output()
            .map_err(|e| format!("run scripts/cluster kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// A namespace of one test's own, deleted when the test ends.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    cluster: &'static Cluster,
    /// Cluster-scoped objects the test applied (`PLURAL.GROUP/NAME`): deleted with the namespace.
    cluster_scoped: std::sync::Mutex<Vec<String>>,
}

impl TestNamespace {
    /// Creates `t-PREFIX-N-PID`, labelled `weft-tests: "true"` (so a webhook of the test's can
    /// select it by its name label).
    pub async fn new(prefix: &str) -> TestNamespace {
        static N: AtomicU64 = AtomicU64::new(0);
        let cluster = Cluster::get();
        let client = cluster.client().await;
        let name = format!(
            "t-{prefix}-{}-{}",
            N.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"weft-tests": "true"}}
        }))
        .expect("a namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace {
            name,
            client,
            cluster,
            cluster_scoped: Default::default(),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Server-side applies every document of `yaml` (namespaced ones into this namespace) and
    /// returns what the API server stored.
    pub async fn apply(&self, yaml: &str) -> Vec<DynamicObject> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("YAML: {e}\n{yaml}"));
        let mut applied = Vec::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            applied.push(self.apply_one(doc).await);
        }
        applied
    }

    async fn apply_one(&self, doc: Value) -> DynamicObject {
        let api_version = doc["apiVersion"].as_str().expect("apiVersion").to_string();
        let kind = doc["kind"].as_str().expect("kind").to_string();
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, &kind);
        let (resource, caps) = pinned_kind(&self.client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("the API server does not serve {api_version} {kind}: {e}"));
        let mut object: DynamicObject =
            serde_json::from_value(doc).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let name = object.metadata.name.clone().expect("metadata.name");
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            object.metadata.namespace = Some(self.name.clone());
            Api::namespaced_with(self.client.clone(), &self.name, &resource)
        } else {
            self.cluster_scoped
                .lock()
                .expect("not poisoned")
                .push(match resource.group.as_str() {
                    "" => format!("{}/{name}", resource.plural),
                    group => format!("{}.{group}/{name}", resource.plural),
                });
            Api::all_with(self.client.clone(), &resource)
        };
        api.patch(
            &name,
            &PatchParams::apply("weft-tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"))
    }

    /// Polls `f` until it returns `Some`, every 200 ms; after `bound`, panics naming `what` with
    /// the namespace's pods, events and logs.
    pub async fn wait<T, F, Fut>(&self, what: &str, bound: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // One poll may not outlast the bound either (a request the API server never answers).
            if let Ok(Some(v)) = tokio::time::timeout_at(deadline, f()).await {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {bound:?} waiting for {what} in namespace {}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until Deployment `name` has `replicas` available replicas and no others.
    pub async fn deployment_available(&self, name: &str, replicas: i32) {
        let api = self.api::<Deployment>();
        self.wait(
            &format!("deployment {name} to have {replicas} available replicas"),
            Duration::from_secs(90),
            || async {
                let d = api.get(name).await.ok()?;
                let s = d.status?;
                let want = Some(replicas);
                (s.available_replicas.or(Some(0)) == want
                    && s.replicas.or(Some(0)) == want
                    && s.updated_replicas.or(Some(0)) == want)
                    .then_some(())
            },
        )
        .await
    }

    /// Waits until Job `name` has succeeded; panics at once, with the logs, if it failed.
    pub async fn job_complete(&self, name: &str) {
        let api = self.api::<Job>();
        self.wait(
            &format!("job {name} to complete"),
            Duration::from_secs(90),
            || async {
                let s = api.get(name).await.ok()?.status?;
                let failed = s.conditions.iter().flatten().any(|c| {
                    (c.type_ == "Failed" || c.type_ == "FailureTarget") && c.status == "True"
                });
                assert!(
                    !failed,
                    "job {name} failed in namespace {}\n{}",
                    self.name,
                    self.diagnostics()
                );
                (s.succeeded.unwrap_or(0) >= 1).then_some(())
            },
        )
        .await
    }

    /// The addresses of Service `service`'s endpoints that are ready, from its EndpointSlices;
    /// none when the API server could not be asked (a caller waiting polls again).
    pub async fn ready_endpoints(&self, service: &str) -> Vec<String> {
        let slices = match self
            .api::<EndpointSlice>()
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
            .await
        {
            Ok(slices) => slices,
            Err(e) => {
                eprintln!("cluster: list EndpointSlices of {service}: {e}");
                return Vec::new();
            }
        };
        let mut addresses: Vec<String> = slices
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        addresses.sort();
        addresses
    }

    /// The pods that match `selector` and are not being deleted; none when the API server could
    /// not be asked (a caller waiting polls again).
    pub async fn pods(&self, selector: &str) -> Vec<Pod> {
        let pods = match self
            .api::<Pod>()
            .list(&ListParams::default().labels(selector))
            .await
        {
            Ok(pods) => pods,
            Err(e) => {
                eprintln!("cluster: list pods {selector}: {e}");
                return Vec::new();
            }
        };
        pods.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// kubectl with `--namespace` set to this one.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["--namespace", &self.name];
        all.extend_from_slice(args);
        self.cluster.kubectl(&all)
    }

    /// What a reader of a failed test needs: pods, events, and every container's log.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let mut section = |args: &[&str]| {
            out.push_str(&format!("--- kubectl {}\n", args.join(" ")));
            match self.kubectl(args) {
                Ok(s) | Err(s) => out.push_str(&s),
            }
        };
        section(&["get", "pods,jobs,deployments,endpointslices", "-o", "wide"]);
        section(&["get", "events", "--sort-by", ".lastTimestamp"]);
        let pods = self
            .kubectl(&["get", "pods", "-o", "name"])
            .unwrap_or_default();
        for pod in pods.lines() {
            section(&["logs", pod, "--all-containers", "--prefix", "--tail", "50"]);
        }
        out
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        let cluster_scoped = std::mem::take(
            &mut *self
                .cluster_scoped
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for object in cluster_scoped {
            if let Err(e) = self
                .cluster
                .kubectl(&["delete", &object, "--ignore-not-found"])
            {
                eprintln!("cluster: could not delete {object}: {e}");
            }
        }
        // Blocking and without waiting for the namespace's finalizers: the test is over.
        if let Err(e) = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"])
        {
            eprintln!("cluster: could not delete namespace {}: {e}", self.name);
        }
    }
}
