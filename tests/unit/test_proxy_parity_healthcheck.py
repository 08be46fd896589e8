"""healthCheckNodePort as kube-proxy answers it: only ready local endpoints count (a node whose
only local endpoints are terminating answers 503, so load balancers drain it), and 503 as well
while the proxy itself is unhealthy. Real HTTP on loopback, ephemeral ports."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from proxy.endpoints import local_ready_endpoints
from proxy.from_api import service_from_api, slice_from_api
from proxy.healthz import ServiceHealthServers
from proxy.metrics import Metrics
from proxy.plan import HealthCheck, health_checks
from proxy.proxier import Proxier
from tests.unit.test_proxy_plan import CONFIG, NODE, ep, port, slc, svc
from tests.unit.test_proxy_sync import FakeRunner

HC_PORT_SVC = svc(type_="LoadBalancer", ports=[port(node_port=30080)], externalTrafficPolicy="Local",
                  healthCheckNodePort=31000)
TERMINATING = dict(ready=False, serving=True, terminating=True)


def slices(*eps, name="web-abc", ports=None):
    return [slice_from_api(slc(endpoints=eps, name=name, ports=ports))]


def test_only_terminating_local_endpoints_count_zero():
    assert local_ready_endpoints(slices(ep("10.244.1.5", "n1", **TERMINATING)), "n1") == 0


def test_ready_local_endpoints_count_and_terminating_ones_do_not():
    s = slices(ep("10.244.1.5", "n1"), ep("10.244.1.6", "n1", **TERMINATING),
               ep("10.244.1.7", "n1", ready=False), ep("10.244.2.5", "n2"))
    assert local_ready_endpoints(s, "n1") == 1


def test_an_address_counts_once_across_slices_and_ports():
    # kube-proxy squashes by IP: 10.244.1.5:80 and 10.244.1.5:443 are one endpoint
    s = slices(ep("10.244.1.5", "n1")) + slices(ep("10.244.1.5", "n1"), name="web-def",
                                                   ports=[{"name": "https", "protocol": "TCP", "port": 8443}])
    assert local_ready_endpoints(s, "n1") == 1


def test_publish_not_ready_addresses_counts_as_kube_proxy_does():
    # with publishNotReadyAddresses the slice says ready=true even while terminating; kube-proxy's
    # IsReady reads that condition, so the endpoint counts there too
    assert local_ready_endpoints(slices(ep("10.244.1.5", "n1", ready=True, terminating=True)), "n1") == 1


def test_no_node_name_counts_nothing():
    assert local_ready_endpoints(slices(ep("10.244.1.5", "")), "") == 0


def test_plan_health_checks_report_zero_for_terminating_only():
    checks = health_checks([service_from_api(HC_PORT_SVC)],
                           slices(ep("10.244.1.5", "n1", **TERMINATING)), NODE)
    assert checks == {31000: HealthCheck("default", "web", 0)}


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_check_port_answers_503_for_a_terminating_only_node():
    hc_port = _free_port()
    servers = ServiceHealthServers("127.0.0.1")
    try:
        n = local_ready_endpoints(slices(ep("10.244.1.5", "n1", **TERMINATING)), "n1")
        servers.update({hc_port: HealthCheck("default", "web", n)})
        assert _get(f"http://127.0.0.1:{hc_port}/") == (
            503, {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 0,
                  "serviceProxyHealthy": True})
    finally:
        servers.close()


def test_proxier_health_check_port_answers_503_when_its_local_endpoints_terminate():
    """The production path: Proxier.sync -> health_checks -> the listener."""
    hc_port = _free_port()
    servers = ServiceHealthServers("127.0.0.1")
    p = Proxier("n1", CONFIG, {4: FakeRunner(), 6: FakeRunner()}, conntrack_runner=None, metrics=Metrics(),
                service_health=servers)
    try:
        p.on_service(svc(type_="LoadBalancer", ports=[port(node_port=30080)], externalTrafficPolicy="Local",
                         healthCheckNodePort=hc_port))
        p.on_slice(slc(endpoints=[ep("10.244.1.5", "n1")]))
        assert p.sync()
        assert _get(f"http://127.0.0.1:{hc_port}/")[0] == 200
        p.on_slice(slc(endpoints=[ep("10.244.1.5", "n1", **TERMINATING)]))  # its pod is being deleted
        assert p.sync()
        assert _get(f"http://127.0.0.1:{hc_port}/") == (
            503, {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 0,
                  "serviceProxyHealthy": True})
    finally:
        servers.close()


def test_health_check_port_answers_503_while_the_proxy_is_unhealthy():
    # kube-proxy: 200 needs local endpoints *and* a healthy proxy (serviceProxyHealthy)
    hc_port, healthy = _free_port(), [True]
    servers = ServiceHealthServers("127.0.0.1", proxy_healthy=lambda: healthy[0])
    try:
        servers.update({hc_port: HealthCheck("default", "web", 2)})
        assert _get(f"http://127.0.0.1:{hc_port}/")[0] == 200
        healthy[0] = False
        assert _get(f"http://127.0.0.1:{hc_port}/") == (
            503, {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 2,
                  "serviceProxyHealthy": False})
    finally:
        servers.close()
