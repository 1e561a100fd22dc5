#!/usr/bin/env bash
# Run from the repository root. Capacity (run (1) of docs/BENCHMARKS.md) with the same binary and two rules
# directories, alternated: OLD_RULES=dir (e.g. `git archive REV rules | tar -x -C /tmp/old`, then /tmp/old/rules).

printf '[fhir.identifier_systems]\nVIGIL_SIM = "http://vigil.example.org/sim/mrn"\n' > /tmp/lt.toml
for round in 1 2; do for which in before after; do
  R=rules; [ $which = before ] && R=${OLD_RULES:?set OLD_RULES to the other rules directory}
  rm -rf /tmp/lt; ./target/release/vigil serve --config /tmp/lt.toml --rules-dir $R --data-dir /tmp/lt --mllp-addr 127.0.0.1:22575 --http-addr 127.0.0.1:28080 > /tmp/lt-server.log 2>&1 &
  PID=$!
  for i in $(seq 1 100); do curl -sf http://127.0.0.1:28080/healthz >/dev/null && break; sleep 0.2; done
  TOKEN=$(./target/release/vigil token --config /tmp/lt.toml --data-dir /tmp/lt --unit '*')
  out=$(./target/release/vigil-loadtest run -s loadtest/scenarios/ward.toml --mllp 127.0.0.1:22575 --http 127.0.0.1:28080 --token $TOKEN --pid $PID --stages --rate 30000 --duration 20 --consoles 0 --baseline 2>&1)
  echo "$round $which $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg) | $(echo "$out" | grep -E 'throughput|fraction|echo baseline|errors|server:|^rules ' | tr -s ' ' | tr '\n' ';')"
  kill -TERM $PID; wait $PID
done; done
