//! The built binaries as processes of their own: where they are ([`binary`]), `weft serve`
//! started and stopped as an operator would ([`ServeProcess`], made with
//! [`ServeProcess::builder`]), and the CLI run once ([`run_weft`]). A control plane in this
//! process is [`crate::mesh`]'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::data_dirs::{data_dir_of, remember_data_dir};

/// A binary of this workspace (built by `cargo build` before the tests run: see scripts/test).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// How to start a [`ServeProcess`]: `weft serve ARGS`, both listeners on `127.0.0.1:0` unless
/// the arguments say otherwise.
#[derive(Clone, Debug, Default)]
#[must_use = "weft serve starts with .start()"]
pub struct ServeProcessBuilder {
    args: Vec<String>,
    netns: Option<String>,
}

impl ServeProcessBuilder {
    /// Arguments after `weft serve` (`--data-dir`, `--api-addr` etc.), added to those given
    /// before.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Runs it inside network namespace `netns` (`ip netns exec`).
    pub fn netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_string());
        self
    }

    /// Starts it and waits until it serves.
    pub async fn start(self) -> ServeProcess {
        ServeProcess::launch(self.netns.as_deref(), &self.args).await
    }
}

/// `weft serve` as a process of its own, on port 0; the addresses it bound are read from its log.
pub struct ServeProcess {
    pub child: tokio::process::Child,
    pub api_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
}

impl ServeProcess {
    /// A `weft serve` to start, with no arguments but the listeners' unless told otherwise.
    pub fn builder() -> ServeProcessBuilder {
        ServeProcessBuilder::default()
    }

    async fn launch(netns: Option<&str>, args: &[String]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let given = |flag: &str| args.iter().any(|a| a == flag);
        let mut all: Vec<&str> = vec!["serve"];
        if !given("--api-addr") {
            all.extend(["--api-addr", "127.0.0.1:0"]);
        }
        if !given("--grpc-addr") {
            all.extend(["--grpc-addr", "127.0.0.1:0"]);
        }
        all.extend(args.iter().map(String::as_str));
        let mut child = weft_command(netns)
            .args(&all)
            .env("WEFT_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start weft serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let serving = tokio::time::timeout(Duration::from_secs(20), async {
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("weft control plane serving") {
                    return Ok(line);
                }
                seen.push(line);
            }
            Err(seen.join("\n"))
        })
        .await
        .expect("weft serve to start within 20s")
        .unwrap_or_else(|log| panic!("weft serve exited before serving:\n{log}"));
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let data_dir = args
            .iter()
            .position(|a| a == "--data-dir")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from);
        let addr_after = |field: &str| -> SocketAddr {
            let at = serving
                .find(&format!("{field}="))
                .or_else(|| serving.find(&format!("\"{field}\":")))
                .unwrap_or_else(|| panic!("no {field} address in {serving:?}"));
            let rest = &serving[at + field.len()..];
            let addr: String = rest
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            addr.parse()
                .unwrap_or_else(|e| panic!("{field} address {addr:?} in {serving:?}: {e}"))
        };
        let api_addr = addr_after("api");
        if let Some(dir) = data_dir {
            remember_data_dir(api_addr, dir);
        }
        Self {
            api_addr,
            grpc_addr: addr_after("grpc"),
            child,
        }
    }

    /// `kill -9`: no chance to flush or clean up anything.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reap");
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let ok = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        assert!(ok.success());
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("weft serve to stop within 15s after SIGTERM")
            .expect("reap");
        assert!(status.success(), "weft serve exited with {status}");
    }
}

/// Runs the built `weft ARGS` (inside network namespace `netns` when given) with `stdin` as its
/// input; returns (exit code, stdout, stderr). When `--server` names a control plane the
/// harness started, `WEFT_DATA_DIR` is its data dir, as for a user on its host.
pub async fn run_weft<S: AsRef<std::ffi::OsStr>>(
    netns: Option<&str>,
    args: &[S],
    stdin: &str,
) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let args: Vec<&std::ffi::OsStr> = args.iter().map(AsRef::as_ref).collect();
    let data_dir = args
        .iter()
        .position(|a| *a == "--server")
        .and_then(|i| args.get(i + 1)?.to_str())
        .and_then(|url| url.split_once("://")?.1.trim_end_matches('/').parse().ok())
        .and_then(data_dir_of);
    let mut command = weft_command(netns);
    command.env_remove("WEFT_DATA_DIR");
    if let Some(dir) = data_dir {
        command.env("WEFT_DATA_DIR", dir);
    }
    let mut child = command
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run weft");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = child.wait_with_output().await.expect("weft output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The built `weft`, to run inside network namespace `netns` when given (`ip netns exec` execs
/// it: the child is `weft` itself, so signals reach it).
fn weft_command(netns: Option<&str>) -> tokio::process::Command {
    match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary("weft"));
            c
        }
        None => tokio::process::Command::new(binary("weft")),
    }
}
