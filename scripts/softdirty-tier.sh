#!/usr/bin/env bash
# The soft-dirty test tier. This machine's kernel has no soft-dirty memory
# tracking, so iterative pre-copy cannot run on it. This script boots
# Debian's stock kernel (6.1, CONFIG_MEM_SOFT_DIRTY=y) under qemu with
# software emulation, the host's root filesystem mounted read-only over 9p
# with a tmpfs overlay, and runs inside it: the lab and the end-to-end tests
# named by TIER_TESTS (default: the pre-copy tests, and PostgreSQL under
# pgbench moved there and back: its server runs as uid 999, which CRIU can
# checkpoint only with CAP_SYS_RESOURCE, which root has in the VM and not
# on the development machine).
# Exits 0 only when the tests inside passed.
#
#   scripts/softdirty-tier.sh            (as root)
#   TIER_TESTS="migrate_counter" scripts/softdirty-tier.sh
#   TIER_CMD=scripts/vm/tier-bench.cmd scripts/softdirty-tier.sh   (the tier's benchmark)
#
# Emulation makes every step many times slower: compare ratios, not times.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "softdirty-tier.sh: run as root" >&2; exit 2; }
repo=$(pwd)

scripts/install-deps.sh --vm
cargo build --release --bins --locked --workspace --exclude tern-agent
cargo build --release --locked -p tern-agent --features fault-injection
# The e2e binary by its path: cargo reports every artifact it built (the
# package's binaries too) in an order that depends on what was cached.
e2e=$(cargo test --release --locked -p tern-tests --test e2e --no-run --message-format=json 2>/dev/null |
      sed -n 's/.*"executable":"\([^"]*\/deps\/e2e-[^"]*\)".*/\1/p' | tail -1)
[ -x "$e2e" ] || { echo "softdirty-tier.sh: could not build the e2e test binary" >&2; exit 1; }

kernel=$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -1)
kver=${kernel#/boot/vmlinuz-}
grep -q '^CONFIG_MEM_SOFT_DIRTY=y' "/boot/config-$kver" || { echo "softdirty-tier.sh: $kernel has no soft-dirty" >&2; exit 1; }
work=/var/lib/tern-vm
mkdir -p "$work"
scripts/vm/build-initramfs.sh "$kver" "$work/initrd.img"
out=$work/out
rm -rf "$out"; mkdir -p "$out"
# Export the root filesystem alone: a non-recursive bind mount holds no
# submounts (/proc, /sys, /run, tmpfs), so 9p sees one device and file IDs
# cannot collide. The repository goes as a share of its own: wherever the
# clone lives (/tmp, /var/tmp, another mount), the VM sees it at its path.
view=$work/rootview
mkdir -p "$view"
mountpoint -q "$view" || mount --bind / "$view"
trap 'umount "$view" 2>/dev/null || true' EXIT

# What runs inside: a check that the tier has what it is for, then the tests
# (TIER_CMD=FILE runs that script instead, for experiments).
# The lab's state lives in the VM's own tmpfs: the repository is the host's,
# seen live over 9p, and a lab on the host may use its .tern at the same time.
cat > "$out/env" <<ENV
export TERN_LAB_STATE=/var/lib/tern-lab/state
export TERN_INVENTORY=/var/lib/tern-lab/state/inventory.toml
ENV
if [ -n "${TIER_CMD:-}" ]; then cp "$TIER_CMD" "$out/cmd"; else cat > "$out/cmd" <<CMD
export TERN_TIMEOUT_SCALE=${TERN_TIMEOUT_SCALE:-10}
criu check --feature mem_dirty_track
TERN_NO_BUILD=1 scripts/lab.sh up
target/release/tern hosts
$e2e --ignored --test-threads=1 --nocapture ${TIER_TESTS:-precopy postgres}
scripts/lab.sh down
CMD
fi

echo "softdirty-tier: booting $kernel under qemu (TCG); this takes minutes"
start=$(date +%s)
# One vCPU thread for both vCPUs (thread=single): with one thread each
# (MTTCG), QEMU 7.2 let a vCPU run a stale translation of kernel text
# the other had just patched (a static key's int3, CI, 6.12: "Oops:
# int3" in kmem_cache_alloc_noprof with the int3 long gone from memory,
# then a panic). Single-threaded TCG cannot: a write to code discards
# its translations before another vCPU runs. It costs time: this tier's
# VM ran 1389 s against 724 s (PostgreSQL's test most of it).
timeout "${TIER_TIMEOUT:-3000}" qemu-system-x86_64 -accel "${TIER_ACCEL:-tcg,thread=single}" -cpu max -m "${TIER_MEMORY:-6144}" -smp 2 \
    -nographic -no-reboot -nic none \
    -kernel "$kernel" -initrd "$work/initrd.img" \
    -append "console=ttyS0 panic=1 quiet loglevel=3 tern.repo=$repo" \
    -virtfs "local,path=$view,mount_tag=hostroot,security_model=none,readonly=on" \
    -virtfs "local,path=$repo,mount_tag=ternrepo,security_model=none,readonly=on" \
    -virtfs "local,path=$out,mount_tag=ternout,security_model=none" || true
rc=$(cat "$out/rc" 2>/dev/null || echo "no result")
echo "softdirty-tier: the VM ran $(( $(date +%s) - start )) s; tests inside exited with: $rc"
[ "$rc" = 0 ]
