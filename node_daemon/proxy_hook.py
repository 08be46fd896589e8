"""PROXY HOOK: the one place where the Service proxy (`proxy/`) is wired into the daemon.

Enabled only when the config says `proxy_enabled` AND the module `proxy.proxier` exists. The
proxy shares the daemon's process, API client, Node informer and metrics registry; it gets two
more informers of its own (Services, EndpointSlices with kube-proxy's selector) and its own sync
runner, so a slow ruleset sync never delays routes and vice versa.

Contract expected from proxy.proxier (built by the proxy engineer):
    Proxier(node_name=str, registry=prometheus_client.CollectorRegistry)
    .on_service(obj: dict, deleted: bool)   .on_slice(obj: dict, deleted: bool)
    .on_node(obj: dict, deleted: bool)      .sync()   (full reconcile; raises on failure)
All objects are the API's plain JSON dicts; callbacks run on informer threads and must be cheap.
"""

from __future__ import annotations

import importlib
import logging

from .informer import Informer
from .runner import SyncRunner

log = logging.getLogger(__name__)

SLICE_SELECTOR = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
SERVICE_SELECTOR = "!service.kubernetes.io/service-proxy-name"


def start_proxy(cfg, api_client, registry, nodes: Informer, node_listeners: list, on_error):
    """Start the proxy's watches and runner; returns the objects to stop, or [] when disabled."""
    if not cfg.proxy_enabled:
        return []
    try:
        mod = importlib.import_module("proxy.proxier")
    except ImportError as e:
        log.error("proxy enabled but proxy.proxier is not available (%s); running without it", e)
        return []
    from kubernetes import client

    proxier = mod.Proxier(node_name=cfg.node_name, registry=registry)
    core, discovery = client.CoreV1Api(api_client), client.DiscoveryV1Api(api_client)
    services = Informer(core.list_service_for_all_namespaces, name="services",
                        label_selector=SERVICE_SELECTOR, on_error=on_error,
                        on_add=lambda o: _fwd(proxier.on_service, o, False),
                        on_update=lambda _, o: _fwd(proxier.on_service, o, False),
                        on_delete=lambda o: _fwd(proxier.on_service, o, True))
    slices = Informer(discovery.list_endpoint_slice_for_all_namespaces, name="endpointslices",
                      label_selector=SLICE_SELECTOR, on_error=on_error,
                      on_add=lambda o: _fwd(proxier.on_slice, o, False),
                      on_update=lambda _, o: _fwd(proxier.on_slice, o, False),
                      on_delete=lambda o: _fwd(proxier.on_slice, o, True))
    runner = SyncRunner(proxier.sync, name="proxy", min_interval=cfg.min_sync_interval,
                        resync_interval=cfg.resync_interval,
                        ready=lambda: all(i.synced.is_set() for i in (services, slices, nodes)))

    def _fwd(handler, obj, deleted):
        handler(obj, deleted)
        runner.trigger()

    node_listeners.append(lambda obj, deleted: _fwd(proxier.on_node, obj, deleted))
    for part in (services, slices, runner):
        part.start()
    log.info("service proxy started")
    return [services, slices, runner]
