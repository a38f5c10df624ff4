# shellcheck shell=bash
# The test cluster's PKI, made afresh by every `up`: one CA, a serving certificate for the API
# server and the kubelet, a client certificate per component (its user and groups are what RBAC
# and the Node authorizer see), the service-account signing key, and a kubeconfig per client.
# ECDSA P-256 throughout: quick to generate.

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# issue NAME SUBJECT KEY_USAGE [SAN...]: a certificate signed by the cluster CA, valid a week.
issue() {
    local name=$1 subject=$2 usage=$3; shift 3
    local ext=$CLUSTER_PKI/$name.ext
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$usage"
        if (($# > 0)); then
            local IFS=,
            echo "subjectAltName=$*"
        fi
    } >"$ext"
    new_key "$CLUSTER_PKI/$name.key"
    openssl req -new -key "$CLUSTER_PKI/$name.key" -subj "$subject" -out "$CLUSTER_PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$CLUSTER_PKI/$name.csr" -CA "$CLUSTER_PKI/ca.crt" -CAkey "$CLUSTER_PKI/ca.key" \
        -CAcreateserial -days 7 -extfile "$ext" -out "$CLUSTER_PKI/$name.crt" 2>/dev/null
    rm -f "$CLUSTER_PKI/$name.csr" "$ext"
}

# kubeconfig NAME: a kubeconfig for the client certificate NAME, against the API server.
kubeconfig() {
    local name=$1 out=${2:-$CLUSTER_PKI/$1.kubeconfig}
    cat >"$out" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: weft-cluster
  cluster:
    server: $API_URL
    certificate-authority-data: $(base64 -w0 "$CLUSTER_PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$CLUSTER_PKI/$name.crt")
    client-key-data: $(base64 -w0 "$CLUSTER_PKI/$name.key")
contexts:
- name: weft-cluster
  context:
    cluster: weft-cluster
    user: $name
current-context: weft-cluster
KUBECONFIG
    chmod 600 "$out"
}

make_pki() {
    # Keys and kubeconfigs are never readable by anyone but root, not even for a moment.
    local umask_was; umask_was=$(umask)
    umask 077
    mkdir -p "$CLUSTER_PKI"
    new_key "$CLUSTER_PKI/ca.key"
    openssl req -x509 -new -key "$CLUSTER_PKI/ca.key" -subj "/CN=weft-cluster-ca" -days 7 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$CLUSTER_PKI/ca.crt" 2>/dev/null

    issue kube-apiserver "/CN=kube-apiserver" serverAuth \
        "IP:$HOST_IP" "IP:$KUBERNETES_SERVICE_IP" IP:127.0.0.1 DNS:localhost DNS:kubernetes \
        DNS:kubernetes.default DNS:kubernetes.default.svc DNS:kubernetes.default.svc.cluster.local
    issue kubelet-serving "/CN=system:node:$NODE_NAME/O=system:nodes" serverAuth "IP:$NODE_IP" "DNS:$NODE_NAME"
    # etcd takes only clients (and peers) with a certificate of this CA: the API server alone.
    issue etcd "/CN=etcd" serverAuth,clientAuth IP:127.0.0.1
    issue apiserver-etcd-client "/CN=kube-apiserver-etcd-client" clientAuth

    # Clients. The API server reaches kubelets as a user bound to system:kubelet-api-admin
    # (bootstrap.sh), not as a member of system:masters.
    issue apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" clientAuth
    issue admin "/CN=weft-cluster-admin/O=system:masters" clientAuth
    issue kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
    issue kube-scheduler "/CN=system:kube-scheduler" clientAuth
    issue kubelet "/CN=system:node:$NODE_NAME/O=system:nodes" clientAuth
    issue kube-proxy "/CN=system:kube-proxy" clientAuth
    issue coredns "/CN=system:coredns" clientAuth

    # The service-account issuer's key: TokenRequest signs with it, TokenReview checks with it.
    new_key "$CLUSTER_PKI/sa.key"
    openssl pkey -in "$CLUSTER_PKI/sa.key" -pubout -out "$CLUSTER_PKI/sa.pub" 2>/dev/null

    local c
    for c in kube-controller-manager kube-scheduler kubelet kube-proxy coredns; do kubeconfig "$c"; done
    kubeconfig admin "$CLUSTER_KUBECONFIG"
    umask "$umask_was"
}
