#!/usr/bin/env bash
# A lab of several machines on one: network namespaces client1
# (198.51.100.11), client2 (198.51.100.12), ... clientN (198.51.100.1N), the
# agent hosts, each with its own Podman storage, network configuration and
# address allocations (a mount namespace of its own) and a running
# tern-agent; client0 (198.51.100.10), a plain machine standing for the
# applications' clients. All sit on a bridge tern0 (198.51.100.1, the root
# namespace, where `tern` runs). Every agent host has a Podman network
# `lan`, a macvlan over its eth0: containers on it are reachable from
# client0 and the other hosts wherever they run.
#
#   scripts/lab.sh up [--hosts N]     create with N agent hosts (default: as many as the lab
#                                     has while up, else 2; at most 8). Idempotent: restarts
#                                     agents, keeps containers; a smaller N removes the hosts
#                                     above it, their containers included
#   scripts/lab.sh down               stop agents, remove containers, storage, namespaces (every host)
#   scripts/lab.sh status             namespaces, agents, containers
#   scripts/lab.sh exec HOST CMD...   a command on a lab host (client0, client1, ...)
#   scripts/lab.sh podman HOST ARGS   podman on an agent host
#   scripts/lab.sh agent-start|agent-stop|agent-restart HOST
#
# Environment: TERN_BIN_DIR (default target/release), TERN_NO_BUILD=1 (skip
# cargo build), LAB_IMAGE_HOSTS (hosts that get the test image; default
# client1: tern ships it to others), LAB_FACTS_OVERRIDE_<HOST> (TOML put under
# [facts_override]) and LAB_AGENT_EXTRA_<HOST> (TOML appended to the agent's
# config; tests inject faults with it).
# The host count is recorded in /run/tern-lab/hosts while the lab is up.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$TERN_REPO"

BIN=${TERN_BIN_DIR:-$TERN_REPO/target/release}
die() { echo "lab.sh: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "run as root: the lab creates network namespaces"; }
upper() { echo "$1" | tr '[:lower:]-' '[:upper:]_'; }

agent_dir() { echo "$LAB_STATE/hosts/$1"; }

write_agent_config() {
    local h=$1 dir ip
    dir=$(agent_dir "$h"); ip=$(lab_ip "$h")
    mkdir -p "$dir"
    local over extra
    over=$(eval "echo \"\${LAB_FACTS_OVERRIDE_$(upper "$h"):-}\"")
    extra=$(eval "echo \"\${LAB_AGENT_EXTRA_$(upper "$h"):-}\"")
    {
        echo "# Written by scripts/lab.sh."
        echo "name = \"$h\""
        echo "listen = \"$ip:$LAB_PORT\""
        echo "state_dir = \"$LAB_VAR/$h/agent\""
        echo "[tls]"
        echo "ca = \"$LAB_STATE/pki/ca.pem\""
        echo "cert = \"$LAB_STATE/pki/$h.pem\""
        echo "key = \"$LAB_STATE/pki/$h.key\""
        echo "[podman]"
        echo "program = \"podman\""
        printf 'args = ['
        local first=1
        for a in $(lab_podman_args "$h"); do
            [ $first = 1 ] || printf ', '
            printf '"%s"' "$a"; first=0
        done
        echo ']'
        if [ -n "$over" ]; then echo "[facts_override]"; printf '%b\n' "$over"; fi
        if [ -n "$extra" ]; then printf '%b\n' "$extra"; fi
    } > "$dir/agent.toml"
}

agent_pid() {
    local f
    f="$(agent_dir "$1")/agent.pid"
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

agent_stop() {
    local pid
    if pid=$(agent_pid "$1"); then
        kill -9 "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$(agent_dir "$1")/agent.pid"
}

agent_start() {
    local h=$1 dir
    dir=$(agent_dir "$h")
    [ -x "$BIN/tern-agent" ] || die "$BIN/tern-agent is missing: build with cargo build --release"
    agent_stop "$h"
    write_agent_config "$h"
    mkdir -p "$LAB_VAR/$h/agent"
    echo "--- agent start $(date -Is)" >> "$dir/agent.log"
    setsid nsenter --net="/run/netns/$h" --mount="$(lab_mntns "$h")" --wd="$TERN_REPO" env RUST_LOG="${RUST_LOG:-info}" \
        "$BIN/tern-agent" --config "$dir/agent.toml" >> "$dir/agent.log" 2>&1 < /dev/null &
    echo $! > "$dir/agent.pid"
    for _ in $(seq 300); do
        if lab_nsenter "$h" ss -Hlun "sport = :$LAB_PORT" 2>/dev/null | grep -q .; then return 0; fi
        kill -0 "$(cat "$dir/agent.pid")" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$dir/agent.log" >&2
    die "the agent on $h did not start (log: $dir/agent.log)"
}

net_up() {
    if ! ip link show "$LAB_BRIDGE" >/dev/null 2>&1; then
        # The lab's subnet must not be one this machine already routes
        # elsewhere (CI machines sit in 192.0.2.0/24, for one).
        local clash
        clash=$(ip -4 route show | awk -v n="${LAB_BRIDGE_IP%.*}." 'index($1, n) == 1 {print}')
        [ -z "$clash" ] || die "the lab's subnet ${LAB_BRIDGE_IP%.*}.0/24 is already in use here ($clash)"

        ip link add "$LAB_BRIDGE" type bridge
        ip addr add "$LAB_BRIDGE_IP/24" dev "$LAB_BRIDGE"
    fi
    ip link set "$LAB_BRIDGE" up
    for h in "$LAB_CLIENT" "${LAB_HOSTS[@]}"; do
        [ -e "/run/netns/$h" ] || ip netns add "$h"
        if ! ip link show "veth-$h" >/dev/null 2>&1; then
            ip link add "veth-$h" type veth peer name eth0 netns "$h"
            ip link set "veth-$h" master "$LAB_BRIDGE" up
            nsenter --net="/run/netns/$h" ip addr add "$(lab_ip "$h")/24" dev eth0
        fi
        nsenter --net="/run/netns/$h" ip link set lo up
        nsenter --net="/run/netns/$h" ip link set eth0 up
    done
    # A host removed and made again has a new MAC address: the others'
    # neighbour entries for its address (failed while it was gone) would
    # keep it unreachable for a while.
    ip neigh flush dev "$LAB_BRIDGE" 2>/dev/null || true
    for h in "$LAB_CLIENT" "${LAB_HOSTS[@]}"; do ip -n "$h" neigh flush dev eth0 2>/dev/null || true; done
    for h in "${LAB_HOSTS[@]}"; do
        mkdir -p "$LAB_VAR/$h/storage" "$LAB_VAR/$h/agent" "$LAB_RUN/$h/runroot" "$LAB_RUN/$h/libpod"
        mntns_up "$h"
    done
}

# An agent host's own mount namespace, kept in a file as `ip netns` keeps
# network namespaces. Inside it, Podman's folders at their usual paths are
# the host's own: storage (/var/lib/containers/storage), run root
# (/run/containers/storage), tmp dir (/run/libpod), network definitions,
# netavark's address allocations, runc's state. Every host thus has what a
# separate machine has, at the paths a real one uses: Podman records some
# of them in a container's configuration (its conmon pid file, its
# volumes), which a migrated container takes to the other host. Mounts
# made in the root namespace still show inside (slave propagation); none
# go the other way.
mntns_up() {
    local h=$1 ns
    ns=$(lab_mntns "$h")
    [ -e "$ns" ] && nsenter --mount="$ns" true 2>/dev/null && return 0
    mkdir -p "$LAB_RUN/ns"
    # unshare keeps a namespace only in a file on a private mount.
    if ! mountpoint -q "$LAB_RUN/ns"; then
        mount --bind "$LAB_RUN/ns" "$LAB_RUN/ns"
        mount --make-private "$LAB_RUN/ns"
    fi
    touch "$ns"
    mkdir -p "$LAB_VAR/$h/networks" "$LAB_RUN/$h/networks" "$LAB_RUN/$h/runc" "$LAB_RUN/$h/crun" \
        /etc/containers/networks /run/containers/networks /run/runc /run/crun \
        /var/lib/containers/storage /run/containers/storage /run/libpod
    unshare --mount="$ns" --propagation slave sh -c "
        mount --bind '$LAB_VAR/$h/storage' /var/lib/containers/storage &&
        mount --bind '$LAB_RUN/$h/runroot' /run/containers/storage &&
        mount --bind '$LAB_RUN/$h/libpod' /run/libpod &&
        mount --bind '$LAB_VAR/$h/networks' /etc/containers/networks &&
        mount --bind '$LAB_RUN/$h/networks' /run/containers/networks &&
        mount --bind '$LAB_RUN/$h/runc' /run/runc &&
        mount --bind '$LAB_RUN/$h/crun' /run/crun" ||
        die "could not make $h's mount namespace"
}

mntns_down() {
    local ns
    ns=$(lab_mntns "$1")
    [ -e "$ns" ] && umount "$ns" 2>/dev/null
    rm -f "$ns"
}

# The `lan` network on an agent host: a macvlan over eth0 in the lab's
# subnet, with the host's own range of addresses.
lan_up() {
    local h=$1
    lab_podman "$h" network exists "$LAB_LAN" && return 0
    lab_podman "$h" network create --driver macvlan --opt parent=eth0 --subnet "$LAB_LAN_SUBNET" \
        --gateway "$LAB_BRIDGE_IP" --ip-range "$(lab_lan_range "$h")" --disable-dns "$LAB_LAN" >/dev/null
}

# Every agent host the machine holds anything of (a namespace, a mount
# namespace, an agent's pid file), whatever the recorded count says, and
# those of the recorded count.
present_hosts() {
    local i h out=()
    for ((i = 1; i <= LAB_MAX_HOSTS; i++)); do
        h=client$i
        if lab_is_agent_host "$h" || [ -e "/run/netns/$h" ] || [ -e "$(lab_mntns "$h")" ] || [ -e "$(agent_dir "$h")/agent.pid" ]; then
            out+=("$h")
        fi
    done
    echo "${out[*]}"
}

# Removes one agent host (when `up --hosts N` shrinks the lab): its agent,
# containers, mount and network namespaces, storage and agent folder. Its
# certificate stays in the lab's PKI.
host_down() {
    local h=$1
    agent_stop "$h"
    if [ -e "/run/netns/$h" ] && [ -e "$(lab_mntns "$h")" ]; then
        # Not lab_podman: $h is no longer among LAB_HOSTS, and podman
        # outside its mount namespace would be the machine's own.
        nsenter --net="/run/netns/$h" --mount="$(lab_mntns "$h")" podman rm -af -t 0 >/dev/null 2>&1 || true
    fi
    [ -e "/run/netns/$h" ] && { ip netns pids "$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; }
    mntns_down "$h"
    grep -E " ($LAB_VAR|$LAB_RUN)/$h/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    ip link del "veth-$h" 2>/dev/null || true
    [ -e "/run/netns/$h" ] && ip netns del "$h"
    rm -rf "${LAB_VAR:?}/$h" "${LAB_RUN:?}/$h" "$(agent_dir "$h")"
    echo "removed lab host $h"
}

cmd_up() {
    need_root
    local want="" h
    while [ $# -gt 0 ]; do
        case "$1" in
            --hosts) [ $# -ge 2 ] || die "--hosts needs a number"; want=$2; shift 2 ;;
            --hosts=*) want=${1#--hosts=}; shift ;;
            *) die "up: unknown argument $1 (usage: lab.sh up [--hosts N])" ;;
        esac
    done
    # Without --hosts, a lab that is up keeps its hosts (lib.sh read the
    # count it recorded); a new one gets the default.
    if [ -n "$want" ]; then lab_set_hosts "$want" || exit 2; fi
    # Hosts above the count asked for go first, containers and all.
    for h in $(present_hosts); do
        lab_is_agent_host "$h" || host_down "$h"
    done
    command -v podman >/dev/null && command -v criu >/dev/null || die "podman or criu missing: run scripts/install-deps.sh"
    if [ "${TERN_NO_BUILD:-}" != 1 ]; then
        # The agent with its test faults (-p: `tern-agent/...` from the
        # workspace would name the agent's dev-dependency on itself).
        cargo build --release --bins --workspace --exclude tern-agent
        cargo build --release -p tern-agent --features fault-injection
    fi
    net_up
    mkdir -p "$LAB_RUN"
    echo "${#LAB_HOSTS[@]}" > "$LAB_RUN/hosts"
    for h in "${LAB_HOSTS[@]}"; do lan_up "$h"; done
    for h in ${LAB_IMAGE_HOSTS:-client1}; do
        lab_podman "$h" image exists "$LAB_IMAGE" || lab_podman "$h" import "$LAB_IMAGE_TAR" "$LAB_IMAGE" >/dev/null
    done
    # No PKI yet, or one made before certificates carried roles (it has no
    # issued.json, and agents refuse its certificates): made afresh.
    if [ ! -f "$LAB_STATE/pki/issued.json" ]; then
        local args=()
        for h in "${LAB_HOSTS[@]}"; do args+=(--host "$h=$(lab_ip "$h")"); done
        "$BIN/tern" pki init --force --out "$LAB_STATE/pki" "${args[@]}" >/dev/null
    fi
    # Hosts added to a lab whose PKI exists: a certificate each from its CA.
    for h in "${LAB_HOSTS[@]}"; do
        [ -f "$LAB_STATE/pki/$h.pem" ] || "$BIN/tern" pki issue "$h" --dir "$LAB_STATE/pki" --address "$(lab_ip "$h")" >/dev/null
        # Each host's evacuator certificate, and an inventory holding it
        # (hosts/H/evacuate.toml), for agents set to evacuate their host
        # when they stop ([self_evacuation], agent/src/self_evacuation.rs).
        [ -f "$LAB_STATE/pki/$h.evacuator.pem" ] || "$BIN/tern" pki issue "$h" --evacuator --dir "$LAB_STATE/pki" >/dev/null
    done
    inventory_hosts() {
        for h in "${LAB_HOSTS[@]}"; do
            echo; echo "[[hosts]]"; echo "name = \"$h\""; echo "address = \"$(lab_ip "$h"):$LAB_PORT\""
        done
    }
    for h in "${LAB_HOSTS[@]}"; do
        mkdir -p "$(agent_dir "$h")"
        {
            echo "# Written by scripts/lab.sh: $h's evacuator certificate, for its agent's [self_evacuation]."
            echo "[tls]"
            echo "ca = \"$LAB_STATE/pki/ca.pem\""
            echo "cert = \"$LAB_STATE/pki/$h.evacuator.pem\""
            echo "key = \"$LAB_STATE/pki/$h.evacuator.key\""
            inventory_hosts
        } > "$(agent_dir "$h")/evacuate.toml"
    done
    {
        echo "# Written by scripts/lab.sh: the lab's hosts, for tern run from the repository root."
        echo "[tls]"
        echo "ca = \"$LAB_STATE/pki/ca.pem\""
        echo "cert = \"$LAB_STATE/pki/coordinator.pem\""
        echo "key = \"$LAB_STATE/pki/coordinator.key\""
        inventory_hosts
    } > "$LAB_STATE/inventory.toml"
    for h in "${LAB_HOSTS[@]}"; do agent_start "$h"; done
    echo "lab is up: agents on ${LAB_HOSTS[*]}, clients on $LAB_CLIENT; try: $BIN/tern hosts"
}

cmd_down() {
    need_root
    # Every host there is, whatever the recorded count says.
    # shellcheck disable=SC2207
    LAB_HOSTS=($(present_hosts))
    for h in "${LAB_HOSTS[@]}"; do
        agent_stop "$h"
        if [ -e "/run/netns/$h" ] && [ -e "$(lab_mntns "$h")" ]; then
            lab_podman "$h" rm -af -t 0 >/dev/null 2>&1 || true
        fi
    done
    for h in "$LAB_CLIENT" "${LAB_HOSTS[@]}"; do
        [ -e "/run/netns/$h" ] && { ip netns pids "$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; }
    done
    # The hosts' mount namespaces (and every mount inside them) go with
    # their files; leftover overlay and shm mounts of the lab's storage made
    # from the root namespace go too.
    for h in "${LAB_HOSTS[@]}"; do mntns_down "$h"; done
    mountpoint -q "$LAB_RUN/ns" && umount "$LAB_RUN/ns"
    grep -E " ($LAB_VAR|$LAB_RUN)/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    for h in "$LAB_CLIENT" "${LAB_HOSTS[@]}"; do
        ip link del "veth-$h" 2>/dev/null || true
        [ -e "/run/netns/$h" ] && ip netns del "$h"
    done
    ip link del "$LAB_BRIDGE" 2>/dev/null || true
    for d in "$LAB_VAR" "$LAB_RUN"; do
        # A mount point (the soft-dirty VM mounts a tmpfs there) is emptied.
        if mountpoint -q "$d"; then find "$d" -mindepth 1 -delete; else rm -rf "$d"; fi
    done
    rm -rf "$LAB_STATE/hosts" "$LAB_STATE/pki" "$LAB_STATE/inventory.toml"
    echo "lab is down"
}

cmd_status() {
    if [ -e "/run/netns/$LAB_CLIENT" ]; then echo "$LAB_CLIENT: up (clients, no agent)"; else echo "$LAB_CLIENT: down"; fi
    for h in "${LAB_HOSTS[@]}"; do
        if [ ! -e "/run/netns/$h" ]; then echo "$h: down"; continue; fi
        local pid
        if pid=$(agent_pid "$h"); then echo "$h: up, agent pid $pid"; else echo "$h: up, agent NOT running"; fi
        lab_podman "$h" ps -a --format '  {{.Names}}\t{{.Status}}\t{{.Image}}' 2>/dev/null || true
    done
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    podman) shift; [ $# -ge 1 ] || die "usage: lab.sh podman HOST ARGS..."; lab_podman "$@" ;;
    exec|nsenter) shift; [ $# -ge 2 ] || die "usage: lab.sh exec HOST CMD..."; lab_nsenter "$@" ;;
    agent-start) need_root; agent_start "${2:?host}" ;;
    agent-stop) need_root; agent_stop "${2:?host}" ;;
    agent-restart) need_root; agent_start "${2:?host}" ;;
    *) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
