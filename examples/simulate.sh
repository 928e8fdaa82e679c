#!/usr/bin/env bash
# Closed-loop simulation on a demo workspace (run `make demo` first), with content fatigue
# and without it.
set -euo pipefail
WORK=${WORK:-coea-work}
COEA=${COEA:-coea}
start=$(date +%s)
"$COEA" simulate --work "$WORK"
"$COEA" simulate --fatigue 0 --out sim-nofatigue --work "$WORK"
echo "simulations finished in $(( $(date +%s) - start )) s" >&2
