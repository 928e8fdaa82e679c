#!/usr/bin/env bash
# Closed-loop simulation on a demo workspace (run `make demo` first), with content fatigue
# and without it.
set -euo pipefail
WORK=${WORK:-coea-work}
COEA=${COEA:-coea}
start=$(date +%s)
test_period=$(python3 -c "import json; print(json.load(open('$WORK/data/dataset.json'))['test_period'])")
# the w/o-KL track that the simulation compares (a no-op when `make rolling` trained it)
COEA_CPU_THREADS=${COEA_CPU_THREADS:-2} "$COEA" pco-round --rounds $((test_period - 1)) \
  --track nokl --no-kl --work "$WORK" >/dev/null
"$COEA" simulate --work "$WORK"
"$COEA" simulate --fatigue 0 --out sim-nofatigue --work "$WORK"
echo "simulations finished in $(( $(date +%s) - start )) s" >&2
