#!/usr/bin/env bash
# Overload with the load harness against a release server (docs/RELIABILITY.md, "Overload,
# release build"): capacity first (the ward scenario offered far more than it carries), then 3x
# and 5x that capacity, open loop, for N seconds each (default 60). Prints, per phase, the
# harness's replies by MSA-1, its errors by kind ("closed": a connection cut before its reply),
# the server's peak RSS; at the end the server's accepted-message counter against the harness's
# AA count, its VmHWM, then kill -9 and `vigil store check` on the data. (The per-message "every
# AA is stored" check is the debug-build test `cargo test --test it overload`, which reads the
# store after kill -9.) Needs: cargo build --release -p vigil -p vigil-loadtest; python3; curl.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
bin=target/release
work=$(mktemp -d /tmp/vigil-overload-XXXXXX)
trap 'kill -9 "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
data="$work/data"
mllp=127.0.0.1:${VIGIL_OVERLOAD_MLLP_PORT:-22675}
http=127.0.0.1:${VIGIL_OVERLOAD_HTTP_PORT:-28175}

start() {
  "$bin/vigil" serve --data-dir "$data" --mllp-addr "$mllp" --http-addr "$http" --rules-dir rules \
    >"$work/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://$http/readyz" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "server not ready"; cat "$work/server.log"; exit 1
}

metric() { curl -fs "http://$http/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

phase() { # name rate duration
  "$bin/vigil-loadtest" run -s loadtest/scenarios/ward.toml --mllp "$mllp" --http "$http" \
    --pid "$pid" --rate "$2" --duration "$3" --warmup 2 --ramp 0 --consoles 0 \
    --json "$work/$1.json" >"$work/$1.out" 2>&1 || true
  python3 - "$work/$1.json" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("server") or {}
a = r.get("ack") or {}
print(f"{sys.argv[2]}: offered {r['offered_rate']:.0f} msg/s, sent {r['sent']}, replies {r['acked']} {r['by_code']}, "
      f"throughput {r['throughput']:.0f} msg/s, errors {r['errors']}, peak RSS {s.get('peak_rss_mib', 0):.0f} MiB, "
      f"ack p50/p99/max {a.get('p50_ms', 0):.0f}/{a.get('p99_ms', 0):.0f}/{a.get('max_ms', 0):.0f} ms")
EOF
}

echo "machine: $(nproc) cores; uptime: $(uptime)"
start
phase capacity 60000 20
capacity=$(python3 -c "import json; print(int(json.load(open('$work/capacity.json'))['throughput']))")
echo "capacity: $capacity msg/s"
phase x3 $((capacity * 3)) "$secs"
echo "uptime: $(uptime)"
phase x5 $((capacity * 5)) "$secs"
echo "uptime: $(uptime)"
aa=$(python3 -c "
import json
print(sum(json.load(open('$work/' + p + '.json'))['by_code'].get('AA', 0) for p in ['capacity', 'x3', 'x5']))")
echo "harness AA in all: $aa; server vigil_messages_accepted_total: $(metric vigil_messages_accepted_total)"
echo "server VmHWM: $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
"$bin/vigil" store check --data-dir "$data" | tail -n 1
