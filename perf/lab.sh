#!/usr/bin/env bash
# The benchmark lab, ringway beside its peers, all in one run (figures for the README table).
#   perf/lab.sh            # setup (once), build, then every lab measurement
# Peers and load generators: ../shared/lab/setup.sh (nginx, haproxy, wrk, LiteLLM, Portkey, oha).
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=../shared/lab
bash $LAB/setup.sh
cargo build --release -q
cargo build --release -q --example floor_relay
python3 $LAB/peerbench.py direct nginx haproxy portkey litellm ringway
python3 $LAB/latency.py 5000 direct nginx ringway
python3 $LAB/streambench.py chunks nginx ringway
python3 $LAB/streambench.py idle 5000 nginx ringway
# CPU per request in rounds, with the floor (a monoio relay doing none of ringway's own work):
# how far ringway is from what its runtime and the kernel cost at the least.
python3 perf/cpu_rounds.py 5 nginx floor ringway
