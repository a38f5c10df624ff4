//! Distributed tracing end to end, against a real OpenTelemetry collector (rotel, `pip install
//! rotel`) receiving OTLP/gRPC: spans from both proxies of a request, one trace, parent/child
//! links and attributes; W3C and B3 propagation; sampling; a collector that is down.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use weft_tests::apps::HttpApp;
use weft_tests::*;

/// The rotel collector binary: `ROTEL_AGENT`, else the one the `rotel` Python package ships.
fn rotel_agent() -> PathBuf {
    if let Ok(p) = std::env::var("ROTEL_AGENT") {
        return p.into();
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("python3 runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "the rotel collector is needed: pip install rotel (or set ROTEL_AGENT)"
    );
    path
}

/// A running rotel collector that logs every span it receives.
struct Collector {
    addr: std::net::SocketAddr,
    log: PathBuf,
    child: tokio::process::Child,
    _dir: TempDir,
}

impl Collector {
    async fn start() -> Self {
        let dir = TempDir::new();
        let addr = free_port().await;
        let log = dir.0.join("rotel.log");
        let child = tokio::process::Command::new(rotel_agent())
            .args([
                "start",
                "--otlp-grpc-endpoint",
                &addr.to_string(),
                "--otlp-http-endpoint",
                &free_port().await.to_string(),
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log-verbosity",
                "detailed",
            ])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("rotel-agent starts");
        eventually("the collector listens", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        Self {
            addr,
            log,
            child,
            _dir: dir,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn free_port() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// One span as the collector printed it.
#[derive(Debug, Default, Clone)]
struct Span {
    service: String,
    trace: String,
    parent: String,
    id: String,
    name: String,
    kind: String,
    attributes: std::collections::BTreeMap<String, String>,
}

/// Parses rotel's detailed debug log of received spans.
fn spans(log: &str) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    let mut service = String::new();
    let mut in_span = false;
    for line in log.lines() {
        let t = line.trim();
        if t.starts_with("ResourceSpans #") {
            in_span = false;
            service.clear();
        } else if t.starts_with("Span #") {
            in_span = true;
            out.push(Span {
                service: service.clone(),
                ..Span::default()
            });
        } else if let Some(kv) = t.strip_prefix("-> ") {
            let Some((k, v)) = kv.split_once(": ") else {
                continue;
            };
            // `Str(x)`, `Int(3)`: the value inside the parentheses.
            let v = v
                .split_once('(')
                .map_or(v, |(_, rest)| rest.strip_suffix(')').unwrap_or(rest));
            if !in_span && k == "service.name" {
                service = v.to_string();
            } else if let Some(span) = out.last_mut().filter(|_| in_span) {
                span.attributes.insert(k.to_string(), v.to_string());
            }
        } else if let (Some((k, v)), Some(span)) = (t.split_once(':'), out.last_mut()) {
            let v = v.trim().to_string();
            match k.trim() {
                "Trace ID" => span.trace = v,
                "Parent ID" => span.parent = v,
                "ID" => span.id = v,
                "Name" => span.name = v,
                "Kind" => span.kind = v,
                _ => {}
            }
        }
    }
    out
}

/// A collector, a client proxy (frontend) and a server proxy (orders) before an app that
/// reports the trace headers it got; tracing at `ratio`.
struct Setup {
    collector: Collector,
    client: Sidecar,
    _server: Sidecar,
    mesh: Mesh,
}

impl Setup {
    async fn start(ratio: f64) -> Self {
        Self::with_access_log(ratio, None).await
    }

    /// With MeshConfig `accessLog: json` and the client proxy's lines in `log`.
    async fn with_access_log(ratio: f64, log: Option<PathBuf>) -> Self {
        let collector = Collector::start().await;
        let app = HttpApp::start("orders").await;
        let access = if log.is_some() { "json" } else { "off" };
        let mut client = Sidecar::builder()
            .upstream("orders.shop:8080")
            .access_log(log)
            .bind()
            .await;
        let mut server = Sidecar::builder().bind().await;
        let yaml = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\nspec:\n  accessLog: {access}\n  tracing: {{otlpEndpoint: \"http://{}\", samplingRatio: {ratio}}}\n{}",
            collector.addr,
            service_yaml("shop", "orders", "HTTP", &[server.inbound])
        );
        let mesh = Mesh::builder().config(&yaml).start().await;
        server.start(&mesh, "shop", "orders", app.addr);
        server.ready().await;
        client.start(&mesh, "shop", "frontend", NO_APP.parse().unwrap());
        client.ready().await;
        Self {
            collector,
            client,
            _server: server,
            mesh,
        }
    }

    async fn get(&self, headers: &[(&str, &str)]) -> Reply {
        let r = send(
            &http1_client(),
            self.client.upstreams[0],
            "orders",
            "GET",
            "/items",
            headers,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r
    }

    /// Waits for the client and the server span of `trace`.
    async fn pair(&self, trace: &str) -> (Span, Span) {
        eventually(
            "both spans at the collector",
            Duration::from_secs(15),
            || async {
                let all = spans(&self.collector.output());
                let of = |kind: &str| {
                    all.iter()
                        .find(|s| s.trace == trace && s.kind == kind)
                        .cloned()
                };
                Some((of("SPAN_KIND_CLIENT")?, of("SPAN_KIND_SERVER")?))
            },
        )
        .await
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_proxies_is_one_trace() {
    let t = Setup::start(1.0).await;

    // A trace the app started is continued: app span → client proxy → server proxy → app.
    let r = t
        .get(&[
            ("traceparent", &format!("00-{TRACE}-{APP_SPAN}-01")),
            ("tracestate", "app=1"),
        ])
        .await;
    let (client, server) = t.pair(TRACE).await;
    assert_eq!(client.parent, APP_SPAN, "{client:?}");
    assert_eq!(server.parent, client.id, "{server:?}");
    assert_eq!(
        r.header("x-seen-traceparent"),
        format!("00-{TRACE}-{}-01", server.id),
        "the app's spans become children of the server proxy's"
    );
    assert_eq!(r.header("x-seen-tracestate"), "app=1");
    assert_eq!(
        (client.service.as_str(), server.service.as_str()),
        ("frontend.shop", "orders.shop")
    );
    assert_eq!(client.name, "GET orders.shop");
    let a = &client.attributes;
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/items");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(
        a["weft.peer.identity"],
        "spiffe://weft.local/ns/shop/sa/orders"
    );
    assert_eq!(a["weft.retries"], "0");
    assert_eq!(a["network.peer.address"], "127.0.0.1");
    let a = &server.attributes;
    assert_eq!(
        a["weft.peer.identity"],
        "spiffe://weft.local/ns/shop/sa/frontend"
    );
    assert_eq!(a["http.response.status_code"], "200");
    assert!(a.contains_key("client.address"));

    // No trace headers: a new trace, W3C, across both proxies.
    let r = t.get(&[]).await;
    let tp = r.header("x-seen-traceparent").to_string();
    let new_trace = tp.split('-').nth(1).unwrap().to_string();
    assert_ne!(new_trace, TRACE);
    let (client, server) = t.pair(&new_trace).await;
    assert_eq!(client.parent, "", "a root span");
    assert_eq!(server.parent, client.id);

    // An unsampled parent: propagated, not recorded.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let r = t
        .get(&[("traceparent", &format!("00-{unsampled}-{APP_SPAN}-00"))])
        .await;
    assert!(r
        .header("x-seen-traceparent")
        .starts_with(&format!("00-{unsampled}-")));
    assert!(r.header("x-seen-traceparent").ends_with("-00"));
    // A later sampled request is exported after it, so once that one is in, the unsampled one
    // would have been too.
    let later = "11111111111111111111111111111111";
    t.get(&[("traceparent", &format!("00-{later}-{APP_SPAN}-01"))])
        .await;
    t.pair(later).await;
    assert!(
        !t.collector.output().contains(unsampled),
        "an unsampled trace was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_in_b3_out() {
    let t = Setup::start(1.0).await;
    let r = t.get(&[("b3", &format!("{TRACE}-{APP_SPAN}-1"))]).await;
    assert_eq!(r.header("x-seen-traceparent"), "", "B3 in, B3 out");
    let (client, server) = t.pair(TRACE).await;
    assert_eq!(client.parent, APP_SPAN);
    assert_eq!(r.header("x-seen-b3"), format!("{TRACE}-{}-1", server.id));

    let multi = "a3ce929d0e0e4736";
    let r = t
        .get(&[
            ("x-b3-traceid", multi),
            ("x-b3-spanid", APP_SPAN),
            ("x-b3-sampled", "1"),
        ])
        .await;
    let (_, server) = t.pair(&format!("{:0>32}", multi)).await;
    assert_eq!(r.header("x-seen-x-b3-spanid"), server.id);
    assert_eq!(r.header("x-seen-x-b3-sampled"), "1");
    assert_eq!(r.header("x-seen-traceparent"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing() {
    let mut t = Setup::start(1.0).await;
    t.get(&[("traceparent", &format!("00-{TRACE}-{APP_SPAN}-01"))])
        .await;
    t.pair(TRACE).await;
    t.collector.child.kill().await.unwrap();
    let started = tokio::time::Instant::now();
    for _ in 0..50 {
        t.get(&[]).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests waited for the collector"
    );
    let dropped = |t: &Setup| {
        metric(
            &t.client.running().metrics.encode(),
            "weft_proxy_trace_spans_dropped_total",
            &["reason=\"export-failed\""],
        )
    };
    eventually(
        "dropped spans are counted",
        Duration::from_secs(15),
        || async { (dropped(&t) >= 50.0).then_some(()) },
    )
    .await;
    let m = t.client.running().metrics.encode();
    assert!(
        metric(&m, "weft_proxy_trace_spans_exported_total", &[]) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_log_line_per_request_with_its_trace() {
    let dir = TempDir::new();
    let log = dir.0.join("access.log");
    let t = Setup::with_access_log(1.0, Some(log.clone())).await;
    for i in 0..5 {
        let trace = format!("{TRACE:.28}{i:04}");
        t.get(&[("traceparent", &format!("00-{trace}-{APP_SPAN}-01"))])
            .await;
    }
    let lines = eventually("five access log lines", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        (lines.len() >= 5).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 5, "one line per request");
    for (i, line) in lines.iter().enumerate() {
        let trace = format!("{TRACE:.28}{i:04}");
        assert_eq!(line["trace_id"], trace.as_str(), "{line}");
        let (client, _) = t.pair(&trace).await;
        assert_eq!(
            line["span_id"],
            client.id.as_str(),
            "the client proxy's span"
        );
        assert_eq!(line["direction"], "outbound");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/items");
        assert_eq!(line["status"], 200);
        assert_eq!(line["service"], "orders.shop");
        assert_eq!(
            line["peer_identity"],
            "spiffe://weft.local/ns/shop/sa/orders"
        );
        assert!(line["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
        assert!(line["start"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_traces_its_pushes_and_certificates() {
    let t = Setup::start(1.0).await;
    let ours = |name: &str| {
        spans(&t.collector.output())
            .into_iter()
            .filter(|s| s.service == "weft-control-plane" && s.name == name)
            .collect::<Vec<_>>()
    };
    let certified = eventually("certify spans", Duration::from_secs(15), || async {
        let c = ours("certify");
        (c.len() >= 2).then_some(c)
    })
    .await;
    assert!(
        certified
            .iter()
            .all(|s| s.attributes["weft.outcome"] == "issued"),
        "{certified:?}"
    );
    let pushes = eventually("acknowledged pushes", Duration::from_secs(15), || async {
        let p: Vec<_> = ours("push config")
            .into_iter()
            .filter(|s| s.attributes.get("weft.outcome").map(String::as_str) == Some("ack"))
            .collect();
        (p.len() >= 2).then_some(p)
    })
    .await;
    let identities: std::collections::BTreeSet<_> = pushes
        .iter()
        .map(|s| s.attributes["weft.proxy.identity"].clone())
        .collect();
    assert!(
        identities.contains("spiffe://weft.local/ns/shop/sa/frontend")
            && identities.contains("spiffe://weft.local/ns/shop/sa/orders"),
        "{identities:?}"
    );
    // Counted once the collector's answer is back, which may be after it logged the spans.
    eventually(
        "the control plane counts its exports",
        Duration::from_secs(5),
        || async {
            let m = t.mesh.state().metrics.encode();
            (metric(&m, "weft_trace_spans_exported_total", &[]) >= 4.0).then_some(())
        },
    )
    .await;
}
