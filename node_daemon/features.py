"""The features the daemon hosts (the Service proxy, NetworkPolicy, LoadBalancer) behind one small interface.

A feature is a module with `start(host: Host) -> list` (things with `.stop()`), named in FEATURES
with the config switch that enables it. It gets the daemon's process, API client, Node informer
and metrics registry through the Host, builds its own informers with `host.watch` and its own
sync runner (so a slow feature never delays routes, nor another feature), and is stopped with the
daemon. A feature that is enabled but cannot start stops the daemon with an error: running
silently without the proxy or without policy would be worse than not running.

A feature may also name a `cleanup(cfg)` ("module:function"): called at start when the feature is
switched off, it deletes what an earlier run left in the kernel (its nft tables), whether or not
anything is there. Egress masquerade is run by the daemon's own sync (no `start` here) and is
listed for its cleanup only. A cleanup that fails is logged and the daemon goes on: it leaves
the kernel as it was, which is what happened before cleanups existed.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .informer import Informer

log = logging.getLogger(__name__)


def _egress_enabled(cfg) -> bool:
    """Egress masquerade runs only with the switch on and a cluster CIDR to tell pods by."""
    return bool(cfg.egress and cfg.cluster_cidrs)


# (name, Config switch: an attribute name or a predicate of the Config,
#  module with start(host) or None when the daemon runs it, cleanup "module:function" or None)
FEATURES: tuple = (
    ("service proxy", "proxy_enabled", "proxy.feature", "proxy.sync:cleanup"),
    ("network policy", "policy_enabled", "policy.feature", "policy.feature:cleanup"),
    ("load balancer", "loadbalancer_enabled", "loadbalancer.feature", None),
    ("egress masquerade", _egress_enabled, None, "node_daemon.egress:cleanup"),
)


class FeatureError(RuntimeError):
    pass


@dataclass
class Host:
    cfg: Any  # node_daemon.config.Config
    api: Any  # kubernetes.client.ApiClient
    registry: Any  # prometheus_client.CollectorRegistry, shared /metrics
    nodes: Informer
    on_error: Callable[[str, Exception], None]  # counts API errors per resource
    node_listeners: list = field(default_factory=list)  # callables (node dict, deleted)

    def watch(self, list_fn, name: str, on_event: Callable[[dict, bool], None], **kwargs) -> Informer:
        """An informer (not started) whose adds, updates and deletes all call on_event(obj, deleted)."""
        return Informer(list_fn, name=name, on_error=self.on_error,
                        on_add=lambda o: on_event(o, False),
                        on_update=lambda _, o: on_event(o, False),
                        on_delete=lambda o: on_event(o, True), **kwargs)

    def on_node(self, listener: Callable[[dict, bool], None]) -> None:
        self.node_listeners.append(listener)


def enabled(cfg, switch) -> bool:
    return bool(switch(cfg) if callable(switch) else getattr(cfg, switch))


def cleanup_feature(name: str, target: str, cfg) -> bool:
    """Run one switched-off feature's cleanup ("module:function"); True when it ran and succeeded.
    A module without that function is skipped (a feature that has none yet)."""
    module, _, function = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), function, None)
        if fn is None:
            log.debug("%s is off and %s has no %s(): nothing cleaned up", name, module, function)
            return False
        fn(cfg)
    except Exception as e:  # noqa: BLE001 - never fatal: the kernel stays as it was
        log.error("%s is off but its cleanup failed: %s: %s", name, type(e).__name__, e)
        return False
    log.info("%s is off: its leftovers are removed", name)
    return True


def start_features(host: Host, features=FEATURES) -> list:
    """Clean up after every disabled feature, then start every enabled one; returns what to stop, in
    the order to stop it: the last feature started first (the load balancer hands its addresses to
    another node before the proxy winds down), each feature's parts in the order it gave them.
    Raises FeatureError when one fails to start (the ones already started are stopped first)."""
    features = [(*f, None)[:4] for f in features]  # the cleanup is optional
    for name, switch, _, cleanup in features:
        if cleanup and not enabled(host.cfg, switch):
            cleanup_feature(name, cleanup, host.cfg)
    groups: list[list] = []
    for name, switch, module, _ in features:
        if module is None or not enabled(host.cfg, switch):
            continue
        try:
            groups.append(list(importlib.import_module(module).start(host)))
        except Exception as e:  # noqa: BLE001 - any start failure is fatal, with its cause
            for part in reversed([p for g in groups for p in g]):
                part.stop()
            raise FeatureError(f"{name} is enabled but cannot start: {type(e).__name__}: {e}") from e
        log.info("%s started", name)
    return [p for g in reversed(groups) for p in g]
