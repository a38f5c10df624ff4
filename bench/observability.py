#!/usr/bin/env python3
"""The cost of observability on the hot path: the weft pair (client proxy -> server proxy ->
bench-upstream, mTLS between the proxies, one worker each) at a constant rate, with

  tracing off          no MeshConfig tracing (no span is made)
  tracing 100%         MeshConfig tracing to a real OTLP collector (rotel, spans discarded after
                       receipt), samplingRatio 1.0: every request makes a CLIENT and a SERVER span
  tracing + access log the same, plus MeshConfig accessLog: json (lines to the proxy's standard
                       output, /dev/null here: the cost of making and writing them)

applied to the same running proxies by rewriting the config file. For each: latency
percentiles (oha, latency correction) and CPU seconds per proxy, and the spans exported and
dropped as the proxies count them.

Usage: bench/observability.py [--rate 1000] [--duration 30] [--connections 16] [--skip-build]
Needs: oha (cargo install oha), rotel (pip install rotel), a release build.
All traffic stays on 127.0.0.1; every load is bounded by --duration.
"""
import argparse, os, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (add_load_args, build, constant_rate, cpu_seconds, free_port, peak_rss_mib, require,  # noqa: E402
                     rewrite_config, rotel_agent, run, start_upstream, start_weft, summary)


def scrape(admin, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
        text = r.read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name) and not l.startswith("#"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_args(ap, duration=30)
    args = ap.parse_args()
    require("oha")
    build(args)
    rows = []
    with run() as (tmp, procs):
        otlp, otlp_http = free_port(), free_port()
        procs.start([rotel_agent(), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{otlp}",
                     "--otlp-http-endpoint", f"127.0.0.1:{otlp_http}", "--exporter", "blackhole"], f"{tmp}/rotel.log")
        up = free_port()
        start_upstream(procs, tmp, up)
        url, client, servers, c_admin, cfg = start_weft(tmp, procs, [up], "")
        with open(cfg) as f:
            base = f.read()
        pids = [client] + servers
        setups = [
            ("tracing off", ""),
            ("tracing 100%", f"---\napiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\n"
                             f"spec:\n  tracing: {{otlpEndpoint: \"http://127.0.0.1:{otlp}\", samplingRatio: 1.0}}\n"),
            ("tracing 100% + access log", f"---\napiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\n"
                                          f"spec:\n  accessLog: json\n  tracing: {{otlpEndpoint: \"http://127.0.0.1:{otlp}\", samplingRatio: 1.0}}\n"),
        ]
        for name, extra in setups:
            if extra:
                rewrite_config(cfg, base + extra, c_admin)
            exported0 = scrape(c_admin, "weft_proxy_trace_spans_exported_total")
            dropped0 = scrape(c_admin, "weft_proxy_trace_spans_dropped_total")
            cpu0 = {p: cpu_seconds(p) for p in pids}
            load = constant_rate(url, args)
            time.sleep(2)  # the last batch
            row = summary(name, load, [round(cpu_seconds(p) - cpu0[p], 2) for p in pids],
                          [round(peak_rss_mib(p), 1) for p in pids])
            row["client_spans_exported"] = int(scrape(c_admin, "weft_proxy_trace_spans_exported_total") - exported0)
            row["client_spans_dropped"] = int(scrape(c_admin, "weft_proxy_trace_spans_dropped_total") - dropped0)
            rows.append(row)

    print(f"weft pair at {args.rate} rps for {args.duration}s (after a 3 s warm-up at the same rate):")
    print("| setup | p50 ms | p99 ms | p99.9 ms | max ms | success % | CPU s (client, server) | peak RSS MiB (client, server) | client spans exported / dropped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r['p50_ms']} | {r['p99_ms']} | {r['p99.9_ms']} | {r['max_ms']} | {r['success_pct']} | "
              f"{', '.join(map(str, r['cpu_s_per_proxy']))} | {', '.join(map(str, r['peak_rss_mib_per_proxy']))} | "
              f"{r['client_spans_exported']} / {r['client_spans_dropped']} |")


if __name__ == "__main__":
    main()
