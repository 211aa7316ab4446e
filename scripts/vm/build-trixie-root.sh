#!/usr/bin/env bash
# The Podman 5 tier's guest root: Debian 13 (trixie) made with debootstrap
# from Debian's packages (scripts/vm/trixie-packages), in ROOT_DIR. Cached:
# made again only when the package list changed (ROOT_DIR/.tern-stamp holds
# its hash) or ROOT_DIR is missing. Prints the versions that matter.
#   scripts/vm/build-trixie-root.sh ROOT_DIR
set -euo pipefail
root=$1
here=$(cd "$(dirname "$0")" && pwd)
list=$here/trixie-packages
mirror=${TERN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
pkgs=$(sed 's/#.*//' "$list" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
want=$(sha256sum < "$list" | cut -d' ' -f1)
if [ -d "$root" ] && [ "$(cat "$root/.tern-stamp" 2>/dev/null)" = "$want" ]; then
    echo "trixie root: $root is current"
    exit 0
fi
echo "trixie root: making $root with debootstrap (trixie: ${pkgs// /, }); this takes minutes"
start=$(date +%s)
new=$root.new
rm -rf "$new"
mkdir -p "$new"
debootstrap --variant=minbase --include="${pkgs// /,}" trixie "$new" "$mirror" > "$root.log" 2>&1 ||
    { tail -n 30 "$root.log" >&2; echo "build-trixie-root.sh: debootstrap failed (log: $root.log)" >&2; exit 1; }
chroot "$new" apt-get clean
rm -rf "$new"/var/lib/apt/lists/* "$new"/var/cache/apt/*.bin
ver() { chroot "$new" dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }
{
    echo "podman $(ver podman)"
    echo "crun $(ver crun)"
    echo "runc $(ver runc)"
    echo "conmon $(ver conmon)"
    echo "netavark $(ver netavark)"
    echo "criu $(ver criu)"
    echo "kernel $(ls "$new"/boot/vmlinuz-* | sed 's|.*/vmlinuz-||')"
} > "$new/.tern-versions"
echo "$want" > "$new/.tern-stamp"
rm -rf "$root"
mv "$new" "$root"
echo "trixie root: made in $(( $(date +%s) - start )) s: $(tr '\n' ',' < "$root/.tern-versions" | sed 's/,$//; s/,/, /g')"
