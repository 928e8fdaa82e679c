#!/usr/bin/env bash
# The whole pipeline on the embedded MovieLens-100K, on CPU.
set -euo pipefail
WORK=${WORK:-coea-work}
COEA=${COEA:-coea}
start=$(date +%s)

"$COEA" prepare --dataset ml-100k --work "$WORK"

echo "demo finished in $(( $(date +%s) - start )) s; artifacts in $WORK/" >&2
