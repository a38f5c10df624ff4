//! Opaque TCP into the inbound: which connections may reach the app as raw bytes.
//!
//! From a peer proxy, an opaque connection opens with the `WEFTTCP1` header naming a Service and
//! a port. It is relayed only when the header names this proxy's own Service, AuthorizationPolicy
//! allows the caller's connection, and the rate limit has a token; and then:
//!
//! - came straight to the inbound listener (standalone): only to a port the Service declares
//!   TCP, on a Service with no HTTP port — every port reaches the same `app-addr`, so opaque bytes
//!   to a Service that serves HTTP would reach its HTTP listener past HTTP policy;
//! - redirected (transparent): to the port the caller dialled. To a port this proxy's Service
//!   declares TCP, or one in MeshConfig `opaquePorts`, it is relayed as it is; otherwise through
//!   [`HttpGuard`], which refuses a connection
//!   whose first bytes an HTTP server would take for a request (they would reach the app with
//!   headers, such as `x-weft-client-identity`, that no proxy checked) and lets anything else
//!   through, so that a server-speaks-first protocol whose detection timed out on the caller's
//!   side still works. (The header names a Service port, which need not be the port dialled,
//!   so the dialled port decides.)
//!
//! A plaintext connection redirected to a permissive proxy that is not HTTP takes the same
//! checks without a header or an identity ([`Inbound::serve_plaintext_tcp`]).

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite};
use weft_runtime::server::Http;

use hyper_util::client::legacy::connect::Connect;

use super::Inbound;
use crate::detect::HttpGuard;
use crate::metrics::ReasonLabels;
use crate::routes::Protocol;
use crate::transport::{AppAt, OpaqueHeader};

/// Where an opaque connection goes: `app-addr`, or the address a redirected caller dialled.
#[derive(Clone, Copy, Debug)]
pub(super) enum AppTarget {
    Default(SocketAddr),
    Redirected(SocketAddr),
}

impl AppTarget {
    pub(super) fn addr(self) -> SocketAddr {
        match self {
            Self::Default(a) | Self::Redirected(a) => a,
        }
    }
}

impl<C> Inbound<C>
where
    C: Connect + AppAt + Clone + Send + Sync + 'static,
{
    /// An opaque connection from a peer proxy: its header, then the checks above, then the relay.
    pub(super) async fn serve_opaque<I>(
        &self,
        mut io: I,
        peer: SocketAddr,
        client: Option<&str>,
        http: &Http,
        target: AppTarget,
    ) where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let read = OpaqueHeader::read(&mut io);
        let header = match tokio::time::timeout_at(http.deadline(), read).await {
            Ok(Ok(header)) => header,
            Ok(Err(e)) => {
                self.refuse_opaque("bad-header");
                return tracing::info!(%peer, error = %e, "bad opaque transport header; connection closed");
            }
            Err(_) => {
                http.first_request_timed_out();
                return tracing::info!(%peer, "opaque transport header incomplete; connection closed");
            }
        };
        let guarded = match self.opaque_allowed(&header, client, target) {
            Ok(guarded) => guarded,
            Err(reason) => {
                self.refuse_opaque(reason.label());
                return tracing::info!(
                    %peer,
                    caller = client.unwrap_or("an unauthenticated caller"),
                    service = %header.service,
                    port = header.port,
                    "inbound TCP connection refused: {reason}"
                );
            }
        };
        let from = match target {
            AppTarget::Default(_) => self.apps.default().from,
            AppTarget::Redirected(a) => Some(crate::transport::app_source(a)),
        };
        self.relay(io, guarded, target.addr(), from).await;
    }

    /// A redirected plaintext connection that is not HTTP, to a permissive proxy: to the port
    /// it dialled, if AuthorizationPolicy lets an unauthenticated caller connect.
    pub(super) async fn serve_plaintext_tcp<I>(&self, io: I, peer: SocketAddr, dst: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let guarded = !undetected_port(&self.discovery.snapshot(), dst.port());
        let allowed = if !self.authorize(|p| p.allows_connection(None)) {
            Err(OpaqueRefusal::Forbidden)
        } else {
            self.rate_limit().map_err(|_| OpaqueRefusal::RateLimited)
        };
        if let Err(reason) = allowed {
            self.refuse_opaque(reason.label());
            return tracing::info!(%peer, port = dst.port(), "plaintext TCP connection refused: {reason}");
        }
        let from = Some(crate::transport::app_source(dst));
        self.relay(io, guarded, dst, from).await;
    }

    async fn relay<I>(&self, io: I, guarded: bool, app: SocketAddr, from: Option<IpAddr>)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let metrics = self.metrics.clone();
        if !guarded {
            return crate::tcp::inbound(io, &self.service, app, from, metrics).await;
        }
        let mut guard = HttpGuard::new(io);
        crate::tcp::inbound(&mut guard, &self.service, app, from, metrics).await;
        if guard.refused() {
            self.refuse_opaque("http-request");
            tracing::info!(port = app.port(), "inbound TCP connection closed: it sent an HTTP request to a port that serves HTTP, as opaque bytes");
        }
    }

    /// Whether an opaque connection with `header` from `client` may reach the app, and if so
    /// whether through an [`HttpGuard`].
    fn opaque_allowed(
        &self,
        header: &OpaqueHeader,
        client: Option<&str>,
        target: AppTarget,
    ) -> Result<bool, OpaqueRefusal> {
        if *header.service != *self.service {
            return Err(OpaqueRefusal::NotThisService);
        }
        let snapshot = self.discovery.snapshot();
        let Some(inbound) = snapshot.inbound.as_ref() else {
            return Err(OpaqueRefusal::NoConfig);
        };
        let declared_tcp = inbound
            .ports
            .iter()
            .any(|p| p.port == header.port && p.protocol == Protocol::Tcp);
        let guarded = match target {
            AppTarget::Default(_) => {
                let serves_http = inbound.ports.iter().any(|p| p.protocol != Protocol::Tcp);
                if !declared_tcp || serves_http {
                    return Err(OpaqueRefusal::NotATcpPort);
                }
                false
            }
            // The header's port is the caller's word: the port dialled decides.
            AppTarget::Redirected(dst) => !undetected_port(&snapshot, dst.port()),
        };
        if !self.authorize(|p| p.allows_connection(client)) {
            return Err(OpaqueRefusal::Forbidden);
        }
        self.rate_limit().map_err(|_| OpaqueRefusal::RateLimited)?;
        Ok(guarded)
    }

    pub(super) fn refuse_opaque(&self, reason: &'static str) {
        self.metrics
            .opaque_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// Whether bytes dialled to `port` of this pod go to the app unguarded: a port this proxy's
/// Service declares TCP, or one MeshConfig `opaquePorts` lists (the mesh's word that it is no
/// HTTP port). A pod that is an endpoint of other Services too is judged by this proxy's own.
fn undetected_port(snapshot: &crate::discovery::Snapshot, port: u16) -> bool {
    // The pod port a Service port reaches: its target port, else its own number.
    let declared_tcp = snapshot.inbound.as_ref().is_some_and(|i| {
        i.ports
            .iter()
            .any(|p| p.target_port.unwrap_or(p.port) == port && p.protocol == Protocol::Tcp)
    });
    declared_tcp || snapshot.mesh.opaque_ports.contains(&port)
}

/// Why an opaque connection was closed before reaching the app.
#[derive(Debug, thiserror::Error)]
enum OpaqueRefusal {
    #[error("its header names another Service than this proxy's")]
    NotThisService,
    #[error("the port is not one this Service declares TCP (or the Service serves HTTP too, on the same app-addr)")]
    NotATcpPort,
    #[error("this proxy has no config for its own Service yet")]
    NoConfig,
    #[error("AuthorizationPolicy does not allow the caller")]
    Forbidden,
    #[error("the Service's rate limit is reached")]
    RateLimited,
}

impl OpaqueRefusal {
    /// The `reason` label of `weft_proxy_inbound_opaque_refused_total`.
    fn label(&self) -> &'static str {
        match self {
            Self::NotThisService => "not-this-service",
            Self::NotATcpPort => "not-a-tcp-port",
            Self::NoConfig => "no-config",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate-limited",
        }
    }
}
