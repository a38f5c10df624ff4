//! The discovery stream below end to end: the real `DiscoveryService` served by tonic over
//! in-memory streams, each connection carrying the [`PeerInfo`] the TLS listener would put on
//! its requests (a chain issued by a real `Ca`, or none), with the real `State` behind it. No
//! sockets and no TLS handshake; authentication, node claims, versions, ACK/NACK and their
//! timing, the caps and `Proxies` are the production code's.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tonic::transport::{Channel, Endpoint, Server};
use weft_proto::discovery::discovery_client::DiscoveryClient;

use super::*;
use crate::ca::Ca;
use crate::grpc_tls::PeerInfo;
use crate::mesh::Trust;
use crate::metrics::Metrics;

mod in_memory;

use in_memory::*;

const TRUST_DOMAIN: &str = "test.local";
const ORDERS: &str = "spiffe://test.local/ns/shop/sa/orders";
const REMOTE: &str = "10.0.0.7:40000";
/// Longer than any wait in these tests but the ACK deadline's own.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn a_connection_without_a_client_certificate_is_unauthenticated() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let mut client = cp.client(None).await;
    let refused = open(&mut client, hello("orders-1"))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("Identity/Certify"),
        "says how to get one: {refused:?}"
    );
    assert!(cp.proxies.list().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_node_claiming_another_identity_than_its_certificate_is_refused_naming_both() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    for (field, claim) in [("service_account", "payments"), ("namespace", "billing")] {
        let mut first = hello("orders-1");
        let node = first.node.as_mut().unwrap();
        match field {
            "service_account" => node.service_account = claim.into(),
            _ => node.namespace = claim.into(),
        }
        let refused = open(&mut client, first).await.err().expect("refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let msg = refused.message();
        assert!(
            msg.contains(&format!("node.{field}"))
                && msg.contains(&format!("{claim:?}"))
                && msg.contains(ORDERS),
            "names the claim and the certificate's identity: {msg}"
        );
    }
    assert!(cp.proxies.list().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_carries_the_generation_and_its_ack_shows_in_proxies() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, serial) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut stream = open(&mut client, hello("orders-1")).await.unwrap();
    let rsp = stream.next().await;
    assert_eq!(rsp.version, "2", "the generation in force");
    assert!(!rsp.nonce.is_empty());
    assert_eq!(endpoints(&rsp, "orders.shop"), ["127.0.0.1:15006"]);

    // Who the proxy is comes from its certificate; empty claims are filled from it.
    let status = cp.only_proxy();
    assert_eq!(
        (
            status.id.as_str(),
            status.identity.as_str(),
            status.namespace.as_str(),
            status.service.as_str()
        ),
        ("orders-1", ORDERS, "shop", "orders")
    );
    assert_eq!(status.remote, Some(REMOTE.parse().unwrap()));
    assert_eq!(status.certificate.map(|c| c.serial), Some(serial));
    assert_eq!(status.acked_version, None, "not acknowledged yet");

    stream.reply(&rsp, "").await;
    eventually("the ACK is recorded", || {
        cp.only_proxy().acked_version.as_deref() == Some("2")
    })
    .await;
    assert_eq!(cp.only_proxy().last_nack, None);
    assert_eq!(cp.state.metrics.acks.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_nack_is_recorded_and_holds_back_the_next_push() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut stream = open(&mut client, hello("orders-1")).await.unwrap();
    let rsp = stream.next().await;

    let nacked = Instant::now();
    stream.reply(&rsp, "endpoint address \"x\": invalid").await;
    eventually("the NACK is recorded", || {
        cp.only_proxy().last_nack.is_some()
    })
    .await;
    let status = cp.only_proxy();
    assert_eq!(
        status.last_nack.as_deref(),
        Some("endpoint address \"x\": invalid")
    );
    assert_eq!(status.acked_version, None);
    assert_eq!(cp.state.metrics.nacks.get(), 1);

    // A change made at once reaches the proxy only after the first backoff step (500 ms).
    cp.configure(&["127.0.0.1:15006", "127.0.0.2:15006"]);
    let next = stream.next().await;
    let waited = nacked.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(1),
        "sent {waited:?} after the NACK"
    );
    assert_eq!(next.version, "3");
    assert_eq!(endpoints(&next, "orders.shop").len(), 2);

    // Without a change, a NACKed version is never sent again.
    stream.reply(&next, "still invalid").await;
    assert!(
        stream.within(PATIENCE).await.is_err(),
        "nothing is re-sent after a NACK"
    );
    assert_eq!(cp.only_proxy().last_nack.as_deref(), Some("still invalid"));
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_not_acknowledged_in_time_closes_the_stream() {
    let ack_timeout = Duration::from_secs(2);
    let cp = ControlPlane::start(ack_timeout);
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut healthy = open(&mut client, hello("healthy")).await.unwrap();
    let rsp = healthy.next().await;
    healthy.reply(&rsp, "").await;

    let mut stalled = open(&mut client, hello("stalled")).await.unwrap();
    stalled.next().await;
    let sent = Instant::now();
    let end = stalled
        .within(PATIENCE)
        .await
        .expect("the stream is closed");
    let waited = sent.elapsed();
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(
        waited >= ack_timeout && waited < ack_timeout + Duration::from_millis(100),
        "closed {waited:?} after its snapshot"
    );
    assert_eq!(cp.state.metrics.slow_streams_closed.get(), 1);
    eventually("the stalled proxy is no longer listed", || {
        cp.proxies.list().len() == 1
    })
    .await;
    assert_eq!(
        cp.only_proxy().id,
        "healthy",
        "an acknowledged stream stays"
    );
    assert!(healthy.within(Duration::from_secs(1)).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn streams_beyond_the_cap_per_certificate_are_refused() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, serial) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut held = Vec::new();
    for i in 0..MAX_STREAMS_PER_CERTIFICATE {
        let mut stream = open(&mut client, hello(&format!("orders-{i}")))
            .await
            .unwrap();
        let rsp = stream.next().await;
        stream.reply(&rsp, "").await;
        held.push(stream);
    }
    let refused = open(&mut client, hello("one-too-many"))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains(&serial), "{refused:?}");
    assert_eq!(cp.proxies.list().len(), MAX_STREAMS_PER_CERTIFICATE);

    // Another replica of the workload, with a certificate of its own, is not held up.
    let (other, _) = cp.certificate(ORDERS);
    let mut other = cp.client(Some(other)).await;
    open(&mut other, hello("replica"))
        .await
        .unwrap()
        .next()
        .await;

    // A stream that ends gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while open(&mut client, hello("again")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_over_the_size_cap_is_refused() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let with_detail = |bytes: usize| pb::DiscoveryRequest {
        error_detail: "x".repeat(bytes),
        ..hello("orders-1")
    };
    let refused = open(&mut client, with_detail(MAX_REQUEST_BYTES + 1))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(cp.proxies.list().is_empty());
    // The same request under the cap is served.
    let mut stream = open(&mut client, with_detail(MAX_REQUEST_BYTES - 1024))
        .await
        .unwrap();
    stream.next().await;
}

#[tokio::test(start_paused = true)]
async fn a_config_change_pushes_the_newest_version_once_the_last_is_acknowledged() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut stream = open(&mut client, hello("orders-1")).await.unwrap();
    let first = stream.next().await;
    stream.reply(&first, "").await;

    cp.configure(&["127.0.0.1:15006", "127.0.0.2:15006"]);
    let pushed = stream.next().await;
    assert_eq!(pushed.version, "3");
    assert_ne!(pushed.nonce, first.nonce);
    assert_eq!(
        endpoints(&pushed, "orders.shop"),
        ["127.0.0.1:15006", "127.0.0.2:15006"]
    );

    // One response in flight: changes made before its ACK coalesce into the newest.
    cp.configure(&["127.0.0.3:15006"]);
    cp.configure(&["127.0.0.4:15006"]);
    assert!(
        stream.within(Duration::from_secs(1)).await.is_err(),
        "nothing new before the ACK"
    );
    stream.reply(&pushed, "").await;
    let newest = stream.next().await;
    assert_eq!(newest.version, "5");
    assert_eq!(endpoints(&newest, "orders.shop"), ["127.0.0.4:15006"]);
}

#[tokio::test(start_paused = true)]
async fn a_service_that_moves_to_another_service_account_ends_its_streams() {
    let cp = ControlPlane::start(Duration::from_secs(10));
    let (chain, _) = cp.certificate(ORDERS);
    let mut client = cp.client(Some(chain)).await;
    let mut stream = open(&mut client, hello("orders-1")).await.unwrap();
    let rsp = stream.next().await;
    stream.reply(&rsp, "").await;

    cp.apply(
        &orders(&["127.0.0.1:15006"]).replace("serviceAccount: orders", "serviceAccount: billing"),
    );
    let end = stream.within(PATIENCE).await.expect("the stream ends");
    let refused = end.expect_err("ended with a refusal, not a snapshot");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("\"billing\"") && refused.message().contains(ORDERS),
        "names the Service's service account and the certificate's identity: {refused:?}"
    );
    eventually("the proxy is no longer listed", || {
        cp.proxies.list().is_empty()
    })
    .await;
    // And it is refused when it comes back.
    let again = open(&mut client, hello("orders-1"))
        .await
        .err()
        .expect("refused");
    assert_eq!(again.code(), tonic::Code::PermissionDenied, "{again:?}");
}
