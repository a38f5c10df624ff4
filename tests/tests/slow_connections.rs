//! Connections that send too little, too slowly, or nothing at all are closed on every listener
//! within the stated limits (`first-request-timeout`, `connection-idle-timeout`), and each
//! listener holds at most `max-connections`: one past the cap is closed at once, and the others
//! are unaffected.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_runtime::server::Limits;
use weft_tests::apps::HttpApp;
use weft_tests::*;

const FIRST_REQUEST: Duration = Duration::from_millis(600);
const IDLE: Duration = Duration::from_millis(1200);

/// A client and a server sidecar (`orders` behind an HTTP app) with short limits.
async fn short_limits(max_connections: usize, idle: Duration) -> (Mesh, Sidecar, Sidecar, HttpApp) {
    let app = HttpApp::start("orders").await;
    let limits = Limits {
        first_request: FIRST_REQUEST,
        idle,
        max_connections,
    };
    let mut client = Sidecar::builder()
        .upstream("orders.shop:8080")
        .limits(limits)
        .bind()
        .await;
    let mut server = Sidecar::builder().limits(limits).bind().await;
    let mesh = Mesh::builder()
        .config(service_yaml("shop", "orders", "HTTP", &[server.inbound]))
        .start()
        .await;
    server.start(&mesh, "shop", "orders", app.addr);
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    server.ready().await;
    client.ready().await;
    (mesh, client, server, app)
}

/// Opens a connection, writes `bytes`, and returns how long the listener took to close it
/// (whatever it sent meanwhile is read and dropped). Panics past `limit`.
async fn closed_after(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Duration {
    let start = Instant::now();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut sink = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match conn.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{addr} still open after {limit:?} (sent {:?})",
        String::from_utf8_lossy(bytes)
    );
    start.elapsed()
}

/// The HTTP/2 preface and an empty SETTINGS frame: a client that never sends a request.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_listener_closes_connections_that_bring_no_request_in_time() {
    let (_mesh, client, server, _app) = short_limits(1000, IDLE).await;
    let listeners = [
        ("outbound", client.outbound),
        ("upstream", client.upstreams[0]),
        ("admin", client.admin),
        ("inbound", server.inbound),
    ];
    let partial: [&[u8]; 5] = [
        b"",
        b"PRI * HT",
        H2_HELLO,
        b"GET / HTTP/1.1\r\nhost: orders\r\n",
        // The first byte of a TLS handshake, and no more.
        b"\x16",
    ];
    let mut checks = Vec::new();
    for (name, addr) in listeners {
        for bytes in partial {
            checks.push(tokio::spawn(async move {
                let took = closed_after(addr, bytes, FIRST_REQUEST + Duration::from_secs(2)).await;
                (name, bytes, took)
            }));
        }
    }
    for check in checks {
        let (name, bytes, took) = check.await.unwrap();
        // Refused as soon as they are read: a TLS record where plain HTTP is served (a
        // malformed request), and plaintext where mTLS is strict.
        let refused_at_once = if name == "inbound" {
            !bytes.is_empty() && bytes != b"\x16"
        } else {
            bytes == b"\x16"
        };
        if refused_at_once {
            continue;
        }
        assert!(
            took >= FIRST_REQUEST - Duration::from_millis(100),
            "{name} closed {:?} after {took:?}: too early",
            String::from_utf8_lossy(bytes)
        );
    }
    // Counted as they close: a TLS handshake's socket may close a moment before its count.
    for (sidecar, listener, waited) in [
        (&client, "outbound", 4.0),
        (&client, "admin", 4.0),
        (&server, "inbound", 2.0),
    ] {
        eventually(
            "the timeouts to be counted",
            Duration::from_secs(2),
            || async {
                let m = sidecar.running().metrics.encode();
                let timeouts = metric(
                    &m,
                    "weft_proxy_listener_timeouts_total",
                    &[
                        &format!(r#"listener="{listener}""#),
                        r#"timeout="first-request""#,
                    ],
                );
                (timeouts == waited).then_some(())
            },
        )
        .await;
    }
    // The proxies serve on, unaffected.
    let http = http1_client();
    assert_eq!(
        get(&http, client.upstreams[0], "orders", "/")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_with_no_request_in_flight_is_closed_after_the_idle_timeout() {
    let (_mesh, client, _server, _app) = short_limits(1000, IDLE).await;
    let stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    // A request that takes longer than the idle timeout is not cut: only idleness counts.
    let slow = http::Request::get("http://orders/delay/1500")
        .body(Empty::new())
        .unwrap();
    let rsp = sender.send_request(slow).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let done = Instant::now();
    drop(rsp);
    tokio::time::timeout(IDLE + Duration::from_secs(3), conn)
        .await
        .expect("the idle connection was closed")
        .unwrap()
        .unwrap();
    let idle_for = done.elapsed();
    assert!(
        idle_for >= IDLE - Duration::from_millis(100),
        "closed after {idle_for:?} idle"
    );
    let m = client.running().metrics.encode();
    assert_eq!(
        metric(
            &m,
            "weft_proxy_listener_timeouts_total",
            &[r#"listener="upstream""#, r#"timeout="idle""#]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_at_its_connection_cap_closes_new_connections_at_once() {
    let (_mesh, client, _server, _app) = short_limits(8, Duration::from_secs(600)).await;
    let addr = client.upstreams[0];
    // Eight connections that each made a request and stay open (HTTP/1.1 keep-alive).
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: orders\r\n\r\n")
            .await
            .unwrap();
        // The whole response (its body is the app's name), so that the next one starts clean.
        let mut rsp = Vec::new();
        let mut buf = [0u8; 512];
        while !rsp.ends_with(b"orders") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&rsp));
            rsp.extend_from_slice(&buf[..n]);
        }
        assert!(rsp.starts_with(b"HTTP/1.1 200"));
        held.push(conn);
    }
    let took = closed_after(addr, b"", Duration::from_millis(500)).await;
    assert!(took < Duration::from_millis(500));
    let m = client.running().metrics.encode();
    assert_eq!(
        metric(
            &m,
            "weft_proxy_listener_connections_refused_total",
            &[r#"listener="upstream""#]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "weft_proxy_listener_connections_open",
            &[r#"listener="upstream""#]
        ),
        8.0,
        "{m}"
    );
    // The held connections still work, and once one closes there is room again.
    let mut first = held.remove(0);
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rsp = Vec::new();
    first.read_to_end(&mut rsp).await.unwrap();
    assert!(
        rsp.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&rsp)
    );
    let http = http1_client();
    eventually("a slot to free up", Duration::from_secs(5), || async {
        (get(&http, addr, "orders", "/").await.ok()?.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_planes_listeners_close_connections_that_bring_no_request_in_time() {
    let mesh = Mesh::builder().start().await;
    let limit = Limits::operator().first_request;
    assert_eq!(limit, Limits::default().first_request, "API and gRPC alike");
    let mut checks = Vec::new();
    // The API serves plain HTTP and TLS on one port; the gRPC listener TLS only, so plaintext
    // there fails its handshake at once and only silence or a partial handshake waits.
    let api: [&[u8]; 5] = [b"", b"PRI * HT", H2_HELLO, b"GET / HTTP/1.1\r\n", b"\x16"];
    let grpc: [&[u8]; 2] = [b"", b"\x16"];
    for (addr, bytes) in api
        .map(|b| (mesh.api_addr, b))
        .into_iter()
        .chain(grpc.map(|b| (mesh.grpc_addr, b)))
    {
        checks.push(tokio::spawn(async move {
            closed_after(addr, bytes, limit + Duration::from_secs(3)).await
        }));
    }
    // A TLS handshake with the gRPC listener, then nothing: no HTTP/2 preface, no request.
    let anchors = std::fs::read_to_string(mesh.anchors()).unwrap();
    let anchors = std::sync::Arc::new(weft_runtime::tls::parse_anchors(&anchors).unwrap());
    let mut config = weft_runtime::control_channel::verifying(anchors, "weft.local")
        .unwrap()
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let start = Instant::now();
    let uri: tonic::transport::Uri = format!("https://{}", mesh.grpc_addr).parse().unwrap();
    let mut tls = weft_runtime::control_channel::connect_tls(&uri, std::sync::Arc::new(config))
        .await
        .unwrap();
    let mut sink = [0u8; 1024];
    let silent = tokio::time::timeout(limit + Duration::from_secs(3), async {
        while tls.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(
        silent.is_ok(),
        "a silent TLS connection to the gRPC listener stayed open"
    );
    assert!(start.elapsed() >= limit - Duration::from_millis(100));
    for check in checks {
        let took = check.await.unwrap();
        assert!(took >= limit - Duration::from_millis(100), "{took:?}");
    }
    // Counted as they close: a TLS handshake's socket may close a moment before its count.
    for (listener, waited) in [("api", 5.0), ("grpc", 3.0)] {
        eventually(
            "the timeouts to be counted",
            Duration::from_secs(2),
            || async {
                let m = mesh.state().metrics.encode();
                let timeouts = metric(
                    &m,
                    "weft_listener_timeouts_total",
                    &[
                        &format!(r#"listener="{listener}""#),
                        r#"timeout="first-request""#,
                    ],
                );
                (timeouts == waited).then_some(())
            },
        )
        .await;
    }
}
