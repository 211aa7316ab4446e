#!/usr/bin/env bash
# The Podman 5 tier: tern on Debian 13 (trixie)'s stack, Podman 5 with crun
# and again with runc, CRIU and the kernel all from trixie's packages,
# cgroups v2 only. This machine runs Debian 12 (Podman 4, runc, hybrid
# cgroups), so the stack runs in a qemu guest (software emulation, as the
# soft-dirty tier): a trixie root made with debootstrap
# (scripts/vm/build-trixie-root.sh, cached in /var/lib/tern-vm/trixie-root
# until scripts/vm/trixie-packages changes), written into a disk image
# (ext4, virtio-blk; the guest's writes go to a throw-away overlay, so each
# run starts from the same root), booted with trixie's own kernel and
# initramfs, PID 1 scripts/vm/trixie-init. Inside it runs the lab and the
# end-to-end tests named by TIER_TESTS, first with crun as Podman's runtime,
# then with runc (TIER_RUNTIMES). Trixie's kernel has soft-dirty, so the
# pre-copy tests named by TIER_PRECOPY_TESTS run too; the others run with
# the agents' facts saying it is off (`auto` then picks the mode those tests
# expect). Exits 0 only when every test inside passed. The default tests
# cover stop-and-copy, content-addressed pre-copy (the changed image files'
# move back), soft-dirty pre-copy, image shipping and TCP inside the
# container; not hash_pre_copy_sends_only_changed_pages: its memhog rewrites
# 2 MiB/s and under emulation the base dump alone takes over 30 s, so most
# of its 64 MiB has changed by the freeze and its reuse check fails.
#
#   scripts/podman5-tier.sh            (as root; both runtimes)
#   TIER_RUNTIMES=crun scripts/podman5-tier.sh   (what scripts/test.sh runs, step 6)
#   TIER_TESTS="migrate_counter" TIER_PRECOPY_TESTS= TIER_RUNTIMES=crun scripts/podman5-tier.sh
#   TIER_CMD=FILE scripts/podman5-tier.sh        (runs FILE under sh -e inside instead)
#
# Results in /var/lib/tern-vm/out-podman5 (log, rc). Emulation makes every
# step many times slower: compare ratios, not times.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "podman5-tier.sh: run as root" >&2; exit 2; }
repo=$(pwd)
t0=$(date +%s)
since() { echo "$(( $(date +%s) - $1 )) s"; }

scripts/install-deps.sh --vm
t=$(date +%s)
cargo build --release --bins --locked --workspace --exclude tern-agent
cargo build --release --locked -p tern-agent --features fault-injection
e2e=$(cargo test --release --locked -p tern-tests --test e2e --no-run --message-format=json 2>/dev/null |
      sed -n 's/.*"executable":"\([^"]*\/deps\/e2e-[^"]*\)".*/\1/p' | tail -1)
[ -x "$e2e" ] || { echo "podman5-tier.sh: could not build the e2e test binary" >&2; exit 1; }
bin=${e2e%/deps/*}
echo "podman5-tier: build $(since "$t")"

work=/var/lib/tern-vm
root=$work/trixie-root
t=$(date +%s)
scripts/vm/build-trixie-root.sh "$root"
echo "podman5-tier: root $(since "$t")"
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel##*/vmlinuz-}
initrd=$root/boot/initrd.img-$kver
[ -f "$initrd" ] || { echo "podman5-tier.sh: $initrd is missing" >&2; exit 1; }

# The disk image: the root plus the guest's PID 1, made again when either
# changed. 3 GiB free for the lab's containers and checkpoints.
t=$(date +%s)
install -m 755 scripts/vm/trixie-init "$root/sbin/tern-init"
img=$work/trixie.img
want=$(cat "$root/.tern-stamp" scripts/vm/trixie-init | sha256sum | cut -d' ' -f1)
if [ "$(cat "$img.stamp" 2>/dev/null)" != "$want" ]; then
    size=$(( $(du -sm "$root" | cut -f1) + 3072 ))
    rm -f "$img" "$img.stamp"
    mkfs.ext4 -q -F -L trixie -d "$root" "$img" "${size}M"
    echo "$want" > "$img.stamp"
    echo "podman5-tier: disk image made ($size MiB) in $(since "$t")"
fi

out=$work/out-podman5
rm -rf "$out"; mkdir -p "$out"
cat > "$out/env" <<ENV
export TERN_LAB_STATE=/var/lib/tern-lab/state
export TERN_INVENTORY=/var/lib/tern-lab/state/inventory.toml
export TERN_BIN_DIR=$bin
export TERN_TIMEOUT_SCALE=${TERN_TIMEOUT_SCALE:-10}
ENV
if [ -n "${TIER_CMD:-}" ]; then
    cp "$TIER_CMD" "$out/cmd"
else
    cat > "$out/cmd" <<CMD
e2e=$e2e
tests="${TIER_TESTS-migrate_counter_to_client2_and_back changed_files_of_the_image_move_with_the_container tcp_connection_inside_the_container_survives}"
precopy_tests="${TIER_PRECOPY_TESTS-precopy_rounds_shrink_and_the_counter_carries_on}"
runtimes="${TIER_RUNTIMES:-crun runc}"
CMD
    cat >> "$out/cmd" <<'CMD'
since() { echo "$(( $(date +%s) - $1 )) s"; }
echo "== stack: podman $(podman version --format '{{.Client.Version}}'), $(crun --version | head -1), $(runc --version | head -1), criu $(criu --version | sed -n 's/^Version: *//p'), kernel $(uname -r), $(stat -f -c %T /sys/fs/cgroup)"
criu check || true
criu check --feature mem_dirty_track || true
fail=""
# Each group: one run of the test binary (it brings the lab up with the
# agents' current settings).
group() {   # NAME OVERRIDE TESTS...
    name=$1 over=$2; shift 2
    [ $# -gt 0 ] || return 0
    t=$(date +%s)
    if LAB_FACTS_OVERRIDE_CLIENT1=$over LAB_FACTS_OVERRIDE_CLIENT2=$over \
        LAB_AGENT_EXTRA_CLIENT1=$extra LAB_AGENT_EXTRA_CLIENT2=$extra \
        $e2e --ignored --test-threads=1 --nocapture "$@"; then
        echo "== $name: passed in $(since $t)"
    else
        echo "== $name: FAILED after $(since $t)"; fail="$fail $name"
    fi
}
no_soft_dirty='dirty_tracking = { supported = false, detail = "off for this group of tests (podman5-tier.sh)" }'
for rt in $runtimes; do
    # With crun the agents themselves report no lazy restores (crun does
    # not pass org.criu.config to CRIU) and send pre-dumps to crun
    # (agent/src/facts.rs, agent/src/main.rs): nothing to set here.
    lazy="" extra=""
    mkdir -p /etc/containers/containers.conf.d
    cat > /etc/containers/containers.conf.d/50-tern.conf <<CONF
[engine]
runtime = "$rt"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
default_subnet = "203.0.113.0/24"
CONF
    echo "== runtime $rt: $(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Version}} cgroups {{.Host.CgroupsVersion}}' | head -1)"
    t_rt=$(date +%s)
    if TERN_NO_BUILD=1 scripts/lab.sh up; then
        "$TERN_BIN_DIR/tern" hosts || true
        group "$rt" "$no_soft_dirty$lazy" $tests
        group "$rt-precopy" "$lazy" $precopy_tests
    else
        echo "== $rt: the lab did not come up"; fail="$fail $rt-lab"
    fi
    # The agents' logs go with the lab: their ends, when this runtime failed.
    case "$fail" in *"$rt"*)
        for h in client1 client2; do
            echo "-- $h agent log (last lines)"; tail -n 40 "$TERN_LAB_STATE/hosts/$h/agent.log" 2>/dev/null || true
        done ;;
    esac
    scripts/lab.sh down || true
    echo "== runtime $rt: $(since $t_rt)"
done
[ -z "$fail" ] || { echo "== failed:$fail"; exit 1; }
echo "== all passed"
CMD
fi

# One boot in a few hangs under emulation before the guest's PID 1 runs
# (seen once in eleven boots: no output, qemu idle). PID 1 writes rc as soon
# as it has mounted the output share, within a minute normally: a guest
# without it after TIER_BOOT_TIMEOUT seconds is killed and booted once
# more, so that a hang costs minutes, not TIER_TIMEOUT.
boot() {
    rm -f "$out/rc"
    # One vCPU thread for both vCPUs (thread=single): with one thread each
    # (MTTCG), QEMU 7.2 let a vCPU run a stale translation of kernel text
    # the other had just patched (a static key's int3, CI, 6.12: "Oops:
    # int3" in kmem_cache_alloc_noprof with the int3 long gone from memory,
    # then a panic). Single-threaded TCG cannot: a write to code discards
    # its translations before another vCPU runs. It costs about a third
    # more time (Podman 5 tier, crun: 550 s against 410 s).
    timeout "${TIER_TIMEOUT:-3600}" qemu-system-x86_64 -accel "${TIER_ACCEL:-tcg,thread=single}" -cpu max -m "${TIER_MEMORY:-4096}" -smp 2 \
        -nographic -no-reboot -nic none \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/sbin/tern-init panic=1 quiet loglevel=3 tern.repo=$repo tern.bin=$bin" \
        -drive "file=$img,format=raw,if=virtio,snapshot=on" \
        -virtfs "local,path=$repo,mount_tag=ternrepo,security_model=none,readonly=on" \
        -virtfs "local,path=$bin,mount_tag=ternbin,security_model=none,readonly=on" \
        -virtfs "local,path=/opt/tern,mount_tag=terntools,security_model=none,readonly=on" \
        -virtfs "local,path=$out,mount_tag=ternout,security_model=none" < /dev/null &
    local qemu=$! waited=0
    while [ ! -e "$out/rc" ] && kill -0 "$qemu" 2>/dev/null; do
        if [ "$waited" -ge "${TIER_BOOT_TIMEOUT:-300}" ]; then
            echo "podman5-tier: the guest did not start its PID 1 within $waited s"
            kill "$qemu"; wait "$qemu" || true
            return 1
        fi
        sleep 5; waited=$(( waited + 5 ))
    done
    wait "$qemu" || true
}
echo "podman5-tier: booting trixie's kernel $kver under qemu (TCG); this takes minutes"
t=$(date +%s)
boot || { echo "podman5-tier: booting again"; boot || true; }
rc=$(cat "$out/rc" 2>/dev/null || echo "no result")
echo "podman5-tier: the VM ran $(since "$t"), $(since "$t0") in all; tests inside exited with: $rc (log: $out/log)"
[ "$rc" = 0 ]
