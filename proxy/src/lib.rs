//! weft-proxy: the sidecar. See ARCHITECTURE.md for the request path and who owns what.
//!
//! [`start`] takes already-bound listeners, so that tests bind port 0 and run many proxies in
//! one process; `main.rs` binds the configured addresses and waits for a signal.

pub mod access_log;
pub mod admin;
pub mod admin_guard;
pub mod authz;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod control;
pub mod discovery;
pub mod errors;
#[cfg(test)]
mod fake_mesh;
pub mod headers;
pub mod identity;
pub mod inbound;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod path;
pub mod policy;
pub mod ratelimit;
pub mod retry;
pub mod routes;
pub mod server;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod transport;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::{Config, Upstream};
use crate::discovery::Discovery;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, Target};
use crate::routes::Protocol;

/// The proxy's listeners, bound before it starts.
pub struct Listeners {
    pub inbound: TcpListener,
    pub outbound: TcpListener,
    pub admin: TcpListener,
    pub upstreams: Vec<(Upstream, TcpListener)>,
}

impl Listeners {
    /// Binds every address in the config.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
            })
        };
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            upstreams.push((u.clone(), bind(u.listen, "upstream").await?));
        }
        Ok(Self {
            inbound: bind(config.inbound_addr, "inbound-addr").await?,
            outbound: bind(config.outbound_addr, "outbound-addr").await?,
            admin: bind(config.admin_addr, "admin-addr").await?,
            upstreams,
        })
    }
}

/// A running proxy.
pub struct Running {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub upstream_addrs: Vec<SocketAddr>,
    pub discovery: Arc<Discovery>,
    pub identity: Arc<identity::Identity>,
    /// The TLS configs made from this proxy's credentials.
    pub tls: Arc<tls::Tls>,
    pub metrics: Arc<Metrics>,
    /// Follows MeshConfig `tracing` a moment after each config.
    pub tracer: Arc<trace::Tracer>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Running {
    /// Starts a drain: stop accepting, finish in-flight requests.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resolves once a drain has been requested (signal or `POST /shutdown`).
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await;
    }

    /// Waits for every listener to finish draining.
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// Drains and waits.
    pub async fn stop(self) {
        self.shutdown();
        self.join().await;
    }
}

/// Starts the proxy on the given listeners.
pub fn start(config: Config, listeners: Listeners) -> std::io::Result<Running> {
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let inbound_addr = listeners.inbound.local_addr()?;
    let advertise =
        if config.advertise_addr.port() == 0 || config.advertise_addr.ip().is_unspecified() {
            // A peer cannot dial 0.0.0.0: advertise what we actually bound, on loopback if unspecified.
            let ip = if inbound_addr.ip().is_unspecified() {
                [127, 0, 0, 1].into()
            } else {
                inbound_addr.ip()
            };
            let port = if config.advertise_addr.port() == 0 {
                inbound_addr.port()
            } else {
                config.advertise_addr.port()
            };
            SocketAddr::new(ip, port)
        } else {
            config.advertise_addr
        };
    let initial = config.upstreams.iter().map(|u| u.key(&config.namespace));
    let discovery = Arc::new(Discovery::new(initial, metrics.clone()));
    let node = weft_proto::discovery::Node {
        id: format!(
            "{}-{}-{:08x}",
            config.service,
            std::process::id(),
            rand::random::<u32>()
        ),
        namespace: config.namespace.clone(),
        service_account: config.service_account.clone(),
        service: config.service.clone(),
        inbound_addr: advertise.to_string(),
        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let config = Arc::new(config);
    let grace = config.drain_timeout;
    let mut tasks = JoinSet::new();

    let control = Arc::new(
        control::ControlPlane::new(
            config.control_plane.clone(),
            config.trust_anchors_pem.clone(),
            config.trust_domain.clone(),
        )
        .map_err(std::io::Error::other)?,
    );
    let tls = Arc::new(tls::Tls::default());
    let identity = Arc::new(identity::Identity::new(metrics.clone(), tls.clone()));
    // The control plane serves the config stream only to a proxy that presents its
    // certificate: the stream opens once the first one is in hand.
    tasks.spawn({
        let (discovery, identity, control) = (discovery.clone(), identity.clone(), control.clone());
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = identity.ready() => {}
                () = shutdown.cancelled() => return,
            }
            discovery.run(control, node, shutdown).await;
        }
    });
    tasks.spawn(identity.clone().run(
        control,
        config.proof.clone(),
        config.namespace.clone(),
        config.service_account.clone(),
        discovery.clone(),
        shutdown.clone(),
    ));

    let tracer = trace::Tracer::launch(
        format!("{}.{}", config.service, config.namespace),
        "proxy",
        metrics.trace.clone(),
    );
    {
        // Tracing settings follow the mesh config.
        let (shutdown, discovery, tracer) = (shutdown.clone(), discovery.clone(), tracer.clone());
        tokio::spawn(async move {
            let follow = async {
                let mut changes = discovery.changes();
                loop {
                    let mesh = discovery.snapshot().mesh.clone();
                    if discovery.has_config() {
                        tracer.configure(&mesh.otlp_endpoint, mesh.sampling_ratio);
                    }
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                () = follow => {}
                () = shutdown.cancelled() => {}
            }
        });
    }

    let access_log = access_log::AccessLog::start(config.access_log.clone(), metrics.clone());
    let outbound = Arc::new(Outbound {
        discovery: discovery.clone(),
        metrics: metrics.clone(),
        namespace: config.namespace.clone(),
        tls: tls.clone(),
        connect: Arc::new(transport::PeerConnector::new(tls.clone())),
        tracer: tracer.clone(),
        access_log: access_log.clone(),
        upgrades: config.allowed_upgrades.clone(),
    });
    let outbound_addr = listeners.outbound.local_addr()?;
    tasks.spawn(serve_outbound(
        outbound.clone(),
        Target::Authority,
        listeners.outbound,
        shutdown.clone(),
        listener_spec("outbound", config.limits, &metrics, grace),
    ));

    let mut upstream_addrs = Vec::new();
    for (u, listener) in listeners.upstreams {
        upstream_addrs.push(listener.local_addr()?);
        let target = Target::Fixed {
            service: u.key(&config.namespace),
            port: u.port,
        };
        tasks.spawn(serve_outbound(
            outbound.clone(),
            target,
            listener,
            shutdown.clone(),
            listener_spec("upstream", config.limits, &metrics, grace),
        ));
    }

    let inbound = Arc::new(Inbound::new(
        &config,
        metrics.clone(),
        tls.clone(),
        discovery.clone(),
        tracer.clone(),
        access_log,
    ));
    tasks.spawn(server::accept_loop(
        listener_spec("inbound", config.limits, &metrics, grace),
        listeners.inbound,
        shutdown.clone(),
        move |conn| inbound.clone().accept(conn),
    ));

    let admin_addr = listeners.admin.local_addr()?;
    let admin = Arc::new(Admin {
        config: config.clone(),
        discovery: discovery.clone(),
        identity: identity.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    // The admin listener outlives the drain of the others only by its own grace period; it
    // stops with them so the process can exit.
    let admin_limits = server::Limits {
        max_connections: server::Limits::operator().max_connections,
        ..config.limits
    };
    tasks.spawn(server::accept_loop(
        listener_spec("admin", admin_limits, &metrics, grace),
        listeners.admin,
        shutdown.clone(),
        move |conn| {
            let (admin, peer) = (admin.clone(), conn.peer);
            let svc = hyper::service::service_fn(move |req| admin.clone().handle(peer, req));
            conn.http.serve(conn.stream, svc)
        },
    ));

    Ok(Running {
        inbound_addr,
        outbound_addr,
        admin_addr,
        upstream_addrs,
        discovery,
        identity,
        tls,
        metrics,
        tracer,
        shutdown,
        tasks,
    })
}

/// The accept-loop settings of the listener called `name`.
fn listener_spec(
    name: &'static str,
    limits: server::Limits,
    metrics: &Metrics,
    grace: std::time::Duration,
) -> server::Listener {
    server::Listener {
        name,
        limits,
        grace,
        metrics: metrics.listeners.clone(),
    }
}

/// An outbound listener: HTTP routing, or opaque TCP when the target service port is TCP.
async fn serve_outbound(
    outbound: Arc<Outbound>,
    target: Target,
    listener: TcpListener,
    shutdown: CancellationToken,
    spec: server::Listener,
) {
    server::accept_loop(spec, listener, shutdown, move |conn| {
        let outbound = outbound.clone();
        let target = target.clone();
        async move {
            if let Target::Fixed { service, port } = &target {
                if is_tcp(&outbound.discovery, service, *port).await {
                    let (d, m) = (outbound.discovery.clone(), outbound.metrics.clone());
                    let tls = outbound.tls.clone();
                    return tcp::outbound(conn.stream, service.clone(), *port, d, m, tls).await;
                }
            }
            let svc =
                hyper::service::service_fn(move |req| outbound.clone().handle(target.clone(), req));
            conn.http.serve(conn.stream, svc).await;
        }
    })
    .await
}

/// Whether a fixed target's port is declared TCP (resolving the service if need be).
async fn is_tcp(discovery: &Discovery, service: &routes::ServiceKey, port: u16) -> bool {
    match discovery.resolve(service).await {
        Ok(svc) => svc
            .port(Some(port))
            .is_some_and(|p| p.protocol == Protocol::Tcp),
        Err(_) => false,
    }
}
