//! A proxy in this process, in front of one workload: [`Sidecar`], made with
//! [`Sidecar::builder`]. It starts in two steps because standalone Service endpoints are proxy
//! addresses: [`SidecarBuilder::bind`] binds its listeners, the test writes config naming them,
//! then [`Sidecar::start`] joins a [`Mesh`]. The control plane is [`crate::mesh`]'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::eventually::eventually;
use crate::mesh::{Access, Mesh};

pub use weft_proxy::config::Upstream;

/// An address nothing listens on, for a workload that has no app of its own.
pub const NO_APP: &str = "127.0.0.1:9";

/// How to start a [`Sidecar`]: every setting has the proxy's default unless given, except its
/// listeners (port 0 on loopback), one worker thread and a 2 s drain.
#[derive(Clone, Debug, Default)]
#[must_use = "a sidecar binds its listeners with .bind()"]
pub struct SidecarBuilder {
    upstreams: Vec<String>,
    access_log: Option<PathBuf>,
    limits: Option<weft_runtime::server::Limits>,
    admin_shutdown: bool,
    trust_domain: Option<String>,
}

impl SidecarBuilder {
    /// A local `upstream` listener for `target` (`SERVICE[.NS]:PORT`); the listeners are in
    /// [`Sidecar::upstreams`], in the order given.
    pub fn upstream(mut self, target: &str) -> Self {
        self.upstreams.push(target.to_string());
        self
    }

    /// The `access-log` setting (standard output unless given).
    pub fn access_log(mut self, path: impl Into<Option<PathBuf>>) -> Self {
        self.access_log = path.into();
        self
    }

    /// The listeners' connection limits (the proxy's defaults unless given).
    pub fn limits(mut self, limits: weft_runtime::server::Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The `admin-shutdown` setting: whether `POST /shutdown` may drain the proxy.
    pub fn admin_shutdown(mut self, allowed: bool) -> Self {
        self.admin_shutdown = allowed;
        self
    }

    /// The `trust-domain` setting (the proxy's default unless given).
    pub fn trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = Some(trust_domain.into());
        self
    }

    /// Binds the proxy's listeners; it starts with [`Sidecar::start`].
    pub async fn bind(self) -> Sidecar {
        let l = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
        let (inbound, outbound, admin) = (l().await, l().await, l().await);
        let mut ups = Vec::new();
        let mut specs = Vec::new();
        for target in &self.upstreams {
            let listener = l().await;
            let spec: Upstream = format!("{}={target}", listener.local_addr().unwrap())
                .parse()
                .expect("upstream spec");
            specs.push(spec.clone());
            ups.push((spec, listener));
        }
        let addr = |l: &TcpListener| l.local_addr().unwrap();
        Sidecar {
            inbound: addr(&inbound),
            outbound: addr(&outbound),
            admin: addr(&admin),
            upstreams: ups.iter().map(|(_, l)| addr(l)).collect(),
            listeners: Some(weft_proxy::Listeners {
                inbound,
                outbound,
                admin,
                upstreams: ups,
                ipv6: Vec::new(),
            }),
            upstream_specs: specs,
            settings: self,
            running: None,
        }
    }
}

/// A proxy whose listeners are bound, started or not.
pub struct Sidecar {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    listeners: Option<weft_proxy::Listeners>,
    upstream_specs: Vec<Upstream>,
    settings: SidecarBuilder,
    running: Option<weft_proxy::Running>,
}

impl Sidecar {
    /// A proxy to bind, with no `upstream` listener unless told otherwise.
    pub fn builder() -> SidecarBuilder {
        SidecarBuilder::default()
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
            trust_domain: self.settings.trust_domain.clone(),
            ..Default::default()
        };
        let mut config = weft_proxy::config::Config::from_args(args).expect("valid proxy config");
        config.upstreams = self.upstream_specs.clone();
        config.access_log = self.settings.access_log.clone();
        if let Some(limits) = self.settings.limits {
            config.limits = limits;
        }
        config.admin_shutdown = self.settings.admin_shutdown;
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
