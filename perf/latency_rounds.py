#!/usr/bin/env python3
"""Added p99 at a fixed rate, repeated: the lab's latency.py measures direct once and each relay
once, so on a noisy VM one 10 s window decides the figure. This runs ROUNDS rounds of
direct, nginx, ringway back to back (each relay's added p99 taken against the direct run of its
own round) and prints every round plus the medians. Uses the lab's own pieces (perf/lab/).
Usage: perf/latency_rounds.py [RATE] [ROUNDS] [TARGET ...]   (defaults 5000, 5, nginx ringway)
A TARGET is a lab peer (nginx, haproxy), `ringway` (the lab's config), or `ringway=CONFIG.toml`
(ringway with another config on the lab's port 18104, e.g. one that sets busy_poll).
"""
import os, statistics, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab"))  # perf/lab
import peerbench as pb
import latency as lat


def relay(t):
    if t == "ringway" or t.startswith("ringway="):
        return pb.ringway_cmd(t.split("=", 1)[1] if "=" in t else None), 18104
    cmd, port, _ = pb.TARGETS[t]
    return cmd, port


def check(targets):
    """Exit with a clear message if a target cannot run here (before any load is started)."""
    for t in targets:
        if t.startswith("ringway="):
            config = t.split("=", 1)[1]
            why = pb.missing(pb.RINGWAY_BIN) or (None if os.path.exists(config) else f"config {config} not found")
        else:
            why = pb.target_missing(t)
        if why:
            raise SystemExit(f"{t}: {why}")


def main():
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    targets = sys.argv[3:] or ["nginx", "ringway"]
    pb.require("nginx", "oha")
    check(targets)
    up = pb.start(["nginx", "-c", os.path.join(pb.LAB, "upstream-nginx.conf")], 0)
    assert pb.wait_port(18080)
    added = {t: [] for t in targets}
    try:
        for r in range(rounds):
            direct = lat.oha(18080, rate)["p99_us"]
            line = [f"round {r + 1}: direct p99 {direct} us"]
            for t in targets:
                cmd, port = relay(t)
                p = pb.start(cmd, 1)
                assert pb.wait_port(port, 30), f"{t} did not start"
                lat.oha(port, rate, 3)
                cpu0, wall0 = pb.cpu_secs(p.pid), time.monotonic()
                res = lat.oha(port, rate, 10)
                busy = (pb.cpu_secs(p.pid) - cpu0) / (time.monotonic() - wall0)
                pb.stop(p)
                added[t].append(res["p99_us"] - direct)
                line.append(f"{t} p50 {res['p50_us']} p99 {res['p99_us']} us "
                            f"(+{res['p99_us'] - direct}, relay CPU {busy:.0%})")
            print(", ".join(line), flush=True)
    finally:
        pb.stop(up)
    med = {t: statistics.median(v) for t, v in added.items()}
    print("median added p99: " + ", ".join(f"{t} +{m} us" for t, m in med.items()), flush=True)


if __name__ == "__main__":
    main()
