//! Every protocol end to end through two proxies: HTTP/1.1, HTTP/2, gRPC (unary and
//! server-streaming), opaque TCP with half-close, and WebSocket upgrades.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use weft_tests::apps::{self, HttpApp};
use weft_tests::grpc::{echo_client::EchoClient, EchoRequest};
use weft_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_reach_the_app_in_the_version_the_caller_used() {
    let app = HttpApp::start("orders").await;
    let (_mesh, client, _server) = pair("HTTP", app.addr).await;

    let r = get(&http1_client(), client.upstreams[0], "orders", "/one")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-seen-version")),
        (200, "HTTP/1.1"),
        "{r:?}"
    );

    let r = get(&http2_client(), client.upstreams[0], "orders", "/two")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-seen-version")),
        (200, "HTTP/2.0"),
        "{r:?}"
    );

    // A body goes through both ways.
    let req = http::Request::post(format!("http://{}/echo", client.upstreams[0]))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            vec![b'x'; 256 * 1024],
        )))
        .unwrap();
    let rsp = http1_client().request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), 256 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_streaming() {
    let app = apps::grpc_echo("orders").await;
    let (_mesh, client, _server) = pair("GRPC", app).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", client.upstreams[0]))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut echo = EchoClient::new(channel);

    let reply = echo
        .unary(EchoRequest {
            message: "hello".into(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.server.as_str()),
        ("hello", "orders")
    );

    let status = echo
        .unary(EchoRequest {
            message: "fail".into(),
            count: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::FailedPrecondition,
        "the app's gRPC status and trailers arrive intact"
    );

    let mut stream = echo
        .server_stream(EchoRequest {
            message: "tick".into(),
            count: 50,
        })
        .await
        .unwrap()
        .into_inner();
    let mut indexes = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        indexes.push(item.index);
    }
    assert_eq!(indexes, (0..50).collect::<Vec<_>>());

    // Metrics carry the gRPC status, read from the trailers at the end of each response.
    eventually("gRPC statuses counted", Duration::from_secs(5), || async {
        let m = client.running().metrics.encode();
        let n = |status: &str| {
            metric(
                &m,
                "weft_proxy_requests_total",
                &[
                    "direction=\"outbound\"",
                    &format!("grpc_status=\"{status}\""),
                ],
            )
        };
        (n("0") == 2.0 && n("9") == 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_from_the_proxy_are_grpc_statuses() {
    let (_mesh, client, _server) = pair("GRPC", NO_APP.parse().unwrap()).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", client.upstreams[0]))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let status = EchoClient::new(channel)
        .unary(EchoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        status.metadata().get("x-weft-error").unwrap(),
        "connect-failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_is_relayed_both_ways_with_half_close() {
    let echo = apps::tcp_echo().await;
    let (_mesh, client, _server) = pair("TCP", echo).await;
    let mut conn = TcpStream::connect(client.upstreams[0]).await.unwrap();
    let payload = vec![7u8; 1 << 20];
    let (mut rd, mut wr) = conn.split();
    let write = async {
        wr.write_all(&payload).await.unwrap();
        // Half-close: the echo server only answers `<eof seen>` after our FIN reaches it.
        wr.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let read = rd.read_to_end(&mut got);
    let ((), n) = tokio::join!(write, read);
    n.unwrap();
    assert_eq!(got.len(), payload.len() + b"<eof seen>".len());
    assert!(got.ends_with(b"<eof seen>"));
    let metrics = client.running().metrics.encode();
    assert!(metrics.contains(r#"weft_proxy_tcp_connections_opened_total{direction="outbound",service="orders.shop"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let app = HttpApp::start("orders").await;
    let (_mesh, client, _server) = pair("HTTP", app.addr).await;
    // Through the outbound listener by authority, as an app with HTTP_PROXY would.
    let tcp = TcpStream::connect(client.outbound).await.unwrap();
    websocket_echoes(tcp, "ws://orders.shop:8080/ws", 10).await;
}
