#!/usr/bin/env bash
# Rolling evaluation of a demo workspace (run `make demo` first): one DSIE per period cutoff,
# the w/o-DSIE track (its own round 0, trained and served without persona or long-term
# context), the w/o-group-identity track (its own round 0, without the persona) and the w/o-KL
# track, then every period scored with the models as they stood before it.
set -euo pipefail
WORK=${WORK:-coea-work}
COEA=${COEA:-coea}
start=$(date +%s)
export COEA_CPU_THREADS=${COEA_CPU_THREADS:-2}  # the steps run one at a time
step() { echo "== coea $1 ($(( $(date +%s) - start )) s)" >&2; "$COEA" "$@" --work "$WORK" >/dev/null; }

test_period=$(python3 -c "import json; print(json.load(open('$WORK/data/dataset.json'))['test_period'])")
for k in $(seq 1 $((test_period - 1))); do
  step train-dsie --cutoff "$k"
done
step pco-round --rounds "$test_period" --track nodsie --no-dsie
step pco-round --rounds "$test_period" --track nopersona --no-persona
step pco-round --rounds $((test_period - 1)) --track nokl --no-kl  # from the main round 0
"$COEA" evaluate --rolling --work "$WORK"         # prints the rolling report
echo "rolling evaluation finished in $(( $(date +%s) - start )) s" >&2
