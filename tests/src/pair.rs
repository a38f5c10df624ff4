//! The most common mesh of the tests, put together from [`Mesh::builder`] and
//! [`Sidecar::builder`]: a caller and a callee, each behind its sidecar.

use std::net::SocketAddr;

use crate::mesh::{service_yaml, Mesh};
use crate::sidecar::{Sidecar, NO_APP};

/// A client sidecar (`shop/frontend`, with an `upstream` listener for `orders.shop:8080`) and a
/// server sidecar (`shop/orders`) in front of `app`, the Service declared with `protocol`; both
/// ready. Returns (mesh, client, server).
pub async fn pair(protocol: &str, app: SocketAddr) -> (Mesh, Sidecar, Sidecar) {
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let mut server = Sidecar::builder().bind().await;
    let mesh = Mesh::builder()
        .config(service_yaml("shop", "orders", protocol, &[server.inbound]))
        .start()
        .await;
    server.start(&mesh, "shop", "orders", app);
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    (mesh, client, server)
}
