//! The end-to-end harness: real control planes, real proxies and real upstream apps on loopback,
//! every listener on port 0, every file in a fresh temp folder that is removed afterwards.
//!
//! A [`Mesh`] is built in two steps because standalone Service endpoints are proxy addresses:
//! [`Sidecar::bind`] binds a proxy's listeners first, the test writes config naming those
//! addresses, then [`Mesh::start`] starts the control plane and [`Sidecar::start`] the proxies.
//!
//! The harness remembers the data dir of every control plane it starts, by API address, so that
//! [`api_call`] sends that control plane's admin token and [`run_weft`] runs the CLI with
//! `WEFT_DATA_DIR` pointing at it, as a user on its host would.

#![allow(clippy::unwrap_used)] // test harness: a failed setup should panic loudly

pub mod apps;
pub mod grpc {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weft.test.v1");
}

use rustls::pki_types::pem::PemObject;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

pub use weft_proxy::config::Upstream;

/// Waits until `f` returns `Some`, polling every 10 ms; panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn init_logging() {
    weft_proxy::logging::init_with_default("warn");
}

/// A temp folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weft-test-{}-{}-{:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand_u64()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// The data dir of each control plane started here, by its API address.
static DATA_DIRS: Mutex<Option<HashMap<SocketAddr, PathBuf>>> = Mutex::new(None);

fn remember_data_dir(api: SocketAddr, dir: PathBuf) {
    DATA_DIRS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(api, dir);
}

/// The data dir of the control plane whose API is `api`, if the harness started it.
pub fn data_dir_of(api: SocketAddr) -> Option<PathBuf> {
    DATA_DIRS.lock().unwrap().as_ref()?.get(&api).cloned()
}

/// The admin token of the control plane whose API is `api` (`DATA_DIR/admin-token`).
pub fn admin_token(api: SocketAddr) -> Option<String> {
    let dir = data_dir_of(api)?;
    weft::client::read_admin_token(&dir).ok()
}

/// A control plane watching one config file.
pub struct Mesh {
    pub dir: TempDir,
    pub config: PathBuf,
    pub grpc_addr: SocketAddr,
    pub api_addr: SocketAddr,
    ack_timeout: Duration,
    ca: Option<weft::ca::Source>,
    running: Option<weft::Running>,
}

impl Mesh {
    pub async fn start(yaml: &str) -> Self {
        Self::start_on(yaml, ([127, 0, 0, 1], 0).into()).await
    }

    /// Like [`Mesh::start`], with the gRPC listener on `grpc_addr`.
    pub async fn start_on(yaml: &str, grpc_addr: SocketAddr) -> Self {
        Self::launch(yaml, grpc_addr, weft::DEFAULT_ACK_TIMEOUT, None).await
    }

    /// Like [`Mesh::start`], signing with a CA from files (`--ca-cert`/`--ca-key`).
    pub async fn start_with_ca(yaml: &str, ca: weft::ca::Source) -> Self {
        Self::launch(
            yaml,
            ([127, 0, 0, 1], 0).into(),
            weft::DEFAULT_ACK_TIMEOUT,
            Some(ca),
        )
        .await
    }

    /// Like [`Mesh::start`], closing streams whose ACK is overdue after `ack_timeout`.
    pub async fn start_with_ack_timeout(yaml: &str, ack_timeout: Duration) -> Self {
        Self::launch(yaml, ([127, 0, 0, 1], 0).into(), ack_timeout, None).await
    }

    async fn launch(
        yaml: &str,
        grpc_addr: SocketAddr,
        ack_timeout: Duration,
        ca: Option<weft::ca::Source>,
    ) -> Self {
        init_logging();
        let dir = TempDir::new();
        let config = dir.0.join("mesh.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let grpc = bind_again(grpc_addr).await;
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (grpc_addr, api_addr) = (grpc.local_addr().unwrap(), api.local_addr().unwrap());
        let running = weft::start(
            Self::serve_config(&dir, &config, ack_timeout, ca.clone()),
            grpc,
            api,
        )
        .expect("config accepted");
        remember_data_dir(api_addr, dir.0.join("data"));
        Self {
            dir,
            config,
            grpc_addr,
            api_addr,
            ack_timeout,
            ca,
            running: Some(running),
        }
    }

    fn serve_config(
        dir: &TempDir,
        config: &std::path::Path,
        ack_timeout: Duration,
        ca: Option<weft::ca::Source>,
    ) -> weft::ServeConfig {
        weft::ServeConfig {
            config: vec![config.to_path_buf()],
            data_dir: dir.0.join("data"),
            trust_domain: "weft.local".into(),
            ack_timeout,
            ca,
            kubeconfig: Some(dir.0.join("kubeconfig")),
            api_token_file: None,
            api_hosts: Vec::new(),
        }
    }

    /// `--data-dir`: the store, the CA, the admin token.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    /// The admin token (`DATA_DIR/admin-token`).
    pub fn admin_token(&self) -> String {
        weft::client::read_admin_token(&self.data_dir()).expect("admin token")
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// The roots proxies start with (`DATA_DIR/trust-anchors.pem`).
    pub fn anchors(&self) -> PathBuf {
        self.dir.0.join("data/trust-anchors.pem")
    }

    /// What a proxy for workload `namespace/service_account` needs to join: the URL, the trust
    /// anchors, and a fresh join token (valid for an hour).
    pub fn access(&self, namespace: &str, service_account: &str) -> Access {
        let tokens = &self.running.as_ref().expect("control plane running").tokens;
        let workload = format!("{namespace}/{service_account}")
            .parse()
            .expect("workload");
        let (_, token) = tokens
            .create(workload, Duration::from_secs(3600))
            .expect("join token");
        self.access_with_token(&token)
    }

    /// A gRPC channel to the control plane, over TLS verified as a proxy verifies it.
    pub fn channel(&self) -> tonic::transport::Channel {
        let anchors = std::fs::read_to_string(self.anchors()).expect("trust anchors");
        let control =
            weft_proxy::control::ControlPlane::new(self.url(), anchors, "weft.local".into())
                .expect("anchors");
        Arc::new(control).channel(true).expect("channel")
    }

    /// A gRPC channel to the control plane that presents a fresh certificate for workload
    /// `namespace/service_account` (signed by the mesh's CA, as `Certify` would), as a proxy does
    /// once it has one. Returns the channel and the certificate.
    pub fn channel_as(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> (tonic::transport::Channel, weft::ca::Issued) {
        let id = self.state().mesh().identity(namespace, service_account);
        let (key, csr) = weft_proxy::identity::key_and_csr(&id).expect("key and CSR");
        let issued = self
            .running()
            .ca
            .sign(csr.der(), &id, Duration::from_secs(3600))
            .expect("signed");
        (
            self.channel_presenting(&issued.chain_pem, &key.serialize_pem()),
            issued,
        )
    }

    /// A gRPC channel to the control plane that presents `chain_pem` with `key_pem`.
    pub fn channel_presenting(&self, chain_pem: &str, key_pem: &str) -> tonic::transport::Channel {
        let anchors = std::fs::read_to_string(self.anchors()).expect("trust anchors");
        let anchors = Arc::new(weft_proxy::tls::parse_anchors(&anchors).expect("anchors"));
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .expect("a key in the PEM");
        let mut config =
            weft_proxy::control::verifying(anchors, &self.running().state.mesh().trust_domain)
                .expect("TLS config")
                .with_client_auth_cert(chain, key)
                .expect("client certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        let connector = tower::service_fn(move |uri: tonic::transport::Uri| {
            let config = config.clone();
            async move {
                weft_proxy::control::connect_tls(&uri, config)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        });
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("URL")
            .connect_with_connector_lazy(connector)
    }

    /// Like [`Mesh::access`], with a given token.
    pub fn access_with_token(&self, token: &str) -> Access {
        Access {
            url: self.url(),
            anchors: self.anchors(),
            token: token.to_string(),
            token_file: None,
        }
    }

    pub fn running(&self) -> &weft::Running {
        self.running.as_ref().expect("control plane running")
    }

    pub fn state(&self) -> &weft::state::State {
        &self.running.as_ref().expect("control plane running").state
    }

    pub fn generation(&self) -> u64 {
        self.state().mesh().generation
    }

    /// Replaces the config file atomically (write, then rename), as editors and ConfigMaps do.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.0.join(".mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// Stops the control plane (its listeners close; proxies lose their streams).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Starts it again on the same addresses, from the config file as it is now.
    pub async fn restart(&mut self) {
        self.stop().await;
        let grpc = bind_again(self.grpc_addr).await;
        let api = bind_again(self.api_addr).await;
        self.running = Some(
            weft::start(
                Self::serve_config(&self.dir, &self.config, self.ack_timeout, self.ca.clone()),
                grpc,
                api,
            )
            .expect("config accepted"),
        );
    }

    /// Proxies connected now, as the control plane reports them.
    pub fn proxies(&self) -> Vec<weft::discovery::ProxyStatus> {
        self.running
            .as_ref()
            .map(|r| r.proxies.list())
            .unwrap_or_default()
    }
}

async fn bind_again(addr: SocketAddr) -> TcpListener {
    eventually(
        &format!("{addr} to be free again"),
        Duration::from_secs(5),
        || async { TcpListener::bind(addr).await.ok() },
    )
    .await
}

/// How a proxy reaches and joins a control plane.
#[derive(Clone, Debug)]
pub struct Access {
    pub url: String,
    pub anchors: PathBuf,
    /// A join token, used unless `token_file` is set.
    pub token: String,
    /// A Kubernetes service-account token file, as mounted in a pod.
    pub token_file: Option<PathBuf>,
}

/// A proxy whose listeners are bound but which has not started yet.
pub struct Sidecar {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    listeners: Option<weft_proxy::Listeners>,
    upstream_specs: Vec<Upstream>,
    running: Option<weft_proxy::Running>,
    /// The `access-log` setting (standard output when `None`).
    pub access_log: Option<PathBuf>,
    /// The listeners' connection limits (the proxy's defaults when `None`).
    pub limits: Option<weft_proxy::server::Limits>,
    /// The `admin-shutdown` setting: whether `POST /shutdown` may drain the proxy.
    pub admin_shutdown: bool,
    /// The `trust-domain` setting (the proxy's default when `None`).
    pub trust_domain: Option<String>,
}

impl Sidecar {
    /// Binds listeners; `upstreams` are `SERVICE[.NS]:PORT` targets for local listeners.
    pub async fn bind(upstreams: &[&str]) -> Self {
        let l = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
        let (inbound, outbound, admin) = (l().await, l().await, l().await);
        let mut ups = Vec::new();
        let mut specs = Vec::new();
        for target in upstreams {
            let listener = l().await;
            let spec: Upstream = format!("{}={target}", listener.local_addr().unwrap())
                .parse()
                .expect("upstream spec");
            specs.push(spec.clone());
            ups.push((spec, listener));
        }
        let addr = |l: &TcpListener| l.local_addr().unwrap();
        Self {
            inbound: addr(&inbound),
            outbound: addr(&outbound),
            admin: addr(&admin),
            upstreams: ups.iter().map(|(_, l)| addr(l)).collect(),
            listeners: Some(weft_proxy::Listeners {
                inbound,
                outbound,
                admin,
                upstreams: ups,
            }),
            upstream_specs: specs,
            running: None,
            access_log: None,
            limits: None,
            admin_shutdown: false,
            trust_domain: None,
        }
    }

    /// Starts the proxy for workload `ns/name` whose app listens on `app`, with a fresh join
    /// token for that identity.
    pub fn start(&mut self, mesh: &Mesh, namespace: &str, name: &str, app: SocketAddr) {
        let access = mesh.access(namespace, name);
        self.start_with(&access, namespace, name, app);
    }

    /// Like [`Sidecar::start`], joining with `access`.
    pub fn start_with(&mut self, access: &Access, namespace: &str, name: &str, app: SocketAddr) {
        let args = weft_proxy::config::Args {
            control_plane: access.url.clone(),
            trust_anchors: Some(access.anchors.clone()),
            join_token: access.token_file.is_none().then(|| access.token.clone()),
            token_file: access.token_file.clone(),
            namespace: Some(namespace.into()),
            service_account: Some(name.into()),
            inbound_addr: self.inbound.to_string(),
            outbound_addr: self.outbound.to_string(),
            admin_addr: self.admin.to_string(),
            app_addr: app.to_string(),
            drain_timeout: "2s".into(),
            workers: "1".into(),
            trust_domain: self.trust_domain.clone(),
            ..Default::default()
        };
        let mut config = weft_proxy::config::Config::from_args(args).expect("valid proxy config");
        config.upstreams = self.upstream_specs.clone();
        config.access_log = self.access_log.clone();
        if let Some(limits) = self.limits {
            config.limits = limits;
        }
        config.admin_shutdown = self.admin_shutdown;
        let listeners = self.listeners.take().expect("sidecar started twice");
        self.running = Some(weft_proxy::start(config, listeners).expect("proxy starts"));
    }

    pub fn running(&self) -> &weft_proxy::Running {
        self.running.as_ref().expect("sidecar running")
    }

    /// Waits for the first certificate and the first config, and for the tracer to follow the
    /// config's tracing settings (a task applies them a moment after the config: a request sent
    /// in between would not be traced).
    pub async fn ready(&self) {
        tokio::time::timeout(Duration::from_secs(10), async {
            self.running().identity.ready().await;
            self.running().discovery.ready().await;
        })
        .await
        .expect("proxy got its first certificate and config within 10s");
        let wants = self
            .running()
            .discovery
            .snapshot()
            .mesh
            .otlp_endpoint
            .clone();
        if !wants.is_empty() {
            eventually(
                "the tracer to follow the config",
                Duration::from_secs(5),
                || async {
                    let has = self.running().tracer.settings().endpoint;
                    (has.as_deref() == Some(wants.as_str())).then_some(())
                },
            )
            .await;
        }
    }

    /// The generation of the config in force.
    pub fn version(&self) -> String {
        self.running().discovery.snapshot().version.clone()
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client, as an app would use.
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A pooled HTTP/2 (prior knowledge) client.
pub fn http2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a request to `addr` with `host` as its Host (an app using `HTTP_PROXY` or a local
/// `upstream` listener) and reads the whole response.
pub async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    send_body(client, addr, host, method, path, headers, Bytes::new()).await
}

/// Like [`send`], with a request body.
pub async fn send_body(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<Reply> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Full::new(body))?),
    )
    .await??;
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<Reply> {
    send(client, addr, host, "GET", path, &[]).await
}

/// The sum of a metric's series whose label sets contain every one of `labels` (written as in
/// the exposition: `service="orders.shop"`), from Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Creates a join token through the control plane's API; returns (id, token).
pub async fn create_token(mesh: &Mesh, workload: &str, ttl: &str) -> (String, String) {
    let body = serde_json::json!({ "workload": workload, "ttl": ttl }).to_string();
    let (status, doc) = api_call(mesh.api_addr, "POST", "/api/v1/tokens", &body).await;
    assert_eq!(status, 201, "{doc}");
    (
        doc["id"].as_str().unwrap().to_string(),
        doc["token"].as_str().unwrap().to_string(),
    )
}

/// The most common mesh of the tests: a client sidecar (`shop/frontend`, with an `upstream`
/// listener for `orders.shop:8080`) and a server sidecar (`shop/orders`) in front of `app`, the
/// Service declared with `protocol`; both ready. Returns (mesh, client, server).
pub async fn pair(protocol: &str, app: SocketAddr) -> (Mesh, Sidecar, Sidecar) {
    let mut client = Sidecar::bind(&["orders.shop:8080"]).await;
    let mut server = Sidecar::bind(&[]).await;
    let mesh = Mesh::start(&service_yaml("shop", "orders", protocol, &[server.inbound])).await;
    server.start(&mesh, "shop", "orders", app);
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    (mesh, client, server)
}

/// YAML for a Service whose endpoints are the given proxies' inbound listeners.
pub fn service_yaml(ns: &str, name: &str, protocol: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{address: \"{e}\"}}"))
        .collect();
    format!(
        "---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: main, port: 8080, protocol: {protocol}}}]\n  endpoints: [{}]\n",
        eps.join(", ")
    )
}

/// A binary of this workspace (built by `cargo build` before the tests run: see scripts/test).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// An address nothing listens on, for a workload that has no app of its own.
pub const NO_APP: &str = "127.0.0.1:9";

/// Callers sending requests back to back until stopped, counting what succeeded.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    callers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `callers` concurrent callers send `GET /` with Host `host` to `addr`; a response counts as
    /// a success when `good` says so (every other outcome is printed and counted as a failure).
    pub fn start(
        addr: SocketAddr,
        host: &'static str,
        callers: usize,
        good: fn(&Reply) -> bool,
    ) -> Self {
        let http = http1_client();
        Self::with(callers, move || {
            let http = http.clone();
            async move {
                let r = get(&http, addr, host, "/").await?;
                anyhow::ensure!(good(&r), "unexpected reply: {r:?}");
                Ok(())
            }
        })
    }

    /// `callers` concurrent callers each run `exchange` in a loop until stopped; an `Err` is
    /// printed and counted as a failure.
    pub fn with<F, Fut>(callers: usize, exchange: F) -> Self
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let callers = (0..callers)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let exchange = exchange.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match exchange().await {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                eprintln!("failed exchange: {e:#}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            callers,
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the callers; returns (succeeded, failed).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.callers {
            c.await.expect("caller panicked");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// `weft serve` as a process of its own, on port 0; the addresses it bound are read from its log.
pub struct ServeProcess {
    pub child: tokio::process::Child,
    pub api_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
}

impl ServeProcess {
    /// Starts `weft serve ARGS` (add `--data-dir`, `--api-addr` etc.; both listeners default to
    /// `127.0.0.1:0` here) and waits until it serves.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_in(None, args).await
    }

    /// Like [`ServeProcess::start`], inside network namespace `netns` when given.
    pub async fn start_in(netns: Option<&str>, args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut all: Vec<&str> = vec!["serve"];
        if !args.contains(&"--api-addr") {
            all.extend(["--api-addr", "127.0.0.1:0"]);
        }
        if !args.contains(&"--grpc-addr") {
            all.extend(["--grpc-addr", "127.0.0.1:0"]);
        }
        all.extend(args);
        let mut child = weft_command(netns)
            .args(&all)
            .env("WEFT_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start weft serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let serving = tokio::time::timeout(Duration::from_secs(20), async {
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("weft control plane serving") {
                    return Ok(line);
                }
                seen.push(line);
            }
            Err(seen.join("\n"))
        })
        .await
        .expect("weft serve to start within 20s")
        .unwrap_or_else(|log| panic!("weft serve exited before serving:\n{log}"));
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let data_dir = args
            .iter()
            .position(|a| *a == "--data-dir")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from);
        let addr_after = |field: &str| -> SocketAddr {
            let at = serving
                .find(&format!("{field}="))
                .or_else(|| serving.find(&format!("\"{field}\":")))
                .unwrap_or_else(|| panic!("no {field} address in {serving:?}"));
            let rest = &serving[at + field.len()..];
            let addr: String = rest
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            addr.parse()
                .unwrap_or_else(|e| panic!("{field} address {addr:?} in {serving:?}: {e}"))
        };
        let api_addr = addr_after("api");
        if let Some(dir) = data_dir {
            remember_data_dir(api_addr, dir);
        }
        Self {
            api_addr,
            grpc_addr: addr_after("grpc"),
            child,
        }
    }

    /// `kill -9`: no chance to flush or clean up anything.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reap");
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let ok = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        assert!(ok.success());
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("weft serve to stop within 15s after SIGTERM")
            .expect("reap");
        assert!(status.success(), "weft serve exited with {status}");
    }
}

/// One request to the control plane's API as its admin (with its admin token), a body sent as
/// JSON or YAML: the status and the body as JSON (a JSON string when the body is not JSON).
pub async fn api_call(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let token = admin_token(api);
    assert!(token.is_some(), "no admin token known for {api}");
    api_call_as(api, token.as_deref(), method, path, body).await
}

/// Like [`api_call`], with `Authorization: Bearer TOKEN` when a token is given, and with no
/// credential at all when not.
pub async fn api_call_as(
    api: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{api}{path}"));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if !body.is_empty() {
        let json = serde_json::from_str::<serde_json::Value>(body).is_ok();
        req = req.header(
            http::header::CONTENT_TYPE,
            if json {
                "application/json"
            } else {
                "application/yaml"
            },
        );
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let rsp = http1_client().request(req).await.unwrap();
    let status = rsp.status().as_u16();
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, value)
}

/// Runs the built `weft ARGS` (inside network namespace `netns` when given) with `stdin` as its
/// input; returns (exit code, stdout, stderr). When `--server` names a control plane the
/// harness started, `WEFT_DATA_DIR` is its data dir, as for a user on its host.
pub async fn run_weft<S: AsRef<std::ffi::OsStr>>(
    netns: Option<&str>,
    args: &[S],
    stdin: &str,
) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let args: Vec<&std::ffi::OsStr> = args.iter().map(AsRef::as_ref).collect();
    let data_dir = args
        .iter()
        .position(|a| *a == "--server")
        .and_then(|i| args.get(i + 1)?.to_str())
        .and_then(|url| url.split_once("://")?.1.trim_end_matches('/').parse().ok())
        .and_then(data_dir_of);
    let mut command = weft_command(netns);
    command.env_remove("WEFT_DATA_DIR");
    if let Some(dir) = data_dir {
        command.env("WEFT_DATA_DIR", dir);
    }
    let mut child = command
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run weft");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = child.wait_with_output().await.expect("weft output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The built `weft`, to run inside network namespace `netns` when given (`ip netns exec` execs
/// it: the child is `weft` itself, so signals reach it).
fn weft_command(netns: Option<&str>) -> tokio::process::Command {
    match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary("weft"));
            c
        }
        None => tokio::process::Command::new(binary("weft")),
    }
}
