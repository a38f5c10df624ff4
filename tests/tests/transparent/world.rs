//! The pods of these tests, their apps, and the mesh's config.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_tests::apps::{grpc_echo_on, tcp_echo_on, HttpApp};
use weft_tests::*;

pub const CALLER: &str = "spiffe://weft.local/ns/shop/sa/a";

/// MeshConfig (its spec `mesh_config`) and Service `a`, the caller's: the start of every
/// config here.
pub fn mesh_header(mesh_config: &str) -> String {
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
"#
    )
}

/// The mesh of these tests: Services `b` (HTTP, its app in pod b), `c` (TCP echo, pod c), `d`
/// (gRPC, pod d), each with cluster IPs; MeshConfig from `mesh_config`.
fn config(mesh_config: &str, b: &Pod, c: &Pod, d: &Pod) -> String {
    format!(
        r#"{}---
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
        mesh_header(mesh_config),
        b8080 = b.addr(8080),
        b6_8080 = b.addr6(8080),
        c9000 = c.addr(9000),
        d50051 = d.addr(50051),
    )
}

/// A node, pods a (the caller), b, c, d with their apps, init run in each and each one's proxy
/// ready.
pub struct World {
    pub a: Pod,
    pub b: Pod,
    pub c: Pod,
    pub d: Pod,
    pub _cp: ControlPlane,
    pub _node: Node,
}

pub async fn world(mesh_config: &str) -> World {
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

pub async fn get_from(pod: &Pod, http2: bool, addr: &str, host: &str) -> Reply {
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

/// Pods for the tests below: a (the caller), b and b2 (two endpoints of Service b), s1 and s2
/// (servers that speak first: s1 on 3306, one of MeshConfig's default `opaquePorts`, s2 on 7000,
/// an undeclared-protocol port), and u, outside the mesh (no init, no proxy).
pub struct Pods {
    pub a: Pod,
    pub b: Pod,
    pub b2: Pod,
    pub s1: Pod,
    pub s2: Pod,
    pub u: Pod,
    pub cp: ControlPlane,
    pub _node: Node,
}

fn config2(mesh_config: &str, p: &[&Pod; 5]) -> String {
    let [b, b2, s1, s2, _] = p;
    format!(
        r#"{}---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: b, namespace: shop}}
spec:
  ports: [{{name: http, port: 80}}, {{name: cache, port: 6379, protocol: TCP}}]
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
        mesh_header(mesh_config),
        b = b.addr(8080),
        b2 = b2.addr(8080),
        s1 = s1.addr(3306),
        s2 = s2.addr(7000),
    )
}

pub async fn pods(mesh_config: &str) -> Pods {
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
        cp,
        _node: node,
    }
}

/// A server that speaks first, as SMTP or MySQL do: a greeting, then an answer to one line.
pub async fn banner_server(port: u16) {
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
pub async fn greeted_by(pod: &Pod, addr: &str) -> (Duration, String) {
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
