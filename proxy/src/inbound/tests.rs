//! The inbound request path as a component: a real `Inbound` whose app is a scripted server
//! over in-memory streams (`fake_mesh::FakeApp`), its policy from a snapshot, and requests
//! arriving as from a peer proxy (HTTP/2, the caller's identity already authenticated).

use std::sync::Arc;

use http::Request;
use weft_proto::discovery as pb;

use super::*;
use crate::fake_mesh::{self, respond, update, Answer, FakeApp, Scripted};
use crate::shared::Shared;

const APP: &str = "127.0.0.1:8080";
const CALLER: &str = "spiffe://test.local/ns/shop/sa/frontend";

/// An inbound for `orders.shop` with `policy` in force, in front of an app answering 200.
fn inbound(policy: pb::Inbound) -> (Arc<Inbound<FakeApp>>, Arc<Scripted>) {
    let app = Arc::new(Scripted::default());
    app.status(APP, 200);
    let mut rsp = update(vec![]);
    if let Some(c) = rsp.config.as_mut() {
        c.inbound = Some(pb::Inbound {
            service: "orders".into(),
            namespace: "shop".into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 80,
                protocol: pb::Protocol::Http.into(),
                ..Default::default()
            }],
            ..policy
        });
    }
    let metrics = Arc::new(Metrics::new());
    let discovery = fake_mesh::discovery(rsp, &metrics);
    let addr = APP.parse().unwrap();
    let app_side = App {
        addr,
        service: "orders.shop".into(),
        upgrades: Upgrades::default(),
        connector: FakeApp {
            scripted: app.clone(),
            addr,
        },
    };
    let shared = Shared {
        metrics: metrics.clone(),
        tls: Arc::default(),
        discovery,
        tracer: fake_mesh::tracer(&metrics),
        access_log: AccessLog::start(None, metrics),
    };
    let inbound = Inbound::with_app(app_side, &shared);
    (Arc::new(inbound), app)
}

/// `req` as a peer proxy sends it: HTTP/2, from `client` (already authenticated).
async fn send(
    inbound: &Arc<Inbound<FakeApp>>,
    client: Option<&str>,
    mut req: Request<Body>,
) -> Answer {
    *req.version_mut() = Version::HTTP_2;
    let (inbound, client) = (inbound.clone(), client.map(Arc::<str>::from));
    let peer: SocketAddr = "10.0.0.9:40000".parse().unwrap();
    let app = inbound.apps.default().clone();
    let svc = hyper::service::service_fn(move |req| {
        inbound
            .clone()
            .handle(client.clone(), peer, app.clone(), req)
    });
    fake_mesh::call(svc, req).await
}

fn get(path: &str) -> Request<Body> {
    fake_mesh::get(&format!("http://orders.shop{path}"))
}

fn allow(identities: &[&str], paths: &[&str]) -> pb::Inbound {
    pb::Inbound {
        authorization_enforced: true,
        authorization: vec![pb::AuthorizationRule {
            identities: identities.iter().map(|s| (*s).into()).collect(),
            paths: paths.iter().map(|s| (*s).into()).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn authorization_denies_with_403_forbidden_before_the_app() {
    let (inbound, app) = inbound(allow(&[CALLER], &["/api/*"]));
    let rsp = send(
        &inbound,
        Some("spiffe://test.local/ns/shop/sa/other"),
        get("/api/x"),
    )
    .await;
    assert_eq!(rsp.status, 403);
    assert_eq!(rsp.reason(), "forbidden");
    let rsp = send(&inbound, Some(CALLER), get("/admin")).await;
    assert_eq!((rsp.status.as_u16(), rsp.reason()), (403, "forbidden"));
    assert!(
        app.seen().is_empty(),
        "a denied request never reaches the app"
    );
    assert_eq!(
        send(&inbound, Some(CALLER), get("/api/x")).await.status,
        200
    );
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn the_policy_checks_the_normalized_path_and_the_app_receives_it() {
    let (inbound, app) = inbound(allow(&[CALLER], &["/api/*"]));
    let rsp = send(&inbound, Some(CALLER), get("/admin/../api//x")).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(app.seen()[0].uri.path(), "/api/x");
    let rsp = send(&inbound, Some(CALLER), get("/api/../admin")).await;
    assert_eq!(rsp.status, 403, "normalized before the policy: /admin");
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let (inbound, app) = inbound(pb::Inbound {
        policy: Some(pb::TrafficPolicy {
            rate_limit: Some(pb::RateLimit {
                requests_per_second: 1.0,
                burst: 1,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(send(&inbound, None, get("/")).await.status, 200);
    let rsp = send(&inbound, None, get("/")).await;
    assert_eq!(rsp.status, 429);
    assert_eq!(rsp.reason(), "rate-limited");
    assert!(rsp.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn a_forged_identity_header_is_replaced_by_the_authenticated_one() {
    let (inbound, app) = inbound(pb::Inbound::default());
    let forged = |r: Request<Body>| {
        let (mut parts, body) = r.into_parts();
        parts.headers.insert(
            CLIENT_IDENTITY_HEADER,
            HeaderValue::from_static("spiffe://evil"),
        );
        parts.headers.insert(
            "x_weft_client_identity",
            HeaderValue::from_static("spiffe://evil"),
        );
        Request::from_parts(parts, body)
    };
    send(&inbound, Some(CALLER), forged(get("/"))).await;
    send(&inbound, None, forged(get("/"))).await;
    let seen = app.seen();
    let ids = |i: usize| {
        seen[i]
            .headers
            .get_all(CLIENT_IDENTITY_HEADER)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(0), [CALLER]);
    assert!(
        ids(1).is_empty(),
        "an unauthenticated caller gets no identity"
    );
    assert!(seen
        .iter()
        .all(|s| !s.headers.contains_key("x_weft_client_identity")));
}

#[tokio::test]
async fn the_callers_http_version_is_restored_for_the_app() {
    let (inbound, app) = inbound(pb::Inbound::default());
    let mut req = get("/");
    req.headers_mut()
        .insert(ORIG_PROTO_HEADER, HeaderValue::from_static("HTTP/1.1"));
    send(&inbound, None, req).await;
    send(&inbound, None, get("/h2")).await;
    let seen = app.seen();
    assert_eq!(seen[0].version, Version::HTTP_11);
    assert_eq!(seen[0].headers[header::HOST], "orders.shop");
    assert!(!seen[0].headers.contains_key(ORIG_PROTO_HEADER));
    assert_eq!(seen[1].version, Version::HTTP_2);
}

#[tokio::test]
async fn an_app_that_refuses_answers_502_connect_failed() {
    let (inbound, app) = inbound(pb::Inbound::default());
    app.refuse(APP);
    let rsp = send(&inbound, None, get("/")).await;
    assert_eq!(rsp.status, 502);
    assert_eq!(rsp.reason(), "connect-failed");
}

#[tokio::test]
async fn an_app_error_is_passed_through_as_it_is() {
    let (inbound, app) = inbound(pb::Inbound::default());
    app.serve(APP, |_| async { respond(503) });
    let rsp = send(&inbound, None, get("/")).await;
    assert_eq!((rsp.status.as_u16(), rsp.reason()), (503, ""));
}

#[test]
fn a_redirected_destination_must_be_one_of_the_pods_own_addresses() {
    let local: SocketAddr = "127.0.0.1:15006".parse().unwrap();
    for dst in [
        "127.0.0.1:15020",
        "127.0.0.1:15001",
        "[::1]:8080",
        "0.0.0.0:80",
        "224.0.0.1:80",
        "255.255.255.255:80",
        "[::ffff:127.0.0.1]:80",
        "192.0.2.1:80",
    ] {
        assert!(!is_local(dst.parse().unwrap(), local), "{dst}");
    }
    let pod: SocketAddr = "10.9.9.9:15006".parse().unwrap();
    assert!(
        is_local("10.9.9.9:8080".parse().unwrap(), pod),
        "the address it arrived on"
    );
}
