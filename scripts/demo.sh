#!/usr/bin/env bash
# The demo, from a fresh Debian 12 machine (as root): installs what is
# missing, builds, brings up the lab, starts a counter container on client1,
# migrates it to client2 and shows it carrying on from where it was; then
# moves Redis while a client on client0 writes to it over one connection,
# printing every answer, the connection carrying on; then moves a container
# holding 256 MiB of memory, which tern copies while it runs. The lab stays
# up afterwards; `scripts/lab.sh down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/demo.sh: run as root (sudo scripts/demo.sh)" >&2
    exit 2
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
lab() { scripts/lab.sh "$@"; }
tern=target/release/tern

say "installing dependencies (idempotent)"
scripts/install-deps.sh
say "building"
cargo build --release --bins
say "bringing up the lab: agent hosts client1 and client2, client machine client0"
TERN_NO_BUILD=1 lab up

say "the hosts"
$tern hosts

say "starting a counter container 'demo1' on client1"
lab podman client1 rm -f -t 0 demo1 >/dev/null 2>&1 || true
lab podman client2 rm -f -t 0 demo1 >/dev/null 2>&1 || true
lab podman client1 run -d --name demo1 localhost/tern-busybox:latest \
    sh -c 'i=0; while true; do echo $i > /count.new; mv /count.new /count; i=$((i+1)); sleep 0.1; done' >/dev/null
sleep 3
echo "counter on client1: $(lab podman client1 exec demo1 cat /count)"
echo "processes on client1:"; lab podman client1 top demo1 pid comm
echo "address on client1: $(lab podman client1 inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' demo1)"

say "checking compatibility (nothing is frozen)"
$tern check demo1 --to client2

say "migrating: tern migrate demo1 --to client2"
echo "counter just before: $(lab podman client1 exec demo1 cat /count)"
$tern migrate demo1 --to client2

say "on client2 now"
for _ in 1 2 3; do
    echo "counter on client2: $(lab podman client2 exec demo1 cat /count)"
    sleep 0.5
done
echo "processes on client2 (same PIDs):"; lab podman client2 top demo1 pid comm
echo "address on client2: $(lab podman client2 inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' demo1)"
echo "on client1: $(lab podman client1 ps -a --filter name=demo1 --format '{{.Names}}' | grep -c . || true) container(s) named demo1"

say "a real service: Redis on the network 'lan', a client on client0 (another machine) writing over one connection"
lab podman client1 rm -f -t 0 kv >/dev/null 2>&1 || true
lab podman client2 rm -f -t 0 kv >/dev/null 2>&1 || true
lab podman client1 image exists localhost/tern-redis:latest ||
    lab podman client1 import /opt/tern/images/tern-redis.tar localhost/tern-redis:latest >/dev/null
lab podman client1 run -d --name kv --network lan localhost/tern-redis:latest \
    redis-server --bind 0.0.0.0 --protected-mode no --save '' --appendonly no >/dev/null
kv=$(lab podman client1 inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' kv)
until lab exec client0 redis-cli -h "$kv" PING 2>/dev/null | grep -q PONG; do sleep 0.2; done
echo "Redis at $kv on client1; on client0: appclient appends 0, 1, 2, ... every 100 ms and prints each answer"
stop=$(mktemp -u /var/tmp/tern-demo-stop.XXXXXX); summary=$(mktemp /var/tmp/tern-demo-client.XXXXXX)
lab exec client0 target/release/appclient redis --addr "$kv:6379" --key demo --interval 100ms \
    --print --until-file "$stop" --out "$summary" &
client=$!
sleep 2
$tern check kv --to client2 | grep -E 'tcp connections|networks'
$tern migrate kv --to client2
sleep 2
touch "$stop"; wait "$client" || true
python3 - "$summary" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"client on client0: {s['acked']} answers over {s['connections']} connection(s), {s['errors']} errors, "
      f"longest wait for an answer {s['longest_gap_ms']} ms")
PY
rm -f "$stop" "$summary"

say "a bigger one: 'hog' holds 256 MiB and rewrites 20 MiB of it every second"
lab podman client1 rm -f -t 0 hog >/dev/null 2>&1 || true
lab podman client2 rm -f -t 0 hog >/dev/null 2>&1 || true
lab podman client1 run -d --name hog localhost/tern-busybox:latest memhog 256 20 >/dev/null
until [ "$(lab podman client1 exec hog cat /count 2>/dev/null || echo 0)" -ge 5 ]; do sleep 0.5; done
$tern ps
say "tern migrate hog --to client2: copies memory while it runs, then freezes for what changed"
echo "ticks just before: $(lab podman client1 exec hog cat /count)"
$tern migrate hog --to client2
echo "ticks on client2: $(lab podman client2 exec hog cat /count)"

say "done; the lab is still up"
echo "try: $tern migrate demo1 --to client1      or: scripts/lab.sh down"
