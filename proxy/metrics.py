"""kube-proxy's metrics, under kube-proxy's names, so existing dashboards and the
network-programming-latency SLI work unchanged. One registry per Metrics object (tests
make several; the daemon passes its shared one). `serve` answers on kube-proxy's metrics
address (127.0.0.1:10249) what kube-proxy answers there: /healthz, /proxyMode, /metrics.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from node_daemon.httpserve import Reply, Server, text
from node_daemon.metrics import metrics_reply

_SYNC_BUCKETS = tuple(0.001 * 2 ** i for i in range(15))  # ExponentialBuckets(0.001, 2, 15)
_NPL_BUCKETS = (0.25, 0.5, *range(1, 60), *range(60, 120, 5), *range(120, 301, 30))
FAMILY_LABEL = {4: "IPv4", 6: "IPv6"}
# What kube-proxy answers on /proxyMode: tools (and the upstream e2e tests) read it to learn
# how Services are implemented; podwire's dataplane is kube-proxy's nftables mode's layout.
PROXY_MODE = "nftables"
METRICS_PORT = 10249  # kube-proxy's --metrics-bind-address default, 127.0.0.1:10249


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r, ns = self.registry, "kubeproxy"
        self.sync_duration = Histogram("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
                                       ["ip_family"], namespace=ns, buckets=_SYNC_BUCKETS, registry=r)
        self.sync_full_duration = Histogram("sync_full_proxy_rules_duration_seconds",
                                            "SyncProxyRules latency in seconds for full resyncs",
                                            ["ip_family"], namespace=ns, buckets=_SYNC_BUCKETS, registry=r)
        self.sync_partial_duration = Histogram("sync_partial_proxy_rules_duration_seconds",
                                               "SyncProxyRules latency in seconds for partial resyncs",
                                               ["ip_family"], namespace=ns, buckets=_SYNC_BUCKETS, registry=r)
        self.last_sync = Gauge("sync_proxy_rules_last_timestamp_seconds",
                               "The last time proxy rules were successfully synced", namespace=ns, registry=r)
        self.last_queued = Gauge("sync_proxy_rules_last_queued_timestamp_seconds",
                                 "The last time a sync of proxy rules was queued", namespace=ns, registry=r)
        self.programming = Histogram("network_programming_duration_seconds",
                                     "In Cluster Network Programming Latency in seconds",
                                     ["ip_family"], namespace=ns, buckets=_NPL_BUCKETS, registry=r)
        self.sync_failures = Counter("sync_proxy_rules_nftables_sync_failures_total",
                                     "Cumulative proxy nftables sync failures", namespace=ns, registry=r)
        self.conntrack_failures = Counter("sync_proxy_rules_conntrack_cleanup_failures_total",
                                          "Cumulative UDP conntrack deletions that failed", namespace=ns, registry=r)
        self.healthz = Counter("proxy_healthz_total", "Cumulative proxy healthz HTTP status", ["code"],
                               namespace=ns, registry=r)
        self.livez = Counter("proxy_livez_total", "Cumulative proxy livez HTTP status", ["code"],
                             namespace=ns, registry=r)

    def observe_sync(self, family: int, seconds: float, full: bool) -> None:
        fam = FAMILY_LABEL[family]
        self.sync_duration.labels(fam).observe(seconds)
        (self.sync_full_duration if full else self.sync_partial_duration).labels(fam).observe(seconds)

    def serve(self, port: int = METRICS_PORT, addr: str = "127.0.0.1") -> Server:
        """kube-proxy's metrics server on addr:port (port 0: any free port); OSError when taken."""
        return Server(addr, port, metrics_server_answer(self.registry), name="proxy-metrics")


def metrics_server_answer(registry: CollectorRegistry):
    """path -> reply of kube-proxy's metrics server. Its /healthz is a liveness ping of the
    process ("ok", always 200: kube-proxy installs it with no checks); the proxy's own health
    is on :10256."""
    def answer(path: str) -> Reply | None:
        if path == "/metrics":
            return metrics_reply(registry)
        if path == "/healthz":
            return text(200, "ok")
        if path == "/proxyMode":
            return text(200, PROXY_MODE)
        return None
    return answer
