#!/usr/bin/env bash
# A newcomer's first command (issue 14; docs/BENCHMARKS.md, "newcomer"): a fresh clone of REV
# (default HEAD) of this repository, an empty CARGO_HOME (every crate downloaded from the
# registry), no target directory, then `cargo run --release -- demo`, timed until the console
# answers on http://127.0.0.1:8080/. Run it on a quiet machine, with port 8080 free:
#   bash loadtest/scripts/newcomer.sh [REV]
set -u
REPO=$(git rev-parse --show-toplevel)
REV=${1:-HEAD}
W=$(mktemp -d /tmp/newcomer.XXXX)
git clone -q "$REPO" "$W/vigil" && cd "$W/vigil" && git checkout -q "$REV" || { rm -rf "$W"; exit 1; }
export CARGO_HOME="$W/cargo"
mkdir -p "$CARGO_HOME"
CARGO=$(command -v cargo)
start=$(date +%s.%N)
"$CARGO" run --release -- demo > "$W/demo.log" 2>&1 &
CARGO_PID=$!
until curl -sf -o /dev/null http://127.0.0.1:8080/; do
  sleep 1
  jobs -r | grep -q . || { echo "the demo exited:"; tail -20 "$W/demo.log"; rm -rf "$W"; exit 1; }
done
end=$(date +%s.%N)
echo "rev $(git rev-parse --short HEAD): the console answered after $(python3 -c "print(round($end - $start, 1))") s"
echo "crates downloaded: $(grep -c 'Downloaded ' "$W/demo.log")"
grep -E 'Finished' "$W/demo.log"
# `cargo run` replaces itself with the demo (exec): this pid is the demo now.
kill -TERM "$CARGO_PID"
wait "$CARGO_PID" 2>/dev/null
rm -rf "$W"
