"""Root test: `python3 -m node_daemon` as real processes, one per node namespace, over HTTP.

Until the e2e harness provides a real API server this drives the daemon through a minimal
stand-in serving only what the daemon uses for Nodes: paged LIST, chunked WATCH from a
resourceVersion (with bookmarks and 410 after a "compaction"), merge-patch of metadata and
strategic-merge of status conditions. It checks the wire the real client speaks (the
`_preload_content=False` list/watch, patch content types), the CNI config, routes, Node status,
/metrics and /healthz, relisting after 410 and clean shutdown on SIGTERM.

Run as `python3 test_daemon_process.py serve HOST PORT` it is that stand-in server.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---- the stand-in API server (runs in its own process, in the underlay namespace) -----------
class Store:
    def __init__(self):
        self.rv, self.nodes, self.log, self.compacted = 1, {}, [], 0
        self.requests = []
        self.cond = threading.Condition()

    def put(self, obj, kind):
        with self.cond:
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            if kind == "DELETED":
                self.nodes.pop(obj["metadata"]["name"], None)
            else:
                self.nodes[obj["metadata"]["name"]] = obj
            self.log.append((self.rv, kind, json.loads(json.dumps(obj))))
            self.cond.notify_all()


def serve(host, port):
    store = Store()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _json(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self):
            return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

        def do_GET(self):  # noqa: N802
            u = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            store.requests.append(("GET", u.path, q, None))
            if u.path == "/test/state":
                with store.cond:
                    return self._json(200, {"nodes": store.nodes, "requests": store.requests})
            if u.path != "/api/v1/nodes":
                return self._json(404, {"kind": "Status", "code": 404})
            if q.get("watch") != "true":
                with store.cond:
                    return self._json(200, {"kind": "NodeList", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": str(store.rv)},
                                            "items": list(store.nodes.values())})
            since = int(q.get("resourceVersion") or 0)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(event):
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            deadline = time.monotonic() + float(q.get("timeoutSeconds", 30))
            try:
                while time.monotonic() < deadline:
                    with store.cond:
                        if since < store.compacted:
                            events = [{"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                                   "reason": "Expired"}}]
                        else:
                            events = [{"type": k, "object": o} for rv, k, o in store.log if rv > since]
                            if not events:
                                store.cond.wait(0.5)
                    for e in events:
                        chunk(e)
                        if e["type"] == "ERROR":
                            raise StopIteration
                        since = int(e["object"]["metadata"]["resourceVersion"])
                chunk({"type": "BOOKMARK", "object": {"kind": "Node", "metadata": {"resourceVersion": str(since)}}})
            except (StopIteration, BrokenPipeError, ConnectionResetError):
                pass
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True

        def do_PATCH(self):  # noqa: N802
            u = urlparse(self.path)
            body = self._body()
            store.requests.append(("PATCH", u.path, {}, self.headers.get("Content-Type")))
            name = u.path.split("/")[4]
            with store.cond:
                node = json.loads(json.dumps(store.nodes[name]))
            if u.path.endswith("/status"):
                conds = {c["type"]: c for c in node["status"].get("conditions", [])}
                conds.update({c["type"]: c for c in body["status"]["conditions"]})
                node["status"]["conditions"] = list(conds.values())
            else:
                node["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
            store.put(node, "MODIFIED")
            self._json(200, node)

        def do_POST(self):  # noqa: N802 - test controls: put a node, delete one (quietly), compact
            u = urlparse(self.path)
            body = self._body()
            if u.path == "/test/put":
                store.put(body, "MODIFIED" if body["metadata"]["name"] in store.nodes else "ADDED")
            elif u.path == "/test/delete":
                with store.cond:
                    obj = store.nodes[body["name"]]
                if body.get("quiet"):  # gone from the store, the event lost to compaction
                    with store.cond:
                        store.nodes.pop(body["name"])
                        store.rv += 1
                        store.compacted = store.rv
                        store.cond.notify_all()
                else:
                    store.put(obj, "DELETED")
            self._json(200, {})

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, int(port)), H).serve_forever()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(*sys.argv[2:4])
    sys.exit(0)


# ---- the test --------------------------------------------------------------------------------
from e2e.netbed import Netbed, eventually, nsexec, sh  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

API = "192.168.50.254"
PORT = 16443


def api(bed, method, path, body=None):
    """Talk to the stand-in server from inside the underlay namespace (we never enter it)."""
    argv = ["curl", "-s", "-X", method, f"http://{API}:{PORT}{path}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    out = sh(*nsexec(bed.underlay, *argv)).stdout
    return json.loads(out) if out else None




def test_daemon_processes_over_http(tmp_path):
    bed = Netbed()
    procs = []
    try:
        n1, n2 = bed.add_node(subnet=0), bed.add_node(subnet=1)
        (p1, _), (_, ip2) = bed.add_pod(n1), bed.add_pod(n2)
        server = subprocess.Popen(nsexec(bed.underlay, sys.executable, os.path.abspath(__file__), "serve",
                                         API, PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(server)
        eventually(lambda: sh(*nsexec(bed.underlay, "curl", "-s", f"http://{API}:{PORT}/test/state"),
                              check=False).returncode == 0, what="API server")
        for n in (n1, n2):
            obj = n.api_object()
            obj["status"]["conditions"] = [{"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}]
            api(bed, "POST", "/test/put", obj)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": f"http://{API}:{PORT}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
        logs = {}
        for n in (n1, n2):
            logs[n.name] = open(tmp_path / f"{n.name}.log", "w")
            procs.append(subprocess.Popen(
                nsexec(n.netns, sys.executable, "-m", "node_daemon", "--node-name", n.name,
                       "--kubeconfig", kubeconfig, "--cni-conf-dir", tmp_path / n.name,
                       "--cluster-cidr", "10.244.0.0/16", "--metrics-address", "127.0.0.1:19465",
                       "--resync-interval", "5"),
                cwd=ROOT, stdout=logs[n.name], stderr=subprocess.STDOUT))

        def node(name):
            return api(bed, "GET", "/test/state")["nodes"][name]

        # each daemon publishes its VTEP MAC; then both program the overlay and report the condition
        for n in (n1, n2):
            eventually(lambda: node(n.name)["metadata"].get("annotations", {}).get("podwire.io/vtep-mac"),
                       what=f"{n.name} annotation")
            eventually(lambda: any(c["type"] == "NetworkUnavailable" and c["status"] == "False"
                                   and c["reason"] == "PodwireRoutesCreated"
                                   for c in node(n.name)["status"]["conditions"]), what=f"{n.name} condition")
        assert eventually(lambda: Netbed.ping(p1, ip2), what="pod ping over VXLAN")
        conf = json.loads((tmp_path / "node1" / "10-podwire.conflist").read_text())
        assert conf["plugins"][0]["mtu"] == 1450
        assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]

        state = api(bed, "GET", "/test/state")
        patches = {(r[1].endswith("/status"), r[3]) for r in state["requests"] if r[0] == "PATCH"}
        assert patches == {(False, "application/merge-patch+json"),
                           (True, "application/strategic-merge-patch+json")}
        watches = [r[2] for r in state["requests"] if r[2].get("watch") == "true"]
        assert watches and all(w.get("resourceVersion") and w.get("allowWatchBookmarks") == "true" for w in watches)

        metrics = sh(*nsexec(n1.netns, "curl", "-s", "127.0.0.1:19465/metrics")).stdout
        assert 'podwire_peers{transport="vxlan"} 1.0' in metrics and "podwire_sync_duration_seconds_count" in metrics
        assert sh(*nsexec(n1.netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "127.0.0.1:19465/healthz")).stdout == "200"

        def owned_routes():
            return sh("ip", "-n", n1.netns, "route", "show", "proto", "212").stdout

        # a third node (API object only) comes, then disappears while its delete event is lost
        # (compacted): the watch gets 410, the informer relists, the daemon cleans up
        ghost = {"metadata": {"name": "node3", "annotations": {"podwire.io/vtep-mac": "0a:00:00:00:00:03"}},
                 "spec": {"podCIDRs": ["10.244.3.0/24"]},
                 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.52.3"}]}}
        api(bed, "POST", "/test/put", ghost)
        eventually(lambda: "10.244.3.0/24" in owned_routes(), what="route to node3")
        api(bed, "POST", "/test/delete", {"name": "node3", "quiet": True})
        eventually(lambda: "10.244.3.0" not in owned_routes(), what="route to the deleted node removed")
        assert "relisting" in (tmp_path / "node1.log").read_text()

        # API server gone: the last good state stays programmed through resyncs; errors are counted
        server.kill()
        server.wait()
        time.sleep(6)  # more than the resync interval
        assert "10.244.2.0/24" in owned_routes() and Netbed.ping(p1, ip2)
        metrics = sh(*nsexec(n1.netns, "curl", "-s", "127.0.0.1:19465/metrics")).stdout
        assert 'podwire_api_errors_total{resource="nodes"}' in metrics
        assert 'podwire_api_errors_total{resource="nodes"} 0.0' not in metrics

        for p in procs[1:]:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=15) for p in procs[1:]] == [0, 0]
        log1 = (tmp_path / "node1.log").read_text()
        assert "Traceback" not in log1, log1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        bed.close()
