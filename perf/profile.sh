#!/usr/bin/env bash
# CPU profile of a running ringway as a flamegraph SVG.
#   perf/profile.sh PID [SECONDS] [OUT.svg]
# Works on a production instance too: it only attaches `perf record` to the process for the
# given time (sampling at 999 Hz adds a few percent CPU while it runs). Uses the software
# `cpu-clock` event, which works where hardware counters are not exposed (VMs, containers).
# Needs: perf (Debian: linux-perf) and inferno (cargo install inferno). Release builds keep
# line-level debug info (profile.release.debug = 1), so frames have names.
set -euo pipefail
PID=${1:?usage: perf/profile.sh PID [SECONDS] [OUT.svg]}
SECS=${2:-10}
OUT=${3:-ringway-flamegraph.svg}
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 2; }
if ! command -v inferno-flamegraph >/dev/null; then
  echo "installing inferno (flamegraph renderer) with cargo..." >&2
  cargo install inferno --locked -q
fi
data=$(mktemp --suffix=.perf.data)
trap 'rm -f "$data"' EXIT
perf record -e cpu-clock -F 999 -g --call-graph dwarf,16384 -p "$PID" -o "$data" -- sleep "$SECS" 2>/dev/null
# Render to a temporary file, so a failed run leaves an existing OUT as it was.
svg=$(mktemp --suffix=.svg)
trap 'rm -f "$data" "$svg"' EXIT
perf script -i "$data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "ringway (pid $PID, ${SECS}s)" > "$svg"
mv "$svg" "$OUT"
echo "wrote $OUT"
