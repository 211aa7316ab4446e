#!/usr/bin/env bash
# Benchmarks tern against the manual procedure (podman checkpoint --export,
# copy over the same link, podman restore --import) in the lab.
#
#   scripts/bench.sh [--quick] [--runs N] [--methods M,...] [--workload W,...]
#                    [--link L,...] [--compress auto|none|zstd] [--json FILE]
#                    [--chart FILE.png] [--fail-fast] [--pg-seconds S] [--no-cap-check]
#   scripts/bench.sh --from-json FILE [--chart FILE.png]   (report saved rows)
#
#   methods    manual, podman-floor, stop-and-copy, hash-pre-copy, post-copy, hash-post-copy, pre-copy
#              (only where both hosts track soft-dirty memory; skipped with a
#              note otherwise)
#   workloads  idle, 256MiB@0MiB/s, 256MiB@20MiB/s, 256MiB@100MiB/s,
#              1GiB@0MiB/s, 1GiB@20MiB/s, 1GiB@100MiB/s (the default), any
#              NMiB@RMiB/s; when named: redis (redis@NMiB), postgres: real
#              servers on the `lan` network with a client on client0 across
#              the migration (the table adds the client's longest gap)
#   links      unlimited, 1gbit, 100mbit (tbf on both lab hosts' eth0)
#   --quick    256MiB@20MiB/s over 1gbit, every method, 3 runs: a few minutes
#
# TERN_NO_BUILD=1 skips `cargo build` (it runs otherwise, incremental).
# Prints a Markdown table (medians, min..max, tern/manual) on stdout and
# progress on stderr; `scripts/bench.py --help` says more. Needs root; brings
# the lab up (both hosts hold the test image, and the harness imports the
# application images on both, so no image is shipped while measuring) and
# leaves it up, with no bench container and no tbf qdisc left.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root" >&2; exit 2; }

for a in "$@"; do
    case "$a" in -h|--help) exec /usr/bin/python3 scripts/bench.py --help ;; esac
done

from_json=0 want_chart=0
for a in "$@"; do
    case "$a" in
        --from-json|--from-json=*) from_json=1 ;;
        --chart|--chart=*) want_chart=1 ;;
    esac
done

# The chart needs Debian's matplotlib, run by Debian's python (the python3 on
# PATH may be a pyenv build without Debian's packages).
if [ "$want_chart" = 1 ] && ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    echo "bench.sh: installing python3-matplotlib (for --chart)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends python3-matplotlib >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-matplotlib >/dev/null
    }
fi
[ "$from_json" = 1 ] && exec /usr/bin/python3 scripts/bench.py "$@"

scripts/install-deps.sh >/dev/null || { echo "bench.sh: scripts/install-deps.sh failed (run it alone to see why)" >&2; exit 1; }
if [ ! -x target/release/tern ] || [ ! -x target/release/tern-agent ] || [ "${TERN_NO_BUILD:-}" != 1 ]; then
    cargo build --release --bins --locked
fi
LAB_IMAGE_HOSTS="client1 client2" TERN_NO_BUILD=1 scripts/lab.sh up >/dev/null

# Whatever happens to the harness (a crash, Ctrl-C, kill), leave the links
# unlimited and no bench container behind.
cleanup() {
    for h in "${LAB_HOSTS[@]}"; do
        [ -e "/run/netns/$h" ] || continue
        nsenter --net="/run/netns/$h" tc qdisc del dev eth0 root 2>/dev/null || true
        lab_podman "$h" rm -f -t 0 bench1 >/dev/null 2>&1 || true
    done
    rm -rf "$LAB_VAR"/client1/bench "$LAB_VAR"/client2/bench
}
trap cleanup EXIT

# In the background, so that a SIGTERM to this script reaches the harness at
# once (a foreground child would run to its end first); the harness cancels
# a migration under way, unshapes the links and prints what it measured.
/usr/bin/python3 scripts/bench.py "$@" &
child=$!
trap 'kill -INT "$child" 2>/dev/null || true' INT
trap 'kill -TERM "$child" 2>/dev/null || true' TERM HUP
rc=0
while :; do
    if wait "$child"; then rc=0; else rc=$?; fi
    kill -0 "$child" 2>/dev/null || break   # else a signal interrupted wait: the harness is cleaning up
done
exit "$rc"
