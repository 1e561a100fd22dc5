#!/usr/bin/env bash
# Run from the repository root. Issue 14's harness targets, each against a fresh server and data
# directory, the echo baseline measured in the same run (`--baseline`):
#   (1) capacity: the ward scenario offered 30,000 msg/s, 60 s measured, no consoles, with the
#       objectives throughput>=30000, echo.fraction>=25%, errors==0;
#   (2) 5,000 msg/s for 30 s with 4 consoles timing 200 deteriorating patients' alerts, and the
#       objectives ack.p99<=5ms, alert.p99<=10ms, errors==0.
#   BIN=target/dist/vigil LT=target/dist/vigil-loadtest OUT=/tmp/targets bash loadtest/scripts/targets.sh
# Writes OUT/capacity.{txt,json,html} and OUT/5000.{txt,json,html}, then prints both tables.
# RUNS="5000" runs (2) alone; DURATION1 changes (1)'s measured seconds.
set -u
BIN=${BIN:-target/dist/vigil}; LT=${LT:-target/dist/vigil-loadtest}; OUT=${OUT:-/tmp/targets}
RUNS=${RUNS:-capacity 5000}; DURATION1=${DURATION1:-60}
mkdir -p "$OUT"
# The host's writeback threshold decides whether each table flush stalls the durable ACKs committed
# meanwhile (docs/storage.md, "Host writeback"); every report's machine line names it too.
wb=$(cat /proc/sys/vm/dirty_background_bytes 2>/dev/null || echo 0)
if [ "$wb" = 0 ]; then
  echo "host writeback: vm.dirty_background_ratio $(cat /proc/sys/vm/dirty_background_ratio 2>/dev/null) % (deploy/sysctl.d/90-vigil.conf sets 16 MiB)"
else
  echo "host writeback: vm.dirty_background_bytes $wb"
fi
for run in $RUNS; do
  d=$(mktemp -d)
  printf '[fhir.identifier_systems]\nVIGIL_SIM = "http://vigil.example.org/sim/mrn"\n' > "$d/vigil.toml"
  "$BIN" serve --config "$d/vigil.toml" --data-dir "$d/data" --mllp-addr 127.0.0.1:22575 --http-addr 127.0.0.1:28080 > "$d/log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:28080/healthz >/dev/null && break; sleep 0.2; done
  TOKEN=$("$BIN" token --config "$d/vigil.toml" --data-dir "$d/data" --unit '*')
  H=(--mllp 127.0.0.1:22575 --http 127.0.0.1:28080 --token "$TOKEN" --pid "$PID" --stages --fsync-dir "$d/data" --baseline --quiet)
  case $run in
    capacity) "$LT" run -s loadtest/scenarios/ward.toml "${H[@]}" --rate 30000 --duration "$DURATION1" --consoles 0 \
                --slo 'throughput>=30000,echo.fraction>=25%,errors==0' --json "$OUT/capacity.json" --html "$OUT/capacity.html" > "$OUT/capacity.txt" ;;
    5000) "$LT" run -s loadtest/scenarios/ward.toml "${H[@]}" --rate 5000 \
            --slo 'ack.p99<=5ms,alert.p99<=10ms,errors==0' --json "$OUT/5000.json" --html "$OUT/5000.html" > "$OUT/5000.txt" ;;
  esac
  echo "$run: exit $? (2: an objective not met)"
  kill -TERM "$PID"; wait "$PID"
  rm -rf "$d"
done
for run in $RUNS; do echo "== $run"; cat "$OUT/$run.txt"; done
