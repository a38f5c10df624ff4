# shellcheck shell=bash
# The test cluster's names, addresses and folders, and the helpers every part of
# `scripts/cluster` uses: starting a component in the background, waiting for a condition with
# a bound, failing with the component's log.
#
# Addresses exist only on this machine: the node is a network namespace of its own
# (`weft-node`), joined to the host by one veth pair; pods and Services use ranges that are
# routed only into that namespace, which has no default route, so no packet can leave.

CLUSTER_STATE=${WEFT_CLUSTER_STATE:-/var/lib/weft-cluster}
# `down` removes the state folder whole: it must be one of the cluster's own.
case $CLUSTER_STATE in
    /*/weft-cluster*) ;;
    *) echo "cluster: WEFT_CLUSTER_STATE must be an absolute path ending in a folder named weft-cluster…, not $CLUSTER_STATE" >&2; exit 64 ;;
esac
CLUSTER_RUN=/run/weft-cluster
CLUSTER_PKI=$CLUSTER_STATE/pki
CLUSTER_LOGS=$CLUSTER_STATE/logs
CLUSTER_KUBECONFIG=$CLUSTER_STATE/kubeconfig
# Outside both folders, so that `down` removing them cannot pull it from under a waiting `up`.
CLUSTER_LOCK=/run/weft-cluster.lock

NODE_NAME=weft-node
NODE_NS=weft-node
HOST_IF=weft-host
NODE_IF=weft-node0
HOST_IP=10.250.0.1
NODE_IP=10.250.0.2
POD_CIDR=10.251.0.0/16
NODE_POD_CIDR=10.251.0.0/24
SERVICE_CIDR=10.252.0.0/16
KUBERNETES_SERVICE_IP=10.252.0.1
DNS_IP=10.252.0.10
CNI_BRIDGE=weft-cni0
# The host's iptables chain that keeps the host end of the veth to the node and the host itself.
HOST_CHAIN=WEFT-CLUSTER-HOST

API_PORT=6443
API_URL=https://$HOST_IP:$API_PORT
ETCD_CLIENT=127.0.0.1:23790
ETCD_PEER=127.0.0.1:23800
CONTAINERD_SOCK=$CLUSTER_RUN/containerd/containerd.sock

# Every component, in start order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns jaeger)
# The programs the cluster runs: `down` stops a leftover process only if it is one of these.
PROGRAMS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd containerd-shim-runc-v2 kubelet kube-proxy coredns jaeger)

# The cgroup (in every hierarchy) under which the kubelet puts all pods, so that `down` finds
# this cluster's containers and nobody else's.
CGROUP_ROOT=weft-cluster

# The machine-wide sysctls the kubelet sets at start (vm.overcommit_memory, kernel.panic, ...):
# `up` saves them and `down` puts them back.
KERNEL_TUNABLES=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# Folders the kubelet and containerd create at fixed paths, whatever their config says; `up`
# notes which of them it created, so that `down` removes those and no others.
FIXED_FOLDERS=(/var/lib/kubelet /var/log/containers)

cluster_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo_dir="$(cd "$cluster_dir/../.." && pwd)"

say() { echo "cluster: $*" >&2; }

# Prints the last lines of a component's log, for a failure message.
log_tail() {
    local log=$CLUSTER_LOGS/$1.log
    [[ -f $log ]] || return 0
    echo "--- last 40 lines of $log" >&2
    tail -n 40 "$log" >&2
    echo "---" >&2
}

die() {
    say "$1"
    [[ -n ${2:-} ]] && log_tail "$2"
    exit 1
}

pid_of() { [[ -f $CLUSTER_RUN/$1.pid ]] && cat "$CLUSTER_RUN/$1.pid"; }

# A component is alive while its process is there and not a zombie (killed, not yet reaped).
alive() {
    local pid state
    pid=$(pid_of "$1") || return 1
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    [[ -n $state && $state != Z* ]]
}

# start NAME host|node COMMAND...: runs COMMAND in its own session, in the host's network
# namespace or the node's, logging to logs/NAME.log, its pid in the run folder.
start() {
    local name=$1 where=$2; shift 2
    if [[ $where == node ]]; then
        # nsenter --net only: the mount namespace stays the host's, so the kubelet's volume
        # mounts and containerd's rootfs mounts are the same for both (and `down` finds them).
        set -- nsenter "--net=/run/netns/$NODE_NS" -- "$@"
    fi
    # 9>&-: the components must not inherit the lock `up` holds (see scripts/cluster).
    setsid "$@" >>"$CLUSTER_LOGS/$name.log" 2>&1 </dev/null 9>&- &
    echo $! >"$CLUSTER_RUN/$name.pid"
}

# wait_for WHAT SECONDS COMPONENT COMMAND...: polls COMMAND until it succeeds; fails naming
# COMPONENT with its log tail when COMPONENT exits or the bound passes.
wait_for() {
    local what=$1 bound=$2 component=$3; shift 3
    local deadline=$((SECONDS + bound))
    until "$@" >/dev/null 2>&1; do
        alive "$component" || die "$component exited while waiting for $what" "$component"
        ((SECONDS < deadline)) || die "$what: not within ${bound}s (component: $component)" "$component"
        sleep 0.2
    done
}

in_node() { nsenter "--net=/run/netns/$NODE_NS" -- "$@"; }

# Where the Kubernetes binaries are, asked of the build script once per command (it hashes
# go.sum and asks go for its version), not on every kubectl call of a polling wait. Empty when
# there is no Go: `down` needs none.
K8S_BIN_DIR=$("$cluster_dir/build" --print-dir kubernetes 2>/dev/null) || K8S_BIN_DIR=
k8s_bin() {
    [[ -n $K8S_BIN_DIR ]] || die "no Kubernetes binaries: tests/cluster/build needs Go"
    echo "$K8S_BIN_DIR/$1"
}

kubectl_admin() { "$(k8s_bin kubectl)" --kubeconfig "$CLUSTER_KUBECONFIG" "$@"; }

need_root() {
    [[ $EUID -eq 0 ]] || die "the test cluster needs root (network namespaces, mounts, iptables); run as root"
}
