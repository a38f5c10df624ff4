//! `weft demo`: a whole mesh on loopback.
//!
//! Starts the control plane (in this process), five sample workloads — `loadgen` → `frontend`
//! → `orders` (split 90/10 between `orders-v1` and the canary `orders-v2`) → `inventory` —
//! each beside its own `weft-proxy` process, sends constant-rate traffic, and prints what every
//! sidecar measures. Ends after `--duration` or on Ctrl-C, leaving no process behind.

mod apps;
pub mod summary;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::apps::App;
use self::summary::Counts;

pub struct DemoOptions {
    pub duration: Option<Duration>,
    pub rps: u32,
    pub otlp_endpoint: Option<String>,
}

/// One workload: its app and its sidecar's ports.
struct Workload {
    name: &'static str,
    app: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    /// `upstream` listener for the service this workload calls.
    upstream: Option<(SocketAddr, &'static str)>,
}

const NS: &str = "demo";

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = run_in(&dir, opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, opts: DemoOptions) -> anyhow::Result<()> {
    let proxy_bin = proxy_command()?;
    let mut ports = free_ports(5 * 4).await?.into_iter();
    let mut next = || ports.next().context("ran out of free ports");
    let calls = [
        ("loadgen", Some("frontend")),
        ("frontend", Some("orders")),
        ("orders-v1", Some("inventory")),
        ("orders-v2", Some("inventory")),
        ("inventory", None),
    ];
    let mut workloads = Vec::new();
    for (name, callee) in calls {
        workloads.push(Workload {
            name,
            app: next()?,
            inbound: next()?,
            admin: next()?,
            upstream: match callee {
                Some(c) => Some((next()?, c)),
                None => None,
            },
        });
    }

    let config = dir.join("mesh.yaml");
    std::fs::write(
        &config,
        mesh_yaml(&workloads, opts.otlp_endpoint.as_deref()),
    )?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let api = TcpListener::bind("127.0.0.1:0").await?;
    let cp = crate::start(
        crate::ServeConfig {
            config: vec![config.clone()],
            data_dir: dir.join("data"),
            trust_domain: "weft.local".into(),
            ack_timeout: crate::DEFAULT_ACK_TIMEOUT,
            ca: None,
            kubeconfig: None,
            api_token_file: None,
            api_hosts: Vec::new(),
        },
        grpc,
        api,
    )
    .map_err(|e| anyhow::anyhow!("demo config refused: {}", e.join("; ")))?;

    let shutdown = CancellationToken::new();
    for w in &workloads {
        let app = App {
            name: w.name,
            calls: w.upstream.map(|(addr, _)| addr),
            work_ms: match w.name {
                "inventory" => (1, 3),
                "orders-v2" => (2, 6),
                _ => (0, 1),
            },
            error_rate: if w.name == "orders-v2" { 0.05 } else { 0.0 },
        };
        let listener = TcpListener::bind(w.app)
            .await
            .with_context(|| format!("bind {}", w.app))?;
        tokio::spawn(apps::serve(app, listener, shutdown.clone()));
    }
    let mut children = Vec::new();
    for w in &workloads {
        // Every sidecar proves its identity with a join token and gets a certificate: all
        // traffic between sidecars is mutual TLS.
        let workload = crate::tokens::Workload {
            namespace: NS.into(),
            service_account: w.name.into(),
        };
        let (_, token) = cp.tokens.create(workload, Duration::from_secs(3600))?;
        children.push(spawn_proxy(&proxy_bin, w, cp.grpc_addr, dir, &token)?);
    }
    let result = drive(&workloads, &opts, &shutdown, &mut children).await;

    shutdown.cancel();
    for child in &mut children {
        stop_child(child).await;
    }
    cp.stop().await;
    result
}

async fn drive(
    workloads: &[Workload],
    opts: &DemoOptions,
    shutdown: &CancellationToken,
    children: &mut [Child],
) -> anyhow::Result<()> {
    let client = apps::client();
    let deadline = Instant::now() + Duration::from_secs(20);
    for w in workloads {
        while !ready(&client, w.admin).await {
            if Instant::now() > deadline {
                bail!(
                    "the {} sidecar did not become ready within 20s (see its log above)",
                    w.name
                );
            }
            for c in children.iter_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("a sidecar exited early ({status})");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let Some((entry, _)) = workloads[0].upstream else {
        bail!("loadgen has no upstream")
    };
    tokio::spawn(apps::load(entry, opts.rps, shutdown.clone()));

    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let scrape_all = || async {
        let mut counts = Vec::new();
        for w in workloads {
            counts.push(scrape(&client, w).await);
        }
        (Instant::now(), counts)
    };
    let first = scrape_all().await;
    let mut previous = first.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut ticks = 0u64;
    // One listener for the whole run: a Ctrl-C that comes while the figures are scraped is
    // seen at the next turn (a listener made per turn would miss it).
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let interrupted = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => break true,
        }
        ticks += 1;
        let now = scrape_all().await;
        // On a terminal, a live screen each second; in a log, a block every 5 seconds.
        if tty || ticks.is_multiple_of(5) {
            let screen = render(
                workloads,
                &previous.1,
                &now.1,
                (now.0 - previous.0).as_secs_f64(),
                started.elapsed(),
            );
            if tty {
                print!("\x1b[2J\x1b[H{screen}");
            } else {
                println!("{screen}");
            }
            previous = now;
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break false;
        }
    };
    let end = scrape_all().await;
    if interrupted {
        println!("\ninterrupted; stopping the mesh");
    }
    println!(
        "\nsummary of the whole run:\n{}",
        render(
            workloads,
            &first.1,
            &end.1,
            (end.0 - first.0).as_secs_f64(),
            started.elapsed()
        )
    );
    Ok(())
}

fn render(
    workloads: &[Workload],
    before: &[Counts],
    after: &[Counts],
    secs: f64,
    elapsed: Duration,
) -> String {
    let mut s = format!("weft demo — {}s — Ctrl-C to stop — traffic: loadgen → frontend → orders (90% v1 / 10% v2) → inventory\n\n", elapsed.as_secs());
    let _ = writeln!(
        s,
        "{:<12} {:>8} {:>9} {:>9} {:>9}",
        "SERVICE", "RPS", "SUCCESS", "P50", "P99"
    );
    for (i, w) in workloads.iter().enumerate().skip(1) {
        let r = summary::rates(&before[i], &after[i], secs);
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}ms"));
        let success = r
            .success
            .map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
        let _ = writeln!(
            s,
            "{:<12} {:>8.1} {:>9} {:>9} {:>9}",
            w.name,
            r.rps,
            success,
            ms(r.p50_ms),
            ms(r.p99_ms)
        );
    }
    s.push_str("\nmeasured by each service's inbound sidecar; orders-v2 is a canary failing 5% of its requests,\n");
    s.push_str(
        "which frontend's sidecar retries (TrafficPolicy retries on 5xx, within a budget).\n",
    );
    s.push_str(
        "every hop between sidecars is mutual TLS with SPIFFE identities from the demo's own CA.\n",
    );
    s
}

async fn scrape(client: &apps::HttpClient, w: &Workload) -> Counts {
    let service = format!("{}.{NS}", w.name);
    match get(client, w.admin, "/metrics").await {
        Some((_, text)) => summary::parse(&text, "inbound", &service),
        None => Counts::default(),
    }
}

async fn ready(client: &apps::HttpClient, admin: SocketAddr) -> bool {
    get(client, admin, "/ready")
        .await
        .is_some_and(|(status, _)| status == 200)
}

async fn get(client: &apps::HttpClient, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use http_body_util::BodyExt;
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Default::default())
        .ok()?;
    let rsp = tokio::time::timeout(Duration::from_secs(2), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The `weft-proxy` beside this executable, else this executable's own copy of the proxy
/// (`weft proxy`), so that `cargo run -p weft -- demo` works from a fresh clone.
fn proxy_command() -> anyhow::Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let sibling = exe.with_file_name("weft-proxy");
    if sibling.is_file() {
        return Ok(vec![sibling]);
    }
    Ok(vec![exe, PathBuf::from("proxy")])
}

fn spawn_proxy(
    bin: &[PathBuf],
    w: &Workload,
    cp: SocketAddr,
    dir: &Path,
    token: &str,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(&bin[0]);
    cmd.args(&bin[1..])
        .arg("run")
        .args(["--control-plane", &format!("https://{cp}")])
        .arg("--trust-anchors")
        .arg(dir.join("data/trust-anchors.pem"))
        .args([
            "--namespace",
            NS,
            "--service-account",
            w.name,
            "--service",
            w.name,
        ])
        .args(["--inbound-addr", &w.inbound.to_string()])
        .args(["--outbound-addr", "127.0.0.1:0"])
        .args(["--admin-addr", &w.admin.to_string()])
        .args(["--app-addr", &w.app.to_string()])
        .args(["--drain-timeout", "2s"])
        // In the environment, not argv: a token is a secret, and argv is visible to `ps`.
        .env("WEFT_PROXY_JOIN_TOKEN", token)
        // Not in the demo's process group (below), so bound to the demo's life another way.
        .env("WEFT_PROXY_EXIT_WITH_PARENT", "true")
        .env(
            "WEFT_LOG",
            std::env::var("WEFT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.join(format!("{}.log", w.name)),
        )?))
        .kill_on_drop(true)
        // A process group of its own: Ctrl-C in a terminal goes to the demo alone, which takes
        // the last scrape for its summary and then stops the sidecars in order.
        .process_group(0);
    if let Some((addr, callee)) = w.upstream {
        cmd.args(["--upstream", &format!("{addr}={callee}.{NS}:8080")]);
    }
    cmd.spawn()
        .with_context(|| format!("start the {} sidecar ({})", w.name, bin[0].display()))
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SIGTERM first, so each sidecar drains; a kill only if it does not exit in time.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Loopback ports for processes that must be told their addresses before they start (the
/// sidecars, whose inbound addresses are in the config). They are picked below the kernel's
/// ephemeral range and checked free, so that no port-0 bind — in this process or any other —
/// can take one between the check and the child's own bind.
pub async fn free_ports(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let range = (ephemeral_low / 2).max(1024)..ephemeral_low.max(2048);
    let mut listeners = Vec::new();
    for _ in 0..n * 100 {
        if listeners.len() == n {
            break;
        }
        let port = rand::rng().random_range(range.clone());
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
            listeners.push(l);
        }
    }
    anyhow::ensure!(listeners.len() == n, "no free loopback ports in {range:?}");
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(Into::into))
        .collect()
}

fn mesh_yaml(workloads: &[Workload], otlp: Option<&str>) -> String {
    let mut y = String::new();
    let tracing = otlp
        .map(|e| format!("\n  tracing: {{otlpEndpoint: \"{e}\", samplingRatio: 1.0}}"))
        .unwrap_or_default();
    let _ = write!(y, "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\nspec:\n  accessLog: off{tracing}\n");
    for w in workloads {
        let _ = write!(
            y,
            "---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {}, namespace: {NS}}}\nspec:\n  ports: [{{name: http, port: 8080, protocol: HTTP}}]\n  endpoints: [{{address: \"{}\"}}]\n",
            w.name, w.inbound
        );
    }
    let _ = write!(
        y,
        "---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: orders, namespace: {NS}}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: orders-canary, namespace: {NS}}}\nspec:\n  parentRefs: [{{kind: Service, name: orders}}]\n  rules:\n  - backendRefs:\n    - {{name: orders-v1, port: 8080, weight: 90}}\n    - {{name: orders-v2, port: 8080, weight: 10}}\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: orders, namespace: {NS}}}\nspec:\n  targetRef: {{name: orders}}\n  timeouts: {{request: 2s}}\n  retries: {{attempts: 2, on: [5xx], backoff: {{base: 5ms, max: 50ms}}}}\n"
    );
    y
}
