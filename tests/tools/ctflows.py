#!/usr/bin/env python3
"""Long-lived and short TCP flows for the conntrack namespace tests (Python 3 stdlib).

  ctflows.py serve-id PORT
      answer every connection with this side's address ("10.244.1.3\\n") and close first
      (so the server holds TIME_WAIT and the client may reuse its port at once)
  ctflows.py hold HOST PORT FLOWS SECONDS [NEW_EVERY]
      keep FLOWS connections to an echo server, each sending 64 bytes every 100 ms and
      reading them back; every NEW_EVERY seconds (default 0.25) also open a new connection
      and see 16 bytes echoed. Prints {"max_stall": s, "flows": n, "broken": n,
      "new_ok": n, "new_failed": n, "failures": [[t, why], ...]} (t since start)
  ctflows.py ids HOST PORT COUNT SPORTS [GAP]
      COUNT connections to a serve-id server, source ports cycling over SPORTS (first-last),
      GAP seconds apart (default 0); prints {"ids": [...], "errors": [...]}

Exit status 0 unless the arguments are wrong; the caller judges the JSON.
"""
import json
import socket
import sys
import threading
import time


def serve_id(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(256)
    while True:
        c, _ = srv.accept()
        try:
            c.sendall((c.getsockname()[0] + "\n").encode())
        except OSError:
            pass
        c.close()


def hold(host, port, flows, seconds, new_every):
    t0 = time.time()
    lock = threading.Lock()
    res = {"max_stall": 0.0, "flows": 0, "broken": 0, "new_ok": 0, "new_failed": 0,
           "failures": []}

    def fail(why):
        with lock:
            res["failures"].append([round(time.time() - t0, 3), why])

    def flow(i):
        try:
            c = socket.create_connection((host, port), timeout=10)
        except OSError as e:
            fail("flow %d connect: %s" % (i, e))
            with lock:
                res["broken"] += 1
            return
        c.settimeout(30)
        with lock:
            res["flows"] += 1
        last = time.time()
        msg = bytes([i % 256]) * 64
        try:
            while time.time() - t0 < seconds:
                c.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    d = c.recv(len(msg) - len(got))
                    if not d:
                        raise OSError("closed by peer")
                    got += d
                if got != msg:
                    raise OSError("echo differs")
                now = time.time()
                with lock:
                    res["max_stall"] = max(res["max_stall"], round(now - last, 3))
                last = now
                time.sleep(0.1)
        except OSError as e:
            fail("flow %d: %s" % (i, e))
            with lock:
                res["broken"] += 1
        finally:
            c.close()

    threads = [threading.Thread(target=flow, args=(i,), daemon=True) for i in range(flows)]
    for t in threads:
        t.start()
    while time.time() - t0 < seconds:
        try:
            # 3 s: room for one retransmitted SYN on a loaded machine; a locked-out table
            # refuses every one.
            c = socket.create_connection((host, port), timeout=3)
            c.settimeout(3)
            c.sendall(b"0123456789abcdef")
            got = b""
            while len(got) < 16:
                d = c.recv(16 - len(got))
                if not d:
                    break
                got += d
            c.close()
            if got == b"0123456789abcdef":
                res["new_ok"] += 1
            else:
                raise OSError("short echo")
        except OSError as e:
            res["new_failed"] += 1
            fail("new connection: %s" % e)
        time.sleep(new_every)
    for t in threads:
        t.join(timeout=35)
    print(json.dumps(res))


def ids(host, port, count, sports, gap):
    lo, hi = (int(x) for x in sports.split("-"))
    out = {"ids": [], "errors": []}
    for i in range(count):
        sp = lo + i % (hi - lo + 1)
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.settimeout(5)
        try:
            c.bind(("0.0.0.0", sp))
            c.connect((host, port))
            data = b""
            while True:
                d = c.recv(64)
                if not d:
                    break
                data += d
            out["ids"].append(data.decode().strip())
        except OSError as e:
            out["errors"].append("port %d: %s" % (sp, e))
        finally:
            c.close()
        if gap:
            time.sleep(gap)
    print(json.dumps(out))


def main(a):
    if len(a) == 2 and a[0] == "serve-id":
        serve_id(int(a[1]))
    elif len(a) in (5, 6) and a[0] == "hold":
        hold(a[1], int(a[2]), int(a[3]), float(a[4]), float(a[5]) if len(a) == 6 else 0.25)
    elif len(a) in (5, 6) and a[0] == "ids":
        ids(a[1], int(a[2]), int(a[3]), a[4], float(a[5]) if len(a) == 6 else 0.0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
