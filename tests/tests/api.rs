//! The control plane's API and `weft apply`/`weft delete` end to end: writes of every kind,
//! validation, conflicts, durability across restarts and `kill -9`, re-routing under traffic,
//! and how fast a write reaches proxies.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_tests::apps::HttpApp;
use weft_tests::*;

/// One resource of each kind: (URL plural, namespace, name, created, updated).
fn samples() -> Vec<(&'static str, &'static str, &'static str, Value, Value)> {
    let svc = |port: u16| {
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Service",
               "metadata": {"name": "pay", "namespace": "shop", "labels": {"team": "payments"}},
               "spec": {"ports": [{"port": port}], "endpoints": [{"address": "127.0.0.1:9"}]}})
    };
    let route = |weight: u32| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "pay", "namespace": "shop"},
               "spec": {"parentRefs": [{"kind": "Service", "name": "pay"}],
                        "rules": [{"backendRefs": [{"name": "pay", "weight": weight}]}]}})
    };
    let policy = |timeout: &str| {
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "TrafficPolicy",
               "metadata": {"name": "pay", "namespace": "shop"},
               "spec": {"targetRef": {"name": "pay"}, "timeouts": {"request": timeout}}})
    };
    let authz = |who: &str| {
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "pay", "namespace": "shop"},
               "spec": {"targetRef": {"name": "pay"},
                        "rules": [{"from": {"identities": [who]}}]}})
    };
    let mesh = |log: &str| {
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshConfig",
               "metadata": {"name": "default"},
               "spec": {"accessLog": log}})
    };
    vec![
        ("services", "shop", "pay", svc(8080), svc(9090)),
        ("httproutes", "shop", "pay", route(100), route(50)),
        ("trafficpolicies", "shop", "pay", policy("2s"), policy("3s")),
        (
            "authorizationpolicies",
            "shop",
            "pay",
            authz("spiffe://weft.local/ns/shop/sa/frontend"),
            authz("spiffe://weft.local/ns/shop/sa/checkout"),
        ),
        (
            "meshconfigs",
            "default",
            "default",
            mesh("json"),
            mesh("off"),
        ),
    ]
}

fn version(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {v}"))
}

const FILE_SERVICE: &str = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: orders, namespace: shop}\nspec: {ports: [{port: 8080}]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_read_update_delete_every_kind() {
    let mesh = Mesh::builder().config(FILE_SERVICE).start().await;
    let api = mesh.api_addr;
    for (plural, ns, name, created, updated) in samples() {
        let path = format!("/api/v1/{plural}/{ns}/{name}");
        let id = format!("{}/{ns}/{name}", created["kind"].as_str().unwrap());

        let (status, body) = api_call(api, "PUT", &path, &created.to_string()).await;
        assert_eq!(status, 201, "PUT {path}: {body}");
        let v1 = version(&body);
        let (status, read) = api_call(api, "GET", &path, "").await;
        assert_eq!(status, 200);
        assert_eq!(read, body, "GET answers what PUT stored");
        assert_eq!(read["spec"], body["spec"]);
        let in_force = mesh.state().mesh();
        let stored = in_force
            .resources
            .iter()
            .find(|s| s.resource.id() == id)
            .unwrap_or_else(|| panic!("{id} in force"));
        assert_eq!(stored.source, "api");

        // An update with the version read: accepted, with a higher version.
        let mut update = updated.clone();
        update["metadata"]["resourceVersion"] = json!(v1.to_string());
        let (status, body) = api_call(api, "PUT", &path, &update.to_string()).await;
        assert_eq!(status, 200, "update {path}: {body}");
        let v2 = version(&body);
        assert!(v2 > v1);
        assert_eq!(
            body["spec"],
            api_call(api, "GET", &path, "").await.1["spec"]
        );
        // The same again, without a version: nothing to change, the version stays.
        let (status, body) = api_call(api, "PUT", &path, &updated.to_string()).await;
        assert_eq!(status, 200);
        assert_eq!(
            version(&body),
            v2,
            "an unchanged resource keeps its version"
        );

        let (_, list) = api_call(api, "GET", &format!("/api/v1/{plural}"), "").await;
        assert!(
            list["items"].as_array().unwrap().iter().any(|r| r == &body),
            "{list}"
        );

        let (status, body) = api_call(api, "DELETE", &path, "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["deleted"], json!(id));
        assert_eq!(api_call(api, "GET", &path, "").await.0, 404);
        let (status, body) = api_call(api, "DELETE", &path, "").await;
        assert_eq!((status, body["reason"].as_str()), (404, Some("not-found")));
        assert!(mesh
            .state()
            .mesh()
            .resources
            .iter()
            .all(|s| s.resource.id() != id));
    }

    // A resource from a --config file cannot be written or deleted through the API.
    let body = FILE_SERVICE.replace("8080", "9090");
    let (status, answer) = api_call(api, "PUT", "/api/v1/services/shop/orders", &body).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["reason"], "file-managed");
    assert!(
        answer["message"].as_str().unwrap().contains("mesh.yaml"),
        "names the file: {answer}"
    );
    let (status, answer) = api_call(api, "DELETE", "/api/v1/services/shop/orders", "").await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (409, Some("file-managed"))
    );

    // Every write is in the audit log: who, when, what.
    let (_, audit) = api_call(api, "GET", "/api/v1/audit?limit=1000", "").await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 15, "3 writes for each of 5 kinds: {audit}");
    let route_update = items
        .iter()
        .find(|e| e["resource"] == "HTTPRoute/shop/pay" && e["action"] == "configured")
        .unwrap();
    assert_eq!(
        route_update["changed"],
        json!(["spec.rules[0].backendRefs[0].weight"])
    );
    assert!(route_update["who"]
        .as_str()
        .unwrap()
        .starts_with("admin (admin token) from 127.0.0.1:"));
    assert!(route_update["time"].as_str().unwrap().ends_with('Z'));

    // `weft get audit N`: the last N writes as a table.
    let server = format!("http://{api}");
    let (code, out, err) = run_weft(None, &["get", "audit", "2", "--server", &server], "").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("CHANGED"),
        "{out}"
    );
    assert!(
        lines[2].contains("admin (admin token) from 127.0.0.1:")
            && lines[2].contains("deleted")
            && lines[2].contains("MeshConfig/default/default"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_write_answers_422_with_every_problem_and_changes_nothing() {
    let mesh = Mesh::builder().config(FILE_SERVICE).start().await;
    let api = mesh.api_addr;
    let (_, first) = api_call(
        api,
        "PUT",
        "/api/v1/services/shop/pay",
        &samples()[0].3.to_string(),
    )
    .await;
    let generation = mesh.generation();
    let before = api_call(api, "GET", "/api/v1/services", "").await.1;
    let audit = api_call(api, "GET", "/api/v1/audit", "").await.1;

    let bad = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: Bad_Name, namespace: shop}
spec: {ports: [{port: 0}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pay, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: pay}]
  rules: [{backendRefs: [{name: pay, weight: ninety}]}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: valid, namespace: shop}
spec: {targetRef: {name: pay}, timeouts: {request: 2s}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: pay, namespace: shop}
spec: {ports: [{port: 80}], endpoints: [{address: "0.0.0.0:80"}]}
---
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {name: x}
"#;
    let (status, answer) = api_call(api, "POST", "/api/v1/apply", bad).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["reason"], "invalid");
    let problems: Vec<(u64, String)> = answer["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["document"].as_u64().unwrap(),
                p["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        (1, "metadata.name"),
        (1, "spec.ports[0].port"),
        (2, "spec.rules[0].backendRefs[0].weight"),
        (4, "spec.endpoints[0].address"),
        (5, "kind"),
    ] {
        assert!(
            problems.iter().any(|(d, f)| (*d, f.as_str()) == want),
            "{want:?} missing from {problems:?}"
        );
    }
    assert_eq!(problems.len(), 5, "{problems:?}");

    // A PUT of an invalid resource, and one whose body is not the URL's resource.
    let (status, answer) = api_call(
        api,
        "PUT",
        "/api/v1/trafficpolicies/shop/pay",
        r#"{"apiVersion": "weft.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": "pay"}, "spec": {"targetRef": {"name": "pay"}, "retries": {"attempts": 99}, "timeouts": {"request": "5 parsecs"}}}"#,
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["problems"][0]["field"], "spec.timeouts.request");
    let (status, _) = api_call(
        api,
        "PUT",
        "/api/v1/services/shop/other",
        &samples()[0].3.to_string(),
    )
    .await;
    assert_eq!(status, 422);

    // Input built to make the YAML scanner slow (deeply nested flow keys, ~800 KiB) is refused
    // at once, and so is a body over 1 MiB.
    let started = Instant::now();
    let (status, answer) = api_call(api, "POST", "/api/v1/apply", &"{a: ".repeat(200_000)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (status, answer) = api_call(api, "POST", "/api/v1/apply", &"#".repeat(2 << 20)).await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (400, Some("bad-request"))
    );

    // The CLI shows every problem and exits non-zero.
    let server = format!("http://{api}");
    let (code, out, err) = run_weft(None, &["apply", "-f", "-", "--server", &server], bad).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("5 problems; nothing was changed"), "{err}");
    assert!(
        err.contains("document 2 (HTTPRoute/shop/pay): spec.rules[0].backendRefs[0].weight"),
        "{err}"
    );

    // Nothing changed: not the config in force, not the store, not the audit log.
    assert_eq!(mesh.generation(), generation);
    assert_eq!(api_call(api, "GET", "/api/v1/services", "").await.1, before);
    assert_eq!(
        api_call(api, "GET", "/api/v1/trafficpolicies", "").await.1["items"],
        json!([])
    );
    assert_eq!(api_call(api, "GET", "/api/v1/audit", "").await.1, audit);
    assert_eq!(
        api_call(api, "GET", "/api/v1/services/shop/pay", "")
            .await
            .1,
        first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_writers_with_one_version_exactly_one_gets_409() {
    let mesh = Mesh::builder().start().await;
    let api = mesh.api_addr;
    let path = "/api/v1/services/shop/pay";
    let svc = samples()[0].3.clone();
    api_call(api, "PUT", path, &svc.to_string()).await;
    for round in 0..20 {
        let (_, current) = api_call(api, "GET", path, "").await;
        let write = |port: u16| {
            let mut body = current.clone();
            body["spec"]["ports"][0]["port"] = json!(port);
            async move { api_call(api, "PUT", path, &body.to_string()).await }
        };
        let (a, b) = tokio::join!(
            tokio::spawn(write(1000 + round)),
            tokio::spawn(write(2000 + round))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "round {round}: {a:?} {b:?}");
        let loser = if a.0 == 409 { &a.1 } else { &b.1 };
        assert_eq!(loser["reason"], "conflict");
        assert!(
            loser["message"].as_str().unwrap().contains("stale"),
            "{loser}"
        );
        let winner = if a.0 == 200 { &a.1 } else { &b.1 };
        assert_eq!(api_call(api, "GET", path, "").await.1, *winner);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_restart_and_kill_9() {
    let dir = TempDir::new();
    let data = dir.0.join("data");
    let data = data.to_str().unwrap();
    let serve = ServeProcess::builder()
        .args(&["--data-dir", data])
        .start()
        .await;
    let api = serve.api_addr;
    let token = admin_token(api).unwrap();

    // One writer creating a Service per request, noting each one acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = tokio::spawn({
        let acked = acked.clone();
        async move {
            let auth = format!("Bearer {token}");
            for i in 0.. {
                let mut svc = samples()[0].3.clone();
                let name = format!("svc-{i}");
                svc["metadata"]["name"] = json!(name);
                let req = http::Request::put(format!("http://{api}/api/v1/services/shop/{name}"))
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        svc.to_string(),
                    )))
                    .unwrap();
                match http1_client().request(req).await {
                    Ok(r) if r.status() == 201 => acked.lock().unwrap().push(name),
                    Ok(r) => panic!("write {i}: {}", r.status()),
                    Err(_) => return, // the control plane is gone
                }
            }
        }
    });
    eventually(
        "40 acknowledged writes",
        Duration::from_secs(20),
        || async { (acked.lock().unwrap().len() >= 40).then_some(()) },
    )
    .await;
    // Killed while the writer is still writing.
    serve.kill9().await;
    writer.await.unwrap();
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();

    let stored = |api| async move {
        let (status, list) = api_call(api, "GET", "/api/v1/services", "").await;
        assert_eq!(status, 200);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect::<HashSet<String>>()
    };
    let serve = ServeProcess::builder()
        .args(&["--data-dir", data])
        .start()
        .await;
    let after_kill = stored(serve.api_addr).await;
    let lost: Vec<_> = acked.difference(&after_kill).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after kill -9: {lost:?}"
    );
    assert!(
        after_kill.len() <= acked.len() + 1,
        "at most the one unacknowledged write in flight may have landed"
    );

    // A clean restart keeps everything too, and versions keep growing.
    let (_, audit) = api_call(serve.api_addr, "GET", "/api/v1/audit?limit=1", "").await;
    let last_seq = audit["items"][0]["seq"].as_u64().unwrap();
    serve.terminate().await;
    let serve = ServeProcess::builder()
        .args(&["--data-dir", data])
        .start()
        .await;
    assert_eq!(stored(serve.api_addr).await, after_kill);
    let (status, body) = api_call(
        serve.api_addr,
        "PUT",
        "/api/v1/services/shop/after-restart",
        &samples()[0]
            .3
            .to_string()
            .replace("\"pay\"", "\"after-restart\""),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(version(&body) > after_kill.len() as u64);
    let (_, audit) = api_call(serve.api_addr, "GET", "/api/v1/audit?limit=1", "").await;
    assert_eq!(audit["items"][0]["seq"].as_u64().unwrap(), last_seq + 1);
    serve.terminate().await;
}

/// The two-backend mesh of these tests: `orders` split by an HTTPRoute applied through the API
/// between `orders-v1` and `orders-v2`, and a client sidecar calling it.
async fn canary() -> (Mesh, Sidecar, [Sidecar; 2], [HttpApp; 2]) {
    let (v1, v2) = (HttpApp::start("v1").await, HttpApp::start("v2").await);
    let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
    let (mut s1, mut s2) = (
        Sidecar::builder().bind().await,
        Sidecar::builder().bind().await,
    );
    let yaml = format!(
        "{}{}---\n{FILE_SERVICE}",
        service_yaml("shop", "orders-v1", "HTTP", &[s1.inbound]),
        service_yaml("shop", "orders-v2", "HTTP", &[s2.inbound]),
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    let (status, body) = api_call(mesh.api_addr, "POST", "/api/v1/apply", &route(100, 0)).await;
    assert_eq!(status, 200, "{body}");
    s1.start(&mesh, "shop", "orders-v1", v1.addr);
    s1.ready().await;
    s2.start(&mesh, "shop", "orders-v2", v2.addr);
    s2.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    (mesh, client, [s1, s2], [v1, v2])
}

fn route(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: canary, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: orders}}]\n  rules:\n  - backendRefs: [{{name: orders-v1, weight: {v1}}}, {{name: orders-v2, weight: {v2}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_under_traffic_reroutes_within_a_second_without_failures() {
    let (mesh, client, _servers, _apps) = canary().await;
    let upstream = client.upstreams[0];
    // Each response, with when its request was sent.
    let seen = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let load = Load::with(4, {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move {
                let sent = Instant::now();
                let r = get(&http1_client(), upstream, "orders", "/").await?;
                anyhow::ensure!(r.status == 200, "status {}", r.status);
                seen.lock()
                    .unwrap()
                    .push((sent, r.header("x-app").to_string()));
                Ok(())
            }
        }
    });
    eventually("traffic to flow", Duration::from_secs(5), || async {
        (load.ok() > 200).then_some(())
    })
    .await;
    let changed_at = Instant::now();
    let (status, body) = api_call(mesh.api_addr, "POST", "/api/v1/apply", &route(0, 100)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["action"], "configured");
    let acked = Instant::now();
    let before = load.ok();
    eventually(
        "traffic after the change",
        Duration::from_secs(10),
        || async {
            (load.ok() > before + 500 && changed_at.elapsed() > Duration::from_millis(1500))
                .then_some(())
        },
    )
    .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "no request may fail while the route changes");
    let seen = seen.lock().unwrap();
    // The last request that still went to v1 was sent this long after the change was applied.
    let last_v1 = seen
        .iter()
        .filter(|(_, app)| app == "v1")
        .map(|(at, _)| at.saturating_duration_since(changed_at))
        .max()
        .unwrap();
    let after: Vec<_> = seen
        .iter()
        .filter(|(at, _)| *at > changed_at + Duration::from_secs(1))
        .collect();
    eprintln!(
        "{ok} requests; apply answered in {:?}; last request to v1 sent {last_v1:?} after the change; {} sent after 1s",
        acked - changed_at,
        after.len()
    );
    assert!(last_v1 < Duration::from_secs(1), "re-routed in {last_v1:?}");
    assert!(!after.is_empty() && after.iter().all(|(_, app)| app == "v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_write_reaches_connected_proxies_within_100ms() {
    let (mesh, client, servers, _apps) = canary().await;
    let mut delays = Vec::new();
    for i in 0..10u32 {
        let (v1, v2) = if i % 2 == 0 { (10, 90) } else { (90, 10) };
        let sent = Instant::now();
        let (status, _) = api_call(mesh.api_addr, "POST", "/api/v1/apply", &route(v1, v2)).await;
        assert_eq!(status, 200);
        let generation = mesh.generation().to_string();
        // Every proxy: the caller, and both servers (whose views changed only in version).
        let proxies = [&client, &servers[0], &servers[1]];
        while proxies.iter().any(|p| p.version() != generation) {
            assert!(sent.elapsed() < Duration::from_secs(5), "not pushed in 5s");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        delays.push(sent.elapsed());
    }
    delays.sort();
    eprintln!("apply to every proxy holding it: {delays:?}");
    // The median, so that one scheduling hiccup of a loaded CI machine does not decide.
    assert!(
        delays[delays.len() / 2] < Duration::from_millis(100),
        "{delays:?}"
    );
}

/// A network namespace joined to this one by a veth pair: `host` is this side's address,
/// `inside` the namespace's. Removed (with the pair) when dropped.
struct Netns {
    name: String,
    host: String,
    inside: String,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command (iproute2; the suite runs as root)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn create() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let r = h.finish();
        let tag = format!("{:06x}", r & 0xff_ffff);
        let (a, b) = ((r >> 24) % 250, (r >> 32) % 64 * 4);
        let ns = Self {
            name: format!("weft-api-{tag}"),
            host: format!("10.{a}.{b}.1"),
            inside: format!("10.{a}.{b}.2"),
        };
        let (va, vb) = (format!("wa{tag}"), format!("wb{tag}"));
        ip(&["netns", "add", &ns.name]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &vb, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/30", ns.host), "dev", &va]);
        ip(&["link", "set", &va, "up"]);
        let inside = ["netns", "exec", &ns.name, "ip"];
        ip(&[
            &inside[..],
            &["addr", "add", &format!("{}/30", ns.inside), "dev", &vb],
        ]
        .concat());
        ip(&[&inside[..], &["link", "set", &vb, "up"]].concat());
        ip(&[&inside[..], &["link", "set", "lo", "up"]].concat());
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it ours.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The control plane runs inside a network namespace, its API on every address there; the CLI
/// calls it from this namespace, through the veth pair: off loopback, as the API sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_an_api_off_loopback_need_a_bearer_token_or_an_admin_certificate() {
    let netns = Netns::create();
    let dir = TempDir::new();
    let path = |name: &str| dir.0.join(name).display().to_string();
    std::fs::write(path("api-tokens"), "# CI pipeline\nci-s3cret,ci\n").unwrap();
    std::fs::write(path("wrong-token"), "guess\n").unwrap();
    std::fs::write(path("good-token"), "ci-s3cret\n").unwrap();
    std::fs::write(path("svc.yaml"), FILE_SERVICE).unwrap();
    let serve = ServeProcess::builder()
        .netns(&netns.name)
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
    let remote = format!("{}:{port}", netns.inside);
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
    let (code, out, err) = run_weft(Some(&netns.name), &make, "").await;
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
        who[0].starts_with(&format!("user ci (bearer token) from {}:", netns.host)),
        "{who:?}"
    );
    assert!(
        who[1].starts_with(&format!(
            "admin ops (client certificate) from {}:",
            netns.host
        )),
        "{who:?}"
    );
    serve.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shadows_a_stored_resource_while_it_defines_it() {
    let mesh = Mesh::builder().config(FILE_SERVICE).start().await;
    let api = mesh.api_addr;
    let path = "/api/v1/services/shop/pay";
    let (status, _) = api_call(api, "PUT", path, &samples()[0].3.to_string()).await;
    assert_eq!(status, 201);
    let port_in_force = || {
        let m = mesh.state().mesh();
        let s = m
            .resources
            .iter()
            .find(|s| s.resource.id() == "Service/shop/pay")
            .cloned()
            .unwrap();
        (
            s.source.clone(),
            serde_json::to_value(&s.resource).unwrap()["spec"]["ports"][0]["port"].clone(),
        )
    };
    assert_eq!(port_in_force(), ("api".to_string(), json!(8080)));

    // The file now defines it too: the file's definition is in force, and the API refuses it.
    let from_file = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: pay, namespace: shop}\nspec: {ports: [{port: 7070}]}\n";
    let generation = mesh.generation();
    mesh.write_config(&format!("{FILE_SERVICE}---\n{from_file}"));
    eventually(
        "the file to be in force",
        Duration::from_secs(5),
        || async { (mesh.generation() > generation).then_some(()) },
    )
    .await;
    let (source, port) = port_in_force();
    assert!(source.ends_with("mesh.yaml"), "{source}");
    assert_eq!(port, json!(7070));
    let (status, body) = api_call(api, "PUT", path, &samples()[0].4.to_string()).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("file-managed"))
    );

    // The file drops it: the stored definition is back in force.
    let generation = mesh.generation();
    mesh.write_config(FILE_SERVICE);
    eventually(
        "the stored one to be back",
        Duration::from_secs(5),
        || async { (mesh.generation() > generation).then_some(()) },
    )
    .await;
    assert_eq!(port_in_force(), ("api".to_string(), json!(8080)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_checks_everything_and_changes_nothing() {
    let mesh = Mesh::builder().config(FILE_SERVICE).start().await;
    let api = mesh.api_addr;
    let server = format!("http://{api}");
    let svc = samples()[0].3.to_string();
    let generation = mesh.generation();

    let (status, body) = api_call(api, "POST", "/api/v1/apply?dryRun=true", &svc).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dryRun"], json!(true));
    assert_eq!(body["results"][0]["action"], "created");
    let (code, out, err) = run_weft(
        None,
        &["apply", "--dry-run", "-f", "-", "--server", &server],
        &svc,
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "service/shop/pay created (dry run)\n"),
        "{err}"
    );
    // Problems and conflicts are found as for a real apply.
    let (status, _) = api_call(api, "POST", "/api/v1/apply?dryRun=true", FILE_SERVICE).await;
    assert_eq!(status, 409);
    let bad = svc.replace("8080", "0");
    let (status, _) = api_call(api, "POST", "/api/v1/apply?dryRun=true", &bad).await;
    assert_eq!(status, 422);

    assert_eq!(mesh.generation(), generation);
    assert_eq!(
        api_call(api, "GET", "/api/v1/services/shop/pay", "")
            .await
            .0,
        404
    );
    assert_eq!(
        api_call(api, "GET", "/api/v1/audit", "").await.1["items"],
        json!([])
    );
}
