#!/usr/bin/python3
"""Injects an out-of-window RST into a live TCP connection (scapy; run as root in the
namespace of one end).

  inject_rst.py IFACE LOCAL_PORT PEER_IP
      waits for a segment of the connection arriving at LOCAL_PORT from PEER_IP, reads the
      sequence number the peer expects next (its ACK), and sends a RST from this end with
      that number + 2^30: far outside any window. Prints {"ack": n, "rst_seq": n, ...}.
"""
import json
import sys

from scapy.all import IP, TCP, send, sniff


def main(iface, local_port, peer):
    local_port = int(local_port)
    pkts = sniff(iface=iface, count=1, timeout=10,
                 lfilter=lambda p: IP in p and TCP in p and p[IP].src == peer
                 and p[TCP].dport == local_port and p[TCP].flags & 0x10)
    if not pkts:
        sys.exit("no segment of the connection seen")
    p = pkts[0]
    seq = (p[TCP].ack + (1 << 30)) % (1 << 32)
    rst = IP(src=p[IP].dst, dst=peer) / TCP(sport=local_port, dport=p[TCP].sport,
                                           flags="R", seq=seq)
    send(rst, verbose=False)
    print(json.dumps({"ack": p[TCP].ack, "rst_seq": seq, "peer_port": p[TCP].sport}))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
