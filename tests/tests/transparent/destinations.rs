//! Where redirected connections go.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_tests::apps::{tcp_echo_on, HttpApp};

use weft_tests::*;

use crate::world::*;

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
    let (status, config) = p.a.admin("/config").await.unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(status, 200);
    assert_eq!(config["addresses"][&b_ip]["endpoint"], true, "{config:#}");
    assert_eq!(config["addresses"]["10.96.0.10:80"]["service"]["name"], "b");
    assert_eq!(config["unknownAddresses"][0], u.as_str());
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

/// With the control plane gone, what the proxy knows keeps working, and a destination it has
/// never seen is passed through at once instead of waiting for an answer that cannot come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_control_plane_known_destinations_work_and_new_ones_pass_through_at_once() {
    let p = pods("").await;
    let rsp = get_from(&p.a, false, "10.96.0.10:80", "b.shop").await;
    assert_eq!(rsp.header("x-seen-identity"), CALLER);
    p.cp.serve.kill9().await;
    eventually(
        "a's config stream to be down",
        Duration::from_secs(10),
        || async {
            let m = p.a.metrics().await;
            (metric(&m, "weft_proxy_control_plane_connected", &[]) == 0.0).then_some(())
        },
    )
    .await;
    let start = std::time::Instant::now();
    let rsp = get_from(&p.a, false, &p.u.addr6(8080).to_string(), "u").await;
    assert_eq!(rsp.header("x-app"), "u");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let rsp = get_from(&p.a, false, "10.96.0.10:80", "b.shop").await;
    assert_eq!(
        rsp.header("x-seen-identity"),
        CALLER,
        "from the last config"
    );
    let a = p.a.metrics().await;
    let unresolved = ["destination=\"unresolved\""];
    assert_eq!(
        metric(&a, "weft_proxy_redirected_connections_total", &unresolved),
        1.0
    );
    drop((p.b, p.b2, p.s1, p.s2));
}

/// A pod calling its own Service, whose endpoint is that pod: the proxy's connection to its own
/// pod IP goes into its own inbound listener, as a peer's would, and the app answers itself over
/// mTLS (IPv4 and IPv6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_calling_its_own_service_reaches_itself_through_its_proxy() {
    let w = world("").await;
    let own = "spiffe://weft.local/ns/shop/sa/b";
    for (addr, host) in [("10.96.0.10:80", "b.shop"), ("[fd96::16]:80", "b6.shop")] {
        let rsp = get_from(&w.b, false, addr, host).await;
        assert_eq!(
            (rsp.status, rsp.header("x-app")),
            (200, "b"),
            "{addr}: {rsp:?}"
        );
        assert_eq!(rsp.header("x-seen-identity"), own, "{addr}");
    }
    let b = w.b.metrics().await;
    let app = ["direction=\"inbound\"", "destination=\"app\""];
    assert!(
        metric(&b, "weft_proxy_redirected_connections_total", &app) >= 2.0,
        "{b}"
    );
    drop((w.a, w.c, w.d));
}

/// A Service with several ports reaches each at its target port of the pod: HTTP on 80 → 8080,
/// TCP on 7777 → 9000, by cluster IP, and the pod IP at a target port reaches that endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_port_of_a_service_reaches_its_target_port() {
    let mut node = Node::create();
    let mut a = node.pod("a");
    let mut m = node.pod("m");
    m.spawn(async {
        let l = TcpListener::bind("[::]:8080").await.unwrap();
        let _app = HttpApp::serve("m", Duration::ZERO, l);
        tcp_echo_on(TcpListener::bind("0.0.0.0:9000").await.unwrap());
        std::future::pending::<()>().await;
    });
    let config = format!(
        r#"{}---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: m, namespace: shop}}
spec:
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: echo, port: 7777, protocol: TCP, targetPort: 9000}}
  clusterIPs: [10.96.0.30]
  endpoints: [{{address: "{}"}}]
"#,
        mesh_header(""),
        m.addr(8080)
    );
    let cp = node.control_plane(&config).await;
    for pod in [&a, &m] {
        pod.init(&[]);
    }
    a.proxy(&cp, "shop", "a", "a").await;
    m.proxy(&cp, "shop", "m", "m").await;

    let rsp = get_from(&a, false, "10.96.0.30:80", "m.shop").await;
    assert_eq!((rsp.status, rsp.header("x-app")), (200, "m"), "{rsp:?}");
    assert_eq!(rsp.header("x-seen-identity"), CALLER);
    let echo_pod = m.addr(9000);
    for addr in ["10.96.0.30:7777".parse::<SocketAddr>().unwrap(), echo_pod] {
        let got = a
            .run(async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                conn.write_all(b"hello").await.unwrap();
                conn.shutdown().await.unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).await.unwrap();
                got
            })
            .await;
        assert_eq!(got, b"hello<eof seen>", "{addr}");
    }
    let am = a.metrics().await;
    let count = |destination: &str| {
        let labels = [format!("destination=\"{destination}\"")];
        metric(
            &am,
            "weft_proxy_redirected_connections_total",
            &[labels[0].as_str()],
        )
    };
    assert_eq!((count("service"), count("endpoint")), (2.0, 1.0), "{am}");
    let mm = m.metrics().await;
    let tcp_in = ["direction=\"inbound\""];
    assert_eq!(
        metric(&mm, "weft_proxy_tcp_connections_opened_total", &tcp_in),
        2.0
    );
}
