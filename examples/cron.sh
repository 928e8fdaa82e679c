#!/usr/bin/env bash
# Incremental rounds from cron, e.g. weekly:
#   0 3 * * 1  /srv/coea/examples/cron.sh /srv/coea/runs/prod /srv/logs/week-$(date +\%G-\%V).parquet
# New logs become a new period (known users and items keep their ids) and the newest period is
# held out for evaluation, so the round fine-tunes on the period before it. Then one PCO round
# fine-tunes on it and the lists are recomputed. Both state-advancing steps hold the workspace
# lock: an overlapping run exits at once with code 75 and changes nothing. A run killed halfway
# leaves the last completed round intact; the next run redoes the interrupted one.
set -euo pipefail
WORK=$1
NEW_LOG=$2
COEA=${COEA:-coea}

"$COEA" prepare --append "$NEW_LOG" --format table --work "$WORK"
"$COEA" pco-round --work "$WORK"           # exits 0 with "nothing to do" if no new period
"$COEA" recommend --work "$WORK"
