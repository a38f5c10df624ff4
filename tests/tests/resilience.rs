//! Resilience end to end, against upstreams that fail on command: retries and their budget,
//! endpoint ejection, timeouts at every level, rate limits and fault injection.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use weft_tests::apps::{Behaviour, FaultyApp};
use weft_tests::*;

const HOST: &str = "orders.shop";

/// A service `orders.shop` of `n` endpoints, each a sidecar before a [`FaultyApp`], and a client
/// sidecar; `policy` is more YAML (TrafficPolicy, HTTPRoute) for the mesh.
struct Setup {
    _mesh: Mesh,
    client: Sidecar,
    servers: Vec<Sidecar>,
    apps: Vec<FaultyApp>,
}

impl Setup {
    async fn start(n: usize, policy: &str) -> Self {
        let mut servers = Vec::new();
        let mut apps = Vec::new();
        for i in 0..n {
            servers.push(Sidecar::builder().bind().await);
            apps.push(FaultyApp::start(&format!("orders-{i}")).await);
        }
        let mut client = Sidecar::builder().upstream("orders.shop:8080").bind().await;
        let inbound: Vec<SocketAddr> = servers.iter().map(|s| s.inbound).collect();
        let yaml = format!(
            "{}{policy}",
            service_yaml("shop", "orders", "HTTP", &inbound)
        );
        let mesh = Mesh::builder().config(&yaml).start().await;
        for (s, a) in servers.iter_mut().zip(&apps) {
            s.start(&mesh, "shop", "orders", a.addr);
        }
        for s in &servers {
            s.ready().await;
        }
        client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
        client.ready().await;
        Self {
            _mesh: mesh,
            client,
            servers,
            apps,
        }
    }

    fn metrics(&self) -> String {
        self.client.running().metrics.encode()
    }

    fn hits(&self) -> u64 {
        self.apps.iter().map(FaultyApp::hits).sum()
    }

    async fn get(&self, path: &str) -> Reply {
        get(&http1_client(), self.client.outbound, HOST, path)
            .await
            .unwrap()
    }
}

fn policy(spec: &str) -> String {
    format!(
        "---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  targetRef: {{name: orders}}\n{spec}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_transient_failures_into_success_only_where_safe() {
    // Route `/opt-in` comes from an HTTPRoute that opts in to retrying non-idempotent requests.
    let routes = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: opt-in
  namespace: shop
  annotations: {retry.weft.dev/non-idempotent: "true"}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /opt-in}}]
    backendRefs: [{name: orders}]
    retry: {attempts: 2, codes: [503], backoff: 5ms}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rest, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules:
  - backendRefs: [{name: orders}]
"#;
    let yaml = format!(
        "{}{routes}",
        policy("  retries: {attempts: 3, on: [5xx], backoff: {base: 5ms, max: 20ms}}\n")
    );
    let t = Setup::start(1, &yaml).await;
    let app = &t.apps[0];
    let http = http1_client();
    let post = |path: &'static str, body: Bytes| {
        let http = http.clone();
        let addr = t.client.outbound;
        async move {
            send_body(&http, addr, HOST, "POST", path, &[], body)
                .await
                .unwrap()
        }
    };

    // GET: two 503s, then success.
    app.fail_next(2, Behaviour::Status(503));
    let r = t.get("/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(app.hits(), 3, "one request, two retries");
    let m = t.metrics();
    assert_eq!(
        metric(&m, "weft_proxy_retries_total", &["reason=\"status\""]),
        2.0,
        "{m}"
    );

    // POST, sent and answered 503: not retried (not idempotent, no opt-in).
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let r = post("/", Bytes::from_static(b"order-1")).await;
    assert_eq!((r.status, app.hits()), (503, 1), "{r:?}");

    // POST on the route that opts in: retried, and the retry carries the whole body.
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let r = post("/opt-in", Bytes::from_static(b"order-2")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "order-2"), "{r:?}");
    assert_eq!(app.methods(), ["POST", "POST"]);

    // PUT (idempotent) with 32 KiB: replayed byte for byte.
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let body: Vec<u8> = (0..32 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let r = send_body(
        &http,
        t.client.outbound,
        HOST,
        "PUT",
        "/",
        &[],
        body.clone().into(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(app.hits(), 2);
    assert_eq!(
        r.body.as_bytes(),
        &body[..],
        "the retry got the body byte for byte"
    );

    // PUT with a body over 64 KiB: streamed through, never retried.
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    let r = send_body(&http, t.client.outbound, HOST, "PUT", "/", &[], big)
        .await
        .unwrap();
    assert_eq!((r.status, app.hits()), (503, 1), "{r:?}");
    let r = send_body(
        &http,
        t.client.outbound,
        HOST,
        "PUT",
        "/",
        &[],
        vec![b'y'; 100 * 1024].into(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.body.len()),
        (200, 100 * 1024),
        "a big body still gets through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_endpoint_and_grpc_statuses_are_retried() {
    let t = Setup::start(
        2,
        &policy(
            "  loadBalancer: round-robin\n  retries: {attempts: 2, on: [5xx, unavailable], backoff: {base: 1ms}, budget: {minPerSecond: 100}}\n",
        ),
    )
    .await;
    // Endpoint 0 always fails; a retry never goes back to it while another endpoint is left, so
    // every request succeeds.
    t.apps[0].set(Behaviour::Status(500));
    for _ in 0..30 {
        let r = t.get("/").await;
        assert_eq!((r.status, r.header("x-app")), (200, "orders-1"), "{r:?}");
    }
    assert!(t.apps[0].hits() > 0, "the failing endpoint was tried");

    // A gRPC UNAVAILABLE (trailers-only) is retried; the caller sees the good answer.
    t.apps[0].set(Behaviour::GrpcStatus(14));
    t.apps[1].set(Behaviour::GrpcStatus(14));
    let grpc = |path: &'static str| {
        let addr = t.client.upstreams[0];
        async move {
            send(
                &http2_client(),
                addr,
                HOST,
                "POST",
                path,
                &[("content-type", "application/grpc"), ("te", "trailers")],
            )
            .await
            .unwrap()
        }
    };
    let r = grpc("/svc/Method").await;
    assert_eq!(
        r.header("grpc-status"),
        "14",
        "both endpoints unavailable: {r:?}"
    );
    let before = t.hits();
    t.apps[0].set(Behaviour::Healthy);
    t.apps[1].set(Behaviour::Healthy);
    t.apps[0].fail_next(1, Behaviour::GrpcStatus(14));
    t.apps[1].fail_next(1, Behaviour::GrpcStatus(14));
    let r = grpc("/svc/Method").await;
    assert_eq!(
        (r.status, r.header("grpc-status")),
        (200, ""),
        "{r:?} after {} tries; {}",
        t.hits() - before,
        t.metrics()
    );
    assert_eq!(
        t.hits() - before,
        3,
        "UNAVAILABLE from each endpoint, then a retry that succeeds"
    );
    let m = t.metrics();
    assert!(
        metric(&m, "weft_proxy_retries_total", &["reason=\"grpc-status\""]) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_only_requests_that_never_left_are_retried() {
    // Endpoint 1's proxy is never started: nothing listens there, so every try to it fails to
    // connect and is retried on endpoint 0.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut server = Sidecar::builder().bind().await;
    let app = FaultyApp::start("orders-0").await;
    let mut client = Sidecar::builder().bind().await;
    // Round-robin, so the dead endpoint keeps being chosen (EWMA would learn to avoid it).
    let yaml = format!(
        "{}{}",
        service_yaml("shop", "orders", "HTTP", &[server.inbound, dead_addr]),
        policy("  loadBalancer: round-robin\n")
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    server.start(&mesh, "shop", "orders", app.addr);
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let http = http1_client();
    for _ in 0..20 {
        let r = send_body(&http, client.outbound, HOST, "POST", "/", &[], "x".into())
            .await
            .unwrap();
        assert_eq!(
            r.status, 200,
            "a connect failure is retried even for POST: {r:?}"
        );
    }
    let m = client.running().metrics.encode();
    assert!(
        metric(
            &m,
            "weft_proxy_retries_total",
            &["reason=\"connect-failure\""]
        ) >= 1.0,
        "{m}"
    );

    // A 503 from the app is not retried without a policy.
    app.reset_hits();
    app.fail_next(1, Behaviour::Status(503));
    let r = get(&http, client.outbound, HOST, "/").await.unwrap();
    assert_eq!((r.status, app.hits()), (503, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_upstream_attempts() {
    let t = Setup::start(
        1,
        &policy(
            "  retries:\n    attempts: 3\n    on: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n    budget: {ratio: 0.2, minPerSecond: 5}\n",
        ),
    )
    .await;
    t.apps[0].set(Behaviour::Status(503));
    let started = Instant::now();
    let load = Load::start(t.client.outbound, HOST, 4, |r| {
        // The caller gets the app's own last answer, not one the proxy made up.
        r.status == 503 && r.header("x-weft-error").is_empty() && r.header("x-app") == "orders-0"
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (requests, wrong) = load.stop().await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(wrong, 0);
    let attempts = t.hits() as f64;
    let requests = requests as f64;
    // The reserve starts full: minPerSecond × (seconds + 1).
    let bound = 1.2 * requests + 5.0 * (seconds + 1.0);
    eprintln!("{requests} requests, {attempts} attempts in {seconds:.1}s; bound {bound:.0}");
    assert!(attempts <= bound, "{attempts} attempts > {bound:.0}");
    assert!(
        attempts > requests * 1.1,
        "the budget's ratio is used: {attempts} attempts for {requests} requests"
    );
    let m = t.metrics();
    assert!(metric(&m, "weft_proxy_retry_budget_exhausted_total", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_probed_and_restored() {
    let t = Setup::start(
        3,
        &policy(
            "  retries: {attempts: 2, on: [gateway-error]}\n  circuitBreaker: {consecutiveFailures: 3, baseEjectionTime: 1s, maxEjectionTime: 10s, maxEjectedPercent: 50}\n",
        ),
    )
    .await;
    let bad = &t.apps[0];
    let bad_ep = format!("endpoint=\"{}\"", t.servers[0].inbound);
    bad.set(Behaviour::Status(503));
    let load = Load::start(t.client.outbound, HOST, 2, |r| r.status == 200);
    let ejected = |t: &Setup| metric(&t.metrics(), "weft_proxy_endpoint_ejected", &[&bad_ep]);

    eventually(
        "the failing endpoint is ejected",
        Duration::from_secs(10),
        || async { (ejected(&t) == 1.0).then_some(()) },
    )
    .await;
    let at_ejection = bad.hits();
    // While ejected it gets nothing (one try may have been on its way).
    let others = t.apps[1].hits() + t.apps[2].hits();
    eventually(
        "traffic flows to the others",
        Duration::from_secs(5),
        || async { (t.apps[1].hits() + t.apps[2].hits() > others + 50).then_some(()) },
    )
    .await;
    assert!(
        bad.hits() <= at_ejection + 1,
        "ejected endpoint got traffic"
    );

    // After the ejection time, one probe: it fails, and the endpoint is ejected again.
    eventually("a failed probe", Duration::from_secs(5), || async {
        (metric(
            &t.metrics(),
            "weft_proxy_endpoint_probes_total",
            &[&bad_ep, "outcome=\"failure\""],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(ejected(&t), 1.0);

    // Healthy again: the next probe restores it and it takes traffic.
    bad.set(Behaviour::Healthy);
    eventually("a successful probe", Duration::from_secs(10), || async {
        (metric(
            &t.metrics(),
            "weft_proxy_endpoint_probes_total",
            &[&bad_ep, "outcome=\"success\""],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(ejected(&t), 0.0);
    let restored = bad.hits();
    eventually(
        "the restored endpoint takes traffic",
        Duration::from_secs(5),
        || async { (bad.hits() > restored + 20).then_some(()) },
    )
    .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "callers kept succeeding throughout ({ok} ok)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_ejected_fails_fast_with_circuit_open() {
    let t = Setup::start(
        1,
        &policy(
            "  circuitBreaker: {consecutiveFailures: 2, baseEjectionTime: 30s, maxEjectedPercent: 100}\n",
        ),
    )
    .await;
    t.apps[0].set(Behaviour::Status(500));
    for _ in 0..2 {
        assert_eq!(t.get("/").await.status, 500);
    }
    let started = Instant::now();
    let r = t.get("/").await;
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (503, "circuit-open"),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(t.apps[0].hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_per_try_timeouts() {
    let t = Setup::start(
        1,
        &policy(
            "  timeouts: {request: 700ms}\n  retries: {attempts: 2, on: [reset], perTryTimeout: 300ms, backoff: {base: 1ms}}\n",
        ),
    )
    .await;
    let app = &t.apps[0];

    // A try that hangs is abandoned after the per-try timeout and retried.
    app.fail_next(1, Behaviour::Hang);
    let started = Instant::now();
    let r = t.get("/").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    assert_eq!(
        metric(
            &t.metrics(),
            "weft_proxy_timeouts_total",
            &["kind=\"per-try\""]
        ),
        1.0
    );

    // Every try hangs: the request timeout ends the whole exchange (during the third try) with
    // 504.
    app.set(Behaviour::Hang);
    let started = Instant::now();
    let r = t.get("/").await;
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (504, "timeout"),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1500),
        "{took:?}"
    );

    // A gRPC caller's deadline is honoured, and answered as DEADLINE_EXCEEDED.
    let started = Instant::now();
    let r = send(
        &http2_client(),
        t.client.upstreams[0],
        HOST,
        "POST",
        "/weft.test.v1.Echo/Unary",
        &[
            ("content-type", "application/grpc"),
            ("grpc-timeout", "200m"),
            ("te", "trailers"),
        ],
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.header("grpc-status")), (200, "4"), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(800));
    let m = t.metrics();
    assert!(
        metric(&m, "weft_proxy_timeouts_total", &["kind=\"request\""]) >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_and_stream_idle_timeout() {
    // An endpoint whose accept queue is full: the SYN is dropped, so the connect hangs.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blackhole = socket.local_addr().unwrap();
    let listener = socket2::Socket::from(socket);
    listener.listen(0).unwrap();
    let mut fillers = Vec::new();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(blackhole),
        )
        .await;
        match attempt {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }

    let mut server = Sidecar::builder().bind().await;
    let app = FaultyApp::start("orders-0").await;
    let mut client = Sidecar::builder().bind().await;
    let yaml = format!(
        "{}{}{}---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: hole, namespace: shop}}\nspec:\n  targetRef: {{name: hole}}\n  timeouts: {{connect: 200ms}}\n",
        service_yaml("shop", "orders", "HTTP", &[server.inbound]),
        policy("  timeouts: {idle: 300ms}\n"),
        service_yaml("shop", "hole", "HTTP", &[blackhole]),
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    server.start(&mesh, "shop", "orders", app.addr);
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;
    let http = http1_client();

    let started = Instant::now();
    let r = get(&http, client.outbound, "hole.shop", "/").await.unwrap();
    assert_eq!(
        (r.status, r.header("x-weft-error")),
        (504, "timeout"),
        "{r:?}"
    );
    // Tried three times (two retries of a request that never left), 200 ms each.
    assert!(started.elapsed() < Duration::from_millis(1500));
    let m = client.running().metrics.encode();
    assert_eq!(
        metric(&m, "weft_proxy_timeouts_total", &["kind=\"connect\""]),
        3.0,
        "{m}"
    );

    // A response whose body stalls is cut after the idle timeout.
    app.set(Behaviour::StallBody);
    let started = Instant::now();
    let err = get(&http, client.outbound, HOST, "/").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}: {err:#}"
    );
    let m = client.running().metrics.encode();
    assert_eq!(
        metric(&m, "weft_proxy_timeouts_total", &["kind=\"idle\""]),
        1.0,
        "{m}"
    );
    drop(fillers);
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = apps::tcp_echo().await;
    let mut server = Sidecar::builder().bind().await;
    let mut client = Sidecar::builder().upstream("cache.shop:8080").bind().await;
    let yaml = format!(
        "{}---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: cache, namespace: shop}}\nspec:\n  targetRef: {{name: cache}}\n  timeouts: {{idle: 300ms}}\n",
        service_yaml("shop", "cache", "TCP", &[server.inbound])
    );
    let mesh = Mesh::builder().config(&yaml).start().await;
    server.start(&mesh, "shop", "cache", echo);
    server.ready().await;
    client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
    client.ready().await;

    let mut conn = tokio::net::TcpStream::connect(client.upstreams[0])
        .await
        .unwrap();
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the idle connection")
        .ok();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    let m = client.running().metrics.encode();
    assert_eq!(
        metric(&m, "weft_proxy_timeouts_total", &["kind=\"idle\""]),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_accepts_the_configured_rate() {
    let t = Setup::start(
        1,
        &policy("  rateLimit: {requestsPerSecond: 50, burst: 5}\n"),
    )
    .await;
    let started = Instant::now();
    let load = Load::start(t.client.outbound, HOST, 4, |r| {
        r.status == 200
            || (r.status == 429
                && r.header("x-weft-error") == "rate-limited"
                && r.header("retry-after") == "1")
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, wrong) = load.stop().await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(wrong, 0);
    let accepted = t.apps[0].hits() as f64;
    let rate = accepted / seconds;
    eprintln!("{accepted} accepted in {seconds:.2}s: {rate:.1}/s");
    assert!(
        (45.0..=55.0).contains(&rate),
        "accepted {rate:.1}/s, configured 50/s"
    );
    let m = t.servers[0].running().metrics.encode();
    assert!(metric(&m, "weft_proxy_rate_limited_total", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_hits_its_percentages() {
    let t = Setup::start(
        1,
        &policy(
            "  faultInjection:\n    abort: {percent: 20, status: 503}\n    delay: {percent: 10, duration: 1ms}\n",
        ),
    )
    .await;
    let http = http1_client();
    let mut aborted = 0;
    for _ in 0..1000 {
        let r = get(&http, t.client.outbound, HOST, "/").await.unwrap();
        match (r.status, r.header("x-weft-error")) {
            (200, "") => {}
            (503, "fault-injected") => aborted += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (170..=230).contains(&aborted),
        "{aborted} of 1000 aborted; 20% asked"
    );
    assert_eq!(
        t.apps[0].hits(),
        1000 - aborted,
        "aborted requests never reach the app"
    );
    let delayed = metric(
        &t.metrics(),
        "weft_proxy_faults_injected_total",
        &["fault=\"delay\""],
    );
    assert!(
        (70.0..=130.0).contains(&delayed),
        "{delayed} of 1000 delayed; 10% asked"
    );
}
