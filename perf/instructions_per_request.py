#!/usr/bin/env python3
"""Instructions per relayed request, counted by callgrind: repeatable run to run, whatever else
the machine is doing, and user space only (the kernel's share, most of a relay's CPU, is not
counted). For comparing builds of ringway's own code.

Usage: perf/instructions_per_request.py BINARY[=CONFIG] ...   (env N: requests, default 3000)
Each binary runs under valgrind with CONFIG (default perf/lab/ringway-bench.toml) (epoll driver: valgrind does
not know io_uring), behind the lab's nginx upstream; after 300 warm-up requests the counters
are zeroed, N requests are sent one after another on one keep-alive connection, and the count
is divided by N. Needs valgrind and nginx.
"""
import os, socket, subprocess, sys, time, glob
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}'
REQ = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
       b"Authorization: Bearer sk-lab-client-7f3a9c2e5b8d4f1a6e0c9b7d3a5f8e2c\r\n"
       b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY
HERE = os.path.dirname(os.path.abspath(__file__))
CONF = os.path.join(HERE, "lab", "ringway-bench.toml")
N = int(os.environ.get("N", "3000"))

def wait_port(p, t=60):
    t0 = time.time()
    while time.time() - t0 < t:
        try:
            socket.create_connection(("127.0.0.1", p), 0.5).close(); return True
        except OSError:
            time.sleep(0.2)
    return False

def roundtrips(n):
    s = socket.create_connection(("127.0.0.1", 18104)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for _ in range(n):
        s.sendall(REQ)
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                head = buf[:i].lower()
                j = head.find(b"content-length: ")
                l = int(head[j+16:].split(b"\r\n")[0])
                if len(buf) >= i + 4 + l:
                    assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
                    buf = buf[i+4+l:]; break
            d = s.recv(65536); assert d; buf += d
    s.close()

def measure(target):
    binary, _, conf = target.partition("=")
    conf = conf or CONF
    out = f"/tmp/ringway-cg.{os.path.basename(binary)}.{os.getpid()}"
    for f in glob.glob(out + "*"): os.remove(f)
    env = dict(os.environ, RINGWAY_FORCE_EPOLL="1")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "--config", conf],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port(18104), "relay did not start"
        roundtrips(300)  # warm
        subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
        roundtrips(N)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        p.terminate(); p.wait()
    dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
    total = None
    for line in open(dumps[-1]):
        if line.startswith("summary:") or line.startswith("totals:"):
            total = int(line.split()[1])
    return total / N

up = subprocess.Popen(["nginx", "-c", os.path.join(HERE, "lab", "upstream-nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    assert wait_port(18080)
    for t in sys.argv[1:]:
        print(f"{t}: {measure(t):.0f} instructions/request", flush=True)
finally:
    up.terminate(); up.wait()
