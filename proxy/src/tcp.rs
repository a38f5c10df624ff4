//! Opaque TCP: services whose protocol is TCP are forwarded byte for byte, both ways, with
//! half-close preserved (one side's FIN is passed on while the other direction keeps flowing).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::discovery::Discovery;
use crate::errors::ProxyError;
use crate::metrics::{Metrics, TcpLabels, INBOUND, OUTBOUND};
use crate::routes::ServiceKey;
use crate::transport::{self, OpaqueHeader};

/// Carries one app connection to an endpoint of `service` through its proxy.
pub async fn outbound(
    mut app: TcpStream,
    service: ServiceKey,
    port: u16,
    discovery: Arc<Discovery>,
    metrics: Arc<Metrics>,
    tls: Arc<crate::tls::Tls>,
) {
    let labels = TcpLabels {
        direction: OUTBOUND,
        service: service.to_string(),
    };
    let peer = match connect(&service, port, &discovery, &tls).await {
        Ok(peer) => peer,
        Err(e) => {
            // Nothing to answer on a raw connection: closing it is the error.
            tracing::info!(%service, error = %e, "outbound TCP connection refused");
            return;
        }
    };
    relay(&mut app, peer, &labels, &metrics).await;
}

async fn connect(
    service: &ServiceKey,
    port: u16,
    discovery: &Discovery,
    tls: &crate::tls::Tls,
) -> Result<transport::PeerIo, ProxyError> {
    let svc = discovery.resolve(service).await?;
    let backend = svc
        .default_rule
        .split
        .pick()
        .ok_or_else(|| ProxyError::NoEndpoints(format!("{service} has no backend")))?;
    let endpoint = backend
        .balancer
        .pick()
        .ok_or_else(|| ProxyError::NoEndpoints(format!("{} has no endpoints", backend.key)))?;
    let header = OpaqueHeader {
        port,
        service: service.to_string(),
    };
    let config = Some(endpoint.conn.tls_config(tls)?);
    transport::connect_opaque(
        endpoint.addr,
        transport::DEFAULT_CONNECT_TIMEOUT,
        &header,
        config,
    )
    .await
}

/// Carries one opaque connection from a peer proxy to the local app.
pub async fn inbound<I>(
    mut peer: I,
    header: OpaqueHeader,
    app_addr: SocketAddr,
    metrics: Arc<Metrics>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let labels = TcpLabels {
        direction: INBOUND,
        service: header.service.clone(),
    };
    match transport::dial(app_addr, transport::DEFAULT_CONNECT_TIMEOUT).await {
        Ok(app) => relay(&mut peer, app, &labels, &metrics).await,
        Err(e) => {
            tracing::info!(service = %header.service, error = %e, "inbound TCP: app unreachable")
        }
    }
}

/// Copies both ways until both directions have closed, and counts it.
async fn relay<A, B>(client: &mut A, mut server: B, labels: &TcpLabels, metrics: &Metrics)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    metrics.tcp_opened.get_or_create(labels).inc();
    metrics.tcp_open.get_or_create(labels).inc();
    let result = tokio::io::copy_bidirectional(client, &mut server).await;
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
