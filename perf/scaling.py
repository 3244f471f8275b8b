#!/usr/bin/env python3
"""Does a second worker add a whole core's worth of capacity? CPU per request of ringway with
workers = 1 at RATE and workers = 2 at 2 x RATE (the same load per worker; oha -q, open loop).

On a 2-core machine the load generator and the upstream must share the relay's cores, so raw
requests/s cannot show 2x. CPU per request can: if 2 workers spend about the same CPU per
request as 1 (no lock, queue or cache-line contention between them), 2 cores serve ~2x what 1
core does. The load generator and the upstream run at nice 19 so that they yield to the relay's
workers instead of preempting them (that preemption, not the relay, is what a plain run
measures).
Usage: perf/scaling.py [RATE]   (default 10000)
"""
import json, os, re, subprocess, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab"))  # perf/lab
import peerbench as pb
import latency as lat

_run = subprocess.run


def _nice_run(cmd, *a, **k):
    return _run(["nice", "-n", "19"] + list(cmd), *a, **k)


def main():
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    pb.require("nginx", "oha", pb.RINGWAY_BIN)
    lat.subprocess.run = _nice_run  # oha at nice 19
    base = open(os.path.join(pb.LAB, "ringway-bench.toml")).read()
    up = subprocess.Popen(["nice", "-n", "19", "nginx", "-c", os.path.join(pb.LAB, "upstream-nginx.conf")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=os.setsid)
    assert pb.wait_port(18080)
    res = {}
    try:
        for workers in (1, 2, 1, 2):
            cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            cfg.write(re.sub(r"workers = \d+", f"workers = {workers}", base)); cfg.close()
            p = subprocess.Popen([os.environ.get("RINGWAY_BIN", "target/release/ringway"), "--config", cfg.name],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=os.setsid)
            assert pb.wait_port(18104, 30)
            lat.oha(18104, rate * workers, 2)
            c0 = pb.cpu_secs(p.pid)
            r = lat.oha(18104, rate * workers, 10)
            c1 = pb.cpu_secs(p.pid)
            n = sum(int(v) for v in r["status"].values())
            us = (c1 - c0) * 1e6 / max(n, 1)
            res.setdefault(workers, []).append(us)
            print(f"workers={workers}", json.dumps({"rate": rate * workers, "requests": n, "cpu_us_per_req": round(us, 2), "p99_us": r["p99_us"]}), flush=True)
            pb.stop(p); os.unlink(cfg.name)
    finally:
        pb.stop(up)
    one = min(res[1]); two = min(res[2])
    print(json.dumps({"cpu_per_req_1_worker": round(one, 2), "cpu_per_req_2_workers": round(two, 2),
                      "capacity_ratio_2_vs_1": round(2 * one / two, 2)}))


if __name__ == "__main__":
    main()
