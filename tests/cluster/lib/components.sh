# shellcheck shell=bash
# Starting each component of the cluster with its configuration, and the wait that says it is
# up. The control plane (etcd, API server, controller manager, scheduler) runs in the host's
# network namespace, bound to loopback and the host end of the veth; the node (containerd, the
# kubelet, kube-proxy, CoreDNS, Jaeger) runs in the node's namespace.

start_etcd() {
    local bin; bin="$("$cluster_dir/build" --print-dir etcd)/etcd"
    mkdir -p "$CLUSTER_STATE/etcd"
    # --unsafe-no-fsync: a test cluster's data need not survive a power cut; fsyncs would make
    # every write wait for the disk.
    local p=$CLUSTER_PKI
    start etcd host "$bin" --name "$NODE_NAME" --data-dir "$CLUSTER_STATE/etcd" \
        --listen-client-urls "https://$ETCD_CLIENT" --advertise-client-urls "https://$ETCD_CLIENT" \
        --listen-peer-urls "https://$ETCD_PEER" --initial-advertise-peer-urls "https://$ETCD_PEER" \
        --initial-cluster "$NODE_NAME=https://$ETCD_PEER" \
        --cert-file "$p/etcd.crt" --key-file "$p/etcd.key" --trusted-ca-file "$p/ca.crt" --client-cert-auth \
        --peer-cert-file "$p/etcd.crt" --peer-key-file "$p/etcd.key" --peer-trusted-ca-file "$p/ca.crt" \
        --peer-client-cert-auth --unsafe-no-fsync --log-level warn
    wait_for "etcd health" 30 etcd curl -sf --cacert "$p/ca.crt" --cert "$p/apiserver-etcd-client.crt" \
        --key "$p/apiserver-etcd-client.key" "https://$ETCD_CLIENT/health"
}

start_apiserver() {
    local p=$CLUSTER_PKI
    start kube-apiserver host "$(k8s_bin kube-apiserver)" \
        --etcd-servers "https://$ETCD_CLIENT" --etcd-cafile "$p/ca.crt" \
        --etcd-certfile "$p/apiserver-etcd-client.crt" --etcd-keyfile "$p/apiserver-etcd-client.key" \
        --anonymous-auth=false \
        --bind-address "$HOST_IP" --secure-port "$API_PORT" --advertise-address "$HOST_IP" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --tls-cert-file "$p/kube-apiserver.crt" --tls-private-key-file "$p/kube-apiserver.key" \
        --client-ca-file "$p/ca.crt" \
        --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$p/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$p/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
        --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
        --kubelet-preferred-address-types InternalIP \
        --allow-privileged=true --profiling=false --v=1
    wait_for "the API server's /readyz" 60 kube-apiserver \
        curl -sf --cacert "$p/ca.crt" --cert "$p/admin.crt" --key "$p/admin.key" "$API_URL/readyz"
}

start_controller_manager() {
    local p=$CLUSTER_PKI
    start kube-controller-manager host "$(k8s_bin kube-controller-manager)" \
        --kubeconfig "$p/kube-controller-manager.kubeconfig" \
        --authentication-kubeconfig "$p/kube-controller-manager.kubeconfig" \
        --authorization-kubeconfig "$p/kube-controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false \
        --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
        --use-service-account-credentials=true \
        --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false --v=1
    wait_for "the controller manager's /healthz" 60 kube-controller-manager \
        curl -skf https://127.0.0.1:10257/healthz
}

start_scheduler() {
    local p=$CLUSTER_PKI
    start kube-scheduler host "$(k8s_bin kube-scheduler)" \
        --kubeconfig "$p/kube-scheduler.kubeconfig" \
        --authentication-kubeconfig "$p/kube-scheduler.kubeconfig" \
        --authorization-kubeconfig "$p/kube-scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false --v=1
    wait_for "the scheduler's /healthz" 60 kube-scheduler curl -skf https://127.0.0.1:10259/healthz
}

start_containerd() {
    local dir=$CLUSTER_STATE/containerd
    mkdir -p "$dir" "$CLUSTER_RUN/containerd"
    cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$CLUSTER_RUN/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/weft/pause:dev"
  enable_cdi = false
  # This kind of machine gives root no CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj; the CRI would ask for -998 for every sandbox and runc would fail
  # ("failed to update /proc/self/oom_score_adj: Permission denied"). Clamp instead.
  restrict_oom_score_adj = true
  # Pod network namespaces under the run folder, not /run/netns where anyone's are.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$CLUSTER_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_STATE/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
    start containerd node containerd --config "$dir/config.toml"
    wait_for "containerd's socket" 30 containerd ctr --address "$CONTAINERD_SOCK" version
}

start_kubelet() {
    local dir=$CLUSTER_STATE/kubelet p=$CLUSTER_PKI
    mkdir -p "$dir"
    cat >"$dir/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $p/kubelet-serving.crt
tlsPrivateKeyFile: $p/kubelet-serving.key
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
podLogsDir: $CLUSTER_STATE/pod-logs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: ""
failSwapOn: false
# The kubelet would lower its own oom_score_adj to -999; without CAP_SYS_RESOURCE it cannot.
oomScoreAdj: 0
# Images come from local archives, not a registry: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
serializeImagePulls: false
YAML
    make_cgroup_root
    save_host_state
    start kubelet node "$(k8s_bin kubelet)" --config "$dir/config.yaml" \
        --kubeconfig "$p/kubelet.kubeconfig" --root-dir "$dir/root" \
        --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --v=1
    wait_for "the kubelet's /healthz" 60 kubelet in_node curl -sf http://127.0.0.1:10248/healthz
}

start_kube_proxy() {
    local dir=$CLUSTER_STATE/kube-proxy
    mkdir -p "$dir"
    # conntrack limits are the machine's, not the node namespace's: leave them alone.
    cat >"$dir/config.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CLUSTER_PKI/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [primary]
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
    start kube-proxy node "$(k8s_bin kube-proxy)" --config "$dir/config.yaml" --v=1
    wait_for "kube-proxy's /healthz" 60 kube-proxy in_node curl -sf http://127.0.0.1:10256/healthz
}

# CoreDNS runs on the node, serving the kube-dns Service (bootstrap.sh points it here). It
# answers for cluster.local only and forwards nothing: there is nowhere to forward to.
start_coredns() {
    local dir=$CLUSTER_STATE/coredns
    mkdir -p "$dir"
    cat >"$dir/Corefile" <<COREFILE
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $CLUSTER_PKI/coredns.kubeconfig weft-cluster
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
COREFILE
    start coredns node "$("$cluster_dir/build" --print-dir coredns)/coredns" -conf "$dir/Corefile"
    wait_for "CoreDNS's /ready" 60 coredns in_node curl -sf http://127.0.0.1:18181/ready
}

# Jaeger v2 all-in-one with in-memory storage, on the node's address: pods send OTLP to it and
# tests read traces back from its query API.
start_jaeger() {
    local dir=$CLUSTER_STATE/jaeger
    mkdir -p "$dir"
    sed "s/@NODE_IP@/$NODE_IP/g" "$cluster_dir/jaeger.yaml" >"$dir/config.yaml"
    start jaeger node "$("$cluster_dir/build" --print-dir jaeger)/jaeger" --config "file:$dir/config.yaml"
    wait_for "Jaeger's health check" 60 jaeger curl -sf "http://$NODE_IP:13133/status"
}

# The kubelet's cgroupRoot must exist in every hierarchy (cgroup v1) or once (v2).
make_cgroup_root() {
    local h
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        mkdir -p "/sys/fs/cgroup/$CGROUP_ROOT"
        return
    fi
    for h in /sys/fs/cgroup/*/; do
        [[ -d $h && ! -L ${h%/} ]] || continue
        mkdir -p "$h$CGROUP_ROOT"
        # A new cpuset cgroup has no CPUs or memory nodes until given its parent's.
        if [[ -f $h/cpuset.cpus ]]; then
            cat "$h/cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
            cat "$h/cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
        fi
    done
}

# What the kubelet changes outside the cluster's folders, noted before it starts: the sysctls
# it sets and the fixed folders it makes. `down` restores both (restore_host_state).
save_host_state() {
    local key folder
    for key in "${KERNEL_TUNABLES[@]}"; do
        echo "$key=$(sysctl -n "$key")"
    done >"$CLUSTER_STATE/sysctls.saved"
    for folder in "${FIXED_FOLDERS[@]}"; do
        [[ -e $folder ]] || echo "$folder"
    done >"$CLUSTER_STATE/folders.created"
}
