# Runs under `sh -e` inside the soft-dirty tier: TIER_CMD=scripts/vm/tier-bench.cmd scripts/softdirty-tier.sh
# (slow: everything runs under emulation). Manual against soft-dirty pre-copy and Podman's own floor,
# in the same run. Results: /var/lib/tern-vm/out/bench.md and bench.json on
# the host; progress in bench.err there.
export TERN_TIMEOUT_SCALE=10
criu check --feature mem_dirty_track
TERN_NO_BUILD=1 scripts/bench.sh --workload idle,256MiB@1MiB/s --link unlimited \
    --methods manual,podman-floor,pre-copy --runs 2 \
    --tern-args "--max-rounds 5 --max-downtime 2s" --json /tern-out/bench.json > /tern-out/bench.md 2> /tern-out/bench.err
scripts/lab.sh down
