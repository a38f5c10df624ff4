//! Who may use the admin surfaces on loopback: the control plane's API and the proxy's admin
//! listener. Loopback alone is no credential (any local process, a container of the same pod,
//! a `kubectl port-forward`, a connection relayed by a sidecar all arrive from loopback), a
//! browser page cannot reach them (Host allow-list against DNS rebinding; no cross-origin
//! requests, no CORS-safelisted content types against CSRF), and the proxy's drain is off unless
//! enabled.

#![allow(clippy::unwrap_used)]

use weft_tests::apps::HttpApp;
use weft_tests::*;

const SERVICE: &str = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: orders, namespace: shop}\nspec: {ports: [{port: 8080}]}\n";

/// Every admin operation, each a request a local attacker would send first.
fn admin_operations() -> Vec<(&'static str, &'static str, String)> {
    vec![
        (
            "POST",
            "/api/v1/tokens",
            r#"{"workload": "shop/orders"}"#.into(),
        ),
        ("GET", "/api/v1/tokens", String::new()),
        ("DELETE", "/api/v1/tokens/abc", String::new()),
        ("GET", "/api/v1/ca", String::new()),
        ("POST", "/api/v1/ca/rotate", r#"{"step": "prepare"}"#.into()),
        (
            "POST",
            "/api/v1/ca/admin-certificates",
            r#"{"name": "mallory", "csr": "x"}"#.into(),
        ),
        ("POST", "/api/v1/apply", SERVICE.into()),
        ("PUT", "/api/v1/services/shop/orders", SERVICE.into()),
        ("DELETE", "/api/v1/services/shop/orders", String::new()),
        ("GET", "/api/v1/services", String::new()),
        ("GET", "/api/v1/audit", String::new()),
        ("GET", "/admin/config", String::new()),
        ("POST", "/admin/shutdown", String::new()),
    ]
}

async fn call(
    addr: std::net::SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    send_body(
        &http1_client(),
        addr,
        host,
        method,
        path,
        headers,
        bytes::Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_without_the_admin_token_nothing_is_granted() {
    let mesh = Mesh::builder().start().await;
    let host = mesh.api_addr.to_string();
    for (method, path, body) in admin_operations() {
        let r = call(
            mesh.api_addr,
            &host,
            method,
            path,
            &[("content-type", "application/json")],
            &body,
        )
        .await;
        assert_eq!(r.status, 401, "{method} {path}: {r:?}");
        assert_eq!(r.header("www-authenticate"), "Bearer realm=\"weft\"");
        assert!(
            r.body.contains("admin-token"),
            "says what to send: {}",
            r.body
        );
    }
    assert!(mesh.running().tokens.list().is_empty(), "no token was made");
    assert_eq!(
        mesh.running().ca.phase(),
        Some(weft::ca::Phase::Steady),
        "the CA was not rotated"
    );
    assert!(mesh.state().mesh().resources.is_empty(), "nothing written");
    // Probes, metrics and the OpenAPI document stay open; the control plane still runs.
    for path in [
        "/admin/live",
        "/admin/ready",
        "/admin/metrics",
        "/api/v1/openapi.json",
    ] {
        assert_eq!(
            call(mesh.api_addr, &host, "GET", path, &[], "")
                .await
                .status,
            200,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_allowed_is_refused_before_anything_else() {
    let mesh = Mesh::builder().start().await;
    let port = mesh.api_addr.port();
    // DNS rebinding: a page of evil.example, its name now resolving to 127.0.0.1.
    for host in [
        format!("evil.example:{port}"),
        "evil.example".into(),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        for (method, path, body) in admin_operations() {
            let r = call(
                mesh.api_addr,
                &host,
                method,
                path,
                &[("content-type", "application/json")],
                &body,
            )
            .await;
            assert_eq!(r.status, 421, "{host} {method} {path}: {r:?}");
            assert!(
                r.body.contains("--api-host"),
                "names the setting: {}",
                r.body
            );
        }
    }
    assert!(mesh.running().tokens.list().is_empty());
    assert!(mesh.state().mesh().resources.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_browser_may_send_cross_origin_are_refused() {
    let mesh = Mesh::builder().start().await;
    let host = format!("localhost:{}", mesh.api_addr.port());
    // The three content types a page may POST anywhere without a preflight, and none.
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("content-type", t))
            .into_iter()
            .collect();
        for (method, path, body) in [
            ("POST", "/api/v1/apply", SERVICE.to_string()),
            ("PUT", "/api/v1/services/shop/orders", SERVICE.to_string()),
            (
                "POST",
                "/api/v1/tokens",
                r#"{"workload": "shop/orders"}"#.to_string(),
            ),
            ("POST", "/api/v1/ca/rotate", r#"{"step": "prepare"}"#.into()),
        ] {
            let r = call(mesh.api_addr, &host, method, path, &headers, &body).await;
            assert_eq!(r.status, 415, "{content_type:?} {method} {path}: {r:?}");
            assert!(r.body.contains("application/json"), "{}", r.body);
        }
    }
    // A request a browser made on behalf of another site.
    for header in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let r = call(
            mesh.api_addr,
            &host,
            "POST",
            "/api/v1/apply",
            &[("content-type", "application/json"), header],
            SERVICE,
        )
        .await;
        assert_eq!(r.status, 403, "{header:?}: {r:?}");
        assert!(r.body.contains("browser"), "{}", r.body);
    }
    assert!(mesh.running().tokens.list().is_empty());
    assert!(mesh.state().mesh().resources.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_drain_is_off_unless_enabled_and_never_for_a_browser() {
    let app = HttpApp::start("orders").await;
    let (_mesh, client, _server) = pair("HTTP", app.addr).await;
    let http = http1_client();
    let admin = client.admin;
    let r = send(&http, admin, "localhost", "POST", "/shutdown", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("admin-shutdown"), "{}", r.body);
    for (host, headers) in [
        ("evil.example", &[][..]),
        ("localhost", &[("origin", "http://evil.example")][..]),
        ("localhost", &[("sec-fetch-site", "cross-site")][..]),
    ] {
        for path in ["/config", "/identity"] {
            let r = send(&http, admin, host, "GET", path, headers)
                .await
                .unwrap();
            assert!(
                r.status == 421 || r.status == 403,
                "{host} {headers:?} {path}: {r:?}"
            );
        }
    }
    // Still serving.
    let r = get(&http, client.upstreams[0], "orders", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    // Not draining (a drain answers 503 here at once), and probes are open whatever the Host.
    let r = get(&http, admin, "evil.example", "/ready").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

/// Runs the built `weft ARGS` in `cwd` with `env`; returns (exit code, stdout, stderr).
fn weft_in(cwd: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::new(binary("weft"));
    command
        .current_dir(cwd)
        .args(args)
        .env_remove("WEFT_DATA_DIR");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_admin_token_where_weft_serve_keeps_it() {
    let home = TempDir::new();
    let data = home.0.join("weft-data");
    let (code, _, err) = weft_in(&home.0, &[], &["serve", "--api-host", "cp.example:15080"]);
    assert_eq!((code, err.trim()), (64, "weft: api-host=\"cp.example:15080\": expected a host name, without a port (e.g. cp.example.com)"));
    let serve = ServeProcess::builder()
        .args(&[
            "--data-dir",
            data.to_str().unwrap(),
            "--api-host",
            "cp.example",
        ])
        .start()
        .await;
    let server = format!("http://{}", serve.api_addr);
    // The data dir and the token are the control plane's user's alone.
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("admin-token")), 0o600);
    let list = ["get", "services", "--server", &server];
    // From the folder where `weft serve` keeps its default ./weft-data: nothing to pass.
    let (code, out, err) = weft_in(&home.0, &[], &list);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("KIND"), "{out}");
    let (code, out, err) = weft_in(
        &home.0,
        &[],
        &["token", "create", "shop/orders", "--server", &server],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("weft."), "{out}");
    // Elsewhere: say what to do.
    let elsewhere = TempDir::new();
    let (code, _, err) = weft_in(&elsewhere.0, &[], &list);
    assert_eq!(code, 1, "{err}");
    for hint in [
        "no admin token at ./weft-data/admin-token",
        "--data-dir",
        "WEFT_DATA_DIR",
        "--token-file",
    ] {
        assert!(err.contains(hint), "{hint}: {err}");
    }
    // ...and there, --data-dir or WEFT_DATA_DIR.
    let data = data.to_str().unwrap();
    let (code, _, err) = weft_in(
        &elsewhere.0,
        &[],
        &[&list[..], &["--data-dir", data]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = weft_in(&elsewhere.0, &[("WEFT_DATA_DIR", data)], &list);
    assert_eq!(code, 0, "{err}");
    // A name given with --api-host is answered; others are not.
    let token = format!("Bearer {}", admin_token(serve.api_addr).unwrap());
    for (host, status) in [("CP.example:15080", 200), ("other.example", 421)] {
        let r = send(
            &http1_client(),
            serve.api_addr,
            host,
            "GET",
            "/api/v1/services",
            &[("authorization", &token)],
        )
        .await
        .unwrap();
        assert_eq!(r.status, status, "{host}: {r:?}");
    }
    // A Service in the control plane's namespace is refused, with its field.
    let svc = elsewhere.0.join("svc.yaml");
    std::fs::write(&svc, "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: api, namespace: weft-system}\nspec:\n  ports: [{port: 15080}]\n  serviceAccount: weft-control-plane\n  endpoints: [{address: \"127.0.0.1:15080\"}]\n").unwrap();
    let (code, _, err) = weft_in(
        &home.0,
        &[],
        &["apply", "-f", svc.to_str().unwrap(), "--server", &server],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("metadata.namespace: weft-system is reserved for the control plane"),
        "{err}"
    );
    serve.terminate().await;
}

/// Finding: a Service in `weft-system` whose endpoint is the API port would have a proxy dial
/// the API with mTLS (the API serves the control plane's certificate) and relay its local
/// callers, from loopback. No such Service can exist, and a connection from loopback with a
/// workload's certificate and no admin token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_service_may_lead_a_sidecar_to_the_api() {
    let mesh = Mesh::builder().start().await;
    let api = mesh.api_addr;
    let sneaky = format!("apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: weft-control-plane, namespace: weft-system}}\nspec:\n  ports: [{{port: 15080}}]\n  serviceAccount: weft-control-plane\n  endpoints: [{{address: \"{api}\"}}]\n");
    let (status, answer) = api_call(api, "POST", "/api/v1/apply", &sneaky).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["problems"][0]["field"], "metadata.namespace",
        "{answer}"
    );
    // The same in a --config file: refused, and the config in force stays.
    mesh.write_config(&sneaky);
    eventually(
        "the file to be refused",
        std::time::Duration::from_secs(5),
        || async {
            let (_, config) = api_call(api, "GET", "/admin/config", "").await;
            config["lastRefusal"]
                .to_string()
                .contains("weft-system is reserved")
                .then_some(())
        },
    )
    .await;
    assert!(mesh.state().mesh().resources.is_empty());
    // A route or policy cannot point there either.
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{name: orders}]\n  rules: [{backendRefs: [{name: weft-control-plane, namespace: weft-system, port: 15080}]}]\n";
    let (status, answer) = api_call(api, "POST", "/api/v1/apply", route).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["problems"][0]["field"], "spec.rules[0].backendRefs[0].namespace",
        "{answer}"
    );
}
