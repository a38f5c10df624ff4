# shellcheck shell=bash
# Taking the cluster down, also after a crash or a killed run: every process it started (by pid
# file, and any leftover one of its programs that names its folders), every container (by the
# cluster's own cgroup), every mount under its folders (pod network namespaces among them),
# the node namespace with its veth, bridge and iptables rules, the host's guard chain, the
# sysctls and fixed folders the kubelet changed, and its folders. Nothing of anyone else's.

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

# The pid, if it is one of the cluster's programs (a recorded pid may have been reused).
is_program() {
    local exe name
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    name=$(basename "${exe% (deleted)}")
    printf '%s\n' "${PROGRAMS[@]}" | grep -qx -- "$name"
}

# Processes of the cluster's programs whose command line names one of its folders: the
# components and containerd's shims, also those a killed `up` left behind. A `tail -f` of a
# log is not one.
stray_pids() {
    local pid
    for pid in $(pgrep -f -- "$CLUSTER_STATE/|$CLUSTER_RUN/" || true); do
        is_program "$pid" && echo "$pid"
    done
}

# The cluster's cgroups: its root in every hierarchy (the kubelet's cgroupRoot).
cluster_cgroups() {
    find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d -name "$CGROUP_ROOT" 2>/dev/null
}

# Pod processes live under the kubelet's cgroupRoot.
kill_pods() {
    local root procs
    for root in $(cluster_cgroups); do
        for procs in $(find "$root" -name cgroup.procs 2>/dev/null); do
            xargs -r kill -KILL <"$procs" 2>/dev/null || true
        done
    done
}

# Deepest first, as a cgroup folder goes only once its children have; a killed process may
# take a moment to leave its cgroup, so this retries for up to 5 s.
remove_cgroups() {
    local i
    for ((i = 0; i < 50; i++)); do
        local root left=0
        for root in $(cluster_cgroups); do
            find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null || left=1
        done
        [[ -z $(cluster_cgroups) ]] && return 0
        kill_pods
        sleep 0.1
    done
}

# Mount points under the cluster's folders, deepest first.
cluster_mounts() {
    awk '{print $5}' /proc/self/mountinfo |
        grep -E "^($CLUSTER_STATE|$CLUSTER_RUN)(/|$)" | sort -r || true
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

# The sysctls and fixed folders `up` noted before the kubelet started (save_host_state).
restore_host_state() {
    local line folder
    if [[ -f $CLUSTER_STATE/sysctls.saved ]]; then
        while read -r line; do
            [[ -n $line ]] && sysctl -qw "$line" || true
        done <"$CLUSTER_STATE/sysctls.saved"
    fi
    # The kubelet links every container's log into /var/log/containers, whatever podLogsDir says.
    find /var/log/containers -maxdepth 1 -lname "$CLUSTER_STATE/*" -delete 2>/dev/null || true
    if [[ -f $CLUSTER_STATE/folders.created ]]; then
        while read -r folder; do
            [[ -n $folder ]] && rm -rf -- "$folder"
        done <"$CLUSTER_STATE/folders.created"
    fi
}

remove_host_chain() {
    command -v iptables >/dev/null || return 0
    while iptables -w -D INPUT -d "$HOST_IP/30" -j "$HOST_CHAIN" 2>/dev/null; do :; done
    iptables -w -F "$HOST_CHAIN" 2>/dev/null || true
    iptables -w -X "$HOST_CHAIN" 2>/dev/null || true
}

node_ns_exists() {
    local list
    list=$(ip netns list 2>/dev/null) || return 1
    awk '{print $1}' <<<"$list" | grep -qx "$NODE_NS"
}

teardown() {
    local name pid pids=()
    # The kubelet first, so that it restarts nothing while the rest goes.
    pid=$(pid_of kubelet) && is_program "$pid" && stop_pids "$pid"
    for name in "${COMPONENTS[@]}"; do
        pid=$(pid_of "$name") && is_program "$pid" && pids+=("$pid")
    done
    kill_pods
    # shellcheck disable=SC2046 # one pid per word
    stop_pids "${pids[@]}" $(stray_pids)
    remove_cgroups
    unmount_all
    node_ns_exists && ip netns delete "$NODE_NS"
    # A veth whose namespace went first leaves no host end behind, but one made by a run killed
    # half-way might.
    ip link delete "$HOST_IF" 2>/dev/null || true
    remove_host_chain
    unmount_all
    restore_host_state
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
    node_ns_exists && left+=("network namespace $NODE_NS")
    ip link show "$HOST_IF" >/dev/null 2>&1 && left+=("link $HOST_IF")
    iptables -w -S "$HOST_CHAIN" >/dev/null 2>&1 && left+=("iptables chain $HOST_CHAIN")
    local m
    while read -r m; do [[ -n $m ]] && left+=("mount $m"); done < <(cluster_mounts)
    local pid
    for pid in $(stray_pids); do left+=("process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"); done
    [[ -n $(cluster_cgroups) ]] && left+=("cgroups $(cluster_cgroups | tr '\n' ' ')")
    [[ -e $CLUSTER_STATE || -e $CLUSTER_RUN ]] && left+=("folder $CLUSTER_STATE or $CLUSTER_RUN")
    local link
    for link in $(find /var/log/containers -maxdepth 1 -lname "$CLUSTER_STATE/*" 2>/dev/null); do
        left+=("log link $link")
    done
    ((${#left[@]} == 0)) && return 0
    say "down left behind:"
    printf '  %s\n' "${left[@]}" >&2
    return 1
}
