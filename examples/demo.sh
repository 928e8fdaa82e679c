#!/usr/bin/env bash
# The whole pipeline on the embedded MovieLens-100K, on CPU. Every step is a no-op when its
# inputs and options are unchanged, so rerunning the demo only redoes what changed.
set -euo pipefail
WORK=${WORK:-coea-work}
COEA=${COEA:-coea}
start=$(date +%s)
step() { echo "== coea $1 ($(( $(date +%s) - start )) s)" >&2; "$COEA" "$@" --work "$WORK" >/dev/null; }

step prepare --dataset ml-100k
step tokenize-items
step build-sids
step profile-groups
test_period=$(python3 -c "import json; print(json.load(open('$WORK/data/dataset.json'))['test_period'])")
# pco-round reads no DSIE, so the two DSIE trainings run beside the PCO rounds (one CPU
# thread each): DSIE as of the test period, then as of the period before it, where
# recommend chooses its ranking weights.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
( step train-dsie && step train-dsie --cutoff $((test_period - 1)) ) &
dsie=$!
step pco-round --rounds "$test_period"          # round 0 on period 0, then rounds 1-4
wait "$dsie"
step recommend
"$COEA" evaluate --work "$WORK"                 # prints the report table

echo "demo finished in $(( $(date +%s) - start )) s; artifacts in $WORK/" >&2
