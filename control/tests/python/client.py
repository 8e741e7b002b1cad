#!/usr/bin/env python3
"""A Python client of the nodeswitch API (grpcio from PyPI), as a Go or Python agent would
be written: stubs generated from control/proto/nodeswitch/v1/nodeswitch.proto by
grpcio-tools' protoc.

  client.py unix PATH            over the Unix socket
  client.py tls HOST:PORT DIR    over TCP with TLS (DIR: ca.pem, client.pem, client.key)

Runs the same calls as control/tests/python.rs's Rust client and prints what they returned
as one JSON object: version node, pods before and after an upsert, the endpoints after a
SetEndpoints, the refusal of an invalid pod (code and message), a delete's action.
"""
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "..", "..", "proto")


def stubs():
    out = tempfile.mkdtemp(prefix="nodeswitch-py-")
    inc = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", "-I" + PROTO, "-I" + inc, "--python_out=" + out,
                      "--grpc_python_out=" + out,
                      os.path.join(PROTO, "nodeswitch", "v1", "nodeswitch.proto")])
    if rc != 0:
        sys.exit("protoc (grpcio-tools) refused nodeswitch.proto")
    sys.path.insert(0, out)
    from nodeswitch.v1 import nodeswitch_pb2, nodeswitch_pb2_grpc
    return nodeswitch_pb2, nodeswitch_pb2_grpc


def channel(argv):
    if argv[0] == "unix":
        # grpc's default authority for unix: targets is the socket path, which is not a
        # valid :authority; any host name will do.
        return grpc.insecure_channel("unix:" + argv[1],
                                     options=[("grpc.default_authority", "localhost")])
    d = argv[2]
    read = lambda n: open(os.path.join(d, n), "rb").read()
    creds = grpc.ssl_channel_credentials(root_certificates=read("ca.pem"),
                                         private_key=read("client.key"),
                                         certificate_chain=read("client.pem"))
    return grpc.secure_channel(argv[1], creds)


def main(argv):
    pb, rpc = stubs()
    sw = rpc.SwitchServiceStub(channel(argv))
    out = {}
    out["node"] = sw.Version(pb.VersionRequest(), timeout=10).node
    out["pods_before"] = sorted(p.name for p in sw.ListPods(pb.ListPodsRequest()).pods)
    sw.UpsertPod(pb.UpsertPodRequest(pod=pb.Pod(
        name="default/pod-py", ip="10.244.1.9", mac="02:00:0a:f4:01:09", port="veth-py")))
    out["pods_after"] = sorted(p.name for p in sw.ListPods(pb.ListPodsRequest()).pods)
    r = sw.SetEndpoints(pb.SetEndpointsRequest(service="default/web", endpoints=[
        pb.Endpoint(ip="10.244.1.9", node="node1"),
        pb.Endpoint(ip="10.244.2.7", node="node2", ready=False)]))
    out["set_endpoints"] = [c.action for c in r.result.changes]
    eps = sw.ListEndpoints(pb.ListEndpointsRequest(name="default/web")).endpoints
    out["endpoints"] = sorted([e.endpoint.ip, e.usable] for e in eps)
    try:
        sw.UpsertPod(pb.UpsertPodRequest(pod=pb.Pod(
            name="default/bad", ip="10.244.9.9", mac="02:00:0a:f4:09:09", port="veth-bad")))
        out["refused"] = None
    except grpc.RpcError as e:
        out["refused"] = [e.code().name, e.details()]
    r = sw.DeletePod(pb.DeletePodRequest(name="default/pod-py"))
    out["deleted"] = [c.action for c in r.result.changes]
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
