//! Transparent interception end to end, in network namespaces the tests create (needs root):
//! a node with a bridge, pods on it, each pod's app unchanged and talking to plain addresses,
//! `weft-proxy init` run in each meshed pod, and each pod's own `weft-proxy` process running as
//! the proxy UID. Everything (namespaces, processes, iptables rules) is removed afterwards, also
//! when a test fails: the namespaces hold all of it.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use weft_tests::apps::{grpc_echo_on, tcp_echo_on, HttpApp};
use weft_tests::grpc::{echo_client::EchoClient, EchoRequest};
use weft_tests::*;

const CALLER: &str = "spiffe://weft.local/ns/shop/sa/a";

/// The mesh of these tests: Services `b` (HTTP, its app in pod b), `c` (TCP echo, pod c), `d`
/// (gRPC, pod d), each with cluster IPs; MeshConfig from `mesh_config`.
fn config(mesh_config: &str, b: &Pod, c: &Pod, d: &Pod) -> String {
    format!(
        r#"apiVersion: weft.dev/v1alpha1
kind: MeshConfig
metadata: {{name: default}}
spec: {{{mesh_config}}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: a, namespace: shop}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: b, namespace: shop}}
spec:
  ports: [{{name: http, port: 80}}]
  clusterIPs: [10.96.0.10, "fd96::10"]
  endpoints: [{{address: "{b8080}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: b6, namespace: shop}}
spec:
  ports: [{{name: http, port: 80}}]
  serviceAccount: b
  clusterIPs: ["fd96::16"]
  endpoints: [{{address: "{b6_8080}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: c, namespace: shop}}
spec:
  ports: [{{name: echo, port: 9000, protocol: TCP}}]
  clusterIPs: [10.96.0.11]
  endpoints: [{{address: "{c9000}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: d, namespace: shop}}
spec:
  ports: [{{name: grpc, port: 50051, protocol: GRPC}}]
  clusterIPs: [10.96.0.12]
  endpoints: [{{address: "{d50051}"}}]
"#,
        b8080 = b.addr(8080),
        b6_8080 = b.addr6(8080),
        c9000 = c.addr(9000),
        d50051 = d.addr(50051),
    )
}

/// A node, pods a (the caller), b, c, d with their apps, init run in each and each one's proxy
/// ready.
struct World {
    a: Pod,
    b: Pod,
    c: Pod,
    d: Pod,
    _cp: ControlPlane,
    _node: Node,
}

async fn world(mesh_config: &str) -> World {
    let mut node = Node::create();
    let (mut a, mut b, mut c, mut d) = (node.pod("a"), node.pod("b"), node.pod("c"), node.pod("d"));
    b.spawn(async {
        let l = TcpListener::bind("[::]:8080").await.unwrap();
        let _app = HttpApp::serve("b", Duration::ZERO, l);
        std::future::pending::<()>().await;
    });
    c.spawn(async {
        tcp_echo_on(TcpListener::bind("0.0.0.0:9000").await.unwrap());
    });
    d.spawn(async {
        grpc_echo_on("d", TcpListener::bind("0.0.0.0:50051").await.unwrap());
    });
    let cp = node.control_plane(&config(mesh_config, &b, &c, &d)).await;
    for pod in [&a, &b, &c, &d] {
        pod.init(&[]);
    }
    a.proxy(&cp, "shop", "a", "a").await;
    b.proxy(&cp, "shop", "b", "b").await;
    c.proxy(&cp, "shop", "c", "c").await;
    d.proxy(&cp, "shop", "d", "d").await;
    World {
        a,
        b,
        c,
        d,
        _cp: cp,
        _node: node,
    }
}

async fn get_from(pod: &Pod, http2: bool, addr: &str, host: &str) -> Reply {
    let (addr, owned): (SocketAddr, String) = (addr.parse().unwrap(), host.to_string());
    pod.run(async move {
        let client = if http2 {
            http2_client()
        } else {
            http1_client()
        };
        get(&client, addr, &owned, "/hello").await
    })
    .await
    .unwrap_or_else(|e| panic!("GET {host} at {addr}: {e:#}"))
}

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
        let (mut ws, rsp) = tokio_tungstenite::client_async("ws://b.shop/ws", tcp)
            .await
            .unwrap();
        assert_eq!(rsp.status(), 101);
        for i in 0..3 {
            ws.send(Message::text(format!("ping {i}"))).await.unwrap();
            let echoed = ws.next().await.unwrap().unwrap();
            assert_eq!(echoed.into_text().unwrap().as_str(), format!("ping {i}"));
        }
        ws.close(None).await.unwrap();
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
    for (destination, at_least) in [("service", 7.0)] {
        let n = metric(
            &a,
            "weft_proxy_redirected_connections_total",
            &[
                "direction=\"outbound\"",
                &format!("destination=\"{destination}\""),
            ],
        );
        assert!(n >= at_least, "{destination}: {n}\n{a}");
    }
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
