"""kube-proxy's metrics address (127.0.0.1:10249): /healthz, /proxyMode, /metrics, served by the
proxy feature from the daemon's shared registry. Real HTTP requests on loopback."""
from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from node_daemon.config import Config
from node_daemon.metrics import DaemonMetrics
from proxy.feature import build_proxier, serve_metrics
from proxy.metrics import Metrics


def get(port: int, path: str, host: str = "127.0.0.1"):
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def test_metrics_address_answers_healthz_proxymode_and_metrics():
    m = Metrics()
    m.sync_failures.inc()
    server = m.serve(0, "127.0.0.1")
    try:
        assert get(server.port, "/healthz") == (200, "text/plain; charset=utf-8", "ok")
        assert get(server.port, "/proxyMode") == (200, "text/plain; charset=utf-8", "nftables")
        code, ctype, body = get(server.port, "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=")
        assert "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1.0" in body
        assert "kubeproxy_sync_proxy_rules_duration_seconds" in body
        assert get(server.port, "/configz")[0] == 404
    finally:
        server.close()


def _cfg(**kw) -> Config:
    return Config(node_name="n1", cluster_cidrs=(), **kw)


def test_the_feature_serves_the_daemons_shared_registry_on_its_metrics_address():
    daemon = DaemonMetrics()  # the daemon's registry: its own metrics and the proxy's on one /metrics
    daemon.drift_repairs.inc(2)
    healthz_port, metrics_port = free_port(), free_port()
    cfg = _cfg(proxy_healthz_address=f"127.0.0.1:{healthz_port}", proxy_metrics_address=f"127.0.0.1:{metrics_port}")
    _, parts = build_proxier(cfg, daemon.registry)
    try:
        assert get(metrics_port, "/proxyMode")[2] == "nftables"
        body = get(metrics_port, "/metrics")[2]
        assert "podwire_drift_repairs_total 2.0" in body and "kubeproxy_sync_proxy_rules_last_timestamp_seconds" in body
        assert get(healthz_port, "/healthz")[0] == 200  # :10256 still kube-proxy's JSON health
    finally:
        for part in parts:
            part.stop()
    assert len(parts) == 2


def test_metrics_address_off_with_empty_or_port_zero():
    m = Metrics(CollectorRegistry())
    assert serve_metrics("", m) is None
    assert serve_metrics("127.0.0.1:0", m) is None


def test_a_taken_metrics_address_is_logged_not_fatal(caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="proxy.feature"):
            assert serve_metrics(f"127.0.0.1:{port}", Metrics()) is None
    assert f"cannot serve kube-proxy's metrics address 127.0.0.1:{port}" in caplog.text


def test_ipv6_metrics_address():
    server = serve_metrics(f"[::1]:{free_port('::1')}", Metrics())
    assert server is not None
    try:
        assert get(server.port, "/proxyMode", host="[::1]")[2] == "nftables"
    finally:
        server.close()
