# Shared by tern's lab scripts: the lab's hosts and how to run a command or
# podman on one.
# shellcheck shell=bash

TERN_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The application's clients: a plain machine on the lab network, no agent,
# no Podman (network namespace only).
LAB_CLIENT=client0
LAB_BRIDGE=tern0
LAB_BRIDGE_IP=198.51.100.1
LAB_PORT=7443
# The lab's certificates, agent configs and logs, and the inventory tern
# reads from the repository root. TERN_LAB_STATE moves them (the soft-dirty
# tier keeps its own, away from a lab on the host sharing the repository).
LAB_STATE=${TERN_LAB_STATE:-$TERN_REPO/.tern}
LAB_VAR=/var/lib/tern-lab
LAB_RUN=/run/tern-lab
# The hosts with an agent, client1..clientN: each a network namespace plus a
# mount namespace of its own (Podman's network configuration, its address
# allocations and runc's state are per machine, as on separate hosts).
# `lab.sh up --hosts N` sets N and records it in $LAB_RUN/hosts, where every
# later command (and script sourcing this file) reads it while the lab is
# up; 2 when none is recorded. At most LAB_MAX_HOSTS: each host's `lan`
# range is a /28 of the lab's /24 from .128 on (lab_lan_range).
LAB_MAX_HOSTS=8
LAB_DEFAULT_HOSTS=2

# Sets LAB_HOSTS to client1..client$1.
lab_set_hosts() {
    local n=$1 i
    case "$n" in
        '' | *[!0-9]*) echo "lab: the host count must be a number from 1 to $LAB_MAX_HOSTS, not '$n'" >&2; return 2 ;;
    esac
    if [ "$n" -lt 1 ] || [ "$n" -gt "$LAB_MAX_HOSTS" ]; then
        echo "lab: the host count must be from 1 to $LAB_MAX_HOSTS, not $n" >&2
        return 2
    fi
    LAB_HOSTS=()
    for ((i = 1; i <= n; i++)); do LAB_HOSTS+=("client$i"); done
}

# The host count recorded by `lab.sh up`, else the default.
lab_recorded_hosts() {
    local n
    n=$(cat "$LAB_RUN/hosts" 2>/dev/null || true)
    case "$n" in
        '' | *[!0-9]*) echo "$LAB_DEFAULT_HOSTS" ;;
        *) echo "$n" ;;
    esac
}

lab_set_hosts "$(lab_recorded_hosts)" || lab_set_hosts "$LAB_DEFAULT_HOSTS"
LAB_IMAGE=localhost/tern-busybox:latest
LAB_IMAGE_TAR=/opt/tern/images/tern-busybox.tar
# The Podman network `lan` every agent host gets: a macvlan over the host's
# NIC, so a container's address sits on the lab's layer-2 segment wherever it
# runs (README, "Networks"). One subnet; each host hands out addresses from
# its own range so no two hosts ever allocate the same one.
LAB_LAN=lan
LAB_LAN_SUBNET=198.51.100.0/24

# client0 is 198.51.100.10, clientN 198.51.100.1N (N up to LAB_MAX_HOSTS).
lab_ip() {
    local n=${1#client}
    case "$1" in
        client[0-9]) if [ "$n" -le "$LAB_MAX_HOSTS" ]; then echo "198.51.100.$((10 + n))"; return 0; fi ;;
    esac
    echo "unknown lab host $1 (hosts: $LAB_CLIENT ${LAB_HOSTS[*]})" >&2
    return 2
}

# The part of `lan` a host allocates from: 198.51.100.128/28 for client1,
# .144/28 for client2, ... .240/28 for client8.
lab_lan_range() {
    local n=${1#client}
    echo "198.51.100.$((128 + 16 * (n - 1)))/28"
}

lab_is_agent_host() {
    local h
    for h in "${LAB_HOSTS[@]}"; do [ "$h" = "$1" ] && return 0; done
    return 1
}

# The file holding an agent host's mount namespace.
lab_mntns() { echo "$LAB_RUN/ns/$1"; }

# Podman's global flags for a lab host: none. Its mount namespace puts the
# host's own storage ($LAB_VAR/HOST/storage), run root and tmp dir
# ($LAB_RUN/HOST/...) at Podman's default paths, as on a real machine.
lab_podman_args() {
    :
}

# Runs a command on a lab host: in its network namespace and, for an agent
# host, its mount namespace (nsenter, not `ip netns exec`: the latter
# remounts /sys and runc then fails with "no cgroup mount found").
lab_nsenter() {
    local h=$1; shift
    lab_ip "$h" >/dev/null || return 2
    [ -e "/run/netns/$h" ] || { echo "lab host $h is not up (scripts/lab.sh up)" >&2; return 2; }
    if lab_is_agent_host "$h"; then
        nsenter --net="/run/netns/$h" --mount="$(lab_mntns "$h")" --wd="$PWD" "$@"
    else
        nsenter --net="/run/netns/$h" "$@"
    fi
}

lab_podman() {
    local h=$1; shift
    lab_is_agent_host "$h" || { echo "$h runs no Podman (agent hosts: ${LAB_HOSTS[*]})" >&2; return 2; }
    # shellcheck disable=SC2046
    lab_nsenter "$h" podman $(lab_podman_args "$h") "$@"
}
