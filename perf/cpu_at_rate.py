#!/usr/bin/env python3
"""CPU per request at a fixed request rate (open loop, oha -q), relay on CPU 1.

peerbench.py drives every relay to saturation; there the relay and the load side both run at
100% and "CPU per request" is mostly 1/throughput of the whole setup. At a fixed rate below
saturation each relay's CPU time per request is its own cost. Uses the lab's pieces (perf/lab/).
Usage: perf/cpu_at_rate.py RATE [target ...]   (targets: nginx haproxy ringway)
"""
import json, os, subprocess, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab"))  # perf/lab
import peerbench as pb
import latency as lat

def main():
    rate = int(sys.argv[1]); targets = sys.argv[2:] or ["nginx", "ringway"]
    pb.require("nginx", "oha")
    up = pb.start(["nginx", "-c", os.path.join(pb.LAB, "upstream-nginx.conf")], 0)
    assert pb.wait_port(18080)
    try:
        for t in targets:
            why = pb.target_missing(t)
            if why:
                print(t, "skipped:", why, flush=True); continue
            if t == "ringway":
                cmd = pb.ringway_cmd(); port = 18104
            else:
                cmd, port, _ = pb.TARGETS[t]
            p = pb.start(cmd, 1)
            if not pb.wait_port(port, 90):
                print(t, "did not start"); pb.stop(p); continue
            lat.oha(port, rate, 2)
            c0 = pb.cpu_secs(p.pid)
            r = lat.oha(port, rate, 10)
            c1 = pb.cpu_secs(p.pid)
            n = sum(int(v) for v in r["status"].values())
            r["cpu_us_per_req"] = round((c1 - c0) * 1e6 / max(n, 1), 2)
            r["requests"] = n
            print(t, json.dumps(r), flush=True)
            pb.stop(p)
    finally:
        pb.stop(up)

if __name__ == "__main__":
    main()
