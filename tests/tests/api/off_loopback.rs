//! The API off loopback: the control plane inside a network namespace the test creates (needs
//! root), called from outside through a veth pair.

use serde_json::{json, Value};
use weft_tests::netns::ip;
use weft_tests::*;

use crate::FILE_SERVICE;

/// A network namespace joined to this one by a veth pair: `host` is this side's address,
/// `inside` the namespace's. Removed (with the pair) when dropped.
struct Joined {
    netns: Netns,
    host: String,
    inside: String,
}

impl Joined {
    fn create() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let r = h.finish();
        let tag = format!("{:06x}", r & 0xff_ffff);
        let (a, b) = ((r >> 24) % 250, (r >> 32) % 64 * 4);
        let netns = Netns::create("api");
        let (host, inside) = (format!("10.{a}.{b}.1"), format!("10.{a}.{b}.2"));
        let (va, vb) = (format!("wa{tag}"), format!("wb{tag}"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &vb, "netns", &netns.name]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &va]);
        ip(&["link", "set", &va, "up"]);
        netns.ip(&["addr", "add", &format!("{inside}/30"), "dev", &vb]);
        netns.ip(&["link", "set", &vb, "up"]);
        Self {
            netns,
            host,
            inside,
        }
    }
}

/// The control plane runs inside a network namespace, its API on every address there; the CLI
/// calls it from this namespace, through the veth pair: off loopback, as the API sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_an_api_off_loopback_need_a_bearer_token_or_an_admin_certificate() {
    let joined = Joined::create();
    let dir = TempDir::new();
    let path = |name: &str| dir.0.join(name).display().to_string();
    std::fs::write(path("api-tokens"), "# CI pipeline\nci-s3cret,ci\n").unwrap();
    std::fs::write(path("wrong-token"), "guess\n").unwrap();
    std::fs::write(path("good-token"), "ci-s3cret\n").unwrap();
    std::fs::write(path("svc.yaml"), FILE_SERVICE).unwrap();
    let serve = ServeProcess::builder()
        .netns(&joined.netns.name)
        .args(&[
            "--data-dir",
            &path("data"),
            "--api-addr",
            "0.0.0.0:0",
            "--api-token-file",
            &path("api-tokens"),
        ])
        .start()
        .await;
    let port = serve.api_addr.port();
    let remote = format!("{}:{port}", joined.inside);
    let args = |auth: &[&str], command: &[&str], scheme: &str| -> Vec<String> {
        auth.iter()
            .chain(command)
            .map(|s| s.to_string())
            .chain(["--server".to_string(), format!("{scheme}://{remote}")])
            .collect()
    };
    let (wrong, good) = (path("wrong-token"), path("good-token"));
    let svc = path("svc.yaml");

    for auth in [&[][..], &["--token-file", wrong.as_str()][..]] {
        let (code, _, err) = run_weft(None, &args(auth, &["apply", "-f", &svc], "http"), "").await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("--api-token-file"), "{err}");
        let delete = ["delete", "service", "orders", "-n", "shop"];
        let (code, _, err) = run_weft(None, &args(auth, &delete, "http"), "").await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("bearer token"), "{err}");
        let (code, _, _) = run_weft(None, &args(auth, &["get", "services"], "http"), "").await;
        assert_eq!(code, 1, "reads need credentials too");
    }

    // With the token: nothing was written by the refused calls; now the write goes through.
    let token = ["--token-file", good.as_str()];
    let get = ["get", "services", "-o", "json"];
    let (code, out, err) = run_weft(None, &args(&token, &get, "http"), "").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["items"],
        json!([])
    );
    let (code, out, err) = run_weft(None, &args(&token, &["apply", "-f", &svc], "http"), "").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "service/shop/orders created\n"),
        "{err}"
    );

    // An admin certificate, made on the control plane's host (its loopback), works over TLS.
    let certs = path("certs");
    let data = path("data");
    let make = [
        "admin-cert",
        "ops",
        "--out",
        &certs,
        "--data-dir",
        &data,
        "--server",
        &format!("http://127.0.0.1:{port}"),
    ]
    .map(String::from);
    let (code, out, err) = run_weft(Some(&joined.netns.name), &make, "").await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("spiffe://weft.local/ns/weft-system/sa/ops"),
        "{out}"
    );
    let key = format!("{certs}/ops.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the key is the admin's alone");
    // A user's API token cannot have the CA sign.
    let (code, _, err) = run_weft(
        None,
        &args(
            &token,
            &make[..4].iter().map(String::as_str).collect::<Vec<_>>(),
            "http",
        ),
        "",
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("admin token"), "{err}");

    let ca = format!("{certs}/ca.crt");
    let cert = format!("{certs}/ops.crt");
    let tls = [
        "--certificate-authority",
        ca.as_str(),
        "--client-certificate",
        cert.as_str(),
        "--client-key",
        key.as_str(),
    ];
    let delete = ["delete", "service", "orders", "-n", "shop"];
    let (code, out, err) = run_weft(None, &args(&tls, &delete, "https"), "").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "service/shop/orders deleted\n"),
        "{err}"
    );
    // TLS without a client certificate is anonymous: refused.
    let (code, _, err) =
        run_weft(None, &args(&tls[..2], &["apply", "-f", &svc], "https"), "").await;
    assert_eq!(code, 1);
    assert!(err.contains("no bearer token"), "{err}");

    // The audit log names who wrote, and from where.
    let (code, out, err) = run_weft(
        None,
        &args(&tls, &["get", "services", "-o", "json"], "https"),
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["items"],
        json!([])
    );
    let (status, audit) = api_call_as(
        remote.parse().unwrap(),
        Some("ci-s3cret"),
        "GET",
        "/api/v1/audit",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let who: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["who"].as_str().unwrap())
        .collect();
    assert_eq!(who.len(), 2, "{audit}");
    assert!(
        who[0].starts_with(&format!("user ci (bearer token) from {}:", joined.host)),
        "{who:?}"
    );
    assert!(
        who[1].starts_with(&format!(
            "admin ops (client certificate) from {}:",
            joined.host
        )),
        "{who:?}"
    );
    serve.terminate().await;
}
