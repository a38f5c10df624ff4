//! Opaque TCP: services whose protocol is TCP are forwarded byte for byte, both ways, with
//! half-close preserved (one side's FIN is passed on while the other direction keeps flowing).
//!
//! A connection counts toward the backend's `maxConnections`; its endpoint is chosen past
//! ejected ones (or is the one endpoint the app dialled by its address), another endpoint is
//! tried when a connect fails (within the retry budget), and a connection that carries nothing
//! either way for the idle timeout is closed.
//!
//! A redirected connection to an address the mesh does not know is passed through
//! ([`passthrough`]): plain TCP to where the app was going, counted under the service
//! `passthrough`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::breaker::{Limit, Permit};
use crate::discovery::Discovery;
use crate::errors::ProxyError;
use crate::metrics::{LimitLabels, Metrics, TcpLabels, INBOUND, OUTBOUND};
use crate::policy::DEFAULT_TCP_IDLE_TIMEOUT;
use crate::routes::ServiceKey;
use crate::transport::{self, OpaqueHeader};

/// The `service` label of passed-through connections.
pub const PASSTHROUGH: &str = "passthrough";

/// Where an outbound opaque connection goes: a service port, and (when the app dialled one
/// endpoint by its address) that endpoint alone.
pub struct Dest {
    pub service: ServiceKey,
    pub port: u16,
    pub endpoint: Option<SocketAddr>,
}

/// Carries one app connection to an endpoint of `dest.service` through its proxy.
pub async fn outbound<A>(
    mut app: A,
    dest: Dest,
    discovery: Arc<Discovery>,
    metrics: Arc<Metrics>,
    tls: Arc<weft_runtime::tls::Tls>,
) where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let service = &dest.service;
    let labels = TcpLabels {
        direction: OUTBOUND,
        service: service.to_string(),
    };
    let (peer, permit, idle) = match connect(&dest, &discovery, &tls, &metrics).await {
        Ok(connected) => connected,
        Err(e) => {
            // Nothing to answer on a raw connection: closing it is the error.
            tracing::info!(%service, error = %e, reason = e.reason(), "outbound TCP connection refused");
            return;
        }
    };
    relay(&mut app, peer, &labels, &metrics, idle).await;
    drop(permit);
}

/// Carries one redirected app connection to `dst`, which the mesh does not know, as it is:
/// plain TCP, no mTLS (the proxy's own connections to other pods are not redirected, so this
/// cannot loop back into it).
pub async fn passthrough<A>(app: A, dst: SocketAddr, metrics: Arc<Metrics>)
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let labels = TcpLabels {
        direction: OUTBOUND,
        service: PASSTHROUGH.to_string(),
    };
    if let Err(e) = dial_and_relay(app, dst, None, &labels, &metrics).await {
        tracing::info!(%dst, error = %e, "passthrough connection failed");
    }
}

async fn connect(
    dest: &Dest,
    discovery: &Discovery,
    tls: &weft_runtime::tls::Tls,
    metrics: &Metrics,
) -> Result<(transport::PeerIo, Permit, Duration), ProxyError> {
    let Dest {
        service,
        port,
        endpoint,
    } = dest;
    let port = *port;
    let svc = discovery.resolve(service).await?;
    let rule = &svc.default_rule;
    let backend = rule
        .split
        .pick()
        .ok_or_else(|| ProxyError::NoEndpoints(format!("{service} has no backend")))?;
    let backend_name = backend.key.to_string();
    let permit = backend
        .state
        .acquire(Limit::Connections, &backend.policy.limits)
        .map_err(|limit| {
            metrics
                .overloaded
                .get_or_create(&LimitLabels {
                    service: backend_name.clone(),
                    limit: limit.name(),
                })
                .inc();
            ProxyError::Overloaded(format!("{backend_name}: connection limit reached"))
        })?;
    let header = OpaqueHeader {
        port,
        service: service.to_string(),
    };
    let retry = &rule.policy.retry;
    svc.state.budget.deposit(&retry.budget);
    let mut tried = Vec::new();
    loop {
        let balancer = backend.balancer(port);
        let pick = match endpoint {
            Some(addr) => balancer.pick_pinned(*addr),
            None => balancer.pick(&tried, &backend.state),
        }
        .ok_or_else(|| {
            if balancer.endpoints.is_empty() {
                ProxyError::NoEndpoints(format!("{backend_name} has no endpoints"))
            } else {
                ProxyError::CircuitOpen(format!("every endpoint of {backend_name} is ejected"))
            }
        })?;
        let mut inflight = pick.start();
        let addr = inflight.endpoint().addr;
        let config = Some(inflight.endpoint().conn.tls_config(tls)?);
        let result =
            transport::connect_opaque(addr, backend.policy.connect_timeout, &header, config).await;
        if result.is_err() {
            inflight.unreachable();
        }
        backend.record(&mut inflight, result.is_ok(), metrics);
        match result {
            Ok(io) => return Ok((io, permit, backend.policy.tcp_idle_timeout())),
            Err(e) => {
                if e.is_connect_timeout() {
                    metrics.timeout(OUTBOUND, &backend_name, "connect");
                }
                let again = tried.len() < retry.max_retries as usize
                    && retry.on.connect_failure
                    && svc.state.budget.withdraw(&retry.budget);
                if !again {
                    return Err(e);
                }
                tracing::debug!(service = %backend_name, endpoint = %addr, error = %e, "TCP connect failed; trying another endpoint");
                tried.push(addr);
            }
        }
    }
}

/// Carries one opaque connection from a peer proxy to the local app (already checked by the
/// inbound listener), counted under this proxy's own `service`; connected from `from` when given.
pub async fn inbound<I>(
    peer: I,
    service: &str,
    app_addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    metrics: Arc<Metrics>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let labels = TcpLabels {
        direction: INBOUND,
        service: service.to_string(),
    };
    if let Err(e) = dial_and_relay(peer, app_addr, from, &labels, &metrics).await {
        tracing::info!(%service, error = %e, "inbound TCP: app unreachable");
    }
}

/// Connects to `addr` (from `from` when given) and relays `client` to it, with the default TCP
/// idle timeout; the error is the connect's.
async fn dial_and_relay<C>(
    mut client: C,
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    labels: &TcpLabels,
    metrics: &Metrics,
) -> Result<(), ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let server = transport::dial_from(addr, transport::DEFAULT_CONNECT_TIMEOUT, from).await?;
    relay(
        &mut client,
        server,
        labels,
        metrics,
        DEFAULT_TCP_IDLE_TIMEOUT,
    )
    .await;
    Ok(())
}

/// Copies both ways until both directions have closed, or nothing has moved for `idle`, and
/// counts it.
async fn relay<A, B>(
    client: &mut A,
    server: B,
    labels: &TcpLabels,
    metrics: &Metrics,
    idle: Duration,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    metrics.tcp_opened.get_or_create(labels).inc();
    metrics.tcp_open.get_or_create(labels).inc();
    let activity = Arc::new(Activity::default());
    let mut client = Watched {
        io: client,
        activity: activity.clone(),
        client: true,
    };
    let mut server = Watched {
        io: server,
        activity: activity.clone(),
        client: false,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    tokio::pin!(copy);
    let result = loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            r = &mut copy => break r,
            () = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle <= Instant::now() {
                    metrics.timeout(labels.direction, &labels.service, "idle");
                    tracing::debug!(service = %labels.service, ?idle, "TCP connection idle; closed");
                    break Ok((activity.sent(), activity.received()));
                }
            }
        }
    };
    metrics.tcp_open.get_or_create(labels).dec();
    metrics.tcp_closed.get_or_create(labels).inc();
    match result {
        Ok((sent, received)) => {
            metrics.tcp_bytes_sent.get_or_create(labels).inc_by(sent);
            metrics
                .tcp_bytes_received
                .get_or_create(labels)
                .inc_by(received);
        }
        Err(e) => tracing::debug!(service = %labels.service, error = %e, "TCP relay ended"),
    }
}

/// When a relayed connection last moved bytes, and how many moved (client side).
struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
    from_client: AtomicU64,
    to_client: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn touch(&self, read_from_client: Option<bool>, n: usize) {
        match read_from_client {
            Some(true) => self.from_client.fetch_add(n as u64, Ordering::Relaxed),
            Some(false) => self.to_client.fetch_add(n as u64, Ordering::Relaxed),
            None => 0,
        };
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn sent(&self) -> u64 {
        self.from_client.load(Ordering::Relaxed)
    }

    fn received(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }
}

/// An IO that records its activity (reads of the client side count as bytes sent).
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
    client: bool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.touch(Some(self.client), n);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.activity.touch(None, *n);
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
