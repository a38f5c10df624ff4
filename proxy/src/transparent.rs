//! The app's connections that iptables redirected to the outbound listener (`weft-proxy init`):
//! where each was going, and what it speaks (docs/interception.md).
//!
//! For each connection: its original destination (`original_dst`), asked of the control plane
//! as an address the first time (`Discovery::resolve_address`): a Service's cluster IP and
//! port, one endpoint of a Service (a pod IP and port, direct addressing), or nothing the mesh
//! knows, which is passed through as plain TCP — as is one that cannot be resolved (the control
//! plane unreachable): a meshed destination refuses plaintext under `mtls: strict`, so this
//! fails closed there and keeps unmeshed destinations reachable. A Service port declared TCP, and a port in
//! MeshConfig `opaquePorts`, are relayed as opaque TCP at once; any other connection's first
//! bytes are read to detect HTTP/1.1 or HTTP/2 prior knowledge (`detect`), which are then
//! served by [`Outbound`] like requests from `upstream` listeners, and anything else — or a
//! client that sends nothing within [`DETECT_TIMEOUT`] — is opaque TCP.
//!
//! A connection that came straight to the listener (no original destination) is not this
//! file's: the listener routes its requests by authority, as in explicit mode. One that the
//! proxy made itself, redirected back because it runs under another UID than `init` skips, is
//! refused (`transparent/own_traffic.rs`).

mod own_traffic;

use std::net::SocketAddr;
use std::sync::Arc;

use weft_runtime::server::{Accepted, Prefixed};

use crate::access_log::Entry;
use crate::detect::{self, Protocol, DETECT_TIMEOUT};
use crate::discovery::Destination;
use crate::metrics::OUTBOUND;
use crate::outbound::{Outbound, Target};
use crate::routes;
use crate::tcp;

/// Serves one connection redirected to the outbound listener, which was going to `dst`.
pub async fn outbound(outbound: Arc<Outbound>, conn: Accepted, dst: SocketAddr) {
    let Accepted {
        mut stream,
        peer,
        http,
    } = conn;
    let metrics = outbound.metrics.clone();
    let counts = &metrics.interception;
    if outbound.own_traffic.looping(peer, dst) {
        return counts.redirected(OUTBOUND, "loop");
    }
    let (service, port, endpoint) = match outbound.discovery.resolve_address(dst).await {
        Ok(Destination::Service {
            service,
            port,
            endpoint,
        }) => (service, port, endpoint),
        Ok(Destination::Passthrough) => {
            counts.redirected(OUTBOUND, "passthrough");
            tracing::debug!(%peer, %dst, "not in the mesh; passed through");
            return passthrough(&outbound, stream, peer, dst).await;
        }
        // The control plane unreachable: passing through is safe, as a meshed destination
        // refuses plaintext under `strict`, and keeps unmeshed ones reachable.
        Err(e) if outbound.discovery.last_error().is_some() => {
            counts.redirected(OUTBOUND, "unresolved");
            tracing::info!(%peer, %dst, error = %e, "the destination could not be resolved; passed through");
            return passthrough(&outbound, stream, peer, dst).await;
        }
        // Any other failure (too many addresses waiting for an answer, no answer in time):
        // this connection fails, and nothing goes out in plaintext that should not.
        Err(e) => {
            counts.redirected(OUTBOUND, "refused");
            return tracing::info!(%peer, %dst, error = %e, reason = e.reason(), "redirected connection closed: its destination could not be resolved");
        }
    };
    counts.redirected(
        OUTBOUND,
        if endpoint.is_some() {
            "endpoint"
        } else {
            "service"
        },
    );
    let key = service.key.clone();
    let declared_tcp = service
        .port(Some(port))
        .is_some_and(|p| p.protocol == routes::Protocol::Tcp);
    let opaque_port = {
        let opaque = &outbound.discovery.snapshot().mesh.opaque_ports;
        opaque.contains(&dst.port()) || opaque.contains(&port)
    };
    drop(service);
    let (protocol, prefix) = if declared_tcp || opaque_port {
        let decided = if declared_tcp {
            "tcp-port"
        } else {
            "opaque-port"
        };
        counts.decided(OUTBOUND, "tcp", decided, None);
        (Protocol::Tcp, bytes::Bytes::new())
    } else {
        match detect::detect(&mut stream, DETECT_TIMEOUT).await {
            Ok(d) => {
                let decided = if d.timed_out { "timeout" } else { "detected" };
                counts.decided(OUTBOUND, d.protocol.label(), decided, Some(d.elapsed));
                if d.timed_out {
                    tracing::debug!(%peer, %dst, "the app sent nothing to detect within {DETECT_TIMEOUT:?}; relayed as TCP");
                }
                (d.protocol, d.prefix)
            }
            Err(e) => {
                return tracing::debug!(%peer, %dst, error = %e, "redirected connection failed before its first bytes")
            }
        }
    };
    let io = Prefixed::new(prefix, stream);
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let target = Target::Fixed {
                service: key,
                port,
                endpoint,
            };
            let svc =
                hyper::service::service_fn(move |req| outbound.clone().handle(target.clone(), req));
            http.serve(io, svc).await;
        }
        Protocol::Tcp => {
            let dest = tcp::Dest {
                service: key,
                port,
                endpoint,
            };
            let (d, t) = (outbound.discovery.clone(), outbound.tls.clone());
            tcp::outbound(io, dest, d, metrics, t).await;
        }
    }
}

/// Relays `stream` to `dst` as it is, and logs the connection when it ends.
async fn passthrough(
    outbound: &Outbound,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
) {
    let start = std::time::SystemTime::now();
    tcp::passthrough(stream, dst, outbound.metrics.clone()).await;
    if outbound.discovery.access_log_on() {
        let entry = Entry::connection(OUTBOUND, tcp::PASSTHROUGH, dst, peer, start);
        outbound.access_log.log(&entry);
    }
}

pub use own_traffic::OwnTraffic;
