#!/usr/bin/env bash
# Builds the soft-dirty tier's initramfs: busybox, the modules needed to
# mount the host's root over 9p with a tmpfs overlay, and scripts/vm/init.
#   scripts/vm/build-initramfs.sh KERNEL_VERSION OUT_FILE
set -euo pipefail
kver=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
# Load order matters: each needs the ones before (modinfo -F depends).
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay"
tmp=$(mktemp -d /var/tmp/tern-initramfs.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,dev,proc,sys,mnt/lower,mnt/upper,mnt/root,lib/modules}
cp /bin/busybox "$tmp/bin/busybox"
for a in sh mount umount insmod switch_root mkdir cat echo poweroff sleep; do ln -s busybox "$tmp/bin/$a"; done
for m in $MODULES; do
    cp "$(modinfo -k "$kver" -n "$m")" "$tmp/lib/modules/$m.ko"
done
echo "$MODULES" > "$tmp/lib/modules/order"
install -m 755 "$here/init" "$tmp/init"
install -m 755 "$here/stage2.sh" "$tmp/stage2.sh"
(cd "$tmp" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$out.new"
mv "$out.new" "$out"
