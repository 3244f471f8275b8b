#!/usr/bin/env python3
"""What Linux does to connections queued on an SO_REUSEPORT listener that goes away, the
question behind docs/upgrade.md. Loopback only, bounded, no ringway involved.

Two listeners share a port (like an old and a new relay); clients connect and send a byte;
nobody accepts yet, so connections wait in both accept queues. Then the "old" listener is
retired one of three ways, and the "new" one accepts what it can:

  close      close(2) the old listener (what a plain SO_REUSEPORT upgrade does)
  shutdown   shutdown(SHUT_RD) it instead (does it stop new SYNs and keep the queue?)
  handoff    close it while another descriptor of the same socket stays open (what
             `ringway --takeover` does: the socket lives on in the new process)

For each: how many clients the new listener answered, how many were reset or refused.
With --migrate it first sets net.ipv4.tcp_migrate_req = 1 (kernel >= 5.14) - run that inside
a private network namespace so the host keeps its setting:

    unshare -n sh -c 'ip link set lo up && python3 perf/reuseport_close.py --migrate'
"""

import errno
import os
import socket
import sys
import time

CLIENTS = 200


def listener(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    return s


def trial(how):
    old = listener(0)
    port = old.getsockname()[1]
    new = listener(port)
    keep = os.dup(old.fileno()) if how == "handoff" else None
    clients = []
    for _ in range(CLIENTS):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"x")
        clients.append(c)
    # After the old listener is retired, more clients come: where do they go?
    if how == "shutdown":
        old.shutdown(socket.SHUT_RD)
    else:
        old.close()
    late = []
    for _ in range(CLIENTS // 4):
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"x")
            late.append(c)
        except OSError as e:
            late.append(e)
    time.sleep(0.2)
    new.setblocking(False)
    accepted = 0
    sources = [new]
    if keep is not None:
        sources.append(socket.socket(fileno=keep))
    for s in sources:
        s.setblocking(False)
        while True:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                break
            accepted += 1
            conn.setblocking(True)
            conn.settimeout(1)
            try:
                if conn.recv(1) == b"x":
                    conn.sendall(b"y")
            except OSError:
                pass
            conn.close()
    reset = refused = answered = 0
    for c in clients + late:
        if isinstance(c, OSError):
            refused += 1
            continue
        c.settimeout(1)
        try:
            if c.recv(1) == b"y":
                answered += 1
        except ConnectionResetError:
            reset += 1
        except OSError:
            pass
        c.close()
    for s in sources:
        s.close()
    if how == "shutdown":
        try:
            old.close()
        except OSError:
            pass
    return reset, refused, answered


def main():
    if "--migrate" in sys.argv:
        with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
            f.write("1")
    with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
        migrate = f.read().strip()
    print(f"kernel {os.uname().release}, net.ipv4.tcp_migrate_req = {migrate}")
    print(f"{CLIENTS} clients queued, then {CLIENTS // 4} more after the old listener is retired")
    for how in ("close", "shutdown", "handoff"):
        reset, refused, answered = trial(how)
        print(f"  {how:9} answered {answered:4}  reset {reset:4}  refused {refused:3}")


if __name__ == "__main__":
    try:
        main()
    except PermissionError as e:
        print(f"cannot set tcp_migrate_req: {e}", file=sys.stderr)
        sys.exit(errno.EPERM)
