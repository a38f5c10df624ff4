//! One connection to the API listener: plain HTTP, or TLS (with an optional client certificate
//! that may say who calls), told apart by the first byte, within the listener's first-request
//! deadline; then the API's router for each request, with what is known of the caller.

use std::sync::Arc;

use weft_runtime::server::Accepted;

use super::{Api, Conn};
use crate::ca::Ca;
use crate::grpc_tls::ServingIdentity;

/// The first byte of a TLS handshake record; no HTTP method starts with it.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serves one connection accepted by the API listener's accept loop.
pub async fn serve(api: Arc<Api>, serving: Arc<ServingIdentity>, ca: Arc<Ca>, conn: Accepted) {
    let Accepted { stream, peer, http } = conn;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(http.deadline(), stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(_) => return,
        Err(_) => return http.first_request_timed_out(),
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let info = Conn::plain(peer);
        let svc = hyper::service::service_fn(move |req| api.clone().handle(info.clone(), req));
        return http.serve(stream, svc).await;
    }
    let acceptor = match serving.api_acceptor(&ca.trust_anchors_pem()) {
        Ok(a) => a,
        Err(e) => return tracing::error!(error = %e, "API TLS"),
    };
    let tls = match tokio::time::timeout_at(http.deadline(), acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "API TLS handshake failed"),
        Err(_) => {
            http.first_request_timed_out();
            return tracing::debug!(%peer, "API TLS handshake timed out");
        }
    };
    let client_identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(weft_runtime::tls::spiffe_id);
    let info = Conn {
        peer,
        client_identity,
    };
    let svc = hyper::service::service_fn(move |req| api.clone().handle(info.clone(), req));
    http.serve(tls, svc).await;
}
