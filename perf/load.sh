#!/usr/bin/env bash
# Put a running ringway under load with wrk (non-streaming chat completions by default).
#   perf/load.sh [URL] [DURATION_S] [CONNECTIONS] [MODEL] [TOKEN]
# Defaults target the lab config (perf/lab/ringway-bench.toml) on 127.0.0.1:18104.
set -euo pipefail
URL=${1:-http://127.0.0.1:18104/v1/chat/completions}
DUR=${2:-10}
CONNS=${3:-32}
MODEL=${4:-gpt-4o-mini}
TOKEN=${5:-sk-lab-client-7f3a9c2e5b8d4f1a6e0c9b7d3a5f8e2c}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 2; }
script=$(mktemp --suffix=.lua)
trap 'rm -f "$script"' EXIT
cat > "$script" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
wrk.body = '{"model":"$MODEL","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}'
LUA
exec wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s "$script" "$URL"
