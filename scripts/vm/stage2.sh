#!/bin/sh
# PID 1 of the soft-dirty tier's VM, in the host's root (overlaid): set up
# what a booted Debian would have, run /tern-out/cmd from the repository,
# write its exit code to /tern-out/rc and power off.
repo=$1
mount -t proc proc /proc || echo "stage2: mounting /proc failed"
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
for d in /tmp /run /var/tmp /var/lib/containers /var/lib/tern-lab; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
# The repository, from its own share, at the path it has on the host (the
# test binaries know it): it may sit under one of the tmpfs just mounted, or
# on a host mount the root's view does not include.
mkdir -p "$repo"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose ternrepo "$repo" || { echo "stage2: cannot mount the repository"; /bin/busybox poweroff -f; }
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/netns /run/lock
ip link set lo up
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
cd "$repo" || exit 1
echo "stage2: kernel $(uname -r); running /tern-out/cmd"
echo 1 > /tern-out/rc
[ -f /tern-out/env ] && . /tern-out/env
{ sh -e /tern-out/cmd; echo $? > /tern-out/rc; } 2>&1 | tee /tern-out/log
sync
/bin/busybox poweroff -f
