//! HTTP/1.1 upgrades (WebSocket and the like): the request goes over a dedicated HTTP/1.1
//! connection, and once both sides have switched protocols the two connections are spliced.
//! Used on both hops: caller's proxy → peer proxy, and peer proxy → app.

use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;

use crate::body::{self, Body};
use crate::errors::ProxyError;
use crate::transport;

/// Sends an upgrade request to `addr` on a connection of its own (TLS with `tls`); on
/// `101 Switching Protocols`, splices `caller` (the upgrade of the connection the request came in
/// on) with the new one.
/// `guard` is held until the spliced connection ends (a concurrency-limit slot).
pub async fn forward<G: Send + 'static>(
    addr: SocketAddr,
    req: Request<Body>,
    caller: OnUpgrade,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    connect_timeout: std::time::Duration,
    guard: G,
) -> Result<Response<Body>, ProxyError> {
    let mut sender = transport::connect_http1(addr, connect_timeout, tls).await?;
    let mut rsp = sender
        .send_request(req)
        .await
        .map_err(|e| ProxyError::UpstreamReset {
            addr,
            reason: transport::error_chain(&e),
        })?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut rsp);
        tokio::spawn(async move {
            splice(caller, upstream).await;
            drop(guard);
        });
    }
    Ok(rsp.map(body::boxed))
}

/// Copies bytes both ways between two upgraded connections until both sides close.
async fn splice(a: OnUpgrade, b: OnUpgrade) {
    match tokio::try_join!(a, b) {
        Ok((a, b)) => {
            let mut a = hyper_util::rt::TokioIo::new(a);
            let mut b = hyper_util::rt::TokioIo::new(b);
            if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
    }
}
