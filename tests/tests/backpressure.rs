//! A proxy that stops reading its config stream costs the control plane one snapshot, is cut
//! off when its ACK is overdue, and never holds up the other proxies.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_proto::discovery::{self as pb, discovery_client::DiscoveryClient};
use weft_tests::apps::HttpApp;
use weft_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_stops_reading_is_cut_off_without_holding_up_others() {
    let app = HttpApp::start("orders").await;
    let mut server = Sidecar::builder().bind().await;
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let orders = service_yaml("shop", "orders", "HTTP", &[server.inbound]);
    let yaml = |n: u16| {
        // Each change moves the endpoint of another service: a new generation for everyone.
        let churn: std::net::SocketAddr = ([127, 0, 0, 2], 1000 + n).into();
        format!(
            "{orders}{}",
            service_yaml("shop", "churn", "HTTP", &[churn])
        )
    };
    let ack_timeout = Duration::from_secs(2);
    let mesh = Mesh::builder()
        .config(yaml(0))
        .ack_timeout(ack_timeout)
        .start()
        .await;
    server.start(&mesh, "shop", "orders", app.addr);
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;

    // The stalled proxy subscribes, then never reads (so never ACKs) a response.
    let mut raw = DiscoveryClient::new(mesh.channel_as("shop", "stalled").0);
    let (tx, rx) = mpsc::channel(4);
    let node = pb::Node {
        id: "stalled".into(),
        namespace: "shop".into(),
        service_account: "stalled".into(),
        service: "stalled".into(),
        inbound_addr: "127.0.0.1:1".into(),
        ..Default::default()
    };
    let hello = pb::DiscoveryRequest {
        node: Some(node),
        subscribe: vec!["orders.shop".into()],
        ..Default::default()
    };
    tx.send(hello).await.unwrap();
    let _unread = raw.stream(ReceiverStream::new(rx)).await.unwrap();
    let stalled_at = Instant::now();
    eventually(
        "the stalled proxy to connect",
        Duration::from_secs(5),
        || async {
            mesh.proxies()
                .iter()
                .any(|p| p.id == "stalled")
                .then_some(())
        },
    )
    .await;

    // Changes keep reaching the healthy proxy promptly while the other one stalls.
    let mut n = 1;
    while stalled_at.elapsed() < ack_timeout {
        mesh.write_config(&yaml(n));
        let want = (u64::from(n) + 1).to_string();
        let t = Instant::now();
        eventually(
            "the healthy proxy to get the change",
            Duration::from_secs(5),
            || async { (client.version() == want).then_some(()) },
        )
        .await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "change {n} took {:?}",
            t.elapsed()
        );
        n += 1;
    }
    eventually(
        "the stalled stream to be closed",
        ack_timeout * 3,
        || async { (!mesh.proxies().iter().any(|p| p.id == "stalled")).then_some(()) },
    )
    .await;
    let metrics = mesh.state().metrics.encode();
    assert!(
        metrics.contains("weft_slow_streams_closed_total 1"),
        "{metrics}"
    );
    assert!(n > 3, "only {n} changes were made during the stall");
    assert_eq!(
        get(&http1_client(), client.upstreams[0], "orders", "/")
            .await
            .unwrap()
            .status,
        200
    );
}
