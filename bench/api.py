#!/usr/bin/env python3
"""The control-plane API under measurement: how long a write takes, how long until a proxy
runs it, and what config churn costs the data path.

1. writes: N sequential `POST /api/v1/apply` of an HTTPRoute change (each one committed to the
   store with fsync before the API answers); per write, the API's answer time and the time
   until the client proxy's /config shows a new version. The same for N changes of the config
   file (inotify, debounced), for comparison.
2. churn: constant-rate load through the mesh (oha, --latency-correction) without writes, then
   with one route change through the API every 100 ms; latency percentiles, failures, and the
   control plane's CPU.

Everything runs on loopback; every load is bounded (--duration). Needs a release build
(`cargo build --release`, or drop --skip-build) and oha (`cargo install oha`).

    python3 bench/api.py [--writes 300] [--rate 1000] [--duration 20]
"""

import argparse, json, os, re, subprocess, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (REL, add_load_args, build, config_version, constant_rate, cpu_seconds, free_port,  # noqa: E402
                     peak_rss_mib, require, run, start_upstream, start_weft, summary)

ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: upstream, namespace: bench}}
spec:
  parentRefs: [{{kind: Service, name: upstream}}]
  rules:
  - timeouts: {{request: {timeout}ms}}
    backendRefs: [{{name: upstream}}]
"""


def api_port(tmp):
    with open(f"{tmp}/weft.log") as f:
        m = re.search(r"api=127\.0\.0\.1:(\d+)", f.read())
    return int(m.group(1))


def admin_headers(tmp):
    """The API's admin token (DATA_DIR/admin-token) and the content type of a YAML body."""
    with open(f"{tmp}/data/admin-token") as f:
        return {"Authorization": f"Bearer {f.read().strip()}", "Content-Type": "application/yaml"}


def apply(api, text, headers):
    req = urllib.request.Request(f"http://127.0.0.1:{api}/api/v1/apply", data=text.encode(), method="POST",
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = json.load(r)
    assert body["results"][0]["action"] in ("created", "configured"), body


def wait_version(admin, before, deadline=10.0):
    end = time.perf_counter() + deadline
    while True:
        v = config_version(admin)
        if v != before:
            return v
        if time.perf_counter() > end:
            raise SystemExit("the change did not reach the proxy")
        time.sleep(0.0002)


def pct(values, p):
    s = sorted(values)
    return round(s[min(len(s) - 1, int(len(s) * p / 100))] * 1000, 2)


def stats(name, answer, pushed):
    out = {"how": name, "writes": len(pushed),
           "answer_p50_ms": pct(answer, 50) if answer else None, "answer_p99_ms": pct(answer, 99) if answer else None,
           "in_proxy_p50_ms": pct(pushed, 50), "in_proxy_p99_ms": pct(pushed, 99),
           "in_proxy_max_ms": round(max(pushed) * 1000, 2)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=300)
    add_load_args(ap, duration=20)
    args = ap.parse_args()
    require("oha")
    build(args)
    writes, churn = [], []
    with run(prefix="weft-bench-api-") as (tmp, procs):
        up = free_port()
        start_upstream(procs, tmp, up)
        url, client, servers, c_admin, cfg = start_weft(tmp, procs, [up], "")
        api = api_port(tmp)
        headers = admin_headers(tmp)
        cp = procs.procs[1].pid  # weft serve (after the upstream)
        # Warm the proxy's subscription to the service the route attaches to.
        urllib.request.urlopen(url, timeout=5).read()

        # 1. Writes through the API, then through the file.
        answer, pushed = [], []
        for i in range(args.writes):
            before = config_version(c_admin)
            t0 = time.perf_counter()
            apply(api, ROUTE.format(timeout=5000 + i), headers)
            t1 = time.perf_counter()
            wait_version(c_admin, before)
            t2 = time.perf_counter()
            answer.append(t1 - t0)
            pushed.append(t2 - t0)
        writes.append(stats("API (POST /api/v1/apply)", answer, pushed))
        subprocess.run([os.path.join(REL, "weft"), "delete", "httproute", "upstream", "-n", "bench",
                        "--server", f"http://127.0.0.1:{api}", "--data-dir", f"{tmp}/data"], check=True, capture_output=True)
        base = open(cfg).read()
        pushed = []
        for i in range(min(args.writes, 100)):
            before = config_version(c_admin)
            t0 = time.perf_counter()
            with open(cfg + ".tmp", "w") as f:
                f.write(base + "---\n" + ROUTE.format(timeout=5000 + i))
            os.rename(cfg + ".tmp", cfg)
            wait_version(c_admin, before)
            pushed.append(time.perf_counter() - t0)
        writes.append(stats("file (--config, inotify)", [], pushed))
        with open(cfg + ".tmp", "w") as f:
            f.write(base)
        os.rename(cfg + ".tmp", cfg)
        time.sleep(0.5)

        # 2. The data path without and with config churn through the API.
        cpu0 = cpu_seconds(cp)
        load = constant_rate(url, args)
        churn.append(summary("no writes", load, [round(cpu_seconds(cp) - cpu0, 2)]))
        stop = time.perf_counter() + args.duration + 4
        churner = subprocess.Popen([sys.executable, "-c", f"""
import time, urllib.request
i = 0
while time.perf_counter() < {stop}:
    body = '''{ROUTE}'''.format(timeout=5000 + i % 1000).encode()
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:{api}/api/v1/apply", data=body, method="POST", headers={headers!r}), timeout=10).read()
    i += 1
    time.sleep(0.1)
print(i)
"""], stdout=subprocess.PIPE, text=True)
        cpu0 = cpu_seconds(cp)
        load = constant_rate(url, args)
        cpu = round(cpu_seconds(cp) - cpu0, 2)
        n = int(churner.communicate()[0].strip() or 0)
        churn.append(summary(f"a route change every 100 ms ({n} writes)", load, [cpu]))
        rss = round(peak_rss_mib(cp), 1)

    print(json.dumps({"writes": writes, "churn": churn, "control_plane_peak_rss_mib": rss}, indent=2))
    print()
    print("| how | writes | API answer p50 / p99 ms | in the proxy p50 / p99 / max ms |")
    print("|---|---|---|---|")
    for w in writes:
        answer = f"{w['answer_p50_ms']} / {w['answer_p99_ms']}" if w["answer_p50_ms"] is not None else "-"
        print(f"| {w['how']} | {w['writes']} | {answer} | {w['in_proxy_p50_ms']} / {w['in_proxy_p99_ms']} / {w['in_proxy_max_ms']} |")
    print()
    print(f"| data path at {args.rate} rps for {args.duration}s | p50 ms | p99 ms | p99.9 ms | success % | control-plane CPU s (warm-up included) |")
    print("|---|---|---|---|---|---|")
    for r in churn:
        print(f"| {r['setup']} | {r['p50_ms']} | {r['p99_ms']} | {r['p99.9_ms']} | {r['success_pct']} | {r['cpu_s_per_proxy'][0]} |")
    print(f"\ncontrol plane peak RSS: {rss} MiB")


if __name__ == "__main__":
    main()
