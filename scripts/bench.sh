#!/usr/bin/env bash
# Benchmarks tern against the manual procedure (podman checkpoint --export,
# copy, podman restore --import) in the lab, in the same run.
#   scripts/bench.sh [--runs N] [--workload NAME]... [--json FILE]
# Needs root; brings the lab up (both hosts get the test image, so neither
# method ships it inside the measurement) and leaves it up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root" >&2; exit 2; }
scripts/install-deps.sh >/dev/null
cargo build --release --bins --locked 2>/dev/null || cargo build --release --bins
LAB_IMAGE_HOSTS="client1 client2" TERN_NO_BUILD=1 scripts/lab.sh up >/dev/null
exec python3 scripts/bench.py "$@"
