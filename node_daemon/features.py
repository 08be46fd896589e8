"""The features the daemon hosts (the Service proxy, NetworkPolicy) behind one small interface.

A feature is a module with `start(host: Host) -> list` (things with `.stop()`), named in FEATURES
with the config switch that enables it. It gets the daemon's process, API client, Node informer
and metrics registry through the Host, builds its own informers with `host.watch` and its own
sync runner (so a slow feature never delays routes, nor another feature), and is stopped with the
daemon. A feature that is enabled but cannot start stops the daemon with an error: running
silently without the proxy or without policy would be worse than not running.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .informer import Informer

log = logging.getLogger(__name__)

# (name, Config switch, module with start(host))
FEATURES = (
    ("service proxy", "proxy_enabled", "proxy.feature"),
    ("network policy", "policy_enabled", "policy.feature"),
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


def start_features(host: Host, features=FEATURES) -> list:
    """Start every enabled feature; returns what to stop. Raises FeatureError when one fails
    (the ones already started are stopped first)."""
    parts: list = []
    for name, switch, module in features:
        if not getattr(host.cfg, switch):
            continue
        try:
            parts += importlib.import_module(module).start(host)
        except Exception as e:  # noqa: BLE001 - any start failure is fatal, with its cause
            for part in reversed(parts):
                part.stop()
            raise FeatureError(f"{name} is enabled but cannot start: {type(e).__name__}: {e}") from e
        log.info("%s started", name)
    return parts
