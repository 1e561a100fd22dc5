#!/usr/bin/env bash
# Run from the repository root. BEFORE_TREE: a worktree of the older commit; BEFORE_TARGET and
# AFTER_TARGET: the target directories their release builds went to (absolute; docs/BENCHMARKS.md).
# Issue 12 benchmark (d): the harness at 2,000 and 5,000 msg/s against the server before the
# renovation (fa7ff79) and after (HEAD), alternated, same harness binary, same machine.
set -u
# Ports overridable so that two benchmarks on one machine do not meet.
MLLP_PORT=${MLLP_PORT:-22575}
HTTP_PORT=${HTTP_PORT:-28080}
LT=${AFTER_TARGET:-target}/release/vigil-loadtest
run() { # label binary rate
  local label=$1 bin=$2 rate=$3 d; d=$(mktemp -d)
  (cd "$4" && exec $bin serve --data-dir "$d/data" --mllp-addr 127.0.0.1:$MLLP_PORT --http-addr 127.0.0.1:$HTTP_PORT > "$d/log" 2>&1) &
  local pid=$!
  for i in $(seq 1 100); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz >/dev/null && break; sleep 0.2; done
  echo "### $label $rate"
  $LT rate --mllp 127.0.0.1:$MLLP_PORT --rate $rate --duration 15 --connections 8 --patients 500 2>&1 | grep -E "^\|"
  kill -TERM $pid; wait $pid 2>/dev/null; rm -rf "$d"
}
for round in $(seq 1 "${ROUNDS:-2}"); do   # ROUNDS: alternated rounds (default 2)
  for rate in ${RATES:-2000 5000}; do   # RATES: msg/s, each measured per round
    run before $BEFORE_TARGET/release/vigil $rate $BEFORE_TREE
    run after ${AFTER_TARGET:-target}/release/vigil $rate $PWD
  done
done
