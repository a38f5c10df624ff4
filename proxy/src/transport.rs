//! The proxy-to-proxy transport.
//!
//! Everything between two sidecars goes to the peer's inbound listener over one of three
//! connection kinds, told apart by the first bytes the caller sends:
//!
//! - **HTTP/2** (the h2 preface): every HTTP request — HTTP/1.1, HTTP/2 and gRPC alike — travels
//!   as a stream on one long-lived, multiplexed HTTP/2 connection per peer. An HTTP/1.1 request
//!   carries [`ORIG_PROTO_HEADER`] so the peer hands it to its app as HTTP/1.1 again. One
//!   connection per peer means no connection setup (and, with mTLS, no handshake) per request,
//!   and no head-of-line blocking between requests.
//! - **Opaque TCP** ([`OPAQUE_MAGIC`] and a small header): a dedicated connection per proxied TCP
//!   connection, bytes copied both ways with half-close preserved.
//! - **HTTP/1.1**: a dedicated connection for a request that upgrades (WebSocket), which cannot
//!   ride an HTTP/2 stream.
//!
//! [`dial`] is the single place a connection to a peer is made: mTLS wraps it. How the pooled
//! connection to a peer and the inbound's connection to the app are opened is the [`Connect`]
//! seam (`transport/connect.rs`), which component tests fill with in-memory streams.

mod connect;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::errors::ProxyError;
use weft_runtime::body::Body;
use weft_runtime::server::read_prefix;
use weft_runtime::tls::Tls;

pub use connect::{
    client_config, handshake, AppAt, AppConnector, Connect, Connecting, PeerConnector,
};

/// A connection to a peer proxy: mutual TLS once this proxy has a certificate, plain TCP before.
pub type PeerIo = tokio_util::either::Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
/// How long a TLS handshake with a peer may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to a peer proxy at `addr` that must present `identity`: over mutual TLS when this
/// proxy has a certificate (`tls`), else plain TCP. The one place a peer connection is made.
pub async fn dial_peer(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<PeerIo, ProxyError> {
    let stream = dial(addr, timeout).await?;
    let Some(config) = tls else {
        return Ok(PeerIo::Left(stream));
    };
    let fail = |reason: String| ProxyError::TlsFailed { addr, reason };
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok(tls)) => Ok(PeerIo::Right(tls)),
        Ok(Err(e)) => Err(fail(weft_runtime::error_chain(&e))),
        Err(_) => Err(fail(format!(
            "handshake timed out after {HANDSHAKE_TIMEOUT:?}"
        ))),
    }
}

/// Marks an HTTP/1.x request carried over the proxies' HTTP/2 connection.
pub const ORIG_PROTO_HEADER: &str = "weft-orig-proto";
/// The first bytes of an opaque TCP connection between proxies.
pub const OPAQUE_MAGIC: &[u8; 8] = b"WEFTTCP1";
const H2_PREFACE_START: &[u8; 8] = b"PRI * HT";
pub use crate::policy::DEFAULT_CONNECT_TIMEOUT;

/// Opens a TCP connection (to a peer, through [`dial_peer`], or to the local app).
pub async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    dial_from(addr, timeout, None).await
}

/// The address the inbound connects to its app from when it reaches the app at one of the pod's
/// own non-loopback addresses (a redirected connection's original destination): `weft-proxy
/// init` lets connections from it through (out on `lo`), where it sends the proxy's other
/// connections to its own pod back into its inbound listener.
pub fn app_source(app: SocketAddr) -> IpAddr {
    match app {
        SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 6)),
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    }
}

/// [`dial`], from the local address `from` when given.
pub async fn dial_from(
    addr: SocketAddr,
    timeout: Duration,
    from: Option<IpAddr>,
) -> Result<TcpStream, ProxyError> {
    let fail = |reason: String| ProxyError::ConnectFailed { addr, reason };
    let connect = async {
        let Some(from) = from else {
            return TcpStream::connect(addr).await;
        };
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(from, 0))?;
        socket.connect(addr).await
    };
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| ProxyError::ConnectTimeout {
            addr,
            after: timeout,
        })?
        .map_err(|e| fail(e.to_string()))?;
    // Latency matters more than packet count on every hop of the mesh.
    stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
    Ok(stream)
}

/// A pooled HTTP/2 connection to one peer, opened through a [`Connect`] on first use and again
/// after it closes.
#[derive(Debug)]
pub struct PeerConn {
    addr: SocketAddr,
    /// The SPIFFE ID the peer must present.
    identity: String,
    /// The pooled (mTLS) connection.
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    dialing: tokio::sync::Mutex<()>,
}

impl PeerConn {
    pub fn new(addr: SocketAddr, identity: String) -> Self {
        Self {
            addr,
            identity,
            h2: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    /// The client config for this peer, for the connections of its own that an upgrade or
    /// opaque TCP makes. Traffic between proxies is always mTLS: a proxy without its
    /// certificate yet sends nothing.
    pub fn tls_config(&self, tls: &Tls) -> Result<Arc<rustls::ClientConfig>, ProxyError> {
        connect::client_config(tls, self.addr, &self.identity)
    }

    /// Whether a pooled connection is open (a request need not wait for one).
    pub fn is_connected(&self) -> bool {
        self.cached().is_some()
    }

    fn cached(&self) -> Option<http2::SendRequest<Body>> {
        let guard = self.h2.lock().ok()?;
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    async fn sender(
        &self,
        timeout: Duration,
        connector: &dyn Connect,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        if let Some(s) = self.cached() {
            return Ok(s);
        }
        // One dial at a time per peer: concurrent requests wait for it instead of each dialing.
        let _dialing = self.dialing.lock().await;
        if let Some(s) = self.cached() {
            return Ok(s);
        }
        let sender = connector
            .connect(self.addr, &self.identity, timeout)
            .await?;
        if let Ok(mut slot) = self.h2.lock() {
            *slot = Some(sender.clone());
        }
        Ok(sender)
    }

    /// Sends one request as a stream on the peer's HTTP/2 connection, made through
    /// `connector` when none is open. The error says whether the request may have reached the
    /// peer.
    pub async fn send(
        &self,
        req: http::Request<Body>,
        connect_timeout: Duration,
        connector: &dyn Connect,
    ) -> Result<http::Response<Incoming>, SendError> {
        let not_sent = |error| SendError { error, sent: false };
        let mut sender = self
            .sender(connect_timeout, connector)
            .await
            .map_err(|e| match e {
                ProxyError::ConnectFailed { addr, reason } => ProxyError::ConnectFailed {
                    addr,
                    reason: format!("{reason}; is the peer's sidecar running?"),
                },
                other => other,
            })
            .map_err(not_sent)?;
        sender.ready().await.map_err(|e| not_sent(self.reset(&e)))?;
        sender.try_send_request(req).await.map_err(|mut e| {
            let unsent = e.take_message().is_some();
            let error = e.into_error();
            SendError {
                sent: !(unsent || is_refused_stream(&error)),
                error: self.reset(&error),
            }
        })
    }

    fn reset(&self, e: &hyper::Error) -> ProxyError {
        ProxyError::UpstreamReset {
            addr: self.addr,
            reason: weft_runtime::error_chain(e),
        }
    }
}

/// A failed [`PeerConn::send`].
#[derive(Debug)]
pub struct SendError {
    pub error: ProxyError,
    /// False when the request certainly did not reach the peer's app (connect or TLS failure,
    /// a connection that closed first, a stream the peer refused): safe to send again.
    pub sent: bool,
}

/// HTTP/2 REFUSED_STREAM: the peer did not process the stream at all (RFC 9113, 8.7).
fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

/// Opens a dedicated HTTP/1.1 connection, for a request that upgrades: to a peer proxy (with
/// its TLS config once this proxy has a certificate), or to the local app.
pub async fn connect_http1(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    from: Option<IpAddr>,
) -> Result<http1::SendRequest<Body>, ProxyError> {
    let stream = match tls {
        Some(_) => dial_peer(addr, timeout, tls).await?,
        None => PeerIo::Left(dial_from(addr, timeout, from).await?),
    };
    let (sender, conn) =
        http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::ConnectFailed {
                addr,
                reason: e.to_string(),
            })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upgraded peer connection closed");
        }
    });
    Ok(sender)
}

/// The header of an opaque TCP connection: which service and port the bytes are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueHeader {
    pub port: u16,
    pub service: String,
}

const MAX_OPAQUE_NAME: usize = 512;

impl OpaqueHeader {
    fn encode(&self) -> Vec<u8> {
        let name = &self.service.as_bytes()[..self.service.len().min(MAX_OPAQUE_NAME)];
        let mut buf = Vec::with_capacity(12 + name.len());
        buf.extend_from_slice(OPAQUE_MAGIC);
        buf.extend_from_slice(&self.port.to_be_bytes());
        buf.extend_from_slice(&(name.len() as u16).to_be_bytes());
        buf.extend_from_slice(name);
        buf
    }

    /// Reads the rest of a header whose magic has been consumed already.
    pub async fn read<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<Self> {
        let port = io.read_u16().await?;
        let len = usize::from(io.read_u16().await?);
        if len > MAX_OPAQUE_NAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("opaque header name of {len} bytes (at most {MAX_OPAQUE_NAME})"),
            ));
        }
        let mut name = vec![0; len];
        io.read_exact(&mut name).await?;
        let service = String::from_utf8(name).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "opaque header name not UTF-8",
            )
        })?;
        Ok(Self { port, service })
    }
}

/// Opens an opaque TCP connection to a peer and sends its header.
pub async fn connect_opaque(
    addr: SocketAddr,
    timeout: Duration,
    header: &OpaqueHeader,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<PeerIo, ProxyError> {
    let mut stream = dial_peer(addr, timeout, tls).await?;
    stream
        .write_all(&header.encode())
        .await
        .map_err(|e| ProxyError::ConnectFailed {
            addr,
            reason: e.to_string(),
        })?;
    Ok(stream)
}

/// What a connection to the inbound listener carries, judged by its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    Http2,
    Opaque,
    Http1,
}

/// Reads the first 8 bytes of a connection to tell what it carries. Returns them too, to be
/// replayed with [`Prefixed`](weft_runtime::server::Prefixed) (except the opaque magic, which is consumed).
pub async fn detect<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<(Detected, Bytes)> {
    let mut buf = [0u8; 8];
    // An HTTP/1 request line can be shorter than 8 bytes only if malformed.
    let n = read_prefix(io, &mut buf, &[H2_PREFACE_START, OPAQUE_MAGIC]).await?;
    let seen = &buf[..n];
    Ok(if seen == H2_PREFACE_START {
        (Detected::Http2, Bytes::copy_from_slice(seen))
    } else if seen == OPAQUE_MAGIC {
        (Detected::Opaque, Bytes::new())
    } else {
        (Detected::Http1, Bytes::copy_from_slice(seen))
    })
}

/// A gRPC status: its message and code, then the causes of a transport error (which say what
/// failed: refused, TLS, ...).
pub fn status_text(s: &tonic::Status) -> String {
    use std::error::Error;
    let mut out = format!("{} ({:?})", s.message(), s.code());
    if let Some(cause) = s.source() {
        out.push_str(": ");
        out.push_str(&weft_runtime::error_chain(cause));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detects_each_connection_kind() {
        let mut h2 = &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..];
        assert_eq!(detect(&mut h2).await.unwrap().0, Detected::Http2);
        let mut h1 = &b"GET / HTTP/1.1\r\n"[..];
        let (kind, prefix) = detect(&mut h1).await.unwrap();
        assert_eq!(kind, Detected::Http1);
        assert_eq!(&prefix[..], b"GET / HT");
        let mut short = &b"G"[..];
        assert_eq!(detect(&mut short).await.unwrap().0, Detected::Http1);
    }

    #[tokio::test]
    async fn opaque_header_round_trips() {
        let h = OpaqueHeader {
            port: 6379,
            service: "cache.shop".into(),
        };
        let bytes = h.encode();
        let mut io = &bytes[..];
        assert_eq!(detect(&mut io).await.unwrap().0, Detected::Opaque);
        assert_eq!(OpaqueHeader::read(&mut io).await.unwrap(), h);
    }

    #[tokio::test]
    async fn oversized_opaque_header_is_refused() {
        let mut bytes = OPAQUE_MAGIC.to_vec();
        bytes.extend_from_slice(&1u16.to_be_bytes());
        bytes.extend_from_slice(&60000u16.to_be_bytes());
        let mut io = &bytes[8..];
        assert!(OpaqueHeader::read(&mut io).await.is_err());
    }
}
