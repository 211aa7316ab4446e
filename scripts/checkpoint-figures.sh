#!/usr/bin/env bash
# Figures for checkpoints a user keeps (README "Checkpoints you keep"), in
# the two-host lab, for a memhog of each size (rewriting 1 MiB/s):
#
#  - `tern checkpoint create --store client2` (dump on client1, ship, check,
#    store) beside Podman's own `checkpoint --leave-running --export` on
#    client1 alone (the dump, no shipping): time and size;
#  - `tern restore --name` of a replica on client2 beside Podman's own
#    `restore --import --name` of the same archive there, and beside a cold
#    start of the same workload (`podman run` until it counts);
#  - a standby every 10 s: bytes on the wire for the first checkpoint
#    (whole) and for the next ones (only what changed).
#
#   scripts/checkpoint-figures.sh [--sizes "64 256"]
#
# Needs root and built binaries (TERN_BIN_DIR, default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[ "$(id -u)" = 0 ] || { echo "checkpoint-figures.sh: run as root" >&2; exit 2; }
sizes="64 256"
[ "${1:-}" = --sizes ] && sizes=$2
bin=${TERN_BIN_DIR:-$TERN_REPO/target/release}
tern="$bin/tern"
work=$(mktemp -d /var/tmp/checkpoint-figures.XXXXXX)
pod() { scripts/lab.sh podman "$@"; }
ms_now() { date +%s%3N; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

names=(cf-hog cf-r1 cf-r2 cf-cold)
cleanup() {
    "$tern" standby stop cf-hog >/dev/null 2>&1 || true
    for h in client1 client2; do
        for n in "${names[@]}"; do pod "$h" rm -f -t 0 "$n" >/dev/null 2>&1 || true; done
    done
    for c in $("$tern" checkpoint ls --json 2>/dev/null | json '"\n".join(c["name"] for c in d["checkpoints"] if c["container"] == "cf-hog")'); do
        "$tern" checkpoint rm "$c" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
TERN_NO_BUILD=1 scripts/lab.sh up >/dev/null
trap cleanup EXIT
cleanup
mkdir -p "$work"

wait_count() { # host name: until the workload counts
    for _ in $(seq 600); do pod "$1" exec "$2" cat /count >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "checkpoint-figures: $2 on $1 never counted" >&2; return 1
}

rows=()
for mib in $sizes; do
    echo "--- memhog $mib MiB" >&2
    pod client1 run -d --name cf-hog "$LAB_IMAGE" memhog "$mib" 1 >/dev/null
    wait_count client1 cf-hog; sleep 2
    # tern: dump on client1, ship to client2's store, check, store.
    t0=$(ms_now)
    "$tern" checkpoint create cf-hog --store client2 --name "cf-$mib" --json >"$work/create.json"
    tern_create=$(( $(ms_now) - t0 ))
    bytes=$(json 'd["checkpoint"]["bytes"]' <"$work/create.json")
    # Podman alone on client1: the dump and its archive, nothing shipped.
    t0=$(ms_now)
    pod client1 container checkpoint --leave-running --compress none --export="$work/manual.tar" cf-hog >/dev/null
    podman_dump=$(( $(ms_now) - t0 ))
    # A replica on client2, by tern and by Podman from the same archive.
    t0=$(ms_now)
    "$tern" restore "cf-$mib" --on client2 --name cf-r1 --json >"$work/restore.json"
    wait_count client2 cf-r1
    tern_restore=$(( $(ms_now) - t0 ))
    t0=$(ms_now)
    pod client2 container restore --import="$work/manual.tar" --name cf-r2 --ignore-static-ip --ignore-static-mac >/dev/null
    wait_count client2 cf-r2
    podman_restore=$(( $(ms_now) - t0 ))
    # A cold start of the same workload on client2.
    t0=$(ms_now)
    pod client2 run -d --name cf-cold "$LAB_IMAGE" memhog "$mib" 1 >/dev/null
    wait_count client2 cf-cold
    cold=$(( $(ms_now) - t0 ))
    for n in cf-r1 cf-r2 cf-cold; do pod client2 rm -f -t 0 "$n" >/dev/null; done
    "$tern" checkpoint rm "cf-$mib" >/dev/null
    rm -f "$work/manual.tar"
    # A standby every 10 s: the first whole, then only what changed.
    "$tern" standby cf-hog --on client2 --every 10s --keep 2 --json >/dev/null
    first="" ; next=()
    for _ in $(seq 120); do
        "$tern" standby ls --json >"$work/sb.json"
        read -r name wire <<<"$(json '" ".join(str(r["last"][k]) if r["last"] else "- -" for r in d["standbys"] if r["container"] == "cf-hog" for k in ("name", "wire_bytes"))' <"$work/sb.json" | tr '\n' ' ')"
        if [ "$name" != "-" ] && [ -n "$name" ]; then
            if [ -z "$first" ]; then first="$name:$wire"; elif [ "${first%%:*}" != "$name" ] && [[ " ${next[*]} " != *" $name:"* ]]; then next+=("$name:$wire"); fi
        fi
        [ "${#next[@]}" -ge 2 ] && break
        sleep 1
    done
    "$tern" standby stop cf-hog >/dev/null
    whole=${first#*:}
    incr=$(printf '%s\n' "${next[@]}" | sed 's/.*://' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    pod client1 rm -f -t 0 cf-hog >/dev/null
    for c in $("$tern" checkpoint ls --json | json '"\n".join(c["name"] for c in d["checkpoints"] if c["container"] == "cf-hog")'); do
        "$tern" checkpoint rm "$c" >/dev/null
    done
    rows+=("$mib $bytes $tern_create $podman_dump $tern_restore $podman_restore $cold $whole $incr")
done

printf '\n%-8s %10s %12s %12s %13s %14s %10s %14s %14s\n' memory archive tern-create podman-dump tern-replica podman-replica cold-start standby-whole standby-next
for r in "${rows[@]}"; do
    read -r mib bytes tc pd tr pr cold whole incr <<<"$r"
    mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
    printf '%-8s %9sM %10d ms %10d ms %11d ms %12d ms %8d ms %13sM %13sM\n' "${mib}MiB" "$(mb "$bytes")" \
        "$tc" "$pd" "$tr" "$pr" "$cold" "$(mb "$whole")" "$(mb "$incr")"
done
echo "(tern-create: dump on client1, ship to client2, check, store; podman-dump: the dump alone, nothing shipped;"
echo " replicas and cold start: until the workload counts on client2; standby every 10 s, 1 MiB/s rewritten: bytes on the wire)"
