#!/usr/bin/env python3
"""End-to-end comparison: the same two-node namespace topology forwarded by the kernel
(Flannel's vxlan device, kube-proxy's iptables DNAT) and by switchd, driven by the same
clients from pod-a's namespace, side by side, with the CPU time over all cores (/proc/stat):

  pps   64-byte UDP frames, one flow, from netsniff-ng's trafgen on CPU 0: packets per
        second delivered at the receiving pod's eth0, CPU per delivered packet
  tcp   TCP bulk, iperf3 with 1 and 4 streams: Gbit/s received, CPU per 1000 bytes
  rr    UDP request/response, 64 bytes, sockperf ping-pong (one message in flight): one-way
        latency mean and p99, CPU per round trip

on three paths:

  pod -> local pod            pod-a -> pod-b 10.244.1.3
  pod -> remote pod           pod-a -> pod-d 10.244.2.3 (VXLAN)
  pod -> ClusterIP -> remote  pod-a -> 10.96.0.53:53 (default/echo) -> pod-c 10.244.2.2:5353
                              (pps, rr); 10.96.0.20:5201 (default/iperf) -> pod-d (tcp)

tcp and rr also run at jumbo MTU (underlay 9000, pods 8950; --mtus): where switchd cannot
run at an MTU its row says why.

Run through bench/e2e (root; builds switchd, installs trafgen). Options:
  --seconds N        measurement window per run (default 5)
  --runs N           runs per path and dataplane; the median is reported (default 3)
  --poll MODE        switchd's polling: wakeup (default) or busy
  --cores A,B        cores for node1's and node2's switchd workers (default 1,1; "-": unpinned)
  --paths LIST       which paths (default local,remote,clusterip)
  --switchd-args S   extra arguments for switchd run (e.g. "--batch-wait-us 10")
  --tests LIST       which measurements (default pps,tcp,rr)
  --mtus LIST        underlay MTUs for tcp and rr (default 1500,9000; pps runs at the first);
                     U/L: underlay U and a node-local pod MTU L (TOPO_LOCAL_MTU), e.g. 9000/65000
  --capture          also measure switchd with `switchctl capture -w /dev/null` open on
                     node1 (every port, both points): what a capture left open costs
  --json FILE        also write every run as JSON
"""
import argparse
import json
import os
import re
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
# (name, destination IP, TCP port) of iperf3's server: pod-b and pod-d run one on 5201.
TCP_PATHS = [
    ("pod -> local pod", "10.244.1.3", 5201),
    ("pod -> remote pod", "10.244.2.3", 5201),
    ("pod -> ClusterIP -> remote pod", "10.96.0.20", 5201),
]
# (name, destination IP, UDP port) of sockperf's server: pods b, c and d run one on 5353.
RR_PATHS = [
    ("pod -> local pod", "10.244.1.3", 5353),
    ("pod -> remote pod", "10.244.2.3", 5353),
    ("pod -> ClusterIP -> remote pod", "10.96.0.53", 53),
]
TRAFGEN_SPORT = 40000


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
  c16(%d), c16(%d), c16(26), csumudp(14, 34),
  fill(0x6e, 18),
}
""" % (d[0], d[1], d[2], d[3], TRAFGEN_SPORT, dport)


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


def measure_tcp(p, dst, port, streams, seconds):
    """One iperf3 run from pod-a: received Gbit/s and CPU (all cores) per 1000 bytes."""
    cpu0 = cpu_busy_jiffies()
    r = ns(p, "a", "iperf3", "-c", dst, "-p", str(port), "-t", "%g" % seconds,
           "-P", str(streams), "-J", check=False)
    cpu1 = cpu_busy_jiffies()
    try:
        end = json.loads(r.stdout)["end"]["sum_received"]
    except (ValueError, KeyError):
        raise RuntimeError("iperf3 to %s failed: %s %s" % (dst, r.stdout[-400:], r.stderr[-400:]))
    cpu_s = (cpu1 - cpu0) / os.sysconf("SC_CLK_TCK")
    return {
        "gbit_per_s": end["bits_per_second"] / 1e9,
        "bytes": end["bytes"],
        "cpu_ns_per_kb": cpu_s * 1e9 / (end["bytes"] / 1000) if end["bytes"] else float("inf"),
        "cpu_seconds": cpu_s,
    }


def measure_rr(p, dst, port, seconds):
    """One sockperf ping-pong run from pod-a (64-byte UDP, one message in flight): one-way
    latency mean and p99 in microseconds, CPU (all cores) per round trip."""
    cpu0 = cpu_busy_jiffies()
    r = ns(p, "a", "sockperf", "ping-pong", "-i", dst, "-p", str(port), "-m", "64",
           "-t", "%g" % seconds, check=False)
    cpu1 = cpu_busy_jiffies()
    out = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)
    mean = re.search(r"avg-latency=([0-9.]+)", out)
    p99 = re.search(r"percentile 99\.000 =\s*([0-9.]+)", out)
    total = re.search(r"\[Total Run\].*ReceivedMessages=([0-9]+)", out)
    if not (mean and p99 and total) or int(total.group(1)) == 0:
        raise RuntimeError("sockperf to %s:%d failed: %s" % (dst, port, out[-600:]))
    cpu_s = (cpu1 - cpu0) / os.sysconf("SC_CLK_TCK")
    return {
        "mean_us": float(mean.group(1)),
        "p99_us": float(p99.group(1)),
        "round_trips": int(total.group(1)),
        "cpu_us_per_round_trip": cpu_s * 1e6 / int(total.group(1)),
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


def state_file(n, mtu, conf_dir):
    """The demo's state file for node n, with uplink_mtu set to the run's underlay MTU."""
    with open(os.path.join(ROOT, "examples/demo/node%d.toml" % n)) as f:
        text = f.read()
    text, subs = re.subn(r"(?m)^uplink_mtu = [0-9]+$", "uplink_mtu = %d" % mtu, text)
    if subs != 1:
        raise RuntimeError("examples/demo/node%d.toml: no uplink_mtu line" % n)
    path = os.path.join(conf_dir, "node%d-%d.toml" % (n, mtu))
    with open(path, "w") as f:
        f.write(text)
    return path


def server(p, pod, *args):
    return subprocess.Popen(["ip", "netns", "exec", "%s-%s" % (p, pod)] + list(args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def parse_mtu(label):
    """An --mtus entry: "9000" (uplink MTU, pods 50 less) or "9000/65000" (and the pods'
    node-local MTU: their interfaces at 65000, their default route at 8950)."""
    up, _, local = label.partition("/")
    return int(up), (int(local) if local else None)


def topology(mode, poll, cores, extra, conf_dir, mtu="1500"):
    p = "e%x" % (os.getpid() % 0xfffff)
    procs = []
    up, local = parse_mtu(mtu)
    env = dict(os.environ, TOPO_MTU=str(up))
    if local:
        env["TOPO_LOCAL_MTU"] = str(local)
    try:
        sh(TOPO, "up", p, mode, mode, env=env)
        for pod in "bcd":
            # Receivers drop trafgen's flow before any socket lookup (equal work in both runs).
            ns(p, pod, "iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--sport",
               str(TRAFGEN_SPORT), "-j", "DROP")
            procs.append(server(p, pod, "sockperf", "server", "-i", "0.0.0.0", "-p", "5353"))
        for pod in "bd":
            procs.append(server(p, pod, "iperf3", "-s", "-p", "5201"))
        if mode == "switch":
            for n in (1, 2):
                log = open(os.path.join(conf_dir, "n%d.log" % n), "w")
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", "%s-n%d" % (p, n), SWITCHD, "run", "--no-persist", "--state",
                     state_file(n, up, conf_dir), "--poll", poll,
                     "--control-socket", os.path.join(conf_dir, "n%d.sock" % n)]
                    + ([] if cores[n - 1] == "-" else ["--core", cores[n - 1]]) + extra,
                    stdout=subprocess.DEVNULL, stderr=log))
            switchds = procs[-2:]
            deadline = time.time() + 20
            for n in (1, 2):
                path = os.path.join(conf_dir, "n%d.log" % n)
                while " forwarding: " not in open(path).read():
                    if switchds[n - 1].poll() is not None or time.time() > deadline:
                        raise RuntimeError("switchd on node%d did not start: %s"
                                           % (n, open(path).read().strip()))
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


def stop_all(procs):
    for pr in procs:
        pr.terminate()
        try:
            pr.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pr.kill()
            pr.wait()


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def ratio(a, b):
    return a / b if b else float("inf")


def why_not(failed, mtu):
    """A table row's text where a dataplane did not run at `mtu` (the reason is printed below)."""
    who = [("switchd" if m == "switch" else m) for m in ("kernel", "switch") if (m, mtu) in failed]
    return "%s did not run at this MTU (below)" % " and ".join(who) if who else "not run"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--poll", default="wakeup", choices=["wakeup", "busy"])
    ap.add_argument("--cores", default="1,1")
    ap.add_argument("--paths", default=",".join(PATH_KEYS))
    ap.add_argument("--tests", default="pps,tcp,rr")
    ap.add_argument("--mtus", default="1500,9000")
    ap.add_argument("--switchd-args", default="")
    ap.add_argument("--capture", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    keys = a.paths.split(",")
    paths = [p for k, p in zip(PATH_KEYS, PATHS) if k in keys]
    tcp_paths = [p for k, p in zip(PATH_KEYS, TCP_PATHS) if k in keys]
    rr_paths = [p for k, p in zip(PATH_KEYS, RR_PATHS) if k in keys]
    tests = a.tests.split(",")
    for t in tests:
        if t not in ("pps", "tcp", "rr"):
            ap.error("--tests: unknown measurement %r (pps, tcp, rr)" % t)
    mtus = a.mtus.split(",")
    for m in mtus:
        try:
            parse_mtu(m)
        except ValueError:
            ap.error("--mtus: %r is not UPLINK or UPLINK/LOCAL (numbers)" % m)
    results = {}
    failed = {}  # (mode, mtu) -> why the dataplane could not run there
    with tempfile.TemporaryDirectory() as d:
        for mi, mtu in enumerate(mtus):
            want_pps = "pps" in tests and mi == 0
            if not (want_pps or "tcp" in tests or "rr" in tests):
                continue
            for mode in ("kernel", "switch"):
                try:
                    p, procs = topology(mode, a.poll, a.cores.split(","), a.switchd_args.split(),
                                        d, mtu)
                except RuntimeError as e:
                    failed[(mode, mtu)] = str(e).splitlines()[-1][:1000]
                    print("  %-6s MTU %s: %s" % (mode, mtu, failed[(mode, mtu)]), file=sys.stderr)
                    continue
                try:
                    time.sleep(0.5)  # the servers listen
                    for name, dst, dport, rx_pod in (paths if want_pps else []):
                        runs = [measure(p, dst, dport, rx_pod, a.seconds, d) for _ in range(a.runs)]
                        results[(mode, "pps", name)] = runs
                        print("  %-6s %-32s %6.3f Mpps" % (mode, name, median(runs, "delivered_pps") / 1e6),
                              file=sys.stderr)
                        if mode == "switch" and a.capture:
                            c, err = capture_open(d)
                            runs = [measure(p, dst, dport, rx_pod, a.seconds, d)
                                    for _ in range(a.runs)]
                            captured, lost = capture_close(c, err)
                            for r in runs:
                                r["captured"], r["lost"] = captured, lost
                            results[("capture", "pps", name)] = runs
                            print("  %-6s %-32s %6.3f Mpps (capture open: %d frames captured, %d lost)"
                                  % (mode, name, median(runs, "delivered_pps") / 1e6, captured, lost),
                                  file=sys.stderr)
                    for name, dst, port in (tcp_paths if "tcp" in tests else []):
                        for streams in (1, 4):
                            runs = [measure_tcp(p, dst, port, streams, a.seconds)
                                    for _ in range(a.runs)]
                            results[(mode, "tcp%d/%s" % (streams, mtu), name)] = runs
                            print("  %-6s MTU %s %-32s %d stream(s) %6.2f Gbit/s"
                                  % (mode, mtu, name, streams, median(runs, "gbit_per_s")),
                                  file=sys.stderr)
                    for name, dst, port in (rr_paths if "rr" in tests else []):
                        runs = [measure_rr(p, dst, port, a.seconds) for _ in range(a.runs)]
                        results[(mode, "rr/%s" % mtu, name)] = runs
                        print("  %-6s MTU %s %-32s rr mean %.1f us p99 %.1f us"
                              % (mode, mtu, name, median(runs, "mean_us"), median(runs, "p99_us")),
                              file=sys.stderr)
                finally:
                    stop_all(procs)
                    sh(TOPO, "down", p, check=False)

    print()
    print("median of %d runs of %.0f s; switchd workers on CPUs %s (%s); CPU = all cores, /proc/stat"
          % (a.runs, a.seconds, a.cores, a.poll))
    if "pps" in tests:
        print()
        print("64-byte UDP, one flow, trafgen on CPU 0 in pod-a, MTU %s" % mtus[0])
        print("%-32s %14s %14s %7s   %14s %14s %7s" % (
            "path", "kernel Mpps", "switchd Mpps", "ratio", "kernel ns/pkt", "switchd ns/pkt",
            "ratio"))
        for name, _, _, _ in paths:
            k = results.get(("kernel", "pps", name))
            s = results.get(("switch", "pps", name))
            if not (k and s):
                print("%-32s %s" % (name, why_not(failed, mtus[0])))
                continue
            kp, sp = median(k, "delivered_pps"), median(s, "delivered_pps")
            kc, sc = median(k, "cpu_ns_per_packet"), median(s, "cpu_ns_per_packet")
            print("%-32s %14.3f %14.3f %6.2fx   %14.0f %14.0f %6.2fx" % (
                name, kp / 1e6, sp / 1e6, ratio(sp, kp), kc, sc, ratio(sc, kc)))
    if "tcp" in tests:
        print()
        print("TCP bulk (iperf3 from pod-a), Gbit/s received; CPU per 1000 bytes")
        print("%-32s %10s %7s %9s %9s %7s   %9s %9s %7s" % (
            "path", "MTU", "streams", "kernel", "switchd", "ratio", "kernel ns", "switchd ns",
            "ratio"))
        for mtu in mtus:
            for name, _, _ in tcp_paths:
                for streams in (1, 4):
                    key = "tcp%d/%s" % (streams, mtu)
                    k = results.get(("kernel", key, name))
                    s = results.get(("switch", key, name))
                    if not (k and s):
                        kernel = "%9.2f" % median(k, "gbit_per_s") if k else "%9s" % "-"
                        print("%-32s %10s %7d %s   %s" % (name, mtu, streams, kernel,
                                                         why_not(failed, mtu)))
                        continue
                    kg, sg = median(k, "gbit_per_s"), median(s, "gbit_per_s")
                    kc, sc = median(k, "cpu_ns_per_kb"), median(s, "cpu_ns_per_kb")
                    print("%-32s %10s %7d %9.2f %9.2f %6.2fx   %9.0f %9.0f %6.2fx" % (
                        name, mtu, streams, kg, sg, ratio(sg, kg), kc, sc, ratio(sc, kc)))
    if "rr" in tests:
        print()
        print("UDP request/response, 64 bytes (sockperf ping-pong from pod-a), one-way latency us;")
        print("CPU per round trip us")
        print("%-32s %10s %7s %7s %6s   %7s %7s %6s   %6s %6s %6s" % (
            "path", "MTU", "k mean", "s mean", "ratio", "k p99", "s p99", "ratio",
            "k CPU", "s CPU", "ratio"))
        for mtu in mtus:
            for name, _, _ in rr_paths:
                k = results.get(("kernel", "rr/%s" % mtu, name))
                s = results.get(("switch", "rr/%s" % mtu, name))
                if not (k and s):
                    kernel = ("%7.1f %7s %6s   %7.1f" % (median(k, "mean_us"), "-", "",
                                                         median(k, "p99_us")) if k else "")
                    print("%-32s %10s %s   %s" % (name, mtu, kernel, why_not(failed, mtu)))
                    continue
                km, sm = median(k, "mean_us"), median(s, "mean_us")
                k9, s9 = median(k, "p99_us"), median(s, "p99_us")
                kc, sc = median(k, "cpu_us_per_round_trip"), median(s, "cpu_us_per_round_trip")
                print("%-32s %10s %7.1f %7.1f %5.2fx   %7.1f %7.1f %5.2fx   %6.1f %6.1f %5.2fx" % (
                    name, mtu, km, sm, ratio(sm, km), k9, s9, ratio(s9, k9), kc, sc, ratio(sc, kc)))
    if a.capture and "pps" in tests:
        print()
        print("switchd with a capture of every port of node1 open (switchctl capture -w /dev/null);")
        print("the reader shares the machine's two cores; what it cannot take is lost, counted")
        print()
        print("%-32s %14s %14s %7s   %14s %14s %12s" % (
            "path", "closed Mpps", "open Mpps", "ratio", "closed ns/pkt", "open ns/pkt",
            "captured"))
        for name, _, _, _ in paths:
            s = results.get(("switch", "pps", name))
            o = results.get(("capture", "pps", name))
            if not (s and o):
                continue
            sp, op = median(s, "delivered_pps"), median(o, "delivered_pps")
            sc, oc = median(s, "cpu_ns_per_packet"), median(o, "cpu_ns_per_packet")
            seen = o[0]["captured"] + o[0]["lost"]
            print("%-32s %14.3f %14.3f %6.2fx   %14.0f %14.0f %11.1f%%" % (
                name, sp / 1e6, op / 1e6, ratio(op, sp), sc, oc,
                100.0 * o[0]["captured"] / seen if seen else 0.0))
    if failed:
        print()
        for (mode, mtu), why in sorted(failed.items()):
            print("%s at MTU %s did not run: %s" % ("switchd" if mode == "switch" else mode, mtu, why))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": {"/".join(map(str, k)): v for k, v in results.items()},
                       "failed": {"%s/%d" % k: v for k, v in failed.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
