#!/usr/bin/env bash
# Builds the root filesystem tarballs of tern's application test images from
# the host's Debian 12 packages (no image can be pulled here): a real Redis and
# a real PostgreSQL, for migrations of services that clients talk to.
# Called by scripts/install-deps.sh; rebuilt only when its inputs change.
#
# OUTDIR/tern-redis.tar
#   /bin/busybox and its applet links (sh, cat, sleep, ...), /usr/bin/redis-server
#   (Debian's redis 7.0) with every library `ldd` lists at the same path, the
#   dynamic loader, /etc/passwd and /etc/group (root only). Runs as root.
#     podman import OUTDIR/tern-redis.tar localhost/tern-redis:latest
#     podman run -d --name r localhost/tern-redis \
#         redis-server --bind 0.0.0.0 --protected-mode no --save '' --appendonly no
#   --protected-mode no is required: without a config file or password Redis
#   answers clients from other addresses with "DENIED". --save '' is required:
#   without a config file Redis snapshots to ./dump.rdb (3600 1 300 100 60 10000),
#   forking a child that a checkpoint could catch mid-write. --bind 0.0.0.0
#   (IPv4 only; the default "* -::*" works too) and --appendonly no (the
#   default) say what is meant. Port 6379; all data lives in memory.
#   Clients: redis-cli -h <address> INCR x; redis-benchmark -h <address>.
#
# OUTDIR/tern-postgres.tar (mostly ICU's data, the data folder with its
# first WAL segment, and the other libraries)
#   PostgreSQL 15's server /usr/lib/postgresql/15/bin/postgres (linked from
#   /usr/bin/postgres), the libraries `ldd` lists for it and for its modules,
#   /usr/lib/postgresql/15/lib (without llvmjit and its bitcode: jit = off),
#   /usr/share/postgresql/15 (without man pages), /usr/share/zoneinfo (without
#   right/ and posix/), busybox, a user and group postgres (uid/gid 999, home
#   /var/lib/postgresql), /run/postgresql (the socket folder, postgres 2775)
#   and a data folder initialised at build time: /var/lib/postgresql/data
#   (postgres, 0700; initdb --locale=C --encoding=UTF8 --auth=trust, timezone
#   UTC, superuser postgres, no password). postgresql.conf ends with:
#   listen_addresses '*', unix_socket_directories '/run/postgresql', jit off,
#   dynamic_shared_memory_type posix; pg_hba.conf trusts every local and host
#   connection, replication included: a lab database, never a real one.
#     podman import OUTDIR/tern-postgres.tar localhost/tern-postgres:latest
#     podman run -d --name pg --user postgres localhost/tern-postgres \
#         postgres -D /var/lib/postgresql/data
#   --user postgres is required (postgres refuses to run as root; the data
#   folder belongs to 999). No -c option is needed: postgresql.conf already
#   listens on every address. Podman's default 64 MiB /dev/shm is enough.
#   Port 5432; clients: psql/pgbench -h <address> -U postgres postgres.
#   Dynamic shared memory lives in /dev/shm (PostgreSQL.<n>, mapped by every
#   server process): Podman's checkpoint saves it (devshm-checkpoint.tar, in
#   --export archives too) and restore puts it back; a migration that left it
#   behind would break the restored server.
#
# Checkpointing a container whose processes run as a non-root uid (this one)
# needs CAP_SYS_RESOURCE: CRIU reads every process's rlimits with prlimit(2),
# which the kernel allows across uids only with that capability. Where root
# lacks it (the development VM: "Can't get rlimit 0: Operation not permitted"
# in dump.log), only containers running as root can be checkpointed.
# Checked with Debian's 6.1 kernel under qemu (root with every capability):
# checkpoint and restore of this container, idle and under pgbench, worked.
#
# initdb runs at build time as uid 999 inside the new root (chroot), so it
# finds the user postgres in the image's /etc/passwd (the host may have no
# user 999), and its success shows that the copied libraries run the server.
set -euo pipefail
out=${1:-/opt/tern/images}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"

PG_VERSION=15
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
PG_LIB=/usr/lib/postgresql/$PG_VERSION/lib
PG_SHARE=/usr/share/postgresql/$PG_VERSION
PG_ID=999
PG_DATA=/var/lib/postgresql/data

die() { echo "build-apps.sh: $*" >&2; exit 1; }

# The libraries `ldd` lists for ELF files, and the dynamic loader.
libs_of() {
    local listing
    listing=$(ldd "$@") || die "ldd failed on $*"
    ! grep -q 'not found' <<<"$listing" || die "missing libraries: $(grep 'not found' <<<"$listing" | tr -s ' \t' ' ')"
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*[^:]$/ { print $1 }' <<<"$listing" | sort -u
}

# Copy files into the root at the same paths, symbolic links resolved.
copy_in() {
    local root=$1; shift
    cp -L --parents "$@" "$root/"
}

# The skeleton every image shares: busybox and its applets, the usual folders.
base_root() {
    local root=$1
    chmod 0755 "$root"   # mktemp made it 0700
    mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root,run,var}
    chmod 1777 "$root/tmp"
    ln -s ../run "$root/var/run"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
}

# build NAME INPUTS FILL: run FILL ROOT into a fresh root, then tar it as
# OUTDIR/NAME.tar (atomic rename), unless the inputs are the same as last time.
build() {
    local name=$1 inputs=$2 fill=$3
    local tar_path=$out/$name.tar stamp=$out/.$name.inputs
    if [ -f "$tar_path" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
        return 0
    fi
    echo "test-image: building $tar_path"
    local root
    root=$(mktemp -d /var/tmp/tern-image.XXXXXX)
    # shellcheck disable=SC2064 # expand $root now
    trap "rm -rf '$root'" EXIT
    "$fill" "$root"
    tar --numeric-owner -C "$root" -cf "$tar_path.new" .
    mv "$tar_path.new" "$tar_path"
    echo "$inputs" > "$stamp"
    rm -rf "$root"
    trap - EXIT
}

hash_files() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# --- tern-redis -----------------------------------------------------------------
REDIS=/usr/bin/redis-server
[ -x "$REDIS" ] || die "$REDIS is missing (Debian package redis-server)"
redis_libs=$(libs_of "$REDIS")

fill_redis() {
    local root=$1
    base_root "$root"
    # shellcheck disable=SC2086 # one path a word
    copy_in "$root" "$REDIS" $redis_libs
    echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
    echo 'root:x:0:' > "$root/etc/group"
}
# shellcheck disable=SC2086
build tern-redis "$(hash_files "$here/build-apps.sh" /bin/busybox "$REDIS" $redis_libs)" fill_redis

# --- tern-postgres ----------------------------------------------------------------
[ -x "$PG_BIN/postgres" ] || die "$PG_BIN/postgres is missing (Debian package postgresql-$PG_VERSION)"
# The server's modules, without the JIT provider (it would pull in LLVM, 100 MiB).
pg_modules=$(find "$PG_LIB" -maxdepth 1 -name '*.so' ! -name 'llvmjit*' | sort)
# shellcheck disable=SC2086
pg_libs=$(libs_of "$PG_BIN/postgres" "$PG_BIN/initdb" $pg_modules)
pg_share=$(find "$PG_SHARE" -path "$PG_SHARE/man" -prune -o -xtype f -print | sort)
# Time zones for the server (Debian builds it --with-system-tzdata), without
# the leap-second variants (right/) and the aliases of posix/.
zoneinfo=$(find /usr/share/zoneinfo \( -path /usr/share/zoneinfo/right -o -path /usr/share/zoneinfo/posix \) -prune \
    -o -xtype f -print | sort)

fill_postgres() {
    local root=$1
    base_root "$root"
    # shellcheck disable=SC2086
    copy_in "$root" "$PG_BIN/postgres" $pg_modules $pg_libs $pg_share $zoneinfo
    mkdir -p "$root/usr/bin"
    ln -s "$PG_BIN/postgres" "$root/usr/bin/postgres"
    cat > "$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
postgres:x:$PG_ID:$PG_ID:PostgreSQL administrator:/var/lib/postgresql:/bin/sh
EOF
    cat > "$root/etc/group" <<EOF
root:x:0:
postgres:x:$PG_ID:
EOF
    install -d -o "$PG_ID" -g "$PG_ID" -m 0755 "$root/var/lib/postgresql"
    install -d -o "$PG_ID" -g "$PG_ID" -m 0700 "$root$PG_DATA"
    install -d -o "$PG_ID" -g "$PG_ID" -m 2775 "$root/run/postgresql"

    # initdb inside the new root as the image's postgres; it needs /dev/null.
    cp "$PG_BIN/initdb" "$root$PG_BIN/initdb"
    mknod -m 666 "$root/dev/null" c 1 3
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C LC_ALL=C TZ=UTC \
        chroot --userspec="$PG_ID:$PG_ID" --groups="$PG_ID" "$root" \
        "$PG_BIN/initdb" --pgdata="$PG_DATA" --username=postgres --auth=trust \
        --locale=C --encoding=UTF8 --no-instructions >"$root/initdb.log" 2>&1 ||
        { cat "$root/initdb.log" >&2; die "initdb failed"; }
    rm -f "$root$PG_BIN/initdb" "$root/dev/null" "$root/initdb.log"

    cat >> "$root$PG_DATA/postgresql.conf" <<'EOF'

# tern's test image (scripts/test-image/build-apps.sh): a lab server.
listen_addresses = '*'
unix_socket_directories = '/run/postgresql'
jit = off                          # llvmjit is not in the image
dynamic_shared_memory_type = posix # /dev/shm (initdb in a chroot without it picks sysv)
EOF
    cat > "$root$PG_DATA/pg_hba.conf" <<'EOF'
# tern's test image: everyone is trusted (a lab, never a real database).
# TYPE  DATABASE     USER  ADDRESS     METHOD
local   all          all               trust
host    all          all   0.0.0.0/0   trust
host    all          all   ::/0        trust
local   replication  all               trust
host    replication  all   0.0.0.0/0   trust
host    replication  all   ::/0        trust
EOF
    chown "$PG_ID:$PG_ID" "$root$PG_DATA/pg_hba.conf"
    chmod 0600 "$root$PG_DATA/pg_hba.conf"
}
# shellcheck disable=SC2086
build tern-postgres "$(hash_files "$here/build-apps.sh" /bin/busybox "$PG_BIN/postgres" "$PG_BIN/initdb" \
    $pg_modules $pg_libs $pg_share $zoneinfo)" fill_postgres
