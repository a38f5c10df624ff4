# shellcheck shell=bash
# The node's Debian packages (containerd, runc, the CNI plugins, iptables, conntrack), installed
# when missing.

install_packages() {
    local missing=() tool
    for tool in containerd containerd-shim-runc-v2 runc iptables conntrack nsenter curl openssl objcopy; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [[ -x /usr/lib/cni/bridge ]] || missing+=(cni-plugins)
    ((${#missing[@]} == 0)) && return 0
    say "installing from Debian: ${missing[*]}"
    local packages=(containerd runc containernetworking-plugins iptables conntrack util-linux curl openssl binutils)
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${packages[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "${packages[@]}" >&2; } ||
        die "apt-get install failed for: ${missing[*]}"
}
