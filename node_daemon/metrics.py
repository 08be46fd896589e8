"""Prometheus metrics and /healthz on one small HTTP server.

The registry is the daemon's own (not the global default) and is handed to the proxy so its
metrics appear on the same /metrics.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)


class DaemonMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.peers = Gauge("podwire_peers", "Peer nodes served, by transport", ["transport"], registry=r)
        self.peers_skipped = Gauge("podwire_peers_skipped", "Peer podCIDRs that cannot be served", registry=r)
        self.nodes_invalid = Gauge("podwire_nodes_invalid", "Node objects skipped as malformed", registry=r)
        self.routes = Gauge("podwire_routes", "Routes owned by this daemon in the kernel", registry=r)
        self.pod_mtu = Gauge("podwire_pod_mtu_bytes", "MTU written into the CNI config", registry=r)
        self.sync_duration = Histogram("podwire_sync_duration_seconds", "Duration of a full node sync",
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                       registry=r)
        self.sync_errors = Counter("podwire_sync_errors_total", "Failed syncs", registry=r)
        self.last_sync = Gauge("podwire_last_successful_sync_timestamp_seconds",
                               "Unix time of the last successful sync", registry=r)
        self.api_errors = Counter("podwire_api_errors_total", "Kubernetes API errors", ["resource"], registry=r)
        self.dataplane_changes = Counter("podwire_dataplane_changes_total",
                                         "Kernel objects added or removed by syncs", registry=r)
        self.drift_repairs = Counter("podwire_drift_repairs_total",
                                     "Kernel objects repaired although the desired state had not changed",
                                     registry=r)


def serve(address: str, registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]]):
    """Serve /metrics and /healthz on host:port in a daemon thread. Returns the server."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            path = self.path.split("?")[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                ok, why = healthy()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code, body, ctype):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet: scrapes are frequent
            pass

    host = host.strip("[]") or "0.0.0.0"
    server_cls = type("Server", (ThreadingHTTPServer,),
                      {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    server = server_cls((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("serving /metrics and /healthz on %s", address)
    return server
