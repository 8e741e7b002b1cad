#!/usr/bin/env python3
"""Long-lived streams for the restart tests and bench/restart (Python 3 stdlib).

  streams.py serve PORT
      TCP and UDP echo on PORT: a TCP connection first gets this side's address
      ("10.244.1.3\\n"), then every byte back; a UDP datagram comes back prefixed with it
  streams.py tcp HOST PORT SECONDS [OUT]
      one connection: 1 KB every 10 ms, each read back whole before the next
  streams.py udp HOST PORT SECONDS [OUT]
      a 64-byte datagram every 10 ms, the replies counted as they come

Both print (and write to OUT once done, if given) {"backend": first reply's address,
"backends": every address seen, "sent": n, "echoed": n, "max_stall": longest time in
seconds between two replies (or from the start to the first, or from the last to the end),
"stalls": [[t, s], ...] (every gap over 0.1 s, t since start), "error": null or why the
stream broke (a reset shows as ConnectionResetError)}. Exit status 0 unless the arguments
are wrong; the caller judges the JSON.
"""
import json
import socket
import sys
import threading
import time

CHUNK = 1024
EVERY = 0.01


def serve(port):
    def tcp():
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(64)
        while True:
            c, _ = srv.accept()
            threading.Thread(target=echo, args=(c,), daemon=True).start()

    def echo(c):
        try:
            c.sendall((c.getsockname()[0] + "\n").encode())
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        c.close()

    def udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        while True:
            b, peer = s.recvfrom(65536)
            try:
                me = s.getsockname()[0]
            except OSError:
                me = "?"
            # The address the datagram reached (not 0.0.0.0): from a connected probe socket.
            p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                p.connect(peer)
                me = p.getsockname()[0]
            except OSError:
                pass
            p.close()
            s.sendto(me.encode() + b" " + b, peer)

    threading.Thread(target=udp, daemon=True).start()
    tcp()


class Result:
    def __init__(self):
        self.t0 = time.time()
        self.last = self.t0
        self.r = {"backend": None, "backends": [], "sent": 0, "echoed": 0,
                  "max_stall": 0.0, "stalls": [], "error": None}

    def reply(self, backend=None):
        now = time.time()
        gap = now - self.last
        self.gap(gap, now)
        self.last = now
        self.r["echoed"] += 1
        if backend is not None:
            if self.r["backend"] is None:
                self.r["backend"] = backend
            if backend not in self.r["backends"]:
                self.r["backends"].append(backend)

    def gap(self, gap, now):
        self.r["max_stall"] = max(self.r["max_stall"], round(gap, 3))
        if gap > 0.1:
            self.r["stalls"].append([round(now - gap - self.t0, 3), round(gap, 3)])

    def done(self, out):
        now = time.time()
        self.gap(now - self.last, now)
        text = json.dumps(self.r)
        print(text, flush=True)
        if out:
            with open(out + ".tmp", "w") as f:
                f.write(text)
            import os
            os.rename(out + ".tmp", out)


def tcp(host, port, seconds, out):
    res = Result()
    end = res.t0 + seconds
    try:
        c = socket.create_connection((host, port), timeout=10)
        c.settimeout(10)
        line = b""
        while not line.endswith(b"\n"):
            b = c.recv(64)
            if not b:
                raise ConnectionError("closed before the greeting")
            line += b
        res.reply(line.decode().strip())
        payload = bytes(range(256)) * (CHUNK // 256)
        while time.time() < end:
            c.sendall(payload)
            res.r["sent"] += 1
            got = 0
            while got < CHUNK:
                b = c.recv(CHUNK - got)
                if not b:
                    raise ConnectionError("closed by the peer")
                got += len(b)
            res.reply()
            time.sleep(EVERY)
        c.close()
    except Exception as e:  # noqa: BLE001 - any failure is the result
        res.r["error"] = "%s: %s" % (type(e).__name__, e)
    res.done(out)


def udp(host, port, seconds, out):
    res = Result()
    end = res.t0 + seconds
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    s.setblocking(False)
    seq = 0
    try:
        while time.time() < end:
            s.send(b"%08d" % seq + b"x" * 56)
            res.r["sent"] += 1
            seq += 1
            deadline = time.time() + EVERY
            while True:
                try:
                    b = s.recv(65536)
                    res.reply(b.split(b" ", 1)[0].decode())
                except BlockingIOError:
                    pass
                left = deadline - time.time()
                if left <= 0:
                    break
                time.sleep(min(left, 0.002))
    except Exception as e:  # noqa: BLE001
        res.r["error"] = "%s: %s" % (type(e).__name__, e)
    res.done(out)


def main(a):
    if len(a) == 2 and a[0] == "serve":
        serve(int(a[1]))
    elif len(a) in (4, 5) and a[0] in ("tcp", "udp"):
        f = tcp if a[0] == "tcp" else udp
        f(a[1], int(a[2]), float(a[3]), a[4] if len(a) == 5 else None)
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
