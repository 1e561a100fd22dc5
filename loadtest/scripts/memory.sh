#!/usr/bin/env bash
# Memory per patient (issue 14; docs/BENCHMARKS.md, "memory per patient"): a release
# `vigil serve` on a fresh data dir, PATIENTS synthetic patients each sent one message by the
# harness, then RSS (from /proc), live actors (`vigil_patient_actors` from /metrics) and the
# store's on-disk size. HEAPTRACK=1 runs the server under heaptrack (the profile's path is
# printed; `heaptrack_print -f FILE` reads it; it sees allocations only in a build on the
# system allocator, the shipped one uses mimalloc). Passivation is off for the run, so every
# patient's actor stays live.
#
#   loadtest/scripts/memory.sh                        # 200,000 patients at 2,000 msg/s
#   PATIENTS=1000000 RATE=4000 loadtest/scripts/memory.sh
#   BIN=/path/to/other/vigil LABEL=before loadtest/scripts/memory.sh
set -u
BIN=${BIN:-target/release/vigil}
LT=${LT:-target/release/vigil-loadtest}
PATIENTS=${PATIENTS:-200000}
RATE=${RATE:-2000}
DURATION=${DURATION:-$(( (PATIENTS + RATE - 1) / RATE ))}
LABEL=${LABEL:-$(git rev-parse --short HEAD 2>/dev/null || echo run)}
MLLP_PORT=${MLLP_PORT:-25575}; HTTP_PORT=${HTTP_PORT:-31080}
D=$(mktemp -d)
printf '[patients]\npassivate_after_secs = 0\n' > "$D/vigil.toml"
WRAP=""; [ "${HEAPTRACK:-0}" = 1 ] && WRAP="heaptrack -o $D/heap"
nice -n 19 ionice -c3 $WRAP "$BIN" serve --data-dir "$D/data" --config "$D/vigil.toml" \
  --mllp-addr 127.0.0.1:$MLLP_PORT --http-addr 127.0.0.1:$HTTP_PORT > "$D/log" 2>&1 &
WRAPPER=$!
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz >/dev/null && break; sleep 0.2; done
# The server's own pid (a child of heaptrack's script when profiled).
EXE=$(readlink -f "$BIN")
PID=$(pgrep -f -- "serve --data-dir $D/data" | while read -r p; do
  [ "$(readlink -f /proc/$p/exe)" = "$EXE" ] && echo "$p"; done | tail -1)
rss() { awk '/^VmRSS/ {print int($2/1024)}' /proc/$PID/status; }
actors() { curl -s http://127.0.0.1:$HTTP_PORT/metrics | awk '/^vigil_patient_actors / {print $2}'; }
IDLE=$(rss)
echo "### $LABEL: $PATIENTS patients, $RATE msg/s for $DURATION s, pid $PID, $(uptime | sed 's/.*load/load/')"
echo "rss_idle_mib $IDLE"
nice -n 19 ionice -c3 "$LT" rate --mllp 127.0.0.1:$MLLP_PORT --rate "$RATE" --duration "$DURATION" \
  --connections 8 --patients "$PATIENTS" 2>&1 | grep -E "^\|"   # totals, latency, ACK codes, errors by kind
sleep 5
LOADED=$(rss); LIVE=$(actors)
echo "rss_loaded_mib $LOADED"
echo "live_actors $LIVE"
[ -n "$LIVE" ] && [ "$LIVE" -gt 0 ] && echo "rss_per_patient_bytes $(( (LOADED - IDLE) * 1048576 / LIVE ))"
grep -E '^(Rss|Pss_Anon|Anonymous|Private_Dirty)' /proc/$PID/smaps_rollup
echo "store_on_disk $(du -sh "$D/data" | cut -f1)"
kill -TERM $PID; wait $WRAPPER 2>/dev/null
[ "${HEAPTRACK:-0}" = 1 ] && echo "heaptrack profile: $(ls "$D"/heap*)" || rm -rf "$D"
