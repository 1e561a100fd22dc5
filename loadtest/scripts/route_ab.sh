#!/usr/bin/env bash
# Two release builds alternated under the same harness: BEFORE_BIN/BEFORE_TREE against
# AFTER_BIN/AFTER_TREE (each tree gives its rules/); RATES overrides the offered rates.
# docs/BENCHMARKS.md, issue 14, "Routing without waiting for the actor".
set -u
MLLP_PORT=24575; HTTP_PORT=30080
LT=${LT:-target/release/vigil-loadtest}
run() { local label=$1 bin=$2 tree=$3 rate=$4 d; d=$(mktemp -d)
  (cd "$tree" && exec $bin serve --data-dir "$d/data" --mllp-addr 127.0.0.1:$MLLP_PORT --http-addr 127.0.0.1:$HTTP_PORT > "$d/log" 2>&1) &
  local pid=$!
  for i in $(seq 1 100); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz >/dev/null && break; sleep 0.2; done
  echo "### $label $rate $(uptime | sed 's/.*load/load/')"
  $LT rate --mllp 127.0.0.1:$MLLP_PORT --rate $rate --duration 15 --connections 8 --patients 500 2>&1 | grep -E "^\|"
  curl -s http://127.0.0.1:$HTTP_PORT/metrics | grep -E '^vigil_stage_seconds_(sum|count)\{stage="(route|commit_wait)"' 
  kill -TERM $pid; wait $pid 2>/dev/null; rm -rf "$d"
}
for round in 1 2; do
  for rate in ${RATES:-5000 20000}; do
    run before $BEFORE_BIN $BEFORE_TREE $rate
    run after $AFTER_BIN $AFTER_TREE $rate
  done
done
