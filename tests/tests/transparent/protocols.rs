//! What the proxies carry for unchanged apps, and how they tell what it is.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::grpc::{echo_client::EchoClient, EchoRequest};
use weft_tests::*;

use crate::world::*;

/// An unchanged app in pod a calls Service b by its cluster IP: over HTTP/1.1 and HTTP/2, IPv4
/// and IPv6, a WebSocket, gRPC and raw TCP, each through both proxies over mTLS — b's app sees
/// a's identity, which only b's proxy can have set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_app_reaches_services_by_cluster_ip_over_mtls_in_every_protocol() {
    let w = world("").await;

    for (http2, version) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let rsp = get_from(&w.a, http2, "10.96.0.10:80", "b.shop").await;
        assert_eq!(rsp.status, 200, "{rsp:?}");
        assert_eq!(rsp.header("x-app"), "b");
        assert_eq!(
            rsp.header("x-seen-identity"),
            CALLER,
            "{version}: mTLS both ways"
        );
        assert_eq!(
            rsp.header("x-seen-version"),
            version,
            "the app sees what a sent"
        );
    }
    // curl, an app that knows nothing of the mesh.
    for (flags, version) in [(&[][..], "1.1"), (&["--http2-prior-knowledge"][..], "2")] {
        let mut args = vec!["-sS", "--max-time", "10", "-o", "/dev/null", "-D", "-"];
        args.extend(flags);
        args.push("http://10.96.0.10/hello");
        let out = w.a.exec("curl", &args);
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(head.starts_with(&format!("http/{version} 200")), "{head}");
        assert!(
            head.contains(&format!("x-seen-identity: {CALLER}")),
            "{head}"
        );
    }
    let rsp = get_from(&w.a, false, "[fd96::10]:80", "b.shop").await;
    assert_eq!(
        (rsp.status, rsp.header("x-seen-identity")),
        (200, CALLER),
        "IPv6 cluster IP"
    );
    let rsp = get_from(&w.a, false, "[fd96::16]:80", "b6.shop").await;
    assert_eq!(
        (rsp.status, rsp.header("x-seen-identity")),
        (200, CALLER),
        "IPv6 all the way"
    );

    // A WebSocket, upgraded through both proxies.
    w.a.run(async {
        let tcp = TcpStream::connect("10.96.0.10:80").await.unwrap();
        websocket_echoes(tcp, "ws://b.shop/ws", 3).await;
    })
    .await;

    // gRPC, an HTTP/2 app protocol, to a GRPC port.
    w.a.run(async {
        let channel = tonic::transport::Endpoint::from_static("http://10.96.0.12:50051")
            .connect()
            .await
            .unwrap();
        let reply = EchoClient::new(channel)
            .unary(EchoRequest {
                message: "hello".into(),
                count: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (reply.message.as_str(), reply.server.as_str()),
            ("hello", "d")
        );
    })
    .await;

    // Raw TCP to a TCP port: relayed both ways, half-close included.
    let got =
        w.a.run(async {
            let mut conn = TcpStream::connect("10.96.0.11:9000").await.unwrap();
            conn.write_all(b"hello through the mesh").await.unwrap();
            conn.shutdown().await.unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).await.unwrap();
            got
        })
        .await;
    assert_eq!(got, b"hello through the mesh<eof seen>");

    let a = w.a.metrics().await;
    let to_services = metric(
        &a,
        "weft_proxy_redirected_connections_total",
        &["direction=\"outbound\"", "destination=\"service\""],
    );
    assert!(to_services >= 7.0, "{to_services}\n{a}");
    for labels in [
        ["protocol=\"http1\"", "decided=\"detected\""],
        ["protocol=\"http2\"", "decided=\"detected\""],
        ["protocol=\"tcp\"", "decided=\"tcp-port\""],
    ] {
        let n = metric(&a, "weft_proxy_protocol_detections_total", &labels);
        assert!(n >= 1.0, "{labels:?}\n{a}");
    }
    let c = w.c.metrics().await;
    assert_eq!(
        metric(
            &c,
            "weft_proxy_tcp_connections_opened_total",
            &["direction=\"inbound\""]
        ),
        1.0,
        "{c}"
    );
    let b = w.b.metrics().await;
    assert!(
        metric(
            &b,
            "weft_proxy_redirected_connections_total",
            &["destination=\"app\""]
        ) >= 1.0,
        "{b}"
    );
    drop(w.d);
}

/// A server that speaks first answers at once on a port in MeshConfig `opaquePorts` (no
/// detection), and after the detection timeout on any other port — then works, relayed as TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_speaks_first_answers_at_once_on_an_opaque_port_and_after_the_timeout_elsewhere(
) {
    let p = pods("").await;
    let (took, answer) = greeted_by(&p.a, "10.96.0.21:3306").await;
    assert!(took < Duration::from_millis(500), "opaque port: {took:?}");
    assert_eq!(answer, "250 EHLO client.example\r\n");
    let (took, answer) = greeted_by(&p.a, "10.96.0.22:7000").await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "detection timeout of 1 s: {took:?}"
    );
    assert_eq!(
        answer, "250 EHLO client.example\r\n",
        "relayed as TCP, through the guard"
    );
    let a = p.a.metrics().await;
    for decided in ["opaque-port", "timeout"] {
        let labels = ["protocol=\"tcp\"", &format!("decided=\"{decided}\"")];
        assert_eq!(
            metric(&a, "weft_proxy_protocol_detections_total", &labels),
            1.0,
            "{a}"
        );
    }
    for pod in [&p.s1, &p.s2] {
        let m = pod.metrics().await;
        let opened = ["direction=\"inbound\""];
        assert_eq!(
            metric(&m, "weft_proxy_tcp_connections_opened_total", &opened),
            1.0,
            "{m}"
        );
    }
}

/// An HTTP request sent as opaque bytes into a port that serves HTTP — what a client slower
/// than the detection timeout sends — is refused by the callee's proxy before the app sees it:
/// it could carry an `x-weft-client-identity` that no proxy checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_too_slow_to_detect_is_refused_not_smuggled() {
    let p = pods("").await;
    let got = p
        .a
        .run(async {
            let mut conn = TcpStream::connect("10.96.0.22:7000").await.unwrap();
            let mut greeting = [0u8; 11];
            conn.read_exact(&mut greeting).await.unwrap();
            let forged = "GET / HTTP/1.1\r\nhost: s2\r\nx-weft-client-identity: spiffe://weft.local/ns/shop/sa/admin\r\n\r\n";
            let _ = conn.write_all(forged.as_bytes()).await;
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest).await;
            rest
        })
        .await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let s2 = p.s2.metrics().await;
    let refused = ["reason=\"http-request\""];
    assert_eq!(
        metric(&s2, "weft_proxy_inbound_opaque_refused_total", &refused),
        1.0,
        "{s2}"
    );

    // Written so that detection takes it for TCP — a blank line first and a lower-case method;
    // white space Python's servers split on — at once; and as raw TCP to the Service's TCP port,
    // which is another port of the pod than the one dialled: refused the same.
    let forged = |opening: &str| {
        format!("{opening} /admin HTTP/1.1\r\nhost: b\r\nx-weft-client-identity: spiffe://weft.local/ns/shop/sa/admin\r\n\r\n")
    };
    for opening in ["\r\nget", " GET\x0b"] {
        for addr in ["10.96.0.22:7000", "10.96.0.10:6379"] {
            let bytes = forged(opening);
            let got =
                p.a.run(async move {
                    let mut conn = TcpStream::connect(addr).await.unwrap();
                    if addr.ends_with("7000") {
                        let mut greeting = [0u8; 11];
                        conn.read_exact(&mut greeting).await.unwrap();
                    }
                    let _ = conn.write_all(bytes.as_bytes()).await;
                    let mut rest = Vec::new();
                    let _ = conn.read_to_end(&mut rest).await;
                    rest
                })
                .await;
            assert!(
                got.is_empty(),
                "{addr} {opening:?}: {}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    let s2 = p.s2.metrics().await;
    let by_s2 = metric(&s2, "weft_proxy_inbound_opaque_refused_total", &refused);
    assert_eq!(by_s2, 3.0, "{s2}");
    let (b, b2) = (p.b.metrics().await, p.b2.metrics().await);
    let by_b = metric(&b, "weft_proxy_inbound_opaque_refused_total", &refused)
        + metric(&b2, "weft_proxy_inbound_opaque_refused_total", &refused);
    assert_eq!(by_b, 2.0, "the port dialled is not a TCP port: guarded");
}

/// Garbage as a connection's first bytes fails that connection only: it is relayed as opaque
/// TCP to the app (which refuses it), and the next request on a new connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_first_bytes_fail_that_connection_alone() {
    let w = world("").await;
    let got =
        w.a.run(async {
            let mut conn = TcpStream::connect("10.96.0.10:80").await.unwrap();
            conn.write_all(b"\x00\x01\x02 not a protocol \xff\r\n\r\n")
                .await
                .unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest));
            read.await.expect("the connection ends").ok();
            String::from_utf8_lossy(&rest).into_owned()
        })
        .await;
    assert!(!got.contains("200 OK"), "{got}");
    let rsp = get_from(&w.a, false, "10.96.0.10:80", "b.shop").await;
    assert_eq!((rsp.status, rsp.header("x-seen-identity")), (200, CALLER));
    let a = w.a.metrics().await;
    let tcp = ["protocol=\"tcp\"", "decided=\"detected\""];
    assert_eq!(
        metric(&a, "weft_proxy_protocol_detections_total", &tcp),
        1.0,
        "{a}"
    );
    drop((w.b, w.c, w.d));
}
