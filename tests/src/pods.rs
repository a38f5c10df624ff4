//! Pods without Kubernetes, for transparent interception (needs root, as the suite has): a
//! "node" network namespace holding a bridge, and "pods", each a namespace of its own on a veth
//! pair into that bridge, with an IPv4 and an IPv6 address and routes through the node. All of
//! them, and every process and iptables rule in them, go when the [`Node`] and its [`Pod`]s are
//! dropped, also when a test fails.
//!
//! In a pod, [`Pod::run`] and [`Pod::spawn`] run the test's own apps and clients (as root: the
//! app's traffic, which the pod's iptables rules redirect), [`Pod::init`] runs `weft-proxy
//! init`, and [`Pod::proxy`] runs `weft-proxy` as a process under the proxy's UID and GID
//! (2102), whose own traffic the rules skip. The control plane runs in the node ([`Node::control_plane`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use crate::eventually::eventually;
use crate::netns::Netns;
use crate::process::{binary, run_weft, ServeProcess};
use crate::temp_dir::TempDir;

/// The UID and GID the pods' proxies run as (`weft-proxy init`'s default `--proxy-uid`).
pub const PROXY_UID: u32 = 2102;

/// The node: a namespace with the bridge `br0` (`10.77.0.1/24`, `fd77::1/64`) the pods hang on.
/// Drop its pods before it.
pub struct Node {
    pods: u8,
    dir: TempDir,
    pub netns: Netns,
}

impl Node {
    pub fn create() -> Node {
        let netns = Netns::create("node");
        netns.ip(&["link", "add", "br0", "type", "bridge"]);
        netns.ip(&["link", "set", "br0", "up"]);
        netns.ip(&["addr", "add", "10.77.0.1/24", "dev", "br0"]);
        netns.ip(&["-6", "addr", "add", "fd77::1/64", "dev", "br0", "nodad"]);
        let dir = TempDir::new();
        // The proxies, which are not root, read the trust anchors from here.
        chmod(&dir.0, 0o755);
        Node {
            pods: 0,
            dir,
            netns,
        }
    }

    /// A new pod on the bridge: `10.77.0.(10+N)`, `fd77::(10+N)`.
    pub fn pod(&mut self, name: &str) -> Pod {
        self.pods += 1;
        let n = 10 + self.pods;
        let netns = Netns::create("pod");
        let host_end = format!("v{n}");
        self.netns.ip(&[
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ]);
        self.netns
            .ip(&["link", "set", &host_end, "master", "br0", "up"]);
        let ip = Ipv4Addr::new(10, 77, 0, n);
        let ip6: Ipv6Addr = format!("fd77::{n}").parse().unwrap();
        netns.ip(&["link", "set", "eth0", "up"]);
        netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        netns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        netns.ip(&["route", "add", "default", "via", "10.77.0.1"]);
        netns.ip(&["-6", "route", "add", "default", "via", "fd77::1"]);
        let runtime = Runtime::inside(&netns);
        Pod {
            children: Vec::new(),
            runtime,
            name: name.to_string(),
            ip,
            ip6,
            dir: TempDir::new(),
            netns,
        }
    }

    /// `weft serve` in the node, with `config`: its gRPC listener on the bridge address, its API
    /// on the node's loopback. The trust anchors are copied where the proxies can read them.
    pub async fn control_plane(&self, config: &str) -> ControlPlane {
        let config_file = self.dir.0.join("mesh.yaml");
        std::fs::write(&config_file, config).unwrap();
        let data = self.dir.0.join("data");
        let serve = ServeProcess::builder()
            .netns(&self.netns.name)
            .args(&[
                "--grpc-addr",
                "10.77.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
                "--config",
                config_file.to_str().unwrap(),
            ])
            .start()
            .await;
        let anchors = self.dir.0.join("trust-anchors.pem");
        std::fs::copy(data.join("trust-anchors.pem"), &anchors).unwrap();
        chmod(&anchors, 0o644);
        ControlPlane {
            serve,
            netns: self.netns.name.clone(),
            anchors,
        }
    }
}

/// The node's `weft serve`.
pub struct ControlPlane {
    pub serve: ServeProcess,
    netns: String,
    pub anchors: PathBuf,
}

impl ControlPlane {
    /// A join token for `namespace/service_account`.
    pub async fn token(&self, workload: &str) -> String {
        let server = format!("http://{}", self.serve.api_addr);
        let args = ["token", "create", workload, "--server", &server];
        let (code, out, err) = run_weft(Some(&self.netns), &args, "").await;
        assert_eq!(code, 0, "weft token create {workload}: {err}");
        out.trim().to_string()
    }
}

/// One pod: its namespace, addresses, a runtime inside it, and its processes (which go first
/// when it is dropped, then the runtime, then the namespace).
pub struct Pod {
    children: Vec<tokio::process::Child>,
    runtime: Runtime,
    pub name: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    dir: TempDir,
    pub netns: Netns,
}

impl Pod {
    /// `ip:port` of this pod, IPv4.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), port)
    }

    /// `[ip6]:port` of this pod.
    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6), port)
    }

    /// Runs `fut` on this pod's runtime (a thread inside its namespace, as root): what it binds
    /// and connects to is the pod's, and it is the app's traffic to the pod's iptables rules.
    pub async fn run<T, F>(&self, fut: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.runtime
            .handle
            .spawn(fut)
            .await
            .expect("a task in the pod")
    }

    /// Starts `fut` on this pod's runtime and leaves it running (an app's server).
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.handle.spawn(fut);
    }

    /// Runs `program ARGS` in the pod, as root.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.netns.exec(program, args)
    }

    /// `weft-proxy init ARGS` in the pod; panics, with its output, if it fails.
    pub fn init(&self, args: &[&str]) -> String {
        let proxy = binary("weft-proxy");
        let all: Vec<&str> = std::iter::once("init")
            .chain(args.iter().copied())
            .collect();
        let out = self.exec(proxy.to_str().unwrap(), &all);
        assert!(
            out.status.success(),
            "weft-proxy init in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `iptables-save -t nat` (or `ip6tables-save`) in the pod, without the counters and
    /// comment lines that differ between runs.
    pub fn nat_rules(&self, family6: bool) -> String {
        let program = if family6 { "ip6tables" } else { "iptables" };
        let out = self.exec(program, &["-t", "nat", "-S"]);
        assert!(out.status.success(), "{program} -t nat -S");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `weft-proxy run` in the pod as [`PROXY_UID`], serving `namespace/service` as
    /// `service_account`; returns once its admin listener says it is ready.
    pub async fn proxy(
        &mut self,
        cp: &ControlPlane,
        namespace: &str,
        service: &str,
        service_account: &str,
    ) {
        self.start_proxy(cp, namespace, service, service_account)
            .await;
        let log = self.dir.0.join("proxy.log");
        let what = format!(
            "the proxy in {} to be ready (log: {})",
            self.name,
            log.display()
        );
        eventually(&what, Duration::from_secs(20), || async {
            self.admin("/ready").await.filter(|(s, _)| *s == 200)
        })
        .await;
    }

    /// [`Pod::proxy`], without waiting for it to be ready.
    pub async fn start_proxy(
        &mut self,
        cp: &ControlPlane,
        namespace: &str,
        service: &str,
        service_account: &str,
    ) {
        let token = cp.token(&format!("{namespace}/{service_account}")).await;
        let log = self.dir.0.join("proxy.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let proxy = binary("weft-proxy");
        let uid = PROXY_UID.to_string();
        let child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.netns.name, "setpriv"])
            .args(["--reuid", &uid, "--regid", &uid, "--clear-groups", "--"])
            .arg(proxy)
            .arg("run")
            .env(
                "WEFT_PROXY_CONTROL_PLANE",
                format!("https://{}", cp.serve.grpc_addr),
            )
            .env("WEFT_PROXY_TRUST_ANCHORS", &cp.anchors)
            .env("WEFT_PROXY_NAMESPACE", namespace)
            .env("WEFT_PROXY_SERVICE", service)
            .env("WEFT_PROXY_SERVICE_ACCOUNT", service_account)
            .env("WEFT_PROXY_JOIN_TOKEN", token)
            .env("WEFT_PROXY_ADVERTISE_ADDR", self.addr(15006).to_string())
            .env("WEFT_PROXY_EXIT_WITH_PARENT", "true")
            .env("WEFT_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("start weft-proxy in the pod");
        self.children.push(child);
    }

    /// `GET PATH` on the pod's proxy's admin listener: status and body, or `None` when it does
    /// not answer.
    pub async fn admin(&self, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        self.run(async move {
            let admin: SocketAddr = "127.0.0.1:15020".parse().unwrap();
            let client = crate::client::http1_client();
            let rsp = crate::client::get(&client, admin, "127.0.0.1:15020", &path).await;
            rsp.ok().map(|r| (r.status, r.body))
        })
        .await
    }

    /// The pod's proxy's metrics.
    pub async fn metrics(&self) -> String {
        self.admin("/metrics").await.expect("the proxy's metrics").1
    }

    /// The pod's proxy's log so far.
    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("proxy.log")).unwrap_or_default()
    }
}

/// A thread inside a namespace, driving a current-thread runtime until dropped.
struct Runtime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    fn inside(netns: &Netns) -> Runtime {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let file = std::fs::File::open(format!("/run/netns/{}", netns.name)).unwrap();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsFd;
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("enter the namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(rt.handle().clone()).unwrap();
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        Runtime {
            handle: handle_rx.recv().expect("the pod's runtime"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
