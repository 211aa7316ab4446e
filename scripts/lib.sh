# Shared by tern's lab scripts: the lab's hosts and how to run podman on one.
# shellcheck shell=bash

TERN_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB_HOSTS=(client1 client2)
LAB_BRIDGE=tern0
LAB_BRIDGE_IP=198.51.100.1
LAB_PORT=7443
# The lab's certificates, agent configs and logs, and the inventory tern
# reads from the repository root. TERN_LAB_STATE moves them (the soft-dirty
# tier keeps its own, away from a lab on the host sharing the repository).
LAB_STATE=${TERN_LAB_STATE:-$TERN_REPO/.tern}
LAB_VAR=/var/lib/tern-lab
LAB_RUN=/run/tern-lab
LAB_IMAGE=localhost/tern-busybox:latest
LAB_IMAGE_TAR=/opt/tern/images/tern-busybox.tar

lab_ip() {
    case "$1" in
        client1) echo 198.51.100.11 ;;
        client2) echo 198.51.100.12 ;;
        *) echo "unknown lab host $1 (hosts: ${LAB_HOSTS[*]})" >&2; return 2 ;;
    esac
}

# Podman's global flags for a lab host: its own storage, run and tmp dirs.
lab_podman_args() {
    echo --root "$LAB_VAR/$1/storage" --runroot "$LAB_RUN/$1/runroot" --tmpdir "$LAB_RUN/$1/libpod"
}

lab_nsenter() {
    local h=$1; shift
    lab_ip "$h" >/dev/null || return 2
    [ -e "/run/netns/$h" ] || { echo "lab host $h is not up (scripts/lab.sh up)" >&2; return 2; }
    nsenter --net="/run/netns/$h" "$@"
}

lab_podman() {
    local h=$1; shift
    # shellcheck disable=SC2046
    lab_nsenter "$h" podman $(lab_podman_args "$h") "$@"
}
