//! Ways around the inbound proxy's checks, tried by a workload that holds a mesh certificate of
//! its own and talks to another proxy's inbound listener directly, the way its own sidecar would
//! (mutual TLS, then the proxies' transport): opaque TCP to a Service that serves HTTP, opaque
//! TCP from an identity a policy denies or naming another Service or port, a forged
//! `x-weft-client-identity` (also spelt with underscores), and upgrades to `h2c` or protocols
//! that are not allowed.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weft_proxy::transport::{self, OpaqueHeader, PeerIo};
use weft_tests::apps::{self, HttpApp};
use weft_tests::*;

const ORDERS_ID: &str = "spiffe://weft.local/ns/shop/sa/orders";
const CACHE_ID: &str = "spiffe://weft.local/ns/shop/sa/cache";
const FORGED: &str = "spiffe://weft.local/ns/weft-system/sa/admin";

/// Only `frontend` may call `orders` (GET /public/*) and `cache` (any connection).
const POLICIES: &str = r#"
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: shop}
spec:
  targetRef: {kind: Service, name: orders}
  rules:
  - from: {identities: ["spiffe://weft.local/ns/shop/sa/frontend"]}
    to: {paths: ["/public/*"], methods: [GET]}
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: cache, namespace: shop}
spec:
  targetRef: {kind: Service, name: cache}
  rules:
  - from: {identities: ["spiffe://weft.local/ns/shop/sa/frontend"]}
"#;

/// `orders` (HTTP, behind `orders_app`) and `cache` (TCP echo), each behind its sidecar; a
/// `frontend` sidecar with upstreams to both; an `attacker` sidecar, used only for its
/// certificate.
struct World {
    _mesh: Mesh,
    orders: Sidecar,
    cache: Sidecar,
    frontend: Sidecar,
    attacker: Sidecar,
}

async fn world(orders_app: SocketAddr) -> World {
    let echo = apps::tcp_echo().await;
    let mut orders = Sidecar::builder().bind().await;
    let mut cache = Sidecar::builder().bind().await;
    let mut frontend = Sidecar::builder()
        .upstream("orders.shop:8080")
        .upstream("cache.shop:8080")
        .bind()
        .await;
    let mut attacker = Sidecar::builder().bind().await;
    let mesh = Mesh::builder()
        .config(format!(
            "{}{}{POLICIES}",
            service_yaml("shop", "orders", "HTTP", &[orders.inbound]),
            service_yaml("shop", "cache", "TCP", &[cache.inbound]),
        ))
        .start()
        .await;
    orders.start(&mesh, "shop", "orders", orders_app);
    cache.start(&mesh, "shop", "cache", echo);
    frontend.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    attacker.start(&mesh, "shop", "attacker", NO_APP.parse().unwrap());
    for s in [&orders, &cache, &frontend, &attacker] {
        s.ready().await;
    }
    World {
        _mesh: mesh,
        orders,
        cache,
        frontend,
        attacker,
    }
}

/// A connection to `to`'s inbound listener with `from`'s certificate, verifying that `to` is
/// `identity`: what `from`'s own sidecar could open.
async fn mtls(from: &Sidecar, to: &Sidecar, identity: &str) -> PeerIo {
    let config = from.running().tls.client(identity).unwrap();
    transport::dial_peer(to.inbound, Duration::from_secs(2), Some(config))
        .await
        .unwrap()
}

/// An opaque connection (`WEFTTCP1` and its header) to `to`, with `from`'s certificate.
async fn opaque(from: &Sidecar, to: &Sidecar, identity: &str, service: &str, port: u16) -> PeerIo {
    let config = from.running().tls.client(identity).unwrap();
    let header = OpaqueHeader {
        port,
        service: service.into(),
    };
    transport::connect_opaque(to.inbound, Duration::from_secs(2), &header, Some(config))
        .await
        .unwrap()
}

/// Writes `bytes`, then reads whatever comes back until the far side closes (or 5 s pass).
async fn exchange(mut io: PeerIo, bytes: &[u8]) -> Vec<u8> {
    // A write may fail once the far side has closed: the answer is then what was read.
    let _ = io.write_all(bytes).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut got)).await;
    got
}

fn raw_get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: orders\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_to_an_http_service_never_reaches_its_app() {
    let app = HttpApp::start("orders").await;
    let w = world(app.addr).await;
    // Raw HTTP inside an opaque connection, naming the Service correctly, with a forged
    // identity: from a caller the policy does not allow at all, and from one it allows only
    // for GET /public/*.
    for from in [&w.attacker, &w.frontend] {
        let io = opaque(from, &w.orders, ORDERS_ID, "orders.shop", 8080).await;
        let extra = format!("x-weft-client-identity: {FORGED}\r\n");
        let got = exchange(io, &raw_get("/private", &extra)).await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    assert_eq!(app.hits(), 0, "no opaque bytes reached the HTTP app");
    let m = w.orders.running().metrics.encode();
    assert_eq!(
        metric(
            &m,
            "weft_proxy_inbound_opaque_refused_total",
            &[r#"reason="not-a-tcp-port""#]
        ),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_is_authorized_by_identity_and_must_name_this_service_and_a_tcp_port() {
    let app = HttpApp::start("orders").await;
    let w = world(app.addr).await;
    // The allowed caller, through its sidecar: echoed.
    let mut conn = tokio::net::TcpStream::connect(w.frontend.upstreams[1])
        .await
        .unwrap();
    conn.write_all(b"allowed").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"allowed<eof seen>");

    // Another identity, naming everything right: closed before a byte reaches the echo.
    let io = opaque(&w.attacker, &w.cache, CACHE_ID, "cache.shop", 8080).await;
    assert!(exchange(io, b"denied").await.is_empty());
    // The allowed identity, but naming another Service or a port the Service does not have.
    for (service, port) in [("orders.shop", 8080), ("cache.shop", 9999), ("cache", 8080)] {
        let io = opaque(&w.frontend, &w.cache, CACHE_ID, service, port).await;
        assert!(
            exchange(io, b"misaddressed").await.is_empty(),
            "{service}:{port}"
        );
    }

    let m = w.cache.running().metrics.encode();
    let refused = |reason: &str| {
        metric(
            &m,
            "weft_proxy_inbound_opaque_refused_total",
            &[&format!(r#"reason="{reason}""#)],
        )
    };
    assert_eq!(refused("forbidden"), 1.0, "{m}");
    assert_eq!(refused("not-this-service"), 2.0, "{m}");
    assert_eq!(refused("not-a-tcp-port"), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "weft_proxy_authorization_total",
            &[r#"decision="deny""#]
        ),
        1.0,
        "{m}"
    );
    // Relayed connections are labelled with this proxy's own Service, never with what a
    // caller wrote in its header.
    assert_eq!(
        metric(
            &m,
            "weft_proxy_tcp_connections_opened_total",
            &[r#"direction="inbound""#]
        ),
        1.0,
        "{m}"
    );
    assert!(
        !m.contains(r#"service="orders.shop""#) && !m.contains(r#"service="cache""#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_header_never_reaches_the_app_in_any_spelling() {
    let (app, heads) = recording_app().await;
    let w = world(app).await;
    let spellings = [
        "x-weft-client-identity",
        "X-Weft-Client-Identity",
        "x_weft_client_identity",
        "x-weft_client-identity",
    ];
    for name in spellings {
        let io = mtls(&w.frontend, &w.orders, ORDERS_ID).await;
        let got = exchange(
            io,
            &raw_get("/public/menu", &format!("{name}: {FORGED}\r\n")),
        )
        .await;
        let text = String::from_utf8_lossy(&got).to_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{name}: {text}");
    }
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), spellings.len(), "{heads:?}");
    for head in heads.iter() {
        // CGI-style servers fold `_` into `-`: any of these spellings would be the header.
        let identities: Vec<&str> = head
            .lines()
            .filter(|l| l.replace('_', "-").starts_with("x-weft-client-identity:"))
            .collect();
        assert_eq!(
            identities,
            ["x-weft-client-identity: spiffe://weft.local/ns/shop/sa/frontend"],
            "{head}"
        );
    }
}

/// A raw HTTP/1.1 app that would take an upgrade to anything (answering `101` and then echoing),
/// and remembers each request head it received.
async fn recording_app() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                seen.lock().unwrap().push(head.clone());
                if let Some(proto) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("upgrade: "))
                    .map(str::to_string)
                {
                    let rsp = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {proto}\r\n\r\n"
                    );
                    let _ = conn.write_all(rsp.as_bytes()).await;
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                } else {
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_never_an_upgrade_and_other_protocols_must_be_allowed() {
    let (app, heads) = recording_app().await;
    let w = world(app).await;
    let h2c = "connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n";
    // Through the caller's own sidecar, and straight to the inbound listener with a certificate.
    let mut via_sidecar = tokio::net::TcpStream::connect(w.frontend.upstreams[0])
        .await
        .unwrap();
    via_sidecar
        .write_all(format!("GET /public/menu HTTP/1.1\r\nhost: orders\r\n{h2c}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), via_sidecar.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");

    let direct = mtls(&w.frontend, &w.orders, ORDERS_ID).await;
    let got = exchange(direct, &raw_get("/public/menu", h2c)).await;
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");

    // An upgrade to a protocol not on `allowed-upgrades` (websocket by default): 403.
    let direct = mtls(&w.frontend, &w.orders, ORDERS_ID).await;
    let got = exchange(
        direct,
        &raw_get("/public/menu", "connection: upgrade\r\nupgrade: tunnel\r\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 403"), "{text}");
    assert!(text.contains("x-weft-error: forbidden"), "{text}");

    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for head in heads.iter() {
        assert!(
            !head.contains("upgrade") && !head.contains("http2-settings"),
            "{head}"
        );
    }
}
