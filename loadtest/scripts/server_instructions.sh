#!/usr/bin/env bash
# Run from the repository root. Instructions the server spends per message (callgrind counts
# them exactly; a noisy shared machine cannot move them): 1,000 messages of warm-up (500
# patients) uninstrumented, then 2,000 at 40 msg/s instrumented (RATE and DURATION change
# that: a rate the server under callgrind cannot keep up with measures it with a backlog).
#   bash loadtest/scripts/server_instructions.sh BIN TREE OUT
# then: callgrind_annotate --inclusive=yes OUT.1 | grep -E 'PROGRAM TOTALS|Hl7Feed::begin|RhaiRules::run'
# (divide by 2,000; time-driven work such as the rules watcher's polls counts per second of
# the run, not per message: subtract `vigil::rules::watch` lines).
set -u
BIN=$1; TREE=$2; OUT=$3
LT=${LT:-$PWD/target/release/vigil-loadtest}
MLLP_PORT=${MLLP_PORT:-23576}; HTTP_PORT=${HTTP_PORT:-29081}
d=$(mktemp -d)
(cd "$TREE" && exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" "$BIN" serve \
  --data-dir "$d/data" --mllp-addr 127.0.0.1:$MLLP_PORT --http-addr 127.0.0.1:$HTTP_PORT > "$d/log" 2>&1) &
for i in $(seq 1 300); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz >/dev/null && break; sleep 0.5; done
"$LT" rate --mllp 127.0.0.1:$MLLP_PORT --rate 100 --duration 10 --connections 8 --patients 500 | grep -E '^\| (acked|errors)'
pid=$(pgrep -f "callgrind.*serve --data-dir $d/data" | head -1)
callgrind_control -i on "$pid" >/dev/null
"$LT" rate --mllp 127.0.0.1:$MLLP_PORT --rate "${RATE:-40}" --duration "${DURATION:-50}" --connections 8 --patients 500 | grep -E '^\| (acked|errors)'
callgrind_control -i off "$pid" >/dev/null
callgrind_control -d "$pid" >/dev/null
kill -TERM "$pid"; sleep 5; kill -9 "$pid" 2>/dev/null; rm -rf "$d"
