//! The binaries as users run them: exit codes, error messages, draining on SIGTERM, the demo.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use weft_tests::apps::HttpApp;
use weft_tests::*;

async fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(binary(bin))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The processes whose environment carries `mark` (the demo and every sidecar it started
/// inherit it). Zombies, exited but not yet reaped, have an empty environment.
fn marked(mark: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.windows(mark.len()).any(|w| w == mark.as_bytes()))
        })
        .map(|e| e.path())
        .collect()
}

/// Reads the demo's output into `stdout` up to its first block of figures (a log prints one
/// every 5 s): the mesh is up and measuring.
async fn first_figures(lines: &mut Lines<BufReader<ChildStdout>>, stdout: &mut String) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.push_str(&line);
            stdout.push('\n');
            if line.starts_with("inventory") {
                return;
            }
        }
    })
    .await
    .expect("the demo printed its first figures");
}

/// The RPS column of `service`'s row in a demo table.
fn rps(table: &str, service: &str) -> f64 {
    let row = table
        .lines()
        .find(|l| l.starts_with(service))
        .unwrap_or_else(|| panic!("no {service} row in\n{table}"));
    row.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn weft_serve_refuses_invalid_config_with_exit_64_naming_file_and_field() {
    let dir = TempDir::new();
    let file = dir.0.join("bad.yaml");
    std::fs::write(&file, "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n  targetRef: {name: orders}\n  timeouts: {connect: soon}\n").unwrap();
    let (code, stderr) = run(
        "weft",
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            dir.0.join("d").to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
        ],
    )
    .await;
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("bad.yaml: document 1 (TrafficPolicy/default/p): spec.timeouts.connect"),
        "{stderr}"
    );
}

#[tokio::test]
async fn weft_serve_on_a_taken_address_says_which_and_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new();
    let data = dir.0.join("data");
    let (code, stderr) = run(
        "weft",
        &[
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--api-addr",
            &addr,
        ],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    let line = format!("weft: api-addr={addr}: cannot listen: ");
    assert!(stderr.lines().any(|l| l.starts_with(&line)), "{stderr}");
    assert!(stderr.contains("choose another --api-addr"), "{stderr}");
}

#[tokio::test]
async fn weft_demo_refuses_a_load_of_nothing_with_exit_64() {
    let (code, stderr) = run("weft", &["demo", "--rps", "0"]).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--rps 0"), "{stderr}");
}

#[tokio::test]
async fn weft_proxy_reports_every_bad_setting_then_exits_64() {
    let (code, stderr) = run(
        "weft-proxy",
        &[
            "run",
            "--inbound-addr",
            "nowhere",
            "--control-plane",
            "http://127.0.0.1:1",
            "--service-account",
            "Not_Valid",
        ],
    )
    .await;
    assert_eq!(code, 64, "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 6, "one line per bad setting: {stderr}");
    assert!(stderr.contains("inbound-addr=\"nowhere\""));
    assert!(stderr.contains("namespace: required"));
    assert!(stderr.contains("service-account=\"Not_Valid\""));
    assert!(stderr.contains("the control plane is reached over TLS only; use https://"));
    assert!(stderr.contains("trust-anchors: required"));
    assert!(stderr.contains("join-token or token-file: required"));
    let (code, stdout_or_err) = run("weft-proxy", &["--version"]).await;
    assert_eq!(code, 0, "{stdout_or_err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let app = HttpApp::start("orders").await;
    let mut server = Sidecar::builder().bind().await;
    // The caller's proxy is a real process: its ports are picked for it.
    let addrs = weft::demo::free_ports(4).await.unwrap();
    let mesh = Mesh::builder()
        .config(service_yaml("shop", "orders", "HTTP", &[server.inbound]))
        .start()
        .await;
    server.start(&mesh, "shop", "orders", app.addr);
    server.ready().await;
    let mut proxy = Command::new(binary("weft-proxy"))
        .args([
            "run",
            "--control-plane",
            &mesh.url(),
            "--namespace",
            "shop",
            "--service-account",
            "frontend",
        ])
        .arg("--trust-anchors")
        .arg(mesh.anchors())
        .env(
            "WEFT_PROXY_JOIN_TOKEN",
            mesh.access("shop", "frontend").token,
        )
        .args([
            "--inbound-addr",
            &addrs[0].to_string(),
            "--outbound-addr",
            &addrs[1].to_string(),
            "--admin-addr",
            &addrs[2].to_string(),
        ])
        .args([
            "--upstream",
            &format!("{}=orders.shop:8080", addrs[3]),
            "--drain-timeout",
            "5s",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = http1_client();
    eventually("the proxy to be ready", Duration::from_secs(10), || async {
        get(&http, addrs[2], "admin", "/ready")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;

    let before = app.hits();
    let slow = tokio::spawn({
        let (http, upstream) = (http.clone(), addrs[3]);
        async move { get(&http, upstream, "orders", "/delay/700").await }
    });
    eventually(
        "the slow request to reach the app",
        Duration::from_secs(5),
        || async { (app.hits() > before).then_some(()) },
    )
    .await;
    let pid = proxy.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap()
        .success());

    let r = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(r.status, 200, "{r:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    proxy
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(log.contains("SIGTERM: draining"), "{log}");
    assert!(
        tokio::net::TcpStream::connect(addrs[1]).await.is_err(),
        "the outbound listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_a_whole_mesh_and_leaves_nothing_behind() {
    let mark = format!("weft-test-mark-{}", std::process::id());
    let out = Command::new(binary("weft"))
        .args(["demo", "--duration", "4s", "--rps", "40"])
        .env("WEFT_TEST_MARK", &mark)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.rsplit("weft demo —").next().unwrap();
    for service in ["frontend", "orders-v1", "orders-v2", "inventory"] {
        assert!(
            rps(last, service) > 0.0,
            "{service} saw no traffic:\n{stdout}"
        );
    }
    // Every sidecar inherited the mark; none may outlive the demo.
    let leftover = marked(&mark);
    assert!(leftover.is_empty(), "processes left behind: {leftover:?}");
}

/// Ctrl-C in a terminal signals the whole foreground process group. The demo must still print
/// a summary of the whole run with the sidecars' numbers in it, then stop everything it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_demo_with_the_whole_runs_summary_and_nothing_left() {
    let mark = format!("weft-test-ctrl-c-{}", std::process::id());
    // In a process group of its own, as a shell runs a foreground job.
    let mut demo = Command::new(binary("weft"))
        .args(["demo", "--duration", "60s", "--rps", "40"])
        .env("WEFT_TEST_MARK", &mark)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pgid = demo.id().unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    first_figures(&mut lines, &mut stdout).await;
    // What a terminal's Ctrl-C does: SIGINT to every process of the group.
    let sent = std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        demo.wait().await.unwrap()
    })
    .await
    .expect("the demo stopped after Ctrl-C");
    assert!(status.success(), "{status}\n{stdout}");
    assert!(
        stdout.contains("interrupted; stopping the mesh"),
        "{stdout}"
    );
    let summary = stdout.rsplit("summary of the whole run:").next().unwrap();
    for service in ["frontend", "orders-v1", "inventory"] {
        assert!(
            rps(summary, service) > 0.0,
            "{service} counted nothing in the summary:\n{stdout}"
        );
    }
    // Every sidecar inherited the mark; none may outlive the demo.
    let leftover = marked(&mark);
    assert!(leftover.is_empty(), "processes left behind: {leftover:?}");
}

/// The README's standalone walk-through, run as the script it points to: a control plane, two
/// versions of `orders` behind their proxies, a `frontend` proxy, a canary applied through the
/// API and changed while it runs, and a call through the outbound listener as `http_proxy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_standalone_walk_through_works_as_written() {
    let bin_dir = binary("weft").parent().unwrap().to_path_buf();
    let script = bin_dir.join("../../examples/standalone/run.sh");
    // A block of ports below the ephemeral range, different for each run.
    let base = 20_000 + (std::process::id() % 90) * 100;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("bash")
            .arg(&script)
            .env("WEFT_BIN_DIR", &bin_dir)
            .env("PORT_BASE", base.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the walk-through finished within 120 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // `uniq -c` lines, per phase: "     90 orders-v1".
    let count = |phase: &str, version: &str| -> u32 {
        let section = stdout.split(phase).nth(1).unwrap_or_default();
        section
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .find(|l| l.trim_end().ends_with(version))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let (v1, v2) = (
        count("90/10 canary", "orders-v1"),
        count("90/10 canary", "orders-v2"),
    );
    assert_eq!(v1 + v2, 100, "{stdout}");
    assert!((1..=20).contains(&v2), "about 10% to the canary: {stdout}");
    let v2 = count("50/50", "orders-v2");
    assert!(
        (30..=70).contains(&v2),
        "about half to v2 after the change: {stdout}"
    );
    assert!(stdout.contains("through http_proxy:\norders-v"), "{stdout}");
    for service in ["orders-v1.shop", "orders-v2.shop", "frontend.shop"] {
        assert!(
            stdout.contains(service),
            "{service} in weft get proxies: {stdout}"
        );
    }
}

/// A demo killed outright (no chance to stop its sidecars) still leaves none behind: each
/// sidecar drains and exits when its parent is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_demo_leaves_no_sidecar_behind() {
    let mark = format!("weft-test-kill-9-{}", std::process::id());
    let mut demo = Command::new(binary("weft"))
        .args(["demo", "--duration", "60s", "--rps", "10"])
        .env("WEFT_TEST_MARK", &mark)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The demo's working folder (its config, data dir and logs): killed outright it cannot
    // remove it, so the test does, also when it fails.
    let _folder = TempDir(std::env::temp_dir().join(format!("weft-demo-{}", demo.id().unwrap())));
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    first_figures(&mut lines, &mut String::new()).await;
    assert!(
        marked(&mark).len() >= 6,
        "the demo and its five sidecars run"
    );
    demo.start_kill().unwrap();
    demo.wait().await.unwrap();
    eventually("every sidecar to exit", Duration::from_secs(15), || async {
        marked(&mark).is_empty().then_some(())
    })
    .await;
}
