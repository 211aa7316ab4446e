#!/usr/bin/env bash
# Builds the root filesystem tarball of tern's test image: busybox and its
# applets, and /bin/memhog (memhog.c: N MiB of written memory dirtied at a
# set rate, with a counter) built static (no image can be pulled here). Lab hosts load it with
# `podman import DIR/tern-busybox.tar localhost/tern-busybox:latest`.
# Rebuilt only when its inputs change.
set -euo pipefail
out=${1:-/opt/tern/images}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
tar_path=$out/tern-busybox.tar
stamp=$out/.tern-busybox.inputs
inputs=$(sha256sum /bin/busybox "$here/build.sh" "$here/memhog.c" | sha256sum | cut -d' ' -f1)
if [ -f "$tar_path" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
    exit 0
fi
echo "test-image: building $tar_path"
root=$(mktemp -d /var/tmp/tern-image.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root,var}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
gcc -static -O2 -o "$root/bin/memhog" "$here/memhog.c"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
tar --numeric-owner -C "$root" -cf "$tar_path.new" .
mv "$tar_path.new" "$tar_path"
echo "$inputs" > "$stamp"
