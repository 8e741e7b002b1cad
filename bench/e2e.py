#!/usr/bin/env python3
"""End-to-end comparison: the same two-node namespace topology forwarded by the kernel
(Flannel's vxlan device, kube-proxy's iptables DNAT) and by switchd, driven by the same
generator (netsniff-ng's trafgen: 64-byte UDP frames, one flow, from pod-a's namespace).

For each path it reports the packets per second delivered at the receiving pod's eth0 and
the CPU time per delivered packet over all cores (from /proc/stat), side by side:

  pod -> local pod            pod-a -> pod-b 10.244.1.3
  pod -> remote pod           pod-a -> pod-d 10.244.2.3 (VXLAN)
  pod -> ClusterIP -> remote  pod-a -> 10.96.0.53:53 (default/echo) -> pod-c 10.244.2.2:5353

Run through bench/e2e (root; builds switchd, installs trafgen). Options:
  --seconds N        measurement window per run (default 5)
  --runs N           runs per path and dataplane; the median is reported (default 3)
  --poll MODE        switchd's polling: wakeup (default) or busy
  --cores A,B        cores for node1's and node2's switchd workers (default 1,1; "-": unpinned)
  --paths LIST       which paths (default local,remote,clusterip)
  --switchd-args S   extra arguments for switchd run (e.g. "--batch-wait-us 10")
  --capture          also measure switchd with `switchctl capture -w /dev/null` open on
                     node1 (every port, both points): what a capture left open costs
  --json FILE        also write every run as JSON
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWITCHD = os.path.join(ROOT, "target/release/switchd")
SWITCHCTL = os.path.join(ROOT, "target/release/switchctl")
TOPO = os.path.join(ROOT, "scripts/topology")

# (name, destination IP, UDP destination port, receiving pod, its IP)
PATHS = [
    ("pod -> local pod", "10.244.1.3", 9, "b"),
    ("pod -> remote pod", "10.244.2.3", 9, "d"),
    ("pod -> ClusterIP -> remote pod", "10.96.0.53", 53, "c"),
]
PATH_KEYS = ["local", "remote", "clusterip"]


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def ns(p, host, *args, check=True):
    return sh("ip", "netns", "exec", "%s-%s" % (p, host), *args, check=check)


def cpu_busy_jiffies():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle


def rx_packets(p, host):
    return int(ns(p, host, "cat", "/sys/class/net/eth0/statistics/rx_packets").stdout)


def trafgen_conf(dst_ip, dport):
    """60-byte frame (64 on the wire with the FCS): Ethernet, IPv4 (DF), UDP, 18 bytes."""
    d = [int(x) for x in dst_ip.split(".")]
    return """{
  0x02, 0x00, 0x0a, 0xf4, 0x01, 0x01,
  0x02, 0x00, 0x0a, 0xf4, 0x01, 0x02,
  0x08, 0x00,
  0x45, 0x00, c16(46), c16(1), 0x40, 0x00, 64, 17, csumip(14, 33),
  10, 244, 1, 2, %d, %d, %d, %d,
  c16(40000), c16(%d), c16(26), csumudp(14, 34),
  fill(0x6e, 18),
}
""" % (d[0], d[1], d[2], d[3], dport)


def stop(proc):
    """Stops trafgen (SIGINT, as it expects) and its forked workers."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=3)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def measure(p, dst, dport, rx_pod, seconds, conf_dir):
    conf = os.path.join(conf_dir, "flow.cfg")
    with open(conf, "w") as f:
        f.write(trafgen_conf(dst, dport))
    gen = subprocess.Popen(
        ["ip", "netns", "exec", "%s-a" % p, "taskset", "-c", "0", "trafgen", "--dev", "eth0",
         "--conf", conf, "-P", "1", "-Q", "-C"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(1.0)  # warm up: ARP, conntrack, caches
    if gen.poll() is not None:
        raise RuntimeError("trafgen exited: " + gen.stderr.read())
    rx0, cpu0, t0 = rx_packets(p, rx_pod), cpu_busy_jiffies(), time.time()
    time.sleep(seconds)
    rx1, cpu1, t1 = rx_packets(p, rx_pod), cpu_busy_jiffies(), time.time()
    stop(gen)
    delivered = rx1 - rx0
    hz = os.sysconf("SC_CLK_TCK")
    cpu_s = (cpu1 - cpu0) / hz
    return {
        "delivered_pps": delivered / (t1 - t0),
        "cpu_ns_per_packet": cpu_s * 1e9 / delivered if delivered else float("inf"),
        "cpu_seconds": cpu_s,
        "delivered": delivered,
    }


def capture_open(conf_dir):
    """Starts a capture of every port of node1 into /dev/null; returns it once it runs."""
    err = open(os.path.join(conf_dir, "capture.err"), "w+")
    c = subprocess.Popen([SWITCHCTL, "--socket", os.path.join(conf_dir, "n1.sock"), "capture",
                          "-w", "/dev/null"], stdout=subprocess.DEVNULL, stderr=err)
    time.sleep(0.5)
    if c.poll() is not None:
        err.seek(0)
        raise RuntimeError("switchctl capture exited: " + err.read())
    return c, err


def capture_close(c, err):
    """Stops the capture (as Ctrl-C does); returns (captured, lost) from its summary."""
    c.send_signal(signal.SIGINT)
    c.wait(timeout=10)
    err.seek(0)
    words = [w.rstrip(",;") for w in err.read().split()]
    err.close()
    return int(words[words.index("frames") - 1]), int(words[words.index("lost") - 1])


def topology(mode, poll, cores, extra, conf_dir):
    p = "e%x" % (os.getpid() % 0xfffff)
    procs = []
    try:
        sh(TOPO, "up", p, mode, mode)
        for pod in "bcd":
            # Receivers drop the test flow before any socket lookup (equal work in both runs).
            ns(p, pod, "iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP")
        if mode == "switch":
            for n in (1, 2):
                log = open(os.path.join(conf_dir, "n%d.log" % n), "w")
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", "%s-n%d" % (p, n), SWITCHD, "run", "--no-persist", "--state",
                     os.path.join(ROOT, "examples/demo/node%d.toml" % n), "--poll", poll,
                     "--control-socket", os.path.join(conf_dir, "n%d.sock" % n)]
                    + ([] if cores[n - 1] == "-" else ["--core", cores[n - 1]]) + extra,
                    stdout=subprocess.DEVNULL, stderr=log))
            deadline = time.time() + 20
            for n in (1, 2):
                path = os.path.join(conf_dir, "n%d.log" % n)
                while " forwarding: " not in open(path).read():
                    if time.time() > deadline:
                        raise RuntimeError("switchd did not start: " + open(path).read())
                    time.sleep(0.1)
        # Resolve neighbours once so the first measured second is steady.
        ns(p, "a", "ping", "-c", "1", "-W", "2", "10.244.1.3", check=False)
        ns(p, "a", "ping", "-c", "1", "-W", "2", "10.244.2.3", check=False)
        return p, procs
    except Exception:
        for pr in procs:
            pr.kill()
        sh(TOPO, "down", p, check=False)
        raise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--poll", default="wakeup", choices=["wakeup", "busy"])
    ap.add_argument("--cores", default="1,1")
    ap.add_argument("--paths", default=",".join(PATH_KEYS))
    ap.add_argument("--switchd-args", default="")
    ap.add_argument("--capture", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    paths = [p for k, p in zip(PATH_KEYS, PATHS) if k in a.paths.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for mode in ("kernel", "switch"):
            p, procs = topology(mode, a.poll, a.cores.split(","), a.switchd_args.split(), d)
            try:
                for name, dst, dport, rx_pod in paths:
                    runs = [measure(p, dst, dport, rx_pod, a.seconds, d) for _ in range(a.runs)]
                    results[(mode, name)] = runs
                    med = statistics.median(r["delivered_pps"] for r in runs)
                    print("  %-6s %-32s %6.3f Mpps" % (mode, name, med / 1e6), file=sys.stderr)
                    if mode == "switch" and a.capture:
                        c, err = capture_open(d)
                        runs = [measure(p, dst, dport, rx_pod, a.seconds, d)
                                for _ in range(a.runs)]
                        captured, lost = capture_close(c, err)
                        for r in runs:
                            r["captured"], r["lost"] = captured, lost
                        results[("capture", name)] = runs
                        med = statistics.median(r["delivered_pps"] for r in runs)
                        print("  %-6s %-32s %6.3f Mpps (capture open: %d frames captured, %d lost)"
                              % (mode, name, med / 1e6, captured, lost), file=sys.stderr)
            finally:
                for pr in procs:
                    pr.terminate()
                    try:
                        pr.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pr.kill()
                        pr.wait()
                sh(TOPO, "down", p, check=False)

    print()
    print("64-byte UDP, one flow, trafgen on CPU 0 in pod-a; switchd workers on CPUs %s (%s);"
          % (a.cores, a.poll))
    print("median of %d runs of %.0f s; CPU = all cores, /proc/stat" % (a.runs, a.seconds))
    print()
    print("%-32s %14s %14s %7s   %14s %14s" % ("path", "kernel Mpps", "switchd Mpps", "ratio",
                                               "kernel ns/pkt", "switchd ns/pkt"))
    for name, _, _, _ in paths:
        k = results[("kernel", name)]
        s = results[("switch", name)]
        kp = statistics.median(r["delivered_pps"] for r in k)
        sp = statistics.median(r["delivered_pps"] for r in s)
        kc = statistics.median(r["cpu_ns_per_packet"] for r in k)
        sc = statistics.median(r["cpu_ns_per_packet"] for r in s)
        print("%-32s %14.3f %14.3f %6.2fx   %14.0f %14.0f" % (
            name, kp / 1e6, sp / 1e6, sp / kp if kp else float("inf"), kc, sc))
    if a.capture:
        print()
        print("switchd with a capture of every port of node1 open (switchctl capture -w /dev/null);")
        print("the reader shares the machine's two cores; what it cannot take is lost, counted")
        print()
        print("%-32s %14s %14s %7s   %14s %14s %12s" % (
            "path", "closed Mpps", "open Mpps", "ratio", "closed ns/pkt", "open ns/pkt",
            "captured"))
        for name, _, _, _ in paths:
            s = results[("switch", name)]
            o = results[("capture", name)]
            sp = statistics.median(r["delivered_pps"] for r in s)
            op = statistics.median(r["delivered_pps"] for r in o)
            sc = statistics.median(r["cpu_ns_per_packet"] for r in s)
            oc = statistics.median(r["cpu_ns_per_packet"] for r in o)
            seen = o[0]["captured"] + o[0]["lost"]
            print("%-32s %14.3f %14.3f %6.2fx   %14.0f %14.0f %11.1f%%" % (
                name, sp / 1e6, op / 1e6, op / sp if sp else float("inf"), sc, oc,
                100.0 * o[0]["captured"] / seen if seen else 0.0))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"%s/%s" % k: v for k, v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
