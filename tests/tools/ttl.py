#!/usr/bin/env python3
"""Sends one UDP datagram with a given TTL and reports the ICMP error it brings back
(Python 3 stdlib; the errors come through IP_RECVERR, as traceroute's UDP probes see them).

  ttl.py HOST PORT TTL

Prints one JSON line {"ok": bool, "type": t, "code": c, "from": "a.b.c.d", "error": ...};
exits 0 only if an ICMP error about the datagram came back within 5 s.
"""
import json
import select
import socket
import struct
import sys

IP_RECVERR = 11
SO_EE_ORIGIN_ICMP = 2


def main(host, port, ttl):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.connect((host, port))
    s.setblocking(False)
    for _ in range(3):
        try:
            s.send(b"probe")
        except OSError:
            pass  # an earlier probe's error, reported again: the queue still holds it
        # The error queue signals as an exceptional condition (POLLERR).
        select.select([], [], [s], 1.5)
        try:
            _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            continue
        for level, kind, data in anc:
            if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(data) < 16:
                continue
            _errno, origin, typ, code, _pad, _info, _data = struct.unpack("=IBBBBII", data[:16])
            if origin != SO_EE_ORIGIN_ICMP:
                continue
            offender = socket.inet_ntoa(data[20:24]) if len(data) >= 24 else None
            print(json.dumps({"ok": True, "type": typ, "code": code, "from": offender,
                              "error": ""}))
            return 0
    print(json.dumps({"ok": False, "type": None, "code": None, "from": None,
                      "error": "no ICMP error came back"}))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
