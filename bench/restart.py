#!/usr/bin/env python3
"""Restart benchmark: how long streams stall while switchd restarts, and whether any resets.

Builds the two-node topology (scripts/topology), runs the release switchd on both nodes
with their state pinned in a bpffs of its own, serves tests/tools/streams.py on pod-b and
pod-d, and keeps four streams through node1 (1 KB every 10 ms echoed, over TCP: a local
ClusterIP, a remote ClusterIP, a NodePort from the outside client; a 64-byte datagram every
10 ms over a remote UDP ClusterIP). Meanwhile node1's switchd is stopped (SIGKILL, or
SIGTERM) and started again RESTARTS times, GAP seconds apart. A stream's stall for one
restart is the longest gap between two replies that began within 2 s of the signal.
Prints, per stream: max and median stall over the restarts, and resets (RSTs tcpdump saw
in the clients' namespaces); and the restart time (signal to "forwarding" logged).

Run through bench/restart (root). Options: --restarts N (20), --signal KILL|TERM (KILL),
--gap SECONDS (2.0), --json FILE.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWITCHD = os.path.join(ROOT, "target/release/switchd")
STREAMS = os.path.join(ROOT, "tests/tools/streams.py")
FLOWS = [
    ("a", "tcp", "10.96.0.30", "80", "TCP ClusterIP, local backend"),
    ("a", "tcp", "10.96.0.31", "80", "TCP ClusterIP, remote backend"),
    ("ext", "tcp", "198.18.0.1", "30700", "TCP NodePort from outside"),
    ("a", "udp", "10.96.0.31", "53", "UDP ClusterIP, remote backend"),
]


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    ap.add_argument("--gap", type=float, default=2.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    p = "rs%x" % (os.getpid() % 0xfffff)
    work = tempfile.mkdtemp(prefix="nodeswitch-restart-")
    bpf = os.path.join(work, "bpf")
    os.mkdir(bpf)
    procs = []
    daemons = {}
    try:
        sh(os.path.join(ROOT, "scripts/topology"), "up", p)
        sh("mount", "-t", "bpf", "bpf", bpf)
        state1 = os.path.join(work, "node1.toml")
        with open(state1, "w") as f:
            f.write(open(os.path.join(ROOT, "examples/demo/node1.toml")).read())
            f.write(open(os.path.join(ROOT, "tests/data/restart_services.toml")).read())
        states = {1: state1, 2: os.path.join(ROOT, "examples/demo/node2.toml")}

        def ns(h, *cmd, out=subprocess.DEVNULL):
            q = subprocess.Popen(["ip", "netns", "exec", "%s-%s" % (p, h)] + list(cmd),
                                 stdout=out, stderr=subprocess.DEVNULL)
            procs.append(q)
            return q

        def start(n):
            log = os.path.join(work, "n%d.log" % n)
            t = time.time()
            d = subprocess.Popen(
                ["ip", "netns", "exec", "%s-n%d" % (p, n), SWITCHD, "run", "--state", states[n],
                 "--control-socket", os.path.join(work, "n%d.sock" % n),
                 "--bpf-dir", bpf, "--run-dir", os.path.join(work, "run")],
                stdout=subprocess.DEVNULL, stderr=open(log, "w"))
            while " forwarding: " not in open(log).read():
                if d.poll() is not None:
                    raise RuntimeError("switchd exited: " + open(log).read())
                if time.time() - t > 20:
                    raise RuntimeError("switchd did not start: " + open(log).read())
                time.sleep(0.005)
            daemons[n] = d
            return time.time() - t

        for h in ("b", "d"):
            ns(h, "python3", STREAMS, "serve", "7000")
        start(2)
        start(1)
        caps = {}
        for h in ("a", "ext"):
            caps[h] = os.path.join(work, "rst-%s.pcap" % h)
            ns(h, "tcpdump", "-U", "-nn", "-i", "eth0", "-w", caps[h],
               "tcp[tcpflags] & tcp-rst != 0")
        time.sleep(1.5)
        secs = a.restarts * a.gap + 4
        outs = []
        for k, (h, proto, ip, port, _) in enumerate(FLOWS):
            out = os.path.join(work, "stream%d.json" % k)
            ns(h, "python3", STREAMS, proto, ip, port, str(secs), out)
            outs.append(out)
        t0 = time.time()
        time.sleep(2)
        signals, took = [], []
        for _ in range(a.restarts):
            d = daemons[1]
            signals.append(time.time() - t0)
            d.send_signal(9 if a.signal == "KILL" else 15)
            d.wait()
            took.append(start(1) + 0)
            took[-1] = time.time() - t0 - signals[-1]
            time.sleep(max(0.0, a.gap - took[-1]))
        while not all(os.path.exists(o) for o in outs):
            if time.time() - t0 > secs + 30:
                raise RuntimeError("the streams did not finish")
            time.sleep(0.2)
        time.sleep(0.5)
        res = {"restarts": a.restarts, "signal": a.signal, "streams": []}
        print("%d restarts (SIG%s), %.1f s apart; switchd restart (signal to forwarding): "
              "median %.0f ms, max %.0f ms" % (a.restarts, a.signal, a.gap,
                                               1000 * statistics.median(took), 1000 * max(took)))
        print("%-32s %10s %10s %7s %s" % ("stream", "max stall", "median", "resets", "error"))
        for out, (h, proto, _, _, what) in zip(outs, FLOWS):
            r = json.load(open(out))
            stalls = []
            for s in signals:
                near = [g for (t, g) in r["stalls"] if s - 0.3 <= t <= s + 2.0]
                stalls.append(max(near) if near else 0.01)
            rst = 0
            if proto == "tcp":
                o = subprocess.run(["tcpdump", "-nn", "-r", caps[h]], capture_output=True,
                                   text=True)
                rst = sum("Flags [R" in line for line in o.stdout.splitlines())
            row = {"stream": what, "max_stall_s": max(stalls),
                   "median_stall_s": statistics.median(stalls), "resets": rst,
                   "error": r["error"], "backends": r["backends"]}
            res["streams"].append(row)
            print("%-32s %8.0f ms %7.0f ms %7d %s" % (what, 1000 * row["max_stall_s"],
                                                     1000 * row["median_stall_s"], rst,
                                                     r["error"] or "-"))
        res["restart_ms"] = {"median": 1000 * statistics.median(took), "max": 1000 * max(took)}
        if a.json:
            json.dump(res, open(a.json, "w"), indent=2)
        bad = [s for s in res["streams"] if s["resets"] or s["error"]]
        return 1 if bad else 0
    finally:
        for q in list(daemons.values()) + procs:
            try:
                q.kill()
                q.wait()
            except OSError:
                pass
        subprocess.run(["umount", "-l", bpf], stderr=subprocess.DEVNULL)
        subprocess.run([os.path.join(ROOT, "scripts/topology"), "down", p],
                       stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
