#!/usr/bin/env bash
# One week of the production loop, e.g. from cron:
#   0 3 * * 1  /srv/coea/examples/cron.sh /srv/coea/runs/prod /srv/logs/week-$(date +\%G-\%V).parquet
# Optional third and fourth arguments: the week's new items and users tables (as for
# `prepare --items/--users`); COEA_CONFIG=FILE.toml passes the project's settings to every step.
#
# The new logs become a new period (known users and items keep their ids; new ones are added),
# then every artifact is brought up to date in pipeline order: new items get embeddings and
# SIDs from the trained quantiser (existing SIDs never change), new users get groups (existing
# groups and personas stay), DSIE is fine-tuned from last week's weights with rows for the new
# items, one PCO round fine-tunes both LLMs on the week before the newest, and the lists are
# recomputed as of the end of the log. Each step is a no-op when its inputs are unchanged, so a
# rerun after a failure redoes only what is missing.
#
# Exit codes: 0 done; 2 bad input (the message names the file, row or column, or the command
# that brings an artifact up to date); 75 another run holds the workspace lock; 1 internal
# error. Every line on stderr carries a UTC timestamp; the failing step is named.
set -uo pipefail
WORK=${1:?usage: cron.sh WORKSPACE NEW_LOG [NEW_ITEMS [NEW_USERS]]}
NEW_LOG=${2:?usage: cron.sh WORKSPACE NEW_LOG [NEW_ITEMS [NEW_USERS]]}
NEW_ITEMS=${3:-}
NEW_USERS=${4:-}
COEA=${COEA:-coea}
DSIE_EPOCHS=${DSIE_EPOCHS:-3}
CONFIG=()
[ -n "${COEA_CONFIG:-}" ] && CONFIG=(--config "$COEA_CONFIG")

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) cron: $*" >&2; }
step() {
  log "coea $*"
  "$COEA" "$@" "${CONFIG[@]}" --work "$WORK" \
    2> >(while IFS= read -r line; do  # coea stamps its own lines when piped
           if [[ $line =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T ]]; then echo "$line" >&2; else log "  $line"; fi
         done) >/dev/null
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "FAILED with exit $rc: coea $* (see README, 'When a week fails')"
    exit "$rc"
  fi
}

log "week $NEW_LOG into $WORK"
append=(prepare --append "$NEW_LOG" --format table)
[ -n "$NEW_ITEMS" ] && append+=(--items "$NEW_ITEMS")
[ -n "$NEW_USERS" ] && append+=(--users "$NEW_USERS")
step "${append[@]}"
step tokenize-items --fold-in all  # the newest week is no test: new items use it
step build-sids
step profile-groups
step train-dsie --init-from dsie --epochs "$DSIE_EPOCHS"
step pco-round                  # exits 0 with "nothing to do" if no new period
step recommend --latest
log "done"
