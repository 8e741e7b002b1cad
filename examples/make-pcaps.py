#!/usr/bin/env python3
"""Builds the example captures in examples/pcap/ with scapy (independent of nodeswitch's code).

pod-a.pcap: what pod default/pod-a (10.244.1.2) sends on veth-a: ARP for its gateway, a ping
to the gateway, UDP to pod-b on this node, a TCP SYN to a pod on node2, a traceroute probe
with TTL 1, a spoofed frame and an IPv6 frame.
It also asks two Services for something: a DNS query to a ClusterIP and a SYN to a Service
without endpoints.
uplink.pcap: what arrives on node1's uplink: VXLAN from node2 to pod-b, VXLAN with a wrong
VNI, the node's own (non-VXLAN) traffic, and a NodePort request from outside the cluster.

Run: python3 examples/make-pcaps.py   (needs: pip install scapy)
"""
import os
from scapy.all import ARP, DNS, DNSQR, Ether, ICMP, IP, IPv6, TCP, UDP, Raw, wrpcap

GW_MAC, MAC_A = "02:00:0a:f4:01:01", "02:00:0a:f4:01:02"
NODE1_MAC, NODE2_MAC = "02:00:c6:12:00:01", "02:00:c6:12:00:02"
VTEP1, VTEP2 = "02:00:00:00:ff:01", "02:00:00:00:ff:02"
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pcap")


def stamp(pkts, start):
    for i, p in enumerate(pkts):
        p.time = start + i
    return pkts


pod_a = stamp([
    Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc="10.244.1.2", pdst="10.244.1.1"),
    Ether(src=MAC_A, dst=GW_MAC) / IP(src="10.244.1.2", dst="10.244.1.1") / ICMP(id=1, seq=1) / Raw(b"nodeswitch"),
    Ether(src=MAC_A, dst=GW_MAC) / IP(src="10.244.1.2", dst="10.244.1.3") / UDP(sport=40000, dport=5001) / Raw(b"hello pod-b"),
    Ether(src=MAC_A, dst=GW_MAC) / IP(src="10.244.1.2", dst="10.244.2.7", flags="DF") / TCP(sport=45000, dport=80, flags="S", seq=1000),
    Ether(src=MAC_A, dst=GW_MAC) / IP(src="10.244.1.2", dst="10.244.2.7", ttl=1) / UDP(sport=33434, dport=33434),
    Ether(src=MAC_A, dst=GW_MAC) / IP(src="10.244.1.99", dst="10.244.1.3") / UDP(sport=1, dport=2),
    Ether(src=MAC_A, dst=GW_MAC) / IPv6(src="fd00::2", dst="fd00::3") / UDP(sport=1, dport=2),
    # Services: a DNS query to the kube-system/dns ClusterIP (backend on node2), and a SYN to
    # a Service without endpoints (answered with a RST).
    Ether(src=MAC_A, dst=GW_MAC) / IP(src="10.244.1.2", dst="10.96.0.53") / UDP(sport=40053, dport=53) / DNS(rd=1, qd=DNSQR(qname="web.default.svc.cluster.local")),
    Ether(src=MAC_A, dst=GW_MAC) / IP(src="10.244.1.2", dst="10.96.0.99") / TCP(sport=45001, dport=80, flags="S", seq=1000),
], 1_700_000_000)

def vxlan(vni):
    # The RFC 7348 header exactly (I flag only, reserved bits zero), as Linux and Flannel send
    # it; scapy's VXLAN layer may set VXLAN-GPE bits that a plain vxlan device drops.
    return Raw(bytes([0x08, 0, 0, 0]) + (vni << 8).to_bytes(4, "big"))


inner = Ether(src=VTEP2, dst=VTEP1) / IP(src="10.244.2.7", dst="10.244.1.3", ttl=63) / UDP(sport=40001, dport=5001) / Raw(b"hello from node2")
uplink = stamp([
    Ether(src=NODE2_MAC, dst=NODE1_MAC) / IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=51000, dport=8472) / vxlan(1) / inner,
    Ether(src=NODE2_MAC, dst=NODE1_MAC) / IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=51000, dport=8472) / vxlan(7) / inner,
    Ether(src=NODE2_MAC, dst=NODE1_MAC) / IP(src="198.18.0.2", dst="198.18.0.1") / TCP(sport=50000, dport=10250, flags="S"),
    # A client outside the cluster reaches default/lb-local's NodePort (externalTrafficPolicy Local).
    Ether(src="02:00:c6:12:00:64", dst=NODE1_MAC) / IP(src="198.18.0.100", dst="198.18.0.1") / TCP(sport=20000, dport=30090, flags="S"),
], 1_700_000_000.5)

os.makedirs(here, exist_ok=True)
wrpcap(os.path.join(here, "pod-a.pcap"), pod_a)
wrpcap(os.path.join(here, "uplink.pcap"), uplink)
print("wrote", os.path.join(here, "pod-a.pcap"), "and", os.path.join(here, "uplink.pcap"))
