#!/usr/bin/env bash
# The benchmark lab, ringway beside its peers, all in one run (the figures of the README's table).
#   perf/lab.sh            # setup (once), build, then every lab measurement
# Everything it uses is in perf/lab/: the upstreams, the peers' configs, the wrk scripts and
# the bench scripts. perf/lab/setup.sh installs the peers and load generators (nginx, haproxy,
# wrk from Debian; LiteLLM from PyPI; Portkey from npm; oha from crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=perf/lab
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
