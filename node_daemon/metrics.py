"""Prometheus metrics and /healthz on one small HTTP server (node_daemon.httpserve).

The registry is the daemon's own (not the global default) and is handed to the proxy so its
metrics appear on the same /metrics.
"""

from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .httpserve import Reply, Server, split_address, text

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


def serve(address: str, registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]]) -> Server:
    """Serve /metrics and /healthz (and /livez) on host:port in a daemon thread. Returns the server."""

    def answer(path: str) -> Reply | None:
        if path == "/metrics":
            return metrics_reply(registry)
        if path in ("/healthz", "/livez"):
            ok, why = healthy()
            return text(200 if ok else 503, why + "\n")
        return None

    server = Server(*split_address(address), answer, name="metrics")
    log.info("serving /metrics and /healthz on %s", address)
    return server


def metrics_reply(registry: CollectorRegistry) -> Reply:
    """The registry in Prometheus' text format (every server serving /metrics uses this)."""
    return Reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
