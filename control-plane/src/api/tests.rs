//! The API's unit tests: who may do what (every credential, every peer), and a property test
//! that any request gets an answer below 500.

use super::*;
use crate::ca::Phase;

/// The admin token of [`api`]'s control plane.
const ADMIN: &str = "weft-admin.0000000000000000000000000000000000000000000000000000000000000000";
const LOOPBACK: &str = "127.0.0.1:40000";
const OFF: &str = "10.1.2.3:40000";

fn api(dir: &std::path::Path) -> Arc<Api> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let ca = Arc::new(Ca::load_or_create(dir, "weft.local").unwrap());
    let store = crate::store::Store::open(dir).unwrap();
    let state = State::open(
        Vec::new(),
        Some(store),
        "weft.local".into(),
        crate::mesh::Trust::of(&ca),
        metrics,
    )
    .unwrap();
    Arc::new(Api {
        state: Arc::new(state),
        ca,
        proxies: Arc::default(),
        tokens: Arc::new(Tokens::open(dir).unwrap()),
        shutdown: CancellationToken::new(),
        admin_token: AdminToken::of(ADMIN),
        api_tokens: None,
        hosts: Vec::new(),
    })
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-api-test-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A call as the admin, from loopback.
async fn call(api: &Arc<Api>, method: Method, path: &str, body: &str) -> (u16, String) {
    call_as(api, LOOPBACK, ADMIN, method, path, body).await
}

/// A call from `peer` with `token` (none when empty); a body is sent as JSON.
async fn call_as(
    api: &Arc<Api>,
    peer: &str,
    token: &str,
    method: Method,
    path: &str,
    body: &str,
) -> (u16, String) {
    call_over(
        api,
        Conn::plain(peer.parse().unwrap()),
        token,
        method,
        path,
        body,
    )
    .await
}

async fn call_over(
    api: &Arc<Api>,
    conn: Conn,
    token: &str,
    method: Method,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut req = Request::builder().method(method).uri(path);
    if !token.is_empty() {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let rsp = api.clone().handle(conn, req).await.unwrap();
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const SERVICE: &str = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: orders, namespace: shop}\nspec: {ports: [{port: 80}]}\n";

/// Join tokens and the CA.
fn privileged() -> Vec<(Method, &'static str, &'static str)> {
    vec![
        (
            Method::POST,
            "/api/v1/tokens",
            r#"{"workload": "shop/orders"}"#,
        ),
        (Method::GET, "/api/v1/tokens", ""),
        (Method::DELETE, "/api/v1/tokens/abc", ""),
        (Method::GET, "/api/v1/ca", ""),
        (Method::POST, "/api/v1/ca/rotate", r#"{"step": "prepare"}"#),
        (
            Method::POST,
            "/api/v1/ca/admin-certificates",
            r#"{"name": "ops", "csr": "x"}"#,
        ),
    ]
}

#[tokio::test]
async fn tokens_and_the_ca_are_for_the_admin_alone() {
    let dir = temp_dir();
    let tokens = dir.join("api-tokens");
    std::fs::write(&tokens, "s3cret,ops\n").unwrap();
    let mut api = api(&dir);
    Arc::get_mut(&mut api).unwrap().api_tokens = Some(tokens);
    for (method, path, body) in privileged() {
        for peer in [LOOPBACK, OFF, "[::1]:40000"] {
            // A user's API token, even on loopback.
            let (status, text) = call_as(&api, peer, "s3cret", method.clone(), path, body).await;
            assert_eq!(status, 403, "{method} {path} from {peer}: {text}");
            assert!(text.contains("admin token"), "{text}");
            let (status, text) = call_as(&api, peer, "", method.clone(), path, body).await;
            assert_eq!(status, 401, "{method} {path} from {peer}: {text}");
        }
        // The admin token is taken from loopback only.
        let (status, text) = call_as(&api, OFF, ADMIN, method.clone(), path, body).await;
        assert_eq!(status, 401, "{method} {path}: {text}");
        assert!(text.contains("loopback"), "{text}");
    }
    assert!(api.tokens.list().is_empty(), "nothing was created");
    assert_eq!(api.ca.phase(), Some(Phase::Steady), "nothing was rotated");
    let create = r#"{"workload": "shop/orders"}"#;
    let (status, text) = call(&api, Method::POST, "/api/v1/tokens", create).await;
    assert_eq!(status, 201, "{text}");
    let (status, text) = call_as(&api, "[::1]:1", ADMIN, Method::GET, "/api/v1/ca", "").await;
    assert_eq!(status, 200, "{text}");
    // No join token for the control plane's namespace: it would be an admin identity.
    for workload in ["weft-system/ops", "weft-system/weft-control-plane"] {
        let body = format!(r#"{{"workload": "{workload}"}}"#);
        let (status, text) = call(&api, Method::POST, "/api/v1/tokens", &body).await;
        assert_eq!(status, 422, "{text}");
        assert!(text.contains("reserved"), "{text}");
    }
    assert_eq!(api.tokens.list().len(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn every_call_needs_a_credential_also_on_loopback() {
    let dir = temp_dir();
    let tokens = dir.join("api-tokens");
    std::fs::write(&tokens, "# ops team\ns3cret,ops\n").unwrap();
    let mut api = api(&dir);
    for peer in [LOOPBACK, OFF] {
        for (method, path, body) in [
            (Method::POST, "/api/v1/apply", SERVICE),
            (Method::PUT, "/api/v1/services/shop/orders", SERVICE),
            (Method::DELETE, "/api/v1/services/shop/orders", ""),
            (Method::GET, "/api/v1/services", ""),
            (Method::GET, "/api/v1/proxies", ""),
            (Method::GET, "/api/v1/audit", ""),
            (Method::GET, "/admin/config", ""),
            (Method::POST, "/admin/shutdown", ""),
        ] {
            for token in ["", "wrong", "s3cret"] {
                let (status, text) = call_as(&api, peer, token, method.clone(), path, body).await;
                assert_eq!(
                    status, 401,
                    "{method} {path} from {peer}, {token:?}: {text}"
                );
                assert!(text.contains("admin token"), "{text}");
            }
        }
        for path in [
            "/admin/ready",
            "/admin/live",
            "/admin/metrics",
            "/api/v1/openapi.json",
        ] {
            let (status, _) = call_as(&api, peer, "", Method::GET, path, "").await;
            assert_eq!(status, 200, "{path}");
        }
    }
    assert!(!api.shutdown.is_cancelled());
    assert!(api.state.mesh().resources.is_empty(), "nothing was written");
    // Tokens of --api-token-file, from anywhere.
    Arc::get_mut(&mut api).unwrap().api_tokens = Some(tokens);
    for token in ["", "wrong", "ops", "# ops team"] {
        let (status, text) =
            call_as(&api, OFF, token, Method::POST, "/api/v1/apply", SERVICE).await;
        assert_eq!(status, 401, "token {token:?}: {text}");
    }
    let (status, text) = call_as(&api, OFF, "s3cret", Method::POST, "/api/v1/apply", SERVICE).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = call(&api, Method::DELETE, "/api/v1/services/shop/orders", "").await;
    assert_eq!(status, 200, "{text}");
    let (_, audit) = call(&api, Method::GET, "/api/v1/audit", "").await;
    assert!(
        audit.contains("user ops (bearer token) from 10.1.2.3:40000"),
        "{audit}"
    );
    assert!(
        audit.contains("admin (admin token) from 127.0.0.1:40000"),
        "{audit}"
    );
    let (status, _) = call_as(
        &api,
        LOOPBACK,
        "s3cret",
        Method::POST,
        "/admin/shutdown",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(api.shutdown.is_cancelled());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn only_admin_identities_may_use_the_api_with_a_client_certificate() {
    let dir = temp_dir();
    let api = api(&dir);
    let over_tls = |peer: &str, id: &str| Conn {
        peer: peer.parse().unwrap(),
        client_identity: Some(id.to_string()),
    };
    for peer in [OFF, LOOPBACK] {
        for id in [
            // From loopback, this is a workload's proxy relaying a mesh connection to the API.
            "spiffe://weft.local/ns/shop/sa/orders",
            "spiffe://weft.local/ns/weft-system/sa/weft-control-plane",
            "spiffe://other.domain/ns/weft-system/sa/ops",
            "spiffe://weft.local/ns/weft-system/sa/",
        ] {
            for token in ["", ADMIN] {
                let (status, text) = call_over(
                    &api,
                    over_tls(peer, id),
                    token,
                    Method::POST,
                    "/api/v1/apply",
                    SERVICE,
                )
                .await;
                assert_eq!(status, 403, "{id} from {peer}: {text}");
            }
        }
    }
    assert!(api.state.mesh().resources.is_empty());
    let ops = over_tls(OFF, "spiffe://weft.local/ns/weft-system/sa/ops");
    let (status, text) = call_over(
        &api,
        ops.clone(),
        "",
        Method::POST,
        "/api/v1/apply",
        SERVICE,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = call_over(&api, ops.clone(), "", Method::GET, "/api/v1/ca", "").await;
    assert_eq!(status, 200, "an admin manages the CA: {text}");
    // ...but cannot make admin certificates, which would let one renew itself for ever.
    let (status, text) = call_over(
        &api,
        ops,
        "",
        Method::POST,
        "/api/v1/ca/admin-certificates",
        r#"{"name": "ops2", "csr": "x"}"#,
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("admin token"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn only_allowed_hosts_json_or_yaml_and_no_browsers() {
    let dir = temp_dir();
    let mut api = api(&dir);
    Arc::get_mut(&mut api).unwrap().hosts = vec!["cp.example".into()];
    let send = |host: &str, headers: &[(&str, &str)]| {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/apply?dryRun=true")
            .header(header::HOST, host)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(SERVICE)))
            .unwrap();
        let api = api.clone();
        async move {
            let rsp = api
                .handle(Conn::plain(LOOPBACK.parse().unwrap()), req)
                .await
                .unwrap();
            let status = rsp.status().as_u16();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let yaml = [("content-type", "application/yaml")];
    for host in [
        "localhost:15080",
        "127.0.0.1:15080",
        "[::1]:1",
        "10.0.0.1",
        "cp.example:15080",
    ] {
        assert_eq!(send(host, &yaml).await.0, 200, "{host}");
    }
    for host in ["evil.example:15080", "weft.local", "127.0.0.1.nip.io"] {
        let (status, text) = send(host, &yaml).await;
        assert_eq!(status, 421, "{host}: {text}");
        assert!(
            text.contains("--api-host") && text.contains("misdirected"),
            "{text}"
        );
    }
    for t in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
    ] {
        let (status, text) = send("localhost", &[("content-type", t)]).await;
        assert_eq!(status, 415, "{t}: {text}");
        assert!(text.contains("unsupported-media-type"), "{text}");
    }
    assert_eq!(send("localhost", &[]).await.0, 415, "no type");
    for h in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let (status, text) = send("localhost", &[yaml[0], h]).await;
        assert_eq!(status, 403, "{h:?}: {text}");
    }
    assert!(api.state.mesh().resources.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn alias_bombs_are_refused_on_every_write_path() {
    let dir = temp_dir();
    let api = api(&dir);
    // One anchor of 1000 scalars aliased 3000 times: 9 KB that used to expand to 3 million
    // nodes before any field was looked at.
    let bomb = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata:\n  name: orders\n  annotations: {{a: &a [{}], b: [{}]}}\nspec: {{ports: [{{port: 80}}]}}\n",
        vec!["x"; 1000].join(","),
        vec!["*a"; 3000].join(",")
    );
    for (method, path) in [
        (Method::POST, "/api/v1/apply?dryRun=true"),
        (Method::POST, "/api/v1/apply"),
        (Method::PUT, "/api/v1/services/shop/orders"),
    ] {
        let started = std::time::Instant::now();
        let (status, text) = call(&api, method.clone(), path, &bomb).await;
        assert_eq!(status, 422, "{method} {path}: {text}");
        assert!(
            text.contains("anchors and aliases are not supported"),
            "{method} {path}: {text}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "{method} {path}: {:?}",
            started.elapsed()
        );
    }
    assert!(api.state.mesh().resources.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_admin_token_is_made_once_private_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let token = AdminToken::load_or_create(&dir).unwrap();
    let path = dir.join(ADMIN_TOKEN_FILE);
    let secret = std::fs::read_to_string(&path).unwrap();
    let secret = secret.trim();
    assert!(
        secret.starts_with("weft-admin.") && secret.len() == 11 + 64,
        "{secret}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(token.matches(secret));
    assert!(!token.matches(&secret[..secret.len() - 1]));
    assert!(!token.matches(""));
    // Kept across starts.
    assert!(AdminToken::load_or_create(&dir).unwrap().matches(secret));
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file left"
    );
    std::fs::write(&path, "guess\n").unwrap();
    let e = AdminToken::load_or_create(&dir).err().unwrap();
    assert!(e.to_string().contains("delete it"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

use proptest::prelude::*;

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "api",
            "v1",
            "services",
            "httproutes",
            "Service",
            "meshconfigs",
            "apply",
            "audit",
            "proxies",
            "tokens",
            "ca",
            "rotate",
            "admin-certificates",
            "admin",
            "config",
            "shop",
            "default",
            "pay",
            "..",
            "",
            "%00",
            "openapi.json",
        ])
        .prop_map(String::from),
        "[a-zA-Z0-9%._~-]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the method, path, body and caller, the API answers (no panic) and never with
    /// a server error: bad input is the caller's problem, named in a 4xx.
    #[test]
    fn any_request_gets_an_answer_that_is_not_a_server_error(
        method in prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "PATCH"]),
        segments in prop::collection::vec(segment(), 0..6),
        query in "[a-zA-Z=&0-9]{0,16}",
        body in prop_oneof![
            any::<String>(),
            Just(SERVICE.to_string()),
            "[{}\\[\\]:, a-z0-9\"\n-]{0,200}",
        ],
        loopback in any::<bool>(),
        admin in any::<bool>(),
        content_type in prop::sample::select(vec!["", "application/json", "application/yaml", "text/plain"]),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = std::env::temp_dir().join(format!("weft-api-prop-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let api = api(&dir);
        let path = format!("/{}?{query}", segments.join("/"));
        let peer = if loopback { "127.0.0.1:1" } else { "10.0.0.1:1" };
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, text) = rt.block_on(async {
            let mut req = Request::builder().method(method).uri(&path);
            if admin {
                req = req.header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
            }
            if !content_type.is_empty() {
                req = req.header(header::CONTENT_TYPE, content_type);
            }
            let Ok(req) = req
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            else {
                return (400, String::new()); // not a URI hyper would have accepted
            };
            let rsp = api.clone().handle(Conn::plain(peer.parse().unwrap()), req).await.unwrap();
            let status = rsp.status().as_u16();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        });
        drop(api);
        std::fs::remove_dir_all(&dir).unwrap();
        prop_assert!(status < 500, "{path}: {status} {text}");
    }
}
