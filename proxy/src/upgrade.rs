//! HTTP/1.1 upgrades (WebSocket and the like): the request goes over a dedicated HTTP/1.1
//! connection, and once both sides have switched protocols the two connections are spliced.
//! Used on both hops: caller's proxy → peer proxy, and peer proxy → app.
//!
//! Which protocols a request may switch to is the `allowed-upgrades` setting ([`Upgrades`]):
//! WebSocket by default. Policy (authorization, routing) applies to the upgrade request only;
//! what flows afterwards is the app's protocol, which the proxies do not look into. So an
//! upgrade to anything that carries HTTP again would be a tunnel past policy: `h2c` is never
//! an upgrade (the request is served as plain HTTP/1.1, its `Upgrade` dropped, as Envoy and
//! Istio do), and any other protocol not on the list is refused with 403 `forbidden`.

use std::net::SocketAddr;

use http::request::Parts;
use http::{header, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;

use crate::errors::ProxyError;
use crate::transport;
use weft_runtime::body::{self, Body};

/// The protocols requests may upgrade to, lowercase (`websocket`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Upgrades(pub Vec<String>);

impl Default for Upgrades {
    fn default() -> Self {
        Self(vec!["websocket".into()])
    }
}

/// What a request asks of its connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Switch {
    /// An ordinary request (including one whose `Upgrade: h2c` was dropped).
    Stay,
    /// An allowed upgrade: it needs a connection of its own.
    Upgrade,
}

impl Upgrades {
    /// Decides an upgrade request (HTTP/1.1 `Upgrade` with `Connection: upgrade`); drops an
    /// `h2c` upgrade's headers so it is served as the HTTP/1.1 request it also is.
    pub fn check(&self, parts: &mut Parts) -> Result<Switch, ProxyError> {
        if !crate::headers::is_upgrade(parts) {
            return Ok(Switch::Stay);
        }
        let offered = parts
            .headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let protocols = || {
            offered
                .split(',')
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
        };
        if protocols().any(|p| p.eq_ignore_ascii_case("h2c")) {
            // RFC 7540 §3.2: a server may ignore the upgrade; the request itself stands.
            parts.headers.remove(header::UPGRADE);
            parts.headers.remove("http2-settings");
            return Ok(Switch::Stay);
        }
        // `websocket`, or `WebSocket/13`: the protocol name before any version.
        let name = |p: &str| p.split('/').next().unwrap_or(p).to_ascii_lowercase();
        match protocols().find(|p| !self.0.contains(&name(p))) {
            None => Ok(Switch::Upgrade),
            Some(p) => Err(ProxyError::Forbidden(format!(
                "upgrade to {p:?} is not allowed (allowed-upgrades: {})",
                self.0.join(",")
            ))),
        }
    }
}

/// Sends an upgrade request to `addr` on a connection of its own (TLS with `tls`); on
/// `101 Switching Protocols`, splices `caller` (the upgrade of the connection the request came in
/// on) with the new one.
/// `guard` is held until the spliced connection ends (a concurrency-limit slot); `from`, the
/// local address to connect from (`transport::app_source`), when given.
pub async fn forward<G: Send + 'static>(
    addr: SocketAddr,
    req: Request<Body>,
    caller: OnUpgrade,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    connect_timeout: std::time::Duration,
    guard: G,
    from: Option<std::net::IpAddr>,
) -> Result<Response<Body>, ProxyError> {
    let mut sender = transport::connect_http1(addr, connect_timeout, tls, from).await?;
    let mut rsp = sender
        .send_request(req)
        .await
        .map_err(|e| ProxyError::UpstreamReset {
            addr,
            reason: weft_runtime::error_chain(&e),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(connection: &str, upgrade: &str) -> Parts {
        Request::get("/")
            .header("connection", connection)
            .header("upgrade", upgrade)
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn websocket_upgrades_h2c_stays_and_the_rest_is_refused() {
        let allowed = Upgrades::default();
        let mut ws = parts("Upgrade", "websocket");
        assert_eq!(allowed.check(&mut ws).unwrap(), Switch::Upgrade);
        let mut versioned = parts("upgrade", "WebSocket/13");
        assert_eq!(allowed.check(&mut versioned).unwrap(), Switch::Upgrade);

        for offered in ["h2c", "websocket, h2c", "H2C"] {
            let mut h2c = parts("Upgrade, HTTP2-Settings", offered);
            assert_eq!(allowed.check(&mut h2c).unwrap(), Switch::Stay, "{offered}");
            assert!(!h2c.headers.contains_key("upgrade"), "{offered}");
            assert!(!h2c.headers.contains_key("http2-settings"), "{offered}");
        }

        for offered in ["tunnel", "websocket, tunnel", "connect-udp"] {
            let err = allowed.check(&mut parts("upgrade", offered)).unwrap_err();
            assert!(matches!(err, ProxyError::Forbidden(_)), "{offered}: {err}");
        }
        let both = Upgrades(vec!["websocket".into(), "tunnel".into()]);
        let mut tunnel = parts("upgrade", "tunnel");
        assert_eq!(both.check(&mut tunnel).unwrap(), Switch::Upgrade);
        // Without `Connection: upgrade` it is no upgrade request at all.
        let mut plain = parts("keep-alive", "tunnel");
        assert_eq!(allowed.check(&mut plain).unwrap(), Switch::Stay);
    }
}
