//! Starting a proxy: the shared handles made once ([`Shared`]), the control-plane tasks
//! (identity, then discovery), the tracing settings that follow the mesh config, and one accept
//! loop per listener, every task in one `weft_runtime::tasks::Tasks` so that a drain waits for
//! all of them.
//!
//! What each part does is its own module's; this file only connects them. It binds nothing
//! itself: [`Listeners::bind`] is for `cli`, and tests pass listeners bound to port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::{Config, Upstream};
use crate::control::ControlPlane;
use crate::discovery::Discovery;
use crate::identity::Identity;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::original_dst::original_dst;
use crate::outbound::{Outbound, Target};
use crate::routes::{Protocol, ServiceKey};
use crate::shared::Shared;
use crate::tcp;
use crate::transparent;
use weft_runtime::server;
use weft_runtime::tasks::Tasks;
use weft_runtime::tls::Tls;
use weft_runtime::trace::Tracer;

/// The proxy's listeners, bound before it starts.
pub struct Listeners {
    pub inbound: TcpListener,
    pub outbound: TcpListener,
    pub admin: TcpListener,
    pub upstreams: Vec<(Upstream, TcpListener)>,
    /// The IPv6 twins of the inbound and outbound listeners, for redirected IPv6 connections
    /// ([`Listeners::bind`]); none in tests that bind port 0.
    pub ipv6: Vec<(Direction, TcpListener)>,
}

/// Which side of the proxy a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
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
        let mut ipv6 = Vec::new();
        for (direction, addr) in [
            (Direction::Inbound, config.inbound_addr),
            (Direction::Outbound, config.outbound_addr),
        ] {
            if let Some(l) = ipv6_twin(addr) {
                ipv6.push((direction, l));
            }
        }
        Ok(Self {
            inbound: bind(config.inbound_addr, "inbound-addr").await?,
            outbound: bind(config.outbound_addr, "outbound-addr").await?,
            admin: bind(config.admin_addr, "admin-addr").await?,
            upstreams,
            ipv6,
        })
    }
}

/// iptables redirects IPv6 connections to the same ports on IPv6 addresses: `[::1]` for the
/// outbound (from `127.0.0.1`), `[::]` for the inbound (from `0.0.0.0`), IPv6 only so that the
/// IPv4 listener keeps its own. None where the namespace has no IPv6 (or the address is another).
fn ipv6_twin(addr: SocketAddr) -> Option<TcpListener> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(Ipv4Addr::LOCALHOST) => Ipv6Addr::LOCALHOST,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED) => Ipv6Addr::UNSPECIFIED,
        _ => return None,
    };
    let twin = SocketAddr::new(ip.into(), addr.port());
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).ok()?;
    let bound = socket
        .set_only_v6(true)
        .and_then(|()| socket.set_reuse_address(true))
        .and_then(|()| socket.bind(&twin.into()))
        .and_then(|()| socket.listen(1024))
        .and_then(|()| socket.set_nonblocking(true));
    if let Err(e) = bound {
        tracing::debug!(%twin, error = %e, "no IPv6 listener (the namespace has no IPv6?)");
        return None;
    }
    TcpListener::from_std(socket.into()).ok()
}

/// A running proxy.
pub struct Running {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub upstream_addrs: Vec<SocketAddr>,
    pub discovery: Arc<Discovery>,
    pub identity: Arc<Identity>,
    /// The TLS configs made from this proxy's credentials.
    pub tls: Arc<Tls>,
    pub metrics: Arc<Metrics>,
    /// Follows MeshConfig `tracing` a moment after each config.
    pub tracer: Arc<Tracer>,
    tasks: Tasks,
}

impl Running {
    /// Starts a drain: stop accepting, finish in-flight requests.
    pub fn shutdown(&self) {
        self.tasks.shutdown();
    }

    /// Resolves once a drain has been requested (signal or `POST /shutdown`).
    pub async fn shutdown_requested(&self) {
        self.tasks.shutdown_requested().await;
    }

    /// Waits for every task (listeners, control-plane tasks, tracing settings) to finish.
    pub async fn join(self) {
        self.tasks.join().await;
    }

    /// Drains and waits.
    pub async fn stop(self) {
        self.shutdown();
        self.join().await;
    }
}

/// Starts the proxy on the given listeners.
pub fn start(config: Config, listeners: Listeners) -> std::io::Result<Running> {
    let addrs = Addrs::of(&listeners)?;
    let node = node(&config, advertise_addr(&config, addrs.inbound));
    let control = Arc::new(
        ControlPlane::new(
            config.control_plane.clone(),
            config.trust_anchors_pem.clone(),
            config.trust_domain.clone(),
        )
        .map_err(std::io::Error::other)?,
    );
    let metrics = Arc::new(Metrics::new());
    let initial = config.upstreams.iter().map(|u| u.key(&config.namespace));
    let shared = Shared {
        discovery: Arc::new(Discovery::new(initial, metrics.clone())),
        tls: Arc::new(Tls::default()),
        tracer: Tracer::launch(
            format!("{}.{}", config.service, config.namespace),
            "proxy",
            metrics.trace.clone(),
        ),
        access_log: AccessLog::start(config.access_log.clone(), metrics.clone()),
        metrics,
    };
    let identity = Arc::new(Identity::new(shared.metrics.clone(), shared.tls.clone()));
    let config = Arc::new(config);
    let mut tasks = Tasks::default();
    let shutdown = tasks.shutdown_token().clone();

    spawn_control_plane(
        &mut tasks, &config, &shared, &identity, control, node, &shutdown,
    );
    tasks.spawn(follow_tracing(shared.clone(), shutdown.clone()));
    spawn_listeners(
        &mut tasks, &config, &shared, &identity, listeners, &shutdown,
    );

    let Shared {
        metrics,
        tls,
        discovery,
        tracer,
        access_log: _,
    } = shared;
    Ok(Running {
        inbound_addr: addrs.inbound,
        outbound_addr: addrs.outbound,
        admin_addr: addrs.admin,
        upstream_addrs: addrs.upstreams,
        discovery,
        identity,
        tls,
        metrics,
        tracer,
        tasks,
    })
}

/// The addresses the listeners are bound to, read before anything starts.
struct Addrs {
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
    upstreams: Vec<SocketAddr>,
}

impl Addrs {
    fn of(listeners: &Listeners) -> std::io::Result<Self> {
        Ok(Self {
            inbound: listeners.inbound.local_addr()?,
            outbound: listeners.outbound.local_addr()?,
            admin: listeners.admin.local_addr()?,
            upstreams: listeners
                .upstreams
                .iter()
                .map(|(_, l)| l.local_addr())
                .collect::<std::io::Result<_>>()?,
        })
    }
}

/// The inbound address peers are told to dial: the configured one, or what was actually bound
/// where the config leaves the port or the IP open.
fn advertise_addr(config: &Config, inbound_addr: SocketAddr) -> SocketAddr {
    if config.advertise_addr.port() != 0 && !config.advertise_addr.ip().is_unspecified() {
        return config.advertise_addr;
    }
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
}

/// Who this proxy is, as it introduces itself on the discovery stream.
fn node(config: &Config, advertise: SocketAddr) -> weft_proto::discovery::Node {
    weft_proto::discovery::Node {
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
    }
}

/// The identity task (obtain, renew, follow the CA) and the discovery stream, which opens once
/// the first certificate is in hand: the control plane serves the config stream only to a
/// proxy that presents one.
fn spawn_control_plane(
    tasks: &mut Tasks,
    config: &Config,
    shared: &Shared,
    identity: &Arc<Identity>,
    control: Arc<ControlPlane>,
    node: weft_proto::discovery::Node,
    shutdown: &CancellationToken,
) {
    tasks.spawn({
        let (discovery, identity, control) =
            (shared.discovery.clone(), identity.clone(), control.clone());
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
        shared.discovery.clone(),
        shutdown.clone(),
    ));
}

/// Applies the mesh config's tracing settings to the tracer after each config, until shutdown.
async fn follow_tracing(shared: Shared, shutdown: CancellationToken) {
    let Shared {
        discovery, tracer, ..
    } = shared;
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
}

/// One accept loop per listener: outbound, each upstream, inbound, admin.
fn spawn_listeners(
    tasks: &mut Tasks,
    config: &Arc<Config>,
    shared: &Shared,
    identity: &Arc<Identity>,
    listeners: Listeners,
    shutdown: &CancellationToken,
) {
    let grace = config.drain_timeout;
    let spec = |name: &'static str, limits: server::Limits| server::Listener {
        name,
        limits,
        grace,
        metrics: shared.metrics.listeners.clone(),
    };

    let outbound = Arc::new(Outbound {
        discovery: shared.discovery.clone(),
        metrics: shared.metrics.clone(),
        namespace: config.namespace.clone(),
        tls: shared.tls.clone(),
        connect: Arc::new(crate::transport::PeerConnector::new(shared.tls.clone())),
        tracer: shared.tracer.clone(),
        access_log: shared.access_log.clone(),
        upgrades: config.allowed_upgrades.clone(),
        own_traffic: Default::default(),
    });
    tasks.spawn(serve_outbound(
        outbound.clone(),
        Target::Authority,
        listeners.outbound,
        shutdown.clone(),
        spec("outbound", config.limits),
    ));
    let mut inbound_v6 = Vec::new();
    for (direction, listener) in listeners.ipv6 {
        match direction {
            Direction::Outbound => tasks.spawn(serve_outbound(
                outbound.clone(),
                Target::Authority,
                listener,
                shutdown.clone(),
                spec("outbound", config.limits),
            )),
            Direction::Inbound => inbound_v6.push(listener),
        }
    }
    for (u, listener) in listeners.upstreams {
        let target = Target::Fixed {
            service: u.key(&config.namespace),
            port: u.port,
            endpoint: None,
        };
        tasks.spawn(serve_outbound(
            outbound.clone(),
            target,
            listener,
            shutdown.clone(),
            spec("upstream", config.limits),
        ));
    }

    let inbound = Arc::new(Inbound::new(config, shared));
    for listener in std::iter::once(listeners.inbound).chain(inbound_v6) {
        let inbound = inbound.clone();
        tasks.spawn(server::accept_loop(
            spec("inbound", config.limits),
            listener,
            shutdown.clone(),
            move |conn| inbound.clone().accept(conn),
        ));
    }

    let admin = Arc::new(Admin::new(
        config.clone(),
        shared,
        identity.clone(),
        shutdown.clone(),
    ));
    // The admin listener outlives the drain of the others only by its own grace period; it
    // stops with them so the process can exit.
    let admin_limits = server::Limits {
        max_connections: server::Limits::operator().max_connections,
        ..config.limits
    };
    tasks.spawn(server::accept_loop(
        spec("admin", admin_limits),
        listeners.admin,
        shutdown.clone(),
        move |conn| {
            let (admin, peer) = (admin.clone(), conn.peer);
            let svc = hyper::service::service_fn(move |req| admin.clone().handle(peer, req));
            conn.http.serve(conn.stream, svc)
        },
    ));
}

/// An outbound listener: HTTP routing, or opaque TCP when the target service port is TCP. On
/// the outbound listener, a connection iptables redirected goes by its original destination
/// (`transparent.rs`).
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
            if let Target::Fixed { service, port, .. } = &target {
                if is_tcp(&outbound.discovery, service, *port).await {
                    let (d, m) = (outbound.discovery.clone(), outbound.metrics.clone());
                    let tls = outbound.tls.clone();
                    let dest = tcp::Dest {
                        service: service.clone(),
                        port: *port,
                        endpoint: None,
                    };
                    return tcp::outbound(conn.stream, dest, d, m, tls).await;
                }
            } else {
                let dst = conn
                    .stream
                    .local_addr()
                    .and_then(|local| original_dst(&conn.stream, local));
                match dst {
                    Ok(Some(dst)) => return transparent::outbound(outbound, conn, dst).await,
                    Ok(None) => {}
                    Err(e) => {
                        let counts = &outbound.metrics.interception;
                        counts.redirected(crate::metrics::OUTBOUND, "no-original-dst");
                        return tracing::info!(peer = %conn.peer, error = %e, "connection closed: its original destination cannot be read");
                    }
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
async fn is_tcp(discovery: &Discovery, service: &ServiceKey, port: u16) -> bool {
    match discovery.resolve(service).await {
        Ok(svc) => svc
            .port(Some(port))
            .is_some_and(|p| p.protocol == Protocol::Tcp),
        Err(_) => false,
    }
}
