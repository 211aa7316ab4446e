# Runs under `sh -e` inside the Podman 5 tier's guest, without tern:
#   TIER_CMD=scripts/vm/podman5-byhand.cmd scripts/podman5-tier.sh
# Podman 5 checkpoints and restores the test image's counter by hand, with
# crun and with runc: export, import, --leave-running, a lazy restore through
# the org.criu.config annotation. Podman's JSON (info, inspect) for
# agent/src/engine.rs goes to /tern-out (the host's
# /var/lib/tern-vm/out-podman5).
set +e
counter='i=0; while true; do echo $i > /count.new; mv /count.new /count; i=$((i+1)); sleep 0.05; done'
echo "== stack: podman $(podman version --format '{{.Client.Version}}'), $(crun --version | head -1), $(runc --version | head -1), criu $(criu --version | sed -n 's/^Version: *//p'), kernel $(uname -r), /sys/fs/cgroup $(stat -f -c %T /sys/fs/cgroup)"
cat /sys/fs/cgroup/cgroup.controllers
criu check; echo "criu check: $?"
criu check --feature mem_dirty_track; echo "mem_dirty_track: $?"
criu check --feature uffd-noncoop; echo "uffd-noncoop: $?"
mkdir -p /etc/containers/containers.conf.d /var/tmp/ck
step() { t=$(date +%s%N); "$@"; r=$?; echo "-- [$(( ($(date +%s%N) - t) / 1000000 )) ms, exit $r] $*"; return $r; }
for rt in crun runc; do
    cat > /etc/containers/containers.conf.d/50-tern.conf <<CONF
[engine]
runtime = "$rt"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
default_subnet = "203.0.113.0/24"
CONF
    echo "==== runtime $rt"
    podman info --format json > /tern-out/podman-info-$rt.json
    podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Version}} cgroups {{.Host.CgroupsVersion}} manager {{.Host.CgroupManager}} net {{.Host.NetworkBackend}}'
    podman image exists localhost/tern-busybox:latest || step podman import /opt/tern/images/tern-busybox.tar localhost/tern-busybox:latest
    step podman run -d --name c-$rt localhost/tern-busybox:latest sh -c "$counter"
    sleep 3
    echo "count before: $(podman exec c-$rt cat /count)"
    podman container inspect --format json c-$rt > /tern-out/inspect-$rt.json
    # hash-pre-copy's base dump: the container goes on running.
    step podman container checkpoint --keep --compress none --leave-running --export=/var/tmp/ck/base-$rt.tar c-$rt
    echo "state after --leave-running: $(podman inspect --format '{{.State.Status}}' c-$rt), count $(podman exec c-$rt cat /count)"
    step podman container checkpoint --keep --compress none --export=/var/tmp/ck/c-$rt.tar c-$rt
    echo "state after checkpoint: $(podman inspect --format '{{.State.Status}}' c-$rt)"
    step podman container restore --keep c-$rt
    sleep 1; echo "count after local restore: $(podman exec c-$rt cat /count)"
    step podman container checkpoint --keep --compress none --export=/var/tmp/ck/c-$rt.tar c-$rt
    step podman rm -f c-$rt
    step podman container restore --keep --import=/var/tmp/ck/c-$rt.tar
    sleep 1; echo "count after import: $(podman exec c-$rt cat /count) (state $(podman inspect --format '{{.State.Status}}' c-$rt))"
    podman container inspect --format json c-$rt > /tern-out/inspect-restored-$rt.json
    # What tern's lazy restore relies on: org.criu.config names an options file.
    dir=$(podman container inspect --format '{{.StaticDir}}' c-$rt)
    echo "StaticDir $dir; annotations: $(podman container inspect --format '{{json .Config.Annotations}}' c-$rt)"
    step podman rm -f c-$rt
    step podman run -d --name l-$rt --annotation org.criu.config=/var/tmp/ck/lazy-$rt.conf localhost/tern-busybox:latest sh -c "$counter"
    sleep 2
    printf 'log-file /var/tmp/ck/lazy-%s-criu.log\n' "$rt" > /var/tmp/ck/lazy-$rt.conf
    step podman container checkpoint --keep l-$rt
    ls -la /var/tmp/ck
    grep -l . /var/tmp/ck/lazy-$rt-criu.log 2>/dev/null && echo "org.criu.config honoured by $rt (dump)" || echo "org.criu.config NOT honoured by $rt (dump)"
    step podman container restore --keep l-$rt
    sleep 1; echo "count after restore with org.criu.config: $(podman exec l-$rt cat /count)"
    step podman rm -f l-$rt
done
cp /var/log/criu* /tern-out/ 2>/dev/null
true
