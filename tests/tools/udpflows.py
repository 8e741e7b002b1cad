#!/usr/bin/env python3
"""Opens N concurrent UDP flows (one socket each, so N source ports) to an echo server, one
datagram each, then sends again on every flow that was answered, up to three times for a
flow whose answer does not come (Python 3 stdlib).

  udpflows.py HOST PORT N

Prints one JSON line {"flows": N, "answered": k, "first_answered": j, "again": m}: k flows
got their echo, j of them among the first min(N, 1000) opened, and m of the k answered again.
"""
import json
import resource
import select
import socket
import sys
import time


def collect(ep, by_fd, sockets, want, seconds):
    """The flows whose echo arrives within `seconds` (stops early once `want` did)."""
    got = set()
    deadline = time.time() + seconds
    while len(got) < want and time.time() < deadline:
        for fd, _ in ep.poll(0.2):
            i = by_fd[fd]
            try:
                while True:
                    sockets[i].recv(64)
                    got.add(i)
            except BlockingIOError:
                pass
    return got


def paced(sockets, flows, word):
    """One datagram on each flow, in bursts well under the veth's and the socket's rings."""
    for k, i in enumerate(flows):
        sockets[i].send(b"%s %d" % (word, i))
        if k % 200 == 199:
            time.sleep(0.01)


def main(host, port, n):
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, n + 256))
    sockets = []
    by_fd = {}
    ep = select.epoll()
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((host, port))
        sockets.append(s)
        by_fd[s.fileno()] = i
        ep.register(s.fileno(), select.EPOLLIN)
    paced(sockets, range(n), b"flow")
    answered = collect(ep, by_fd, sockets, n, 5)
    # Again on every answered flow, as a client retries over UDP: a datagram lost on the way
    # (a full socket buffer at the echo server on a loaded machine) is sent once more, up to
    # three times; a flow that lost its port would stay unanswered however often it tries.
    again = set()
    for _ in range(3):
        todo = sorted(answered - again)
        if not todo:
            break
        paced(sockets, todo, b"again")
        again |= collect(ep, by_fd, sockets, len(todo), 3)
    print(json.dumps({"flows": n, "answered": len(answered),
                      "first_answered": len([i for i in answered if i < min(n, 1000)]),
                      "again": len(again & answered)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
