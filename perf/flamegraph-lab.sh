#!/usr/bin/env bash
# Reproduce the hot-path flamegraph (docs/PERFORMANCE.md): lab upstream (nginx) on CPU 0, one ringway
# worker on CPU 1 under wrk load, 10 s of perf sampling.
#   perf/flamegraph-lab.sh [OUT.svg]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/flamegraph-hotpath.svg}
LAB=perf/lab
command -v nginx >/dev/null || { echo "nginx not installed (perf/lab/setup.sh installs it)" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf not installed: apt-get install linux-perf" >&2; exit 2; }
cargo build --release -q
# The renderer first: installing it inside the sampling window would profile an idle relay.
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked -q
taskset -c 0 nginx -c "$(realpath $LAB/upstream-nginx.conf)" &
up=$!
taskset -c 1 target/release/ringway --config $LAB/ringway-bench.toml 2>/tmp/ringway-flame.log &
rw=$!
trap 'kill $rw $up 2>/dev/null; nginx -s quit -c "$(realpath $LAB/upstream-nginx.conf)" 2>/dev/null || true' EXIT
sleep 1
taskset -c 0 perf/load.sh http://127.0.0.1:18104/v1/chat/completions 14 32 >/tmp/ringway-flame-wrk.txt &
sleep 2
perf/profile.sh $rw 10 "$OUT"
wait %3 2>/dev/null || true
grep -E "Requests/sec|Latency" /tmp/ringway-flame-wrk.txt || true
