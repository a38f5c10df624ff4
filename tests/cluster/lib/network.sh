# shellcheck shell=bash
# The node's network: the `weft-node` namespace, the veth pair that joins it to the host, the
# host's routes to the pod and Service ranges through it, and the CNI config that puts each pod
# on a bridge inside it. The node namespace has no default route: nothing it or a pod sends can
# leave the machine.

make_network() {
    [[ -d /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null ||
        die "the kernel has no br_netfilter (bridged pod traffic must pass kube-proxy's iptables rules)"
    ip netns add "$NODE_NS"
    ip link add "$HOST_IF" type veth peer name "$NODE_IF" netns "$NODE_NS"
    ip addr add "$HOST_IP/30" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    in_node ip link set lo up
    in_node ip addr add "$NODE_IP/30" dev "$NODE_IF"
    in_node ip link set "$NODE_IF" up
    # The host reaches pods and ClusterIPs through the node (the API server calls webhooks
    # behind Services; tests may reach a pod directly).
    ip route add "$POD_CIDR" via "$NODE_IP" dev "$HOST_IF"
    ip route add "$SERVICE_CIDR" via "$NODE_IP" dev "$HOST_IF"
    # Linux answers for an address on any interface: without this, a neighbour that routed
    # 10.250.0.1 to this machine would reach the API server. Only the node and the host itself
    # may; the chain is the cluster's own, and `down` removes it with its jump.
    iptables -w -N "$HOST_CHAIN"
    iptables -w -A "$HOST_CHAIN" -i lo -j RETURN
    iptables -w -A "$HOST_CHAIN" -i "$HOST_IF" -j RETURN
    iptables -w -A "$HOST_CHAIN" -j DROP
    iptables -w -I INPUT -d "$HOST_IP/30" -j "$HOST_CHAIN"
    # The node forwards between pods, the host and Service backends; bridged pod-to-pod traffic
    # goes through iptables so that kube-proxy's DNAT is undone on replies.
    in_node sysctl -qw net.ipv4.ip_forward=1
    in_node sysctl -qw net.bridge.bridge-nf-call-iptables=1
    in_node sysctl -qw net.bridge.bridge-nf-call-ip6tables=1

    mkdir -p "$CLUSTER_STATE/cni/net.d"
    cat >"$CLUSTER_STATE/cni/net.d/10-weft-cluster.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "weft-cluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
}
