#!/usr/bin/env python3
"""Sends TCP segment sequences through a namespace whose kernel runs nf_conntrack, and
reports the kernel's verdict on every segment and its final state (Python 3 stdlib).

  ctdiff.py SCENARIOS CLIENT_NS SERVER_NS ROUTER_NS
      CLIENT_NS (10.77.0.2, eth0) and SERVER_NS (10.77.1.2, eth0) drop every TCP segment
      they receive (their stacks never answer); ROUTER_NS forwards between them, with the
      rule `FORWARD -m conntrack --ctstate INVALID -j DROP` first in its FORWARD chain. For
      each scenario of SCENARIOS (tests/data/ct_scenarios.json) the router's table is
      flushed, the segments are sent from the client or server side one at a time, and the
      rule's packet counter says whether the kernel found each invalid. Prints
      {"scenario": {"invalid": [bool, ...], "final": "STATE" or ""}, ...}.
"""
import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000
ISN = {"c": 1000000, "s": 3000000000, "z": 0}
ADDR = {"o": ("10.77.0.2", "10.77.1.2"), "r": ("10.77.1.2", "10.77.0.2")}


def in_ns(ns, fn):
    """Runs fn() with this thread in network namespace ns (sockets keep their namespace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open("/run/netns/" + ns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns " + ns)
        return fn()
    finally:
        libc.setns(own, CLONE_NEWNET)
        os.close(fd)
        os.close(own)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def number(v):
    return (ISN[v[0]] + v[1]) % (1 << 32)


def segment(seg, sport):
    src, dst = ADDR[seg["dir"]]
    sp, dp = (sport, 80) if seg["dir"] == "o" else (80, sport)
    flags = 0
    for c, bit in (("F", 1), ("S", 2), ("R", 4), ("P", 8), ("A", 16)):
        if c in seg["flags"]:
            flags |= bit
    opts = b""
    if "wscale" in seg:
        opts += bytes([1, 3, 3, seg["wscale"]])
    if seg.get("sackperm"):
        opts += bytes([1, 1, 4, 2])
    if "sack" in seg:
        opts += bytes([1, 1, 5, 2 + 8 * len(seg["sack"])])
        for left, right in seg["sack"]:
            opts += struct.pack("!II", number(left), number(right))
    ack = number(seg["ack"]) if "A" in seg["flags"] else 0
    payload = b"x" * seg["len"]
    off = (20 + len(opts)) // 4
    tcp = struct.pack("!HHIIBBHHH", sp, dp, number(seg["seq"]), ack, off << 4, flags,
                      seg.get("win", 64240), 0, 0) + opts + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + tcp


def run(router, *args):
    return subprocess.run(["ip", "netns", "exec", router] + list(args), check=True,
                          capture_output=True, text=True).stdout


def invalid_count(router):
    out = run(router, "iptables", "-L", "FORWARD", "-v", "-x", "-n")
    for line in out.splitlines():
        f = line.split()
        if len(f) > 2 and f[2] == "DROP":
            return int(f[0])
    raise SystemExit("no INVALID rule in the router's FORWARD chain:\n" + out)


def final_state(router, sport):
    out = subprocess.run(["ip", "netns", "exec", router, "conntrack", "-L", "-p", "tcp",
                          "--sport", str(sport)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) > 3 and f[0] == "tcp":
            return f[3]
    return ""


def main(path, client, server, router):
    scenarios = json.load(open(path))["scenarios"]
    # Raw IP sockets in each end's namespace: the kernel routes them out of eth0 (IP_HDRINCL).
    socks = {}
    for d, ns in (("o", client), ("r", server)):
        def mk():
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            return s
        socks[d] = in_ns(ns, mk)
    out = {}
    for i, sc in enumerate(scenarios):
        sport = 40000 + i
        subprocess.run(["ip", "netns", "exec", router, "conntrack", "-F"], capture_output=True)
        verdicts = []
        for seg in sc["segments"]:
            before = invalid_count(router)
            socks[seg["dir"]].sendto(segment(seg, sport), (ADDR[seg["dir"]][1], 0))
            time.sleep(0.02)
            verdicts.append(invalid_count(router) > before)
        out[sc["name"]] = {"invalid": verdicts, "final": final_state(router, sport)}
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
