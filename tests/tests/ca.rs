//! The mesh CA changing under traffic: a trust-anchor rotation driven by `weft ca rotate`, and an
//! issuer from files (`--ca-cert`/`--ca-key`) replaced on disk. Neither may fail a request, and
//! the HTTP load is joined by a TCP load whose every connection is a new mTLS handshake between
//! the proxies, so that handshakes keep happening across every step.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tests::apps::{self, HttpApp};
use weft_tests::*;

/// Callers that each open a new TCP connection per exchange through the client proxy: every
/// exchange is a new mTLS connection between the proxies.
fn tcp_load(addr: SocketAddr, callers: usize) -> Load {
    Load::with(callers, move || exchange(addr))
}

async fn exchange(addr: SocketAddr) -> anyhow::Result<()> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"ping").await?;
    conn.shutdown().await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await??;
    anyhow::ensure!(got == b"ping<eof seen>", "echoed {got:?}");
    Ok(())
}

/// A client proxy calling an HTTP service and a TCP service, each behind its own proxy.
struct Traffic {
    client: Sidecar,
    orders: Sidecar,
    echo: Sidecar,
    _app: HttpApp,
}

impl Traffic {
    fn yaml(orders: &Sidecar, echo: &Sidecar) -> String {
        format!(
            "{}{}",
            service_yaml("shop", "orders", "HTTP", &[orders.inbound]),
            service_yaml("shop", "echo", "TCP", &[echo.inbound])
        )
    }

    async fn bind() -> (Sidecar, Sidecar, Sidecar) {
        (
            Sidecar::builder()
                .upstream("orders.shop:8080")
                .upstream("echo.shop:8080")
                .bind()
                .await,
            Sidecar::builder().bind().await,
            Sidecar::builder().bind().await,
        )
    }

    async fn start(
        mesh: &Mesh,
        mut client: Sidecar,
        mut orders: Sidecar,
        mut echo: Sidecar,
    ) -> Self {
        let app = HttpApp::start("orders").await;
        orders.start(mesh, "shop", "orders", app.addr);
        echo.start(mesh, "shop", "echo", apps::tcp_echo().await);
        client.start(mesh, "shop", "frontend", NO_APP.parse().unwrap());
        for s in [&client, &orders, &echo] {
            s.ready().await;
        }
        Self {
            client,
            orders,
            echo,
            _app: app,
        }
    }

    fn sidecars(&self) -> [&Sidecar; 3] {
        [&self.client, &self.orders, &self.echo]
    }
}

async fn identity(s: &Sidecar) -> serde_json::Value {
    let r = get(&http1_client(), s.admin, "localhost", "/identity")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

/// Waits until every proxy trusts exactly `anchors` (fingerprints, in any order).
async fn all_trust(traffic: &Traffic, anchors: &[String], what: &str) {
    let mut want = anchors.to_vec();
    want.sort();
    eventually(what, Duration::from_secs(10), || async {
        for s in traffic.sidecars() {
            let doc = identity(s).await;
            let mut have: Vec<String> = doc["trustAnchors"]
                .as_array()?
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            have.sort();
            if have != want {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Waits until every proxy serves with a certificate from `issuer`.
async fn all_issued_by(traffic: &Traffic, issuer: &str, what: &str) {
    eventually(what, Duration::from_secs(10), || async {
        for s in traffic.sidecars() {
            if identity(s).await["issuer"] != issuer {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// `weft ca ARGS --server http://API`: (exit code, stdout, stderr).
async fn weft_ca(mesh: &Mesh, args: &[&str]) -> (i32, String, String) {
    let server = format!("http://{}", mesh.api_addr);
    run_weft(None, &[&["ca"], args, &["--server", &server]].concat(), "").await
}

fn anchors_of(mesh: &Mesh) -> Vec<String> {
    mesh.running()
        .ca
        .signer()
        .anchors
        .iter()
        .map(|a| a.fingerprint.clone())
        .collect()
}

/// Lets at least `n` more exchanges of each load happen: the step just taken is exercised by
/// new handshakes before the next one.
async fn more_traffic(http: &Load, tcp: &Load, n: u64) {
    let (h, t) = (http.ok(), tcp.ok());
    eventually("traffic to go on", Duration::from_secs(10), || async {
        (http.ok() >= h + n && tcp.ok() >= t + n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_anchor_rotation_under_load_fails_no_request() {
    let (client, orders, echo) = Traffic::bind().await;
    let mesh = Mesh::builder()
        .config(Traffic::yaml(&orders, &echo))
        .start()
        .await;
    let traffic = Traffic::start(&mesh, client, orders, echo).await;
    let old_root = anchors_of(&mesh);
    let old_issuer = mesh.running().ca.signer().issuer_id.clone();
    assert_eq!(old_root.len(), 1);
    all_trust(&traffic, &old_root, "every proxy to trust the first root").await;

    let http = Load::start(traffic.client.upstreams[0], "orders", 2, |r| {
        r.status == 200
    });
    let tcp = tcp_load(traffic.client.upstreams[1], 2);
    more_traffic(&http, &tcp, 20).await;

    // Steps out of order are refused with what to do instead.
    let (code, _, err) = weft_ca(&mesh, &["rotate", "activate"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot activate now: start with `weft ca rotate prepare`"),
        "{err}"
    );

    // 1. prepare: a new root, trusted beside the old one everywhere; the old issuer still signs.
    let (code, out, err) = weft_ca(&mesh, &["rotate", "prepare"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("phase:   prepared"), "{out}");
    let both = anchors_of(&mesh);
    assert_eq!(both.len(), 2, "old and new root");
    assert!(both.contains(&old_root[0]));
    all_trust(&traffic, &both, "every proxy to trust both roots").await;
    assert_eq!(mesh.running().ca.signer().issuer_id, old_issuer);
    more_traffic(&http, &tcp, 20).await;

    // 2. activate: the new issuer signs, and every proxy renews from it promptly.
    let (code, _, err) = weft_ca(&mesh, &["rotate", "activate"]).await;
    assert_eq!(code, 0, "{err}");
    let new_issuer = mesh.running().ca.signer().issuer_id.clone();
    assert_ne!(new_issuer, old_issuer);
    all_issued_by(
        &traffic,
        &new_issuer,
        "every proxy to renew from the new issuer",
    )
    .await;
    eventually(
        "the control plane to see every proxy on the new issuer",
        Duration::from_secs(10),
        || async {
            let (_, out, _) = weft_ca(&mesh, &["status"]).await;
            out.contains("proxies: 3 on the current issuer, 0 on another")
                .then_some(())
        },
    )
    .await;
    more_traffic(&http, &tcp, 20).await;

    // 3. retire: only the new root is trusted, and new handshakes go on.
    let (code, _, err) = weft_ca(&mesh, &["rotate", "retire"]).await;
    assert_eq!(code, 0, "{err}");
    let new_root: Vec<String> = both.into_iter().filter(|a| *a != old_root[0]).collect();
    assert_eq!(anchors_of(&mesh), new_root);
    all_trust(
        &traffic,
        &new_root,
        "every proxy to trust only the new root",
    )
    .await;
    more_traffic(&http, &tcp, 50).await;

    let (http_ok, http_failed) = http.stop().await;
    let (tcp_ok, tcp_failed) = tcp.stop().await;
    assert_eq!(
        (http_failed, tcp_failed),
        (0, 0),
        "no failed request across the rotation ({http_ok} HTTP and {tcp_ok} TCP exchanges succeeded)"
    );

    // A proxy started now, from the trust-anchors file as it is now, joins and is reached.
    let pem = std::fs::read_to_string(mesh.anchors()).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);
    let mut late = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    late.start(&mesh, "shop", "late", NO_APP.parse().unwrap());
    late.ready().await;
    let r = get(&http1_client(), late.upstreams[0], "orders", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

/// An external CA made here, as cert-manager or an operator would: one root, and issuers signed
/// by it on demand.
struct ExternalCa {
    root: rcgen::Issuer<'static, rcgen::KeyPair>,
    root_pem: String,
}

impl ExternalCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = Self::ca_params("external root", 1);
        let cert = params.self_signed(&key).unwrap();
        Self {
            root: rcgen::Issuer::new(params, key),
            root_pem: cert.pem(),
        }
    }

    fn ca_params(name: &str, path_len: u8) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(path_len));
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p
    }

    /// A new issuing intermediate: (certificate PEM, key PEM).
    fn issuer(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = Self::ca_params(name, 0)
            .signed_by(&key, &self.root)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Replaces a file the way Kubernetes updates a mounted Secret: write aside, then rename.
fn replace(path: &std::path::Path, data: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_issuer_on_disk_is_picked_up_without_a_restart() {
    let external = ExternalCa::new();
    let dir = TempDir::new();
    let (cert, key, roots) = (
        dir.0.join("tls.crt"),
        dir.0.join("tls.key"),
        dir.0.join("ca.crt"),
    );
    let (cert_pem, key_pem) = external.issuer("issuer one");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    std::fs::write(&roots, &external.root_pem).unwrap();

    let (client, orders, echo) = Traffic::bind().await;
    let mesh = Mesh::builder()
        .config(Traffic::yaml(&orders, &echo))
        .ca(weft::ca::Source::Files {
            cert: cert.clone(),
            key: key.clone(),
            roots: Some(roots),
        })
        .start()
        .await;
    let traffic = Traffic::start(&mesh, client, orders, echo).await;
    let first = mesh.running().ca.signer().issuer_id.clone();
    all_issued_by(&traffic, &first, "certificates from the first issuer").await;
    let (code, _, err) = weft_ca(&mesh, &["rotate", "prepare"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("rotate it by replacing those files"), "{err}");

    let http = Load::start(traffic.client.upstreams[0], "orders", 2, |r| {
        r.status == 200
    });
    let tcp = tcp_load(traffic.client.upstreams[1], 2);
    more_traffic(&http, &tcp, 20).await;

    // A key that does not belong to the certificate is refused; the CA in force keeps signing.
    let (_, other_key) = external.issuer("unrelated");
    replace(&key, &other_key);
    let err = mesh.running().ca.reload().unwrap_err().to_string();
    assert!(
        err.contains("does not belong to the issuing certificate"),
        "{err}"
    );
    assert_eq!(mesh.running().ca.signer().issuer_id, first);
    more_traffic(&http, &tcp, 20).await;

    // A good new issuer (key first, then certificate, as a Secret update may land): picked up,
    // and every proxy renews from it.
    let (cert_pem, key_pem) = external.issuer("issuer two");
    replace(&key, &key_pem);
    replace(&cert, &cert_pem);
    let second = eventually(
        "the new issuer to take effect",
        Duration::from_secs(10),
        || async {
            let id = mesh.running().ca.signer().issuer_id.clone();
            (id != first).then_some(id)
        },
    )
    .await;
    all_issued_by(
        &traffic,
        &second,
        "every proxy to renew from the new issuer",
    )
    .await;
    more_traffic(&http, &tcp, 50).await;

    let (_, http_failed) = http.stop().await;
    let (_, tcp_failed) = tcp.stop().await;
    assert_eq!((http_failed, tcp_failed), (0, 0));
}
