#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian 12 machine (as root):
#   1. installs what is missing (scripts/install-deps.sh, idempotent),
#   2. builds the release binaries,
#   3. runs the unit and in-process tests (cargo test --workspace),
#   4. brings the two-host lab up and runs the end-to-end tests against
#      real Podman, runc and CRIU, then takes the lab down.
# Exits non-zero as soon as anything fails.
set -euo pipefail  # pipefail: a failing cargo test fails the script despite tee
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (sudo scripts/test.sh): the lab creates network namespaces and drives podman" >&2
    exit 2
fi

step() { printf '\n=== %s\n' "$*"; }

step "installing dependencies"
scripts/install-deps.sh

step "building"
cargo build --release --bins --locked

log=$(mktemp /var/tmp/tern-test.XXXXXX)
step "unit and in-process tests"
cargo test --workspace --locked 2>&1 | tee -a "$log"

step "end-to-end tests in the two-host lab"
trap 'scripts/lab.sh down >/dev/null 2>&1 || true' EXIT
scripts/lab.sh down >/dev/null 2>&1 || true
TERN_NO_BUILD=1 scripts/lab.sh up
cargo test --locked -p tern-tests --test e2e -- --ignored --test-threads=1 2>&1 | tee -a "$log"

# One closing line over every test binary above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
