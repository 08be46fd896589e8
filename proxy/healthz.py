"""Health endpoints with kube-proxy's semantics.

* `ProxyHealth` (:10256 /healthz and /livez): unhealthy (503) when an update was queued
  and no sync finished within `timeout`. /healthz is also 503 while the node is being
  deleted (load balancers should drain it); /livez ignores that (do not restart us for it).
* `ServiceHealthServers`: one listener per healthCheckNodePort of an eTP=Local Service,
  answering `{"service":{...},"localEndpoints":N,"serviceProxyHealthy":bool}`, 200 when
  N > 0 and the proxy is healthy, else 503, so external load balancers send traffic only to
  nodes with endpoints (N counts ready endpoints only: proxy.endpoints.local_ready_endpoints).
The listeners are node_daemon.httpserve servers, as every HTTP endpoint podwire serves.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from functools import partial
from typing import Callable

from node_daemon.httpserve import Reply, Server, as_json
from proxy.plan import HealthCheck


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z") if ts else ""


class ProxyHealth:
    def __init__(self, timeout: float = 60.0, clock: Callable[[], float] = time.time):
        self.timeout, self.clock = timeout, clock
        self._lock = threading.Lock()
        self.oldest_pending: float | None = None  # when the oldest unsynced update was queued
        self.last_updated = 0.0
        self.node_eligible = True

    def queued_update(self) -> None:
        with self._lock:
            if self.oldest_pending is None:
                self.oldest_pending = self.clock()

    def updated(self) -> None:
        with self._lock:
            self.oldest_pending = None
            self.last_updated = self.clock()

    def healthy(self) -> bool:
        with self._lock:
            return self.oldest_pending is None or self.clock() - self.oldest_pending < self.timeout

    def report(self, livez: bool) -> tuple[int, dict]:
        ok = self.healthy() and (livez or self.node_eligible)
        body: dict[str, str | bool] = {"lastUpdated": _iso(self.last_updated), "currentTime": _iso(self.clock())}
        if not livez:
            body["nodeEligible"] = self.node_eligible
        return (200 if ok else 503), body


class _Server(Server):
    """A JSON-answering listener (kube-proxy's health endpoints all answer JSON)."""

    def __init__(self, addr: str, port: int, answer: Callable[[str], tuple[int, dict] | None], name: str):
        def reply(path: str) -> Reply | None:
            res = answer(path)
            return None if res is None else as_json(*res)
        super().__init__(addr or "0.0.0.0", port, reply, name=name)


class HealthzServer(_Server):
    def __init__(self, health: ProxyHealth, addr: str = "0.0.0.0", port: int = 10256, metrics=None):
        def answer(path: str):
            if path not in ("/healthz", "/livez"):
                return None
            code, body = health.report(livez=path == "/livez")
            if metrics is not None:
                (metrics.livez if path == "/livez" else metrics.healthz).labels(str(code)).inc()
            return code, body
        super().__init__(addr, port, answer, name="proxy-healthz")


class ServiceHealthServers:
    """Keeps one listener per healthCheckNodePort; `update` reconciles the set."""

    def __init__(self, addr: str = "", proxy_healthy: Callable[[], bool] = lambda: True):
        self.addr, self.proxy_healthy = addr, proxy_healthy
        self._checks: dict[int, HealthCheck] = {}
        self._servers: dict[int, _Server] = {}
        self.errors: dict[int, str] = {}

    def update(self, checks: dict[int, HealthCheck]) -> None:
        self._checks = dict(checks)  # read by the handler threads; replaced, never mutated
        for port in list(self._servers):
            if port not in checks:
                self._servers.pop(port).close()
        for port in checks:
            if port not in self._servers:
                try:
                    self._servers[port] = _Server(self.addr, port, partial(self._answer, port),
                                                 name=f"health-check-{port}")
                    self.errors.pop(port, None)
                except OSError as e:  # port taken: report, retry on the next update
                    self.errors[port] = str(e)

    def _answer(self, port: int, path: str = "/") -> tuple[int, dict] | None:
        hc = self._checks.get(port)
        if hc is None:
            return None
        healthy = self.proxy_healthy()
        body = {"service": {"namespace": hc.namespace, "name": hc.name},
                "localEndpoints": hc.local_endpoints,
                "serviceProxyHealthy": healthy}
        # kube-proxy: 200 only with local endpoints *and* a healthy proxy; a node whose rules
        # lag behind its updates must not attract load-balancer traffic either
        return (200 if hc.local_endpoints > 0 and healthy else 503), body

    def close(self) -> None:
        self.update({})
