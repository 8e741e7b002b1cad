#!/usr/bin/env python3
"""A stand-in Kubernetes API server for the agent's tests (Python 3 stdlib): the real wire
protocol for Nodes, Services and EndpointSlices, nothing else.

  apiserver.py PORT [STATE.json]     serve on 127.0.0.1:PORT (plain HTTP; 0: any free port);
                                     prints "listening PORT" once it does

Served as kube-apiserver does:
  GET  /api/v1/nodes, /api/v1/services, /apis/discovery.k8s.io/v1/endpointslices
       (also namespaced: /api/v1/namespaces/NS/services, ...): a List with
       metadata.resourceVersion; `limit` and `continue` page it.
  GET  ...?watch=true&resourceVersion=RV[&allowWatchBookmarks=true][&timeoutSeconds=N]:
       a stream of JSON lines {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}
       of every change after RV; an RV older than the compaction point gets an ERROR event
       with a Status of code 410 (Gone), as etcd compaction makes the real server send.
  GET  /api/v1/nodes/NAME, PATCH /api/v1/nodes/NAME (application/merge-patch+json or
       strategic-merge-patch+json, merged as a JSON merge patch).
  POST /apis/events.k8s.io/v1/namespaces/NS/events, PATCH .../events/NAME: Events (stored).
Test controls (not Kubernetes'): POST /_test/put with an object (created or replaced), POST
/_test/delete with {kind, namespace, name}, POST /_test/compact (every watch from before now
gets 410), GET /_test/requests (what was asked), GET /_test/events (the Events), for assertions.
"""
import bisect
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = {
    # path segment -> (kind, apiVersion, namespaced)
    "nodes": ("Node", "v1", False),
    "services": ("Service", "v1", True),
    "endpointslices": ("EndpointSlice", "discovery.k8s.io/v1", True),
}
BY_KIND = {v[0]: k for k, v in KINDS.items()}

lock = threading.Condition()
rv = 1
compacted = 0
objects = {}   # (resource, namespace, name) -> object (replaced on a change, never mutated)
keys = {k: [] for k in KINDS}  # resource -> its objects' keys, sorted (pages of a list)
kevents = []   # events.k8s.io/v1 Events the clients created (and patched)
events = []    # (rv, resource, type, object), in rv order
event_rvs = []  # their rvs (a watch finds where to resume by bisection)
requests = []


def bump():
    global rv
    rv += 1
    return rv


def put(obj):
    res = BY_KIND[obj["kind"]]
    md = obj.setdefault("metadata", {})
    key = (res, md.get("namespace", "") if KINDS[res][2] else "", md["name"])
    with lock:
        new = bump()
        md["resourceVersion"] = str(new)
        md.setdefault("uid", "uid-%s-%s-%s" % key)
        md.setdefault("creationTimestamp", "2026-12-01T00:00:00Z")
        kind = "MODIFIED" if key in objects else "ADDED"
        if key not in objects:
            bisect.insort(keys[res], key)
        objects[key] = obj
        events.append((new, res, kind, obj))
        event_rvs.append(new)
        lock.notify_all()


def delete(kind, namespace, name):
    res = BY_KIND[kind]
    key = (res, namespace if KINDS[res][2] else "", name)
    with lock:
        obj = objects.pop(key, None)
        if obj is None:
            return False
        keys[res].pop(bisect.bisect_left(keys[res], key))
        new = bump()
        obj = dict(obj, metadata=dict(obj["metadata"], resourceVersion=str(new)))
        events.append((new, res, "DELETED", obj))
        event_rvs.append(new)
        lock.notify_all()
        return True


def merge(dst, patch):
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length", "0"))
        return json.loads(self.rfile.read(n) or b"{}")

    def route(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        parts = [p for p in u.path.split("/") if p]
        # /api/v1/... or /apis/GROUP/VERSION/...
        if parts[:2] == ["api", "v1"]:
            rest = parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            rest = parts[3:]
        else:
            return None, None, None, q
        ns = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or rest[0] not in KINDS:
            return None, None, None, q
        return rest[0], ns, rest[1] if len(rest) > 1 else None, q

    def do_GET(self):
        requests.append(("GET", self.path))
        if self.path == "/_test/requests":
            return self.send_json(200, requests)
        if self.path == "/_test/events":
            with lock:
                return self.send_json(200, list(kevents))
        if self.path in ("/version", "/version/"):
            return self.send_json(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0"})
        res, ns, name, q = self.route()
        if res is None:
            return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
        if name is not None:
            with lock:
                obj = objects.get((res, ns or "", name))
            if obj is None:
                return self.send_json(404, status(404, "NotFound", '%s "%s" not found' % (res, name)))
            return self.send_json(200, obj)
        if q.get("watch") in ("true", "1"):
            return self.watch(res, ns, q)
        kind, api, _ = KINDS[res]
        start = int(q.get("continue") or 0)
        limit = int(q.get("limit") or 0)
        with lock:
            ks = keys[res] if ns is None else [k for k in keys[res] if k[1] == ns]
            page = ks[start:start + limit] if limit else ks[start:]
            items = [objects[k] for k in page]
            total = len(ks)
            now = rv
        md = {"resourceVersion": str(now)}
        if limit and start + limit < total:
            md["continue"] = str(start + limit)
            md["remainingItemCount"] = total - start - limit
        self.send_json(200, {"kind": kind + "List", "apiVersion": api, "metadata": md,
                             "items": items})

    def watch(self, res, ns, q):
        since = int(q.get("resourceVersion") or 0)
        timeout = min(int(q.get("timeoutSeconds") or 300), 300)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        kind, api, _ = KINDS[res]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(ev):
            data = (json.dumps(ev) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        deadline = time.time() + timeout
        last_bookmark = time.time()
        try:
            if since and since < compacted:
                send({"type": "ERROR", "object": status(
                    410, "Expired", "too old resource version: %d (%d)" % (since, compacted))})
                self.wfile.write(b"0\r\n\r\n")
                return
            seen = since

            def collect():
                # Under the lock: the events after `seen`, or None once compacted past it.
                if compacted > seen:
                    return None
                i = bisect.bisect_right(event_rvs, seen)
                return [e for e in events[i:] if e[1] == res and
                        (ns is None or e[3]["metadata"].get("namespace") == ns)]

            while time.time() < deadline:
                with lock:
                    pending = collect()
                    if pending == []:
                        lock.wait(0.2)
                        pending = collect()
                    # Every event up to `upto` is in `pending`: a bookmark may say so.
                    upto = rv
                if pending is None:
                    send({"type": "ERROR", "object": status(
                        410, "Expired", "too old resource version: %d (%d)" % (seen, compacted))})
                    break
                for e in pending:
                    send({"type": e[2], "object": e[3]})
                    seen = max(seen, e[0])
                if bookmarks and time.time() - last_bookmark > 1:
                    last_bookmark = time.time()
                    send({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api,
                        "metadata": {"resourceVersion": str(upto)}}})
                    seen = max(seen, upto)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def event_path(self):
        parts = [p for p in urllib.parse.urlsplit(self.path).path.split("/") if p]
        # apis events.k8s.io v1 namespaces NS events [NAME]
        if parts[:3] == ["apis", "events.k8s.io", "v1"] and len(parts) >= 6 and \
                parts[3] == "namespaces" and parts[5] == "events":
            return parts[4], parts[6] if len(parts) > 6 else None
        return None

    def do_PATCH(self):
        requests.append(("PATCH", self.path))
        ev = self.event_path()
        if ev is not None and ev[1] is not None:
            patch = self.body()
            with lock:
                for e in kevents:
                    if e["metadata"]["namespace"] == ev[0] and e["metadata"]["name"] == ev[1]:
                        merge(e, patch)
                        return self.send_json(200, e)
            return self.send_json(404, status(404, "NotFound", 'events "%s" not found' % ev[1]))
        res, ns, name, _ = self.route()
        if res != "nodes" or name is None:
            return self.send_json(405, status(405, "MethodNotAllowed", "only Nodes are patched here"))
        ctype = self.headers.get("Content-Type", "")
        if "merge-patch" not in ctype:
            return self.send_json(415, status(415, "UnsupportedMediaType", "unsupported patch type " + ctype))
        patch = self.body()
        with lock:
            obj = objects.get((res, "", name))
        if obj is None:
            return self.send_json(404, status(404, "NotFound", 'nodes "%s" not found' % name))
        obj = json.loads(json.dumps(obj))
        merge(obj, patch)
        put(obj)
        self.send_json(200, obj)

    def do_POST(self):
        global compacted
        requests.append(("POST", self.path))
        ev = self.event_path()
        if ev is not None:
            e = self.body()
            md = e.setdefault("metadata", {})
            md["namespace"] = ev[0]
            if "name" not in md:
                md["name"] = md.get("generateName", "event.") + str(bump())
            with lock:
                md["resourceVersion"] = str(bump())
                kevents.append(e)
            return self.send_json(201, e)
        if self.path == "/_test/put":
            put(self.body())
            return self.send_json(200, {})
        if self.path == "/_test/delete":
            b = self.body()
            ok = delete(b["kind"], b.get("namespace", ""), b["name"])
            return self.send_json(200 if ok else 404, {})
        if self.path == "/_test/compact":
            with lock:
                compacted = bump()
                lock.notify_all()
            return self.send_json(200, {"compacted": compacted})
        self.send_json(404, status(404, "NotFound", "no such test control"))


def main():
    port = int(sys.argv[1])
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            for obj in json.load(f):
                put(obj)
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    print("listening %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
