#!/usr/bin/env bash
# Fuzzes tern-proto's decoders (the cargo-fuzz crate in fuzz/), one target
# after another, and fails if any of them finds a crash, a hang or a leak.
#
#   scripts/fuzz.sh                   every target, 30 s each
#   scripts/fuzz.sh --time 300        every target, 5 minutes each
#   scripts/fuzz.sh --time 60 delta   one target (see --list)
#
# Targets: frame (every wire message type), delta (records against a small
# base), fileset, tar (the tar walker and the pager), criu_image. Each
# starts from the seeds committed in fuzz/corpus/<target>/ (regenerate them
# with `cargo run -p tern-proto --example fuzz_seeds -- fuzz/corpus`) and
# from what earlier runs found, kept in the fuzz target directory; new
# inputs never go into fuzz/corpus. A crash is written to
# fuzz/artifacts/<target>/: turn it into a regression test in proto/.
#
# Needs nightly (`cargo +nightly fuzz`) when it is installed, else runs
# cargo-fuzz on stable with RUSTC_BOOTSTRAP=1; installs cargo-fuzz when
# missing. Builds into $TERN_FUZZ_TARGET_DIR (default fuzz/target), apart
# from the workspace's own target directory.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(frame delta fileset tar criu_image)
secs=30
chosen=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) secs="${2:?--time needs seconds}"; shift 2 ;;
        --time=*) secs="${1#--time=}"; shift ;;
        --list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "scripts/fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) chosen+=("$1"); shift ;;
    esac
done
case "$secs" in ''|*[!0-9]*) echo "scripts/fuzz.sh: --time takes whole seconds, not $secs" >&2; exit 2 ;; esac
[ ${#chosen[@]} -gt 0 ] || chosen=("${TARGETS[@]}")
for t in "${chosen[@]}"; do
    printf '%s\n' "${TARGETS[@]}" | grep -qx "$t" || { echo "scripts/fuzz.sh: no target $t (--list)" >&2; exit 2; }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz() { cargo +nightly fuzz "$@"; }
else
    # cargo-fuzz needs unstable rustc flags; stable accepts them this way.
    fuzz() { RUSTC_BOOTSTRAP=1 cargo fuzz "$@"; }
fi

tdir="${TERN_FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
# The workspace's settings are not the fuzz build's: its own target
# directory, and no release-profile override leaking in from test.sh
# (cargo fuzz turns on debug assertions and overflow checks itself).
unset CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS
# Safe Rust throughout proto: no sanitizer, twice the executions; panics,
# overflows (debug assertions are on), hangs and memory blow-ups are what
# the targets look for.
build=(--sanitizer none --debug-assertions --target-dir "$tdir")

echo "building the fuzz targets into $tdir"
(cd fuzz && fuzz build "${build[@]}")

summary=()
failed=0
for t in "${chosen[@]}"; do
    work="$tdir/corpus/$t"
    mkdir -p "$work" "fuzz/corpus/$t"
    log="$tdir/fuzz-$t.log"
    start=$(date +%s)
    echo "fuzzing $t for ${secs} s"
    # The first corpus directory receives new inputs: the work one.
    if (cd fuzz && fuzz run "${build[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1) >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed=1
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written|artifact' "$log" | head -20 >&2 || true
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    summary+=("$(printf '%-11s %4d s  %10s execs  %s' "$t" $(($(date +%s) - start)) "${execs:-?}" "$result")")
done

printf '\n%s\n' "fuzz summary (logs in $tdir/fuzz-<target>.log):"
printf '  %s\n' "${summary[@]}"
if [ "$failed" != 0 ]; then
    echo "scripts/fuzz.sh: a fuzzer found a crash; the input is in fuzz/artifacts/<target>/" >&2
    exit 1
fi
