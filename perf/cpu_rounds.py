#!/usr/bin/env python3
"""CPU per request, repeated and split: the lab's peerbench.py runs each relay once, and on this VM
one 10 s window moves a relay's figure by up to 25%, together with nginx's. This runs ROUNDS
rounds of the targets back to back (same wrk load as peerbench: chat.lua, 32 connections) and
prints, per round and as medians, each relay's user and system CPU µs per request and its ratio
to nginx's figure of the same round.

Usage: perf/cpu_rounds.py [ROUNDS] [TARGET ...]   (defaults 5, nginx floor ringway)
A TARGET is a lab peer (nginx, haproxy), `ringway` (the lab's config), `ringway=CONFIG.toml`, or
`floor` (examples/floor_relay: the runtime and kernel cost with none of ringway's own work;
build it first with `cargo build --release --example floor_relay`), or a path to any program
that serves the lab's request on 127.0.0.1:18104 (e.g. a build of ringway or the floor to compare).
The lab's pieces are in perf/lab/; nginx and wrk are needed (perf/lab/setup.sh installs them).
Env: DUR (seconds per measured window, default 10), RINGWAY_BIN.
"""
import os, statistics, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab"))  # perf/lab
import peerbench as pb
import latency_rounds


FLOOR_BIN = os.path.join(pb.ROOT, "target", "release", "examples", "floor_relay")


def relay(t):
    if t == "floor":
        return [FLOOR_BIN], 18104
    if "/" in t and "=" not in t:
        return [t], 18104
    return latency_rounds.relay(t)


def check(targets):
    """Exit with a clear message if a target cannot run here (before any load is started)."""
    for t in targets:
        if t == "floor":
            why = pb.missing(FLOOR_BIN, "build it with `cargo build --release --example floor_relay`")
        elif "/" in t and "=" not in t:
            why = pb.missing(t, "not an executable file")
        else:
            latency_rounds.check([t]); why = None
        if why:
            raise SystemExit(f"{t}: {why}")


def wait_closed(port, timeout=10):
    """Until nothing listens on `port`: a relay still shutting down would take the next one's load."""
    import socket, time
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            time.sleep(0.1)
        except OSError:
            return
    raise SystemExit(f"port {port} still open after {timeout} s")


def user_system(root):
    """utime and stime in seconds of a process tree (nginx forks its worker)."""
    u = s = 0
    for pid in pb.tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            u += int(fields[11]); s += int(fields[12])
        except OSError:
            pass
    return u / pb.HZ, s / pb.HZ


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    targets = sys.argv[2:] or ["nginx", "floor", "ringway"]
    pb.require("nginx", "wrk")
    check(targets)
    up = pb.start(["nginx", "-c", os.path.join(pb.LAB, "upstream-nginx.conf")], 0)
    assert pb.wait_port(18080)
    per = {t: [] for t in targets}
    ratios = {t: [] for t in targets}
    try:
        for r in range(rounds):
            line, this = [], {}
            for t in targets:
                cmd, port = relay(t)
                p = pb.start(cmd, 1)
                assert pb.wait_port(port, 60), f"{t} did not start"
                pb.wrk(port, "chat.lua", dur=3)
                u0, s0 = user_system(p.pid)
                res = pb.wrk(port, "chat.lua")
                u1, s1 = user_system(p.pid)
                pb.stop(p)
                wait_closed(port)
                n = max(res["total"], 1)
                user, system = (u1 - u0) * 1e6 / n, (s1 - s0) * 1e6 / n
                this[t] = user + system
                per[t].append((user, system))
                line.append(f"{t} {user + system:.1f} (user {user:.1f} sys {system:.1f}, "
                            f"{res['rps']:.0f} req/s)")
            if "nginx" in this:
                for t in targets:
                    ratios[t].append(this[t] / this["nginx"])
                line.append("ratios " + " ".join(f"{t} {ratios[t][-1]:.2f}" for t in targets if t != "nginx"))
            print(f"round {r + 1}: " + ", ".join(line), flush=True)
    finally:
        pb.stop(up)
    for t in targets:
        users = [u for u, _ in per[t]]; systems = [s for _, s in per[t]]
        totals = [u + s for u, s in per[t]]
        ratio = f", ratio to nginx median {statistics.median(ratios[t]):.2f}" if ratios[t] and t != "nginx" else ""
        print(f"median {t}: {statistics.median(totals):.1f} us/req "
              f"(user {statistics.median(users):.1f}, sys {statistics.median(systems):.1f}){ratio}", flush=True)


if __name__ == "__main__":
    main()
