#!/usr/bin/env bash
# The benchmark lab, ringway beside its peers, all in one run (figures for the README table).
#   perf/lab.sh            # setup (once), build, then every lab measurement
# Peers and load generators: ../shared/lab/setup.sh (nginx, haproxy, wrk, LiteLLM, Portkey, oha).
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=../shared/lab
bash $LAB/setup.sh
cargo build --release -q
python3 $LAB/peerbench.py direct nginx haproxy portkey litellm ringway
python3 $LAB/latency.py 5000 direct nginx ringway
python3 $LAB/streambench.py chunks nginx ringway
python3 $LAB/streambench.py idle 5000 nginx ringway
