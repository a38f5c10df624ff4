//! Discovery below the end-to-end level: snapshots applied (and refused) as the config stream
//! would, and requests waiting for a service subscribed on demand. Also the hook component
//! tests use to put a snapshot in force without a control plane.

use std::sync::Arc;

use weft_proto::discovery as pb;

use super::*;
use crate::fake_mesh::{backend, service, update};

impl Discovery {
    /// Applies `rsp` as the config stream does ([`Discovery::apply`], the single writer):
    /// for component tests, which have no control plane.
    pub(crate) fn apply_update(&self, rsp: DiscoveryResponse) -> DiscoveryRequest {
        self.apply(rsp)
    }
}

fn orders() -> pb::Service {
    service(
        "orders",
        "shop",
        vec![backend("orders", "shop", &["10.0.0.1:15006"])],
    )
}

fn discovery() -> Arc<Discovery> {
    Arc::new(Discovery::new([], Arc::new(Metrics::new())))
}

#[tokio::test]
async fn an_accepted_update_is_in_force_and_acked() {
    let d = discovery();
    assert!(!d.has_config());
    let reply = d.apply_update(update(vec![orders()]));
    assert_eq!(reply.version, "1");
    assert_eq!(reply.response_nonce, "n1");
    assert!(reply.error_detail.is_empty());
    assert!(d.has_config());
    let svc = d.resolve(&ServiceKey::new("orders", "shop")).await.unwrap();
    assert_eq!(svc.key.to_string(), "orders.shop");
    assert_eq!(d.snapshot().version, "1");
}

#[tokio::test]
async fn a_rejected_update_is_nacked_and_the_last_good_stays() {
    let d = discovery();
    d.apply_update(update(vec![orders()]));
    let mut bad = update(vec![service(
        "orders",
        "shop",
        vec![backend("orders", "shop", &["not an address"])],
    )]);
    bad.version = "2".into();
    let reply = d.apply_update(bad);
    assert!(
        reply.error_detail.contains("orders.shop") && reply.error_detail.contains("not an address"),
        "{}",
        reply.error_detail
    );
    assert_eq!(d.snapshot().version, "1");
    assert!(d.resolve(&ServiceKey::new("orders", "shop")).await.is_ok());
}

#[tokio::test]
async fn a_name_the_control_plane_does_not_know_is_no_route() {
    let d = discovery();
    let mut rsp = update(vec![]);
    if let Some(c) = rsp.config.as_mut() {
        c.unknown.push("ghost.shop".into());
    }
    d.apply_update(rsp);
    let e = d
        .resolve(&ServiceKey::new("ghost", "shop"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "no-route");
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_a_service_subscribed_on_demand() {
    let d = discovery();
    d.apply_update(update(vec![]));
    let key = ServiceKey::new("orders", "shop");
    let waiting = tokio::spawn({
        let (d, key) = (d.clone(), key.clone());
        async move { d.resolve(&key).await.map(|s| s.key.clone()) }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    assert!(d
        .subscriptions
        .lock()
        .unwrap()
        .contains(&Subject::Service(key.clone())));
    let mut rsp = update(vec![orders()]);
    rsp.version = "2".into();
    d.apply_update(rsp);
    assert_eq!(waiting.await.unwrap().unwrap(), key);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_subscription_gives_up_after_the_resolve_timeout() {
    let d = discovery();
    d.apply_update(update(vec![]));
    let started = tokio::time::Instant::now();
    let e = d
        .resolve(&ServiceKey::new("orders", "shop"))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), RESOLVE_TIMEOUT);
    assert_eq!(e.reason(), "no-endpoints");
    assert!(e.to_string().contains("is it running?"), "{e}");
}
