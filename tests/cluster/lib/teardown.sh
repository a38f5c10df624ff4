# shellcheck shell=bash
# Taking the cluster down, also after a crash or a killed run: every process it started (found
# by pid file and by the cluster's folders on their command lines), every container (found by
# the kubelet's cgroups), every mount under its folders and every pod network namespace, the
# node namespace with its veth, bridge and iptables rules, and its folders.

# stop_pids PID...: SIGTERM to all, then SIGKILL to those still there after 5 s.
stop_pids() {
    (($# > 0)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    local i pid left
    for ((i = 0; i < 50; i++)); do
        left=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left=1; done
        ((left)) || return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
}

# The processes whose command line names one of the cluster's folders: the components, the
# containerd shims, and anything a killed `up` left behind.
stray_pids() {
    pgrep -f -- "$CLUSTER_STATE/|$CLUSTER_RUN/" | grep -vx "$$" || true
}

# Pod processes live in the kubelet's cgroups (cgroupfs driver, cgroup v1 and v2).
kill_pods() {
    local procs
    for procs in $(find /sys/fs/cgroup -path '*kubepods*' -name cgroup.procs 2>/dev/null); do
        xargs -r kill -KILL <"$procs" 2>/dev/null || true
    done
}

remove_pod_cgroups() {
    # Deepest first: a cgroup folder can only go once its children have.
    find /sys/fs/cgroup -depth -type d -path '*kubepods*' -exec rmdir {} \; 2>/dev/null || true
}

# Mount points under the cluster's folders and the pod network namespaces, deepest first.
cluster_mounts() {
    awk '{print $5}' /proc/self/mountinfo |
        grep -E "^($CLUSTER_STATE|$CLUSTER_RUN|/run/netns/cni-|/var/run/netns/cni-)" |
        sort -r || true
}

unmount_all() {
    local m i
    for ((i = 0; i < 5; i++)); do
        local left=0
        while read -r m; do
            [[ -n $m ]] || continue
            left=1
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done < <(cluster_mounts)
        ((left)) || return 0
    done
}

teardown() {
    local name pid pids=()
    # The kubelet first, so that it restarts nothing while the rest goes.
    pid=$(pid_of kubelet) && stop_pids "$pid"
    for name in "${COMPONENTS[@]}"; do
        pid=$(pid_of "$name") && [[ -n $pid ]] && pids+=("$pid")
    done
    kill_pods
    # shellcheck disable=SC2046 # one pid per word
    stop_pids "${pids[@]}" $(stray_pids)
    kill_pods
    remove_pod_cgroups
    unmount_all

    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^cni-' || true); do
        ip netns delete "$ns" 2>/dev/null || true
    done
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$NODE_NS"; then
        ip netns delete "$NODE_NS"
    fi
    # A veth whose namespace went first leaves no host end behind, but one made by a run killed
    # half-way might.
    ip link delete "$HOST_IF" 2>/dev/null || true
    unmount_all
    rm -rf "$CLUSTER_STATE" "$CLUSTER_RUN"
    # containerd 1.6's shims put their sockets under /run/containerd/s whatever the config says;
    # `ip netns add` makes /run/netns a mount point of its own. Each goes only when empty, so
    # nothing of another user's is touched.
    rmdir /run/containerd/s /run/containerd 2>/dev/null || true
    if mountpoint -q /run/netns && [[ -z $(ls -A /run/netns) ]]; then
        umount /run/netns 2>/dev/null || true
    fi
}

# What `down` should have left nothing of; prints each remnant, fails if there is one.
check_gone() {
    local left=()
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$NODE_NS" && left+=("network namespace $NODE_NS")
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^cni-' || true); do
        left+=("pod network namespace $ns")
    done
    ip link show "$HOST_IF" >/dev/null 2>&1 && left+=("link $HOST_IF")
    local m
    while read -r m; do [[ -n $m ]] && left+=("mount $m"); done < <(cluster_mounts)
    local pid
    for pid in $(stray_pids); do left+=("process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"); done
    [[ -n $(find /sys/fs/cgroup -maxdepth 2 -name 'kubepods*' 2>/dev/null) ]] && left+=("kubepods cgroups")
    [[ -e $CLUSTER_STATE || -e $CLUSTER_RUN ]] && left+=("folder $CLUSTER_STATE or $CLUSTER_RUN")
    ((${#left[@]} == 0)) && return 0
    say "down left behind:"
    printf '  %s\n' "${left[@]}" >&2
    return 1
}
