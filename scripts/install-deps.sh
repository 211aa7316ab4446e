#!/usr/bin/env bash
# Installs everything tern and its tests need on a fresh Debian 12 machine.
# Idempotent: a second run changes nothing and takes seconds. Run as root.
#
#  - Podman 4.3 with runc (crun refuses hybrid cgroups), conmon, netavark.
#  - CRIU >= 4.2: Debian 12's 3.17 fails on current kernels and 4.1 cannot
#    dump inet sockets on kernels >= 6.16, so unless the system has >= 4.2,
#    CRIU 4.2 from Debian's development suite (forky) goes into a private
#    prefix (/opt/tern/criu) with its own glibc, behind a wrapper at
#    /usr/local/sbin/criu. forky's apt source lives only while those
#    packages download, pinned at priority 100, and is then removed: nothing
#    is ever installed or upgraded from it.
#  - nftables: the agent holds a restored container's packets at the NIC
#    while CRIU restores its sockets (agent/src/netid.rs).
#  - A Podman drop-in, /etc/containers/containers.conf.d/50-tern.conf: runc,
#    cgroupfs, rlimits this machine allows, and a documentation-range subnet
#    for containers. /etc/containers/containers.conf is left alone (one
#    written by an earlier version of this script is moved aside).
#  - The test image's root filesystem (busybox) at /opt/tern/images.
#  - Redis 7 and PostgreSQL 15 (binaries and clients: redis-cli,
#    redis-benchmark, psql, pgbench) for the application test images
#    (scripts/test-image/build-apps.sh), also at /opt/tern/images. The host
#    runs neither: no cluster is created, no service is started or enabled.
#  - With --vm: qemu and Debian's stock kernel, for scripts/softdirty-tier.sh;
#    debootstrap, for scripts/podman5-tier.sh (its Debian 13 guest root).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root" >&2; exit 2; }
# Only the system this was written and tested for: elsewhere its package
# names, suites and CRIU build would be guesses.
os_id=$( . /etc/os-release 2>/dev/null; echo "${ID:-unknown}:${VERSION_ID:-}" )
if [ "$os_id" != debian:12 ] || [ "$(uname -m)" != x86_64 ]; then
    cat >&2 <<MSG
install-deps.sh: this script installs on Debian 12 (bookworm) on x86_64 only;
this is $( . /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-an unknown system}") on $(uname -m).
Install instead, from your distribution: Podman >= 4.3 with runc or crun,
conmon, netavark, nftables, and CRIU >= 4.2 (>= 4.1 on kernels before 6.16).
README.md, "Deploying on real hosts", says what each is for.
MSG
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
log() { printf 'install-deps: %s\n' "$*"; }

PREFIX=/opt/tern
CRIU_PREFIX=$PREFIX/criu
IMAGES=$PREFIX/images
ARCH_DIR=x86_64-linux-gnu

# --- Debian packages --------------------------------------------------------
PKGS=(podman runc conmon netavark aardvark-dns slirp4netns uidmap catatonit fuse-overlayfs
      busybox-static iproute2 zstd util-linux iptables nftables procps psmisc ca-certificates
      gcc libc6-dev
      redis-server redis-tools postgresql-15 postgresql-client-15)
[ "${1:-}" = --vm ] && PKGS+=(qemu-system-x86 linux-image-amd64 debootstrap)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${PKGS[@]}"; do
    installed "$p" || missing+=("$p")
done
# Redis and PostgreSQL are here for their binaries only: Debian would create
# and start a cluster "main" and start redis-server. pg_createcluster reads
# this drop-in (createcluster.conf includes createcluster.d/, so the conffile
# itself stays the package's); services stay unstarted through a policy-rc.d
# that lives only during the install, and are then disabled.
cc_dropin=/etc/postgresql-common/createcluster.d/tern.conf
cc_want='# tern (scripts/install-deps.sh): PostgreSQL binaries only, no default cluster.
create_main_cluster = false'
if [ "$(cat "$cc_dropin" 2>/dev/null)" != "$cc_want" ]; then
    mkdir -p "${cc_dropin%/*}"
    printf '%s\n' "$cc_want" > "$cc_dropin"
fi
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    had_pg_common=false; installed postgresql-common && had_pg_common=true
    had_pg_main=false; [ -e "/etc/postgresql/15/main" ] && had_pg_main=true
    policy=/usr/sbin/policy-rc.d own_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# tern install-deps.sh: no service starts while it installs.\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        own_policy=true
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    UCF_FORCE_CONFFOLD=1 apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
    if $own_policy; then rm -f "$policy"; trap - EXIT; fi
    no_service() {   # stop and disable a service this run installed
        if [ -d /run/systemd/system ]; then
            systemctl disable --now --quiet "$1.service" 2>/dev/null || true
        else
            "/etc/init.d/$1" status >/dev/null 2>&1 && { "/etc/init.d/$1" stop >/dev/null || true; }
            systemctl disable --quiet "$1.service" 2>/dev/null || true
        fi
        update-rc.d "$1" disable >/dev/null 2>&1 || true
    }
    if [[ " ${missing[*]} " = *" redis-server "* ]]; then no_service redis-server; fi
    if ! $had_pg_common && installed postgresql-common; then no_service postgresql; fi
    if ! $had_pg_main && [ -e /etc/postgresql/15/main ]; then
        log "removing the PostgreSQL cluster 15/main the install created"
        pg_dropcluster --stop 15 main
    fi
fi
# pgbench ships in postgresql-15 (/usr/lib/postgresql/15/bin); postgresql-client-common
# puts its wrapper on PATH. Should it not, a link does.
if ! command -v pgbench >/dev/null && [ -x /usr/lib/postgresql/15/bin/pgbench ]; then
    ln -sf /usr/lib/postgresql/15/bin/pgbench /usr/local/bin/pgbench
fi
# Debian's own criu (3.17) must not shadow ours.
if dpkg-query -W -f='${Status}' criu 2>/dev/null | grep -q "install ok installed"; then
    log "removing Debian 12's criu 3.17 (it fails on this kernel)"
    apt-get remove -y -qq criu >/dev/null
fi

# --- CRIU >= 4.2 --------------------------------------------------------------
criu_ok() {
    local v
    v=$(criu --version 2>/dev/null | sed -n 's/^Version: *//p')
    [ -n "$v" ] || return 1
    printf '4.2\n%s\n' "$v" | sort -V -C   # 4.2 <= v
}
# forky's apt source and pin, removed once its packages are downloaded (and
# by this run if an earlier one left them), with apt's lists brought back to
# what the remaining sources say.
forky_list=/etc/apt/sources.list.d/tern-forky.list forky_pin=/etc/apt/preferences.d/tern-forky
forget_forky() {
    if [ -e "$forky_list" ] || [ -e "$forky_pin" ]; then
        rm -f "$forky_list" "$forky_pin"
        apt-get update -qq || log "apt-get update failed after removing $forky_list; run it again before installing anything"
    fi
}
if criu_ok; then
    forget_forky
else
    log "installing CRIU 4.2 from Debian forky into $CRIU_PREFIX"
    echo "deb http://deb.debian.org/debian forky main" > "$forky_list"
    trap forget_forky EXIT
    cat > "$forky_pin" <<'PIN'
# tern: forky only for the few packages install-deps.sh downloads by hand.
Package: *
Pin: release n=forky
Pin-Priority: 100
PIN
    # A development suite's Release file may be past its Valid-Until date.
    apt-get update -qq -o Acquire::Check-Valid-Until=false
    debs=$(mktemp -d /var/tmp/tern-criu.XXXXXX)
    chown _apt "$debs" 2>/dev/null || true
    (cd "$debs" && apt-get download -qq criu/forky libcompel1/forky libc6/forky libnet9/forky libnl-3-200/forky \
        libprotobuf-c1/forky libnftables1/forky libbsd0/forky libmd0/forky libjansson4/forky libmnl0/forky \
        libnftnl11/forky libxtables12/forky libuuid1/forky >/dev/null)
    rm -rf "$CRIU_PREFIX.new"
    mkdir -p "$CRIU_PREFIX.new"
    for d in "$debs"/*.deb; do dpkg -x "$d" "$CRIU_PREFIX.new"; done
    rm -rf "$debs" "$CRIU_PREFIX"
    mv "$CRIU_PREFIX.new" "$CRIU_PREFIX"
    forget_forky; trap - EXIT
    cat > /usr/local/sbin/criu <<WRAP
#!/bin/sh
# tern: CRIU 4.2 from Debian forky, run with its own glibc (scripts/install-deps.sh).
P=$CRIU_PREFIX
exec "\$P/usr/lib/$ARCH_DIR/ld-linux-x86-64.so.2" \\
    --library-path "\$P/usr/lib/$ARCH_DIR:\$P/lib/$ARCH_DIR:/lib/$ARCH_DIR:/usr/lib/$ARCH_DIR" \\
    "\$P/usr/sbin/criu" "\$@"
WRAP
    chmod 755 /usr/local/sbin/criu
    hash -r
    criu_ok || { echo "install-deps.sh: CRIU 4.2 did not install correctly:" >&2; criu --version >&2 || true; exit 1; }
fi

# --- containers.conf -------------------------------------------------------------
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
conf=$(cat <<CONF
# Written by tern's scripts/install-deps.sh (a drop-in: containers.conf stays yours).
[containers]
# This machine's hard limits: podman's defaults would make runc fail (EPERM).
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
# A documentation range for containers' addresses.
default_subnet = "203.0.113.0/24"
CONF
)
dropin=/etc/containers/containers.conf.d/50-tern.conf
mkdir -p "${dropin%/*}"
if [ "$(cat "$dropin" 2>/dev/null)" != "$conf" ]; then
    log "writing $dropin"
    printf '%s\n' "$conf" > "$dropin"
fi
# Earlier versions of this script wrote containers.conf itself: that file
# goes aside (the drop-in says the same); anyone else's stays untouched,
# with the drop-in's settings taking precedence over it.
main_conf=/etc/containers/containers.conf
if head -1 "$main_conf" 2>/dev/null | grep -qx "# Written by tern's scripts/install-deps.sh."; then
    log "moving the $main_conf an earlier install-deps.sh wrote to $main_conf.tern-old ($dropin replaces it)"
    mv "$main_conf" "$main_conf.tern-old"
elif [ -e "$main_conf" ]; then
    log "$main_conf is not tern's and stays; $dropin overrides what it sets of runtime, cgroup_manager, events_logger, ulimits and network"
fi

# --- test image --------------------------------------------------------------------
scripts/test-image/build.sh "$IMAGES"
scripts/test-image/build-apps.sh "$IMAGES"

# --- summary -------------------------------------------------------------------------
log "podman $(podman version --format '{{.Client.Version}}' 2>/dev/null), $(runc --version | head -1), criu $(criu --version | sed -n 's/^Version: *//p'), kernel $(uname -r)"
if criu check --feature mem_dirty_track >/dev/null 2>&1; then
    log "soft-dirty memory tracking: available (pre-copy possible)"
else
    log "soft-dirty memory tracking: NOT available on this kernel (pre-copy impossible here; stop-and-copy works)"
fi
