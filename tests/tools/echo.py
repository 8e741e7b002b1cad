#!/usr/bin/env python3
"""Echo servers and checking clients for the namespace tests and the demo (Python 3 stdlib).

  echo.py serve-tcp PORT          echo every TCP connection until EOF (threads; runs forever)
  echo.py serve-udp PORT          echo every UDP datagram
  echo.py tcp HOST PORT SIZE      send SIZE random bytes, read the echo, compare byte for byte
  echo.py udp HOST PORT SIZE      one datagram of SIZE random bytes, compare the echo

A client prints one JSON line {"ok": bool, "bytes": n, "seconds": t, "peer": ...} and exits
0 only if the echo came back complete and identical (TCP: no progress for 30 s is a failure).
A server appends "PROTO ADDRESS:PORT" of every peer to the file $ECHO_PEERS when it is set.
"""
import json
import os
import socket
import sys
import threading
import time


PEERS = open(os.environ["ECHO_PEERS"], "a", buffering=1) if os.environ.get("ECHO_PEERS") else None


def note_peer(proto, addr):
    if PEERS:
        PEERS.write("%s %s:%d\n" % (proto, addr[0], addr[1]))


def serve_tcp(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)

    def handle(c):
        with c:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                c.sendall(data)

    while True:
        c, addr = srv.accept()
        note_peer("tcp", addr)
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def serve_udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Room for a burst of many flows' datagrams (root may exceed rmem_max).
    SO_RCVBUFFORCE = 33
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(65535)
        note_peer("udp", addr)
        s.sendto(data, addr)


def report(ok, n, t0, peer, why=""):
    print(json.dumps({"ok": ok, "bytes": n, "seconds": round(time.time() - t0, 4),
                      "peer": peer, "error": why}))
    sys.exit(0 if ok else 1)


def tcp(host, port, size):
    payload = os.urandom(size)
    t0 = time.time()
    try:
        c = socket.create_connection((host, port), timeout=30)
        peer = "%s:%d" % c.getpeername()
        got = bytearray()

        def reader():
            while True:
                d = c.recv(65536)
                if not d:
                    return
                got.extend(d)

        r = threading.Thread(target=reader)
        r.start()
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        r.join(60)
        c.close()
    except OSError as e:
        report(False, 0, t0, None, str(e))
    report(bytes(got) == payload, len(got), t0, peer,
           "" if bytes(got) == payload else "echo differs (%d of %d bytes)" % (len(got), size))


def udp(host, port, size):
    payload = os.urandom(size)
    t0 = time.time()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(5):
        try:
            s.sendto(payload, (host, port))
            data, addr = s.recvfrom(65535)
            report(data == payload, len(data), t0, "%s:%d" % addr,
                   "" if data == payload else "echo differs")
        except socket.timeout:
            continue
        except OSError as e:
            report(False, 0, t0, None, str(e))
    report(False, 0, t0, None, "no echo in 10 s")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve-tcp":
        serve_tcp(int(sys.argv[2]))
    elif cmd == "serve-udp":
        serve_udp(int(sys.argv[2]))
    elif cmd == "tcp":
        tcp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "udp":
        udp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("unknown command " + cmd)
