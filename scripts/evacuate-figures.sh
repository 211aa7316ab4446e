#!/usr/bin/env bash
# Figures for host maintenance (README "Maintenance"): a lab of three agent
# hosts, six memhog containers of mixed sizes (16 to 512 MiB, each dirtying
# 2 MiB/s) and a Redis on the `lan` network with a client on client0
# writing every 10 ms, all on client1; `tern evacuate client1` and then
# `tern return client1`, with --parallel 1 and again with --parallel 3.
# Prints, per run, the wall time, where each container went, its downtime
# and total time, and checks that every container runs exactly once and
# back on client1 with its counter going on. At the end, the Redis
# client's summary (one connection throughout, no error, its longest gap).
#
#   scripts/evacuate-figures.sh [--parallel "1 3"]
#
# Needs root and built binaries (TERN_BIN_DIR, default target/release);
# brings the lab up with three agent hosts and back to two at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[ "$(id -u)" = 0 ] || { echo "evacuate-figures.sh: run as root" >&2; exit 2; }
levels="1 3"
[ "${1:-}" = --parallel ] && levels=$2
bin=${TERN_BIN_DIR:-$TERN_REPO/target/release}
tern="$bin/tern"
names=(ev0 ev1 ev2 ev3 ev4 ev5)
sizes=(16 32 64 128 256 512)
out=$(mktemp -d /var/tmp/evacuate-figures.XXXXXX)

remove_all() {
    for h in client1 client2 client3; do
        for n in "${names[@]}" ev-redis; do scripts/lab.sh podman "$h" rm -f -t 0 "$n" >/dev/null 2>&1 || true; done
    done
}
cleanup() {
    [ -e "$out/stop" ] || touch "$out/stop"
    remove_all
    "$tern" uncordon client1 >/dev/null 2>&1 || true
    TERN_NO_BUILD=1 scripts/lab.sh up --hosts 2 >/dev/null
}

TERN_NO_BUILD=1 scripts/lab.sh up --hosts 3 >/dev/null
trap cleanup EXIT
remove_all
for i in "${!names[@]}"; do
    scripts/lab.sh podman client1 run -d --name "${names[$i]}" "$LAB_IMAGE" memhog "${sizes[$i]}" 2 >/dev/null
done
scripts/lab.sh podman client1 image exists localhost/tern-redis:latest ||
    scripts/lab.sh podman client1 import /opt/tern/images/tern-redis.tar localhost/tern-redis:latest >/dev/null
scripts/lab.sh podman client1 run -d --name ev-redis --network lan localhost/tern-redis:latest \
    redis-server --bind 0.0.0.0 --protected-mode no --save "" --appendonly no >/dev/null
addr=$(scripts/lab.sh podman client1 inspect ev-redis --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}'):6379
for _ in $(seq 50); do
    scripts/lab.sh exec client0 redis-cli -h "${addr%:*}" PING 2>/dev/null | grep -q PONG && break
    sleep 0.2
done
scripts/lab.sh exec client0 "$bin/appclient" redis --addr "$addr" --key evfig --interval 10ms --duration 3600s \
    --until-file "$out/stop" --out "$out/client.json" >/dev/null 2>&1 &
client=$!
sleep 5  # every memhog has written its memory

for p in $levels; do
    for verb in evacuate return; do
        t0=$(date +%s%N)
        "$tern" "$verb" client1 --parallel "$p" --json > "$out/$verb-$p.json" 2> "$out/$verb-$p.err" || true
        t1=$(date +%s%N)
        python3 - "$out/$verb-$p.json" "$verb" "$p" "$(( (t1 - t0) / 1000000 ))" <<'PY'
import json, sys
path, verb, p, wall = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
d = json.load(open(path))
print(f"\n{verb} --parallel {p}: {d.get('outcome')} in {wall / 1000:.1f} s")
print("| container | to | downtime ms | total ms | outcome |")
print("|---|---|---|---|---|")
for m in d.get("moves", []):
    r = m.get("report") or {}
    print(f"| {m['container']} | {m.get('target') or 'client1'} | {r.get('downtime_ms')} | {r.get('total_ms')} | {r.get('outcome') or m.get('outcome')} |")
PY
    done
    # Nothing lost, nothing doubled: each one runs once, on client1, going on.
    for n in "${names[@]}" ev-redis; do
        where=""
        for h in client1 client2 client3; do
            [ "$(scripts/lab.sh podman "$h" inspect "$n" --format '{{.State.Status}}' 2>/dev/null)" = running ] && where="$where $h"
        done
        [ "$where" = " client1" ] || { echo "evacuate-figures.sh: $n runs on:$where" >&2; exit 1; }
    done
    for n in "${names[@]}"; do
        a=$(scripts/lab.sh podman client1 exec "$n" cat /count); sleep 0.3
        b=$(scripts/lab.sh podman client1 exec "$n" cat /count)
        [ "$b" -gt "$a" ] || { echo "evacuate-figures.sh: $n's counter stopped at $a" >&2; exit 1; }
    done
    echo "every container runs once, on client1, its counter going on"
done
touch "$out/stop"
wait "$client" || true
python3 -c "
import json; s = json.load(open('$out/client.json'))
print(f\"\nRedis client on client0: {s['acked']} writes acknowledged, {s['errors']} errors, {s['connections']} connection(s), longest gap {s['longest_gap_ms']} ms\")
"
echo "(JSON documents in $out)"
