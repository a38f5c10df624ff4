//! How connections to a peer proxy and to the local app are made: the seam between the request
//! path and the network.
//!
//! The outbound reaches a peer through a [`Connect`], called once per *new* pooled connection
//! (`PeerConn` keeps it and multiplexes every request on it): in production [`PeerConnector`],
//! TCP then mutual TLS then the HTTP/2 handshake ([`handshake`]). The inbound reaches the app
//! through a hyper connector, [`AppConnector`] (TCP to `app-addr`) in production. Component
//! tests put in-memory streams behind both, so that the request path runs with no sockets, no
//! TLS and no control plane. Upgrades and opaque TCP make their own connections
//! (`transport::connect_http1`, `transport::connect_opaque`) and are not behind this seam.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::errors::ProxyError;
use weft_runtime::body::Body;
use weft_runtime::tls::Tls;

/// A boxed, sendable future, as a [`Connect`] returns.
pub type Connecting<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens the HTTP/2 connection that carries requests to one peer proxy.
pub trait Connect: Send + Sync {
    /// A connection to the peer at `addr`, which must present `identity`, made within
    /// `timeout` (the TCP connect; the TLS handshake has its own bound).
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        identity: &'a str,
        timeout: Duration,
    ) -> Connecting<'a, Result<http2::SendRequest<Body>, ProxyError>>;
}

/// The production [`Connect`]: TCP, mutual TLS with this proxy's current credentials, HTTP/2.
pub struct PeerConnector {
    tls: Arc<Tls>,
}

impl PeerConnector {
    pub fn new(tls: Arc<Tls>) -> Self {
        Self { tls }
    }
}

impl Connect for PeerConnector {
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        identity: &'a str,
        timeout: Duration,
    ) -> Connecting<'a, Result<http2::SendRequest<Body>, ProxyError>> {
        Box::pin(async move {
            let config = client_config(&self.tls, addr, identity)?;
            let stream = super::dial_peer(addr, timeout, Some(config)).await?;
            handshake(stream, addr).await
        })
    }
}

/// The client config for a peer at `addr` that must present `identity`. Traffic between
/// proxies is always mTLS: a proxy without its certificate yet sends nothing.
pub fn client_config(
    tls: &Tls,
    addr: SocketAddr,
    identity: &str,
) -> Result<Arc<rustls::ClientConfig>, ProxyError> {
    tls.client(identity).ok_or_else(|| ProxyError::TlsFailed {
        addr,
        reason: "this proxy has no certificate yet (is the control plane reachable?)".into(),
    })
}

/// The HTTP/2 handshake over an open (and, in production, TLS) stream to the peer at `addr`,
/// with the settings every proxy-to-proxy connection uses; the connection is driven by a task
/// of its own until it closes.
pub async fn handshake<I>(io: I, addr: SocketAddr) -> Result<http2::SendRequest<Body>, ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::ConnectFailed {
            addr,
            reason: e.to_string(),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "peer connection closed");
        }
    });
    Ok(sender)
}

/// Connects the inbound's pooled clients to the app, whatever the request's authority says:
/// the authority is preserved for the app, the address is always `app-addr`.
#[derive(Clone)]
pub struct AppConnector {
    addr: SocketAddr,
    /// The local address to connect from (`super::app_source`), for an app reached at one of
    /// the pod's own addresses.
    from: Option<std::net::IpAddr>,
}

impl AppConnector {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, from: None }
    }
}

/// A connector to the app that can be pointed at another of its addresses: a redirected
/// connection goes to the port its caller dialled, on the pod's own address.
pub trait AppAt {
    fn at(&self, addr: SocketAddr) -> Self;
}

impl AppAt for AppConnector {
    fn at(&self, addr: SocketAddr) -> Self {
        Self {
            addr,
            from: Some(super::app_source(addr)),
        }
    }
}

impl tower::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ProxyError;
    type Future = Connecting<'static, Result<Self::Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, from) = (self.addr, self.from);
        Box::pin(async move {
            match super::dial_from(addr, super::DEFAULT_CONNECT_TIMEOUT, from).await {
                Ok(stream) => Ok(TokioIo::new(stream)),
                Err(ProxyError::ConnectFailed { addr, reason }) => Err(ProxyError::ConnectFailed {
                    addr,
                    reason: format!("{reason}; is the app listening on app-addr?"),
                }),
                Err(e) => Err(e),
            }
        })
    }
}
