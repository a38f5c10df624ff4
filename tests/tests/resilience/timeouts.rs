//! Timeouts at every level: request and per-try, connect, stream idle, and idle TCP
//! connections.

use std::time::Duration;

use tokio::time::Instant;
use weft_tests::apps::{Behaviour, FaultyApp};
use weft_tests::*;

use crate::{policy, Setup, HOST};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_per_try_timeouts() {
    let t = Setup::start(
        1,
        &policy(
            "  timeouts: {request: 700ms}\n  retries: {attempts: 2, on: [reset], perTryTimeout: 300ms, backoff: {base: 1ms}}\n",
        ),
    )
    .await;
    let app = &t.apps[0];

    // A try that hangs is abandoned after the per-try timeout and retried.
    app.fail_next(1, Behaviour::Hang);
    let started = Instant::now();
    let r = t.get("/").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    assert_eq!(
        metric(
            &t.metrics(),
            "weft_proxy_timeouts_total",
            &["kind=\"per-try\""]
        ),
        1.0
    );

    // Every try hangs: the request timeout ends the whole exchange (during the third try) with
    // 504.
    app.set(Behaviour::Hang);
    let started = Instant::now();
    let r = t.get("/").await;
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (504, "timeout"),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1500),
        "{took:?}"
    );

    // A gRPC caller's deadline is honoured, and answered as DEADLINE_EXCEEDED.
    let started = Instant::now();
    let r = send(
        &http2_client(),
        t.client.upstreams[0],
        HOST,
        "POST",
        "/weft.test.v1.Echo/Unary",
        &[
            ("content-type", "application/grpc"),
            ("grpc-timeout", "200m"),
            ("te", "trailers"),
        ],
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.header("grpc-status")), (200, "4"), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(800));
    let m = t.metrics();
    assert!(
        metric(&m, "weft_proxy_timeouts_total", &["kind=\"request\""]) >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_and_stream_idle_timeout() {
    // An endpoint whose accept queue is full: the SYN is dropped, so the connect hangs.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blackhole = socket.local_addr().unwrap();
    let listener = socket2::Socket::from(socket);
    listener.listen(0).unwrap();
    let mut fillers = Vec::new();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(blackhole),
        )
        .await;
        match attempt {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }

    let mut server = Sidecar::builder().bind().await;
    let app = FaultyApp::start("orders-0").await;
    let mut client = Sidecar::builder().bind().await;
    let yaml = format!(
        "{}{}{}---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: hole, namespace: shop}}\nspec:\n  targetRef: {{name: hole}}\n  timeouts: {{connect: 200ms}}\n",
        service_yaml("shop", "orders", "HTTP", &[server.inbound]),
        policy("  timeouts: {idle: 300ms}\n"),
        service_yaml("shop", "hole", "HTTP", &[blackhole]),
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    server.start(&mesh, "shop", "orders", app.addr);
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let http = http1_client();

    let started = Instant::now();
    let r = get(&http, client.outbound, "hole.shop", "/").await.unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (504, "timeout"),
        "{r:?}"
    );
    // Tried three times (two retries of a request that never left), 200 ms each.
    assert!(started.elapsed() < Duration::from_millis(1500));
    let m = client.running().metrics.encode();
    assert_eq!(
        metric(&m, "weft_proxy_timeouts_total", &["kind=\"connect\""]),
        3.0,
        "{m}"
    );

    // A response whose body stalls is cut after the idle timeout.
    app.set(Behaviour::StallBody);
    let started = Instant::now();
    let err = get(&http, client.outbound, HOST, "/").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}: {err:#}"
    );
    let m = client.running().metrics.encode();
    assert_eq!(
        metric(&m, "weft_proxy_timeouts_total", &["kind=\"idle\""]),
        1.0,
        "{m}"
    );
    drop(fillers);
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = apps::tcp_echo().await;
    let mut server = Sidecar::builder().bind().await;
    let mut client = Sidecar::builder().upstream("cache.shop:8080").bind().await;
    let yaml = format!(
        "{}---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: cache, namespace: shop}}\nspec:\n  targetRef: {{name: cache}}\n  timeouts: {{idle: 300ms}}\n",
        service_yaml("shop", "cache", "TCP", &[server.inbound])
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    server.start(&mesh, "shop", "cache", echo);
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;

    let mut conn = tokio::net::TcpStream::connect(client.upstreams[0])
        .await
        .unwrap();
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the idle connection")
        .ok();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    let m = client.running().metrics.encode();
    assert_eq!(
        metric(&m, "weft_proxy_timeouts_total", &["kind=\"idle\""]),
        1.0,
        "{m}"
    );
}
