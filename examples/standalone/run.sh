#!/usr/bin/env bash
# The README's standalone walk-through, as a script that runs it for real (tests/tests/process.rs
# runs it too, so the README cannot drift from what works): a control plane, two versions of
# `orders` each behind its own weft-proxy, a `frontend` proxy that calls them, a canary route
# applied through the API and then changed, all on 127.0.0.1.
#
# Usage: examples/standalone/run.sh        (after `cargo build --release`, or with WEFT_BIN_DIR)
# Env:   WEFT_BIN_DIR  folder with `weft` and `weft-proxy` (default target/release)
#        PORT_BASE     first of the ~20 ports it uses (default 17000)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(cd "${WEFT_BIN_DIR:-$here/../../target/release}" && pwd)"
base="${PORT_BASE:-17000}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { echo $((base + $1)); }
wait_ready() { # URL: until it answers 200, at most 20 s
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "not ready: $1" >&2
  return 1
}

# 1. The mesh: two Services for the two versions (each endpoint is that instance's proxy
#    inbound listener), and the Service callers address. Routes come later, through the API.
mkdir -p "$work/mesh"
cat > "$work/mesh/services.yaml" <<YAML
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders-v1, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: HTTP}]
  serviceAccount: orders
  endpoints: [{address: "127.0.0.1:$(port 1)"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders-v2, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: HTTP}]
  serviceAccount: orders
  endpoints: [{address: "127.0.0.1:$(port 2)"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports: [{name: http, port: 8080}]
YAML

# 2. The control plane. The `weft` commands below run in $work, where `weft serve` keeps
#    ./weft-data: they find its admin token there with no flag.
cd "$work"
WEFT_SERVER="http://127.0.0.1:$(port 0)"
export WEFT_SERVER
"$bin/weft" serve --config mesh/ --grpc-addr "127.0.0.1:$(port 10)" --api-addr "127.0.0.1:$(port 0)" \
  2> serve.log & pids+=($!)
wait_ready "$WEFT_SERVER/admin/ready"

# 3. The apps: each answers with its name.
for v in v1 v2; do
  mkdir -p "app-$v" && echo "orders-$v" > "app-$v/index.html"
done
python3 -m http.server --bind 127.0.0.1 --directory app-v1 "$(port 3)" > /dev/null 2>&1 & pids+=($!)
python3 -m http.server --bind 127.0.0.1 --directory app-v2 "$(port 4)" > /dev/null 2>&1 & pids+=($!)
wait_ready "http://127.0.0.1:$(port 3)/"
wait_ready "http://127.0.0.1:$(port 4)/"

# 4. A proxy beside each instance. Proxies on one host each need their own inbound, outbound
#    and admin addresses. The join token goes in the environment, not on the command line.
proxy() { # NAME SA INBOUND OUTBOUND ADMIN APP [more flags]
  local name=$1 sa=$2 in=$3 out=$4 admin=$5 app=$6; shift 6
  WEFT_PROXY_JOIN_TOKEN="$("$bin/weft" token create "shop/$sa")" \
    "$bin/weft-proxy" --control-plane "https://127.0.0.1:$(port 10)" \
    --trust-anchors weft-data/trust-anchors.pem --namespace shop --service-account "$sa" \
    --service "$name" --inbound-addr "127.0.0.1:$in" --outbound-addr "127.0.0.1:$out" \
    --admin-addr "127.0.0.1:$admin" --app-addr "127.0.0.1:$app" "$@" 2> "$name.log" & pids+=($!)
}
proxy orders-v1 orders "$(port 1)" "$(port 11)" "$(port 21)" "$(port 3)"
proxy orders-v2 orders "$(port 2)" "$(port 12)" "$(port 22)" "$(port 4)"
proxy frontend frontend "$(port 5)" "$(port 15)" "$(port 25)" "$(port 9)" \
  --upstream "127.0.0.1:$(port 6)=orders.shop:8080"
for admin in 21 22 25; do wait_ready "http://127.0.0.1:$(port $admin)/ready"; done

calls() { # N: how many of N calls each version answered
  for _ in $(seq 1 "$1"); do curl -fsS "http://127.0.0.1:$(port 6)/"; done | sort | uniq -c
}

# 5. A canary, applied through the API: 90% to v1, 10% to v2.
route() { # V1 V2
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders-canary, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: orders, port: 8080}]
  rules:
  - backendRefs:
    - {name: orders-v1, port: 8080, weight: $1}
    - {name: orders-v2, port: 8080, weight: $2}
YAML
}
pushed() { # WEIGHT: until the frontend's proxy has the route with that weight (milliseconds)
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$(port 25)/config" | grep -q "\"weight\": *$1\b" && return 0
    sleep 0.05
  done
  echo "the route did not reach the frontend's proxy" >&2
  return 1
}
route 90 10 | "$bin/weft" apply -f -
pushed 90
echo "90/10 canary, 100 calls:"
calls 100

# 6. Change it while it runs: 50/50.
route 50 50 | "$bin/weft" apply -f -
pushed 50
echo "50/50, 100 calls:"
calls 100

# 7. Through the outbound listener as an HTTP proxy (curl reads lower-case http_proxy).
echo "through http_proxy:"
http_proxy="http://127.0.0.1:$(port 15)" curl -fsS http://orders.shop:8080/

"$bin/weft" get proxies
