#!/usr/bin/env bash
# Run from the repository root. One run of the ward scenario against a fresh server with
# `[store] commit_interval_us = US`, then the server's user and system CPU over the run (from
# /proc/PID/stat) and the batches the committer wrote (the store_write stage's count):
#   BIN=target/dist/vigil US=1000 RATE=5000 OUT=/tmp/ci-1000.json bash loadtest/scripts/commit_interval.sh
# Alternate US=0 and US=1000 (one run after the other) to compare; RATE=30000 for saturation.
set -u
BIN=${BIN:-target/dist/vigil}; LT=${LT:-target/dist/vigil-loadtest}
US=${US:-1000}; RATE=${RATE:-5000}; OUT=${OUT:-/tmp/commit-interval-$US.json}
d=$(mktemp -d)
printf '[fhir.identifier_systems]\nVIGIL_SIM = "http://vigil.example.org/sim/mrn"\n[store]\ncommit_interval_us = %s\n' "$US" > "$d/vigil.toml"
"$BIN" serve --config "$d/vigil.toml" --data-dir "$d/data" --mllp-addr 127.0.0.1:22575 --http-addr 127.0.0.1:28080 > "$d/log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:28080/healthz >/dev/null && break; sleep 0.2; done
TOKEN=$("$BIN" token --config "$d/vigil.toml" --data-dir "$d/data" --unit '*')
before=$(cut -d')' -f2- /proc/$PID/stat)
"$LT" run -s loadtest/scenarios/ward.toml --mllp 127.0.0.1:22575 --http 127.0.0.1:28080 --token "$TOKEN" \
  --pid $PID --stages --rate "$RATE" --consoles 0 --duration 25 --json "$OUT" | grep -E '^(throughput|errors|ack ms)'
after=$(cut -d')' -f2- /proc/$PID/stat)
kill -TERM $PID; wait $PID
python3 - "$OUT" "$before" "$after" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); b, a = sys.argv[2].split(), sys.argv[3].split()
st = {s['name']: s for s in d['stages']}
print("user %.1f s, system %.1f s; batches %d for %d messages" % ((int(a[11]) - int(b[11])) / 100,
      (int(a[12]) - int(b[12])) / 100, st['store_write']['count'], st['commit_wait']['count']))
PY
rm -rf "$d"
