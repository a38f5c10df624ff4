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

/// Pods for the tests below: a (the caller), b and b2 (two endpoints of Service b), s1 and s2
/// (servers that speak first: s1 on 3306, one of MeshConfig's default `opaquePorts`, s2 on 7000,
/// an undeclared-protocol port), and u, outside the mesh (no init, no proxy).
struct Pods {
    a: Pod,
    b: Pod,
    b2: Pod,
    s1: Pod,
    s2: Pod,
    u: Pod,
    _cp: ControlPlane,
    _node: Node,
}

fn config2(mesh_config: &str, p: &[&Pod; 5]) -> String {
    let [b, b2, s1, s2, _] = p;
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
  clusterIPs: [10.96.0.10]
  endpoints: [{{address: "{b}"}}, {{address: "{b2}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: s1, namespace: shop}}
spec:
  ports: [{{port: 3306}}]
  clusterIPs: [10.96.0.21]
  endpoints: [{{address: "{s1}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: s2, namespace: shop}}
spec:
  ports: [{{port: 7000}}]
  clusterIPs: [10.96.0.22]
  endpoints: [{{address: "{s2}"}}]
"#,
        b = b.addr(8080),
        b2 = b2.addr(8080),
        s1 = s1.addr(3306),
        s2 = s2.addr(7000),
    )
}

async fn pods(mesh_config: &str) -> Pods {
    let mut node = Node::create();
    let mut a = node.pod("a");
    let mut b = node.pod("b");
    let mut b2 = node.pod("b2");
    let mut s1 = node.pod("s1");
    let mut s2 = node.pod("s2");
    let u = node.pod("u");
    for (pod, name) in [(&b, "b"), (&b2, "b2"), (&u, "u")] {
        pod.spawn(async move {
            let l = TcpListener::bind("[::]:8080").await.unwrap();
            let _app = HttpApp::serve(name, Duration::ZERO, l);
            std::future::pending::<()>().await;
        });
    }
    s1.spawn(banner_server(3306));
    s2.spawn(banner_server(7000));
    let cp = node
        .control_plane(&config2(mesh_config, &[&b, &b2, &s1, &s2, &u]))
        .await;
    for pod in [&a, &b, &b2, &s1, &s2] {
        pod.init(&[]);
    }
    a.proxy(&cp, "shop", "a", "a").await;
    b.proxy(&cp, "shop", "b", "b").await;
    b2.proxy(&cp, "shop", "b", "b").await;
    s1.proxy(&cp, "shop", "s1", "s1").await;
    s2.proxy(&cp, "shop", "s2", "s2").await;
    Pods {
        a,
        b,
        b2,
        s1,
        s2,
        u,
        _cp: cp,
        _node: node,
    }
}

/// A server that speaks first, as SMTP or MySQL do: a greeting, then an answer to one line.
async fn banner_server(port: u16) {
    let l = TcpListener::bind(("0.0.0.0", port)).await.unwrap();
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            s.write_all(b"220 ready\r\n").await?;
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await?;
            s.write_all(&[b"250 ", &buf[..n]].concat()).await?;
            s.shutdown().await
        });
    }
}

/// Connects to `addr` from `pod`: how long the greeting took, and the answer to `EHLO`.
async fn greeted_by(pod: &Pod, addr: &str) -> (Duration, String) {
    let addr: SocketAddr = addr.parse().unwrap();
    pod.run(async move {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let start = std::time::Instant::now();
        let mut greeting = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut greeting))
            .await
            .expect("a greeting within 5 s")
            .unwrap();
        let took = start.elapsed();
        assert_eq!(&greeting, b"220 ready\r\n");
        conn.write_all(b"EHLO client.example\r\n").await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        (took, answer)
    })
    .await
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
}

/// A pod IP of a meshed Service reaches that one endpoint, over mTLS, where the cluster IP
/// balances over both; a destination outside the mesh is passed through as it is, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_ip_reaches_that_endpoint_alone_and_the_rest_is_passed_through() {
    let p = pods("accessLog: json").await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let rsp = get_from(&p.a, false, "10.96.0.10:80", "b.shop").await;
        seen.insert(rsp.header("x-app").to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "the cluster IP balances over b and b2: {seen:?}"
    );
    let b_ip = p.b.addr(8080).to_string();
    for _ in 0..10 {
        let rsp = get_from(&p.a, false, &b_ip, "b.shop").await;
        assert_eq!(rsp.header("x-app"), "b", "{rsp:?}");
        assert_eq!(rsp.header("x-seen-identity"), CALLER, "still mTLS");
    }

    let u = p.u.addr(8080).to_string();
    let rsp = get_from(&p.a, false, &u, "u").await;
    assert_eq!((rsp.status, rsp.header("x-app")), (200, "u"));
    assert_eq!(rsp.header("x-seen-identity"), "", "plain TCP: no identity");
    let a = p.a.metrics().await;
    let count = |destination: &str| {
        let labels = [
            "direction=\"outbound\"",
            &format!("destination=\"{destination}\""),
        ];
        metric(&a, "weft_proxy_redirected_connections_total", &labels)
    };
    assert_eq!(count("endpoint"), 10.0, "{a}");
    assert_eq!(count("passthrough"), 1.0, "{a}");
    let passthrough = ["service=\"passthrough\""];
    assert_eq!(
        metric(&a, "weft_proxy_tcp_connections_opened_total", &passthrough),
        1.0
    );
    let line = format!("\"upstream\":\"{u}\"");
    eventually(
        "an access-log line for the passed-through connection",
        Duration::from_secs(5),
        || async {
            let log = p.a.proxy_log();
            log.lines()
                .any(|l| l.contains("\"service\":\"passthrough\"") && l.contains(&line))
                .then_some(())
        },
    )
    .await;
}

/// A plaintext client outside the mesh is refused by a pod under `mtls: strict` and served,
/// with no identity, under `permissive`; counted either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_from_outside_the_mesh_is_refused_when_strict_and_served_when_permissive() {
    let b_ip = |p: &Pods| p.b.addr(8080).to_string();
    let strict = pods("").await;
    let from_u = {
        let (addr, client) = (b_ip(&strict).parse::<SocketAddr>().unwrap(), http1_client());
        strict
            .u
            .run(async move { get(&client, addr, "b", "/").await })
            .await
    };
    assert!(from_u.is_err(), "{from_u:?}");
    let b = strict.b.metrics().await;
    let refused = ["tls=\"false\"", "outcome=\"refused\""];
    assert_eq!(
        metric(&b, "weft_proxy_inbound_connections_total", &refused),
        1.0,
        "{b}"
    );
    drop(strict);

    let permissive = pods("mtls: permissive").await;
    let rsp = get_from(&permissive.u, false, &b_ip(&permissive), "b").await;
    assert_eq!((rsp.status, rsp.header("x-app")), (200, "b"), "{rsp:?}");
    assert_eq!(rsp.header("x-seen-identity"), "");
    // Not HTTP: relayed to the port it dialled.
    let s1 = permissive.s1.addr(3306).to_string();
    let (_, answer) = greeted_by(&permissive.u, &s1).await;
    assert_eq!(answer, "250 EHLO client.example\r\n");
    let b = permissive.b.metrics().await;
    let accepted = ["tls=\"false\"", "outcome=\"accepted\""];
    assert_eq!(
        metric(&b, "weft_proxy_inbound_connections_total", &accepted),
        1.0,
        "{b}"
    );
    // Meshed callers still arrive over mTLS.
    let rsp = get_from(&permissive.a, false, "10.96.0.10:80", "b.shop").await;
    assert_eq!(rsp.header("x-seen-identity"), CALLER);
}

/// `init` twice gives the same rules; `init --uninstall` leaves none of weft's, and the pod's
/// traffic flows directly again (IPv4 and IPv6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_twice_is_the_same_and_uninstall_lets_the_pods_traffic_flow_directly() {
    let p = pods("").await;
    let before = (p.a.nat_rules(false), p.a.nat_rules(true));
    assert!(before.0.contains("-A OUTPUT -j WEFT_OUTPUT") && before.1.contains("WEFT_OUTPUT"));
    p.a.init(&[]);
    assert_eq!(
        (p.a.nat_rules(false), p.a.nat_rules(true)),
        before,
        "no duplicates"
    );

    p.a.init(&["--uninstall"]);
    for v6 in [false, true] {
        let rules = p.a.nat_rules(v6);
        assert!(!rules.contains("WEFT"), "{rules}");
    }
    // To b's pod IP: now plaintext, straight from the app, so b's strict proxy refuses it.
    let (b, client) = (p.b.addr(8080), http1_client());
    let direct =
        p.a.run(async move { get(&client, b, "b", "/").await })
            .await;
    assert!(direct.is_err(), "{direct:?}");
    let u6 = p.u.addr6(8080).to_string();
    let rsp = get_from(&p.a, false, &u6, "u").await;
    assert_eq!(rsp.header("x-app"), "u");
    let a = p.a.metrics().await;
    assert_eq!(
        metric(&a, "weft_proxy_redirected_connections_total", &[]),
        0.0,
        "nothing reached a's proxy: {a}"
    );
}

/// `--skip-outbound-ports`, `--skip-outbound-cidrs` and `--skip-inbound-ports` are honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_ports_and_cidrs_are_not_redirected() {
    let p = pods("").await;
    let (u, b) = (p.u.addr(8080), p.b.addr(8080));
    p.a.init(&["--uninstall"]);
    p.a.init(&["--skip-outbound-ports", "8080"]);
    let client = http1_client();
    let direct =
        p.a.run(async move { get(&client, b, "b", "/").await })
            .await;
    assert!(
        direct.is_err(),
        "port 8080 skipped: plaintext to b, refused: {direct:?}"
    );

    p.a.init(&["--uninstall"]);
    p.a.init(&["--skip-outbound-cidrs", &format!("{}/32", p.u.ip)]);
    let rsp = get_from(&p.a, false, &u.to_string(), "u").await;
    assert_eq!(rsp.header("x-app"), "u");
    let rsp = get_from(&p.a, false, &b.to_string(), "b.shop").await;
    assert_eq!(
        rsp.header("x-seen-identity"),
        CALLER,
        "other destinations still redirected"
    );
    let a = p.a.metrics().await;
    let passthrough = ["destination=\"passthrough\""];
    assert_eq!(
        metric(&a, "weft_proxy_redirected_connections_total", &passthrough),
        0.0
    );

    // b skips its inbound port 8080: plaintext from outside reaches its app even under strict.
    p.b.init(&["--uninstall"]);
    p.b.init(&["--skip-inbound-ports", "8080"]);
    let rsp = get_from(&p.u, false, &b.to_string(), "b").await;
    assert_eq!((rsp.status, rsp.header("x-app")), (200, "b"));
    drop((p.b2, p.s1, p.s2));
}
