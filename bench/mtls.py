#!/usr/bin/env python3
"""weft's mTLS benchmark beside an Envoy pair with mTLS, in one run.

Setups (each proxy one worker: weft --workers 1, envoy --concurrency 1), all on 127.0.0.1,
upstream `bench-upstream` (1 KiB responses):
  weft-mtls    weft-proxy pair with certificates from `weft serve` (join tokens): mutual TLS 1.3
  envoy-mtls   Envoy pair, mutual TLS 1.3 with ECDSA P-256 certificates from a CA made with openssl,
               SPIFFE URI SAN checked by the client Envoy, HTTP/2 between them

Two measurements per setup:
  steady   latency at a constant rate (default 1000 rps, 16 keep-alive connections) and the CPU
           seconds each proxy used during it
  connect  new mTLS connections per second: --connect-requests requests over a TCP service with
           keep-alive off, so every request is a new client connection and a new proxy-to-proxy
           (m)TLS handshake (weft: a Service with protocol TCP; Envoy: tcp_proxy with TLS between
           the Envoys). Each starts once earlier runs' TIME_WAIT sockets have drained.

(weft has no plaintext mode between proxies any more; the plaintext figures docs/benchmarks.md
compares with come from bench/mesh.py's runs before mTLS became mandatory.)

Usage: bench/mtls.py [--rate 1000] [--duration 30] [--connect-requests 5000] [--skip-build]
"""
import argparse, json, os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (add_load_args, build, cpu_seconds, failures, fixed_rate, free_port, ms, oha,  # noqa: E402
                     peak_rss_mib, require, run, start_envoy, start_serve, start_upstream, wait_http,
                     weft_proxy_cmd, weft_proxy_env)


def steady(url, pids, args):
    oha(url, args, ["-z", "3s"])
    before = {p: cpu_seconds(p) for p in pids}
    r = fixed_rate(url, args)
    cpu = [round(cpu_seconds(p) - before[p], 2) for p in pids]
    pct = r["latencyPercentiles"]
    errors = sum(failures(r).values())
    non200 = sum(v for k, v in r.get("statusCodeDistribution", {}).items() if k != "200")
    return {"p50_ms": ms(pct["p50"]), "p99_ms": ms(pct["p99"]), "p99.9_ms": ms(pct["p99.9"]),
            "rps": round(r["summary"]["requestsPerSec"], 1), "failed": errors + non200, "cpu_s": cpu,
            "rss_mib": [round(peak_rss_mib(p), 1) for p in pids]}


def time_wait_sockets():
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            n += sum(1 for line in f if line.split()[3:4] == ["06"])
    return n


def drain_time_wait(limit=2000, timeout=120):
    """Every new connection leaves sockets in TIME_WAIT; wait until earlier runs' have expired so
    that each setup starts with the same free ephemeral ports."""
    end = time.time() + timeout
    while time_wait_sockets() > limit and time.time() < end:
        time.sleep(1)


def connect(url, pids, args):
    drain_time_wait()
    before = {p: cpu_seconds(p) for p in pids}
    r = oha(url, args, ["-n", str(args.connect_requests), "--disable-keepalive"])
    cpu = [round(cpu_seconds(p) - before[p], 2) for p in pids]
    errors = sum(failures(r).values())
    if r["latencyPercentiles"]["p50"] is None:
        raise SystemExit(f"{url}: no request succeeded: {r.get('errorDistribution')}")
    return {"conn_per_s": round(r["summary"]["requestsPerSec"], 1), "failed": errors,
            "p50_ms": ms(r["latencyPercentiles"]["p50"]), "cpu_s": cpu}


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, text=True)


def openssl_pki(d):
    """A CA and two leaf certificates (client, server) for the Envoy pair."""
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/ca.key")
    openssl("req", "-x509", "-new", "-key", f"{d}/ca.key", "-subj", "/CN=bench-ca", "-days", "2", "-out", f"{d}/ca.pem")
    for n in ("client", "server"):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/{n}.key")
        openssl("req", "-new", "-key", f"{d}/{n}.key", "-subj", f"/CN={n}", "-out", f"{d}/{n}.csr")
        with open(f"{d}/{n}.ext", "w") as f:
            f.write(f"subjectAltName=URI:spiffe://bench/ns/bench/sa/{n}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", f"{d}/{n}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{d}/{n}.pem", "-extfile", f"{d}/{n}.ext")


def tls_context(d, me, peer=None, indent=8):
    ctx = f"""
common_tls_context:
  tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
  tls_certificates: [{{certificate_chain: {{filename: {d}/{me}.pem}}, private_key: {{filename: {d}/{me}.key}}}}]
  validation_context:
    trusted_ca: {{filename: {d}/ca.pem}}"""
    if peer:
        ctx += f"""
    match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "spiffe://bench/ns/bench/sa/{peer}"}}}}]"""
    return ctx.replace("\n", "\n" + " " * indent)


def envoy(d, side, ports):
    """`side` client: http listener → h2+TLS cluster, tcp listener → TLS cluster.
    `side` server: TLS http listener → app, TLS tcp listener → app."""
    hcm = lambda cluster: f"""
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          codec_type: AUTO
          route_config: {{virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}}}}}]}}]}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"""
    tcp = lambda cluster: f"""
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: {cluster}"""
    down_tls = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true{tls_context(d, "server", indent=10)}"""
    up_tls = f"""
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext{tls_context(d, "client", "server")}"""
    h2 = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"""
    cluster = lambda name, port, extra="": f"""
  - name: {name}
    connect_timeout: 1s
    type: STATIC
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}{extra}"""
    listener = lambda name, port, chain: f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:{chain}"""
    if side == "client":
        listeners = listener("http", ports["c_http"], hcm("peer_http")) + listener("tcp", ports["c_tcp"], tcp("peer_tcp"))
        clusters = cluster("peer_http", ports["s_http"], h2 + up_tls) + cluster("peer_tcp", ports["s_tcp"], up_tls)
    else:
        listeners = listener("http", ports["s_http"], hcm("app") + down_tls) + listener("tcp", ports["s_tcp"], tcp("app") + down_tls)
        clusters = cluster("app", ports["app"])
    return f"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ports[side + '_admin']}}}}}}}\nstatic_resources:\n  listeners:{listeners}\n  clusters:{clusters}\n"


def weft_pair(procs, tmp, name, grpc, api, up, inbound):
    """A weft-proxy client and two server proxies in front of the same app: one for the HTTP
    Service, one for the TCP Service (an opaque connection must name the receiving proxy's own
    Service, and a Service with an HTTP port takes no opaque connections). Both run as service
    account NAME-server. The client has upstream listeners for both Services."""
    p = {k: free_port() for k in ("s_out", "s_admin", "t_out", "t_admin", "c_in", "c_out", "c_admin", "c_http", "c_tcp")}
    p["s_in"], p["t_in"] = inbound["http"], inbound["tcp"]
    servers = {}
    for kind, svc, pre in (("http", f"{name}-server", "s"), ("tcp", f"{name}-server-tcp", "t")):
        servers[kind] = procs.start(weft_proxy_cmd(tmp, grpc, api, f"{name}-server", "--service", svc,
                                    "--inbound-addr", f"127.0.0.1:{p[pre + '_in']}", "--outbound-addr", f"127.0.0.1:{p[pre + '_out']}",
                                    "--admin-addr", f"127.0.0.1:{p[pre + '_admin']}", "--app-addr", f"127.0.0.1:{up}"),
                                    f"{tmp}/{svc}.log", env=weft_proxy_env())
    client = procs.start(weft_proxy_cmd(tmp, grpc, api, f"{name}-client",
                          "--inbound-addr", f"127.0.0.1:{p['c_in']}", "--outbound-addr", f"127.0.0.1:{p['c_out']}",
                          "--admin-addr", f"127.0.0.1:{p['c_admin']}",
                          "--upstream", f"127.0.0.1:{p['c_http']}={name}-server.bench:8080",
                          "--upstream", f"127.0.0.1:{p['c_tcp']}={name}-server-tcp.bench:8080"),
                         f"{tmp}/{name}-client.log", env=weft_proxy_env())
    return p, client, servers


def service(name, proto, inbound):
    return f"""---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: {name}, namespace: bench}}
spec:
  ports: [{{port: 8080, protocol: {proto}}}]
  serviceAccount: {name.removesuffix('-tcp')}
  endpoints: [{{address: "127.0.0.1:{inbound}"}}]
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_args(ap, duration=30)
    ap.add_argument("--connect-requests", type=int, default=5000)
    args = ap.parse_args()
    require("oha", "envoy", "openssl")
    build(args)
    results = {}
    with run(prefix="weft-bench-mtls-", show_logs=True) as (tmp, procs):
        up = free_port()
        start_upstream(procs, tmp, up)
        grpc, api = free_port(), free_port()
        # Reserve the server inbound ports first: Services name them.
        inbound = {"mtls": {"http": free_port(), "tcp": free_port()}}
        with open(f"{tmp}/mesh.yaml", "w") as f:
            for name in ("mtls",):
                f.write(service(f"{name}-server", "HTTP", inbound[name]["http"]))
                f.write(service(f"{name}-server-tcp", "TCP", inbound[name]["tcp"]))
        start_serve(procs, tmp, f"{tmp}/mesh.yaml", grpc, api)
        for name in ("mtls",):
            p, client, servers = weft_pair(procs, tmp, name, grpc, api, up, inbound[name])
            for admin in ("s_admin", "t_admin", "c_admin"):
                wait_http(f"http://127.0.0.1:{p[admin]}/ready")
            # CPU is read from the client and the server proxy each load goes through.
            results[f"weft-{name}"] = {
                "steady": steady(f"http://127.0.0.1:{p['c_http']}/", [client.pid, servers["http"].pid], args),
                "connect": connect(f"http://127.0.0.1:{p['c_tcp']}/", [client.pid, servers["tcp"].pid], args),
            }

        openssl_pki(tmp)
        ports = {k: free_port() for k in ("c_http", "c_tcp", "s_http", "s_tcp", "client_admin", "server_admin")}
        ports["app"] = up
        esrv = start_envoy(procs, tmp, "envoy-server", envoy(tmp, "server", ports))
        ecli = start_envoy(procs, tmp, "envoy-client", envoy(tmp, "client", ports))
        wait_http(f"http://127.0.0.1:{ports['server_admin']}/ready")
        wait_http(f"http://127.0.0.1:{ports['client_admin']}/ready")
        pids = [ecli.pid, esrv.pid]
        results["envoy-mtls"] = {
            "steady": steady(f"http://127.0.0.1:{ports['c_http']}/", pids, args),
            "connect": connect(f"http://127.0.0.1:{ports['c_tcp']}/", pids, args),
        }

    print(json.dumps(results, indent=2))
    print()
    print(f"| setup | p50 ms | p99 ms | p99.9 ms | failed | CPU s (client, server) over {args.duration}s at {args.rate} rps | peak RSS MiB (client, server) | new connections/s | failed | CPU ms per new connection (client, server) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        s, c = r["steady"], r["connect"]
        per_conn = ", ".join(f"{cpu / args.connect_requests * 1000:.3f}" for cpu in c["cpu_s"])
        print(f"| {name} | {s['p50_ms']} | {s['p99_ms']} | {s['p99.9_ms']} | {s['failed']} | {', '.join(map(str, s['cpu_s']))} | {', '.join(map(str, s['rss_mib']))} | {c['conn_per_s']} | {c['failed']} | {per_conn} |")


if __name__ == "__main__":
    main()
