#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian 12 machine (as root):
#   1. installs what is missing (scripts/install-deps.sh, idempotent),
#   2. checks the code's health (cargo fmt --check, cargo clippy with
#      warnings as errors, no import cycles between modules) and builds the release binaries, with overflow
#      checks on for everything this script builds and runs, and fuzzes
#      the wire decoders (scripts/fuzz.sh, 20 s per target: TERN_FUZZ_SECS),
#   3. runs the unit and in-process tests (cargo test --workspace),
#   4. brings the two-host lab up and runs the end-to-end tests against
#      real Podman, runc and CRIU, then takes the lab down,
#   5. runs the soft-dirty tier (scripts/softdirty-tier.sh): Debian's stock
#      kernel under qemu, where iterative pre-copy is possible, and the
#      pre-copy end-to-end test inside it,
#   6. runs the Podman 5 tier (scripts/podman5-tier.sh) with crun only:
#      Debian 13's Podman 5, crun, CRIU and kernel under qemu, cgroups v2,
#      and a few end-to-end tests inside (runc there is by hand:
#      `scripts/podman5-tier.sh` runs both runtimes).
# Exits non-zero as soon as anything fails.
#
#   TERN_SKIP_TIER=1 scripts/test.sh      skips steps 5 and 6 (minutes under emulation)
#   TERN_SKIP_PODMAN5=1 scripts/test.sh   skips step 6 only
set -euo pipefail  # pipefail: a failing cargo test fails the script despite tee
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (sudo scripts/test.sh): the lab creates network namespaces and drives podman" >&2
    exit 2
fi

step() { printf '\n=== %s\n' "$*"; }
started=$(date +%s)

step "installing dependencies"
scripts/install-deps.sh

# Arithmetic that overflows panics in every binary the tests run (the
# soft-dirty tier inherits this and builds the same way).
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true

step "code health: formatting and lints"
cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 ||
    rustup component add rustfmt clippy
cargo fmt --all --check || { echo "scripts/test.sh: run cargo fmt --all" >&2; exit 1; }
cargo clippy --workspace --all-targets --locked -- -D warnings
# No module of any crate uses another that uses it back.
python3 scripts/check-cycles.py >/dev/null || { python3 scripts/check-cycles.py | tail -20; exit 1; }

step "code health: fuzzing the wire decoders (${TERN_FUZZ_SECS:-20} s per target)"
# Its own target directory (fuzz/target); a crash fails the run, its input
# left in fuzz/artifacts/.
scripts/fuzz.sh --time "${TERN_FUZZ_SECS:-20}"

step "building"
# With the agent's test faults ([faults] in its config, faults.rs): the
# end-to-end tests inject failures with them.
# (-p: `--features tern-agent/...` from the workspace would name the
# agent's dev-dependency on itself, and enable nothing.)
cargo build --release --bins --locked --workspace --exclude tern-agent
cargo build --release --locked -p tern-agent --features fault-injection

log=$(mktemp /var/tmp/tern-test.XXXXXX)
# Release profile throughout: the tests reuse the dependencies just built.
step "unit and in-process tests"
cargo test --release --workspace --locked 2>&1 | tee -a "$log"

step "end-to-end tests in the two-host lab"
trap 'scripts/lab.sh down >/dev/null 2>&1 || true' EXIT
scripts/lab.sh down >/dev/null 2>&1 || true
TERN_NO_BUILD=1 scripts/lab.sh up
# The soft-dirty test runs in step 5: this kernel has no soft-dirty.
cargo test --release --locked -p tern-tests --test e2e -- --ignored --test-threads=1 --skip precopy_ 2>&1 | tee -a "$log"
scripts/lab.sh down >/dev/null
trap - EXIT

if [ "${TERN_SKIP_TIER:-}" = 1 ]; then
    step "soft-dirty tier SKIPPED (TERN_SKIP_TIER=1)"
else
    step "soft-dirty tier: pre-copy end to end under Debian's stock kernel (qemu)"
    scripts/softdirty-tier.sh 2>&1 | tee -a "$log"
fi

if [ "${TERN_SKIP_TIER:-}" = 1 ] || [ "${TERN_SKIP_PODMAN5:-}" = 1 ]; then
    step "Podman 5 tier SKIPPED (TERN_SKIP_TIER=1 or TERN_SKIP_PODMAN5=1)"
else
    # crun only: Podman 5's usual runtime, and runc is what steps 4 and 5
    # run; runc here too would add about 10 min (README, Podman 5 tier).
    step "Podman 5 tier: Debian 13's Podman 5 with crun, cgroups v2 (qemu)"
    # TIER_TIMEOUT: three times its run here (10 min), so that a guest
    # hung under emulation fails CI within its 90 minutes.
    TIER_RUNTIMES=${TIER_RUNTIMES:-crun} TIER_TIMEOUT=${TIER_TIMEOUT:-1800} \
        scripts/podman5-tier.sh 2>&1 | tee -a "$log"
fi

# One closing line over every test binary above.
awk -v secs=$(( $(date +%s) - started )) \
    '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed (%d s)\n", p, f, secs }' "$log"
rm -f "$log"
