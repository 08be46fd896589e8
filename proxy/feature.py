"""The Service proxy as a daemon feature (node_daemon.features): its watches and sync runner.

It shares the daemon's process, API client, Node informer and metrics registry; it gets two more
informers of its own (Services, EndpointSlices with kube-proxy's selector) and its own sync runner,
so a slow ruleset sync never delays routes and vice versa. The Proxier is fed plain API dicts on
informer threads (cheap: it only marks Services dirty) and reconciles in `sync()`.
Around it, what kube-proxy also does on a node: :10256 health, the metrics address
(127.0.0.1:10249: /healthz, /proxyMode, /metrics of the daemon's shared registry) and the
conntrack sysctls (proxy.conntrack_settings), set at start.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from node_daemon.httpserve import split_address
from node_daemon.runner import SyncRunner

log = logging.getLogger(__name__)

SLICE_SELECTOR = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
SERVICE_SELECTOR = "!service.kubernetes.io/service-proxy-name"
# The proxy's own floor between syncs, below the daemon's (1 s by default): a proxy sync after
# the first sends only the diff of what changed (milliseconds), and with a 1 s floor a write
# arriving soon after the previous sync waited up to a second (measured 0.95 s on the harness),
# against a goal of "programmed within 1 s". Bursts still merge: events during a sync or
# inside the floor become one sync.
PROXY_MIN_SYNC_INTERVAL = 0.1
# Every this many resync intervals (300 s by default) the proxy rewrites its tables whole: the
# only way to repair what changed behind its back (a flushed map, a deleted chain) without
# listing the kernel's tables. Affinity sets survive it (proxy.nft.render_full). Not every
# resync: a rewrite at 10k Services costs ~1.6 s of nft here, a diff sync milliseconds.
FULL_RESYNC_EVERY = 10


def start(host) -> list:
    """Start the proxy's watches and runner (node_daemon.features.Host); returns what to stop."""
    from kubernetes import client

    from proxy.conntrack_settings import ConntrackSettings, ConntrackSysctls

    cfg = host.cfg
    sysctls = ConntrackSysctls(ConntrackSettings.from_config(cfg))
    sysctls.ensure()  # before any Service flow exists; retried after syncs if nf_conntrack was not loaded
    proxier, servers = build_proxier(cfg, host.registry)
    sync = ProxySync(proxier, cfg.resync_interval * FULL_RESYNC_EVERY, after_sync=sysctls.ensure)
    core, discovery = client.CoreV1Api(host.api), client.DiscoveryV1Api(host.api)
    runner = SyncRunner(sync, name="proxy", min_interval=min(cfg.min_sync_interval, PROXY_MIN_SYNC_INTERVAL),
                        resync_interval=cfg.resync_interval,
                        ready=lambda: all(i.synced.is_set() for i in (services, slices, host.nodes)))

    def forward(handler):
        def on_event(obj, deleted):
            handler(obj, deleted)
            runner.trigger()
        return on_event

    services = host.watch(core.list_service_for_all_namespaces, "services", forward(proxier.on_service),
                          label_selector=SERVICE_SELECTOR)
    slices = host.watch(discovery.list_endpoint_slice_for_all_namespaces, "endpointslices",
                        forward(proxier.on_slice), label_selector=SLICE_SELECTOR)
    host.on_node(forward(proxier.on_node))
    for part in (services, slices, runner):
        part.start()
    return [services, slices, runner, *servers]


class ProxySync:
    """The proxy runner's sync function: the proxier's (diff) sync, made a full rewrite when
    `full_every` seconds have passed since the last full one; raises when the sync failed, so
    the runner retries with backoff. `after_sync` runs after successful syncs until it returns
    True (the conntrack sysctls, which exist only once a ruleset has loaded nf_conntrack)."""

    def __init__(self, proxier, full_every: float, clock=time.monotonic,
                 after_sync: Callable[[], bool] | None = None):
        self.proxier, self.full_every, self.clock = proxier, full_every, clock
        self.last_full = clock()  # the first sync is full anyway
        self.after_sync = after_sync

    def __call__(self) -> None:
        now = self.clock()
        if now - self.last_full >= self.full_every:
            self.proxier.request_full_sync()
            self.last_full = now
        if self.proxier.sync() is False:  # the proxier reports failure instead of raising
            raise RuntimeError("service proxy sync failed")
        if self.after_sync is not None and self.after_sync():
            self.after_sync = None


def build_proxier(cfg, registry):
    """The proxy's parts, configured from the daemon's config. Returns (proxier, [stoppables])."""
    from proxy.conntrack import ConntrackRunner
    from proxy.healthz import HealthzServer, ProxyHealth, ServiceHealthServers
    from proxy.metrics import Metrics
    from proxy.model import ProxyConfig
    from proxy.proxier import Proxier
    from proxy.sync import NftRunner

    families = sorted({c.version for c in cfg.cluster_cidrs}) or [4]
    health, metrics = ProxyHealth(), Metrics(registry)
    proxier = Proxier(cfg.node_name, ProxyConfig(cluster_cidrs=tuple(cfg.cluster_cidrs)),
                      {f: NftRunner() for f in families}, conntrack_runner=ConntrackRunner(),
                      metrics=metrics, health=health,
                      service_health=ServiceHealthServers(proxy_healthy=health.healthy))
    healthz = HealthzServer(health, *split_address(cfg.proxy_healthz_address), metrics=metrics)
    parts = [healthz]
    metrics_server = serve_metrics(cfg.proxy_metrics_address, metrics)
    if metrics_server is not None:
        parts.append(metrics_server)
    return proxier, parts


def serve_metrics(address: str, metrics):
    """kube-proxy's metrics server on `address` ("" or port 0: off). A taken address is logged,
    not fatal (kube-proxy's default, --bind-address-hard-fail off): the proxy works without it."""
    if not address or address.endswith(":0"):
        log.info("kube-proxy's metrics address is switched off")
        return None
    host, port = split_address(address)
    try:
        server = metrics.serve(port, host)
    except OSError as e:
        log.error("cannot serve kube-proxy's metrics address %s: %s", address, e)
        return None
    log.info("serving kube-proxy's /healthz, /proxyMode and /metrics on %s", address)
    return server
