#!/usr/bin/env bash
# The whole pipeline on the embedded MovieLens-100K, on CPU. Every step is a no-op when its
# inputs and options are unchanged, so rerunning the demo only redoes what changed.
set -euo pipefail
WORK=${WORK:-coea-work}
COEA=${COEA:-coea}
start=$(date +%s)
step() { echo "== coea $1 ($(( $(date +%s) - start )) s)" >&2; "$COEA" "$@" --work "$WORK" >/dev/null; }

# Steps that run alone use both cores; the ones that run side by side one thread each.
export COEA_CPU_THREADS=${COEA_CPU_THREADS:-2}
step prepare --dataset ml-100k ${PERIODS:+--periods "$PERIODS"}   # PERIODS: prepare --periods
step tokenize-items
step build-sids
step profile-groups
test_period=$(python3 -c "import json; print(json.load(open('$WORK/data/dataset.json'))['test_period'])")
# PCO round 0 (backbone pre-training, then both LLMs on period 0) reads no DSIE, so the two
# DSIE trainings run beside it: DSIE as of the test period, then as of the period before it,
# where recommend chooses its ranking weights.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
( COEA_CPU_THREADS=1 step train-dsie && COEA_CPU_THREADS=1 step train-dsie --cutoff $((test_period - 1)) ) &
dsie=$!
COEA_CPU_THREADS=1 step pco-round                      # round 0 on period 0
wait "$dsie"
step pco-round --rounds $((test_period - 1))           # rounds 1 to 4, one per period
step recommend
"$COEA" evaluate --work "$WORK"                 # prints the report table

echo "demo finished in $(( $(date +%s) - start )) s; artifacts in $WORK/" >&2
