"""/metrics and /healthz on the daemon's own registry (shared with the proxy)."""

import urllib.error
import urllib.request

from prometheus_client import Counter

from node_daemon.metrics import DaemonMetrics, serve


def get(server, path):
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_and_health_endpoints():
    m = DaemonMetrics()
    Counter("podwire_proxy_example_total", "a proxy metric on the same registry", registry=m.registry).inc()
    m.drift_repairs.inc(3)
    health = [(False, "no successful sync yet")]
    server = serve("127.0.0.1:0", m.registry, lambda: health[0])
    try:
        code, text = get(server, "/metrics")
        assert code == 200 and "podwire_drift_repairs_total 3.0" in text
        assert "podwire_proxy_example_total 1.0" in text
        assert get(server, "/healthz") == (503, "no successful sync yet\n")
        health[0] = (True, "programmed")
        assert get(server, "/healthz") == (200, "programmed\n")
        assert get(server, "/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_ipv6_listen_address():
    server = serve("[::1]:0", DaemonMetrics().registry, lambda: (True, "ok"))
    try:
        assert get(server, "/healthz") == (200, "ok\n")
    finally:
        server.shutdown()
        server.server_close()
